//! The SPIFFE Workload API (SPIRE agent) as a source; rotations are followed live.
//!
//! The `spiffe` crate's `X509Source` holds the `FetchX509SVID` stream. When the agent goes away (stream
//! cut, socket gone) it keeps its last SVID and redials on its own, with exponential backoff between a
//! minimum and a maximum delay (its timers, not ours); the first response after the agent returns is
//! applied like any rotation. This source mirrors every update into a [`MemorySource`], so TLS configs
//! and token generators built on it keep presenting the last SVID meanwhile: established connections
//! keep working, and new ones too until that SVID expires. An update that cannot be used (the agent
//! withdrew the identity, or the SVID is unparsable) is logged and the previous SVID kept.
//!
//! State: the `spiffe` source, the mirror and the task copying updates (stopped on drop).

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::X509Source;
use super::memory::MemorySource;
use crate::{IdentityError, Svid, TrustBundle, X509Material};

/// Follows the Workload API. When the agent restarts, the last SVID stays in use (established
/// connections keep working until it expires) and new SVIDs are picked up when the agent returns.
pub struct WorkloadApiSource {
    inner: Arc<MemorySource>,
    source: spiffe::X509Source,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for WorkloadApiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadApiSource")
    }
}

fn convert(source: &spiffe::X509Source) -> Result<X509Material, IdentityError> {
    let err = |e: &dyn std::fmt::Display| IdentityError::WorkloadApi(e.to_string());
    let svid = source.svid().map_err(|e| err(&e))?;
    let chain = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let svid = Svid::from_der(chain, svid.private_key().as_bytes().to_vec())?;
    let bundles = source.bundle_set().map_err(|e| err(&e))?;
    let roots = bundles
        .iter()
        .flat_map(|(_, b)| b.authorities().iter())
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    Ok(X509Material::new(svid, TrustBundle::new(roots)?))
}

impl WorkloadApiSource {
    /// The first delay before redialing an agent that went away.
    pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
    /// The longest delay between redials.
    pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

    /// Connects to `endpoint` (`unix:///path` or `tcp://host:port`; `None`: `SPIFFE_ENDPOINT_SOCKET`)
    /// and waits for the first SVID. Redials a lost agent after [`Self::MIN_BACKOFF`], doubling up to
    /// [`Self::MAX_BACKOFF`].
    pub async fn connect(endpoint: Option<&str>) -> Result<Arc<Self>, IdentityError> {
        Self::connect_with_backoff(endpoint, Self::MIN_BACKOFF, Self::MAX_BACKOFF).await
    }

    /// [`Self::connect`] with the redial delays given: the first `min_backoff`, doubling (with a little
    /// jitter) up to `max_backoff`. A returning agent is noticed at most about `max_backoff` later.
    pub async fn connect_with_backoff(
        endpoint: Option<&str>,
        min_backoff: Duration,
        max_backoff: Duration,
    ) -> Result<Arc<Self>, IdentityError> {
        let mut builder = spiffe::X509Source::builder().reconnect_backoff(min_backoff, max_backoff);
        if let Some(e) = endpoint {
            builder = builder.endpoint(e);
        }
        let source = builder
            .build()
            .await
            .map_err(|e| IdentityError::WorkloadApi(e.to_string()))?;
        let inner = Arc::new(MemorySource::new(convert(&source)?));
        let (weak, src) = (Arc::downgrade(&inner), source.clone());
        let task = tokio::spawn(async move {
            let mut updates = src.updated();
            while updates.changed().await.is_ok() {
                let Some(mem) = weak.upgrade() else { return };
                match convert(&src) {
                    Ok(m) => mem.set(m),
                    Err(e) => {
                        tracing::warn!(error = %e, "Workload API update unusable; keeping the previous SVID")
                    }
                }
            }
        });
        Ok(Arc::new(Self {
            inner,
            source,
            task,
        }))
    }
}

impl Drop for WorkloadApiSource {
    fn drop(&mut self) {
        self.task.abort();
        let source = self.source.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { source.shutdown().await });
        }
    }
}

impl X509Source for WorkloadApiSource {
    fn subscribe(&self) -> watch::Receiver<Arc<X509Material>> {
        self.inner.subscribe()
    }
}
