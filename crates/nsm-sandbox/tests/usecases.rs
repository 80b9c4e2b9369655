//! Use cases ported from the Go sdk's `chains/nsmgr` tests, each over real gRPC in one process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nsm_api::mechanisms::MechanismType;
use nsm_api::registry::NetworkService;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_sandbox::{EndpointSpec, Sandbox};

const TIMEOUT: Duration = Duration::from_secs(10);

fn request(id: &str, service: &str) -> NetworkServiceRequest {
    NetworkServiceRequest {
        connection: Some(Connection {
            id: id.into(),
            network_service: service.into(),
            ..Default::default()
        }),
        mechanism_preferences: vec![MechanismType::Kernel.mechanism()],
    }
}

async fn register_service(sb: &Sandbox, name: &str) {
    sb.register_ns(NetworkService {
        name: name.into(),
        payload: "IP".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn local_usecase_has_four_segments_refreshes_and_closes() {
    let sb = Sandbox::builder().build().await.unwrap();
    register_service(&sb, "my-service").await;
    sb.nodes[0]
        .new_endpoint(EndpointSpec::new("final-endpoint", "my-service"), vec![])
        .await
        .unwrap();
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let conn = nsc
        .run_request(&mut sb.ctx(TIMEOUT), request("1", "my-service"))
        .await
        .unwrap();
    let names = conn.path.as_ref().unwrap().names();
    assert_eq!(
        names,
        ["nsc", "nsmgr-node-0", "forwarder-0", "final-endpoint"]
    );
    assert_eq!(conn.network_service_endpoint_name, "final-endpoint");

    // Refresh: the same request again keeps the same path and ids.
    let mut again = request("1", "my-service");
    again.connection = Some(conn.clone());
    let refreshed = nsc.run_request(&mut sb.ctx(TIMEOUT), again).await.unwrap();
    assert_eq!(
        refreshed.path,
        conn.path.clone().map(|mut p| {
            // tokens and expiry are regenerated on every hop
            for (a, b) in p
                .path_segments
                .iter_mut()
                .zip(&refreshed.path.as_ref().unwrap().path_segments)
            {
                a.expires = b.expires;
                a.token = b.token.clone();
            }
            p
        })
    );
    nsc.run_close(&mut sb.ctx(TIMEOUT), refreshed)
        .await
        .unwrap();
}

#[tokio::test]
async fn remote_usecase_has_six_segments() {
    let sb = Sandbox::builder().nodes(2).build().await.unwrap();
    register_service(&sb, "my-service").await;
    sb.nodes[1]
        .new_endpoint(EndpointSpec::new("final-endpoint", "my-service"), vec![])
        .await
        .unwrap();
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let conn = nsc
        .run_request(&mut sb.ctx(TIMEOUT), request("1", "my-service"))
        .await
        .unwrap();
    let names = conn.path.as_ref().unwrap().names();
    assert_eq!(
        names,
        [
            "nsc",
            "nsmgr-node-0",
            "forwarder-0",
            "nsmgr-node-1",
            "forwarder-1",
            "final-endpoint"
        ]
    );
    nsc.run_close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
}
