//! Bad input (issue 3): each refused Request gets the right gRPC code naming the element and the
//! cause, nothing panics, and no hop keeps per-connection state (begin, metadata, monitor, IPAM
//! leases, heal/refresh tasks) afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use nsm_api::mechanisms::MechanismType;
use nsm_api::{Connection, NetworkServiceRequest, Path, PathSegment};
use nsm_core::NsmError;
use nsm_sandbox::elements::{Counter, Delay};
use nsm_sandbox::{EndpointSpec, Sandbox};
use std::sync::Arc;
use tonic::Code;

use common::*;

/// Asserts the error's gRPC code and that its message contains every one of `parts`.
fn expect(err: &NsmError, code: Code, parts: &[&str]) {
    let status: tonic::Status = err.clone().into();
    eprintln!("{code:?}: {}", status.message());
    assert_eq!(status.code(), code, "{err}");
    for p in parts {
        assert!(
            status.message().contains(p),
            "{p:?} missing in: {}",
            status.message()
        );
    }
}

async fn sandbox_with_icmp_responder(cidr: &str) -> Sandbox {
    let sb = Sandbox::builder().build().await.unwrap();
    register_service(&sb, "icmp").await;
    sb.nodes[0]
        .new_endpoint(
            EndpointSpec::new("icmp-responder", "icmp").icmp_responder(vec![cidr.parse().unwrap()]),
            vec![],
        )
        .await
        .unwrap();
    sb
}

#[tokio::test]
async fn no_network_service_is_invalid_argument() {
    let sb = sandbox_with_icmp_responder("10.0.0.0/24").await;
    let nsc = sb.nodes[0].new_client_without_retry("nsc", vec![]);
    let err = nsc
        .request(&mut sb.ctx(TIMEOUT), request("1", ""))
        .await
        .unwrap_err();
    expect(&err, Code::InvalidArgument, &["network service"]);
    assert_clean(&sb).await;
}

#[tokio::test]
async fn unknown_network_service_is_not_found() {
    let sb = sandbox_with_icmp_responder("10.0.0.0/24").await;
    let nsc = sb.nodes[0].new_client_without_retry("nsc", vec![]);
    let err = nsc
        .request(&mut sb.ctx(TIMEOUT), request("1", "no-such-service"))
        .await
        .unwrap_err();
    expect(
        &err,
        Code::NotFound,
        &["discoverforwarder", "no-such-service"],
    );
    assert_clean(&sb).await;
}

#[tokio::test]
async fn unsupported_mechanism_is_invalid_argument() {
    let sb = sandbox_with_icmp_responder("10.0.0.0/24").await;
    // The endpoint itself is asked for a mechanism it does not serve.
    let nse = sb.nodes[0].entry("icmp-responder").unwrap();
    let raw = sb.raw_client(nse.url());
    let req = NetworkServiceRequest {
        connection: Some(Connection {
            id: "1".into(),
            network_service: "icmp".into(),
            ..Default::default()
        }),
        mechanism_preferences: vec![MechanismType::Memif.mechanism()],
    };
    let err = raw
        .run_request(&mut sb.ctx(TIMEOUT), req)
        .await
        .unwrap_err();
    expect(&err, Code::InvalidArgument, &["mechanisms", "MEMIF"]);
    assert_clean(&sb).await;
}

