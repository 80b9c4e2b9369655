//! The monitor over real gRPC: event order, selectors, passthrough.

use std::sync::Arc;
use std::time::Duration;

use nsm_api::connection::MonitorScopeSelector;
use nsm_api::connection::monitor_connection_client::MonitorConnectionClient;
use nsm_api::url::NsmUrl;
use nsm_api::{ConnectionEvent, ConnectionEventType, PathSegment, State};
use nsm_core::{Chain, Clock, Ctx};
use tonic::Streaming;

use super::MonitorServer;
use crate::connect::ConnectServer;
use crate::dial::DialClient;
use crate::grpc::client_channel;
use crate::grpc::testing::*;

fn hop(
    name: &'static str,
    monitor: Arc<MonitorServer>,
    rest: Vec<nsm_core::chain::Element>,
) -> Chain {
    let mut elements: Vec<nsm_core::chain::Element> = vec![
        Arc::new(FakeUpdatePath(name)),
        Arc::new(FakeMetadata::default()),
        monitor,
    ];
    elements.extend(rest);
    Chain::new(name, elements)
}

async fn subscribe(url: &NsmUrl, names: &[&str]) -> Streaming<ConnectionEvent> {
    let channel = client_channel(url, Duration::from_secs(2)).await.unwrap();
    let selector = MonitorScopeSelector {
        path_segments: names.iter().map(|n| PathSegment::new(*n, "")).collect(),
    };
    MonitorConnectionClient::new(channel)
        .monitor_connections(selector)
        .await
        .unwrap()
        .into_inner()
}

