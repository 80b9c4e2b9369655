//! sendfd → recvfd over real gRPC on unix sockets (plaintext and mTLS) and TCP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nsm_api::mechanisms::{MechanismType, common};
use nsm_api::url::NsmUrl;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::chain::Element;
use nsm_core::token::TestTokenGenerator;
use nsm_core::{Chain, Clock, Ctx, NetworkServiceServer, Next, Result};
use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::transport::Server;

use super::{SendFdClient, SendFdServer};
use crate::clienturl::ClientUrlClient;
use crate::connect::ConnectClient;
use crate::dial::DialClient;
use crate::fdpass::testing::{assert_missing_fd, open_fds_of, tls_pair};
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

/// Which fd-passing elements a mesh runs besides the client's `sendfd` (all by default; leaving one
/// out stands in for a peer without it, such as an older one).
#[derive(Debug, Clone, Copy)]
struct Elements {
    recvfd_server: bool,
    sendfd_server: bool,
    recvfd_client: bool,
}

impl Default for Elements {
    fn default() -> Self {
        Self {
            recvfd_server: true,
            sendfd_server: true,
            recvfd_client: true,
        }
    }
}

async fn mesh(url: &NsmUrl, server: TransportSecurity, client: TransportSecurity) -> Mesh {
    mesh_with(url, server, client, Elements::default()).await
}

async fn mesh_with(
    url: &NsmUrl,
    server: TransportSecurity,
    client: TransportSecurity,
    with: Elements,
) -> Mesh {
    let (wire, probe) = (Arc::new(Wire::default()), Arc::new(Probe::default()));
    let mut served: Vec<Element> = vec![Arc::new(FakeMetadata::default()), wire.clone()];
    if with.recvfd_server {
        served.push(Arc::new(RecvFdServer::new()));
    }
    if with.sendfd_server {
        served.push(Arc::new(SendFdServer::new()));
    }
    served.push(probe.clone());
    let router = Server::builder().add_service(
        NetworkServiceGrpc::new(Chain::new("nsmgr", served), Clock::system()).into_service(),
    );
    let serving = serve_with(url, router, &server).await.unwrap();
    let mut elements: Vec<Element> = vec![
        Arc::new(FakeMetadata::default()),
        Arc::new(ClientUrlClient::new(serving.url().clone())),
        Arc::new(DialClient::new(Duration::from_secs(2)).with_security(client)),
    ];
    if with.recvfd_client {
        elements.push(Arc::new(RecvFdClient::new()));
    }
    elements.push(Arc::new(SendFdClient::new()));
    elements.push(Arc::new(ConnectClient::new(Arc::new(
        TestTokenGenerator::default(),
    ))));
    Mesh {
        _serving: serving,
        client: Chain::new("nsc", elements),
        wire,
        probe,
    }
}

/// A file to pass and a mesh on a unix socket in the same temporary directory.
struct FileMesh {
    _dir: TempDir,
    file: PathBuf,
    /// `file://<file>`.
    original: String,
    m: Mesh,
}

impl FileMesh {
    /// In plaintext.
    async fn new(with: Elements) -> Self {
        Self::with_security(
            with,
            TransportSecurity::Insecure,
            TransportSecurity::Insecure,
        )
        .await
    }

    async fn with_security(
        with: Elements,
        server: TransportSecurity,
        client: TransportSecurity,
    ) -> Self {
        let dir = TempDir::new();
        let file = temp_file(&dir, "netns");
        let m = mesh_with(&dir.socket("s.sock"), server, client, with).await;
        let original = format!("file://{}", file.display());
        Self {
            _dir: dir,
            file,
            original,
            m,
        }
    }

    /// A request offering KERNEL with the file.
    fn request(&self, id: &str) -> NetworkServiceRequest {
        let mut r = request(id);
        r.mechanism_preferences = vec![kernel_with(&self.original)];
        r
    }

    /// The client's Request offering the file (see [`Self::request`]), established.
    async fn requested(&self, id: &str) -> Connection {
        self.m
            .client
            .run_request(&mut ctx(), self.request(id))
            .await
            .unwrap()
    }

