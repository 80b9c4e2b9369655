use std::sync::Arc;

use tonic::Code;

use super::*;
use crate::discover::testing::{Probe, chain, ctx};

/// A request of service `svc` with payload ETHERNET (the only payload VXLAN serves).
fn request(id: &str, svc: &str, labels: &[(&str, &str)]) -> NetworkServiceRequest {
    let mut req = crate::discover::testing::request(id, svc, labels);
    req.connection.as_mut().unwrap().payload = payload::ETHERNET.into();
    req
}

fn vxlan_request(id: &str, src: &str) -> NetworkServiceRequest {
    let mut req = request(id, "svc", &[]);
    let mut m = MechanismType::Vxlan.mechanism();
    m.set_param(vxlan::SRC_IP, src);
    m.set_param(vxlan::SRC_PORT, "4789");
    req.connection.as_mut().unwrap().mechanism = Some(m);
    req
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn client_offers_vxlan_from_its_tunnel_ip() {
    let probe = Probe::ok();
    let c = chain(vec![
        Arc::new(VxlanClient::new(ip("10.0.0.1"), 0)),
        probe.clone(),
    ]);
    c.run_request(&mut ctx(), request("1", "svc", &[]))
        .await
        .unwrap();
    let prefs = probe.last().request.mechanism_preferences;
    assert_eq!(prefs.len(), 1);
    assert_eq!(
        (prefs[0].cls.as_str(), prefs[0].r#type.as_str()),
        ("REMOTE", "VXLAN")
    );
    assert_eq!(prefs[0].param(vxlan::SRC_IP), Some("10.0.0.1"));
    assert_eq!(prefs[0].param(vxlan::SRC_PORT), Some("4789"));
}

#[tokio::test]
async fn vni_parity_follows_address_order() {
    // src 10.0.0.1 <= dst 10.0.0.2 → even.
    let server = Arc::new(VxlanServer::new(ip("10.0.0.2"), 4789).with_uplink_mtu(1500));
    let conn = chain(vec![server.clone()])
        .run_request(&mut ctx(), vxlan_request("a", "10.0.0.1"))
        .await
        .unwrap();
    let m = conn.mechanism.unwrap();
    assert_eq!(m.vni().unwrap() % 2, 0);
    assert_eq!(m.param(vxlan::DST_IP), Some("10.0.0.2"));
    assert_eq!(m.param(vxlan::DST_PORT), Some("4789"));
    assert_eq!(m.mtu(), Some(1450));

    // src 10.0.0.3 > dst 10.0.0.2 → odd.
    let conn = chain(vec![server.clone()])
        .run_request(&mut ctx(), vxlan_request("b", "10.0.0.3"))
        .await
        .unwrap();
    assert_eq!(conn.mechanism.unwrap().vni().unwrap() % 2, 1);

    // Original (pre-swapip) addresses decide when present: 10.0.0.9 > 10.0.0.5 → odd.
    let mut req = vxlan_request("c", "10.0.0.1");
    let m = req.connection.as_mut().unwrap().mechanism.as_mut().unwrap();
    m.set_param(common::SRC_ORIGINAL_IP, "10.0.0.9");
    m.set_param(common::DST_ORIGINAL_IP, "10.0.0.5");
    let conn = chain(vec![server])
        .run_request(&mut ctx(), req)
        .await
        .unwrap();
    assert_eq!(conn.mechanism.unwrap().vni().unwrap() % 2, 1);
}

#[tokio::test]
async fn vni_is_stable_across_refresh_and_released_on_close() {
    let server = Arc::new(VxlanServer::new(ip("10.0.0.2"), 0));
    let c = chain(vec![server.clone()]);
    let mut ctx = ctx();
    let first = c
        .run_request(&mut ctx, vxlan_request("a", "10.0.0.1"))
        .await
        .unwrap();
    let vni = first.mechanism.as_ref().unwrap().vni().unwrap();
    // A refresh that lost the VNI parameter (a re-selected mechanism) still gets the same VNI.
    for _ in 0..3 {
        let again = c
            .run_request(&mut ctx, vxlan_request("a", "10.0.0.1"))
            .await
            .unwrap();
        assert_eq!(again.mechanism.unwrap().vni(), Some(vni));
    }
    assert_eq!(server.allocated(), 1);
    c.run_close(&mut ctx, first).await.unwrap();
    assert_eq!(server.allocated(), 0);
}

#[tokio::test]
async fn vnis_are_unique_per_source_and_failed_first_requests_release() {
    let server = Arc::new(VxlanServer::new(ip("10.0.0.2"), 0));
    let mut seen = HashSet::new();
    for i in 0..200 {
        let conn = chain(vec![server.clone()])
            .run_request(&mut ctx(), vxlan_request(&format!("c{i}"), "10.0.0.1"))
            .await
            .unwrap();
        assert!(seen.insert(conn.mechanism.unwrap().vni().unwrap()));
    }
    let failing = Probe::failing(|_| Some(NsmError::unavailable("connect", "down")));
    let err = chain(vec![server.clone(), failing])
        .run_request(&mut ctx(), vxlan_request("bad", "10.0.0.1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        server.allocated(),
        200,
        "the failed request's VNI was released"
    );
}

#[tokio::test]
async fn a_vni_the_peer_carries_is_kept_unless_taken() {
    let server = Arc::new(VxlanServer::new(ip("10.0.0.2"), 0));
    let mut req = vxlan_request("a", "10.0.0.1");
    req.connection
        .as_mut()
        .unwrap()
        .mechanism
        .as_mut()
        .unwrap()
        .set_param(vxlan::VNI, "42");
    let conn = chain(vec![server.clone()])
        .run_request(&mut ctx(), req.clone())
        .await
        .unwrap();
    assert_eq!(conn.mechanism.unwrap().vni(), Some(42));
    // Another connection from the same source carrying 42 gets a different one.
    req.connection.as_mut().unwrap().id = "b".into();
    let conn = chain(vec![server])
        .run_request(&mut ctx(), req)
        .await
        .unwrap();
    assert_ne!(conn.mechanism.unwrap().vni(), Some(42));
}

#[tokio::test]
async fn bad_source_address_is_invalid_argument() {
    let server = Arc::new(VxlanServer::new(ip("10.0.0.2"), 0));
    let err = chain(vec![server])
        .run_request(&mut ctx(), vxlan_request("a", "not-an-ip"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[test]
fn pick_vni_finds_the_last_free_value_and_reports_a_full_space() {
    assert_eq!(pick_vni(false, |v| v != 12345), Some(12345));
    assert_eq!(pick_vni(true, |v| v != 2), Some(2));
    assert_eq!(pick_vni(true, |_| true), None);
}

#[tokio::test]
async fn other_payloads_pass_both_elements_untouched() {
    let probe = Probe::ok();
    let server = Arc::new(VxlanServer::new(ip("10.0.0.2"), 4789));
    let c = chain(vec![
        Arc::new(VxlanClient::new(ip("10.0.0.1"), 0)),
        server.clone(),
        probe.clone(),
    ]);
    let mut req = vxlan_request("ip", "10.0.0.1");
    req.connection.as_mut().unwrap().payload = payload::IP.into();
    c.run_request(&mut ctx(), req).await.unwrap();
    let seen = probe.last().request;
    assert!(seen.mechanism_preferences.is_empty(), "no VXLAN offer");
    let m = seen.connection.unwrap().mechanism.unwrap();
    assert_eq!(m.param(vxlan::DST_IP), None, "VXLAN not answered");
    assert_eq!(server.allocated(), 0, "no VNI taken");
}
