//! `nsm ctl check`: a doctor in the style of `linkerd check`.
//!
//! | group | checks |
//! |---|---|
//! | registry | health (`grpc.health.v1`) and a Find of services and endpoints |
//! | forwarders | per node (`nodeName` label): at least one forwarder; every node with endpoints has one |
//! | nsmgrs | health of every NSMgr (`--nsmgr`, or discovered from the registry) |
//! | registrations | no expired registration; none whose URL (its NSMgr) does not answer (orphaned) |
//! | identity | with mTLS: our SVID and every server's valid and not expiring within 10 minutes; otherwise skipped |
//!
//! Each check prints ✓ or ✗ (or `-` when skipped) with a one-line reason; any ✗ makes the exit code 1.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use nsm_api::registry::NetworkServiceEndpoint;
use nsm_api::url::NsmUrl;
use nsm_core::values::PeerInfo;
use serde::Serialize;

use super::get::{endpoint_rows, is_forwarder};
use super::mesh::{Mesh, dial_reason, nsmgrs_of};
use super::output::{fmt_duration, seconds_until};

/// An identity closer to expiry than this fails the check.
pub const NEAR_EXPIRY: Duration = Duration::from_secs(600);

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Passed.
    Ok,
    /// Failed.
    Failed,
    /// Not applicable.
    Skipped,
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// Group heading.
    pub group: String,
    /// Outcome.
    pub status: Status,
    /// One line.
    pub message: String,
}

/// Every check, for `-o json|yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// No check failed.
    pub ok: bool,
    /// The checks, in order.
    pub checks: Vec<CheckResult>,
}

#[derive(Default)]
struct Checks(Vec<CheckResult>);