    /// The client's Request offering KERNEL without a file, established.
    async fn requested_without_file(&self, id: &str) -> Connection {
        let mut r = request(id);
        r.mechanism_preferences = vec![MechanismType::Kernel.mechanism()];
        self.m.client.run_request(&mut ctx(), r).await.unwrap()
    }

    /// The endpoint answers naming the file as its own.
    fn endpoint_names_the_file(&self) {
        *self.m.probe.answer_url.lock() = Some(self.original.clone());
    }

    /// `inode://dev/ino` of the file.
    fn inode_url(&self) -> String {
        let st = rustix::fs::stat(&self.file).unwrap();
        format!("inode://{}/{}", st.st_dev, st.st_ino)
    }

    /// Fds of this process naming the file: held by an element or unclaimed on a connection.
    fn open_fds(&self) -> usize {
        open_fds_of(&self.file)
    }
}

/// The `inodeURL` of the answer, which names a received fd: `file:///proc/<our pid>/fd/<n>`.
fn received_url(conn: &Connection) -> String {
    let url = conn
        .mechanism
        .as_ref()
        .unwrap()
        .inode_url()
        .unwrap()
        .to_string();
    let proc_fd = format!("file:///proc/{}/fd/", std::process::id());
    assert!(url.starts_with(&proc_fd), "a received fd: {url}");
    url
}

fn ctx() -> Ctx {
    Ctx::new(Clock::system()).with_timeout(Duration::from_secs(5))
}

/// The client's file goes as an fd: `inode://` on the wire, `/proc/<pid>/fd/<n>` behind recvfd,
/// the original value in the answer.
async fn client_file_crosses(server: TransportSecurity, client: TransportSecurity) {
    let f = FileMesh::with_security(Elements::default(), server, client).await;
    let conn = f.requested("c1").await;

    let st = rustix::fs::stat(&f.file).unwrap();
    assert_eq!(
        f.m.wire.0.lock().as_slice(),
        [f.inode_url()],
        "inode:// on the wire"
    );
    let behind = f.m.probe.seen.lock()[0].clone();
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
        Some(f.original.as_str())
    );

    f.m.client.run_close(&mut ctx(), conn).await.unwrap();
    assert_eq!(f.m.probe.closed.lock().len(), 1);
    assert_eq!(f.open_fds(), 0, "nothing kept after Close");
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
    let (server, client) = tls_pair("/nsmgr", "/nsc");
    let f = FileMesh::with_security(Elements::default(), server, client).await;
    f.endpoint_names_the_file();
    let conn = f.requested_without_file("c1").await;
    received_url(&conn);
    assert_eq!(f.open_fds(), 1, "held for the connection");
    f.m.client.run_close(&mut ctx(), conn).await.unwrap();
    assert_eq!(f.open_fds(), 0, "closed on Close");
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
    let f = FileMesh::new(Elements::default()).await;
    f.endpoint_names_the_file();
    let st = rustix::fs::stat(&f.file).unwrap();
    for i in 0..5 {
        let r = f.request(&format!("c{i}"));
        let conn = f.m.client.run_request(&mut ctx(), r.clone()).await.unwrap();
        let url = received_url(&conn);
        let got = rustix::fs::stat(url.trim_start_matches("file://")).unwrap();
        assert_eq!((got.st_dev, got.st_ino), (st.st_dev, st.st_ino), "the copy");
        // recvfd behind the server holds the client's file for the connection too.
        assert_eq!(f.open_fds(), 2, "the client holds the copy");

        let mut refresh = r;
        refresh.connection = Some(conn);
        let conn = f.m.client.run_request(&mut ctx(), refresh).await.unwrap();
        assert_eq!(
            conn.mechanism.as_ref().unwrap().inode_url(),
            Some(url.as_str()),
            "a refresh keeps the name"
        );
        assert_eq!(f.open_fds(), 2, "and no second copy");

        f.m.client.run_close(&mut ctx(), conn).await.unwrap();
        assert_eq!(f.open_fds(), 0, "nothing left after Close");
    }
}

