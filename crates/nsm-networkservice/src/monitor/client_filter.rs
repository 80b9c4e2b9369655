//! Reading a next hop's monitor events for one of our connections (used by `monitor` and `heal`).

use std::time::Duration;

use nsm_api::connection::MonitorScopeSelector;
use nsm_api::connection::monitor_connection_client::MonitorConnectionClient;
use nsm_api::{Connection, ConnectionEvent, ConnectionEventType, PathSegment, State};
use tonic::{Status, Streaming};

use crate::dial::ClientConn;

/// Subscribes to the next hop's events for `conn` (selector = our segment's id and name) and waits
/// up to `wait` for the initial state transfer, which proves the next hop can monitor at all.
pub(crate) async fn subscribe_next_hop(
    cc: &ClientConn,
    conn: &Connection,
    wait: Option<Duration>,
) -> Result<Streaming<ConnectionEvent>, Status> {
    let ours = conn.current_segment().cloned().unwrap_or_default();
    let selector = MonitorScopeSelector {
        path_segments: vec![PathSegment::new(ours.name, ours.id)],
    };
    let mut client = MonitorConnectionClient::new(cc.channel.clone());
    let open = async {
        let mut stream = client.monitor_connections(selector).await?.into_inner();
        match stream.message().await? {
            Some(_) => Ok(stream),
            None => Err(Status::unavailable(
                "the monitor stream ended before the initial state transfer",
            )),
        }
    };
    match wait {
        Some(w) => tokio::time::timeout(w, open).await.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(
                "no initial state transfer in time",
            ))
        }),
        None => open.await,
    }
}

/// Tracks our view of one connection through the next hop's events.
#[derive(Debug, Clone)]
pub(crate) struct ClientFilter {
    conn: Connection,
}

impl ClientFilter {
    /// Watches `conn` as this hop returned it (its path index is ours).
    pub(crate) fn new(conn: Connection) -> Self {
        Self { conn }
    }

    /// Our connection changed by `event`, if the event concerns it and changes something.
    ///
    /// The next hop reports the connection with its own path index (ours or ours + 1); it concerns us
    /// if our segment carries our id. The result keeps our id and index and takes the path, context
    /// and state from the event; a DELETE reads as DOWN.
    pub(crate) fn apply(&mut self, event: &ConnectionEvent) -> Option<Connection> {
        let deleted = event.r#type() == ConnectionEventType::Delete;
        let mut changed = None;
        for incoming in event.connections.values() {
            if let Some(c) = self.apply_one(deleted, incoming) {
                changed = Some(c);
            }
        }
        changed
    }

    /// [`apply`](Self::apply) for one connection of an event (`deleted`: the event is a DELETE).
    pub(crate) fn apply_one(&mut self, deleted: bool, incoming: &Connection) -> Option<Connection> {
        if !concerns(&self.conn, incoming) {
            return None;
        }
        let out = merge(&self.conn, incoming, deleted)?;
        self.conn = out.clone();
        Some(out)
    }
}

/// True if the next hop's `incoming` connection is `ours` (as this hop returned it): our segment carries
/// our id, and the next hop reports it with its own path index (ours or ours + 1).
pub(crate) fn concerns(ours: &Connection, incoming: &Connection) -> bool {
    let index = ours.path_or_default().index;
    let path = incoming.path_or_default();
    path.path_segments
        .get(index as usize)
        .is_some_and(|s| s.id == ours.id)
        && (path.index == index || path.index == index + 1)
}

/// Our connection changed by the next hop's view `incoming` (which [`concerns`] it), if that changes
/// something: our id and index, the path, context and state from `incoming`; a DELETE reads as DOWN.
pub(crate) fn merge(ours: &Connection, incoming: &Connection, deleted: bool) -> Option<Connection> {
    let mut out = ours.clone();
    let mut p = incoming.path_or_default().clone();
    p.index = ours.path_or_default().index;
    out.path = Some(p);
    out.context = incoming.context.clone();
    out.state = if deleted {
        State::Down as i32
    } else {
        incoming.state
    };
    (out != *ours).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_api::{Path, PathSegment};

    fn view(index: u32, state: State) -> Connection {
        let segs = vec![
            PathSegment::new("nsc", "id-0"),
            PathSegment::new("nsmgr", "id-1"),
        ];
        Connection {
            id: segs[index as usize].id.clone(),
            path: Some(Path {
                index,
                path_segments: segs,
            }),
            state: state as i32,
            ..Default::default()
        }
    }

    fn event(t: ConnectionEventType, c: Connection) -> ConnectionEvent {
        ConnectionEvent {
            r#type: t as i32,
            connections: [(c.id.clone(), c)].into(),
        }
    }

    #[test]
    fn next_hop_view_becomes_ours_and_delete_means_down() {
        let mut f = ClientFilter::new(view(0, State::Up));
        assert!(
            f.apply(&event(ConnectionEventType::Update, view(1, State::Up)))
                .is_none(),
            "nothing changed"
        );
        let down = f
            .apply(&event(ConnectionEventType::Update, view(1, State::Down)))
            .unwrap();
        assert_eq!(
            (down.id.as_str(), down.path.as_ref().unwrap().index),
            ("id-0", 0)
        );
        assert_eq!(down.state(), State::Down);
        let mut f = ClientFilter::new(view(0, State::Up));
        let gone = f
            .apply(&event(ConnectionEventType::Delete, view(1, State::Up)))
            .unwrap();
        assert_eq!(gone.state(), State::Down);
        let mut stranger = view(1, State::Down);
        stranger.path.as_mut().unwrap().path_segments[0].id = "someone-else".into();
        let mut f = ClientFilter::new(view(0, State::Up));
        assert!(
            f.apply(&event(ConnectionEventType::Update, stranger))
                .is_none()
        );
    }
}
