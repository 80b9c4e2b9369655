//! The connections of one hop and the subscribers watching them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::stream::BoxStream;
use nsm_api::connection::MonitorScopeSelector;
use nsm_api::{Connection, ConnectionEvent, ConnectionEventType};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::Status;

/// Events a subscriber may have queued before it is considered stuck and disconnected.
pub const DEFAULT_SUBSCRIBER_BUFFER: usize = 256;

/// True if `conn` is in the scope of `selector`: the selector's segments match a consecutive run of the
/// connection's path segments by name (an empty name matches any; ids are ignored). An empty selector
/// matches every connection.
pub fn matches_selector(conn: &Connection, selector: &MonitorScopeSelector) -> bool {
    let wanted = &selector.path_segments;
    if wanted.is_empty() {
        return true;
    }
    let have = &conn.path_or_default().path_segments;
    have.windows(wanted.len()).any(|run| {
        run.iter()
            .zip(wanted)
            .all(|(h, w)| w.name.is_empty() || h.name == w.name)
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

struct Subscriber {
    selector: MonitorScopeSelector,
    tx: mpsc::Sender<ConnectionEvent>,
    lagged: Arc<AtomicBool>,
}

#[derive(Default)]
struct HubState {
    connections: BTreeMap<String, Connection>,
    subscribers: HashMap<u64, Subscriber>,
    next_id: u64,
}

/// Shared by the element and the gRPC service.
pub(super) struct Hub {
    state: Mutex<HubState>,
    buffer: usize,
}

impl Hub {
    pub(super) fn new(buffer: usize) -> Self {
        Self {
            state: Mutex::default(),
            buffer: buffer.max(1),
        }
    }

    /// Records and fans out an UPDATE or DELETE, if `still_wanted()` holds under the hub's lock (so a
    /// stopped passthrough loop cannot publish after the DELETE of its connection).
    pub(super) fn publish_if(&self, still_wanted: impl FnOnce() -> bool, event: ConnectionEvent) {
        let mut st = self.state.lock();
        if !still_wanted() {
            return;
        }
        match event.r#type() {
            ConnectionEventType::Update => {
                for (id, c) in &event.connections {
                    st.connections.insert(id.clone(), c.clone());
                }
            }
            ConnectionEventType::Delete => {
                for id in event.connections.keys() {
                    st.connections.remove(id);
                }
            }
            // Only a new subscriber gets an initial state transfer.
            ConnectionEventType::InitialStateTransfer => return,
        }
        st.subscribers.retain(|_, sub| {
            let connections = select(&event.connections, &sub.selector);
            if connections.is_empty() {
                return !sub.tx.is_closed();
            }
            let out = ConnectionEvent {
                r#type: event.r#type,
                connections,
            };
            match sub.tx.try_send(out) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.lagged.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    pub(super) fn publish(&self, event: ConnectionEvent) {
        self.publish_if(|| true, event);
    }

    /// A new subscriber's stream: the initial state transfer, then its events.
    pub(super) fn subscribe(
        &self,
        selector: MonitorScopeSelector,
    ) -> BoxStream<'static, Result<ConnectionEvent, Status>> {
        let (tx, rx) = mpsc::channel(self.buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        {
            let mut st = self.state.lock();
            let initial = ConnectionEvent {
                r#type: ConnectionEventType::InitialStateTransfer as i32,
                connections: select(&st.connections, &selector),
            };
            // A fresh channel has room for at least one event.
            let _ = tx.try_send(initial);
            let id = st.next_id;
            st.next_id += 1;
            st.subscribers.insert(
                id,
                Subscriber {
                    selector,
                    tx,
                    lagged: lagged.clone(),
                },
            );
        }
        let buffer = self.buffer;
        futures::stream::unfold((rx, Some(lagged)), move |(mut rx, lagged)| async move {
            match rx.recv().await {
                Some(ev) => Some((Ok(ev), (rx, lagged))),
                None => {
                    let lagged = lagged?;
                    lagged.load(Ordering::Acquire).then(|| {
                        let err = Status::resource_exhausted(format!(
                            "monitor: subscriber fell more than {buffer} events behind; subscribe again"
                        ));
                        (Err(err), (rx, None))
                    })
                }
            }
        })
        .boxed()
    }

    /// The connections currently known.
    pub(super) fn connections(&self) -> BTreeMap<String, Connection> {
        self.state.lock().connections.clone()
    }

    /// Number of live subscribers.
    pub(super) fn subscriber_count(&self) -> usize {
        let mut st = self.state.lock();
        st.subscribers.retain(|_, s| !s.tx.is_closed());
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
            path_segments: names
                .iter()
                .map(|n| PathSegment::new(*n, "ignored"))
                .collect(),
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
        let mut slow = hub.subscribe(sel(&[]));
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
