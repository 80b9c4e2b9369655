//! sendfd → connect → gRPC (plaintext and mTLS unix sockets, TCP) → recvfd → memory: the endpoint's
//! socket crosses as an fd and the registry reaches the endpoint through it after the socket's path
//! is gone.

use std::time::Duration;

use nsm_api::url::NsmUrl;
use nsm_core::Clock;
use nsm_core::registry::{RegistryChain, RegistryElement, collect_found};
use nsm_identity::TransportSecurity;
use nsm_networkservice::fdpass::testing::{TempDir, open_fds_of, tls_pair};
use nsm_networkservice::grpc::{Serving, serve_with};
use tonic::transport::Server;

use super::*;
use crate::clienturl::ClientUrlServer;
use crate::connect::{ConnectServer, Dialer};
use crate::grpc::NetworkServiceEndpointRegistryGrpc;
use crate::memory::MemoryServer;
use crate::recvfd::tests::endpoint_socket;
use crate::recvfd::{RecvFdClient, RecvFdServer};

fn dialer(security: TransportSecurity) -> Option<Dialer> {
    security.tls()?;
    Some(Arc::new(move |url: NsmUrl, timeout: Duration| {
        let security = security.clone();
        Box::pin(async move {
            nsm_networkservice::grpc::client_channel_with(&url, timeout, &security).await
        })
    }))
}

/// A registry served at `url` (recvfd → sendfd → memory, as in the NSMgr).
struct Registry {
    serving: Serving,
    recvfd: Arc<RecvFdServer>,
    memory: Arc<MemoryServer<Nse>>,
}

async fn registry(url: &NsmUrl, security: &TransportSecurity) -> Registry {
    let recvfd = Arc::new(RecvFdServer::new());
    let memory = Arc::new(MemoryServer::<Nse>::new());
    let chain = RegistryChain::new(
        "nsmgr-nse-registry",
        vec![
            recvfd.clone() as RegistryElement<Nse>,
            Arc::new(SendFdServer::new()),
            memory.clone(),
        ],
    );
    let router = Server::builder().add_service(
        NetworkServiceEndpointRegistryGrpc::new(chain, Clock::system()).into_service(),
    );
    Registry {
        serving: serve_with(url, router, security).await.unwrap(),
        recvfd,
        memory,
    }
}

/// The endpoint's registry client: clienturl → sendfd → connect.
fn client(url: &NsmUrl, security: TransportSecurity) -> RegistryChain<Nse> {
    RegistryChain::new(
        "nse-registry-client",
        vec![
            Arc::new(ClientUrlServer::new(url.clone())) as RegistryElement<Nse>,
            Arc::new(SendFdClient::new()),
            Arc::new(
                ConnectServer::<Nse>::new(Duration::from_secs(2)).with_dialer(dialer(security)),
            ),
        ],
    )
}

fn ctx() -> Ctx {
    Ctx::new(Clock::system()).with_timeout(Duration::from_secs(5))
}

fn nse_at(url: &str) -> Nse {
    Nse {
        name: "nse-1".into(),
        url: url.into(),
        ..Default::default()
    }
}