fn with_path(id: &str, index: u32, segments: &[(&str, &str)]) -> NetworkServiceRequest {
    NetworkServiceRequest {
        connection: Some(Connection {
            id: id.into(),
            network_service: "icmp".into(),
            path: Some(Path {
                index,
                path_segments: segments
                    .iter()
                    .map(|(name, id)| PathSegment {
                        name: name.to_string(),
                        id: id.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            ..Default::default()
        }),
        mechanism_preferences: vec![MechanismType::Kernel.mechanism()],
    }
}

#[tokio::test]
async fn malformed_paths_are_invalid_argument() {
    let sb = sandbox_with_icmp_responder("10.0.0.0/24").await;
    let raw = sb.raw_client(sb.nodes[0].nsmgr.url());
    let err = raw
        .run_request(&mut sb.ctx(TIMEOUT), with_path("a", 3, &[("nsc", "a")]))
        .await
        .unwrap_err();
    expect(
        &err,
        Code::InvalidArgument,
        &["updatepath", "index 3", "out of range"],
    );
    let err = raw
        .run_request(&mut sb.ctx(TIMEOUT), with_path("b", 0, &[("nsc", "a")]))
        .await
        .unwrap_err();
    expect(&err, Code::InvalidArgument, &["updatepath", "id mismatch"]);
    // Close with the same paths is refused the same way.
    let bad = with_path("b", 0, &[("nsc", "a")]).connection.unwrap();
    let err = raw.run_close(&mut sb.ctx(TIMEOUT), bad).await.unwrap_err();
    expect(&err, Code::InvalidArgument, &["updatepath"]);
    assert_clean(&sb).await;
}

#[tokio::test]
async fn exhausted_ipam_pool_is_resource_exhausted() {
    // A /31 holds exactly one point-to-point pair.
    let sb = sandbox_with_icmp_responder("10.0.0.0/31").await;
    let nsc = sb.nodes[0].new_client_without_retry("nsc", vec![]);
    let first = nsc
        .request(&mut sb.ctx(TIMEOUT), request("1", "icmp"))
        .await
        .unwrap();
    let err = nsc
        .request(&mut sb.ctx(TIMEOUT), request("2", "icmp"))
        .await
        .unwrap_err();
    expect(
        &err,
        Code::ResourceExhausted,
        &["point2pointipam", "10.0.0.0/31"],
    );
    // The failed connection left nothing: exactly one connection's state on each hop.
    let state = sb.connection_state().await;
    assert_eq!(state["icmp-responder"].ipam_leases, 2, "{state:#?}");
    assert_eq!(state["icmp-responder"].begin, 1, "{state:#?}");
    assert_eq!(state["nsmgr-node-0"].begin, 1, "{state:#?}");
    assert_eq!(state["forwarder-0"].metadata, 1, "{state:#?}");
    assert_eq!(state["nsc"].heal_tasks, 1, "{state:#?}");
    nsc.close(&mut sb.ctx(TIMEOUT), first).await.unwrap();
    assert_clean(&sb).await;
    // The pair is free again.
    let again = nsc
        .request(&mut sb.ctx(TIMEOUT), request("2", "icmp"))
        .await
        .unwrap();
    nsc.close(&mut sb.ctx(TIMEOUT), again).await.unwrap();
    assert_clean(&sb).await;
}

#[tokio::test]
async fn expired_deadline_is_deadline_exceeded() {
    let sb = sandbox_with_icmp_responder("10.0.0.0/24").await;
    let nsc = sb.nodes[0].new_client_without_retry("nsc", vec![]);
    let err = nsc
        .request(&mut sb.ctx(Duration::ZERO), request("1", "icmp"))
        .await
        .unwrap_err();
    expect(&err, Code::DeadlineExceeded, &["deadline"]);
    assert_clean(&sb).await;
}

/// The deadline passes while the endpoint works: the client gets DeadlineExceeded, and the endpoint,
/// finishing late for a caller that is gone, does not keep the connection.
#[tokio::test]
async fn deadline_passing_downstream_leaves_nothing_behind() {
    let sb = Sandbox::builder().build().await.unwrap();
    register_service(&sb, "slow").await;
    let counter = Counter::new();
    sb.nodes[0]
        .new_endpoint(
            EndpointSpec::new("slow-endpoint", "slow")
                .icmp_responder(vec!["10.0.0.0/24".parse().unwrap()]),
            vec![Arc::new(Delay(Duration::from_millis(400))), counter.clone()],
        )
        .await
        .unwrap();
    let nsc = sb.nodes[0].new_client_without_retry("nsc", vec![]);
    let err = nsc
        .request(
            &mut sb.ctx(Duration::from_millis(200)),
            request("1", "slow"),
        )
        .await
        .unwrap_err();
    expect(&err, Code::DeadlineExceeded, &["deadline"]);
    // Wait for the endpoint to finish its late work.
    eventually("the endpoint to finish", Duration::from_secs(2), || {
        counter.requests() == 1
    })
    .await;
    assert_clean(&sb).await;
}

/// The endpoint side's timeout closes a connection whose client stopped refreshing (tokens live one
/// second here), on every hop. Real time: gRPC over sockets does not run under a paused clock; the
/// element tests of timeout and refresh use one.
#[tokio::test]
async fn timeout_closes_a_connection_nobody_refreshes() {
    let sb = Sandbox::builder()
        .token_generator(Arc::new(nsm_core::token::TestTokenGenerator {
            lifetime: Duration::from_secs(1),
        }))
        .build()
        .await
        .unwrap();
    register_service(&sb, "my-service").await;
    let counter = Counter::new();
    sb.nodes[0]
        .new_endpoint(
            EndpointSpec::new("final-endpoint", "my-service"),
            vec![counter.clone()],
        )
        .await
        .unwrap();
    let config = nsm_sandbox::ClientConfig {
        retry: false,
        refresh: false,
        heal: false,
    };
    let nsc = sb.nodes[0].new_client_with("nsc", vec![], config);
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), request("1", "my-service"))
        .await
        .unwrap();
    let took = eventually(
        "the endpoint to see a Close",
        Duration::from_secs(3),
        || counter.closes() >= 1,
    )
    .await;
    eprintln!("timeout: closed {took:?} after the request (tokens live 1 s)");
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );
    // Every server hop drops it (the endpoint sees the Close before the hops above it finish
    // unwinding, so poll); the client (no refresh, no heal) still holds its view until it closes,
    // which succeeds.
    let hops = ["nsmgr-node-0", "forwarder-0", "final-endpoint"];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let state = sb.connection_state().await;
        let dirty: Vec<_> = hops.iter().filter(|h| !state[**h].is_empty()).collect();
        if dirty.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hops still hold the timed-out connection: {:?}",
            dirty.iter().map(|h| (h, &state[**h])).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_clean(&sb).await;
}
