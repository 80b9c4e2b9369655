//! SPIFFE X.509-SVID mutual TLS with rustls on aws-lc-rs.
//!
//! Both sides present the source's current SVID on every handshake and verify the peer's chain against
//! the current trust bundle. The peer's leaf must carry a `spiffe://` URI SAN, but any SPIFFE ID is
//! accepted: as in Go NSM (`tlsconfig.AuthorizeAny()`), authorization happens later, with path tokens
//! and policies. SVIDs have no DNS names, so the server name is not checked.

use std::sync::Arc;

use nsm_core::values::PeerInfo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::watch;

use crate::{IdentityError, SharedSource, Svid, X509Material, der_to_pem, spiffe_id_of};

/// The one crypto provider of nsm-rs (aws-lc-rs).
pub fn crypto_provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Installs aws-lc-rs as the process-wide rustls provider (for code that uses `builder()`); harmless
/// when one is installed already.
pub fn install_crypto_provider() {
    let _ = crypto_provider().install_default();
}

type Current = watch::Receiver<Arc<X509Material>>;

fn not_spiffe(e: IdentityError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

/// Presents the current SVID (server and client side).
struct SvidResolver(Current);

impl std::fmt::Debug for SvidResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SvidResolver")
    }
}

impl SvidResolver {
    fn key(&self) -> Arc<CertifiedKey> {
        self.0.borrow().svid.certified_key()
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Presents one fixed SVID (a connection pinned to the identity it was established with).
#[derive(Debug)]
struct FixedResolver(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for FixedResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies the server's chain against the bundle, ignoring the name (client side).
struct SpiffeServerVerifier {
    current: Current,
    algs: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpiffeServerVerifier")
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let bundle = self.current.borrow().bundle.clone();
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            bundle.store(),
            intermediates,
            now,
            self.algs.all,
        )?;
        spiffe_id_of(end_entity).map_err(not_spiffe)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Requires a client certificate chaining to the bundle (server side).
struct SpiffeClientVerifier {
    current: Current,
    algs: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpiffeClientVerifier")
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let bundle = self.current.borrow().bundle.clone();
        bundle
            .client_verifier()
            .verify_client_cert(end_entity, intermediates, now)?;
        spiffe_id_of(end_entity).map_err(not_spiffe)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A workload's TLS identity: the source and the rustls configs built on it.
pub struct TlsIdentity {
    source: SharedSource,
    current: Current,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("spiffe_id", &self.current.borrow().svid.spiffe_id())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Client and server configs following `source`.
    pub fn new(source: SharedSource) -> Result<Arc<Self>, IdentityError> {
        let provider = Arc::new(crypto_provider());
        let algs = provider.signature_verification_algorithms;
        let current = source.subscribe();
        let tls = |e: Error| IdentityError::Tls(e.to_string());
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .with_client_cert_verifier(Arc::new(SpiffeClientVerifier {
                current: current.clone(),
                algs,
            }))
            .with_cert_resolver(Arc::new(SvidResolver(current.clone())));
        server.alpn_protocols = vec![b"h2".to_vec()];
        // No resumption: a resumed session carries the peer certificate of the original handshake,
        // which after a rotation is not the key that signs the peer's tokens.
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
                current: current.clone(),
                algs,
            }))
            .with_client_cert_resolver(Arc::new(SvidResolver(current.clone())));
        client.alpn_protocols = vec![b"h2".to_vec()];
        client.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(Self {
            source,
            current,
            server: Arc::new(server),
            client: Arc::new(client),
        }))
    }

    /// The source.
    pub fn source(&self) -> &SharedSource {
        &self.source
    }

    /// The current material.
    pub fn current(&self) -> Arc<X509Material> {
        self.current.borrow().clone()
    }

    /// Own SPIFFE ID now.
    pub fn spiffe_id(&self) -> String {
        self.current.borrow().svid.spiffe_id().to_string()
    }

    /// The server config (mTLS, ALPN h2).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The client config (mTLS, ALPN h2, no server name check).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// A server config presenting `svid` instead of the current SVID: an accepted connection is pinned
    /// to the identity it was established with, and tokens answered on it are signed with the same
    /// key (the peer verifies them with the certificate it saw in the handshake).
    pub fn server_config_as(&self, svid: &Svid) -> Arc<ServerConfig> {
        let mut c = (*self.server).clone();
        c.cert_resolver = Arc::new(FixedResolver(svid.certified_key()));
        Arc::new(c)
    }

    /// A client config presenting `svid` on every (re)connect (see [`TlsIdentity::server_config_as`]).
    pub fn client_config_as(&self, svid: &Svid) -> Arc<ClientConfig> {
        let mut c = (*self.client).clone();
        c.client_auth_cert_resolver = Arc::new(FixedResolver(svid.certified_key()));
        Arc::new(c)
    }

    /// An acceptor for incoming connections.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }

    /// A connector for outgoing connections.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client.clone())
    }
}

/// What chain elements learn of a TLS peer: its SPIFFE ID and leaf certificate (PEM). The remote address
/// is left for the caller to fill.
pub fn peer_info(peer_certificates: Option<&[CertificateDer<'_>]>) -> PeerInfo {
    let Some(leaf) = peer_certificates.and_then(<[_]>::first) else {
        return PeerInfo::default();
    };
    PeerInfo {
        spiffe_id: spiffe_id_of(leaf).ok().map(|(id, _)| id),
        certificate_pem: Some(der_to_pem("CERTIFICATE", leaf).into()),
        remote_addr: None,
    }
}
