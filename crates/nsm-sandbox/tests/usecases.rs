//! Use cases ported from the Go sdk's `chains/nsmgr/suite_test.go` and `scale_test.go`, each over real
//! gRPC in one process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use nsm_api::registry::{Destination, Match, NetworkService};
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result, async_trait};
use nsm_sandbox::elements::{Counter, InjectError};
use nsm_sandbox::{EndpointSpec, Node, Sandbox};

use common::*;

#[tokio::test]
async fn local_usecase_has_four_segments_refreshes_and_closes() {
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
    assert_eq!(
        names(&conn),
        ["nsc", "nsmgr-node-0", "forwarder-0", "final-endpoint"]
    );
    assert_eq!(conn.network_service_endpoint_name, "final-endpoint");
    assert_eq!(counter.requests(), 1);

    // Refresh: the same request again keeps the same path and ids.
    let refreshed = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    let ids = |c: &Connection| -> Vec<(String, String)> {
        c.path
            .as_ref()
            .unwrap()
            .path_segments
            .iter()
            .map(|s| (s.name.clone(), s.id.clone()))
            .collect()
    };
    assert_eq!(ids(&refreshed), ids(&conn));
    assert_eq!(counter.requests(), 2);
    nsc.close(&mut sb.ctx(TIMEOUT), refreshed).await.unwrap();
    assert_eq!(counter.closes(), 1);
    assert_clean(&sb).await;
}

#[tokio::test]
async fn remote_usecase_has_six_segments_refreshes_and_closes() {
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
    assert_eq!(counter.requests(), 1);
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    assert_eq!(names(&conn).len(), 6);
    assert_eq!(counter.requests(), 2);
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_eq!(counter.closes(), 1);
    assert_clean(&sb).await;
}

/// Go `Test_Remote_ParallelUsecase`: the request is issued before the remote endpoint registers.
#[tokio::test]
async fn remote_request_before_the_endpoint_registers() {
    let sb = Sandbox::builder().nodes(2).build().await.unwrap();
    register_service(&sb, "my-service").await;
    let counter = Counter::new();
    let node1 = sb.nodes[1].clone();
    let c = counter.clone();
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        node1
            .new_endpoint(EndpointSpec::new("final-endpoint", "my-service"), vec![c])
            .await
            .unwrap();
    });
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let req = request("1", "my-service");
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();
    assert_eq!(names(&conn).len(), 6);
    assert_eq!(counter.requests(), 1);
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    assert_eq!(names(&conn).len(), 6);
    assert_eq!(counter.requests(), 2);
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_eq!(counter.closes(), 1);
    late.await.unwrap();
    sb.nodes[1].shutdown("final-endpoint").await.unwrap();
    assert_clean(&sb).await;
}

/// Go `Test_SelectsRestartingEndpointUsecase`: the endpoint is registered but its server comes up
/// one second later; the client's retry gets there.
#[tokio::test]
async fn endpoint_whose_server_starts_late() {
    let sb = Sandbox::builder().build().await.unwrap();
    register_service(&sb, "my-service").await;
    let counter = Counter::new();
    let nse = sb.nodes[0]
        .new_endpoint_not_started(
            EndpointSpec::new("final-endpoint", "my-service"),
            vec![counter.clone()],
        )
        .await
        .unwrap();
    let starter = {
        let nse = nse.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            nse.restart().await.unwrap();
        })
    };
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let started = tokio::time::Instant::now();
    let conn = nsc
        .request(
            &mut sb.ctx(Duration::from_secs(5)),
            request("1", "my-service"),
        )
        .await
        .unwrap();
    eprintln!(
        "late endpoint: connected {:?} after the request",
        started.elapsed()
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(names(&conn).len(), 4);
    assert_eq!(counter.requests(), 1);
    starter.await.unwrap();
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_eq!(counter.closes(), 1);
    sb.nodes[0].shutdown("final-endpoint").await.unwrap();
    assert_clean(&sb).await;
}

