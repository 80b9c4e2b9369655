//! Passthrough chains ported from the Go sdk's `chains/nsmgr/suite_test.go`: endpoints that request
//! the same network service again, selected hop by hop through the service's matches.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use nsm_api::registry::{Destination, Match, NetworkService};
use nsm_sandbox::elements::Counter;
use nsm_sandbox::{EndpointSpec, Node, Sandbox};

use common::*;

const STEP: &str = "step";

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn route_match(source: &[(&str, &str)], destination: &[(&str, &str)]) -> Match {
    Match {
        source_selector: labels(source),
        routes: vec![Destination {
            destination_selector: labels(destination),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Go `linearNS`: step i-1 → step i for i in 1..hops, then a catch-all (empty source) → step 0.
fn linear_ns(hops: usize) -> NetworkService {
    let mut matches: Vec<Match> = (1..hops)
        .map(|i| {
            let (from, to) = ((i - 1).to_string(), i.to_string());
            route_match(&[(STEP, &from)], &[(STEP, &to)])
        })
        .collect();
    if hops > 1 {
        matches.push(route_match(&[], &[(STEP, "0")]));
    }
    NetworkService {
        name: "test-network-service-linear".into(),
        payload: "IP".into(),
        matches,
    }
}

/// Go `newPassThroughEndpoint`: `endpoint-<name>` with `labels`, passing on unless it is the last.
async fn passthrough_endpoint(
    node: &Node,
    labels: &[(&str, &str)],
    name: &str,
    service: &str,
    passes_on: bool,
    counter: &Arc<Counter>,
) -> String {
    let name = format!("endpoint-{name}");
    node.new_endpoint(
        EndpointSpec::new(&name, service)
            .labels(labels.iter().copied())
            .passthrough(passes_on),
        vec![counter.clone()],
    )
    .await
    .unwrap();
    name
}

async fn linear_chain(
    sb: &Sandbox,
    nses: usize,
    remote: bool,
    counter: &Arc<Counter>,
) -> Vec<String> {
    let ns = sb.register_ns(linear_ns(nses)).await.unwrap();
    let mut names = Vec::new();
    for i in 0..nses {
        let node = if remote { &sb.nodes[i] } else { &sb.nodes[0] };
        let step = i.to_string();
        names.push(
            passthrough_endpoint(
                node,
                &[(STEP, &step)],
                &step,
                &ns.name,
                i != nses - 1,
                counter,
            )
            .await,
        );
    }
    names
}

async fn refresh_five_times_and_close(
    sb: &Sandbox,
    nsc: &nsm_sandbox::Client,
    req: &nsm_api::NetworkServiceRequest,
    mut conn: nsm_api::Connection,
) {
    let len = names(&conn).len();
    for _ in 0..5 {
        conn = nsc
            .request(&mut sb.ctx(TIMEOUT), refresh(req, &conn))
            .await
            .unwrap();
        assert_eq!(names(&conn).len(), len);
    }
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
}

/// Go `Test_PassThroughLocalUsecase`: 7 passthrough endpoints on one node, 4·6+4 = 28 segments.
#[tokio::test]
async fn passthrough_local_has_28_segments() {
    const NSES: usize = 7;
    let sb = Sandbox::builder().build().await.unwrap();
    let counter = Counter::new();
    let nses = linear_chain(&sb, NSES, false, &counter).await;
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let req = request("1", "test-network-service-linear");
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();
    let path = names(&conn);
    assert_eq!(path.len(), 4 * (NSES - 1) + 4, "{path:?}");
    for (i, nse) in nses.iter().enumerate() {
        assert_eq!(&path[(i + 1) * 4 - 1], nse, "{path:?}");
    }
    assert_eq!(conn.network_service_endpoint_name, "endpoint-0");
    refresh_five_times_and_close(&sb, &nsc, &req, conn).await;
    assert_eq!(counter.closes(), NSES);
    assert_eq!(counter.requests(), 6 * NSES);
    assert_clean(&sb).await;
}

/// Go `Test_PassThroughRemoteUsecase`: one passthrough endpoint per node on 7 nodes, 6·6+4 = 40
/// segments.
#[tokio::test]
async fn passthrough_remote_has_40_segments() {
    const NODES: usize = 7;
    let sb = Sandbox::builder().nodes(NODES).build().await.unwrap();
    let counter = Counter::new();
    let nses = linear_chain(&sb, NODES, true, &counter).await;
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let req = request("1", "test-network-service-linear");
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();
    let path = names(&conn);
    assert_eq!(path.len(), 6 * (NODES - 1) + 4, "{path:?}");
    for (i, nse) in nses.iter().enumerate() {
        assert_eq!(&path[i * 6 + 3], nse, "{path:?}");
    }
    // Hop i+1 is served by node i+1's NSMgr and forwarder.
    assert_eq!(path[7], "nsmgr-node-1");
    assert_eq!(path[8], "forwarder-1");
    refresh_five_times_and_close(&sb, &nsc, &req, conn).await;
    assert_eq!(counter.closes(), NODES);
    assert_clean(&sb).await;
}

/// Go `Test_PassThroughSameSourceSelector`: the catch-all match (→ step 0) is `fallthrough` and no
/// step-0 endpoint exists, so selection falls through to a second catch-all (→ step 1).
#[tokio::test]
async fn passthrough_falls_through_to_the_next_match() {
    const NSES: usize = 7;
    let sb = Sandbox::builder().build().await.unwrap();
    let mut ns = linear_ns(NSES);
    ns.matches.last_mut().unwrap().fallthrough = true;
    ns.matches.push(route_match(&[], &[(STEP, "1")]));
    let ns = sb.register_ns(ns).await.unwrap();
    let counter = Counter::new();
    let mut nses = Vec::new();
    for i in 1..NSES {
        let step = i.to_string();
        nses.push(
            passthrough_endpoint(
                &sb.nodes[0],
                &[(STEP, &step)],
                &step,
                &ns.name,
                i != NSES - 1,
                &counter,
            )
            .await,
        );
    }
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let req = request("1", &ns.name);
    let check = |conn: &nsm_api::Connection| {
        let path = names(conn);
        assert_eq!(path.len(), 4 * (NSES - 2) + 4, "{path:?}");
        for (i, nse) in nses.iter().enumerate() {
            assert_eq!(&path[(i + 1) * 4 - 1], nse, "{path:?}");
        }
    };
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();
    check(&conn);
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    check(&conn);
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_eq!(counter.closes(), NSES - 1);
    assert_clean(&sb).await;
}

/// Go `Test_PassThroughLocalUsecaseMultiLabel`: matches on two labels choose ab → aabb → aaabbb
/// among the nine a×b combinations.
#[tokio::test]
async fn passthrough_selects_on_two_labels() {
    const A: &str = "label_a";
    const B: &str = "label_b";
    let sb = Sandbox::builder().build().await.unwrap();
    let ns = sb
        .register_ns(NetworkService {
            name: "test-network-service".into(),
            payload: "IP".into(),
            matches: vec![
                route_match(&[(A, "a"), (B, "b")], &[(A, "aa"), (B, "bb")]),
                route_match(&[(A, "aa"), (B, "bb")], &[(A, "aaa"), (B, "bbb")]),
                route_match(&[], &[(A, "a"), (B, "b")]),
            ],
        })
        .await
        .unwrap();
    let counter = Counter::new();
    for i in 1..=3 {
        for j in 1..=3 {
            let (a, b) = ("a".repeat(i), "b".repeat(j));
            passthrough_endpoint(
                &sb.nodes[0],
                &[(A, &a), (B, &b)],
                &format!("{a}{b}"),
                &ns.name,
                i != 3 || j != 3,
                &counter,
            )
            .await;
        }
    }
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let req = request("1", &ns.name);
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();
    let path = names(&conn);
    let expected = ["endpoint-ab", "endpoint-aabb", "endpoint-aaabbb"];
    assert_eq!(path.len(), 4 * ns.matches.len(), "{path:?}");
    for (i, nse) in expected.iter().enumerate() {
        assert_eq!(&path[(i + 1) * 4 - 1], nse, "{path:?}");
    }
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_eq!(counter.closes(), expected.len());
    assert_clean(&sb).await;
}
