//! Which forwarders may carry a connection (sdk v1.1 `discoverforwarder.matchForwarders`).
//!
//! A service without matches accepts every forwarder. Otherwise the first match whose source selector
//! fits the connection's labels decides: it requires its `metadata.labels` — or `{p2p=true}` when it
//! has none (an empty map is "none" on the wire) — from the forwarder's labels under the forwarder
//! service name (forwarders without such labels never qualify). A match with `fallthrough` that finds
//! no forwarder passes on to the next one. Required label values may be `{{.label}}` templates over the
//! connection's labels.

use std::fmt::Write as _;

use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};

use crate::discover::selector::{Labels, TemplateError, fmt_labels, is_subset};

/// The outcome of forwarder matching.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForwarderSelection {
    /// Forwarders that qualify, in registry order.
    pub candidates: Vec<NetworkServiceEndpoint>,
    /// The label sets required by the matches that applied, in order (for error messages).
    pub required: Vec<Labels>,
    /// The forwarders seen, with their labels under the forwarder service (`None`: no labels).
    pub seen: Vec<(String, Option<Labels>)>,
    /// The service has matches but none applies to the connection's labels.
    pub no_match_applies: bool,
}

impl ForwarderSelection {
    /// Why nothing was selected, for a `NotFound` error.
    pub fn describe_none(&self, ns: &NetworkService, conn_labels: &Labels) -> String {
        let mut msg = format!("no forwarder for network service {}: ", ns.name);
        if self.no_match_applies {
            let _ = write!(
                msg,
                "no match of the service applies to connection labels {}",
                fmt_labels(conn_labels)
            );
        } else if self.required.is_empty() {
            msg.push_str("no forwarder is registered");
        } else {
            let required: Vec<String> = self.required.iter().map(fmt_labels).collect();
            let _ = write!(msg, "labels required: {}", required.join(" or "));
        }
        let seen: Vec<String> = self
            .seen
            .iter()
            .map(|(name, labels)| match labels {
                Some(l) => format!("{name} {}", fmt_labels(l)),
                None => format!("{name} (no forwarder labels)"),
            })
            .collect();
        let _ = write!(msg, "; forwarders seen: [{}]", seen.join(", "));
        msg
    }
}

/// Chooses the forwarders that may carry a connection with `conn_labels` to `ns`.
pub fn select_forwarders(
    forwarder_service: &str,
    conn_labels: &Labels,
    ns: &NetworkService,
    forwarders: &[NetworkServiceEndpoint],
) -> Result<ForwarderSelection, TemplateError> {
    let labels_of = |f: &NetworkServiceEndpoint| {
        f.network_service_labels
            .get(forwarder_service)
            .map(|l| l.labels.clone())
    };
    let mut out = ForwarderSelection {
        seen: forwarders
            .iter()
            .map(|f| (f.name.clone(), labels_of(f)))
            .collect(),
        ..Default::default()
    };
    if ns.matches.is_empty() {
        out.candidates = forwarders.to_vec();
        out.required.push(Labels::new());
        return Ok(out);
    }
    out.no_match_applies = true;
    for m in &ns.matches {
        if !is_subset(conn_labels, &m.source_selector, conn_labels)? {
            continue;
        }
        out.no_match_applies = false;
        let required = m
            .metadata
            .as_ref()
            .map(|md| md.labels.clone())
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| Labels::from([("p2p".to_string(), "true".to_string())]));
        for f in forwarders {
            if let Some(have) = labels_of(f)
                && is_subset(&have, &required, conn_labels)?
            {
                out.candidates.push(f.clone());
            }
        }
        out.required.push(required);
        if m.fallthrough && out.candidates.is_empty() {
            continue;
        }
        break;
    }
    Ok(out)
}