async fn socket_crosses(server: TransportSecurity, client_security: TransportSecurity) {
    let dir = TempDir::new();
    // The endpoint's socket: here a registry too, so that a gRPC call can prove it is reached.
    let nse_path = dir.0.join("nse.sock");
    let endpoint = registry(&NsmUrl::Unix(nse_path.clone()), &server).await;
    let witness = dir.0.join("nse.witness");
    std::fs::hard_link(&nse_path, &witness).unwrap();
    let r = registry(&NsmUrl::Unix(dir.0.join("nsmgr.sock")), &server).await;
    let c = client(r.serving.url(), client_security.clone());
    let original = format!("unix://{}", nse_path.display());

    let reg = c.run_register(&mut ctx(), nse_at(&original)).await.unwrap();
    assert_eq!(reg.url, original, "the endpoint sees its own URL");
    let stored = r.memory.get("nse-1").unwrap().url;
    let prefix = format!("unix:///proc/{}/fd/", std::process::id());
    assert!(stored.starts_with(&prefix), "{stored}");
    let st = rustix::fs::stat(&nse_path).unwrap();
    let inode = format!("inode://{}/{}", st.st_dev, st.st_ino);
    assert_eq!(
        r.recvfd.held("nse-1").unwrap().0,
        inode,
        "inode:// on the wire"
    );
    assert_eq!(open_fds_of(&witness), 1, "held by the registry");

    // A refresh passes the socket again: the same name, no second copy kept.
    let again = c.run_register(&mut ctx(), reg).await.unwrap();
    assert_eq!(again.url, original);
    assert_eq!(r.memory.get("nse-1").unwrap().url, stored);
    assert_eq!(open_fds_of(&witness), 1);

    // The socket's path disappears; the registry still reaches the endpoint through the fd.
    std::fs::remove_file(&nse_path).unwrap();
    let seed = RegistryChain::new(
        "seed",
        vec![endpoint.memory.clone() as RegistryElement<Nse>],
    );
    seed.run_register(&mut ctx(), nse_at("tcp://127.0.0.1:1"))
        .await
        .unwrap();
    let through_fd = client(&NsmUrl::parse(&stored).unwrap(), client_security);
    let found = collect_found(
        through_fd
            .run_find(&mut ctx(), Query::default())
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(found.len(), 1, "dialled unix:///proc/<pid>/fd/<n>");

    // Unregister without the path (sendfd cannot pass it any more) still closes the fd.
    c.run_unregister(&mut ctx(), nse_at(&original))
        .await
        .unwrap();
    assert!(r.memory.get("nse-1").is_none());
    assert_eq!(r.recvfd.held_count(), 0);
    assert_eq!(open_fds_of(&witness), 0, "closed on Unregister");
}

#[tokio::test]
async fn a_socket_crosses_a_plaintext_unix_connection() {
    socket_crosses(TransportSecurity::Insecure, TransportSecurity::Insecure).await;
}

#[tokio::test]
async fn a_socket_crosses_a_tls_unix_connection() {
    let (server, client) = tls_pair("/nsmgr", "/nse");
    socket_crosses(server, client).await;
}

#[tokio::test]
async fn over_tcp_the_url_passes_unchanged() {
    let dir = TempDir::new();
    let (_listener, path, witness) = endpoint_socket(&dir, "nse");
    let tcp = NsmUrl::parse("tcp://127.0.0.1:0").unwrap();
    let r = registry(&tcp, &TransportSecurity::Insecure).await;
    let c = client(r.serving.url(), TransportSecurity::Insecure);
    let original = format!("unix://{}", path.display());
    let reg = c.run_register(&mut ctx(), nse_at(&original)).await.unwrap();
    assert_eq!(reg.url, original);
    assert_eq!(r.memory.get("nse-1").unwrap().url, original);
    assert_eq!(open_fds_of(&witness), 0);
}

#[tokio::test]
async fn a_missing_socket_fails_naming_sendfd_and_nothing_is_registered() {
    let dir = TempDir::new();
    let r = registry(
        &NsmUrl::Unix(dir.0.join("nsmgr.sock")),
        &TransportSecurity::Insecure,
    )
    .await;
    let c = client(r.serving.url(), TransportSecurity::Insecure);
    let url = format!("unix://{}", dir.0.join("absent.sock").display());
    let e = c.run_register(&mut ctx(), nse_at(&url)).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("sendfd") && msg.contains(&url), "{msg}");
    assert!(r.memory.get("nse-1").is_none());
}

#[tokio::test]
async fn find_results_pass_the_sockets_to_a_forwarder() {
    let dir = TempDir::new();
    let (listener, nse_path, witness) = endpoint_socket(&dir, "nse");
    let r = registry(
        &NsmUrl::Unix(dir.0.join("nsmgr.sock")),
        &TransportSecurity::Insecure,
    )
    .await;
    let nse = client(r.serving.url(), TransportSecurity::Insecure);
    let original = format!("unix://{}", nse_path.display());
    nse.run_register(&mut ctx(), nse_at(&original))
        .await
        .unwrap();
    std::fs::remove_file(&nse_path).unwrap();

    // The forwarder's Find client: clienturl → recvfd → connect.
    let recvfd = Arc::new(RecvFdClient::new());
    let forwarder = RegistryChain::new(
        "forwarder-nse-client",
        vec![
            Arc::new(ClientUrlServer::new(r.serving.url().clone())) as RegistryElement<Nse>,
            recvfd.clone(),
            Arc::new(ConnectServer::<Nse>::new(Duration::from_secs(2))),
        ],
    );
    let find = |watch: bool| Query {
        template: Nse::default(),
        watch,
    };
    let mut watch = forwarder.run_find(&mut ctx(), find(true)).await.unwrap();
    let first = watch.next().await.unwrap().unwrap();
    let url = first.item.url.clone();
    let held = r.memory.get("nse-1").unwrap().url;
    let prefix = format!("unix:///proc/{}/fd/", std::process::id());
    assert!(
        url.starts_with(&prefix) && url != held,
        "our own fd: {url} (NSMgr {held})"
    );
    assert_eq!(open_fds_of(&witness), 2, "the NSMgr's and the forwarder's");
    let Ok(NsmUrl::Unix(path)) = NsmUrl::parse(&url) else {
        panic!("{url}")
    };
    tokio::net::UnixStream::connect(&path).await.unwrap();
    listener.accept().await.unwrap();

    // A one-shot Find shows the same name, keeping no second copy.
    let again = collect_found(forwarder.run_find(&mut ctx(), find(false)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(again[0].item.url, url);
    assert_eq!(open_fds_of(&witness), 2);

    // Unregister: the NSMgr closes its fd, the watch's deleted result closes the forwarder's.
    nse.run_unregister(&mut ctx(), nse_at(&original))
        .await
        .unwrap();
    let gone = watch.next().await.unwrap().unwrap();
    assert!(gone.deleted);
    assert!(recvfd.held("nse-1").is_none());
    assert_eq!(open_fds_of(&witness), 0);
}
