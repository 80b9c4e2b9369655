//! `heal` (client, NSC side): re-request a connection when the path behind the next hop breaks.
//!
//! **Request**: stops the connection's monitor loop, runs the rest of the chain and, on success, if a
//! [`ClientConn`] and begin's [`EventFactory`] are present, opens `MonitorConnections` on the same channel
//! with selector = our own segment and waits for the INITIAL_STATE_TRANSFER (failure → closes the
//! just-made connection and fails "unable to monitor"). A task then watches the events of our connection.
//!
//! **Heal**: when the stream fails (anything but `Cancelled`), ends, or reports our connection DOWN (a
//! DELETE counts as DOWN), the task re-requests through begin with `reselect` — the old path is closed,
//! mechanism and endpoint name are cleared and every hop selects again — after 200 ms, then backing off
//! up to 1 s between attempts, until one succeeds (the new Request starts a new monitor) or the
//! connection is closed. Timers go through the context's clock.
//!
//! **Close**: stops the monitor and any healing (no task outlives the connection), then closes. The
//! Close that a reselect runs on the old path does not stop the healing it is part of.
//!
//! **State**: per connection id, in the element (not in connection metadata, which a failed reselect
//! drops): the connection's stop tokens and whether a heal is in progress. An external Close finds it
//! even mid-heal and stops everything at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nsm_core::values::FromEvent;
use parking_lot::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use nsm_api::{Connection, ConnectionEvent, NetworkServiceRequest, State};
use nsm_core::metadata::Side;
use nsm_core::{Clock, Ctx, NetworkServiceServer, Next, NsmError, Result};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming};

use crate::begin::{EventFactory, RequestOptions};
use crate::dial::ClientConn;
use crate::monitor::{ClientFilter, subscribe_next_hop};

const ELEMENT: &str = "heal";
/// Delay before the first heal attempt.
const FIRST_ATTEMPT_AFTER: Duration = Duration::from_millis(200);
/// Longest delay between heal attempts.
const MAX_ATTEMPT_INTERVAL: Duration = Duration::from_secs(1);

/// Per-connection heal state.
#[derive(Clone, Debug)]
struct HealState {
    /// Cancelled by a real Close: ends monitoring and healing for good.
    closed: CancellationToken,
    /// Cancelled when the current monitor stream is replaced.
    monitor: CancellationToken,
    /// True while a heal re-request runs (its Close of the old path must not stop it).
    healing: Arc<AtomicBool>,
}

/// The `heal` client element.
#[derive(Debug, Default)]
pub struct HealClient {
    tasks: Arc<AtomicUsize>,
    states: Arc<Mutex<HashMap<String, HealState>>>,
}

impl HealClient {
    /// A heal element (no liveliness check: every DOWN heals).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of running monitor/heal tasks (for leak checks).
    pub fn active_tasks(&self) -> usize {
        self.tasks.load(Ordering::Acquire)
    }

    /// Number of connections with heal state (for leak checks).
    pub fn tracked(&self) -> usize {
        self.states.lock().len()
    }

