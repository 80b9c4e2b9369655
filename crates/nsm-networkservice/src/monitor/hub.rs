//! The connections of one hop and the subscribers watching them.
//!
//! Subscribers are indexed so that publishing an event costs in proportion to the subscribers that can
//! match it, not to all of them: a selector naming a segment id (what every per-connection client — a
//! Go NSC, our `heal` — sends) is filed under that id, and an event is offered to the subscribers filed
//! under the ids of its connection's path segments plus the "wide" ones (selectors without any id: our
//! passthrough hops' shared streams, `nsm ctl watch`), which are few.
//!
//! The recorded connections are kept encoded ([`Encoded`]): one allocation of about half the decoded
//! size per live connection, decoded only for a passthrough update of that connection or a new
//! subscriber's initial state. The record of an UPDATE is shared with the `begin` of the same chain,
//! which keeps the same connection (see [`crate::encoded`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use futures::StreamExt;
use futures::stream::BoxStream;
use nsm_api::connection::MonitorScopeSelector;
use nsm_api::{Connection, ConnectionEvent, ConnectionEventType};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::Status;

use crate::encoded::Encoded;

const ELEMENT: &str = "monitor";

/// Events a subscriber may have queued before it is considered stuck and disconnected.
pub const DEFAULT_SUBSCRIBER_BUFFER: usize = 256;

/// A wide subscriber (no segment id in its selector) sees the events of many connections — e.g. a
/// passthrough hop sharing one stream for all its connections through us — so it may queue this many
/// times more before it counts as stuck.
const WIDE_BUFFER_FACTOR: usize = 64;

/// True if `conn` is in the scope of `selector`: the selector's segments match a consecutive run of the
/// connection's path segments by name (an empty name matches any) and, where the selector's segment
/// has an id, by id too (as later API versions of Go's `MatchesMonitorScopeSelector` do; v1.1.1 compared
/// names only, which made a per-connection subscriber receive every connection through the same hops).
/// An empty selector matches every connection.
pub fn matches_selector(conn: &Connection, selector: &MonitorScopeSelector) -> bool {
    let wanted = &selector.path_segments;
    if wanted.is_empty() {
        return true;
    }
    let have = &conn.path_or_default().path_segments;
    have.windows(wanted.len()).any(|run| {
        run.iter().zip(wanted).all(|(h, w)| {
            (w.name.is_empty() || h.name == w.name) && (w.id.is_empty() || h.id == w.id)
        })
    })
}

fn select(
    conns: &BTreeMap<String, Connection>,
    selector: &MonitorScopeSelector,
) -> BTreeMap<String, Connection> {
    conns
        .iter()
        .filter(|(_, c)| matches_selector(c, selector))
        .map(|(k, c)| (k.clone(), c.clone()))
        .collect()
}

/// The recorded connections that `selector` matches, decoded.
fn select_recorded(
    conns: &BTreeMap<String, Encoded<Connection>>,
    selector: &MonitorScopeSelector,
) -> BTreeMap<String, Connection> {
    conns
        .iter()
        .filter_map(|(k, c)| Some((k.clone(), decoded(c)?)))
        .filter(|(_, c)| matches_selector(c, selector))
        .collect()
}

fn decoded(conn: &Encoded<Connection>) -> Option<Connection> {
    conn.decode(ELEMENT)
        .inspect_err(
            |e| tracing::error!(error = %e, "monitor: a recorded connection is unreadable"),
        )
        .ok()
}

/// The segment id a selector requires, if any: the subscriber is filed under it.
fn index_id(selector: &MonitorScopeSelector) -> Option<String> {
    selector
        .path_segments
        .iter()
        .find(|s| !s.id.is_empty())
        .map(|s| s.id.clone())
}

struct Subscriber {
    selector: MonitorScopeSelector,
    index: Option<String>,
    tx: mpsc::Sender<ConnectionEvent>,
    lagged: Arc<AtomicBool>,
}

