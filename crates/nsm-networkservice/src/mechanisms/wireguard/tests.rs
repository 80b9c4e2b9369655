use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use nsm_api::mechanisms::{MechanismType, TunnelEnd, wireguard};
use nsm_api::{Connection, Mechanism, NetworkServiceRequest, payload};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};
use parking_lot::Mutex;
use tonic::Code;

use super::*;
use crate::discover::testing::{Probe, chain, ctx, request};

/// A [`LocalEnds`] in memory: ports from 40001 up, key bytes = the port's low byte.
#[derive(Default)]
struct FakeEnds {
    table: Mutex<HashMap<(String, Side), LocalEnd>>,
    last_port: AtomicU16,
    fail: AtomicBool,
}

impl FakeEnds {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            last_port: AtomicU16::new(40000),
            ..Default::default()
        })
    }

    fn len(&self) -> usize {
        self.table.lock().len()
    }
}

impl LocalEnds for FakeEnds {
    fn reserve(&self, connection_id: &str, side: Side) -> Result<Reserved, LocalEndsError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(LocalEndsError::Failed("bind: address not available".into()));
        }
        let mut table = self.table.lock();
        if let Some(end) = table.get(&(connection_id.to_string(), side)) {
            return Ok(Reserved {
                end: end.clone(),
                new: false,
            });
        }
        let port = self.last_port.fetch_add(1, Ordering::SeqCst) + 1;
        let end = LocalEnd {
            port,
            public_key: STANDARD.encode([port as u8; 32]),
        };
        table.insert((connection_id.to_string(), side), end.clone());
        Ok(Reserved { end, new: true })
    }

    fn release(&self, connection_id: &str, side: Side) {
        self.table.lock().remove(&(connection_id.to_string(), side));
    }
}

/// Plays the next hop's `mechanisms` server: selects the first WIREGUARD preference.
struct SelectWireguard;

#[async_trait::async_trait]
impl NetworkServiceServer for SelectWireguard {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let chosen = request
            .mechanism_preferences
            .iter()
            .find(|m| m.is(MechanismType::Wireguard))
            .cloned();
        let conn = request.connection.get_or_insert_default();
        if chosen.is_some() {
            conn.mechanism = chosen;
        }
        next.request(ctx, request).await
    }
    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }
    fn name(&self) -> &'static str {
        "select"
    }
}

type TamperFn = Box<dyn Fn(&mut Mechanism) + Send + Sync>;

/// Rewrites the answer's mechanism on its way back (a misbehaving far forwarder).
struct Tamper(TamperFn);

#[async_trait::async_trait]
impl NetworkServiceServer for Tamper {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let mut conn = next.request(ctx, request).await?;
        if let Some(m) = conn.mechanism.as_mut() {
            (self.0)(m);
        }
        Ok(conn)
    }
    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }
    fn name(&self) -> &'static str {
        "tamper"
    }
}

fn tamper(f: impl Fn(&mut Mechanism) + Send + Sync + 'static) -> Arc<Tamper> {
    Arc::new(Tamper(Box::new(f)))
}

const CLIENT_IP: &str = "169.254.10.1";
const SERVER_IP: &str = "169.254.10.2";

fn client(ends: &Arc<FakeEnds>) -> Arc<WireguardClient> {
    Arc::new(WireguardClient::new(
        CLIENT_IP.parse().unwrap(),
        1500,
        ends.clone(),
    ))
}

fn server(ends: &Arc<FakeEnds>) -> Arc<WireguardServer> {
    Arc::new(WireguardServer::new(
        SERVER_IP.parse().unwrap(),
        1400,
        ends.clone(),
    ))
}

fn with_payload(id: &str, p: &str) -> NetworkServiceRequest {
    let mut req = request(id, "svc", &[]);
    req.connection.as_mut().unwrap().payload = p.into();
    req
}

/// A key in NSM's text form made of `byte`.
fn key(byte: u8) -> String {
    STANDARD.encode([byte; 32])
}

/// A request as the server side receives it: WIREGUARD selected with a valid client end.
fn offered(id: &str) -> NetworkServiceRequest {
    let mut req = with_payload(id, payload::IP);
    let mut m = MechanismType::Wireguard.mechanism();
    m.set_param("src_ip", CLIENT_IP);
    m.set_param("src_port", "51820");
    m.set_param("src_public_key", key(7));
    m.set_param("MTU", "1420");
    req.connection.as_mut().unwrap().mechanism = Some(m);
    req
}

