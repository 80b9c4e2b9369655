//! Healing scenarios ported from the Go sdk's `chains/nsmgr/heal_test.go`. Each reports its heal
//! time (failure → the endpoint sees the re-request) on stderr; the target is about a second.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use nsm_sandbox::elements::Counter;
use nsm_sandbox::{EndpointSpec, Sandbox, p2p};

use common::*;

/// How long a heal may take before the test fails (Go allows 10 s).
const HEAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Go `TestNSMGR_HealEndpoint`: the endpoint dies, a new one (`-2`) starts on the same node; the
/// client heals to it; refresh and Close with the old connection work.
async fn heal_endpoint(node: usize) {
    let sb = Sandbox::builder().nodes(node + 1).build().await.unwrap();
    register_service(&sb, "my-service").await;
    let counter = Counter::new();
    sb.nodes[node]
        .new_endpoint(
            EndpointSpec::new("final-endpoint", "my-service"),
            vec![counter.clone()],
        )
        .await
        .unwrap();
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let req = request("1", "my-service");
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();
    assert_eq!(counter.unique_requests(), 1);

    let killed = tokio::time::Instant::now();
    sb.nodes[node].kill("final-endpoint").await;
    sb.nodes[node]
        .new_endpoint(
            EndpointSpec::new("final-endpoint-2", "my-service"),
            vec![counter.clone()],
        )
        .await
        .unwrap();
    eventually("healing to final-endpoint-2", HEAL_TIMEOUT, || {
        counter.unique_requests() >= 2
    })
    .await;
    eprintln!(
        "heal time, endpoint death on node {node}: {:?}",
        killed.elapsed()
    );
    assert_eq!(counter.unique_requests(), 2);
    let closes = counter.unique_closes();

    let healed = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    assert_eq!(healed.network_service_endpoint_name, "final-endpoint-2");
    assert_eq!(names(&healed).last().unwrap(), "final-endpoint-2");
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_eq!(counter.unique_requests(), 2);
    assert_eq!(counter.unique_closes(), closes + 1);
    assert_clean(&sb).await;
}

#[tokio::test]
async fn heal_local_endpoint() {
    heal_endpoint(0).await;
}

#[tokio::test]
async fn heal_remote_endpoint() {
    heal_endpoint(1).await;
}

/// Go `TestNSMGR_HealForwarder`: the forwarder of node 0 or 1 dies and `forwarder-2` starts there;
/// the connection is re-established through it.
async fn heal_forwarder(node: usize) {
    let sb = Sandbox::builder().nodes(2).build().await.unwrap();
    register_service(&sb, "my-service").await;
    let counter = Counter::new();
    sb.nodes[1]
        .new_endpoint(
            EndpointSpec::new("final-endpoint", "my-service"),
            vec![counter.clone()],
        )
        .await
        .unwrap();
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let req = request("1", "my-service");
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();
    assert_eq!(counter.requests(), 1);

    let killed = tokio::time::Instant::now();
    sb.nodes[node].kill(&format!("forwarder-{node}")).await;
    sb.nodes[node]
        .new_forwarder("forwarder-2", p2p())
        .await
        .unwrap();
    eventually("healing through forwarder-2", HEAL_TIMEOUT, || {
        counter.requests() >= 2
    })
    .await;
    eprintln!(
        "heal time, forwarder death on node {node}: {:?}",
        killed.elapsed()
    );
    assert_eq!(counter.requests(), 2);
    let closes = counter.closes();

    let healed = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    let path = names(&healed);
    assert_eq!(
        path[if node == 0 { 2 } else { 4 }],
        "forwarder-2",
        "{path:?}"
    );
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_eq!(counter.requests(), 3);
    assert_eq!(counter.closes(), closes + 1);
    assert_clean(&sb).await;
}

#[tokio::test]
async fn heal_local_forwarder() {
    heal_forwarder(0).await;
}

#[tokio::test]
async fn heal_remote_forwarder() {
    heal_forwarder(1).await;
}

/// Go `TestNSMGR_HealNSMgr`, "Local Restored": the client's NSMgr restarts; the connection comes
/// back to the same endpoint once the forwarder and endpoint have re-registered.
#[tokio::test]
async fn heal_local_nsmgr_restart() {
    let sb = Sandbox::builder().nodes(3).build().await.unwrap();
    register_service(&sb, "my-service").await;
    let counter = Counter::new();
    sb.nodes[1]
        .new_endpoint(
            EndpointSpec::new("final-endpoint", "my-service"),
            vec![counter.clone()],
        )
        .await
        .unwrap();
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let req = request("1", "my-service");
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();

    let restarted = tokio::time::Instant::now();
    sb.nodes[0].nsmgr.restart().await.unwrap();
    eventually("healing through the restarted NSMgr", HEAL_TIMEOUT, || {
        counter.requests() >= 2
    })
    .await;
    eprintln!("heal time, local NSMgr restart: {:?}", restarted.elapsed());
    assert_eq!(counter.requests(), 2);

    let healed = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    assert_eq!(healed.network_service_endpoint_name, "final-endpoint");
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_eq!(counter.requests(), 3);
    assert_eq!(counter.closes(), 1);
    assert_clean(&sb).await;
}