impl Subscriber {
    /// Queues `event`; returns the subscriber's `id` if it must go (stuck or gone).
    fn offer(&self, id: u64, event: ConnectionEvent) -> Option<u64> {
        match self.tx.try_send(event) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::Release);
                Some(id)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Some(id),
        }
    }
}

#[derive(Default)]
struct HubState {
    connections: BTreeMap<String, Encoded<Connection>>,
    subscribers: HashMap<u64, Subscriber>,
    /// Subscribers by the segment id their selector requires.
    by_segment_id: HashMap<String, Vec<u64>>,
    /// Subscribers whose selector requires no id.
    wide: Vec<u64>,
    next_id: u64,
}

impl HubState {
    fn remove(&mut self, id: u64) {
        let Some(sub) = self.subscribers.remove(&id) else {
            return;
        };
        match sub.index {
            Some(seg) => {
                if let Some(ids) = self.by_segment_id.get_mut(&seg) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        self.by_segment_id.remove(&seg);
                    }
                }
            }
            None => self.wide.retain(|i| *i != id),
        }
    }

    /// Records (`Some`: an UPDATE to `recorded`, `None`: a DELETE) and fans out an event of one
    /// connection, cloning it only for the subscribers that match it (none, often: an NSMgr whose
    /// clients do not heal).
    fn publish_one(&mut self, conn: &Connection, recorded: Option<Encoded<Connection>>) {
        let kind = match recorded {
            Some(encoded) => {
                self.connections.insert(conn.id.clone(), encoded);
                ConnectionEventType::Update
            }
            None => {
                self.connections.remove(&conn.id);
                ConnectionEventType::Delete
            }
        };
        let mut gone = Vec::new();
        for id in self.candidates(std::iter::once(conn)) {
            let Some(sub) = self.subscribers.get(&id) else {
                continue;
            };
            if !matches_selector(conn, &sub.selector) {
                if sub.tx.is_closed() {
                    gone.push(id);
                }
                continue;
            }
            let out = ConnectionEvent {
                r#type: kind as i32,
                connections: [(conn.id.clone(), conn.clone())].into(),
            };
            if let Some(id) = sub.offer(id, out) {
                gone.push(id);
            }
        }
        for id in gone {
            self.remove(id);
        }
    }

    /// Records and fans out an UPDATE or DELETE.
    fn publish(&mut self, event: ConnectionEvent) {
        match event.r#type() {
            ConnectionEventType::Update => {
                for (id, c) in &event.connections {
                    self.connections.insert(id.clone(), Encoded::new(c));
                }
            }
            ConnectionEventType::Delete => {
                for id in event.connections.keys() {
                    self.connections.remove(id);
                }
            }
            // Only a new subscriber gets an initial state transfer.
            ConnectionEventType::InitialStateTransfer => return,
        }
        let mut gone = Vec::new();
        for id in self.candidates(event.connections.values()) {
            let Some(sub) = self.subscribers.get(&id) else {
                continue;
            };
            let connections = select(&event.connections, &sub.selector);
            if connections.is_empty() {
                if sub.tx.is_closed() {
                    gone.push(id);
                }
                continue;
            }
            let out = ConnectionEvent {
                r#type: event.r#type,
                connections,
            };
            if let Some(id) = sub.offer(id, out) {
                gone.push(id);
            }
        }
        for id in gone {
            self.remove(id);
        }
    }

    /// The subscribers that may match one of `conns`, each once.
    fn candidates<'a>(&self, conns: impl Iterator<Item = &'a Connection>) -> Vec<u64> {
        let mut out = self.wide.clone();
        for c in conns {
            for seg in &c.path_or_default().path_segments {
                if let Some(ids) = self.by_segment_id.get(&seg.id) {
                    out.extend_from_slice(ids);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Removes its subscriber from the hub when the subscriber's stream is dropped.
struct Unsubscribe {
    state: Weak<Mutex<HubState>>,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(state) = self.state.upgrade() {
            state.lock().remove(self.id);
        }
    }
}

/// Shared by the element and the gRPC service.
pub(super) struct Hub {
    state: Arc<Mutex<HubState>>,
    buffer: usize,
}

impl Hub {
    pub(super) fn new(buffer: usize) -> Self {
        Self {
            state: Arc::default(),
            buffer: buffer.max(1),
        }
    }

    /// Publishes `change(current)` as an UPDATE of the recorded connection `id`, if it is recorded,
    /// `still_wanted()` holds under the hub's lock and `change` returns a new version.
    pub(super) fn update_if(
        &self,
        still_wanted: impl FnOnce() -> bool,
        id: &str,
        change: impl FnOnce(&Connection) -> Option<Connection>,
    ) {
        let mut st = self.state.lock();
        if !still_wanted() {
            return;
        }
        let Some(conn) = st
            .connections
            .get(id)
            .and_then(decoded)
            .and_then(|c| change(&c))
        else {
            return;
        };
        st.publish(ConnectionEvent {
            r#type: ConnectionEventType::Update as i32,
            connections: [(id.to_string(), conn)].into(),
        });
    }

    /// Records and fans out an event as built (tests of subscribers).
    #[cfg(test)]
    pub(super) fn publish(&self, event: ConnectionEvent) {
        self.state.lock().publish(event);
    }

    /// Records and fans out an UPDATE of `conn` (cloned only for matching subscribers); returns the
    /// record, to share with the `begin` that keeps the same connection.
    pub(super) fn publish_update(&self, conn: &Connection) -> Encoded<Connection> {
        let recorded = Encoded::new(conn);
        self.state.lock().publish_one(conn, Some(recorded.clone()));
        recorded
    }

    /// The record of connection `id` (tests of sharing).
    #[cfg(test)]
    pub(super) fn recorded(&self, id: &str) -> Option<Encoded<Connection>> {
        self.state.lock().connections.get(id).cloned()
    }

    /// Forgets `conn` and fans out its DELETE.
    pub(super) fn publish_delete(&self, conn: &Connection) {
        self.state.lock().publish_one(conn, None);
    }

    /// A new subscriber's stream: the initial state transfer, then its events. Dropping the stream
    /// unsubscribes.
    pub(super) fn subscribe(
        &self,
        selector: MonitorScopeSelector,
    ) -> BoxStream<'static, Result<ConnectionEvent, Status>> {
        let index = index_id(&selector);
        let buffer = if index.is_some() {
            self.buffer
        } else {
            self.buffer.saturating_mul(WIDE_BUFFER_FACTOR)
        };
        let (tx, rx) = mpsc::channel(buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        let unsubscribe = {
            let mut st = self.state.lock();
            let initial = ConnectionEvent {
                r#type: ConnectionEventType::InitialStateTransfer as i32,
                connections: select_recorded(&st.connections, &selector),
            };
            // A fresh channel has room for at least one event.
            let _ = tx.try_send(initial);
            let id = st.next_id;
            st.next_id += 1;
            match &index {
                Some(seg) => st.by_segment_id.entry(seg.clone()).or_default().push(id),
                None => st.wide.push(id),
            }
            st.subscribers.insert(
                id,
                Subscriber {
                    selector,
                    index,
                    tx,
                    lagged: lagged.clone(),
                },
            );
            Unsubscribe {
                state: Arc::downgrade(&self.state),
                id,
            }
        };
        futures::stream::unfold(
            (rx, Some(lagged), unsubscribe),
            move |(mut rx, lagged, unsubscribe)| async move {
                match rx.recv().await {
                    Some(ev) => Some((Ok(ev), (rx, lagged, unsubscribe))),
                    None => {
                        let lagged = lagged?;
                        lagged.load(Ordering::Acquire).then(|| {
                            let err = Status::resource_exhausted(format!(
                                "monitor: subscriber fell more than {buffer} events behind; subscribe again"
                            ));
                            (Err(err), (rx, None, unsubscribe))
                        })
                    }
                }
            },
        )
        .boxed()
    }

    /// The connections currently known.
    pub(super) fn connections(&self) -> BTreeMap<String, Connection> {
        let st = self.state.lock();
        st.connections
            .iter()
            .filter_map(|(k, c)| Some((k.clone(), decoded(c)?)))
            .collect()
    }

    /// Number of live subscribers.
    pub(super) fn subscriber_count(&self) -> usize {
        let mut st = self.state.lock();
        let closed: Vec<u64> = st
            .subscribers
            .iter()
            .filter(|(_, s)| s.tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in closed {
            st.remove(id);
        }
        st.subscribers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_api::{Path, PathSegment};

    fn conn(id: &str, names: &[&str]) -> Connection {
        Connection {
            id: id.into(),
            path: Some(Path {
                index: 0,
                path_segments: names
                    .iter()
                    .map(|n| PathSegment::new(*n, format!("{n}-id")))
                    .collect(),
            }),
            ..Default::default()
        }
    }

    fn sel(names: &[&str]) -> MonitorScopeSelector {
        MonitorScopeSelector {
            path_segments: names.iter().map(|n| PathSegment::new(*n, "")).collect(),
        }
    }

    #[test]
    fn selector_matches_a_consecutive_run_by_name() {
        let c = conn("c", &["nsc", "nsmgr", "fwd", "nse"]);
        assert!(
            matches_selector(&c, &sel(&[])),
            "empty selector matches all"
        );
        assert!(matches_selector(&c, &sel(&["nsmgr"])));
        assert!(matches_selector(&c, &sel(&["nsmgr", "fwd"])));
        assert!(
            matches_selector(&c, &sel(&["", "fwd"])),
            "empty name is a wildcard"
        );
        assert!(matches_selector(&c, &sel(&["fwd", "nse"])));
        assert!(
            !matches_selector(&c, &sel(&["nsc", "fwd"])),
            "not consecutive"
        );
        assert!(
            !matches_selector(&c, &sel(&["nse", ""])),
            "runs past the end"
        );
        assert!(!matches_selector(&c, &sel(&["other"])));
        assert!(
            !matches_selector(&Connection::default(), &sel(&[""])),
            "no path, no match"
        );
    }

    fn sel_ids(segs: &[(&str, &str)]) -> MonitorScopeSelector {
        MonitorScopeSelector {
            path_segments: segs.iter().map(|(n, i)| PathSegment::new(*n, *i)).collect(),
        }
    }

    #[test]
    fn a_selector_segment_with_an_id_matches_that_id_only() {
        let c = conn("c", &["nsc", "nsmgr", "fwd", "nse"]);
        assert!(matches_selector(&c, &sel_ids(&[("nsmgr", "nsmgr-id")])));
        assert!(
            matches_selector(&c, &sel_ids(&[("", "fwd-id")])),
            "id alone"
        );
        assert!(matches_selector(
            &c,
            &sel_ids(&[("nsmgr", "nsmgr-id"), ("fwd", "")])
        ));
        assert!(
            !matches_selector(&c, &sel_ids(&[("nsmgr", "another-connection")])),
            "same name, other id"
        );
        assert!(
            !matches_selector(&c, &sel_ids(&[("nsmgr", "fwd-id")])),
            "name and id must be of the same segment"
        );
    }

    fn conn_with_ids(id: &str, segs: &[(&str, &str)]) -> Connection {
        Connection {
            id: id.into(),
            path: Some(Path {
                index: 0,
                path_segments: segs.iter().map(|(n, i)| PathSegment::new(*n, *i)).collect(),
            }),
            ..Default::default()
        }
    }

    fn update(c: Connection) -> ConnectionEvent {
        ConnectionEvent {
            r#type: ConnectionEventType::Update as i32,
            connections: [(c.id.clone(), c)].into(),
        }
    }

    #[tokio::test]
    async fn per_connection_subscribers_get_their_connection_only_and_wide_ones_get_all() {
        let hub = Hub::new(8);
        let mut one = hub.subscribe(sel_ids(&[("nsc", "c1")]));
        let mut two = hub.subscribe(sel_ids(&[("nsc", "c2")]));
        let mut wide = hub.subscribe(sel(&["nsc"]));
        for s in [&mut one, &mut two, &mut wide] {
            let initial = s.next().await.unwrap().unwrap();
            assert_eq!(initial.r#type(), ConnectionEventType::InitialStateTransfer);
        }
        hub.publish(update(conn_with_ids(
            "m1",
            &[("nsc", "c1"), ("nsmgr", "m1")],
        )));
        hub.publish(update(conn_with_ids(
            "m2",
            &[("nsc", "c2"), ("nsmgr", "m2")],
        )));
        let got = one.next().await.unwrap().unwrap();
        assert_eq!(got.connections.keys().collect::<Vec<_>>(), ["m1"]);
        let got = two.next().await.unwrap().unwrap();
        assert_eq!(got.connections.keys().collect::<Vec<_>>(), ["m2"]);
        for want in ["m1", "m2"] {
            let got = wide.next().await.unwrap().unwrap();
            assert_eq!(got.connections.keys().collect::<Vec<_>>(), [want]);
        }
        let nothing = tokio::time::timeout(std::time::Duration::from_millis(50), one.next()).await;
        assert!(nothing.is_err(), "c1's subscriber saw nothing of c2");

        // A dropped stream leaves the hub (and its index) at once.
        drop(one);
        assert_eq!(hub.subscriber_count(), 2);
        let st = hub.state.lock();
        assert!(!st.by_segment_id.contains_key("c1"));
        assert_eq!(st.wide.len(), 1);
    }

    #[tokio::test]
    async fn initial_state_then_filtered_updates_and_deletes() {
        let hub = Hub::new(8);
        hub.publish(ConnectionEvent {
            r#type: ConnectionEventType::Update as i32,
            connections: [("a".to_string(), conn("a", &["nsc", "nsmgr"]))].into(),
        });
        let mut s = hub.subscribe(sel(&["nsmgr"]));
        let mut other = hub.subscribe(sel(&["elsewhere"]));
        let first = s.next().await.unwrap().unwrap();
        assert_eq!(first.r#type(), ConnectionEventType::InitialStateTransfer);
        assert_eq!(first.connections.keys().collect::<Vec<_>>(), ["a"]);
        let empty = other.next().await.unwrap().unwrap();
        assert_eq!(empty.r#type(), ConnectionEventType::InitialStateTransfer);
        assert!(
            empty.connections.is_empty(),
            "initial state is sent even when empty"
        );

        hub.publish(ConnectionEvent {
            r#type: ConnectionEventType::Update as i32,
            connections: [("b".to_string(), conn("b", &["x", "y"]))].into(),
        });
        hub.publish(ConnectionEvent {
            r#type: ConnectionEventType::Delete as i32,
            connections: [("a".to_string(), conn("a", &["nsc", "nsmgr"]))].into(),
        });
        let ev = s.next().await.unwrap().unwrap();
        assert_eq!(
            ev.r#type(),
            ConnectionEventType::Delete,
            "b is filtered out"
        );
        assert!(hub.connections().contains_key("b") && !hub.connections().contains_key("a"));
    }

    #[tokio::test]
    async fn a_stuck_subscriber_is_cut_off_with_an_error() {
        let hub = Hub::new(2);
        // A per-connection subscriber (its selector names a segment id; wide ones may queue more).
        let mut slow = hub.subscribe(sel_ids(&[("n", "n-id")]));
        for i in 0..5 {
            let id = format!("c{i}");
            hub.publish(ConnectionEvent {
                r#type: ConnectionEventType::Update as i32,
                connections: [(id.clone(), conn(&id, &["n"]))].into(),
            });
        }
        assert_eq!(hub.subscriber_count(), 0, "the slow subscriber was dropped");
        let mut got = Vec::new();
        while let Some(item) = slow.next().await {
            got.push(item);
        }
        assert_eq!(got.len(), 3, "initial + 1 queued update + the error");
        let err = got.pop().unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert_eq!(hub.connections().len(), 5, "publishing was never blocked");
    }
}