    fn spawn(&self, watch: Watch) {
        let tasks = self.tasks.clone();
        let states = self.states.clone();
        tasks.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let id = watch.event.connection_id().to_string();
            let closed = watch.state.closed.clone();
            if watch.run().await == Outcome::Gone {
                // The connection went away while healing: forget it, unless a new Request of the same
                // id already installed fresh state.
                closed.cancel();
                let mut st = states.lock();
                if st.get(&id).is_some_and(|s| s.closed.is_cancelled()) {
                    st.remove(&id);
                }
            }
            tasks.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// How a watch ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Monitoring was stopped, or the connection was healed (a new watch took over).
    Done,
    /// The connection no longer exists.
    Gone,
}

/// One connection's monitor loop, and the healing that follows it.
struct Watch {
    stream: Streaming<ConnectionEvent>,
    filter: ClientFilter,
    state: HealState,
    event: EventFactory,
    clock: Clock,
}

impl Watch {
    async fn run(mut self) -> Outcome {
        if !self.wait_for_trouble().await {
            return Outcome::Done;
        }
        drop(self.stream);
        let closed = self.state.closed.clone();
        let mut wait = FIRST_ATTEMPT_AFTER;
        loop {
            tokio::select! {
                () = closed.cancelled() => return Outcome::Done,
                () = self.clock.sleep(wait) => {}
            }
            self.state.healing.store(true, Ordering::Release);
            let opts = RequestOptions {
                reselect: true,
                cancel: Some(closed.clone()),
            };
            let attempt = tokio::select! {
                () = closed.cancelled() => return Outcome::Done,
                r = self.event.request(opts) => r,
            };
            self.state.healing.store(false, Ordering::Release);
            match attempt {
                // Healed: the new Request monitors again.
                Ok(Some(_)) => return Outcome::Done,
                // Nothing to re-request: the connection was closed meanwhile.
                Ok(None) => return Outcome::Gone,
                Err(e) => {
                    tracing::debug!(id = %self.event.connection_id(), error = %e, "heal: re-request failed")
                }
            }
            wait = (wait * 2).min(MAX_ATTEMPT_INTERVAL);
        }
    }

    /// Waits until the connection needs healing (true) or monitoring was stopped (false).
    async fn wait_for_trouble(&mut self) -> bool {
        loop {
            let msg = tokio::select! {
                () = self.state.monitor.cancelled() => return false,
                m = self.stream.message() => m,
            };
            match msg {
                Ok(Some(ev)) => {
                    if self
                        .filter
                        .apply(&ev)
                        .is_some_and(|c| c.state() == State::Down)
                    {
                        return true;
                    }
                }
                Err(s) if s.code() == Code::Cancelled => return false,
                Ok(None) | Err(_) => return true,
            }
        }
    }
}

#[async_trait]
impl NetworkServiceServer for HealClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let md = ctx.metadata().cloned();
        let id = request
            .connection
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default();
        let previous = self.states.lock().get(&id).cloned();
        if let Some(p) = &previous {
            p.monitor.cancel();
        }
        let entry = ctx.clone();
        let conn = next.clone().request(ctx, request).await?;
        let (Some(md), Some(event)) = (md, ctx.get::<EventFactory>().cloned()) else {
            return Ok(conn);
        };
        let Some(cc) = md.get::<ClientConn>(Side::Client) else {
            return Ok(conn);
        };
        let stream = match subscribe_next_hop(&cc, &conn, ctx.remaining()).await {
            Ok(s) => s,
            Err(status) => {
                if let Err(e) = next.close(&mut entry.postpone(), conn).await {
                    tracing::debug!(error = %e, "heal: closing after a failed subscription failed");
                }
                let status = Status::new(
                    status.code(),
                    format!("unable to monitor: {}", status.message()),
                );
                return Err(NsmError::remote(ELEMENT, cc.url.to_string(), status));
            }
        };
        let (closed, healing) = match previous {
            Some(p) if !p.closed.is_cancelled() => (p.closed, p.healing),
            _ => (CancellationToken::new(), Arc::default()),
        };
        let state = HealState {
            monitor: closed.child_token(),
            closed,
            healing,
        };
        self.states.lock().insert(conn.id.clone(), state.clone());
        self.spawn(Watch {
            stream,
            filter: ClientFilter::new(conn.clone()),
            state,
            event,
            clock: *ctx.clock(),
        });
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        let st = self.states.lock().get(&conn.id).cloned();
        if let Some(st) = st {
            st.monitor.cancel();
            // The Close a reselect sends along the old path comes from begin's event handle; it must
            // not stop the heal it belongs to. Any other Close ends monitoring and healing for good.
            let part_of_heal =
                ctx.get::<FromEvent>().is_some() && st.healing.load(Ordering::Acquire);
            if !part_of_heal {
                st.closed.cancel();
                self.states.lock().remove(&conn.id);
            }
        }
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}

#[cfg(test)]
mod tests;
