//! The `monitor` element and its passthrough.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest, State};
use nsm_core::metadata::Side;
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};
use tonic::Status;

use super::client_filter::merge;
use super::grpc::MonitorConnectionGrpc;
use super::hub::{DEFAULT_SUBSCRIBER_BUFFER, Hub};
use super::upstream::{Upstreams, WatchGuard, Watcher};
use crate::dial::ClientConn;
use crate::encoded::RecordedConnection;

const ELEMENT: &str = "monitor";

/// The connection's registration on the next hop's shared stream; removing it from metadata (or
/// dropping the metadata) stops the passthrough of this connection at once.
#[derive(Clone)]
struct PassthroughLoop(#[allow(dead_code)] Arc<Passthrough>);

struct Passthrough {
    republish: Arc<Republish>,
    _guard: WatchGuard,
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        self.republish.stopped.store(true, Ordering::Release);
    }
}

/// Re-publishes the next hop's view of one connection (the id the shared stream dispatches it by)
/// into our hub, merged into the version the hub holds (our view: our id and index), until its
/// passthrough stops.
struct Republish {
    hub: Arc<Hub>,
    stopped: AtomicBool,
}

impl Republish {
    fn running(&self) -> bool {
        !self.stopped.load(Ordering::Acquire)
    }
}

impl Watcher for Republish {
    fn changed(&self, id: &str, incoming: &Connection, deleted: bool) {
        self.hub
            .update_if(|| self.running(), id, |ours| merge(ours, incoming, deleted));
    }

    fn broken(&self, id: &str) {
        self.hub.update_if(
            || self.running(),
            id,
            |ours| {
                let mut down = ours.clone();
                down.state = State::Down as i32;
                Some(down)
            },
        );
    }
}

/// The `monitor` server element.
pub struct MonitorServer {
    hub: Arc<Hub>,
    upstreams: Upstreams,
}

impl std::fmt::Debug for MonitorServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorServer")
            .field("connections", &self.hub.connections().len())
            .finish()
    }
}

impl Default for MonitorServer {
    fn default() -> Self {
        Self::new()
    }
}

impl MonitorServer {
    /// A monitor with no connections; subscribers may queue [`DEFAULT_SUBSCRIBER_BUFFER`] events.
    pub fn new() -> Self {
        Self::with_subscriber_buffer(DEFAULT_SUBSCRIBER_BUFFER)
    }

    /// A monitor whose subscribers are disconnected once `events` events are queued for them.
    pub fn with_subscriber_buffer(events: usize) -> Self {
        Self {
            hub: Arc::new(Hub::new(events)),
            upstreams: Upstreams::default(),
        }
    }

    /// The MonitorConnection gRPC service over this element's connections.
    pub fn monitor_connection(&self) -> MonitorConnectionGrpc {
        MonitorConnectionGrpc {
            hub: self.hub.clone(),
        }
    }

    /// The connections this hop currently has, by id.
    pub fn connections(&self) -> BTreeMap<String, Connection> {
        self.hub.connections()
    }

    /// Number of connections whose next hop is being monitored (passthrough).
    pub fn passthrough_loops(&self) -> usize {
        self.upstreams.watching()
    }

    /// Number of MonitorConnections streams open to next hops: one per next-hop URL, shared by every
    /// connection through this hop to it (kept a while after its last connection closes).
    pub fn upstream_streams(&self) -> usize {
        self.upstreams.streams()
    }

    /// Number of live MonitorConnections subscribers.
    pub fn subscribers(&self) -> usize {
        self.hub.subscriber_count()
    }

    /// Closes shared next-hop streams after `idle` without connections (tests).
    #[cfg(test)]
    pub(crate) fn with_upstream_idle_timeout(mut self, idle: std::time::Duration) -> Self {
        self.upstreams = Upstreams::with_idle_timeout(idle);
        self
    }

    /// The record of connection `id` (tests of sharing).
    #[cfg(test)]
    pub(crate) fn recorded(&self, id: &str) -> Option<crate::encoded::Encoded<Connection>> {
        self.hub.recorded(id)
    }

    /// Publishes an event as if the chain had produced it (tests of subscribers).
    #[cfg(test)]
    pub(crate) fn publish(&self, ev: nsm_api::ConnectionEvent) {
        self.hub.publish(ev);
    }

    fn stop_loop(ctx: &Ctx) {
        if let Some(md) = ctx.metadata() {
            md.remove::<PassthroughLoop>(Side::Server);
        }
    }

    async fn start_loop(
        &self,
        ctx: &Ctx,
        cc: &ClientConn,
        conn: &Connection,
    ) -> std::result::Result<(), Status> {
        let Some(md) = ctx.metadata() else {
            return Ok(());
        };
        let republish = Arc::new(Republish {
            hub: self.hub.clone(),
            stopped: AtomicBool::new(false),
        });
        let guard = self
            .upstreams
            .watch(cc, conn, ctx.remaining(), *ctx.clock(), republish.clone())
            .await?;
        md.insert(
            Side::Server,
            PassthroughLoop(Arc::new(Passthrough {
                republish,
                _guard: guard,
            })),
        );
        Ok(())
    }
}

#[async_trait]
impl NetworkServiceServer for MonitorServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        Self::stop_loop(ctx);
        let entry = ctx.clone();
        let conn = next.clone().request(ctx, request).await?;
        let recorded = self.hub.publish_update(&conn);
        // For the `begin` before us, which keeps the same connection: one copy, not two.
        ctx.insert(RecordedConnection(recorded));
        let Some(cc) = ctx
            .metadata()
            .and_then(|m| m.get::<ClientConn>(Side::Client))
        else {
            return Ok(conn);
        };
        match self.start_loop(ctx, &cc, &conn).await {
            Ok(()) => Ok(conn),
            Err(status) => {
                let mut close_ctx = entry.postpone();
                if let Err(e) = next.close(&mut close_ctx, conn.clone()).await {
                    tracing::debug!(error = %e, "monitor: closing after a failed subscription failed");
                }
                self.hub.publish_delete(&conn);
                let status = Status::new(
                    status.code(),
                    format!("unable to monitor: {}", status.message()),
                );
                Err(NsmError::remote(ELEMENT, cc.url.to_string(), status))
            }
        }
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        Self::stop_loop(ctx);
        let result = next.close(ctx, conn.clone()).await;
        self.hub.publish_delete(&conn);
        result
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}
