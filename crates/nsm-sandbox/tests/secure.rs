//! The use cases over a secured domain (`Sandbox::builder().secure()`): every component with its own
//! X.509-SVID, SPIFFE mTLS on every connection, ES256 path tokens and the default Rego policies on
//! every hop. Also Go's `opa` example (a client with already-expired tokens is refused) and SVID
//! rotation mid-connection on both sides of a connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use nsm_api::Connection;
use nsm_identity::SignedDuration;
use nsm_sandbox::elements::Counter;
use nsm_sandbox::{ClientConfig, EndpointSpec, Sandbox};
use tonic::Code;

use common::*;

/// The claims of a JWT (no verification).
fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

/// Every segment carries an ES256 token whose `sub` is that hop and whose `aud` is the next hop (the
/// last one: the previous hop).
fn assert_token_chain(conn: &Connection) {
    let path = conn.path.as_ref().unwrap();
    let id = |name: &str| format!("spiffe://{}/{name}", nsm_sandbox::TRUST_DOMAIN);
    let n = path.path_segments.len();
    for (i, seg) in path.path_segments.iter().enumerate() {
        let c = claims(&seg.token);
        assert_eq!(c["sub"], id(&seg.name), "segment {i}: {c}");
        let aud = if i + 1 < n {
            &path.path_segments[i + 1].name
        } else {
            &path.path_segments[i - 1].name
        };
        assert_eq!(c["aud"], serde_json::json!([id(aud)]), "segment {i}: {c}");
    }
}

async fn local_usecase(sb: &Sandbox) {
    register_service(sb, "my-service").await;
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
    assert_eq!(
        names(&conn),
        ["nsc", "nsmgr-node-0", "forwarder-0", "final-endpoint"]
    );
    assert_token_chain(&conn);
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    assert_token_chain(&conn);
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_eq!((counter.requests(), counter.closes()), (2, 1));
    assert_clean(sb).await;
}

#[tokio::test]
async fn secure_local_usecase() {
    let sb = Sandbox::builder().secure().build().await.unwrap();
    local_usecase(&sb).await;
}