/// Go's `sendfd` server passes the closed connection's file back with the Close reply, and so does
/// ours: without a `recvfd` client it stays unclaimed on the client's connection (until
/// `UNCLAIMED_TTL`), as it does on a Go client.
#[tokio::test]
async fn the_server_passes_the_closed_connections_file_back() {
    let f = FileMesh::new(Elements {
        recvfd_client: false,
        ..Elements::default()
    })
    .await;
    let conn = f.requested("c1").await;
    assert_eq!(
        f.open_fds(),
        1,
        "the server's recvfd holds it; nothing came back"
    );
    f.m.client.run_close(&mut ctx(), conn).await.unwrap();
    assert_eq!(
        f.open_fds(),
        1,
        "the copy the Close reply carried, unclaimed"
    );
}

/// Our `recvfd` client claims that copy: right after Close nothing is left, on either side, for
/// a client file and for an endpoint's own.
#[tokio::test(start_paused = true)]
async fn a_close_leaves_no_fd_unclaimed() {
    let f = FileMesh::new(Elements::default()).await;
    let before = f.open_fds();
    let conn = f.requested("c1").await;
    let started = Instant::now();
    f.m.client.run_close(&mut ctx(), conn).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO, "nothing waited for");
    assert_eq!(f.open_fds(), before, "back where it was, immediately");

    f.endpoint_names_the_file();
    let conn = f.requested_without_file("c2").await;
    received_url(&conn);
    f.m.client.run_close(&mut ctx(), conn).await.unwrap();
    assert_eq!(f.open_fds(), before, "the endpoint's file too");
}

/// A server that passes nothing back on Close (no `sendfd`, as an older one): the Close does not
/// wait for the copy it could have sent.
#[tokio::test(start_paused = true)]
async fn a_close_to_a_server_that_sends_no_fd_completes_promptly() {
    let f = FileMesh::new(Elements {
        sendfd_server: false,
        ..Elements::default()
    })
    .await;
    let conn = f.requested("c1").await;
    let started = Instant::now();
    f.m.client.run_close(&mut ctx(), conn).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO, "nothing waited for");
    assert_eq!(f.m.probe.closed.lock().len(), 1);
    assert_eq!(f.open_fds(), 0);
}

/// Go's waiting case: a Close whose connection names an `inode://` URL itself (one taken from the
/// wire, such as a monitored connection) gets that fd back from the server, which holds the file.
#[tokio::test(start_paused = true)]
async fn a_close_naming_an_inode_url_gets_the_fd_back() {
    let f = FileMesh::new(Elements::default()).await;
    let mut conn = f.requested("c1").await;
    let inode = f.inode_url();
    conn.mechanism
        .as_mut()
        .unwrap()
        .set_param(common::INODE_URL, inode.clone());
    let started = Instant::now();
    f.m.client.run_close(&mut ctx(), conn).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO, "it came with the reply");
    let closed = f.m.probe.closed.lock().clone();
    assert!(closed[0].starts_with("file:///proc/"), "{closed:?}");
    assert_eq!(f.open_fds(), 0, "claimed and closed");
}

/// Bad input: a Close naming an `inode://` URL for which no fd comes (the server has neither
/// `recvfd` nor `sendfd`). As in Go, the downstream Close is done, then the fd is awaited until
/// the call's deadline and its absence fails the Close naming recvfd and the URL.
#[tokio::test(start_paused = true)]
async fn a_close_naming_an_inode_url_nobody_passes_fails_at_the_deadline() {
    let f = FileMesh::new(Elements {
        recvfd_server: false,
        sendfd_server: false,
        ..Elements::default()
    })
    .await;
    let mut conn = f.requested_without_file("c1").await;
    conn.mechanism
        .as_mut()
        .unwrap()
        .set_param(common::INODE_URL, "inode://4/4026532");
    let started = Instant::now();
    let mut close_ctx = Ctx::new(Clock::system()).with_timeout(Duration::from_secs(3));
    let e =
        f.m.client
            .run_close(&mut close_ctx, conn)
            .await
            .unwrap_err();
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(3),
        "bounded by the deadline"
    );
    assert_missing_fd(e, "inode://4/4026532");
    assert_eq!(
        f.m.probe.closed.lock().as_slice(),
        ["inode://4/4026532".to_string()],
        "closed downstream first"
    );
}
