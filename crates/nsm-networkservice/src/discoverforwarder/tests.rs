use std::collections::BTreeMap;

use nsm_api::registry::{Match, Metadata};
use tonic::Code;

use super::*;
use crate::discover::testing::{FakeRegistry, Probe, chain, ctx, ns, nse, request};

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn fwd(name: &str, kv: &[(&str, &str)]) -> NetworkServiceEndpoint {
    nse(name, &format!("unix:///{name}.sock"), &["forwarder"], kv)
}

/// A service with one match requiring `required` forwarder labels (empty = default p2p).
fn service(required: &[(&str, &str)]) -> NetworkService {
    let mut s = ns("icmp");
    s.matches = vec![Match {
        metadata: Some(Metadata {
            labels: labels(required),
        }),
        ..Default::default()
    }];
    s
}

struct Setup {
    services: Arc<FakeRegistry<NetworkService>>,
    forwarders: Arc<FakeRegistry<NetworkServiceEndpoint>>,
    probe: Arc<Probe>,
    chain: nsm_core::Chain,
}

fn setup(svc: NetworkService, fwds: Vec<NetworkServiceEndpoint>, probe: Arc<Probe>) -> Setup {
    let (services, ns_reg) = FakeRegistry::chain(vec![svc]);
    let (forwarders, nse_reg) = FakeRegistry::chain(fwds);
    let element = DiscoverForwarderServer::new(ns_reg, nse_reg, "forwarder".into());
    Setup {
        services,
        forwarders,
        chain: chain(vec![Arc::new(element), probe.clone()]),
        probe,
    }
}

fn p2p_and_p2mp() -> Vec<NetworkServiceEndpoint> {
    vec![
        fwd("fwd-p2mp", &[("p2mp", "true")]),
        fwd("fwd-p2p", &[("p2p", "true")]),
        nse("fwd-unlabelled", "unix:///u.sock", &["forwarder"], &[]),
    ]
}

#[tokio::test]
async fn metadata_labels_pick_p2mp_and_default_is_p2p() {
    let s = setup(service(&[("p2mp", "true")]), p2p_and_p2mp(), Probe::ok());
    s.chain
        .run_request(&mut ctx(), request("c1", "icmp", &[]))
        .await
        .unwrap();
    assert_eq!(s.probe.urls(), ["unix:///fwd-p2mp.sock"]);

    // The service drops its metadata labels: new connections go back to p2p forwarders.
    *s.services.items.lock() = vec![service(&[])];
    s.chain
        .run_request(&mut ctx(), request("c2", "icmp", &[]))
        .await
        .unwrap();
    assert_eq!(s.probe.urls()[1], "unix:///fwd-p2p.sock");
}

#[tokio::test]
async fn without_matches_any_forwarder_is_tried_in_order_and_the_choice_sticks() {
    let s = setup(
        ns("icmp"),
        p2p_and_p2mp(),
        Probe::failing_urls(&["unix:///fwd-p2mp.sock"]),
    );
    let mut ctx = ctx();
    let conn = s
        .chain
        .run_request(&mut ctx, request("c", "icmp", &[]))
        .await
        .unwrap();
    assert_eq!(
        s.probe.urls(),
        ["unix:///fwd-p2mp.sock", "unix:///fwd-p2p.sock"]
    );

    // A refresh goes straight to the stored forwarder, and so does Close.
    s.chain
        .run_request(&mut ctx, request("c", "icmp", &[]))
        .await
        .unwrap();
    s.chain.run_close(&mut ctx, conn).await.unwrap();
    assert_eq!(
        s.probe.urls()[2..],
        ["unix:///fwd-p2p.sock", "unix:///fwd-p2p.sock"]
    );
    assert!(s.probe.last().close);
}

#[tokio::test]
async fn fallthrough_and_templated_labels() {
    let mut svc = ns("icmp");
    svc.matches = vec![
        Match {
            source_selector: labels(&[("app", "vl3")]),
            metadata: Some(Metadata {
                labels: labels(&[("vl3", "true")]),
            }),
            fallthrough: true,
            ..Default::default()
        },
        Match {
            metadata: Some(Metadata {
                labels: labels(&[("nodeName", "{{.nodeName}}")]),
            }),
            ..Default::default()
        },
    ];
    let fwds = vec![
        fwd("fwd-1", &[("nodeName", "node-1"), ("p2p", "true")]),
        fwd("fwd-2", &[("nodeName", "node-2"), ("p2p", "true")]),
    ];
    let s = setup(svc, fwds, Probe::ok());
    s.chain
        .run_request(
            &mut ctx(),
            request("c", "icmp", &[("app", "vl3"), ("nodeName", "node-2")]),
        )
        .await
        .unwrap();
    assert_eq!(s.probe.urls(), ["unix:///fwd-2.sock"]);
}