#[tokio::test]
async fn secure_local_usecase_over_unix_sockets() {
    // Removed on drop, also when the test fails.
    let tmp = tempfile::Builder::new()
        .prefix("nsm-sandbox-tls-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let sb = Sandbox::builder()
        .secure()
        .unix_sockets(dir)
        .build()
        .await
        .unwrap();
    assert!(sb.nodes[0].nsmgr.url().to_string().starts_with("unix://"));
    local_usecase(&sb).await;
}

#[tokio::test]
async fn secure_remote_usecase() {
    let sb = Sandbox::builder().secure().nodes(2).build().await.unwrap();
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
    assert_eq!(
        names(&conn),
        [
            "nsc",
            "nsmgr-node-0",
            "forwarder-0",
            "nsmgr-node-1",
            "forwarder-1",
            "final-endpoint"
        ]
    );
    assert_token_chain(&conn);
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    assert_token_chain(&conn);
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_eq!((counter.requests(), counter.closes()), (2, 1));
    assert_clean(&sb).await;
}

/// Go's `opa` example: an NSC whose `NSM_MAX_TOKEN_LIFETIME` is negative sends tokens that are already
/// expired; the NSMgr refuses the Request with PermissionDenied naming `tokens_expired`, and nothing
/// is left behind on any hop.
#[tokio::test]
async fn opa_client_with_expired_tokens_is_refused_by_the_nsmgr() {
    let sb = Sandbox::builder().secure().build().await.unwrap();
    register_service(&sb, "my-service").await;
    let counter = Counter::new();
    sb.nodes[0]
        .new_endpoint(
            EndpointSpec::new("final-endpoint", "my-service"),
            vec![counter.clone()],
        )
        .await
        .unwrap();
    let config = ClientConfig {
        retry: false,
        refresh: false,
        heal: false,
    };
    let expired = SignedDuration {
        negative: true,
        magnitude: Duration::from_secs(60),
    };
    let nsc = sb.nodes[0].new_client_with_token_lifetime("nsc", vec![], config, expired);
    let err = nsc
        .request(&mut sb.ctx(TIMEOUT), request("1", "my-service"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let text = err.to_string();
    assert!(text.contains("tokens_expired"), "{text}");
    assert!(text.contains("nsmgr") || text.contains("unix://") || text.contains("tcp://"));
    assert_eq!(
        counter.requests(),
        0,
        "the request never reached the endpoint"
    );
    assert_clean(&sb).await;

    // The same client with a sane lifetime gets through.
    let ok = sb.nodes[0].new_client_with("nsc-ok", vec![], config);
    let conn = ok
        .request(&mut sb.ctx(TIMEOUT), request("2", "my-service"))
        .await
        .unwrap();
    ok.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_clean(&sb).await;
}

/// A plaintext client cannot talk to a TLS NSMgr.
#[tokio::test]
async fn plaintext_client_against_a_tls_nsmgr_is_refused() {
    let sb = Sandbox::builder().secure().build().await.unwrap();
    let plain = Sandbox::builder().build().await.unwrap();
    let raw = plain.raw_client(sb.nodes[0].nsmgr.url());
    let mut req = request("1", "my-service");
    req.connection.as_mut().unwrap().path = Some(nsm_api::Path {
        index: 0,
        path_segments: vec![nsm_api::PathSegment {
            name: "nsc".into(),
            id: "1".into(),
            ..Default::default()
        }],
    });
    let err = raw
        .run_request(&mut sb.ctx(Duration::from_secs(2)), req)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Internal | Code::Unknown
        ),
        "{err}"
    );
}

/// SVID rotation mid-connection, on each side of every connection: after the NSC, the NSMgr, the
/// forwarder and the endpoint each get a new SVID (new key), refreshes keep passing every hop's
/// policies, and the Close does too. Established TLS connections keep the identity they were
/// authenticated with: a server signs the tokens it answers on a connection with the SVID that
/// connection presented, and a hop sends onwards over a channel presenting the same SVID.
#[tokio::test]
async fn svid_rotation_mid_connection_on_both_sides() {
    let sb = Sandbox::builder().secure().nodes(2).build().await.unwrap();
    register_service(&sb, "my-service").await;
    sb.nodes[1]
        .new_endpoint(EndpointSpec::new("final-endpoint", "my-service"), vec![])
        .await
        .unwrap();
    let config = ClientConfig {
        retry: false,
        refresh: false,
        heal: false,
    };
    let nsc = sb.nodes[0].new_client_with("nsc", vec![], config);
    let req = request("1", "my-service");
    let mut conn = nsc
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();
    let ids = sb.identities().unwrap().clone();
    let before = conn.path.as_ref().unwrap().path_segments[1].token.clone();
    for who in [
        "nsmgr-node-0",
        "nsc",
        "forwarder-0",
        "nsmgr-node-1",
        "forwarder-1",
        "final-endpoint",
    ] {
        ids.rotate(who).unwrap();
        conn = nsc
            .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
            .await
            .unwrap_or_else(|e| panic!("refresh after rotating {who}: {e}"));
        assert_token_chain(&conn);
    }
    // Both sides rotated at once, then again.
    ids.rotate("nsc").unwrap();
    ids.rotate("nsmgr-node-0").unwrap();
    conn = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    assert_ne!(conn.path.as_ref().unwrap().path_segments[1].token, before);
    // A new client after the rotations connects (new connections present the new SVIDs).
    let other = sb.nodes[0].new_client_with("nsc-2", vec![], config);
    let c2 = other
        .request(&mut sb.ctx(TIMEOUT), request("2", "my-service"))
        .await
        .unwrap();
    other.close(&mut sb.ctx(TIMEOUT), c2).await.unwrap();
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_clean(&sb).await;
}
