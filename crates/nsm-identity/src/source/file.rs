//! SVID and trust bundle from PEM files, reloaded when they change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::X509Source;
use super::memory::MemorySource;
use crate::{IdentityError, Svid, TrustBundle, X509Material};

/// File names [`PemFileSource::from_dir`] reads.
pub const SVID_FILE: &str = "svid.pem";
/// The key file name in a directory source.
pub const KEY_FILE: &str = "svid.key";
/// The bundle file name in a directory source.
pub const BUNDLE_FILE: &str = "bundle.pem";

/// Reads a certificate chain (leaf first), a PKCS#8 ECDSA P-256 key and a bundle of CA certificates
/// from PEM files, and polls them for changes (a half-written set of files is retried on the next poll).
#[derive(Debug)]
pub struct PemFileSource {
    inner: Arc<MemorySource>,
    task: JoinHandle<()>,
}

fn load(cert: &Path, key: &Path, bundle: &Path) -> Result<X509Material, IdentityError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| IdentityError::io(p, e));
    let chain = crate::parse_certs_pem(&read(cert)?)?;
    let key_der = match PrivateKeyDer::from_pem_slice(&read(key)?) {
        Ok(PrivateKeyDer::Pkcs8(k)) => k.secret_pkcs8_der().to_vec(),
        Ok(_) => {
            return Err(IdentityError::InvalidSvid(format!(
                "{}: the key must be PKCS#8 (\"BEGIN PRIVATE KEY\")",
                key.display()
            )));
        }
        Err(e) => {
            return Err(IdentityError::InvalidSvid(format!(
                "{}: {e}",
                key.display()
            )));
        }
    };
    let roots = crate::parse_certs_pem(&read(bundle)?)?;
    Ok(X509Material::new(
        Svid::from_der(chain, key_der)?,
        TrustBundle::new(roots)?,
    ))
}

fn stamp(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

impl PemFileSource {
    /// Loads the three files (failing if they are missing or invalid) and polls them every `poll`.
    pub fn new(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        bundle: impl Into<PathBuf>,
        poll: Duration,
    ) -> Result<Arc<Self>, IdentityError> {
        let paths = vec![cert.into(), key.into(), bundle.into()];
        // Stamp before loading: a change racing with the load is seen by the first poll.
        let mut last = stamp(&paths);
        let inner = Arc::new(MemorySource::new(load(&paths[0], &paths[1], &paths[2])?));
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(poll).await;
                let Some(mem) = weak.upgrade() else { return };
                let now = stamp(&paths);
                if now == last {
                    continue;
                }
                match load(&paths[0], &paths[1], &paths[2]) {
                    Ok(m) => {
                        tracing::info!(spiffe_id = m.svid.spiffe_id(), "identity files reloaded");
                        mem.set(m);
                        last = now;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "identity files changed but cannot be loaded; keeping the previous SVID")
                    }
                }
            }
        });
        Ok(Arc::new(Self { inner, task }))
    }

    /// Reads `svid.pem`, `svid.key` and `bundle.pem` from `dir`.
    pub fn from_dir(dir: &Path, poll: Duration) -> Result<Arc<Self>, IdentityError> {
        Self::new(
            dir.join(SVID_FILE),
            dir.join(KEY_FILE),
            dir.join(BUNDLE_FILE),
            poll,
        )
    }
}

impl Drop for PemFileSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl X509Source for PemFileSource {
    fn subscribe(&self) -> watch::Receiver<Arc<X509Material>> {
        self.inner.subscribe()
    }
}

/// Writes the three files of a directory source (key first with mode 0600, then the bundle, then
/// the certificate, each replaced atomically).
pub(crate) fn write_files(
    dir: &Path,
    cert: &str,
    key: &str,
    bundle: &str,
) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|e| IdentityError::io(dir, e))?;
    for (name, text, mode) in [
        (KEY_FILE, key, 0o600),
        (BUNDLE_FILE, bundle, 0o644),
        (SVID_FILE, cert, 0o644),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        let dst = dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &dst))
            .map_err(|e| IdentityError::io(&dst, e))?;
    }
    Ok(())
}
