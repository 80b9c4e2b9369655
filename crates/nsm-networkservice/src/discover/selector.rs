//! Label selectors of `NetworkService.matches` (Go `matchutils.IsSubset` and `discover.matchEndpoint`).
//!
//! A selector value may be a Go `text/template` evaluated against the connection's labels, e.g.
//! `nodeName: "{{.nodeName}}"` selects endpoints on the client's node. Only `{{.label}}` actions
//! (optionally padded with spaces) are supported; anything else is refused with a [`TemplateError`]
//! instead of being silently compared as literal text. A label the connection does not have expands to
//! `<no value>`, as Go's template engine prints it, so it matches nothing real.

use std::collections::BTreeMap;
use std::time::SystemTime;

use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_core::clock::from_timestamp;

/// Labels as the protos carry them.
pub type Labels = BTreeMap<String, String>;

/// What Go's template engine prints for a missing map key.
const NO_VALUE: &str = "<no value>";

/// A selector value that is a template this implementation cannot evaluate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector value {value:?}: {reason} (only {{{{.label}}}} actions are supported)")]
pub struct TemplateError {
    /// The selector value.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Expands `{{.name}}` actions in `template` with `labels`.
pub fn expand(template: &str, labels: &Labels) -> Result<String, TemplateError> {
    let err = |reason: String| TemplateError {
        value: template.to_string(),
        reason,
    };
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| err("unclosed action".into()))?;
        let action = after[..close].trim_matches(' ');
        let name = action
            .strip_prefix('.')
            .filter(|n| is_identifier(n))
            .ok_or_else(|| err(format!("unsupported action {{{{{}}}}}", &after[..close])))?;
        out.push_str(labels.get(name).map_or(NO_VALUE, String::as_str));
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

/// True if every `selector` entry is in `labels`, a selector value that differs literally being
/// expanded as a template over `values` first (Go `IsSubset(labels, selector, values)`).
pub fn is_subset(
    labels: &Labels,
    selector: &Labels,
    values: &Labels,
) -> Result<bool, TemplateError> {
    if labels.len() < selector.len() {
        return Ok(false);
    }
    for (k, want) in selector {
        let have = labels.get(k).map_or("", String::as_str);
        if have != want && (!want.contains("{{") || have != expand(want, values)?) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// True if the endpoint's registration has not expired at `now`.
pub fn is_live(nse: &NetworkServiceEndpoint, now: SystemTime) -> bool {
    match &nse.expiration_time {
        None => true,
        Some(t) => from_timestamp(t).is_some_and(|t| t > now),
    }
}

/// The endpoints that may serve `ns` for a connection with `labels`: live endpoints, filtered by the
/// first match whose source selector applies (a match with `fallthrough` that selects nothing passes on
/// to the next one); all live endpoints if no match applies. An endpoint selected by several routes of
/// the match is listed once.
pub fn match_endpoints(
    now: SystemTime,
    labels: &Labels,
    ns: &NetworkService,
    nses: Vec<NetworkServiceEndpoint>,
) -> Result<Vec<NetworkServiceEndpoint>, TemplateError> {
    let live: Vec<_> = nses.into_iter().filter(|n| is_live(n, now)).collect();
    let empty = Labels::new();
    for m in &ns.matches {
        if !is_subset(labels, &m.source_selector, labels)? {
            continue;
        }
        let mut picked: Vec<NetworkServiceEndpoint> = Vec::new();
        for route in &m.routes {
            for nse in &live {
                let nse_labels = nse
                    .network_service_labels
                    .get(&ns.name)
                    .map_or(&empty, |l| &l.labels);
                if is_subset(nse_labels, &route.destination_selector, labels)?
                    && !picked.iter().any(|p| p.name == nse.name)
                {
                    picked.push(nse.clone());
                }
            }
        }
        if m.fallthrough && picked.is_empty() {
            continue;
        }
        return Ok(picked);
    }
    Ok(live)
}

/// `{k=v, …}` for messages.
pub fn fmt_labels(labels: &Labels) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use nsm_api::registry::{Destination, Match};
    use nsm_core::clock::to_timestamp;

    use super::*;
    use crate::discover::testing::nse;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn templates_expand_labels_and_refuse_the_rest() {
        let l = labels(&[("nodeName", "node-1")]);
        assert_eq!(expand("{{.nodeName}}", &l).unwrap(), "node-1");
        assert_eq!(expand("at-{{ .nodeName }}-x", &l).unwrap(), "at-node-1-x");
        assert_eq!(expand("{{.podName}}", &l).unwrap(), "<no value>");
        assert_eq!(expand("plain", &l).unwrap(), "plain");
        let e = expand("{{.a | printf}}", &l).unwrap_err();
        assert!(
            e.to_string().contains("unsupported action {{.a | printf}}"),
            "{e}"
        );
        assert!(expand("{{index . \"a\"}}", &l).is_err());
        assert!(
            expand("{{.nodeName", &l)
                .unwrap_err()
                .reason
                .contains("unclosed")
        );
    }

    #[test]
    fn subset_uses_templates_only_when_literal_values_differ() {
        let conn = labels(&[("nodeName", "node-1"), ("app", "x")]);
        let nse_labels = labels(&[("nodeName", "node-1")]);
        assert!(
            is_subset(
                &nse_labels,
                &labels(&[("nodeName", "{{.nodeName}}")]),
                &conn
            )
            .unwrap()
        );
        assert!(!is_subset(&nse_labels, &labels(&[("nodeName", "{{.app}}")]), &conn).unwrap());
        assert!(!is_subset(&nse_labels, &labels(&[("a", "1"), ("b", "2")]), &conn).unwrap());
        assert!(is_subset(&nse_labels, &labels(&[]), &conn).unwrap());
    }

    fn matched(
        ns: &NetworkService,
        conn: &Labels,
        nses: Vec<NetworkServiceEndpoint>,
    ) -> Vec<String> {
        match_endpoints(UNIX_EPOCH + Duration::from_secs(100), conn, ns, nses)
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect()
    }

    fn route(sel: &[(&str, &str)]) -> Destination {
        Destination {
            destination_selector: labels(sel),
            weight: 0,
        }
    }

    #[test]
    fn matches_select_by_template_and_fall_through() {
        let nses = vec![
            nse("nse-1", "unix:///a", &["svc"], &[("nodeName", "node-1")]),
            nse("nse-2", "unix:///b", &["svc"], &[("nodeName", "node-2")]),
        ];
        let mut ns = crate::discover::testing::ns("svc");
        ns.matches = vec![
            Match {
                source_selector: labels(&[("app", "firewall")]),
                routes: vec![route(&[("nodeName", "nowhere")])],
                fallthrough: true,
                ..Default::default()
            },
            Match {
                routes: vec![route(&[("nodeName", "{{.nodeName}}")])],
                ..Default::default()
            },
        ];
        let on_node_2 = labels(&[("app", "firewall"), ("nodeName", "node-2")]);
        assert_eq!(matched(&ns, &on_node_2, nses.clone()), ["nse-2"]);

        // Without fallthrough the first applicable match is final, even if it selects nothing.
        ns.matches[0].fallthrough = false;
        assert!(matched(&ns, &on_node_2, nses.clone()).is_empty());

        // No applicable match: all live endpoints.
        ns.matches.truncate(1);
        assert_eq!(matched(&ns, &labels(&[]), nses), ["nse-1", "nse-2"]);
    }

    #[test]
    fn expired_endpoints_are_dropped() {
        let mut old = nse("old", "unix:///a", &["svc"], &[]);
        old.expiration_time = Some(to_timestamp(UNIX_EPOCH + Duration::from_secs(99)));
        let mut fresh = nse("fresh", "unix:///b", &["svc"], &[]);
        fresh.expiration_time = Some(to_timestamp(UNIX_EPOCH + Duration::from_secs(101)));
        let ns = crate::discover::testing::ns("svc");
        assert_eq!(matched(&ns, &labels(&[]), vec![old, fresh]), ["fresh"]);
    }
}
