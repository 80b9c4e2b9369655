//! `nsm ctl get services|endpoints|forwarders|connections`.

use std::collections::BTreeMap;

use nsm_api::Connection;
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use serde::Serialize;

use super::mesh::{Mesh, Seen};
use super::output::{Table, fmt_expiry, fmt_labels, or_dash, rfc3339, seconds_until, timestamp};

/// The label the NSMgr's `clientinfo` puts the node name under.
pub const NODE_LABEL: &str = "nodeName";

/// A network service.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceRow {
    /// Name.
    pub name: String,
    /// Payload (ETHERNET, IP).
    pub payload: String,
    /// Number of matches.
    pub matches: usize,
}

/// Rows for `get services`.
pub fn service_rows(services: &[NetworkService]) -> Vec<ServiceRow> {
    services
        .iter()
        .map(|s| ServiceRow {
            name: s.name.clone(),
            payload: s.payload.clone(),
            matches: s.matches.len(),
        })
        .collect()
}

/// Table for `get services`.
pub fn service_table(rows: &[ServiceRow]) -> Table {
    let mut t = Table::new(&["NAME", "PAYLOAD", "MATCHES"]);
    for r in rows {
        t.row(vec![
            r.name.clone(),
            or_dash(&r.payload),
            r.matches.to_string(),
        ]);
    }
    t
}

/// An endpoint (NSE or forwarder).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EndpointRow {
    /// Name.
    pub name: String,
    /// Network services it provides.
    pub services: Vec<String>,
    /// Labels per network service.
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Registered URL (its NSMgr's, for endpoints registered through one).
    pub url: String,
    /// The node (`nodeName` label), if any.
    pub node: Option<String>,
    /// When the registration expires (RFC 3339), if it does.
    pub expiration_time: Option<String>,
    /// Seconds until it expires (negative: expired).
    pub expires_in_seconds: Option<i64>,
}

impl EndpointRow {
    /// Every label of every service, merged (sorted by key; the last service wins on conflicts).
    pub fn merged_labels(&self) -> BTreeMap<String, String> {
        self.labels
            .values()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Rows for `get endpoints`, with expiry relative to `now`.
pub fn endpoint_rows(
    nses: &[NetworkServiceEndpoint],
    now: std::time::SystemTime,
) -> Vec<EndpointRow> {
    nses.iter()
        .map(|e| {
            let labels: BTreeMap<String, BTreeMap<String, String>> = e
                .network_service_labels
                .iter()
                .map(|(svc, l)| (svc.clone(), l.labels.clone().into_iter().collect()))
                .collect();
            let expires = e.expiration_time.as_ref().and_then(timestamp);
            let node = labels.values().find_map(|l| l.get(NODE_LABEL).cloned());
            EndpointRow {
                name: e.name.clone(),
                services: e.network_service_names.clone(),
                labels,
                url: e.url.clone(),
                node,
                expiration_time: expires.map(rfc3339),
                expires_in_seconds: expires.map(|t| seconds_until(now, t)),
            }
        })
        .collect()
}

/// Whether `e` registered as a forwarder (provides `forwarder_service`).
pub fn is_forwarder(e: &NetworkServiceEndpoint, forwarder_service: &str) -> bool {
    e.network_service_names
        .iter()
        .any(|s| s == forwarder_service)
}

/// Table for `get endpoints`.
pub fn endpoint_table(rows: &[EndpointRow]) -> Table {
    let mut t = Table::new(&["NAME", "SERVICES", "LABELS", "URL", "EXPIRES"]);
    for r in rows {
        t.row(vec![
            r.name.clone(),
            or_dash(&r.services.join(",")),
            fmt_labels(&r.merged_labels()),
            or_dash(&r.url),
            fmt_expiry(r.expires_in_seconds),
        ]);
    }
    t
}

/// Table for `get forwarders`.
pub fn forwarder_table(rows: &[EndpointRow]) -> Table {
    let mut t = Table::new(&["NAME", "NODE", "LABELS", "URL", "EXPIRES"]);
    for r in rows {
        t.row(vec![
            r.name.clone(),
            r.node.clone().unwrap_or_else(|| "-".into()),
            fmt_labels(&r.merged_labels()),
            or_dash(&r.url),
            fmt_expiry(r.expires_in_seconds),
        ]);
    }
    t
}

/// A connection, one row per client connection id.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConnectionRow {
    /// The id the client chose (first path segment).
    pub id: String,
    /// Network service.
    pub service: String,
    /// Endpoint chosen.
    pub endpoint: String,
    /// Hop names, client first.
    pub path: Vec<String>,
    /// UP or DOWN.
    pub state: String,
    /// Mechanism type of the client's link, as its NSMgr sees it.
    pub mechanism: String,
    /// The NSMgrs reporting it.
    pub nsmgrs: Vec<String>,
}

/// `UP` / `DOWN` (or the raw number for an unknown state).
pub fn state_name(conn: &Connection) -> String {
    nsm_api::State::try_from(conn.state)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| conn.state.to_string())
}

