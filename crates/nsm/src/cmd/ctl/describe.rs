//! `nsm ctl describe connection ID`: one connection hop by hop.
//!
//! The connection is found on the NSMgrs by its id or the id of any of its path segments (the
//! client's id, e.g. `nsc-0`, is the first segment's). The view of the NSMgr nearest the client gives
//! the overview; then every hop is asked for its own view: NSMgrs from their MonitorConnections, and
//! forwarders and endpoints at the real URL their NSMgr's endpoint registry gives back (behind
//! `localbypass`). A hop's view gives the mechanism and addresses of the link *into* that hop and its
//! state. The client has no monitor service, so its row shows only what the path says.
//!
//! Per-hop timing: every hop issues its path token when the Request passes it, with the same maximum
//! lifetime (unless configured otherwise), so the difference between consecutive token expiries is
//! the time the Request took from one hop to the next — shown as `STEP`.

use nsm_api::url::NsmUrl;
use nsm_api::{Connection, PathSegment};
use serde::Serialize;

use super::get::state_name;
use super::mesh::{Mesh, Seen, client_id};
use super::output::{Table, fmt_expiry, or_dash, rfc3339, seconds_until, timestamp};

/// One path segment and what its hop says about the connection.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SegmentView {
    /// Position in the path (0 = client).
    pub index: usize,
    /// Hop name.
    pub name: String,
    /// The hop's connection id.
    pub id: String,
    /// Token expiry (RFC 3339).
    pub token_expires: Option<String>,
    /// Seconds until the token expires (negative: expired).
    pub token_expires_in_seconds: Option<i64>,
    /// Time from the previous hop's token to this one's, in milliseconds (see the module doc).
    pub step_ms: Option<f64>,
    /// The URL this hop was asked at, if it was.
    pub url: Option<String>,
    /// The hop's state (UP/DOWN), if it was asked.
    pub state: Option<String>,
    /// Mechanism type of the link into this hop.
    pub mechanism: Option<String>,
    /// Mechanism parameters of the link into this hop.
    pub mechanism_parameters: std::collections::BTreeMap<String, String>,
    /// Source addresses the hop's connection context carries.
    pub src_ip_addrs: Vec<String>,
    /// Destination addresses.
    pub dst_ip_addrs: Vec<String>,
    /// Why the hop could not be asked.
    pub error: Option<String>,
}

/// A connection, hop by hop.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectionView {
    /// The client's id.
    pub id: String,
    /// Network service.
    pub service: String,
    /// Endpoint.
    pub endpoint: String,
    /// UP / DOWN (nearest NSMgr's view).
    pub state: String,
    /// Mechanism type of the client's link.
    pub mechanism: String,
    /// Connection labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Source addresses.
    pub src_ip_addrs: Vec<String>,
    /// Destination addresses.
    pub dst_ip_addrs: Vec<String>,
    /// The NSMgr whose view this is.
    pub nsmgr: String,
    /// Every path segment, client first.
    pub segments: Vec<SegmentView>,
}

/// Whether `conn` is the connection `id` names (its id or any segment id).
pub fn matches_id(conn: &Connection, id: &str) -> bool {
    conn.id == id
        || conn
            .path_or_default()
            .path_segments
            .iter()
            .any(|s| s.id == id)
}

fn addrs(conn: &Connection) -> (Vec<String>, Vec<String>) {
    conn.context
        .as_ref()
        .and_then(|c| c.ip_context.as_ref())
        .map(|ip| (ip.src_ip_addrs.clone(), ip.dst_ip_addrs.clone()))
        .unwrap_or_default()
}

fn segment_base(
    index: usize,
    seg: &PathSegment,
    prev: Option<&PathSegment>,
    now: std::time::SystemTime,
) -> SegmentView {
    let expires = seg.expires.as_ref().and_then(timestamp);
    let prev_expires = prev.and_then(|p| p.expires.as_ref()).and_then(timestamp);
    let step_ms = match (prev_expires, expires) {
        (Some(p), Some(e)) => Some(match e.duration_since(p) {
            Ok(d) => d.as_secs_f64() * 1e3,
            Err(e) => -e.duration().as_secs_f64() * 1e3,
        }),
        _ => None,
    };
    SegmentView {
        index,
        name: seg.name.clone(),
        id: seg.id.clone(),
        token_expires: expires.map(rfc3339),
        token_expires_in_seconds: expires.map(|t| seconds_until(now, t)),
        step_ms,
        url: None,
        state: None,
        mechanism: None,
        mechanism_parameters: Default::default(),
        src_ip_addrs: Vec::new(),
        dst_ip_addrs: Vec::new(),
        error: None,
    }
}

