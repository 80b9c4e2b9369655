//! The client-side merge of an external re-request with the stored connection (Go `mergeConnection`).
//!
//! What the caller changed is judged against the connection last *returned to the caller*, not the
//! stored one: after a heal the stored connection names a new endpoint while the caller still holds
//! the old one, and a refresh with that old connection must not steer back to the dead endpoint.

use std::collections::BTreeMap;

use nsm_api::Connection;

/// Keeps the stored connection (path, ids, mechanism…) but takes the changes the caller made to the
/// connection it was last returned: a changed endpoint name, and changes to `extra_context` (changed
/// values updated, removed keys removed).
pub(super) fn merge_connection(
    returned: Option<&Connection>,
    stored: Option<&Connection>,
    requested: Connection,
) -> Connection {
    let (Some(returned), Some(stored)) = (returned, stored) else {
        return requested;
    };
    let mut conn = stored.clone();
    if returned.network_service_endpoint_name != requested.network_service_endpoint_name {
        conn.network_service_endpoint_name = requested.network_service_endpoint_name.clone();
    }
    if returned.context != requested.context {
        let empty = BTreeMap::new();
        let returned = returned
            .context
            .as_ref()
            .map_or(&empty, |c| &c.extra_context);
        let wanted = requested
            .context
            .as_ref()
            .map_or(&empty, |c| &c.extra_context);
        let ctx = conn.context.get_or_insert_with(Default::default);
        for (k, v) in returned {
            match wanted.get(k) {
                Some(w) if w != v => {
                    ctx.extra_context.insert(k.clone(), w.clone());
                }
                Some(_) => {}
                None => {
                    ctx.extra_context.remove(k);
                }
            }
        }
    }
    conn
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_api::connectioncontext::ConnectionContext;

    fn with_extra(pairs: &[(&str, &str)]) -> Connection {
        Connection {
            id: "c".into(),
            context: Some(Box::new(ConnectionContext {
                extra_context: pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn stored_state_wins_but_requested_changes_apply() {
        let mut stored = with_extra(&[("a", "1"), ("b", "2")]);
        stored.network_service_endpoint_name = "nse-1".into();
        stored.path = Some(Default::default());
        let mut requested = with_extra(&[("a", "9")]);
        requested.network_service_endpoint_name = "nse-2".into();
        let merged = merge_connection(Some(&stored), Some(&stored), requested);
        assert_eq!(merged.network_service_endpoint_name, "nse-2");
        assert!(merged.path.is_some(), "stored path kept");
        let extra = &merged.context.unwrap().extra_context;
        assert_eq!(extra.get("a").map(String::as_str), Some("9"));
        assert!(!extra.contains_key("b"), "removed key removed");
    }

    #[test]
    fn unchanged_caller_view_keeps_a_healed_endpoint() {
        let mut returned = with_extra(&[]);
        returned.network_service_endpoint_name = "nse-dead".into();
        let mut stored = returned.clone();
        stored.network_service_endpoint_name = "nse-new".into();
        let merged = merge_connection(Some(&returned), Some(&stored), returned.clone());
        assert_eq!(merged.network_service_endpoint_name, "nse-new");
    }
}
