//! One shared `MonitorConnections` stream per next hop, dispatching events to per-connection watchers.
//!
//! A passthrough hop used to open one stream per connection (selector = its own segment, name and id);
//! with N connections through a hop that is N HTTP/2 streams and N tasks, and — since Go v1.1.1 and our
//! servers used to match selectors by name only — every event went to every stream. Here every
//! connection through us to the same next hop (URL) shares ONE stream whose selector is our segment's
//! *name* without id: at the next hop that matches every connection that came through us (on a Go
//! v1.1.1 next hop as on ours). Events are dispatched by our connection id (the id of our segment in
//! the event's path) to that connection's [`Watcher`] (the `monitor` passthrough and `heal` both use it).
//!
//! Semantics kept from the per-connection streams:
//! - **Initial state transfer**: the first watcher of a next hop waits (up to its deadline) for the
//!   stream's INITIAL_STATE_TRANSFER, which proves the next hop can monitor; later ones join the open
//!   stream at once.
//! - **Stream failure**: when the shared stream fails or ends, every connection on it is reported
//!   broken (→ DOWN), and the next watch opens a new stream.
//! - **Close**: dropping a [`WatchGuard`] unregisters the connection; nothing is dispatched to it after.
//!
//! A stream with no watchers left is kept for [`IDLE_TIMEOUT`] (on the injected clock), so that a lone
//! client's next Request does not pay for a new stream; then it is closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nsm_api::connection::MonitorScopeSelector;
use nsm_api::connection::monitor_connection_client::MonitorConnectionClient;
use nsm_api::url::NsmUrl;
use nsm_api::{Connection, ConnectionEvent, ConnectionEventType, PathSegment};
use nsm_core::Clock;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tonic::{Status, Streaming};

use crate::dial::ClientConn;

/// How long a shared stream without watchers stays open.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bounds the opening of a shared stream when the first watcher has no deadline.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Attempts to join a stream that closes (idle) or breaks between lookup and registration.
const JOIN_ATTEMPTS: usize = 3;

/// Receives what happens to one watched connection. (It keeps no copy of the connection here: the
/// watcher compares with its own — e.g. `monitor` with the one its hub publishes — via [`merge`].)
///
/// [`merge`]: super::client_filter::merge
pub(crate) trait Watcher: Send + Sync + 'static {
    /// The next hop reported `incoming`, its view of our connection `id` (our segment carries `id` at
    /// our index; `deleted`: in a DELETE event).
    fn changed(&self, id: &str, incoming: &Connection, deleted: bool);
    /// The shared stream failed or ended: connection `id` is DOWN. Nothing more is reported to this
    /// watcher.
    fn broken(&self, id: &str);
}

/// Which next hop, seen as which of our segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    url: NsmUrl,
    name: String,
}

/// The state of a shared stream's opening.
#[derive(Debug, Clone)]
enum Opening {
    Pending,
    Open,
    Failed(Status),
}

struct Handler {
    /// Tells this registration from a later one of the same connection id.
    serial: u64,
    /// Our path index: the next hop's view concerns us if our segment there carries our id.
    index: u32,
    watcher: Arc<dyn Watcher>,
}

struct Handlers {
    /// `None` once the stream is gone (broken or closed idle): no one may join it any more. Keyed by
    /// the connection id the [`WatchGuard`] holds too (one allocation for both).
    by_id: Option<HashMap<Arc<str>, Handler>>,
    next_serial: u64,
    /// Since when there has been no watcher.
    idle_since: Option<Instant>,
}

struct Upstream {
    key: Key,
    opening: watch::Receiver<Opening>,
    handlers: Mutex<Handlers>,
    /// Woken when the last watcher leaves.
    emptied: Notify,
    clock: Clock,
    idle_timeout: Duration,
}

type Map = Mutex<HashMap<Key, Arc<Upstream>>>;

/// The shared streams of one element (`monitor` or `heal`).
pub(crate) struct Upstreams {
    map: Arc<Map>,
    /// Connections currently watched (registered on some stream).
    watching: Arc<AtomicUsize>,
    idle_timeout: Duration,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::with_idle_timeout(IDLE_TIMEOUT)
    }
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("streams", &self.streams())
            .field("watching", &self.watching())
            .finish()
    }
}