#[tokio::test]
async fn no_candidate_lists_required_labels_and_forwarders_seen() {
    let s = setup(service(&[("vl3", "true")]), p2p_and_p2mp(), Probe::ok());
    let err = s
        .chain
        .run_request(&mut ctx(), request("c", "icmp", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let msg = err.to_string();
    assert!(msg.contains("labels required: {vl3=true}"), "{msg}");
    assert!(
        msg.contains("fwd-p2mp {p2mp=true}, fwd-p2p {p2p=true}, fwd-unlabelled {}"),
        "{msg}"
    );

    let mut svc = service(&[]);
    svc.matches[0].source_selector = labels(&[("app", "x")]);
    let s = setup(svc, vec![fwd("f", &[("p2p", "true")])], Probe::ok());
    let err = s
        .chain
        .run_request(&mut ctx(), request("c", "icmp", &[]))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no match of the service applies to connection labels {}"),
        "{err}"
    );
}

#[tokio::test]
async fn every_failed_candidate_is_listed() {
    let probe = Probe::failing(|s| {
        Some(NsmError::unavailable(
            "connect",
            format!("{} down", s.url.as_ref().unwrap()),
        ))
    });
    let s = setup(ns("icmp"), p2p_and_p2mp(), probe);
    let err = s
        .chain
        .run_request(&mut ctx(), request("c", "icmp", &[]))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("all 3 candidates failed for forwarder for network service icmp"),
        "{msg}"
    );
    assert!(
        msg.contains("fwd-p2mp (connect: unavailable: unix:///fwd-p2mp.sock down)"),
        "{msg}"
    );
    assert!(
        msg.contains("fwd-unlabelled (connect: unavailable: unix:///u.sock down)"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_vanished_forwarder_clears_the_selection() {
    let s = setup(
        ns("icmp"),
        vec![fwd("fwd-a", &[("p2p", "true")])],
        Probe::ok(),
    );
    let mut ctx = ctx();
    s.chain
        .run_request(&mut ctx, request("c", "icmp", &[]))
        .await
        .unwrap();
    *s.forwarders.items.lock() = vec![fwd("fwd-b", &[("p2p", "true")])];
    let err = s
        .chain
        .run_request(&mut ctx, request("c", "icmp", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.to_string()
            .contains("forwarder fwd-a selected for this connection"),
        "{err}"
    );
    // Selecting again finds the new forwarder.
    s.chain
        .run_request(&mut ctx, request("c", "icmp", &[]))
        .await
        .unwrap();
    assert_eq!(s.probe.urls().last().unwrap(), "unix:///fwd-b.sock");
}

#[tokio::test]
async fn unknown_service_close_without_selection_and_missing_metadata_fail() {
    let s = setup(ns("other"), p2p_and_p2mp(), Probe::ok());
    let err = s
        .chain
        .run_request(&mut ctx(), request("c", "icmp", &[]))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("network service icmp is not found"),
        "{err}"
    );

    let err = s
        .chain
        .run_close(&mut ctx(), Connection::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let mut bare = nsm_core::Ctx::new(nsm_core::Clock::system());
    let err = s
        .chain
        .run_request(&mut bare, request("c", "other", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
}

#[tokio::test]
async fn a_restarted_nsmgr_keeps_the_forwarder_named_in_the_path() {
    use nsm_api::{Path, PathSegment};
    let fwds = vec![
        fwd("fwd-a", &[("p2p", "true")]),
        fwd("fwd-b", &[("p2p", "true")]),
    ];
    let s = setup(ns("icmp"), fwds, Probe::ok());
    // A refresh of a connection this (fresh) NSMgr never saw: its path says nsc → nsmgr → fwd-b.
    let mut req = request("c", "icmp", &[]);
    let seg = |n: &str| PathSegment {
        name: n.into(),
        id: format!("{n}-id"),
        ..Default::default()
    };
    req.connection.as_mut().unwrap().path = Some(Path {
        index: 1,
        path_segments: vec![seg("nsc"), seg("nsmgr"), seg("fwd-b")],
    });
    s.chain.run_request(&mut ctx(), req).await.unwrap();
    assert_eq!(s.probe.urls(), ["unix:///fwd-b.sock"]);
    // A name on the path that is not a registered forwarder changes nothing.
    let mut req = request("d", "icmp", &[]);
    req.connection.as_mut().unwrap().path = Some(Path {
        index: 1,
        path_segments: vec![seg("nsc"), seg("nsmgr"), seg("gone")],
    });
    s.chain.run_request(&mut ctx(), req).await.unwrap();
    assert_eq!(s.probe.urls()[1], "unix:///fwd-a.sock");
}
