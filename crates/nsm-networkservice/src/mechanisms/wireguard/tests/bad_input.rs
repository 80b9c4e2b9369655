//! Bad parameters from the far side: each is an `InvalidArgument` naming the parameter, and nothing
//! stays reserved.

use super::*;

/// Key texts that are not a WireGuard public key in NSM's form, and why.
fn bad_keys() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        (
            "not base64",
            "not a key at all, but 44 characters long!!!".into(),
        ),
        ("31 bytes", STANDARD.encode([1u8; 31])),
        ("33 bytes", STANDARD.encode([1u8; 33])),
        ("URL-safe base64", URL_SAFE.encode([0xfb; 32])),
        ("short", "QUFB".into()),
    ]
}

/// The server refuses the request `edit` makes of a good offer, naming `parameter`.
async fn server_refuses(
    tunnel_ip: &str,
    edit: impl FnOnce(&mut NetworkServiceRequest),
    parameter: &str,
) {
    let ends = FakeEnds::new();
    let probe = Probe::ok();
    let s = WireguardServer::new(tunnel_ip.parse().unwrap(), 1500, ends.clone());
    let mut req = offered("s");
    edit(&mut req);
    let err = chain(vec![Arc::new(s), probe.clone()])
        .run_request(&mut ctx(), req)
        .await
        .unwrap_err();
    assert_invalid_naming(&err, parameter);
    assert_eq!(ends.len(), 0, "nothing reserved for {parameter}");
    assert!(
        probe.seen.lock().is_empty(),
        "nothing sent on for {parameter}"
    );
}

fn set(key: &'static str, value: impl Into<String>) -> impl FnOnce(&mut NetworkServiceRequest) {
    let value = value.into();
    move |req| {
        req.connection
            .as_mut()
            .unwrap()
            .mechanism
            .as_mut()
            .unwrap()
            .set_param(key, value)
    }
}

#[tokio::test]
async fn the_server_refuses_bad_client_ends() {
    // Sanity: the unedited offer passes.
    let conn = chain(vec![server(&FakeEnds::new())])
        .run_request(&mut ctx(), offered("s"))
        .await
        .unwrap();
    assert!(conn.mechanism.unwrap().param("dst_public_key").is_some());

    server_refuses(
        SERVER_IP,
        |req| {
            let m = req.connection.as_mut().unwrap().mechanism.as_mut().unwrap();
            m.parameters.remove("src_public_key");
        },
        "src_public_key",
    )
    .await;
    for (_, text) in bad_keys() {
        server_refuses(SERVER_IP, set("src_public_key", text), "src_public_key").await;
    }
    server_refuses(SERVER_IP, set("src_ip", "not-an-ip"), "src_ip").await;
    server_refuses(SERVER_IP, set("src_ip", "[fd00::1]"), "src_ip").await;
    for port in ["0", "65536", "x", "-1", "+5", ""] {
        server_refuses(SERVER_IP, set("src_port", port), "src_port").await;
    }
    server_refuses(SERVER_IP, set("MTU", "1.5k"), "MTU").await;
    server_refuses(SERVER_IP, set("MTU", "67"), "MTU").await;
}

#[tokio::test]
async fn the_server_refuses_an_mtu_too_small_for_ipv6_pods() {
    let ipv6_pods = |req: &mut NetworkServiceRequest| {
        let conn = req.connection.as_mut().unwrap();
        conn.context = Some(Box::new(nsm_api::connectioncontext::ConnectionContext {
            ip_context: Some(nsm_api::connectioncontext::IpContext {
                src_ip_addrs: vec!["fd00::1/128".into()],
                dst_ip_addrs: vec!["fd00::2/128".into()],
                ..Default::default()
            }),
            ..Default::default()
        }));
    };
    server_refuses(
        SERVER_IP,
        |req| {
            ipv6_pods(req);
            set("MTU", "1279")(req);
        },
        "MTU",
    )
    .await;
    // Our own uplink leaves too little: 1300 - 80 = 1220 < 1280.
    let ends = FakeEnds::new();
    let s = WireguardServer::new(SERVER_IP.parse().unwrap(), 1300, ends.clone());
    let mut req = offered("s");
    ipv6_pods(&mut req);
    let err = chain(vec![Arc::new(s)])
        .run_request(&mut ctx(), req)
        .await
        .unwrap_err();
    assert_invalid_naming(&err, "MTU");
    assert_eq!(ends.len(), 0);
    // 1280 itself is fine.
    let mut req = offered("s");
    ipv6_pods(&mut req);
    set("MTU", "1280")(&mut req);
    chain(vec![server(&FakeEnds::new())])
        .run_request(&mut ctx(), req)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_server_refuses_an_ipv4_client_end_on_an_ipv6_tunnel() {
    // src_ip 169.254.10.1 (IPv4) towards our fd00::2 (IPv6).
    server_refuses("fd00::2", |_| {}, "src_ip").await;
}

/// The client refuses an answer that `edit` spoils, naming `parameter`, and releases its end.
async fn client_refuses(edit: impl Fn(&mut Mechanism) + Send + Sync + 'static, parameter: &str) {
    let (client_ends, server_ends) = (FakeEnds::new(), FakeEnds::new());
    let probe = Probe::ok();
    let c = chain(vec![
        client(&client_ends),
        tamper(edit),
        Arc::new(Select(MechanismType::Wireguard)),
        server(&server_ends),
        probe.clone(),
    ]);
    let err = c
        .run_request(&mut ctx(), with_payload("c", payload::IP))
        .await
        .unwrap_err();
    assert_invalid_naming(&err, parameter);
    assert_eq!(client_ends.len(), 0, "client end released ({parameter})");
    assert_eq!(server_ends.len(), 0, "far side closed ({parameter})");
    assert!(probe.last().close);
}

#[tokio::test]
async fn the_client_refuses_bad_server_ends() {
    client_refuses(|m| m.set_param("dst_ip", "nowhere"), "dst_ip").await;
    client_refuses(|m| m.set_param("dst_ip", "fd00::2"), "dst_ip").await;
    for port in ["0", "65536", "x"] {
        client_refuses(move |m| m.set_param("dst_port", port), "dst_port").await;
    }
    client_refuses(
        |m| {
            m.parameters.remove("dst_public_key");
        },
        "dst_public_key",
    )
    .await;
    for (_, text) in bad_keys() {
        client_refuses(
            move |m| m.set_param("dst_public_key", text.clone()),
            "dst_public_key",
        )
        .await;
    }
    client_refuses(|m| m.set_param("MTU", "60"), "MTU").await;
    client_refuses(|m| m.set_param("src_public_key", key(3)), "src_public_key").await;
}

#[test]
fn check_public_key_accepts_only_nsm_text_keys() {
    assert_eq!(check_public_key(&key(0xfb)), Ok(()));
    for (why, text) in bad_keys() {
        assert!(check_public_key(&text).is_err(), "{why}: {text:?}");
    }
    assert!(URL_SAFE.encode([0xfb; 32]).contains(['-', '_']));
}