/// Unregisters its connection when dropped.
pub(crate) struct WatchGuard {
    upstream: Arc<Upstream>,
    id: Arc<str>,
    serial: u64,
    watching: Arc<AtomicUsize>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut h = self.upstream.handlers.lock();
        let Some(by_id) = h.by_id.as_mut() else {
            return; // already reported broken and counted out
        };
        if by_id
            .get(&*self.id)
            .is_some_and(|h| h.serial == self.serial)
        {
            by_id.remove(&*self.id);
            self.watching.fetch_sub(1, Ordering::AcqRel);
            if by_id.is_empty() {
                h.idle_since = Some(self.upstream.clock.instant());
                self.upstream.emptied.notify_one();
            }
        }
    }
}

impl Upstreams {
    /// Shared streams closed after `idle` without watchers.
    pub(crate) fn with_idle_timeout(idle: Duration) -> Self {
        Self {
            map: Arc::default(),
            watching: Arc::default(),
            idle_timeout: idle,
        }
    }

    /// Number of open (or opening) shared streams.
    pub(crate) fn streams(&self) -> usize {
        self.map.lock().len()
    }

    /// Number of connections being watched.
    pub(crate) fn watching(&self) -> usize {
        self.watching.load(Ordering::Acquire)
    }

    /// Watches `conn` (as this hop returned it) at the next hop behind `cc`, on the stream shared by
    /// every connection through our segment to that URL; opens that stream if needed and waits up to
    /// `wait` for it. Changes go to `watcher` until the guard is dropped.
    pub(crate) async fn watch(
        &self,
        cc: &ClientConn,
        conn: &Connection,
        wait: Option<Duration>,
        clock: Clock,
        watcher: Arc<dyn Watcher>,
    ) -> Result<WatchGuard, Status> {
        let key = Key {
            url: cc.url.clone(),
            name: conn
                .current_segment()
                .map(|s| s.name.clone())
                .unwrap_or_default(),
        };
        let deadline = wait.map(|w| Instant::now() + w);
        for _ in 0..JOIN_ATTEMPTS {
            let upstream = self.upstream(&key, cc, wait, clock);
            let mut opening = upstream.opening.clone();
            let ready = async {
                loop {
                    match &*opening.borrow_and_update() {
                        Opening::Open => return Ok(()),
                        Opening::Failed(s) => return Err(s.clone()),
                        Opening::Pending => {}
                    }
                    if opening.changed().await.is_err() {
                        return Err(Status::unavailable(
                            "the monitor stream ended before the initial state transfer",
                        ));
                    }
                }
            };
            match deadline {
                Some(at) => tokio::time::timeout_at(at, ready)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Status::deadline_exceeded(
                            "no initial state transfer in time",
                        ))
                    })?,
                None => ready.await?,
            }
            let mut h = upstream.handlers.lock();
            let serial = h.next_serial;
            h.next_serial += 1;
            let Some(by_id) = h.by_id.as_mut() else {
                // Closed (idle) or broke right now: open a new one.
                continue;
            };
            let handler = Handler {
                serial,
                index: conn.path_or_default().index,
                watcher: watcher.clone(),
            };
            let id: Arc<str> = conn.id.as_str().into();
            if by_id.insert(id.clone(), handler).is_none() {
                self.watching.fetch_add(1, Ordering::AcqRel);
            }
            h.idle_since = None;
            drop(h);
            return Ok(WatchGuard {
                upstream,
                id,
                serial,
                watching: self.watching.clone(),
            });
        }
        Err(Status::unavailable(
            "the monitor stream keeps closing; giving up",
        ))
    }

    /// The shared stream for `key`, started if there is none.
    fn upstream(
        &self,
        key: &Key,
        cc: &ClientConn,
        wait: Option<Duration>,
        clock: Clock,
    ) -> Arc<Upstream> {
        let mut map = self.map.lock();
        if let Some(up) = map.get(key) {
            return up.clone();
        }
        let (tx, rx) = watch::channel(Opening::Pending);
        let up = Arc::new(Upstream {
            key: key.clone(),
            opening: rx,
            handlers: Mutex::new(Handlers {
                by_id: Some(HashMap::new()),
                next_serial: 0,
                idle_since: Some(clock.instant()),
            }),
            emptied: Notify::new(),
            clock,
            idle_timeout: self.idle_timeout,
        });
        map.insert(key.clone(), up.clone());
        let selector = MonitorScopeSelector {
            path_segments: vec![PathSegment::new(key.name.clone(), "")],
        };
        tokio::spawn(run(
            up.clone(),
            self.map.clone(),
            self.watching.clone(),
            MonitorConnectionClient::new(cc.channel.clone()),
            selector,
            tx,
            wait.unwrap_or(OPEN_TIMEOUT),
            clock,
        ));
        up
    }
}

