//! `heal` (client, NSC side): re-request a connection when the path behind the next hop breaks.
//!
//! **Request**: stops the connection's monitor loop, runs the rest of the chain and, on success, if a
//! [`ClientConn`] and begin's [`EventFactory`] are present, watches the connection at the next hop's
//! `MonitorConnections` — on ONE stream per next-hop URL shared by every connection of this element
//! (selector = our segment's name; events dispatched by our connection id, as the `monitor`
//! passthrough does), opened on first use, whose INITIAL_STATE_TRANSFER it waits for (failure →
//! closes the just-made connection and fails "unable to monitor"). A task then waits for trouble.
//!
//! **Heal**: when the shared stream fails or ends, or reports our connection DOWN (a DELETE counts as
//! DOWN), the task re-requests through begin with `reselect` — the old path is closed,
//! mechanism and endpoint name are cleared and every hop selects again — after 200 ms, then backing off
//! up to 1 s between attempts, until one succeeds (the new Request starts a new monitor) or the
//! connection is closed. Timers go through the context's clock.
//!
//! **Close**: stops the monitor and any healing (no task outlives the connection), then closes. The
//! Close that a reselect runs on the old path does not stop the healing it is part of.
//!
//! A DOWN or DELETE that reports the next hop's segment with an expiry older than the one our latest
//! Request got is about a path this connection already left (the Close of the old path in a heal can
//! reach the shared stream after the new path's watch started) and is ignored.
//!
//! **State**: per connection id, in the element (not in connection metadata, which a failed reselect
//! drops): the connection's stop tokens and whether a heal is in progress. An external Close finds it
//! even mid-heal and stops everything at once. **Background**: one task per watched connection, waiting
//! (no stream of its own), and one per shared next-hop stream (closed a minute after its last
//! connection).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nsm_core::values::FromEvent;
use parking_lot::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest, State};
use nsm_core::metadata::Side;
use nsm_core::{Clock, Ctx, NetworkServiceServer, Next, NsmError, Result};
use prost_types::Timestamp;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::begin::{EventFactory, RequestOptions};
use crate::dial::ClientConn;
use crate::monitor::{Upstreams, WatchGuard, Watcher};

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

/// Turns the next hop's view of one connection into "needs healing".
struct Trouble {
    /// Cancelled when the connection needs healing.
    found: CancellationToken,
    /// Our path index (the next hop's segment follows it).
    index: usize,
    /// The next hop's segment expiry in the connection our latest Request got.
    since: Option<Timestamp>,
}

impl Watcher for Trouble {
    fn changed(&self, _id: &str, incoming: &Connection, deleted: bool) {
        if !deleted && incoming.state() != State::Down {
            return;
        }
        let theirs = next_segment_expiry(incoming, self.index);
        if let (Some(theirs), Some(since)) = (theirs, &self.since)
            && (theirs.seconds, theirs.nanos) < (since.seconds, since.nanos)
        {
            return; // about the path before our latest Request
        }
        self.found.cancel();
    }

    fn broken(&self, _id: &str) {
        self.found.cancel();
    }
}

fn next_segment_expiry(conn: &Connection, index: usize) -> Option<&Timestamp> {
    conn.path
        .as_ref()?
        .path_segments
        .get(index + 1)?
        .expires
        .as_ref()
}

/// The `heal` client element.
#[derive(Debug, Default)]
pub struct HealClient {
    tasks: Arc<AtomicUsize>,
    states: Arc<Mutex<HashMap<String, HealState>>>,
    upstreams: Upstreams,
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

    /// Number of MonitorConnections streams open to next hops (one per next-hop URL, shared).
    pub fn monitor_streams(&self) -> usize {
        self.upstreams.streams()
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
    /// The connection's registration on the shared stream.
    guard: WatchGuard,
    trouble: CancellationToken,
    state: HealState,
    event: EventFactory,
    clock: Clock,
}

impl Watch {
    async fn run(self) -> Outcome {
        let trouble = tokio::select! {
            () = self.state.monitor.cancelled() => false,
            () = self.trouble.cancelled() => true,
        };
        drop(self.guard);
        if !trouble {
            return Outcome::Done;
        }
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
        let trouble = Arc::new(Trouble {
            found: CancellationToken::new(),
            index: conn.path_or_default().index as usize,
            since: next_segment_expiry(&conn, conn.path_or_default().index as usize).cloned(),
        });
        let watching = self
            .upstreams
            .watch(&cc, &conn, ctx.remaining(), *ctx.clock(), trouble.clone())
            .await;
        let guard = match watching {
            Ok(g) => g,
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
            guard,
            trouble: trouble.found.clone(),
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