/// Hop names, client first.
pub fn hop_names(conn: &Connection) -> Vec<String> {
    conn.path_or_default()
        .path_segments
        .iter()
        .map(|s| s.name.clone())
        .collect()
}

/// Rows for `get connections`: one per client id; the view of the NSMgr nearest the client wins.
pub fn connection_rows(seen: &[Seen]) -> Vec<ConnectionRow> {
    let mut by_id: BTreeMap<String, (u32, ConnectionRow)> = BTreeMap::new();
    for s in seen {
        let index = s.conn.path_or_default().index;
        let row = ConnectionRow {
            id: s.client_id().to_string(),
            service: s.conn.network_service.clone(),
            endpoint: s.conn.network_service_endpoint_name.clone(),
            path: hop_names(&s.conn),
            state: state_name(&s.conn),
            mechanism: s
                .conn
                .mechanism
                .as_ref()
                .map(|m| m.r#type.clone())
                .unwrap_or_default(),
            nsmgrs: vec![s.nsmgr.to_string()],
        };
        match by_id.get_mut(&row.id) {
            Some((best, existing)) => {
                let mut nsmgrs = std::mem::take(&mut existing.nsmgrs);
                nsmgrs.extend(row.nsmgrs.iter().cloned());
                if index < *best {
                    *best = index;
                    *existing = row;
                }
                nsmgrs.sort();
                nsmgrs.dedup();
                existing.nsmgrs = nsmgrs;
            }
            None => {
                by_id.insert(row.id.clone(), (index, row));
            }
        }
    }
    by_id.into_values().map(|(_, r)| r).collect()
}

/// Table for `get connections`.
pub fn connection_table(rows: &[ConnectionRow]) -> Table {
    let mut t = Table::new(&["ID", "SERVICE", "ENDPOINT", "PATH", "STATE", "MECHANISM"]);
    for r in rows {
        t.row(vec![
            r.id.clone(),
            or_dash(&r.service),
            or_dash(&r.endpoint),
            or_dash(&r.path.join(" -> ")),
            r.state.clone(),
            or_dash(&r.mechanism),
        ]);
    }
    t
}

/// Connections from every NSMgr as rows; errors name the NSMgrs that did not answer.
pub async fn connections(mesh: &Mesh) -> Result<(Vec<ConnectionRow>, Vec<String>), String> {
    let nsmgrs = mesh.nsmgr_urls(None).await?;
    if nsmgrs.is_empty() {
        eprintln!(
            "nsm ctl: no NSMgr to ask: none given with --nsmgr / NSM_CTL_NSMGRS and no endpoint registered"
        );
    }
    let (seen, failed) = mesh.all_connections(&nsmgrs).await;
    let errors = failed
        .into_iter()
        .map(|(u, e)| format!("NSMgr {u}: {e}"))
        .collect();
    Ok((connection_rows(&seen), errors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_api::registry::NetworkServiceLabels;
    use nsm_api::url::NsmUrl;
    use nsm_api::{Mechanism, Path, PathSegment};
    use std::time::{Duration, UNIX_EPOCH};

    fn conn(index: u32, names: &[(&str, &str)], state: nsm_api::State) -> Connection {
        Connection {
            id: names[index as usize].1.into(),
            network_service: "icmp-responder".into(),
            network_service_endpoint_name: "nse-1".into(),
            state: state as i32,
            mechanism: Some(Mechanism {
                r#type: "KERNEL".into(),
                ..Default::default()
            }),
            path: Some(Path {
                index,
                path_segments: names
                    .iter()
                    .map(|(n, id)| PathSegment {
                        name: (*n).into(),
                        id: (*id).into(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn connections_are_merged_by_client_id() {
        let path = [
            ("nsc", "nsc-0"),
            ("nsmgr-1", "a"),
            ("fwd-1", "b"),
            ("nsmgr-2", "c"),
        ];
        let u1 = NsmUrl::parse("tcp://10.0.0.1:5001").unwrap();
        let u2 = NsmUrl::parse("tcp://10.0.0.2:5001").unwrap();
        let seen = vec![
            Seen {
                nsmgr: u2.clone(),
                conn: conn(3, &path, nsm_api::State::Down),
            },
            Seen {
                nsmgr: u1.clone(),
                conn: conn(1, &path, nsm_api::State::Up),
            },
        ];
        let rows = connection_rows(&seen);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.id, "nsc-0");
        assert_eq!(r.state, "UP", "the NSMgr nearest the client wins");
        assert_eq!(r.nsmgrs, ["tcp://10.0.0.1:5001", "tcp://10.0.0.2:5001"]);
        assert_eq!(
            connection_table(&rows).render(),
            "ID      SERVICE          ENDPOINT   PATH                                 STATE   MECHANISM\n\
             nsc-0   icmp-responder   nse-1      nsc -> nsmgr-1 -> fwd-1 -> nsmgr-2   UP      KERNEL\n"
        );
    }

    #[test]
    fn endpoint_and_forwarder_tables() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let fwd = NetworkServiceEndpoint {
            name: "fwd-1".into(),
            network_service_names: vec!["forwarder".into()],
            network_service_labels: [(
                "forwarder".to_string(),
                NetworkServiceLabels {
                    labels: [("p2p", "true"), ("nodeName", "node-1")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                },
            )]
            .into_iter()
            .collect(),
            url: "tcp://10.0.0.1:5001".into(),
            expiration_time: Some(nsm_core::clock::to_timestamp(now + Duration::from_secs(59))),
            ..Default::default()
        };
        let old = NetworkServiceEndpoint {
            name: "old".into(),
            network_service_names: vec!["icmp-responder".into()],
            expiration_time: Some(nsm_core::clock::to_timestamp(now - Duration::from_secs(3))),
            ..Default::default()
        };
        assert!(is_forwarder(&fwd, "forwarder"));
        assert!(!is_forwarder(&old, "forwarder"));
        let rows = endpoint_rows(&[fwd, old], now);
        assert_eq!(rows[0].node.as_deref(), Some("node-1"));
        assert_eq!(rows[0].expires_in_seconds, Some(59));
        assert_eq!(
            rows[0].expiration_time.as_deref(),
            Some("2023-11-14T22:14:19Z")
        );
        assert_eq!(
            endpoint_table(&rows).render(),
            "NAME    SERVICES         LABELS                     URL                   EXPIRES\n\
             fwd-1   forwarder        nodeName=node-1,p2p=true   tcp://10.0.0.1:5001   in 59s\n\
             old     icmp-responder   -                          -                     expired 3s ago\n"
        );
        assert_eq!(
            forwarder_table(&rows[..1]).render(),
            "NAME    NODE     LABELS                     URL                   EXPIRES\n\
             fwd-1   node-1   nodeName=node-1,p2p=true   tcp://10.0.0.1:5001   in 59s\n"
        );
    }

    #[test]
    fn service_table_counts_matches() {
        let ns = NetworkService {
            name: "icmp-responder".into(),
            payload: "ETHERNET".into(),
            matches: vec![Default::default(), Default::default()],
        };
        let rows = service_rows(&[ns]);
        assert_eq!(rows[0].matches, 2);
        assert_eq!(
            service_table(&rows).render(),
            "NAME             PAYLOAD    MATCHES\nicmp-responder   ETHERNET   2\n"
        );
    }
}