async fn open(
    mut client: MonitorConnectionClient<tonic::transport::Channel>,
    selector: MonitorScopeSelector,
) -> Result<Streaming<ConnectionEvent>, Status> {
    let mut stream = client.monitor_connections(selector).await?.into_inner();
    match stream.message().await? {
        Some(_) => Ok(stream),
        None => Err(Status::unavailable(
            "the monitor stream ended before the initial state transfer",
        )),
    }
}

/// Opens the shared stream and dispatches its events until it fails or stays idle too long.
#[allow(clippy::too_many_arguments)]
async fn run(
    up: Arc<Upstream>,
    map: Arc<Map>,
    watching: Arc<AtomicUsize>,
    client: MonitorConnectionClient<tonic::transport::Channel>,
    selector: MonitorScopeSelector,
    opening: watch::Sender<Opening>,
    open_timeout: Duration,
    clock: Clock,
) {
    let opened = tokio::time::timeout(open_timeout, open(client, selector))
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(
                "no initial state transfer in time",
            ))
        });
    let mut stream = match opened {
        Ok(s) => s,
        Err(status) => {
            retire(&up, &map);
            opening.send_replace(Opening::Failed(status));
            return;
        }
    };
    opening.send_replace(Opening::Open);
    loop {
        let idle_since = up.handlers.lock().idle_since;
        let idle_timer = async {
            match idle_since {
                Some(at) => clock.sleep_until(at + up.idle_timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = up.emptied.notified() => {}
            () = idle_timer => {
                if retire_if_idle(&up, &map, clock.instant()) {
                    return;
                }
            }
            msg = stream.message() => match msg {
                Ok(Some(ev)) => dispatch(&up, &ev),
                Ok(None) | Err(_) => break,
            },
        }
    }
    // The stream failed: every connection on it is DOWN.
    let handlers = retire(&up, &map);
    watching.fetch_sub(handlers.len(), Ordering::AcqRel);
    for (id, h) in handlers {
        h.watcher.broken(&id);
    }
}

/// Takes the stream out of the map (if it is still there) and closes it to newcomers; returns its
/// handlers.
fn retire(up: &Arc<Upstream>, map: &Map) -> HashMap<Arc<str>, Handler> {
    let mut map = map.lock();
    if map.get(&up.key).is_some_and(|u| Arc::ptr_eq(u, up)) {
        map.remove(&up.key);
    }
    up.handlers.lock().by_id.take().unwrap_or_default()
}

/// Retires the stream if it has had no watcher for its idle timeout.
fn retire_if_idle(up: &Arc<Upstream>, map: &Map, now: Instant) -> bool {
    let mut map = map.lock();
    let mut h = up.handlers.lock();
    let idle = h.by_id.as_ref().is_some_and(HashMap::is_empty)
        && h.idle_since.is_some_and(|at| now >= at + up.idle_timeout);
    if idle {
        h.by_id = None;
        if map.get(&up.key).is_some_and(|u| Arc::ptr_eq(u, up)) {
            map.remove(&up.key);
        }
    }
    idle
}

/// Offers each connection of `ev` to the watcher of our segment in its path.
fn dispatch(up: &Upstream, ev: &ConnectionEvent) {
    if ev.r#type() == ConnectionEventType::InitialStateTransfer {
        return;
    }
    let deleted = ev.r#type() == ConnectionEventType::Delete;
    let mut out = Vec::new();
    {
        let h = up.handlers.lock();
        let Some(by_id) = h.by_id.as_ref() else {
            return;
        };
        for incoming in ev.connections.values() {
            let path = incoming.path_or_default();
            for (i, seg) in path.path_segments.iter().enumerate() {
                if let Some((id, handler)) = by_id.get_key_value(seg.id.as_str())
                    && handler.index as usize == i
                    && (path.index == handler.index || path.index == handler.index + 1)
                {
                    out.push((id.clone(), handler.watcher.clone(), incoming));
                }
            }
        }
    }
    for (id, watcher, incoming) in out {
        watcher.changed(&id, incoming, deleted);
    }
}
