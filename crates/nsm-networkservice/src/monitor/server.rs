//! The `monitor` element and its passthrough loop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use nsm_api::{Connection, ConnectionEvent, ConnectionEventType, NetworkServiceRequest, State};
use nsm_core::metadata::Side;
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{Status, Streaming};

use super::client_filter::{ClientFilter, subscribe_next_hop};
use super::grpc::MonitorConnectionGrpc;
use super::hub::{DEFAULT_SUBSCRIBER_BUFFER, Hub};
use crate::dial::ClientConn;

const ELEMENT: &str = "monitor";

/// Stops the connection's passthrough loop when removed from metadata (or when the metadata goes).
#[derive(Clone)]
struct PassthroughLoop(#[allow(dead_code)] Arc<DropGuard>);

/// The `monitor` server element.
pub struct MonitorServer {
    hub: Arc<Hub>,
    loops: Arc<AtomicUsize>,
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

fn event(kind: ConnectionEventType, conn: Connection) -> ConnectionEvent {
    ConnectionEvent {
        r#type: kind as i32,
        connections: [(conn.id.clone(), conn)].into(),
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
            loops: Arc::default(),
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

    /// Number of running passthrough loops (one per connection monitored at the next hop).
    pub fn passthrough_loops(&self) -> usize {
        self.loops.load(Ordering::Acquire)
    }

    /// Number of live MonitorConnections subscribers.
    pub fn subscribers(&self) -> usize {
        self.hub.subscriber_count()
    }

    /// Publishes an event as if the chain had produced it (tests of subscribers).
    #[cfg(test)]
    pub(crate) fn publish(&self, ev: ConnectionEvent) {
        self.hub.publish(ev);
    }

    fn stop_loop(ctx: &Ctx) {
        if let Some(md) = ctx.metadata() {
            md.remove::<PassthroughLoop>(Side::Server);
        }
    }

    fn start_loop(&self, ctx: &Ctx, stream: Streaming<ConnectionEvent>, conn: Connection) {
        let Some(md) = ctx.metadata() else { return };
        let stop = CancellationToken::new();
        md.insert(
            Side::Server,
            PassthroughLoop(Arc::new(stop.clone().drop_guard())),
        );
        let hub = self.hub.clone();
        let loops = self.loops.clone();
        loops.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            passthrough(&hub, stream, ClientFilter::new(conn), &stop).await;
            loops.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Re-publishes the next hop's view of one connection until stopped; a broken stream means DOWN.
async fn passthrough(
    hub: &Hub,
    mut stream: Streaming<ConnectionEvent>,
    mut filter: ClientFilter,
    stop: &CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => return,
            m = stream.message() => m,
        };
        let changed = match msg {
            Ok(Some(ev)) => filter.apply(&ev),
            Ok(None) | Err(_) => {
                let mut down = filter.current().clone();
                down.state = State::Down as i32;
                hub.publish_if(
                    || !stop.is_cancelled(),
                    event(ConnectionEventType::Update, down),
                );
                return;
            }
        };
        if let Some(conn) = changed {
            hub.publish_if(
                || !stop.is_cancelled(),
                event(ConnectionEventType::Update, conn),
            );
        }
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
        self.hub
            .publish(event(ConnectionEventType::Update, conn.clone()));
        let Some(cc) = ctx
            .metadata()
            .and_then(|m| m.get::<ClientConn>(Side::Client))
        else {
            return Ok(conn);
        };
        match subscribe_next_hop(&cc, &conn, ctx.remaining()).await {
            Ok(stream) => {
                self.start_loop(ctx, stream, conn.clone());
                Ok(conn)
            }
            Err(status) => {
                let mut close_ctx = entry.postpone();
                if let Err(e) = next.close(&mut close_ctx, conn.clone()).await {
                    tracing::debug!(error = %e, "monitor: closing after a failed subscription failed");
                }
                self.hub.publish(event(ConnectionEventType::Delete, conn));
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
        self.hub.publish(event(ConnectionEventType::Delete, conn));
        result
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}
