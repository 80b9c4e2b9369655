//! The server edge reached through dial + connect over real gRPC.

use std::sync::Arc;
use std::time::Duration;

use nsm_api::networkservice::network_service_client::NetworkServiceClient;
use nsm_api::url::NsmUrl;
use nsm_core::metadata::{ConnMetadata, Side};
use nsm_core::values::{IncomingToken, PeerInfo};
use nsm_core::{Chain, Clock, Ctx, NsmError};
use tonic::Code;

use super::testing::*;
use crate::dial::{ClientConn, DialClient};

fn served_chain(tail: Arc<Tail>) -> Chain {
    Chain::new(
        "nse",
        vec![
            Arc::new(FakeUpdatePath("nse")),
            Arc::new(FakeMetadata::default()),
            tail,
        ],
    )
}

fn nsc(url: NsmUrl, dial: Arc<DialClient>) -> Chain {
    dialing_chain(
        "nsc",
        url,
        dial,
        vec![
            Arc::new(FakeUpdatePath("nsc")),
            Arc::new(FakeMetadata::default()),
        ],
    )
}

async fn request_and_close(url: &NsmUrl, expect_remote_addr: bool) {
    let tail = Arc::new(Tail::default());
    let server = serve_chain(url, served_chain(tail.clone()), None).await;
    let dial = Arc::new(DialClient::new(Duration::from_secs(2)));
    let client = nsc(server.url().clone(), dial.clone());
    let clock = Clock::system();
    let mut ctx = Ctx::new(clock).with_timeout(Duration::from_secs(5));
    let conn = client.run_request(&mut ctx, request("c1")).await.unwrap();
    assert_eq!(conn.id, "c1", "the caller's id comes back");
    assert_eq!(conn.path.as_ref().unwrap().names(), ["nsc", "nse"]);
    assert_eq!(conn.network_service_endpoint_name, "nse-1");

    let seen = tail.last_ctx().unwrap();
    let token = seen
        .get::<IncomingToken>()
        .expect("the per-RPC token arrives");
    assert_eq!(token.token, "TestToken");
    let lifetime = token.expires.duration_since(clock.now()).unwrap();
    assert!(
        lifetime > Duration::from_secs(3590) && lifetime <= Duration::from_secs(3600),
        "{lifetime:?}"
    );
    let left = seen.remaining().expect("grpc-timeout becomes the deadline");
    assert!(
        left > Duration::from_secs(3) && left <= Duration::from_secs(5),
        "{left:?}"
    );
    let peer = seen.get::<PeerInfo>().unwrap();
    assert_eq!(
        peer.remote_addr
            .as_ref()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        expect_remote_addr
    );
    assert_eq!(
        dial.cached_urls(),
        [server.url().clone()],
        "one channel per next hop"
    );

    client.run_close(&mut Ctx::new(clock), conn).await.unwrap();
    assert_eq!(tail.closes(), 1);
    assert_eq!(
        dial.cached_urls(),
        [server.url().clone()],
        "the channel is kept a while after the last connection"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn request_and_close_over_tcp_carry_token_deadline_and_peer() {
    request_and_close(&any_local_port(), true).await;
}

#[tokio::test]
async fn request_and_close_over_a_unix_socket() {
    let dir = TempDir::new();
    let url = dir.socket("nse.sock");
    request_and_close(&url, false).await;
    assert!(
        !dir.0.join("nse.sock").exists(),
        "stop removes the socket file"
    );
}

#[tokio::test]
async fn connections_to_one_hop_share_a_channel() {
    let tail = Arc::new(Tail::default());
    let server = serve_chain(&any_local_port(), served_chain(tail.clone()), None).await;
    let dial = Arc::new(DialClient::new(Duration::from_secs(2)));
    let client = nsc(server.url().clone(), dial.clone());
    let a = client
        .run_request(&mut Ctx::new(Clock::system()), request("a"))
        .await
        .unwrap();
    let b = client
        .run_request(&mut Ctx::new(Clock::system()), request("b"))
        .await
        .unwrap();
    assert_eq!(dial.cached_urls().len(), 1);
    client
        .run_close(&mut Ctx::new(Clock::system()), a)
        .await
        .unwrap();
    assert_eq!(dial.cached_urls().len(), 1, "b still uses it");
    client
        .run_close(&mut Ctx::new(Clock::system()), b)
        .await
        .unwrap();
    assert_eq!(dial.cached_urls().len(), 1, "kept while idle");
    let c = client
        .run_request(&mut Ctx::new(Clock::system()), request("c"))
        .await
        .unwrap();
    client
        .run_close(&mut Ctx::new(Clock::system()), c)
        .await
        .unwrap();
    assert_eq!(dial.cached_urls().len(), 1, "reused, then idle again");

    tokio::time::pause();
    tokio::time::advance(crate::dial::IDLE_CHANNEL_TIMEOUT / 2).await;
    assert_eq!(dial.cached_urls().len(), 1, "not idle long enough yet");
    tokio::time::advance(crate::dial::IDLE_CHANNEL_TIMEOUT).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        dial.cached_urls().is_empty(),
        "dropped after the idle timeout"
    );
}

#[tokio::test]
async fn a_request_without_connection_is_invalid() {
    let server = serve_chain(&any_local_port(), served_chain(Arc::default()), None).await;
    let channel = super::client_channel(server.url(), Duration::from_secs(2))
        .await
        .unwrap();
    let err = NetworkServiceClient::new(channel)
        .request(nsm_api::NetworkServiceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn remote_errors_keep_their_code_and_name_the_hop() {
    let tail = Arc::new(Tail::default());
    *tail.fail.lock() = Some(NsmError::not_found("discover", "network service \"svc\""));
    let server = serve_chain(&any_local_port(), served_chain(tail), None).await;
    let client = nsc(
        server.url().clone(),
        Arc::new(DialClient::new(Duration::from_secs(2))),
    );
    let err = client
        .run_request(&mut Ctx::new(Clock::system()), request("c"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("connect: {}: discover: not found", server.url())),
        "{msg}"
    );
}

#[tokio::test]
async fn a_slow_next_hop_is_deadline_exceeded() {
    let tail = Arc::new(Tail::default());
    *tail.stall.lock() = Some(Duration::from_secs(5));
    let server = serve_chain(&any_local_port(), served_chain(tail), None).await;
    let client = nsc(
        server.url().clone(),
        Arc::new(DialClient::new(Duration::from_secs(2))),
    );
    let mut ctx = Ctx::new(Clock::system()).with_timeout(Duration::from_millis(300));
    let err = client
        .run_request(&mut ctx, request("c"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
}

#[tokio::test]
async fn dialing_a_dead_url_is_unavailable_and_stores_nothing() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = NsmUrl::Tcp {
        host: "127.0.0.1".into(),
        port,
    };
    let dial = Arc::new(DialClient::new(Duration::from_millis(500)));
    let client = dialing_chain("nsc", url.clone(), dial.clone(), vec![]);
    let md = Arc::new(ConnMetadata::default());
    let mut ctx = Ctx::new(Clock::system());
    ctx.set_metadata(Some(md.clone()));
    let err = client
        .run_request(&mut ctx, request("c"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.to_string().contains(&url.to_string()), "{err}");
    assert!(md.get::<ClientConn>(Side::Client).is_none());
    assert!(dial.cached_urls().is_empty());

    let dir = TempDir::new();
    let url = dir.socket("nobody.sock");
    let client = dialing_chain("nsc", url.clone(), dial.clone(), vec![]);
    let err = client
        .run_request(&mut ctx, request("c"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.to_string().contains("nobody.sock"), "{err}");
    assert!(md.get::<ClientConn>(Side::Client).is_none());
}

#[tokio::test]
async fn connect_without_dial_is_an_internal_error_naming_connect() {
    let client = Chain::new(
        "c",
        vec![Arc::new(crate::connect::ConnectClient::new(Arc::new(
            nsm_core::token::TestTokenGenerator::default(),
        )))],
    );
    let err = client
        .run_request(&mut Ctx::new(Clock::system()), request("c"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NsmError::Internal {
                element: "connect",
                ..
            }
        ),
        "{err}"
    );
}
