//! sendfd → recvfd over real gRPC on unix sockets (plaintext and mTLS) and TCP.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nsm_api::mechanisms::MechanismType;
use nsm_api::url::NsmUrl;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::chain::Element;
use nsm_core::token::TestTokenGenerator;
use nsm_core::{Chain, Clock, Ctx, NetworkServiceServer, Next, Result};
use parking_lot::Mutex;
use tonic::transport::Server;

use super::{SendFdClient, SendFdServer};
use crate::clienturl::ClientUrlClient;
use crate::connect::ConnectClient;
use crate::dial::DialClient;
use crate::fdpass::testing::{open_fds_of, tls_pair};
use crate::grpc::testing::{FakeMetadata, TempDir, any_local_port, request};
use crate::grpc::{NetworkServiceGrpc, Serving, serve_with};
use crate::mechanisms::recvfd::tests::{Probe, kernel_with, temp_file};
use crate::mechanisms::recvfd::{RecvFdClient, RecvFdServer};
use nsm_identity::TransportSecurity;

/// Records the `inodeURL` values as they arrive on the wire.
#[derive(Default)]
struct Wire(Mutex<Vec<String>>);

#[async_trait]
impl NetworkServiceServer for Wire {
    async fn request(
        &self,
        ctx: &mut Ctx,
        r: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        for m in &r.mechanism_preferences {
            self.0
                .lock()
                .push(m.inode_url().unwrap_or_default().to_string());
        }
        next.request(ctx, r).await
    }
    async fn close(&self, ctx: &mut Ctx, c: Connection, next: Next) -> Result<()> {
        next.close(ctx, c).await
    }
    fn name(&self) -> &'static str {
        "wire"
    }
}

struct Mesh {
    _serving: Serving,
    client: Chain,
    wire: Arc<Wire>,
    probe: Arc<Probe>,
}

async fn mesh(url: &NsmUrl, server: TransportSecurity, client: TransportSecurity) -> Mesh {
    let (wire, probe) = (Arc::new(Wire::default()), Arc::new(Probe::default()));
    let served = Chain::new(
        "nsmgr",
        vec![
            Arc::new(FakeMetadata::default()),
            wire.clone(),
            Arc::new(RecvFdServer::new()),
            Arc::new(SendFdServer::new()),
            probe.clone(),
        ],
    );
    let router = Server::builder()
        .add_service(NetworkServiceGrpc::new(served, Clock::system()).into_service());
    let serving = serve_with(url, router, &server).await.unwrap();
    let elements: Vec<Element> = vec![
        Arc::new(FakeMetadata::default()),
        Arc::new(ClientUrlClient::new(serving.url().clone())),
        Arc::new(DialClient::new(Duration::from_secs(2)).with_security(client)),
        Arc::new(RecvFdClient::new()),
        Arc::new(SendFdClient::new()),
        Arc::new(ConnectClient::new(Arc::new(TestTokenGenerator::default()))),
    ];
    Mesh {
        _serving: serving,
        client: Chain::new("nsc", elements),
        wire,
        probe,
    }
}

fn ctx() -> Ctx {
    Ctx::new(Clock::system()).with_timeout(Duration::from_secs(5))
}

/// The client's file goes as an fd: `inode://` on the wire, `/proc/<pid>/fd/<n>` behind recvfd,
/// the original value in the answer.
async fn client_file_crosses(server: TransportSecurity, client: TransportSecurity) {
    let dir = TempDir::new();
    let file = temp_file(&dir, "client-netns");
    let m = mesh(&dir.socket("nsmgr.sock"), server, client).await;
    let original = format!("file://{}", file.display());
    let mut r = request("c1");
    r.mechanism_preferences = vec![kernel_with(&original)];
    let conn = m.client.run_request(&mut ctx(), r).await.unwrap();

    let st = rustix::fs::stat(&file).unwrap();
    let inode = format!("inode://{}/{}", st.st_dev, st.st_ino);
    assert_eq!(
        m.wire.0.lock().as_slice(),
        std::slice::from_ref(&inode),
        "inode:// on the wire"
    );
    let behind = m.probe.seen.lock()[0].clone();
    let proc_fd = format!("file:///proc/{}/fd/", std::process::id());
    assert!(behind.starts_with(&proc_fd), "{behind}");
    let got = rustix::fs::stat(behind.trim_start_matches("file://")).unwrap();
    assert_eq!(
        (got.st_dev, got.st_ino),
        (st.st_dev, st.st_ino),
        "the same file"
    );
    assert_eq!(
        conn.mechanism.as_ref().unwrap().inode_url(),
        Some(original.as_str())
    );

    m.client.run_close(&mut ctx(), conn).await.unwrap();
    assert_eq!(m.probe.closed.lock().len(), 1);
    assert_eq!(open_fds_of(&file), 0, "nothing kept after Close");
}

#[tokio::test]
async fn a_client_file_crosses_a_plaintext_unix_connection() {
    client_file_crosses(TransportSecurity::Insecure, TransportSecurity::Insecure).await;
}