async fn next_event(s: &mut Streaming<ConnectionEvent>) -> ConnectionEvent {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn subscribers_get_initial_state_then_updates_and_deletes_in_their_scope() {
    let monitor = Arc::new(MonitorServer::new());
    let server = serve_chain(
        &any_local_port(),
        hop("nsmgr", monitor.clone(), vec![Arc::new(Tail::default())]),
        Some(&monitor),
    )
    .await;
    let mut mine = subscribe(server.url(), &["nsc", "nsmgr"]).await;
    let mut others = subscribe(server.url(), &["other-nsc"]).await;
    let first = next_event(&mut mine).await;
    assert_eq!(first.r#type(), ConnectionEventType::InitialStateTransfer);
    assert!(first.connections.is_empty());
    assert_eq!(
        next_event(&mut others).await.r#type(),
        ConnectionEventType::InitialStateTransfer
    );

    let client = dialing_chain(
        "nsc",
        server.url().clone(),
        Arc::new(DialClient::new(Duration::from_secs(2))),
        vec![
            Arc::new(FakeUpdatePath("nsc")),
            Arc::new(FakeMetadata::default()),
        ],
    );
    let conn = client
        .run_request(&mut Ctx::new(Clock::system()), request("c1"))
        .await
        .unwrap();
    let update = next_event(&mut mine).await;
    assert_eq!(update.r#type(), ConnectionEventType::Update);
    let seen = &update.connections["nsmgr-c1"];
    assert_eq!(
        seen.path.as_ref().unwrap().index,
        1,
        "published with this hop's view"
    );
    assert_eq!(monitor.connections().len(), 1);

    // A late subscriber starts from the current state.
    let mut late = subscribe(server.url(), &[]).await;
    let initial = next_event(&mut late).await;
    assert_eq!(initial.connections.keys().collect::<Vec<_>>(), ["nsmgr-c1"]);

    client
        .run_close(&mut Ctx::new(Clock::system()), conn)
        .await
        .unwrap();
    let delete = next_event(&mut mine).await;
    assert_eq!(delete.r#type(), ConnectionEventType::Delete);
    assert!(delete.connections.contains_key("nsmgr-c1"));
    assert!(monitor.connections().is_empty());
    assert_eq!(
        next_event(&mut late).await.r#type(),
        ConnectionEventType::Delete
    );
    let nothing = tokio::time::timeout(Duration::from_millis(200), others.message()).await;
    assert!(
        nothing.is_err(),
        "out-of-scope subscriber gets nothing after the initial state"
    );
}

/// nsc → nsmgr (monitor + connect) → nse (monitor); returns the nsmgr's monitor and servers.
struct TwoHops {
    nsmgr_monitor: Arc<MonitorServer>,
    nse_monitor: Arc<MonitorServer>,
    nsmgr: Serving,
    nse: Serving,
    nse_tail: Arc<Tail>,
}

async fn two_hops(nse_url: &NsmUrl) -> TwoHops {
    two_hops_with(nse_url, MonitorServer::new()).await
}

async fn two_hops_with(nse_url: &NsmUrl, nsmgr_monitor: MonitorServer) -> TwoHops {
    let nse_monitor = Arc::new(MonitorServer::new());
    let nse_tail = Arc::new(Tail::default());
    let nse = serve_chain(
        nse_url,
        hop("nse", nse_monitor.clone(), vec![nse_tail.clone()]),
        Some(&nse_monitor),
    )
    .await;
    let nsmgr_monitor = Arc::new(nsmgr_monitor);
    let towards_nse = dialing_chain(
        "nsmgr-client",
        nse.url().clone(),
        Arc::new(DialClient::new(Duration::from_secs(2))),
        vec![],
    );
    let nsmgr_chain = hop(
        "nsmgr",
        nsmgr_monitor.clone(),
        vec![Arc::new(ConnectServer::new(towards_nse))],
    );
    let nsmgr = serve_chain(&any_local_port(), nsmgr_chain, Some(&nsmgr_monitor)).await;
    TwoHops {
        nsmgr_monitor,
        nse_monitor,
        nsmgr,
        nse,
        nse_tail,
    }
}

use crate::grpc::Serving;

#[tokio::test]
async fn passthrough_publishes_down_when_the_next_hop_dies_and_stops_on_close() {
    let dir = TempDir::new();
    let hops = two_hops(&dir.socket("nse.sock")).await;
    let client = dialing_chain(
        "nsc",
        hops.nsmgr.url().clone(),
        Arc::new(DialClient::new(Duration::from_secs(2))),
        vec![
            Arc::new(FakeUpdatePath("nsc")),
            Arc::new(FakeMetadata::default()),
        ],
    );
    let conn = client
        .run_request(&mut Ctx::new(Clock::system()), request("c1"))
        .await
        .unwrap();
    assert_eq!(conn.path.as_ref().unwrap().names(), ["nsc", "nsmgr", "nse"]);
    assert_eq!(hops.nsmgr_monitor.passthrough_loops(), 1);

    let mut watch = subscribe(hops.nsmgr.url(), &["nsc"]).await;
    let initial = next_event(&mut watch).await;
    assert_eq!(initial.connections["nsmgr-c1"].state(), State::Up);

    hops.nse.stop().await.unwrap();
    let down = next_event(&mut watch).await;
    assert_eq!(down.r#type(), ConnectionEventType::Update);
    let c = &down.connections["nsmgr-c1"];
    assert_eq!(c.state(), State::Down, "a broken next hop shows as DOWN");
    assert_eq!(
        c.path.as_ref().unwrap().index,
        1,
        "with the nsmgr's view of the path"
    );
    assert_eq!(hops.nsmgr_monitor.passthrough_loops(), 0);
    drop(hops.nse_tail);
}

#[tokio::test]
async fn passthrough_relays_next_hop_changes_and_close_stops_the_loop() {
    let hops = two_hops(&any_local_port()).await;
    let client = dialing_chain(
        "nsc",
        hops.nsmgr.url().clone(),
        Arc::new(DialClient::new(Duration::from_secs(2))),
        vec![
            Arc::new(FakeUpdatePath("nsc")),
            Arc::new(FakeMetadata::default()),
        ],
    );
    let conn = client
        .run_request(&mut Ctx::new(Clock::system()), request("c1"))
        .await
        .unwrap();
    assert_eq!(hops.nsmgr_monitor.passthrough_loops(), 1);
    client
        .run_close(&mut Ctx::new(Clock::system()), conn)
        .await
        .unwrap();
    eventually("the passthrough loop to stop", || {
        hops.nsmgr_monitor.passthrough_loops() == 0
    })
    .await;
    assert_eq!(hops.nse_tail.closes(), 1, "close went all the way");
    assert!(
        hops.nsmgr_monitor.connections().is_empty(),
        "no DOWN re-added after DELETE"
    );
}

#[tokio::test]
async fn a_next_hop_without_monitor_fails_the_request_and_closes_it() {
    let nse_tail = Arc::new(Tail::default());
    let nse = serve_chain(
        &any_local_port(),
        Chain::new(
            "nse",
            vec![Arc::new(FakeMetadata::default()), nse_tail.clone()],
        ),
        None,
    )
    .await;
    let monitor = Arc::new(MonitorServer::new());
    let towards_nse = dialing_chain(
        "nsmgr-client",
        nse.url().clone(),
        Arc::new(DialClient::new(Duration::from_secs(2))),
        vec![],
    );
    let chain = hop(
        "nsmgr",
        monitor.clone(),
        vec![Arc::new(ConnectServer::new(towards_nse))],
    );
    let err = chain
        .run_request(&mut Ctx::new(Clock::system()), request("c1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unable to monitor"), "{err}");
    assert_eq!(nse_tail.closes(), 1, "the just-made connection is closed");
    assert!(monitor.connections().is_empty());
}

fn nsc_towards(url: &NsmUrl) -> Chain {
    dialing_chain(
        "nsc",
        url.clone(),
        Arc::new(DialClient::new(Duration::from_secs(2))),
        vec![
            Arc::new(FakeUpdatePath("nsc")),
            Arc::new(FakeMetadata::default()),
        ],
    )
}

#[tokio::test]
async fn connections_through_a_hop_share_one_stream_to_the_next_hop() {
    let hops = two_hops_with(
        &any_local_port(),
        MonitorServer::new().with_upstream_idle_timeout(Duration::from_millis(300)),
    )
    .await;
    let client = nsc_towards(hops.nsmgr.url());
    let mut conns = Vec::new();
    for i in 0..5 {
        let conn = client
            .run_request(&mut Ctx::new(Clock::system()), request(&format!("c{i}")))
            .await
            .unwrap();
        conns.push(conn);
    }
    assert_eq!(hops.nsmgr_monitor.passthrough_loops(), 5);
    assert_eq!(
        hops.nsmgr_monitor.upstream_streams(),
        1,
        "one stream, 5 connections"
    );
    assert_eq!(
        hops.nse_monitor.subscribers(),
        1,
        "the next hop sees one subscriber"
    );

    // A change of one connection at the next hop reaches that connection only.
    let mut watch = subscribe(hops.nsmgr.url(), &["nsc"]).await;
    let initial = next_event(&mut watch).await;
    assert_eq!(initial.connections.len(), 5);
    let mut at_nse = hops.nse_monitor.connections()["nse-nsmgr-c3"].clone();
    at_nse.state = State::Down as i32;
    hops.nse_monitor.publish(ConnectionEvent {
        r#type: ConnectionEventType::Update as i32,
        connections: [(at_nse.id.clone(), at_nse)].into(),
    });
    let down = next_event(&mut watch).await;
    assert_eq!(down.connections.keys().collect::<Vec<_>>(), ["nsmgr-c3"]);
    assert_eq!(down.connections["nsmgr-c3"].state(), State::Down);
    let nothing = tokio::time::timeout(Duration::from_millis(200), watch.message()).await;
    assert!(nothing.is_err(), "no other connection changed");

    // Closing connections unregisters them; the stream outlives them for the idle timeout.
    for conn in conns {
        client
            .run_close(&mut Ctx::new(Clock::system()), conn)
            .await
            .unwrap();
    }
    assert_eq!(hops.nsmgr_monitor.passthrough_loops(), 0);
    assert_eq!(hops.nsmgr_monitor.upstream_streams(), 1, "kept while idle");
    let again = client
        .run_request(&mut Ctx::new(Clock::system()), request("c9"))
        .await
        .unwrap();
    assert_eq!(
        hops.nse_monitor.subscribers(),
        1,
        "the idle stream was reused"
    );
    client
        .run_close(&mut Ctx::new(Clock::system()), again)
        .await
        .unwrap();
    eventually("the idle stream to close", || {
        hops.nsmgr_monitor.upstream_streams() == 0 && hops.nse_monitor.subscribers() == 0
    })
    .await;
}

#[tokio::test]
async fn a_broken_shared_stream_brings_every_connection_down() {
    let hops = two_hops(&any_local_port()).await;
    let client = nsc_towards(hops.nsmgr.url());
    for i in 0..3 {
        client
            .run_request(&mut Ctx::new(Clock::system()), request(&format!("c{i}")))
            .await
            .unwrap();
    }
    let mut watch = subscribe(hops.nsmgr.url(), &["nsc"]).await;
    next_event(&mut watch).await;
    hops.nse.stop().await.unwrap();
    let mut down = std::collections::BTreeSet::new();
    while down.len() < 3 {
        let ev = next_event(&mut watch).await;
        for (id, c) in ev.connections {
            assert_eq!(c.state(), State::Down);
            down.insert(id);
        }
    }
    assert_eq!(hops.nsmgr_monitor.passthrough_loops(), 0);
    assert_eq!(
        hops.nsmgr_monitor.upstream_streams(),
        0,
        "the broken stream is gone"
    );
}