/// Fills `seg` from the hop's own view of the connection.
fn apply_hop_view(seg: &mut SegmentView, url: &NsmUrl, conn: &Connection) {
    seg.url = Some(url.to_string());
    seg.state = Some(state_name(conn));
    if let Some(m) = &conn.mechanism {
        seg.mechanism = Some(m.r#type.clone());
        seg.mechanism_parameters = m
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    (seg.src_ip_addrs, seg.dst_ip_addrs) = addrs(conn);
}

/// The overview from `best` plus each segment from the hop views in `seen` (same connection).
pub fn view_from(best: &Seen, seen: &[Seen], now: std::time::SystemTime) -> ConnectionView {
    let conn = &best.conn;
    let path = conn.path_or_default();
    let mut segments: Vec<SegmentView> = path
        .path_segments
        .iter()
        .enumerate()
        .map(|(i, s)| segment_base(i, s, i.checked_sub(1).map(|p| &path.path_segments[p]), now))
        .collect();
    for s in seen {
        let i = s.conn.path_or_default().index as usize;
        if let Some(seg) = segments.get_mut(i) {
            apply_hop_view(seg, &s.nsmgr, &s.conn);
        }
    }
    let (src, dst) = addrs(conn);
    ConnectionView {
        id: client_id(conn).to_string(),
        service: conn.network_service.clone(),
        endpoint: conn.network_service_endpoint_name.clone(),
        state: state_name(conn),
        mechanism: conn
            .mechanism
            .as_ref()
            .map(|m| m.r#type.clone())
            .unwrap_or_default(),
        labels: conn
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        src_ip_addrs: src,
        dst_ip_addrs: dst,
        nsmgr: best.nsmgr.to_string(),
        segments,
    }
}

/// Finds connection `id` and asks every hop about it.
pub async fn describe(mesh: &Mesh, id: &str) -> Result<ConnectionView, String> {
    let nsmgrs = mesh.nsmgr_urls(None).await?;
    let (seen, failed) = mesh.all_connections(&nsmgrs).await;
    let mine: Vec<Seen> = seen
        .into_iter()
        .filter(|s| matches_id(&s.conn, id))
        .collect();
    let Some(best) = mine
        .iter()
        .min_by_key(|s| s.conn.path_or_default().index)
        .cloned()
    else {
        let mut why = format!(
            "connection {id:?} not found on {} NSMgr(s): {}",
            nsmgrs.len(),
            nsmgrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (u, e) in failed {
            why.push_str(&format!("; {u} did not answer: {e}"));
        }
        return Err(why);
    };
    let mut hop_views = mine.clone();
    let known: std::collections::BTreeSet<usize> = mine
        .iter()
        .map(|s| s.conn.path_or_default().index as usize)
        .collect();
    let client = client_id(&best.conn).to_string();
    let segs = best.conn.path_or_default().path_segments.clone();
    let mut errors: Vec<(usize, String)> = Vec::new();
    for (i, seg) in segs.iter().enumerate().skip(1) {
        if known.contains(&i) {
            continue;
        }
        match hop_view(mesh, &nsmgrs, &seg.name, &client).await {
            Ok(s) => hop_views.push(s),
            Err(e) => errors.push((i, e)),
        }
    }
    let mut view = view_from(&best, &hop_views, mesh.clock.now());
    for (i, e) in errors {
        if let Some(s) = view.segments.get_mut(i) {
            s.error = Some(e);
        }
    }
    Ok(view)
}

/// Asks hop `name` (a forwarder or endpoint) for its view of the connection of `client`.
async fn hop_view(
    mesh: &Mesh,
    nsmgrs: &[NsmUrl],
    name: &str,
    client: &str,
) -> Result<Seen, String> {
    let query = nsm_api::registry::NetworkServiceEndpoint {
        name: name.to_string(),
        ..Default::default()
    };
    let mut urls = Vec::new();
    for n in nsmgrs {
        if let Ok(found) = mesh.endpoints_at(n, query.clone()).await {
            for e in found.into_iter().filter(|e| e.name == name) {
                if let Ok(u) = NsmUrl::parse(&e.url)
                    && !nsmgrs.contains(&u)
                    && !urls.contains(&u)
                {
                    urls.push(u);
                }
            }
        }
    }
    if urls.is_empty() {
        return Err("not registered with any NSMgr (no URL to ask)".into());
    }
    let mut why = Vec::new();
    for u in urls {
        match mesh.connections_at(&u).await {
            Ok(conns) => {
                if let Some(conn) = conns.into_iter().find(|c| client_id(c) == client) {
                    return Ok(Seen { nsmgr: u, conn });
                }
                why.push(format!("{u}: no such connection"));
            }
            Err(e) => why.push(format!("{u}: {}", super::mesh::dial_reason(&u, &e))),
        }
    }
    Err(why.join("; "))
}

fn join_or_dash(v: &[String]) -> String {
    or_dash(&v.join(","))
}

/// `+1.234ms` / `-0.5ms` / `-`.
fn fmt_step(ms: Option<f64>) -> String {
    match ms {
        Some(ms) if ms >= 0.0 => format!("+{ms:.3}ms"),
        Some(ms) => format!("{ms:.3}ms"),
        None => "-".into(),
    }
}

/// The human-readable description.
pub fn render(v: &ConnectionView) -> String {
    let mut out = String::new();
    let labels = super::output::fmt_labels(&v.labels);
    let fields = [
        ("Connection", v.id.clone()),
        ("Service", or_dash(&v.service)),
        ("Endpoint", or_dash(&v.endpoint)),
        ("State", v.state.clone()),
        ("Mechanism", or_dash(&v.mechanism)),
        ("Labels", labels),
        ("Source", join_or_dash(&v.src_ip_addrs)),
        ("Destination", join_or_dash(&v.dst_ip_addrs)),
        ("NSMgr", v.nsmgr.clone()),
    ];
    for (k, val) in fields {
        out.push_str(&format!("{:<13}{val}\n", format!("{k}:")));
    }
    out.push_str("Path:\n");
    let mut t = Table::new(&[
        "#",
        "NAME",
        "ID",
        "STATE",
        "MECHANISM",
        "SRC",
        "DST",
        "TOKEN EXPIRES",
        "STEP",
    ]);
    for s in &v.segments {
        t.row(vec![
            s.index.to_string(),
            s.name.clone(),
            s.id.clone(),
            s.state.clone().unwrap_or_else(|| "-".into()),
            s.mechanism.clone().unwrap_or_else(|| "-".into()),
            join_or_dash(&s.src_ip_addrs),
            join_or_dash(&s.dst_ip_addrs),
            fmt_expiry(s.token_expires_in_seconds),
            fmt_step(s.step_ms),
        ]);
    }
    for line in t.render().lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    for s in v.segments.iter().filter(|s| s.error.is_some()) {
        out.push_str(&format!(
            "  hop {} ({}): {}\n",
            s.index,
            s.name,
            s.error.as_deref().unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_api::connectioncontext::{ConnectionContext, IpContext};
    use nsm_api::{Mechanism, Path};
    use std::time::{Duration, UNIX_EPOCH};

    fn conn(index: u32, now: std::time::SystemTime, state: nsm_api::State) -> Connection {
        let seg = |name: &str, id: &str, ms: u64| PathSegment {
            name: name.into(),
            id: id.into(),
            expires: Some(nsm_core::clock::to_timestamp(
                now + Duration::from_secs(600) + Duration::from_millis(ms),
            )),
            ..Default::default()
        };
        Connection {
            id: ["nsc-0", "m1", "f1", "e1"][index as usize].into(),
            network_service: "icmp-responder".into(),
            network_service_endpoint_name: "nse".into(),
            state: state as i32,
            mechanism: Some(Mechanism {
                cls: "LOCAL".into(),
                r#type: "KERNEL".into(),
                parameters: [("name".to_string(), "nsm-1".to_string())].into(),
            }),
            context: Some(Box::new(ConnectionContext {
                ip_context: Some(IpContext {
                    src_ip_addrs: vec!["169.254.0.1/32".into()],
                    dst_ip_addrs: vec!["169.254.0.0/32".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })),
            path: Some(Path {
                index,
                path_segments: vec![
                    seg("nsc", "nsc-0", 0),
                    seg("nsmgr", "m1", 2),
                    seg("fwd", "f1", 3),
                    seg("nse", "e1", 5),
                ],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ids_match_any_segment() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = conn(1, now, nsm_api::State::Up);
        for id in ["nsc-0", "m1", "f1", "e1"] {
            assert!(matches_id(&c, id), "{id}");
        }
        assert!(!matches_id(&c, "nsc-1"));
    }

    #[test]
    fn renders_every_hop_with_state_and_step() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let u = NsmUrl::parse("tcp://10.0.0.1:5001").unwrap();
        let best = Seen {
            nsmgr: u.clone(),
            conn: conn(1, now, nsm_api::State::Down),
        };
        let nse = Seen {
            nsmgr: NsmUrl::parse("unix:///run/nse.sock").unwrap(),
            conn: conn(3, now, nsm_api::State::Up),
        };
        let mut v = view_from(&best, &[best.clone(), nse], now);
        v.segments[2].error = Some("not registered with any NSMgr (no URL to ask)".into());
        assert_eq!(v.state, "DOWN");
        assert_eq!(v.segments[1].step_ms, Some(2.0));
        assert_eq!(
            render(&v),
            "\
Connection:  nsc-0
Service:     icmp-responder
Endpoint:    nse
State:       DOWN
Mechanism:   KERNEL
Labels:      -
Source:      169.254.0.1/32
Destination: 169.254.0.0/32
NSMgr:       tcp://10.0.0.1:5001
Path:
  #   NAME    ID      STATE   MECHANISM   SRC              DST              TOKEN EXPIRES   STEP
  0   nsc     nsc-0   -       -           -                -                in 10m0s        -
  1   nsmgr   m1      DOWN    KERNEL      169.254.0.1/32   169.254.0.0/32   in 10m0s        +2.000ms
  2   fwd     f1      -       -           -                -                in 10m0s        +1.000ms
  3   nse     e1      UP      KERNEL      169.254.0.1/32   169.254.0.0/32   in 10m0s        +2.000ms
  hop 2 (fwd): not registered with any NSMgr (no URL to ask)
"
        );
    }
}
