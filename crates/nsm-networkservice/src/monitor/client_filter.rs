//! Reading a next hop's view of one of our connections (used by the `monitor` passthrough).

use nsm_api::{Connection, State};

/// Our connection changed by the next hop's view `incoming` (our segment in it carries our id: the
/// shared stream dispatches by it), if that changes something: our id and index, the path, context and state from `incoming`; a DELETE reads as DOWN.
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

    #[test]
    fn next_hop_view_becomes_ours_and_delete_means_down() {
        let ours = view(0, State::Up);
        assert!(
            merge(&ours, &view(1, State::Up), false).is_none(),
            "nothing changed"
        );
        let down = merge(&ours, &view(1, State::Down), false).unwrap();
        assert_eq!(
            (down.id.as_str(), down.path.as_ref().unwrap().index),
            ("id-0", 0)
        );
        assert_eq!(down.state(), State::Down);
        let gone = merge(&ours, &view(1, State::Up), true).unwrap();
        assert_eq!(gone.state(), State::Down);
    }
}
