//! Helpers shared by the sandbox test files.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nsm_api::mechanisms::MechanismType;
use nsm_api::registry::NetworkService;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_sandbox::Sandbox;

/// Per-test deadline for requests (Go's tests use 5–10 s).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Go's `defaultRequest`: connection id "1", KERNEL preferred.
pub fn request(id: &str, service: &str) -> NetworkServiceRequest {
    NetworkServiceRequest {
        connection: Some(Connection {
            id: id.into(),
            network_service: service.into(),
            ..Default::default()
        }),
        mechanism_preferences: vec![MechanismType::Kernel.mechanism()],
    }
}

/// The same request as a refresh of `conn`.
pub fn refresh(req: &NetworkServiceRequest, conn: &Connection) -> NetworkServiceRequest {
    let mut r = req.clone();
    r.connection = Some(conn.clone());
    r
}

/// Registers a service without matches (payload IP).
pub async fn register_service(sb: &Sandbox, name: &str) {
    sb.register_ns(NetworkService {
        name: name.into(),
        payload: "IP".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// The names of a connection's path.
pub fn names(conn: &Connection) -> Vec<String> {
    conn.path
        .as_ref()
        .map(|p| p.names().into_iter().map(String::from).collect())
        .unwrap_or_default()
}

/// Polls `f` every 10 ms until it is true; panics with `what` after `timeout`. Returns the time taken.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts that no component or client holds per-connection state (polling up to 3 s).
pub async fn assert_clean(sb: &Sandbox) {
    if let Err(dirty) = sb.wait_until_clean(Duration::from_secs(3)).await {
        panic!("per-connection state left behind: {dirty:#?}");
    }
}

/// Asserts that no component or client of the given nodes holds per-connection state (polling up
/// to 3 s); for scenarios where another node died holding its share.
pub async fn assert_nodes_clean(sb: &Sandbox, nodes: &[usize]) {
    let start = tokio::time::Instant::now();
    loop {
        let mut all = std::collections::BTreeMap::new();
        for &i in nodes {
            sb.nodes[i].connection_state(&mut all).await;
        }
        all.retain(|_, s| !s.is_empty());
        if all.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "per-connection state left behind: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