fn params(m: &Mechanism) -> BTreeMap<&str, &str> {
    m.parameters
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn assert_invalid_naming(err: &NsmError, parameter: &str) {
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("WIREGUARD parameter {parameter} ")),
        "{err} does not name {parameter}"
    );
}

#[tokio::test]
async fn only_ip_payload_gets_a_wireguard_offer() {
    let ends = FakeEnds::new();
    for (p, offers) in [(payload::IP, 1), (payload::ETHERNET, 0), ("", 0)] {
        let probe = Probe::ok();
        chain(vec![client(&ends), probe.clone()])
            .run_request(&mut ctx(), with_payload("c", p))
            .await
            .unwrap();
        let seen = probe.last().request;
        let wg = seen
            .mechanism_preferences
            .iter()
            .filter(|m| m.is(MechanismType::Wireguard))
            .count();
        assert_eq!(wg, offers, "payload {p:?}");
        assert_eq!(
            seen.mechanism_preferences.len(),
            offers,
            "nothing else added"
        );
    }
    // The IP request's offer went to a selected-nothing next hop: its end is released.
    assert_eq!(ends.len(), 0);
}

#[tokio::test]
async fn the_offer_carries_exactly_gos_parameters() {
    let ends = FakeEnds::new();
    let probe = Probe::ok();
    chain(vec![client(&ends), probe.clone()])
        .run_request(&mut ctx(), with_payload("c", payload::IP))
        .await
        .unwrap();
    let offer = probe.last().request.mechanism_preferences[0].clone();
    assert_eq!(
        (offer.cls.as_str(), offer.r#type.as_str()),
        ("REMOTE", "WIREGUARD")
    );
    let golden: BTreeMap<&str, &str> = [
        ("src_ip", CLIENT_IP),
        ("src_port", "40001"),
        (
            "src_public_key",
            "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=",
        ),
        ("MTU", "1420"),
    ]
    .into();
    assert_eq!(params(&offer), golden);
    assert_eq!(
        golden["src_public_key"],
        key(0x41),
        "port 40001 = key byte 0x41"
    );
    assert_eq!(golden["src_public_key"].len(), 44);

    // IPv6 tunnel addresses go out in Go's net.IP text form, without brackets.
    let v6 = WireguardClient::new("fd00::1".parse().unwrap(), 1500, FakeEnds::new());
    let probe = Probe::ok();
    chain(vec![Arc::new(v6), probe.clone()])
        .run_request(&mut ctx(), with_payload("c", payload::IP))
        .await
        .unwrap();
    let offer = probe.last().request.mechanism_preferences[0].clone();
    assert_eq!(offer.param("src_ip"), Some("fd00::1"));
}

#[tokio::test]
async fn the_client_lowers_an_offered_mtu_but_never_raises_it() {
    for (before, after) in [
        (Some("1300"), "1300"),
        (Some("9000"), "1420"),
        (None, "1420"),
    ] {
        let mut req = with_payload("c", payload::IP);
        let mut m = MechanismType::Wireguard.mechanism();
        if let Some(b) = before {
            m.set_param("MTU", b);
        }
        req.mechanism_preferences.push(m);
        let probe = Probe::ok();
        chain(vec![client(&FakeEnds::new()), probe.clone()])
            .run_request(&mut ctx(), req)
            .await
            .unwrap();
        let prefs = probe.last().request.mechanism_preferences;
        assert_eq!(
            prefs.len(),
            1,
            "an existing WIREGUARD preference is completed"
        );
        assert_eq!(prefs[0].param("MTU"), Some(after), "offered {before:?}");
    }
}

/// Client → the next hop selecting WIREGUARD → server → probe (what the endpoint side sees).
struct RoundTrip {
    client_ends: Arc<FakeEnds>,
    server_ends: Arc<FakeEnds>,
    probe: Arc<Probe>,
    chain: nsm_core::Chain,
}

fn round_trip(probe: Arc<Probe>) -> RoundTrip {
    let (client_ends, server_ends) = (FakeEnds::new(), FakeEnds::new());
    server_ends.last_port.store(50000, Ordering::SeqCst);
    let chain = chain(vec![
        client(&client_ends),
        Arc::new(SelectWireguard),
        server(&server_ends),
        probe.clone(),
    ]);
    RoundTrip {
        client_ends,
        server_ends,
        probe,
        chain,
    }
}

#[tokio::test]
async fn both_ends_agree_and_the_server_sets_mtu_before_next() {
    let rt = round_trip(Probe::ok());
    let conn = rt
        .chain
        .run_request(&mut ctx(), with_payload("c", payload::IP))
        .await
        .unwrap();
    let m = conn.mechanism.clone().unwrap();
    let (src_key, dst_key) = (key(0x41), key(0x51)); // ports 40001 and 50001
    let golden: BTreeMap<&str, &str> = [
        ("src_ip", CLIENT_IP),
        ("src_port", "40001"),
        ("src_public_key", src_key.as_str()),
        ("dst_ip", SERVER_IP),
        ("dst_port", "50001"),
        ("dst_public_key", dst_key.as_str()),
        ("MTU", "1320"), // min(1500 - 80, 1400 - 80)
    ]
    .into();
    assert_eq!(params(&m), golden);
    // Before next: MTU and dst_ip set, the context lowered; port and key only after next.
    let seen = rt.probe.last().conn();
    let before = seen.mechanism.unwrap();
    assert_eq!(before.param("MTU"), Some("1320"));
    assert_eq!(before.param("dst_ip"), Some(SERVER_IP));
    assert_eq!(before.param("dst_public_key"), None);
    assert_eq!(seen.context.unwrap().mtu, 1320, "0 (unset) lowered");
    assert_eq!((rt.client_ends.len(), rt.server_ends.len()), (1, 1));
}

#[tokio::test]
async fn the_context_mtu_is_lowered_only_when_larger() {
    for (context, expected) in [(9000, 1320), (1200, 1200)] {
        let rt = round_trip(Probe::ok());
        let mut req = with_payload("c", payload::IP);
        req.connection.as_mut().unwrap().context =
            Some(Box::new(nsm_api::connectioncontext::ConnectionContext {
                mtu: context,
                ..Default::default()
            }));
        rt.chain.run_request(&mut ctx(), req).await.unwrap();
        assert_eq!(rt.probe.last().conn().context.unwrap().mtu, expected);
    }
}

/// What `mechanismtranslation` sends on a refresh: the mechanism selected last time.
fn refresh_of(conn: &Connection) -> NetworkServiceRequest {
    let mut req = with_payload(&conn.id, payload::IP);
    req.connection.as_mut().unwrap().mechanism = conn.mechanism.clone();
    req
}

#[tokio::test(start_paused = true)]
async fn refresh_keeps_keys_and_ports_and_close_then_request_gets_new_ones() {
    let rt = round_trip(Probe::ok());
    let mut ctx = ctx();
    let first = rt
        .chain
        .run_request(&mut ctx, with_payload("c", payload::IP))
        .await
        .unwrap();
    let ends = |c: &Connection| {
        let m = c.mechanism.as_ref().unwrap();
        ["src_port", "src_public_key", "dst_port", "dst_public_key"]
            .map(|k| m.param(k).unwrap().to_string())
    };
    for _ in 0..3 {
        // Refreshes come every few minutes; nothing in these elements expires.
        tokio::time::advance(Duration::from_secs(600)).await;
        let again = rt
            .chain
            .run_request(&mut ctx, refresh_of(&first))
            .await
            .unwrap();
        assert_eq!(ends(&again), ends(&first));
    }
    assert_eq!((rt.client_ends.len(), rt.server_ends.len()), (1, 1));

    rt.chain.run_close(&mut ctx, first.clone()).await.unwrap();
    assert_eq!((rt.client_ends.len(), rt.server_ends.len()), (0, 0));
    let healed = rt
        .chain
        .run_request(&mut ctx, with_payload("c", payload::IP))
        .await
        .unwrap();
    let (old, new) = (ends(&first), ends(&healed));
    for i in 0..4 {
        assert_ne!(old[i], new[i], "a reselect after Close gets a new end");
    }
}

#[tokio::test]
async fn a_failed_first_request_releases_and_a_failed_refresh_keeps() {
    let down = Arc::new(AtomicBool::new(true));
    let flag = down.clone();
    let rt = round_trip(Probe::failing(move |s| {
        (!s.close && flag.load(Ordering::SeqCst)).then(|| NsmError::unavailable("connect", "down"))
    }));
    let mut ctx = ctx();
    let err = rt
        .chain
        .run_request(&mut ctx, with_payload("c", payload::IP))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!((rt.client_ends.len(), rt.server_ends.len()), (0, 0));

    down.store(false, Ordering::SeqCst);
    let first = rt
        .chain
        .run_request(&mut ctx, with_payload("c", payload::IP))
        .await
        .unwrap();
    down.store(true, Ordering::SeqCst);
    rt.chain
        .run_request(&mut ctx, refresh_of(&first))
        .await
        .unwrap_err();
    assert_eq!((rt.client_ends.len(), rt.server_ends.len()), (1, 1));
    down.store(false, Ordering::SeqCst);
    let again = rt
        .chain
        .run_request(&mut ctx, refresh_of(&first))
        .await
        .unwrap();
    assert_eq!(
        again.mechanism, first.mechanism,
        "the kept ends are the same"
    );
}

#[tokio::test]
async fn the_server_always_answers_with_its_current_key() {
    let ends = FakeEnds::new();
    for stale in [String::new(), key(9)] {
        let mut req = offered("s");
        req.connection
            .as_mut()
            .unwrap()
            .mechanism
            .as_mut()
            .unwrap()
            .set_param("dst_public_key", stale);
        let conn = chain(vec![server(&ends)])
            .run_request(&mut ctx(), req)
            .await
            .unwrap();
        let m = conn.mechanism.unwrap();
        assert_eq!(m.param("dst_public_key"), Some(key(0x41).as_str()));
        assert_eq!(m.param("dst_port"), Some("40001"));
    }
    assert_eq!(ends.len(), 1);
}

#[tokio::test]
async fn the_client_refuses_an_empty_answer_key_and_undoes_everything() {
    let probe = Probe::ok();
    let ends = FakeEnds::new();
    let c = chain(vec![
        client(&ends),
        Arc::new(SelectWireguard),
        probe.clone(),
        tamper(|m| {
            m.set_tunnel_ip(TunnelEnd::Dst, SERVER_IP.parse().unwrap());
            m.set_tunnel_port(TunnelEnd::Dst, 51820);
            // Go's reselect quirk: a server that kept its interface answers without a key.
            m.set_param(wireguard::DST_PUBLIC_KEY, "");
        }),
    ]);
    let err = c
        .run_request(&mut ctx(), with_payload("c", payload::IP))
        .await
        .unwrap_err();
    assert_invalid_naming(&err, "dst_public_key");
    assert!(err.to_string().contains("is empty"), "{err}");
    assert_eq!(ends.len(), 0);
    assert!(probe.last().close, "the downstream connection was closed");
}

#[tokio::test]
async fn the_client_releases_when_the_next_hop_chose_another_mechanism() {
    let ends = FakeEnds::new();
    let mut req = with_payload("c", payload::IP);
    req.connection.as_mut().unwrap().mechanism = Some(MechanismType::Kernel.mechanism());
    let conn = chain(vec![client(&ends)])
        .run_request(&mut ctx(), req)
        .await
        .unwrap();
    assert!(conn.mechanism.unwrap().is(MechanismType::Kernel));
    assert_eq!(ends.len(), 0);
}

#[tokio::test]
async fn failing_to_reserve_is_an_error_on_both_sides() {
    let ends = FakeEnds::new();
    ends.fail.store(true, Ordering::SeqCst);
    let probe = Probe::ok();
    let err = chain(vec![client(&ends), probe.clone()])
        .run_request(&mut ctx(), with_payload("c", payload::IP))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(probe.seen.lock().is_empty(), "nothing was sent on");

    let err = chain(vec![server(&ends), probe.clone()])
        .run_request(&mut ctx(), offered("s"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    let seen = probe.seen.lock().clone();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].close,
        "the server closed what it had requested downstream"
    );
}

#[tokio::test]
async fn ethernet_payload_passes_the_server_untouched() {
    let ends = FakeEnds::new();
    let mut req = offered("s");
    req.connection.as_mut().unwrap().payload = payload::ETHERNET.into();
    let conn = chain(vec![server(&ends)])
        .run_request(&mut ctx(), req.clone())
        .await
        .unwrap();
    assert_eq!(Some(conn), req.connection);
    assert_eq!(ends.len(), 0);
}

mod bad_input;