/// Go `Test_Remote_BusyEndpointsUsecase`: three remote endpoints refuse every request, a fourth
/// appears half a second later and serves.
#[tokio::test]
async fn busy_endpoints_until_a_good_one_appears() {
    let sb = Sandbox::builder().nodes(2).build().await.unwrap();
    register_service(&sb, "my-service").await;
    let busy: Vec<Arc<InjectError>> = (0..3).map(|_| InjectError::busy()).collect();
    for (i, b) in busy.iter().enumerate() {
        sb.nodes[1]
            .new_endpoint(
                EndpointSpec::new(&format!("final-endpoint{i}"), "my-service"),
                vec![b.clone()],
            )
            .await
            .unwrap();
    }
    let counter = Counter::new();
    let node1 = sb.nodes[1].clone();
    let c = counter.clone();
    let good = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        node1
            .new_endpoint(EndpointSpec::new("final-endpoint3", "my-service"), vec![c])
            .await
            .unwrap();
    });
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let req = request("1", "my-service");
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();
    assert_eq!(conn.network_service_endpoint_name, "final-endpoint3");
    assert_eq!(names(&conn).len(), 6);
    assert_eq!(counter.requests(), 1);
    assert!(
        busy.iter().all(|b| b.requests() >= 1),
        "every busy endpoint was tried"
    );
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    assert_eq!(names(&conn).len(), 6);
    assert_eq!(counter.requests(), 2);
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_eq!(counter.closes(), 1);
    good.await.unwrap();
    assert_clean(&sb).await;
}

/// Go `Test_ConnectToDeadNSEUsecase`: the endpoint dies after the connection is made; a refresh
/// fails within its one-second deadline and Close still returns.
#[tokio::test]
async fn connect_to_dead_endpoint() {
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
        .request(&mut sb.ctx(Duration::from_secs(1)), req.clone())
        .await
        .unwrap();
    assert_eq!(counter.requests(), 1);
    assert_eq!(names(&conn).len(), 4);

    sb.nodes[0].kill("final-endpoint").await;

    let started = tokio::time::Instant::now();
    let err = nsc
        .request(&mut sb.ctx(Duration::from_secs(1)), refresh(&req, &conn))
        .await
        .unwrap_err();
    let took = started.elapsed();
    eprintln!("dead endpoint: refresh failed after {took:?}: {err}");
    assert!(took < Duration::from_millis(1500), "refresh took {took:?}");

    let started = tokio::time::Instant::now();
    let closed = nsc.close(&mut sb.ctx(Duration::from_secs(1)), conn).await;
    let took = started.elapsed();
    eprintln!("dead endpoint: close returned after {took:?}: {closed:?}");
    assert!(took < Duration::from_millis(1500), "close took {took:?}");
    assert_clean(&sb).await;
}

