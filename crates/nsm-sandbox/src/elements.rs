//! Small elements tests put into endpoints and clients (Go sdk `utils/count`, `utils/inject/*`,
//! `common/replacelabels`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result, async_trait};
use parking_lot::Mutex;

/// Counts the Requests and Closes that reach it (before passing them on), in total and by
/// connection id (Go `count.Server`).
#[derive(Debug, Default)]
pub struct Counter {
    requests: AtomicUsize,
    closes: AtomicUsize,
    ids: Mutex<(BTreeSet<String>, BTreeSet<String>)>,
}

impl Counter {
    /// A counter at zero, ready to share between endpoints.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Requests seen.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Closes seen.
    pub fn closes(&self) -> usize {
        self.closes.load(Ordering::SeqCst)
    }

    /// Distinct connection ids requested.
    pub fn unique_requests(&self) -> usize {
        self.ids.lock().0.len()
    }

    /// Distinct connection ids closed.
    pub fn unique_closes(&self) -> usize {
        self.ids.lock().1.len()
    }
}

#[async_trait]
impl NetworkServiceServer for Counter {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let id = request
            .connection
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default();
        self.ids.lock().0.insert(id);
        next.request(ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        self.closes.fetch_add(1, Ordering::SeqCst);
        self.ids.lock().1.insert(conn.id.clone());
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        "count"
    }
}

/// Fails every Request with a clone of its error (Go `injecterror.NewServer()`); Close passes.
#[derive(Debug)]
pub struct InjectError {
    error: NsmError,
    requests: AtomicUsize,
}

impl InjectError {
    /// Fails with `Unavailable` "busy".
    pub fn busy() -> Arc<Self> {
        Self::with(NsmError::unavailable("injecterror", "endpoint is busy"))
    }

    /// Fails with `error`.
    pub fn with(error: NsmError) -> Arc<Self> {
        Arc::new(Self {
            error,
            requests: AtomicUsize::new(0),
        })
    }

    /// Requests refused so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl NetworkServiceServer for InjectError {
    async fn request(
        &self,
        _ctx: &mut Ctx,
        _request: NetworkServiceRequest,
        _next: Next,
    ) -> Result<Connection> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        Err(self.error.clone())
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        "injecterror"
    }
}

/// Waits `delay` (on the context's clock) before passing a Request on (a slow endpoint).
#[derive(Debug)]
pub struct Delay(pub Duration);

#[async_trait]
impl NetworkServiceServer for Delay {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        ctx.clock().sleep(self.0).await;
        next.request(ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        "delay"
    }
}

/// Client element of passthrough endpoints (Go `replacelabels.NewClient`): the next hop sees `labels`
/// as the connection's labels and no endpoint name (the endpoint the caller chose is this one, the
/// onward request selects its own); the caller gets its own labels and endpoint name back.
#[derive(Debug, Clone)]
pub struct ReplaceLabels(pub BTreeMap<String, String>);

#[async_trait]
impl NetworkServiceServer for ReplaceLabels {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let conn = request.connection.get_or_insert_with(Default::default);
        let labels = std::mem::replace(&mut conn.labels, self.0.clone());
        let nse = std::mem::take(&mut conn.network_service_endpoint_name);
        let mut out = next.request(ctx, request).await?;
        out.labels = labels;
        out.network_service_endpoint_name = nse;
        Ok(out)
    }

    async fn close(&self, ctx: &mut Ctx, mut conn: Connection, next: Next) -> Result<()> {
        conn.labels = self.0.clone();
        conn.network_service_endpoint_name.clear();
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        "replacelabels"
    }
}
