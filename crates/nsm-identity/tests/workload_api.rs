//! The SPIFFE Workload API source against a fake agent (`nsm_identity::testing`): the agent's
//! security header, and an agent restart under live mTLS gRPC traffic (issue 5: established
//! connections keep working until the SVID expires, new SVIDs are picked up when the agent returns).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use nsm_api::url::NsmUrl;
use nsm_core::Clock;
use nsm_identity::testing::{FETCH_X509_SVID_PATH, FakeWorkloadApi, SECURITY_HEADER, pb};
use nsm_identity::{DevCa, TlsIdentity, TransportSecurity, WorkloadApiSource, X509Source};
use nsm_networkservice::grpc::{ServerPeer, Serving, client_channel_with, serve_tls};
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// How long anything may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);
/// Redial delays of the sources under test: a returning agent is seen within ~`MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(100);
const HOUR: Duration = Duration::from_secs(3600);

/// A plaintext gRPC channel to the agent's unix socket (what the spiffe crate dials, minus its header).
async fn agent_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    Endpoint::from_static("http://agent")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .unwrap()
}

/// The first response of a raw `FetchX509SVID` call on `path`, with the given header values.
async fn fetch_raw(
    channel: Channel,
    path: &'static str,
    header: &[&'static str],
) -> Result<pb::X509SvidResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(pb::X509SvidRequest {});
    for v in header {
        req.metadata_mut().append(
            SECURITY_HEADER,
            tonic::metadata::MetadataValue::from_static(v),
        );
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let mut stream = grpc
        .server_streaming(req, path, tonic_prost::ProstCodec::default())
        .await?
        .into_inner();
    Ok(stream.message().await?.expect("one response"))
}

#[tokio::test]
async fn fake_agent_checks_the_security_header_like_spire() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let ca = DevCa::new("example.org").unwrap();
    let a = ca.material("nse", HOUR).unwrap();
    let agent = FakeWorkloadApi::start(&sock, &a).await.unwrap();
    let channel = agent_channel(&sock).await;

    for header in [&[][..], &["false"], &["true", "true"]] {
        let err = fetch_raw(channel.clone(), FETCH_X509_SVID_PATH, header)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{header:?}");
        assert_eq!(err.message(), "security header missing from request");
    }
    assert_eq!(agent.refused_calls(), 3);

    let resp = fetch_raw(channel.clone(), FETCH_X509_SVID_PATH, &["true"])
        .await
        .unwrap();
    assert_eq!(resp.svids.len(), 1);
    let svid = &resp.svids[0];
    assert_eq!(svid.spiffe_id, "spiffe://example.org/nse");
    assert_eq!(svid.x509_svid, a.svid.chain()[0].to_vec());
    assert_eq!(svid.x509_svid_key, a.svid.key_der());
    assert_eq!(svid.bundle, a.bundle.roots()[0].to_vec());
    assert_eq!(agent.served_calls(), 1);

    let err = fetch_raw(channel, "/SpiffeWorkloadAPI/FetchJWTSVID", &["true"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    agent.stop().await.unwrap();
    assert!(!sock.exists());
}

/// The leaf certificate (DER) a source presents now.
fn leaf(src: &impl X509Source) -> Vec<u8> {
    src.current().svid.chain()[0].to_vec()
}

/// Polls `cond` every 5 ms until it holds; fails after [`DEADLINE`]. Returns how long it took.
async fn wait_for(what: &str, cond: impl Fn() -> bool) -> Duration {
    let start = Clock::system().instant();
    while !cond() {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// A health check on `channel` (a real call over the channel's mTLS connection).
async fn check(channel: &Channel) -> Result<(), tonic::Status> {
    tokio::time::timeout(
        DEADLINE,
        HealthClient::new(channel.clone()).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("health check"))?
    .map(|_| ())
}

/// Dials the server with a fresh channel (a new TLS handshake); the peer holds what the server presented.
async fn dial(
    serving: &Serving,
    client: &Arc<TlsIdentity>,
) -> Result<(Channel, ServerPeer), nsm_core::NsmError> {
    client_channel_with(
        serving.url(),
        Duration::from_secs(5),
        &TransportSecurity::Tls(client.clone()),
    )
    .await
}

/// The server's leaf certificate (PEM) as the client saw it at its last handshake.
fn presented(peer: &ServerPeer) -> String {
    peer.get().unwrap().certificate_pem.unwrap().to_string()
}

/// Two parties, each with its own `WorkloadApiSource` on one agent, talking gRPC over mTLS.
struct Mesh {
    server_src: Arc<WorkloadApiSource>,
    client_src: Arc<WorkloadApiSource>,
    client: Arc<TlsIdentity>,
    serving: Serving,
}

async fn mesh(agent: &FakeWorkloadApi, dir: &Path) -> Mesh {
    let endpoint = agent.endpoint();
    let connect =
        || WorkloadApiSource::connect_with_backoff(Some(&endpoint), MIN_BACKOFF, MAX_BACKOFF);
    let server_src = tokio::time::timeout(DEADLINE, connect())
        .await
        .unwrap()
        .unwrap();
    let client_src = tokio::time::timeout(DEADLINE, connect())
        .await
        .unwrap()
        .unwrap();
    let server = TlsIdentity::new(server_src.clone()).unwrap();
    let client = TlsIdentity::new(client_src.clone()).unwrap();
    let router = Server::builder().add_service(nsm_api::health::health_service(&["nse"]).await);
    let serving = serve_tls(&NsmUrl::Unix(dir.join("nse.sock")), router, server)
        .await
        .unwrap();
    Mesh {
        server_src,
        client_src,
        client,
        serving,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_keeps_connections_and_picks_up_the_new_svid() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let ca = DevCa::new("example.org").unwrap();
    let a = ca.material("nse", HOUR).unwrap();
    let leaf_a = a.svid.chain()[0].to_vec();

    let agent = FakeWorkloadApi::start(&sock, &a).await.unwrap();
    let m = mesh(&agent, dir.path()).await;
    assert_eq!(leaf(&*m.server_src), leaf_a);
    assert_eq!(leaf(&*m.client_src), leaf_a);
    let (established, peer) = dial(&m.serving, &m.client).await.unwrap();
    check(&established).await.unwrap();
    assert_eq!(presented(&peer), a.svid.leaf_pem());
    // Each source's initial sync and then its update stream.
    assert!(agent.served_calls() >= 2);

    // The agent dies. Let the sources see their streams cut and fail a few redials (the socket is
    // gone): ~3 backoff periods.
    agent.stop().await.unwrap();
    tokio::time::sleep(MAX_BACKOFF * 3).await;
    assert_eq!(leaf(&*m.server_src), leaf_a, "the server keeps SVID A");
    assert_eq!(leaf(&*m.client_src), leaf_a, "the client keeps SVID A");
    check(&established)
        .await
        .expect("the established connection keeps working");
    let (fresh, fresh_peer) = dial(&m.serving, &m.client)
        .await
        .expect("new connections work while A is valid");
    check(&fresh).await.unwrap();
    assert_eq!(presented(&fresh_peer), a.svid.leaf_pem());

    // The agent returns on the same socket with a new SVID for the same SPIFFE ID (new key, serial).
    let b = ca.material("nse", HOUR).unwrap();
    let leaf_b = b.svid.chain()[0].to_vec();
    assert_ne!(leaf_a, leaf_b);
    let agent = FakeWorkloadApi::start(&sock, &b).await.unwrap();
    let took = wait_for("both sources pick up SVID B", || {
        leaf(&*m.server_src) == leaf_b && leaf(&*m.client_src) == leaf_b
    })
    .await;
    eprintln!("SVID B picked up {took:?} after the agent returned");
    assert_eq!(
        m.server_src.current().svid.spiffe_id(),
        "spiffe://example.org/nse"
    );
    assert!(agent.served_calls() >= 2, "both sources redialed");
    check(&established)
        .await
        .expect("the connection established under A keeps working");
    check(&fresh).await.unwrap();
    let (after, after_peer) = dial(&m.serving, &m.client).await.unwrap();
    check(&after).await.unwrap();
    assert_eq!(
        presented(&after_peer),
        b.svid.leaf_pem(),
        "new handshakes present B"
    );

    // A rotation on the live stream is followed as well.
    let c = ca.material("nse", HOUR).unwrap();
    let leaf_c = c.svid.chain()[0].to_vec();
    agent.set(&c);
    wait_for("both sources follow the rotation to C", || {
        leaf(&*m.server_src) == leaf_c && leaf(&*m.client_src) == leaf_c
    })
    .await;
    check(&established).await.unwrap();
    let (rotated, rotated_peer) = dial(&m.serving, &m.client).await.unwrap();
    check(&rotated).await.unwrap();
    assert_eq!(presented(&rotated_peer), c.svid.leaf_pem());

    m.serving.stop().await.unwrap();
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_agent_gone_new_connections_fail_once_the_svid_expires() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let ca = DevCa::new("example.org").unwrap();
    // NotAfter has second precision: A expires 2-3 s from now.
    let a = ca.material("nse", Duration::from_secs(3)).unwrap();
    let not_after = a.svid.not_after();

    let agent = FakeWorkloadApi::start(&sock, &a).await.unwrap();
    let m = mesh(&agent, dir.path()).await;
    let (established, _) = dial(&m.serving, &m.client).await.unwrap();
    check(&established).await.unwrap();
    agent.stop().await.unwrap();

    // While A is valid new connections work (the test above). Past NotAfter (inclusive, to the
    // second) a handshake presenting A is refused.
    let clock = Clock::system();
    while clock.now() <= not_after + Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = dial(&m.serving, &m.client)
        .await
        .expect_err("a new connection with an expired SVID must fail");
    assert!(err.to_string().contains("certificate expired"), "{err}");

    // The agent returns with B: new connections work again.
    let b = ca.material("nse", HOUR).unwrap();
    let leaf_b = b.svid.chain()[0].to_vec();
    let agent = FakeWorkloadApi::start(&sock, &b).await.unwrap();
    wait_for("both sources pick up SVID B", || {
        leaf(&*m.server_src) == leaf_b && leaf(&*m.client_src) == leaf_b
    })
    .await;
    let (after, after_peer) = dial(&m.serving, &m.client).await.unwrap();
    check(&after).await.unwrap();
    assert_eq!(presented(&after_peer), b.svid.leaf_pem());

    m.serving.stop().await.unwrap();
    agent.stop().await.unwrap();
}
