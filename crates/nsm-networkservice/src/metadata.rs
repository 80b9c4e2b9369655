//! `metadata`: per-connection state for the elements after it.
//!
//! **Request**: looks up (or creates) the [`ConnMetadata`] of `Connection.id` and attaches it to the
//! context for the rest of the chain. If the first Request of a connection fails, the entry is dropped
//! again; a failed re-request of an established connection keeps it (the connection still exists).
//!
//! **Close**: attaches the connection's metadata (a throw-away empty one for an unknown id), runs the rest
//! of the chain and drops the entry.
//!
//! If the context already carries metadata — a client chain nested in a server chain by `connect` — the
//! element passes straight through, so both chains share one [`ConnMetadata`] as in Go. The context's
//! previous metadata is put back when the call returns, so elements before this one never see it.
//!
//! **State**: one `Arc<ConnMetadata>` per connection id. No background events.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::metadata::ConnMetadata;
use nsm_core::{Ctx, NetworkServiceServer, Next, Result};
use parking_lot::Mutex;

const ELEMENT: &str = "metadata";

/// The map shared by both variants.
#[derive(Debug, Default)]
struct MetadataMap {
    entries: Mutex<HashMap<String, Arc<ConnMetadata>>>,
}

impl MetadataMap {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        if ctx.metadata().is_some() {
            return next.request(ctx, request).await;
        }
        let id = request
            .connection
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default();
        let (md, established) = {
            let mut entries = self.entries.lock();
            let established = entries.contains_key(&id);
            let md = entries.entry(id.clone()).or_default().clone();
            (md, established)
        };
        ctx.set_metadata(Some(md.clone()));
        let result = next.request(ctx, request).await;
        ctx.set_metadata(None);
        if result.is_err() && !established {
            self.forget(&id, &md);
            tracing::debug!(element = ELEMENT, id = %id, "first request failed: metadata deleted");
        }
        result
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        if ctx.metadata().is_some() {
            return next.close(ctx, conn).await;
        }
        let id = conn.id.clone();
        let md = self.entries.lock().get(&id).cloned();
        ctx.set_metadata(Some(md.clone().unwrap_or_default()));
        let result = next.close(ctx, conn).await;
        ctx.set_metadata(None);
        if let Some(md) = md {
            self.forget(&id, &md);
            tracing::debug!(element = ELEMENT, id = %id, "closed: metadata deleted");
        }
        result
    }

    /// Drops the entry of `id` if it is still `md` (a newer connection with the same id keeps its own).
    fn forget(&self, id: &str, md: &Arc<ConnMetadata>) {
        let mut entries = self.entries.lock();
        if entries.get(id).is_some_and(|m| Arc::ptr_eq(m, md)) {
            entries.remove(id);
        }
    }

    fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

/// `metadata` for server chains.
#[derive(Debug, Default)]
pub struct MetadataServer(MetadataMap);

impl MetadataServer {
    /// A new element with no connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of connections with metadata (for leak checks).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if no connection has metadata.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `metadata` for client chains; a no-op when nested in a server chain that already has metadata.
#[derive(Debug, Default)]
pub struct MetadataClient(MetadataMap);

impl MetadataClient {
    /// A new element with no connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of connections with metadata (for leak checks).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if no connection has metadata.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl NetworkServiceServer for MetadataServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        self.0.request(ctx, request, next).await
    }
    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        self.0.close(ctx, conn, next).await
    }
    fn name(&self) -> &'static str {
        ELEMENT
    }
}

#[async_trait]
impl NetworkServiceServer for MetadataClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        self.0.request(ctx, request, next).await
    }
    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        self.0.close(ctx, conn, next).await
    }
    fn name(&self) -> &'static str {
        ELEMENT
    }
}

#[cfg(test)]
mod tests {
    use nsm_core::metadata::Side;
    use nsm_core::{Chain, Clock, NsmError};

    use super::*;

    #[derive(Clone, Debug, Default, PartialEq)]
    struct Counter(u32);

    /// Counts requests in the connection's metadata; fails when asked to.
    struct Count {
        fail: Mutex<bool>,
    }

    #[async_trait]
    impl NetworkServiceServer for Count {
        async fn request(
            &self,
            ctx: &mut Ctx,
            request: NetworkServiceRequest,
            next: Next,
        ) -> Result<Connection> {
            let md = ctx.metadata().expect("metadata attached");
            md.with(Side::Server, |c: &mut Counter| c.0 += 1);
            if *self.fail.lock() {
                return Err(NsmError::unavailable("count", "injected"));
            }
            next.request(ctx, request).await
        }
        async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
            assert!(ctx.metadata().is_some());
            next.close(ctx, conn).await
        }
        fn name(&self) -> &'static str {
            "count"
        }
    }

    fn setup() -> (Chain, Arc<MetadataServer>, Arc<Count>) {
        let md = Arc::new(MetadataServer::new());
        let count = Arc::new(Count {
            fail: Mutex::new(false),
        });
        (Chain::new("t", vec![md.clone(), count.clone()]), md, count)
    }

    fn req(id: &str) -> NetworkServiceRequest {
        NetworkServiceRequest {
            connection: Some(Connection {
                id: id.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn state_survives_between_requests_and_is_dropped_on_close() {
        let (c, md, _) = setup();
        let mut ctx = Ctx::new(Clock::system());
        c.run_request(&mut ctx, req("a")).await.unwrap();
        assert!(
            ctx.metadata().is_none(),
            "caller's context is left as it was"
        );
        let conn = c.run_request(&mut ctx, req("a")).await.unwrap();
        assert_eq!(md.len(), 1);
        let stored = md.0.entries.lock().get("a").cloned().unwrap();
        assert_eq!(stored.get::<Counter>(Side::Server), Some(Counter(2)));
        c.run_close(&mut ctx, conn).await.unwrap();
        assert!(md.is_empty());
    }

    #[tokio::test]
    async fn failed_first_request_leaves_nothing_but_failed_refresh_keeps_state() {
        let (c, md, count) = setup();
        let mut ctx = Ctx::new(Clock::system());
        *count.fail.lock() = true;
        assert!(c.run_request(&mut ctx, req("a")).await.is_err());
        assert!(md.is_empty());
        *count.fail.lock() = false;
        c.run_request(&mut ctx, req("a")).await.unwrap();
        *count.fail.lock() = true;
        assert!(c.run_request(&mut ctx, req("a")).await.is_err());
        assert_eq!(md.len(), 1);
    }

    #[tokio::test]
    async fn close_of_unknown_id_succeeds_with_throwaway_metadata() {
        let (c, md, _) = setup();
        c.run_close(&mut Ctx::new(Clock::system()), Connection::default())
            .await
            .unwrap();
        assert!(md.is_empty());
    }

    #[tokio::test]
    async fn nested_client_shares_the_servers_metadata() {
        let client = Arc::new(MetadataClient::new());
        let (_, server, count) = setup();
        let inner = Chain::new("client", vec![client.clone(), count.clone()]);
        let outer = Chain::new("server", vec![server.clone(), Arc::new(inner)]);
        let mut ctx = Ctx::new(Clock::system());
        let conn = outer.run_request(&mut ctx, req("a")).await.unwrap();
        assert_eq!(server.len(), 1);
        assert!(
            client.is_empty(),
            "the nested client kept nothing of its own"
        );
        outer.run_close(&mut ctx, conn).await.unwrap();
        assert!(server.is_empty());
    }
}