/// Go `TestCreateEndpointDuringRequest`: a "maker" endpoint starts the real endpoint on another node
/// and fails; retry then reaches the new endpoint, and refreshes and new requests go there too.
#[tokio::test]
async fn endpoint_created_during_a_request() {
    struct Maker {
        node: Arc<Node>,
        counter: Arc<Counter>,
        made: tokio::sync::Mutex<bool>,
    }
    #[async_trait]
    impl NetworkServiceServer for Maker {
        async fn request(
            &self,
            _ctx: &mut Ctx,
            _request: NetworkServiceRequest,
            _next: Next,
        ) -> Result<Connection> {
            let mut made = self.made.lock().await;
            if *made {
                return Err(NsmError::unavailable("maker", "can't create new endpoint"));
            }
            *made = true;
            self.node
                .new_endpoint(
                    EndpointSpec::new("nse-impl", "ns-1").labels([("nodeName", "node-1")]),
                    vec![self.counter.clone()],
                )
                .await?;
            Err(NsmError::unavailable(
                "maker",
                "can't provide requested network service",
            ))
        }
        async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
            next.close(ctx, conn).await
        }
        fn name(&self) -> &'static str {
            "maker"
        }
    }

    let sb = Sandbox::builder().nodes(2).build().await.unwrap();
    let route = |k: &str, v: &str| Destination {
        destination_selector: [(k.to_string(), v.to_string())].into(),
        ..Default::default()
    };
    sb.register_ns(NetworkService {
        name: "ns-1".into(),
        matches: vec![Match {
            routes: vec![route("nodeName", "node-1"), route("create-nse", "true")],
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let counter = Counter::new();
    let maker = Arc::new(Maker {
        node: sb.nodes[1].clone(),
        counter: counter.clone(),
        made: Default::default(),
    });
    sb.nodes[0]
        .new_endpoint(
            EndpointSpec::new("nse-maker", "ns-1").labels([("create-nse", "true")]),
            vec![maker.clone()],
        )
        .await
        .unwrap();

    let nsc = sb.nodes[1].new_client("nsc", vec![]);
    let fresh = || NetworkServiceRequest {
        connection: Some(Connection {
            network_service: "ns-1".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let conn = nsc.request(&mut sb.ctx(TIMEOUT), fresh()).await.unwrap();
    assert!(*maker.made.lock().await);
    assert_eq!(conn.network_service_endpoint_name, "nse-impl");
    assert_eq!(counter.requests(), 1);

    let again = NetworkServiceRequest {
        connection: Some(conn.clone()),
        ..Default::default()
    };
    nsc.request(&mut sb.ctx(TIMEOUT), again).await.unwrap();
    assert_eq!(counter.requests(), 2);

    let other = nsc.request(&mut sb.ctx(TIMEOUT), fresh()).await.unwrap();
    assert_eq!(other.network_service_endpoint_name, "nse-impl");
    assert_eq!(counter.requests(), 3);

    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    nsc.close(&mut sb.ctx(TIMEOUT), other).await.unwrap();
    assert_clean(&sb).await;
}

/// Go `Test_Local_NoURLUsecase` (in spirit): NSMgr, forwarder and endpoint serve on unix sockets.
#[tokio::test]
async fn local_usecase_over_unix_sockets() {
    // Removed on drop, also when the test fails.
    let tmp = tempfile::Builder::new()
        .prefix("nsm-sandbox-unix-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let sb = Sandbox::builder().unix_sockets(dir).build().await.unwrap();
    assert!(sb.nodes[0].nsmgr.url().to_string().starts_with("unix://"));
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
    assert_eq!(
        names(&conn),
        ["nsc", "nsmgr-node-0", "forwarder-0", "final-endpoint"]
    );
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), refresh(&req, &conn))
        .await
        .unwrap();
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_eq!((counter.requests(), counter.closes()), (2, 1));
    assert_clean(&sb).await;
}

/// As deployed: local hops on unix sockets, NSMgr to NSMgr over TCP (each NSMgr publishes its TCP URL
/// in the registry; the forwarder on node 0 reaches NSMgr node-1 through it).
#[tokio::test]
async fn remote_usecase_over_unix_sockets_with_nsmgrs_on_tcp() {
    // Removed on drop, also when the test fails.
    let tmp = tempfile::Builder::new()
        .prefix("nsm-sandbox-unix-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let sb = Sandbox::builder()
        .nodes(2)
        .unix_sockets(dir)
        .nsmgr_tcp(true)
        .build()
        .await
        .unwrap();
    let nsmgr1 = &sb.nodes[1].nsmgr;
    assert!(nsmgr1.url().to_string().starts_with("unix://"));
    assert!(nsmgr1.public_url().to_string().starts_with("tcp://"));
    register_service(&sb, "my-service").await;
    sb.nodes[1]
        .new_endpoint(EndpointSpec::new("final-endpoint", "my-service"), vec![])
        .await
        .unwrap();
    let found = sb
        .nse_registry()
        .find_all(
            &mut sb.ctx(TIMEOUT),
            nsm_api::registry::NetworkServiceEndpoint {
                name: "final-endpoint".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let urls: Vec<_> = found.iter().map(|f| f.item.url.clone()).collect();
    assert_eq!(urls, [nsmgr1.public_url().to_string()], "published URL");

    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), request("1", "my-service"))
        .await
        .unwrap();
    assert_eq!(names(&conn).len(), 6);
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_clean(&sb).await;
}