impl Checks {
    fn add(&mut self, group: &str, status: Status, message: impl Into<String>) {
        self.0.push(CheckResult {
            group: group.into(),
            status,
            message: message.into(),
        });
    }
    fn ok(&mut self, group: &str, m: impl Into<String>) {
        self.add(group, Status::Ok, m);
    }
    fn fail(&mut self, group: &str, m: impl Into<String>) {
        self.add(group, Status::Failed, m);
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The forwarders-per-node checks over the registered endpoints.
pub fn forwarder_checks(
    endpoints: &[NetworkServiceEndpoint],
    forwarder_service: &str,
    now: SystemTime,
) -> Vec<(Status, String)> {
    let rows = endpoint_rows(endpoints, now);
    let mut per_node: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for (row, e) in rows.iter().zip(endpoints) {
        let node = row.node.clone().unwrap_or_else(|| "(no nodeName)".into());
        let entry = per_node.entry(node).or_default();
        if is_forwarder(e, forwarder_service) {
            entry.0.push(row.name.clone());
        } else {
            entry.1.push(row.name.clone());
        }
    }
    if !per_node.values().any(|(f, _)| !f.is_empty()) {
        return vec![(
            Status::Failed,
            format!("no forwarder registered (no endpoint provides {forwarder_service:?})"),
        )];
    }
    per_node
        .into_iter()
        .map(|(node, (fwds, nses))| {
            if fwds.is_empty() {
                (
                    Status::Failed,
                    format!(
                        "node {node}: no forwarder registered ({} there: {})",
                        plural(nses.len(), "endpoint", "endpoints"),
                        nses.join(", ")
                    ),
                )
            } else {
                (
                    Status::Ok,
                    format!(
                        "node {node}: {} ({})",
                        plural(fwds.len(), "forwarder", "forwarders"),
                        fwds.join(", ")
                    ),
                )
            }
        })
        .collect()
}

/// Expired registrations (name, seconds ago).
pub fn expired(endpoints: &[NetworkServiceEndpoint], now: SystemTime) -> Vec<(String, u64)> {
    endpoint_rows(endpoints, now)
        .into_iter()
        .filter_map(|r| match r.expires_in_seconds {
            Some(s) if s < 0 => Some((r.name, s.unsigned_abs())),
            _ => None,
        })
        .collect()
}

/// Endpoints registered through an answering NSMgr that do not answer themselves: the NSMgr's own
/// endpoint registry gives their real URL back (`localbypass`), which is health-checked.
async fn dead_behind_nsmgrs(
    mesh: &Mesh,
    answers: &BTreeMap<NsmUrl, Result<Option<PeerInfo>, String>>,
) -> Vec<String> {
    let live: Vec<&NsmUrl> = answers
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(u, _)| u)
        .collect();
    let mut local: BTreeMap<(String, NsmUrl), NsmUrl> = BTreeMap::new();
    for n in &live {
        let Ok(found) = mesh
            .endpoints_at(n, NetworkServiceEndpoint::default())
            .await
        else {
            continue;
        };
        for e in found {
            if let Ok(u) = NsmUrl::parse(&e.url)
                && !answers.contains_key(&u)
            {
                local.insert((e.name, u), (*n).clone());
            }
        }
    }
    let checks = local.into_iter().map(|((name, url), nsmgr)| async move {
        match mesh.health(&url, "").await {
            Ok(_) => None,
            Err(e) => {
                let why = dial_reason(&url, &e);
                Some(format!(
                    "{name} (registered through NSMgr {nsmgr}, not answering at {url}: {why})"
                ))
            }
        }
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The identity in `peer` (SPIFFE ID, expiry), if it has a certificate.
fn peer_identity(peer: &PeerInfo) -> Option<Result<(String, SystemTime), String>> {
    let pem = peer.certificate_pem.as_ref()?;
    Some(
        nsm_identity::parse_certs_pem(pem.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|certs| {
                let leaf = certs.first().ok_or("no certificate")?;
                nsm_identity::spiffe_id_of(leaf).map_err(|e| e.to_string())
            }),
    )
}

/// ✓ when `not_after` is more than [`NEAR_EXPIRY`] ahead.
pub fn identity_status(
    who: &str,
    id: &str,
    not_after: SystemTime,
    now: SystemTime,
) -> (Status, String) {
    let left = seconds_until(now, not_after);
    if left < 0 {
        (
            Status::Failed,
            format!(
                "{who}: {id} expired {} ago",
                fmt_duration(Duration::from_secs(left.unsigned_abs()))
            ),
        )
    } else if Duration::from_secs(left.unsigned_abs()) < NEAR_EXPIRY {
        (
            Status::Failed,
            format!(
                "{who}: {id} expires in {} (less than {})",
                fmt_duration(Duration::from_secs(left.unsigned_abs())),
                fmt_duration(NEAR_EXPIRY)
            ),
        )
    } else {
        (
            Status::Ok,
            format!(
                "{who}: {id} valid for {}",
                fmt_duration(Duration::from_secs(left.unsigned_abs()))
            ),
        )
    }
}

/// Runs every check.
pub async fn run(mesh: &Mesh, forwarder_service: &str) -> Report {
    let mut c = Checks::default();
    let now = mesh.clock.now();
    let mut peers: Vec<(String, PeerInfo)> = Vec::new();

    // registry
    let g = "registry";
    match mesh.health(&mesh.registry, "").await {
        Ok(peer) => {
            c.ok(g, format!("registry {} is serving", mesh.registry));
            if let Some(p) = peer {
                peers.push((format!("registry {}", mesh.registry), p));
            }
        }
        Err(e) => c.fail(
            g,
            format!(
                "registry {} is not serving: {}",
                mesh.registry,
                dial_reason(&mesh.registry, &e)
            ),
        ),
    }
    let services = mesh.services().await;
    let endpoints = mesh.endpoints().await;
    match (&services, &endpoints) {
        (Ok(s), Ok(e)) => c.ok(
            g,
            format!(
                "registry answers Find: {}, {}",
                plural(s.len(), "network service", "network services"),
                plural(e.len(), "endpoint", "endpoints")
            ),
        ),
        (Err(e), _) | (_, Err(e)) => c.fail(g, format!("registry Find failed: {e}")),
    }

    // forwarders
    let g = "forwarders";
    match &endpoints {
        Ok(eps) => {
            for (st, m) in forwarder_checks(eps, forwarder_service, now) {
                c.add(g, st, m);
            }
        }
        Err(_) => c.fail(g, "cannot list forwarders: the registry did not answer"),
    }

    // nsmgrs
    let g = "nsmgrs";
    let nsmgrs: Vec<NsmUrl> = match (&mesh.nsmgrs, &endpoints) {
        (Some(n), _) => n.clone(),
        (None, Ok(eps)) => nsmgrs_of(eps),
        (None, Err(_)) => Vec::new(),
    };
    let endpoint_urls: Vec<NsmUrl> = endpoints.as_deref().map(nsmgrs_of).unwrap_or_default();
    let to_ask: BTreeSet<NsmUrl> = nsmgrs.iter().chain(&endpoint_urls).cloned().collect();
    let answers: BTreeMap<NsmUrl, Result<Option<PeerInfo>, String>> = futures::future::join_all(
        to_ask
            .iter()
            .map(|u| async move { (u.clone(), mesh.health(u, "").await) }),
    )
    .await
    .into_iter()
    .collect();
    if nsmgrs.is_empty() {
        c.fail(
            g,
            "no NSMgr found: none given with --nsmgr / NSM_CTL_NSMGRS and no endpoint registered",
        );
    }
    for u in &nsmgrs {
        match answers.get(u) {
            Some(Ok(peer)) => {
                c.ok(g, format!("NSMgr {u} is serving"));
                if let Some(p) = peer {
                    peers.push((format!("NSMgr {u}"), p.clone()));
                }
            }
            Some(Err(e)) => c.fail(
                g,
                format!("NSMgr {u} is not answering: {}", dial_reason(u, e)),
            ),
            None => {}
        }
    }

    // registrations
    let g = "registrations";
    match &endpoints {
        Ok(eps) => {
            let old = expired(eps, now);
            if old.is_empty() {
                c.ok(
                    g,
                    format!(
                        "no expired registrations ({} checked)",
                        plural(eps.len(), "endpoint", "endpoints")
                    ),
                );
            } else {
                let list: Vec<String> = old
                    .iter()
                    .map(|(n, s)| format!("{n} ({} ago)", fmt_duration(Duration::from_secs(*s))))
                    .collect();
                c.fail(g, format!("expired registrations: {}", list.join(", ")));
            }
            let mut orphans: Vec<String> = eps
                .iter()
                .filter_map(|e| {
                    let u = NsmUrl::parse(&e.url).ok()?;
                    match answers.get(&u) {
                        Some(Err(why)) => {
                            Some(format!("{} ({u}: {})", e.name, dial_reason(&u, why)))
                        }
                        _ => None,
                    }
                })
                .collect();
            orphans.extend(dead_behind_nsmgrs(mesh, &answers).await);
            if orphans.is_empty() {
                c.ok(
                    g,
                    "no orphaned registrations (every endpoint's NSMgr and the endpoint itself answer)",
                );
            } else {
                c.fail(g, format!("orphaned registrations: {}", orphans.join("; ")));
            }
        }
        Err(_) => c.fail(g, "cannot list registrations: the registry did not answer"),
    }

    // identity
    let g = "identity";
    match mesh.security.tls() {
        None => c.add(g, Status::Skipped, "skipped: no identity source configured"),
        Some(tls) => {
            let svid = tls.current().svid.clone();
            let (st, m) = identity_status("nsm ctl", svid.spiffe_id(), svid.not_after(), now);
            c.add(g, st, m);
            for (who, p) in &peers {
                match peer_identity(p) {
                    Some(Ok((id, not_after))) => {
                        let (st, m) = identity_status(who, &id, not_after, now);
                        c.add(g, st, m);
                    }
                    Some(Err(e)) => c.fail(g, format!("{who}: unreadable certificate: {e}")),
                    None => c.fail(g, format!("{who}: presented no certificate")),
                }
            }
        }
    }

    let ok = !c.0.iter().any(|r| r.status == Status::Failed);
    Report { ok, checks: c.0 }
}

/// The human-readable report.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let mut group: Option<&str> = None;
    for c in &r.checks {
        if group != Some(c.group.as_str()) {
            if group.is_some() {
                out.push('\n');
            }
            out.push_str(&c.group);
            out.push('\n');
            out.push_str(&"-".repeat(c.group.chars().count()));
            out.push('\n');
            group = Some(&c.group);
        }
        let mark = match c.status {
            Status::Ok => "✓",
            Status::Failed => "✗",
            Status::Skipped => "-",
        };
        out.push_str(&format!("{mark} {}\n", c.message));
    }
    let failed = r
        .checks
        .iter()
        .filter(|c| c.status == Status::Failed)
        .count();
    if failed == 0 {
        out.push_str("\nStatus check results are ✓\n");
    } else {
        out.push_str(&format!(
            "\nStatus check results are ✗ ({} failed)\n",
            plural(failed, "check", "checks")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_api::registry::NetworkServiceLabels;
    use std::time::UNIX_EPOCH;

    fn nse(
        name: &str,
        service: &str,
        node: Option<&str>,
        expires_in: i64,
    ) -> NetworkServiceEndpoint {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let exp = if expires_in >= 0 {
            now + Duration::from_secs(expires_in.unsigned_abs())
        } else {
            now - Duration::from_secs(expires_in.unsigned_abs())
        };
        NetworkServiceEndpoint {
            name: name.into(),
            network_service_names: vec![service.into()],
            network_service_labels: node
                .map(|n| {
                    (
                        service.to_string(),
                        NetworkServiceLabels {
                            labels: [("nodeName".to_string(), n.to_string())].into(),
                        },
                    )
                })
                .into_iter()
                .collect(),
            url: "tcp://10.0.0.1:5001".into(),
            expiration_time: Some(nsm_core::clock::to_timestamp(exp)),
            ..Default::default()
        }
    }

    #[test]
    fn forwarders_per_node() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let eps = [
            nse("fwd-1", "forwarder", Some("node-1"), 60),
            nse("nse-1", "icmp", Some("node-1"), 60),
            nse("nse-2", "icmp", Some("node-2"), -5),
        ];
        let r = forwarder_checks(&eps, "forwarder", now);
        assert_eq!(
            r,
            [
                (Status::Ok, "node node-1: 1 forwarder (fwd-1)".to_string()),
                (
                    Status::Failed,
                    "node node-2: no forwarder registered (1 endpoint there: nse-2)".to_string()
                ),
            ]
        );
        assert_eq!(expired(&eps, now), [("nse-2".to_string(), 5)]);
        let none = forwarder_checks(&eps[1..], "forwarder", now);
        assert_eq!(none[0].0, Status::Failed);
    }

    #[test]
    fn identity_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let id = "spiffe://example.org/nsmgr";
        assert_eq!(
            identity_status("x", id, now + Duration::from_secs(3600), now).0,
            Status::Ok
        );
        let (st, m) = identity_status("x", id, now + Duration::from_secs(60), now);
        assert_eq!(st, Status::Failed);
        assert_eq!(
            m,
            "x: spiffe://example.org/nsmgr expires in 1m0s (less than 10m0s)"
        );
        assert_eq!(
            identity_status("x", id, now - Duration::from_secs(1), now).0,
            Status::Failed
        );
    }

    #[test]
    fn report_rendering() {
        let r = Report {
            ok: false,
            checks: vec![
                CheckResult {
                    group: "registry".into(),
                    status: Status::Ok,
                    message: "registry tcp://x:1 is serving".into(),
                },
                CheckResult {
                    group: "nsmgrs".into(),
                    status: Status::Failed,
                    message: "NSMgr tcp://y:2 is not answering: refused".into(),
                },
                CheckResult {
                    group: "identity".into(),
                    status: Status::Skipped,
                    message: "skipped: no identity source configured".into(),
                },
            ],
        };
        assert_eq!(
            render(&r),
            "registry\n--------\n✓ registry tcp://x:1 is serving\n\nnsmgrs\n------\n\
             ✗ NSMgr tcp://y:2 is not answering: refused\n\nidentity\n--------\n\
             - skipped: no identity source configured\n\nStatus check results are ✗ (1 check failed)\n"
        );
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["checks"][1]["status"], "failed");
    }
}