/// Go `TestNSMGR_HealNSMgr`, "Remote New": a replacement endpoint starts on node 2, then the NSMgr
/// of the endpoint's node dies; the client heals to the replacement.
#[tokio::test]
async fn heal_remote_nsmgr_death() {
    let sb = Sandbox::builder().nodes(3).build().await.unwrap();
    register_service(&sb, "my-service").await;
    let counter = Counter::new();
    sb.nodes[1]
        .new_endpoint(
            EndpointSpec::new("final-endpoint", "my-service"),
            vec![counter.clone()],
        )
        .await
        .unwrap();
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let req = request("1", "my-service");
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();

    sb.nodes[2]
        .new_endpoint(
            EndpointSpec::new("final-endpoint-2", "my-service"),
            vec![counter.clone()],
        )
        .await
        .unwrap();
    let killed = tokio::time::Instant::now();
    sb.nodes[1].nsmgr.stop().await;
    eventually("healing to final-endpoint-2", HEAL_TIMEOUT, || {
        counter.unique_requests() >= 2
    })
    .await;
    eprintln!("heal time, remote NSMgr death: {:?}", killed.elapsed());
    assert_eq!(counter.unique_requests(), 2);
    let closes = counter.unique_closes();

    let healed = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    assert_eq!(healed.network_service_endpoint_name, "final-endpoint-2");
    assert_eq!(names(&healed)[3], "nsmgr-node-2");
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_eq!(counter.unique_requests(), 2);
    assert_eq!(counter.unique_closes(), closes + 1);
    // Node 1 lost its NSMgr with the old connection's state; nodes 0 and 2 are clean.
    assert_nodes_clean(&sb, &[0, 2]).await;
}

/// Go `TestNSMGR_HealRegistry`: the registry restarts; a refresh and a brand-new client still work.
#[tokio::test]
async fn heal_registry_restart() {
    let sb = Sandbox::builder().build().await.unwrap();
    register_service(&sb, "my-service").await;
    let counter = Counter::new();
    sb.nodes[0]
        .new_endpoint(
            EndpointSpec::new("final-endpoint", "my-service"),
            vec![counter.clone()],
        )
        .await
        .unwrap();
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let req = request("1", "my-service");
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();

    let restarted = tokio::time::Instant::now();
    sb.registry.restart().await.unwrap();
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    let nsc2 = sb.nodes[0].new_client("nsc-2", vec![]);
    let conn2 = nsc2
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();
    eprintln!(
        "registry restart: refresh and a new client done after {:?}",
        restarted.elapsed()
    );
    assert_eq!(counter.requests(), 3);
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    nsc2.close(&mut sb.ctx(TIMEOUT), conn2).await.unwrap();
    assert_clean(&sb).await;
}

/// Go `TestNSMGR_CloseHeal`: the endpoint dies, healing starts (and cannot succeed), then the client
/// closes: no heal task, begin slot or metadata is left.
async fn close_during_heal(with_expiry: bool) {
    let mut builder = Sandbox::builder();
    if with_expiry {
        builder = builder.registry_expiry(Duration::from_secs(1));
    }
    let sb = builder.build().await.unwrap();
    register_service(&sb, "my-service").await;
    sb.nodes[0]
        .new_endpoint(EndpointSpec::new("final-endpoint", "my-service"), vec![])
        .await
        .unwrap();
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let req = request("1", "my-service");
    let conn = nsc
        .request(&mut sb.ctx(Duration::from_secs(1)), req.clone())
        .await
        .unwrap();
    let conn = nsc
        .request(&mut sb.ctx(Duration::from_secs(1)), refresh(&req, &conn))
        .await
        .unwrap();
    assert_eq!(nsc.heal_tasks(), 1, "one monitor task per connection");

    sb.nodes[0].kill("final-endpoint").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    if with_expiry {
        // Let the dead endpoint's registration expire too.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(nsc.heal_tasks(), 1, "healing in progress");
    let started = tokio::time::Instant::now();
    let closed = nsc.close(&mut sb.ctx(Duration::from_secs(1)), conn).await;
    eprintln!(
        "close during heal (expiry {with_expiry}): Close returned after {:?}: {closed:?}",
        started.elapsed()
    );
    // heal keeps its state per connection id, so the Close stops the heal task at once (not at its
    // next attempt).
    let took = eventually("heal tasks to end", Duration::from_millis(100), || {
        nsc.heal_tasks() == 0
    })
    .await;
    eprintln!("close during heal (expiry {with_expiry}): heal task gone {took:?} after Close");
    assert_clean(&sb).await;
}

#[tokio::test]
async fn close_during_heal_leaves_no_task() {
    close_during_heal(false).await;
}

#[tokio::test]
async fn close_during_heal_after_expiry_leaves_no_task() {
    close_during_heal(true).await;
}