#[tokio::test]
async fn a_client_file_crosses_a_tls_unix_connection() {
    let (server, client) = tls_pair("/nsmgr", "/nsc");
    client_file_crosses(server, client).await;
}

#[tokio::test]
async fn an_endpoint_file_comes_back_with_the_answer() {
    let dir = TempDir::new();
    let file = temp_file(&dir, "endpoint-netns");
    let (server, client) = tls_pair("/nsmgr", "/nsc");
    let m = mesh(&dir.socket("nse.sock"), server, client).await;
    *m.probe.answer_url.lock() = Some(format!("file://{}", file.display()));
    let mut r = request("c1");
    r.mechanism_preferences = vec![MechanismType::Kernel.mechanism()];
    let conn = m.client.run_request(&mut ctx(), r).await.unwrap();
    let url = conn
        .mechanism
        .as_ref()
        .unwrap()
        .inode_url()
        .unwrap()
        .to_string();
    let proc_fd = format!("file:///proc/{}/fd/", std::process::id());
    assert!(url.starts_with(&proc_fd), "{url}");
    assert_eq!(open_fds_of(&file), 1, "held for the connection");
    m.client.run_close(&mut ctx(), conn).await.unwrap();
    assert_eq!(open_fds_of(&file), 0, "closed on Close");
}

#[tokio::test]
async fn over_tcp_values_pass_unchanged() {
    let dir = TempDir::new();
    let file = temp_file(&dir, "netns");
    let m = mesh(
        &any_local_port(),
        TransportSecurity::Insecure,
        TransportSecurity::Insecure,
    )
    .await;
    let original = format!("file://{}", file.display());
    let mut r = request("c1");
    r.mechanism_preferences = vec![kernel_with(&original)];
    m.client.run_request(&mut ctx(), r).await.unwrap();
    assert_eq!(m.wire.0.lock().as_slice(), std::slice::from_ref(&original));
    assert_eq!(m.probe.seen.lock().as_slice(), [original]);
}

#[tokio::test]
async fn a_missing_file_fails_the_request_naming_sendfd() {
    let dir = TempDir::new();
    let m = mesh(
        &dir.socket("s.sock"),
        TransportSecurity::Insecure,
        TransportSecurity::Insecure,
    )
    .await;
    let mut r = request("c1");
    r.mechanism_preferences = vec![kernel_with("file:///nonexistent/netns")];
    let e = m.client.run_request(&mut ctx(), r).await.unwrap_err();
    assert!(
        e.to_string().starts_with("sendfd") && e.to_string().contains("/nonexistent/netns"),
        "{e}"
    );
    assert!(m.wire.0.lock().is_empty());
}

/// An endpoint answering with its own copy of a file the client sent too (one network namespace for
/// the forwarder and the endpoint): `sendfd` swaps its own name back, `recvfd` claims the copy that
/// came with the answer and names it (the client's own `file://` value may be one only it can
/// open, such as `/proc/thread-self/ns/net`); a refresh keeps that name and no second copy; Close
/// closes it. Request+Close cycles leave nothing behind (the copies used to stay unclaimed on the
/// client's connection until `UNCLAIMED_TTL`).
#[tokio::test]
async fn an_answer_naming_the_clients_own_file_leaves_no_copy_behind() {
    let dir = TempDir::new();
    let file = temp_file(&dir, "shared-netns");
    let m = mesh(
        &dir.socket("nse.sock"),
        TransportSecurity::Insecure,
        TransportSecurity::Insecure,
    )
    .await;
    let original = format!("file://{}", file.display());
    *m.probe.answer_url.lock() = Some(original.clone());
    let proc_fd = format!("file:///proc/{}/fd/", std::process::id());
    let st = rustix::fs::stat(&file).unwrap();
    for i in 0..5 {
        let mut r = request(&format!("c{i}"));
        r.mechanism_preferences = vec![kernel_with(&original)];
        let conn = m.client.run_request(&mut ctx(), r.clone()).await.unwrap();
        let url = conn
            .mechanism
            .as_ref()
            .unwrap()
            .inode_url()
            .unwrap()
            .to_string();
        assert!(url.starts_with(&proc_fd), "the copy, named: {url}");
        let got = rustix::fs::stat(url.trim_start_matches("file://")).unwrap();
        assert_eq!((got.st_dev, got.st_ino), (st.st_dev, st.st_ino));
        // recvfd behind the server holds the client's file for the connection too.
        assert_eq!(open_fds_of(&file), 2, "the client holds the copy");

        r.connection = Some(conn);
        let conn = m.client.run_request(&mut ctx(), r).await.unwrap();
        assert_eq!(
            conn.mechanism.as_ref().unwrap().inode_url(),
            Some(url.as_str()),
            "a refresh keeps the name"
        );
        assert_eq!(open_fds_of(&file), 2, "and no second copy");

        m.client.run_close(&mut ctx(), conn).await.unwrap();
        assert_eq!(open_fds_of(&file), 0, "nothing left after Close");
    }
}
