//! The identity material a source hands out: an X.509-SVID and the trust bundle, with everything
//! derived from them (rustls keys and verifiers, the JWT signing key) computed once per change.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::EncodingKey;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::IdentityError;
use crate::pem::der_to_pem;
use crate::tls::crypto_provider;

/// The SPIFFE ID in the URI SAN of a certificate (exactly one `spiffe://` URI), and its NotAfter.
pub fn spiffe_id_of(der: &[u8]) -> Result<(String, SystemTime), IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::InvalidSvid(format!("cannot parse certificate: {e}")))?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp())
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or(UNIX_EPOCH);
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::InvalidSvid(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| IdentityError::InvalidSvid("certificate has no URI SAN".into()))?;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let id = match (ids.next(), ids.next()) {
        (Some(id), None) if id.starts_with("spiffe://") && id.len() > "spiffe://".len() => id,
        (Some(_), Some(_)) => {
            return Err(IdentityError::InvalidSvid(
                "certificate has more than one URI SAN".into(),
            ));
        }
        _ => {
            return Err(IdentityError::InvalidSvid(
                "certificate has no spiffe:// URI SAN".into(),
            ));
        }
    };
    Ok((id.to_string(), not_after))
}

/// An X.509-SVID: certificate chain (leaf first), its private key and what is derived from them.
pub struct Svid {
    spiffe_id: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    not_after: SystemTime,
    leaf_pem: String,
    certified: Arc<CertifiedKey>,
    jwt_key: EncodingKey,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// An SVID from its DER chain (leaf first) and PKCS#8 DER ECDSA P-256 key.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        pkcs8_key: Vec<u8>,
    ) -> Result<Self, IdentityError> {
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::InvalidSvid("empty certificate chain".into()))?;
        let (spiffe_id, not_after) = spiffe_id_of(leaf)?;
        let leaf_pem = der_to_pem("CERTIFICATE", leaf);
        let key = PrivatePkcs8KeyDer::from(pkcs8_key);
        let certified = CertifiedKey::from_der(
            chain.clone(),
            PrivateKeyDer::Pkcs8(key.clone_key()),
            &crypto_provider(),
        )
        .map_err(|e| {
            IdentityError::InvalidSvid(format!("key does not fit the certificate: {e}"))
        })?;
        // Tokens are ES256: the key must be ECDSA P-256 (PKCS#8).
        let jwt_key = EncodingKey::from_ec_der(key.secret_pkcs8_der());
        jsonwebtoken::crypto::sign(b"probe", &jwt_key, jsonwebtoken::Algorithm::ES256).map_err(
            |e| IdentityError::InvalidSvid(format!("the key is not an ECDSA P-256 key: {e}")),
        )?;
        Ok(Self {
            spiffe_id,
            chain,
            key,
            not_after,
            leaf_pem,
            certified: Arc::new(certified),
            jwt_key,
        })
    }

    /// The SPIFFE ID (`spiffe://<trust domain>/<path>`).
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The PKCS#8 DER private key.
    pub fn key_der(&self) -> &[u8] {
        self.key.secret_pkcs8_der()
    }

    /// The leaf certificate's NotAfter.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The leaf certificate as PEM.
    pub fn leaf_pem(&self) -> &str {
        &self.leaf_pem
    }

    /// The chain and key as rustls presents them.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// The ES256 signing key.
    pub(crate) fn jwt_key(&self) -> &EncodingKey {
        &self.jwt_key
    }
}

/// The CA certificates peers are verified against (all trust domains, federated ones included).
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    store: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl TrustBundle {
    /// A bundle of CA certificates (DER).
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, IdentityError> {
        if roots.is_empty() {
            return Err(IdentityError::InvalidBundle(
                "no CA certificates in the trust bundle".into(),
            ));
        }
        let mut store = RootCertStore::empty();
        for root in &roots {
            store
                .add(root.clone())
                .map_err(|e| IdentityError::InvalidBundle(format!("bad CA certificate: {e}")))?;
        }
        let store = Arc::new(store);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(store.clone(), Arc::new(crypto_provider()))
                .build()
                .map_err(|e| IdentityError::InvalidBundle(e.to_string()))?;
        Ok(Self {
            roots,
            store,
            client_verifier,
        })
    }

    /// The CA certificates.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub(crate) fn store(&self) -> &RootCertStore {
        &self.store
    }

    pub(crate) fn client_verifier(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.client_verifier
    }
}

/// What a source currently provides.
#[derive(Debug, Clone)]
pub struct X509Material {
    /// This workload's SVID.
    pub svid: Arc<Svid>,
    /// The trust bundle.
    pub bundle: Arc<TrustBundle>,
}

impl X509Material {
    /// Material from an SVID and a bundle.
    pub fn new(svid: Svid, bundle: TrustBundle) -> Self {
        Self {
            svid: Arc::new(svid),
            bundle: Arc::new(bundle),
        }
    }
}
