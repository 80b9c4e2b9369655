//! Healing over real gRPC: nsc (begin, heal, dial, connect) → a served nsmgr with a monitor.

use std::sync::Arc;
use std::time::Duration;

use nsm_api::url::NsmUrl;
use nsm_api::{Connection, ConnectionEvent, ConnectionEventType, State};
use nsm_core::token::TestTokenGenerator;
use nsm_core::{Chain, Clock, Ctx, NsmError};

use super::HealClient;
use crate::begin::BeginClient;
use crate::clienturl::ClientUrlClient;
use crate::connect::ConnectClient;
use crate::dial::DialClient;
use crate::grpc::Serving;
use crate::grpc::testing::*;
use crate::monitor::MonitorServer;

struct Nsmgr {
    monitor: Arc<MonitorServer>,
    tail: Arc<Tail>,
    server: Serving,
}

async fn nsmgr(url: &NsmUrl, with_monitor: bool) -> Nsmgr {
    let monitor = Arc::new(MonitorServer::new());
    let tail = Arc::new(Tail::default());
    let chain = Chain::new(
        "nsmgr",
        vec![
            Arc::new(FakeUpdatePath("nsmgr")),
            Arc::new(FakeMetadata::default()),
            monitor.clone(),
            tail.clone(),
        ],
    );
    let server = serve_chain(url, chain, with_monitor.then_some(&*monitor)).await;
    Nsmgr {
        monitor,
        tail,
        server,
    }
}

/// The client chain in Go's order: updatepath, begin, metadata, clienturl, heal, dial, connect.
fn nsc(url: NsmUrl, heal: Arc<HealClient>) -> Chain {
    Chain::new(
        "nsc",
        vec![
            Arc::new(FakeUpdatePath("nsc")),
            Arc::new(BeginClient::new()),
            Arc::new(FakeMetadata::default()),
            Arc::new(ClientUrlClient::new(url)),
            heal,
            Arc::new(DialClient::new(Duration::from_secs(1))),
            Arc::new(ConnectClient::new(Arc::new(TestTokenGenerator::default()))),
        ],
    )
}

fn publish_down(n: &Nsmgr) {
    let mut c: Connection = n.monitor.connections()["nsmgr-c1"].clone();
    c.state = State::Down as i32;
    n.monitor.publish(ConnectionEvent {
        r#type: ConnectionEventType::Update as i32,
        connections: [(c.id.clone(), c)].into(),
    });
}

#[tokio::test]
async fn down_triggers_a_reselect_request_and_close_ends_every_task() {
    let n = nsmgr(&any_local_port(), true).await;
    let heal = Arc::new(HealClient::new());
    let client = nsc(n.server.url().clone(), heal.clone());
    let conn = client
        .run_request(&mut Ctx::new(Clock::system()), request("c1"))
        .await
        .unwrap();
    assert_eq!(conn.network_service_endpoint_name, "nse-1");
    assert_eq!(heal.active_tasks(), 1, "monitoring the connection");

    publish_down(&n);
    eventually("a heal re-request", || n.tail.requests().len() == 2).await;
    let again = &n.tail.requests()[1];
    assert!(
        again.network_service_endpoint_name.is_empty(),
        "reselect clears the endpoint"
    );
    assert!(again.mechanism.is_none(), "reselect clears the mechanism");
    assert_eq!(
        again.path.as_ref().unwrap().path_segments[0].id,
        "c1",
        "same id and path"
    );
    let closed = n.tail.closed();
    assert_eq!(closed.len(), 1, "the old path was closed first");
    assert_eq!(
        closed[0].network_service_endpoint_name, "nse-1",
        "with what it had selected"
    );
    eventually("one monitor after healing", || heal.active_tasks() == 1).await;

    client
        .run_close(&mut Ctx::new(Clock::system()), conn)
        .await
        .unwrap();
    eventually("no heal task left", || heal.active_tasks() == 0).await;
}

#[tokio::test]
async fn close_while_healing_stops_retrying() {
    let n = nsmgr(&any_local_port(), true).await;
    let heal = Arc::new(HealClient::new());
    let client = nsc(n.server.url().clone(), heal.clone());
    let conn = client
        .run_request(&mut Ctx::new(Clock::system()), request("c1"))
        .await
        .unwrap();
    *n.tail.fail.lock() = Some(NsmError::unavailable("tail", "no endpoint"));
    publish_down(&n);
    eventually("two failed heal attempts", || n.tail.requests().len() >= 3).await;
    assert_eq!(heal.active_tasks(), 1, "still healing");

    client
        .run_close(&mut Ctx::new(Clock::system()), conn)
        .await
        .unwrap();
    eventually("no heal task left", || heal.active_tasks() == 0).await;
    let attempts = n.tail.requests().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(n.tail.requests().len(), attempts, "no attempt after Close");
}

#[tokio::test]
async fn a_restarted_next_hop_is_requested_again() {
    let dir = TempDir::new();
    let url = dir.socket("nsmgr.sock");
    let first = nsmgr(&url, true).await;
    let heal = Arc::new(HealClient::new());
    let client = nsc(url.clone(), heal.clone());
    let conn = client
        .run_request(&mut Ctx::new(Clock::system()), request("c1"))
        .await
        .unwrap();
    first.server.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = nsmgr(&url, true).await;
    eventually("a request at the restarted nsmgr", || {
        !second.tail.requests().is_empty()
    })
    .await;
    eventually("monitoring the new nsmgr", || {
        second.monitor.subscribers() == 1
    })
    .await;
    client
        .run_close(&mut Ctx::new(Clock::system()), conn)
        .await
        .unwrap();
    eventually("no heal task left", || heal.active_tasks() == 0).await;
}

#[tokio::test]
async fn a_next_hop_without_monitor_fails_the_request_and_closes_it() {
    let n = nsmgr(&any_local_port(), false).await;
    let heal = Arc::new(HealClient::new());
    let client = nsc(n.server.url().clone(), heal.clone());
    let err = client
        .run_request(&mut Ctx::new(Clock::system()), request("c1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unable to monitor"), "{err}");
    assert_eq!(n.tail.closes(), 1, "the just-made connection is closed");
    assert_eq!(heal.active_tasks(), 0);
}
