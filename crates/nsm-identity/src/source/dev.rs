//! The development identity: a local CA that issues short-lived X.509-SVIDs, so nothing needs SPIRE to
//! try nsm-rs.
//!
//! [`DevCa::new`] creates a trust domain's CA (ECDSA P-256, self-signed); [`DevCa::issue`] issues SVIDs
//! following the SPIFFE X.509-SVID profile (URI SAN `spiffe://<td>/<path>`, KeyUsage digitalSignature,
//! CA:false, EKU serverAuth + clientAuth). [`DevCa::save`] / [`DevCa::load`] persist the CA in a
//! directory (for `nsm up`: every component of the local mesh loads the same CA), and
//! [`DevCa::source`] gives a source that re-issues its SVID at half its lifetime.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nsm_core::Clock;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::X509Source;
use super::memory::MemorySource;
use crate::{IdentityError, Svid, TrustBundle, X509Material};

/// How far back certificates' NotBefore is set, to tolerate clock skew between components.
const BACKDATE: Duration = Duration::from_secs(60);

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

/// A development certificate authority for one trust domain.
pub struct DevCa {
    trust_domain: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
    clock: Clock,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn issue_err(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Issue(e.to_string())
}

fn offset_time(t: SystemTime) -> Result<time::OffsetDateTime, IdentityError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| issue_err("time before 1970"))?
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).map_err(issue_err)?)
        .map_err(issue_err)
}

fn random_serial() -> Result<SerialNumber, IdentityError> {
    // A fresh key's public bytes are as good a source of randomness as any here.
    let k = KeyPair::generate().map_err(issue_err)?;
    let raw = k.public_key_raw();
    let mut serial = raw[1..17].to_vec();
    serial[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&serial))
}

fn check_trust_domain(td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty()
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Config(format!(
            "invalid trust domain {td:?} (lowercase letters, digits, '-', '.', '_')"
        )))
    }
}

impl DevCa {
    /// A new CA for `trust_domain` (valid for a year), on the system clock.
    pub fn new(trust_domain: &str) -> Result<Self, IdentityError> {
        Self::with_clock(trust_domain, Clock::system())
    }

