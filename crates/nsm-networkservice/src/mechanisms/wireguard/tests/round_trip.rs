//! Client and server together, through a next hop that selects WIREGUARD: agreement, refresh, heal,
//! failures.

use super::*;

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
        Arc::new(Select(MechanismType::Wireguard)),
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
