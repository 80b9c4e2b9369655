use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nsm_api::registry::{Destination, Match};
use nsm_core::clock::to_timestamp;
use tonic::Code;

use super::testing::{FakeRegistry, Probe, chain, ctx, ns, nse, request};
use super::*;

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Setup {
    probe: Arc<Probe>,
    chain: nsm_core::Chain,
}

fn setup(services: Vec<NetworkService>, endpoints: Vec<NetworkServiceEndpoint>) -> Setup {
    let (_, ns_reg) = FakeRegistry::chain(services);
    let (_, nse_reg) = FakeRegistry::chain(endpoints);
    let probe = Probe::ok();
    let chain = chain(vec![
        Arc::new(DiscoverServer::new(ns_reg, nse_reg)),
        probe.clone(),
    ]);
    Setup { probe, chain }
}

#[tokio::test]
async fn candidates_follow_the_node_template_and_payload_is_set() {
    let mut svc = ns("icmp");
    svc.payload = "IP".into();
    svc.matches = vec![Match {
        routes: vec![Destination {
            destination_selector: labels(&[("nodeName", "{{.nodeName}}")]),
            weight: 0,
        }],
        ..Default::default()
    }];
    let s = setup(
        vec![ns("icmp-other"), svc],
        vec![
            nse(
                "nse-1",
                "unix:///nse1.sock",
                &["icmp"],
                &[("nodeName", "node-1")],
            ),
            nse(
                "nse-2",
                "unix:///nse2.sock",
                &["icmp"],
                &[("nodeName", "node-2")],
            ),
        ],
    );
    s.chain
        .run_request(&mut ctx(), request("c", "icmp", &[("nodeName", "node-2")]))
        .await
        .unwrap();
    let seen = s.probe.last();
    let candidates = seen.candidates.clone().unwrap();
    assert_eq!(
        candidates.network_service.name, "icmp",
        "exact name, not icmp-other"
    );
    let names: Vec<_> = candidates
        .endpoints
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(names, ["nse-2"]);
    assert_eq!(seen.conn().payload, "IP");
    assert!(seen.url.is_none(), "roundrobin picks the URL");
}

#[tokio::test]
async fn expired_endpoints_are_not_candidates() {
    let clock_now = nsm_core::Clock::system().now();
    let mut expired = nse("old", "unix:///old.sock", &["icmp"], &[]);
    expired.expiration_time = Some(to_timestamp(clock_now - Duration::from_secs(60)));
    let mut live = nse("new", "unix:///new.sock", &["icmp"], &[]);
    live.expiration_time = Some(to_timestamp(clock_now + Duration::from_secs(60)));
    let s = setup(vec![ns("icmp")], vec![expired, live]);
    s.chain
        .run_request(&mut ctx(), request("c", "icmp", &[]))
        .await
        .unwrap();
    let names: Vec<_> = s
        .probe
        .last()
        .candidates
        .unwrap()
        .endpoints
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["new"]);
}

#[tokio::test]
async fn a_named_endpoint_is_found_by_exact_name() {
    let s = setup(
        vec![],
        vec![
            nse("nse-10", "tcp://10.0.0.10:5001", &["icmp"], &[]),
            nse("nse-1", "tcp://10.0.0.1:5001", &["icmp"], &[]),
        ],
    );
    let mut req = request("c", "icmp", &[]);
    req.connection
        .as_mut()
        .unwrap()
        .network_service_endpoint_name = "nse-1".into();
    let conn = s.chain.run_request(&mut ctx(), req.clone()).await.unwrap();
    assert_eq!(s.probe.urls(), ["tcp://10.0.0.1:5001"]);

    s.chain.run_close(&mut ctx(), conn).await.unwrap();
    let seen = s.probe.last();
    assert!(seen.close);
    assert_eq!(seen.url.unwrap().to_string(), "tcp://10.0.0.1:5001");

    req.connection
        .as_mut()
        .unwrap()
        .network_service_endpoint_name = "nse-2".into();
    let err = s.chain.run_request(&mut ctx(), req).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.to_string()
            .contains("network service endpoint nse-2 is not found"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_service_and_no_candidates_are_not_found() {
    let s = setup(
        vec![ns("icmp-responder")],
        vec![nse(
            "nse-1",
            "unix:///a",
            &["icmp-responder"],
            &[("app", "a")],
        )],
    );
    let err = s
        .chain
        .run_request(&mut ctx(), request("c", "icmp", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.to_string()
            .contains("network service icmp is not found"),
        "{err}"
    );

    let mut svc = ns("icmp-responder");
    svc.matches = vec![Match {
        routes: vec![Destination {
            destination_selector: labels(&[("app", "b")]),
            weight: 0,
        }],
        ..Default::default()
    }];
    let s = setup(
        vec![svc],
        vec![nse(
            "nse-1",
            "unix:///a",
            &["icmp-responder"],
            &[("app", "a")],
        )],
    );
    let err = s
        .chain
        .run_request(
            &mut ctx(),
            request("c", "icmp-responder", &[("color", "red")]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let msg = err.to_string();
    assert!(
        msg.contains("{color=red}") && msg.contains("registered: [nse-1]"),
        "{msg}"
    );
}

#[tokio::test]
async fn unsupported_template_is_a_clear_invalid_argument() {
    let mut svc = ns("icmp");
    svc.matches = vec![Match {
        routes: vec![Destination {
            destination_selector: labels(&[("node", "{{.a | b}}")]),
            weight: 0,
        }],
        ..Default::default()
    }];
    let s = setup(
        vec![svc],
        vec![nse("nse-1", "unix:///a", &["icmp"], &[("node", "x")])],
    );
    let err = s
        .chain
        .run_request(&mut ctx(), request("c", "icmp", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.to_string()
            .contains("only {{.label}} actions are supported"),
        "{err}"
    );
}

#[tokio::test]
async fn a_url_in_context_skips_discovery_and_close_needs_a_name() {
    let s = setup(vec![], vec![]);
    let mut ctx = ctx();
    ctx.insert(ClientUrl(NsmUrl::parse("unix:///x.sock").unwrap()));
    s.chain
        .run_request(&mut ctx, request("c", "nope", &[]))
        .await
        .unwrap();
    assert_eq!(s.probe.urls(), ["unix:///x.sock"]);

    let err = s
        .chain
        .run_close(&mut super::testing::ctx(), Connection::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}