    /// A new CA whose certificates' validity starts at `clock`'s now.
    pub fn with_clock(trust_domain: &str, clock: Clock) -> Result<Self, IdentityError> {
        check_trust_domain(trust_domain)?;
        let key = KeyPair::generate().map_err(issue_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "nsm-rs development");
        dn.push(DnType::CommonName, format!("nsm-rs dev CA {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .map_err(issue_err)?,
        )];
        let now = clock.now();
        params.not_before = offset_time(now - BACKDATE)?;
        params.not_after = offset_time(now + Duration::from_secs(365 * 24 * 3600))?;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(issue_err)?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
            clock,
        })
    }

    /// Loads the CA saved in `dir` by [`DevCa::save`].
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| IdentityError::io(&p, e))
        };
        let cert_pem = read(CA_CERT_FILE)?;
        let key = KeyPair::from_pem(&read(CA_KEY_FILE)?).map_err(issue_err)?;
        let cert_der = crate::parse_certs_pem(cert_pem.as_bytes())?
            .into_iter()
            .next()
            .ok_or_else(|| {
                IdentityError::InvalidBundle(format!("no certificate in {CA_CERT_FILE}"))
            })?;
        let (id, _) = crate::spiffe_id_of(&cert_der)?;
        let trust_domain = id.trim_start_matches("spiffe://").to_string();
        Ok(Self {
            trust_domain,
            cert_der,
            cert_pem,
            key,
            clock: Clock::system(),
        })
    }

    /// Loads the CA from `dir`, or creates one for `trust_domain` and saves it there.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, IdentityError> {
        if dir.join(CA_CERT_FILE).exists() {
            let ca = Self::load(dir)?;
            if ca.trust_domain != trust_domain {
                return Err(IdentityError::Config(format!(
                    "{}: the CA there is for trust domain {}, not {trust_domain}",
                    dir.display(),
                    ca.trust_domain
                )));
            }
            return Ok(ca);
        }
        let ca = Self::new(trust_domain)?;
        ca.save(dir)?;
        Ok(ca)
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`, creating it.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).map_err(|e| IdentityError::io(dir, e))?;
        let write = |name: &str, text: &str, mode: u32| {
            use std::io::Write;
            let p = dir.join(name);
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&p)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| IdentityError::io(&p, e))
        };
        write(CA_KEY_FILE, &self.key.serialize_pem(), 0o600)?;
        write(CA_CERT_FILE, &self.cert_pem, 0o644)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A trust bundle holding this CA.
    pub fn bundle(&self) -> Result<TrustBundle, IdentityError> {
        TrustBundle::new(vec![self.cert_der.clone()])
    }

    /// The SPIFFE ID for `path` in this trust domain (`path` with or without a leading '/').
    pub fn spiffe_id(&self, path: &str) -> String {
        format!(
            "spiffe://{}/{}",
            self.trust_domain,
            path.trim_start_matches('/')
        )
    }

    /// Issues an SVID for `path`, valid for `ttl` from now.
    pub fn issue(&self, path: &str, ttl: Duration) -> Result<Svid, IdentityError> {
        let (chain, key) = self.issue_pem(path, ttl)?;
        let chain = crate::parse_certs_pem(chain.as_bytes())?;
        let key = KeyPair::from_pem(&key).map_err(issue_err)?;
        Svid::from_der(chain, key.serialize_der())
    }

    /// Issues an SVID for `path` as PEM: (leaf certificate, PKCS#8 key).
    pub fn issue_pem(&self, path: &str, ttl: Duration) -> Result<(String, String), IdentityError> {
        let key = KeyPair::generate().map_err(issue_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue_err)?;
        let id = self.spiffe_id(path);
        params.subject_alt_names = vec![SanType::URI(id.clone().try_into().map_err(issue_err)?)];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "nsm-rs development");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = self.clock.now();
        params.not_before = offset_time(now - BACKDATE)?;
        params.not_after = offset_time(now + ttl)?;
        params.serial_number = Some(random_serial()?);
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(issue_err)?;
        let cert = params.signed_by(&key, &issuer).map_err(issue_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The material for `path`: a fresh SVID and this CA's bundle.
    pub fn material(&self, path: &str, ttl: Duration) -> Result<X509Material, IdentityError> {
        Ok(X509Material::new(self.issue(path, ttl)?, self.bundle()?))
    }

    /// Writes an SVID for `path` into `dir` as `svid.pem`, `svid.key` (0600) and `bundle.pem`, the
    /// files a [`PemFileSource`](crate::PemFileSource) reads.
    pub fn write_svid_files(
        &self,
        dir: &Path,
        path: &str,
        ttl: Duration,
    ) -> Result<(), IdentityError> {
        let (cert, key) = self.issue_pem(path, ttl)?;
        crate::source::file::write_files(dir, &cert, &key, &self.cert_pem)
    }

    /// A source for `path` whose SVID lives `ttl` and is re-issued at half its lifetime.
    pub fn source(
        self: &Arc<Self>,
        path: &str,
        ttl: Duration,
    ) -> Result<Arc<DevSource>, IdentityError> {
        let inner = Arc::new(MemorySource::new(self.material(path, ttl)?));
        let (ca, mem, path) = (self.clone(), Arc::downgrade(&inner), path.to_string());
        let task = tokio::spawn(async move {
            let period = (ttl / 2).max(Duration::from_millis(10));
            loop {
                tokio::time::sleep(period).await;
                let Some(mem) = mem.upgrade() else { return };
                match ca.material(&path, ttl) {
                    Ok(m) => mem.set(m),
                    Err(e) => tracing::warn!(error = %e, "dev identity: cannot re-issue the SVID"),
                }
            }
        });
        Ok(Arc::new(DevSource { inner, task }))
    }
}

/// An SVID from a [`DevCa`], re-issued at half its lifetime (stops when dropped).
#[derive(Debug)]
pub struct DevSource {
    inner: Arc<MemorySource>,
    task: JoinHandle<()>,
}

impl DevSource {
    /// Replaces the material now (tests: rotation on demand).
    pub fn set(&self, material: X509Material) {
        self.inner.set(material);
    }
}

impl Drop for DevSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl X509Source for DevSource {
    fn subscribe(&self) -> watch::Receiver<Arc<X509Material>> {
        self.inner.subscribe()
    }
}
