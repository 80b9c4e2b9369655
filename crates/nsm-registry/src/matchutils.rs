//! Find matching rules of the Go memory registry (sdk `tools/matchutils`).
//!
//! A query is a template item: every field left empty matches anything. Names and URLs match by
//! substring, so callers that need an exact name re-check it themselves (as Go's `discover` does).
//! proto3 cannot tell an empty map or list from an absent one, so "empty" here means Go's `nil`.

use nsm_api::registry::{NetworkService, NetworkServiceEndpoint, NetworkServiceLabels};
use std::collections::BTreeMap;

/// True if `item` matches the network service `query`: name substring, payload equal, and `matches`
/// deep-equal when the query has any.
pub fn match_network_services(query: &NetworkService, item: &NetworkService) -> bool {
    (query.name.is_empty() || item.name.contains(&query.name))
        && (query.payload.is_empty() || query.payload == item.payload)
        && (query.matches.is_empty() || query.matches == item.matches)
}

/// True if `item` matches the endpoint `query`: name substring, every queried label present per
/// service, same expiration second, queried service names a subset, URL substring.
pub fn match_network_service_endpoints(
    query: &NetworkServiceEndpoint,
    item: &NetworkServiceEndpoint,
) -> bool {
    (query.name.is_empty() || item.name.contains(&query.name))
        && labels_contain(&item.network_service_labels, &query.network_service_labels)
        && query.expiration_time.as_ref().is_none_or(|q| {
            // Go reads `Seconds` of the stored item's timestamp; an absent one reads as zero.
            q.seconds == item.expiration_time.as_ref().map_or(0, |t| t.seconds)
        })
        && query
            .network_service_names
            .iter()
            .all(|n| item.network_service_names.contains(n))
        && (query.url.is_empty() || item.url.contains(&query.url))
}

fn labels_contain(
    stored: &BTreeMap<String, NetworkServiceLabels>,
    wanted: &BTreeMap<String, NetworkServiceLabels>,
) -> bool {
    wanted.iter().all(|(service, labels)| {
        stored.get(service).is_some_and(|have| {
            labels
                .labels
                .iter()
                .all(|(k, v)| have.labels.get(k) == Some(v))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_api::registry::Match;
    use prost_types::Timestamp;

    fn labels(svc: &str, kv: &[(&str, &str)]) -> BTreeMap<String, NetworkServiceLabels> {
        let labels = kv
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        BTreeMap::from([(svc.to_string(), NetworkServiceLabels { labels })])
    }

    fn nse() -> NetworkServiceEndpoint {
        NetworkServiceEndpoint {
            name: "nse-icmp-1".into(),
            network_service_names: vec!["icmp".into(), "web".into()],
            network_service_labels: labels("icmp", &[("app", "a"), ("zone", "z1")]),
            url: "tcp://10.0.0.1:5001".into(),
            expiration_time: Some(Timestamp {
                seconds: 100,
                nanos: 5,
            }),
            initial_registration_time: None,
        }
    }

    #[test]
    fn endpoint_fields_match_like_go() {
        let item = nse();
        let q = |f: fn(&mut NetworkServiceEndpoint)| {
            let mut q = NetworkServiceEndpoint::default();
            f(&mut q);
            match_network_service_endpoints(&q, &item)
        };
        assert!(q(|_| {}), "an empty query matches everything");
        assert!(q(|q| q.name = "icmp".into()), "name is a substring match");
        assert!(!q(|q| q.name = "nse-icmp-2".into()));
        assert!(q(|q| q.url = "10.0.0.1".into()), "url is a substring match");
        assert!(!q(|q| q.url = "10.0.0.2".into()));
        assert!(q(|q| q.network_service_names = vec!["web".into()]));
        assert!(!q(
            |q| q.network_service_names = vec!["web".into(), "x".into()]
        ));
        assert!(q(
            |q| q.network_service_labels = labels("icmp", &[("app", "a")])
        ));
        assert!(q(|q| q.network_service_labels = labels("icmp", &[])));
        assert!(!q(
            |q| q.network_service_labels = labels("icmp", &[("app", "b")])
        ));
        assert!(!q(|q| q.network_service_labels = labels("web", &[])));
        assert!(q(|q| q.expiration_time = Some(Timestamp {
            seconds: 100,
            nanos: 0
        })));
        assert!(!q(|q| q.expiration_time = Some(Timestamp {
            seconds: 101,
            nanos: 0
        })));
    }

    #[test]
    fn service_fields_match_like_go() {
        let item = NetworkService {
            name: "icmp-responder".into(),
            payload: "ETHERNET".into(),
            matches: vec![Match {
                fallthrough: true,
                ..Default::default()
            }],
        };
        let mut q = NetworkService {
            name: "icmp".into(),
            ..Default::default()
        };
        assert!(match_network_services(&q, &item));
        q.payload = "IP".into();
        assert!(!match_network_services(&q, &item));
        q.payload = "ETHERNET".into();
        q.matches = vec![Match::default()];
        assert!(!match_network_services(&q, &item), "matches compare deeply");
        q.matches = item.matches.clone();
        assert!(match_network_services(&q, &item));
    }
}
