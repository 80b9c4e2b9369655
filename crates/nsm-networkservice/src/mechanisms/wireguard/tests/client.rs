//! The client alone: payload gating, the offer, its MTU, and what it does with the answer.

use super::*;

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
    // Only the IP request reserved an end; its offer went to a selected-nothing next hop, so the
    // end is released. (`len` alone would be 0 had nothing been reserved at all.)
    assert_eq!(
        (ends.len(), ends.reservations()),
        (0, 1),
        "reserved once, then released"
    );
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

#[tokio::test]
async fn the_client_refuses_an_empty_answer_key_and_undoes_everything() {
    let probe = Probe::ok();
    let ends = FakeEnds::new();
    let c = chain(vec![
        client(&ends),
        Arc::new(Select(MechanismType::Wireguard)),
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
    let c = chain(vec![client(&ends), Arc::new(Select(MechanismType::Kernel))]);
    let mut ctx = ctx();
    let conn = c
        .run_request(&mut ctx, with_payload("c", payload::IP))
        .await
        .unwrap();
    assert!(conn.mechanism.as_ref().unwrap().is(MechanismType::Kernel));
    assert_eq!(
        (ends.len(), ends.reservations()),
        (0, 1),
        "reserved, then released"
    );

    // Its refresh re-sends KERNEL: no offer, nothing reserved.
    let mut refresh = with_payload("c", payload::IP);
    refresh.connection.as_mut().unwrap().mechanism = conn.mechanism.clone();
    let probe = Probe::ok();
    chain(vec![client(&ends), probe.clone()])
        .run_request(&mut ctx, refresh)
        .await
        .unwrap();
    assert!(probe.last().request.mechanism_preferences.is_empty());
    assert_eq!((ends.len(), ends.reservations()), (0, 1));
}
