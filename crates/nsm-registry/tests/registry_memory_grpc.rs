//! The Go registry-memory chain served over real gRPC, driven through a client chain
//! (`clienturl` → `connect`): the conformance suite, the default payload, interdomain proxying and a
//! unix-socket registry.

// clippy.toml allows unwrap/expect in tests, but clippy does not count helper functions of an
// integration test as test code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_api::url::NsmUrl;
use nsm_core::registry::{RegistryChain, RegistryElement};
use nsm_core::{Clock, Ctx};
use nsm_registry::conformance;
use nsm_registry::grpc::{NetworkServiceEndpointRegistryGrpc, NetworkServiceRegistryGrpc};
use nsm_registry::{
    ClientUrlServer, ConnectServer, ExpireServer, MemoryServer, ProxyServer, SerializeServer,
    SetPayloadServer, SetRegistrationTimeServer,
};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;

const DIAL: Duration = Duration::from_secs(5);

/// The two chains of Go's `chains/memory` (cmd-registry-memory), expiry one minute.
fn registry_memory(
    proxy: Option<NsmUrl>,
) -> (
    RegistryChain<NetworkServiceEndpoint>,
    RegistryChain<NetworkService>,
) {
    let nse = RegistryChain::new(
        "registry-memory-nse",
        vec![
            Arc::new(SerializeServer::new()) as RegistryElement<_>,
            Arc::new(SetRegistrationTimeServer::new()),
            Arc::new(ExpireServer::new(Duration::from_secs(60))),
            Arc::new(MemoryServer::<NetworkServiceEndpoint>::new()),
            Arc::new(ProxyServer::<NetworkServiceEndpoint>::new(proxy.clone())),
            Arc::new(ConnectServer::<NetworkServiceEndpoint>::new(DIAL)),
        ],
    );
    let ns = RegistryChain::new(
        "registry-memory-ns",
        vec![
            Arc::new(SerializeServer::new()) as RegistryElement<_>,
            Arc::new(SetPayloadServer::new()),
            Arc::new(MemoryServer::<NetworkService>::new()),
            Arc::new(ProxyServer::<NetworkService>::new(proxy)),
            Arc::new(ConnectServer::<NetworkService>::new(DIAL)),
        ],
    );
    (nse, ns)
}

fn router(proxy: Option<NsmUrl>) -> tonic::transport::server::Router {
    let (nse, ns) = registry_memory(proxy);
    let clock = Clock::system();
    Server::builder()
        .add_service(NetworkServiceEndpointRegistryGrpc::new(nse, clock).into_service())
        .add_service(NetworkServiceRegistryGrpc::new(ns, clock).into_service())
}

/// Serves a fresh registry-memory on 127.0.0.1:<free port>; returns its URL.
async fn serve_tcp(proxy: Option<NsmUrl>) -> NsmUrl {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = router(proxy);
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    NsmUrl::Tcp {
        host: "127.0.0.1".into(),
        port,
    }
}

fn client<T>(url: NsmUrl) -> RegistryChain<T>
where
    T: nsm_registry::connect::GrpcRegistryItem,
{
    RegistryChain::new(
        "registry-client",
        vec![
            Arc::new(ClientUrlServer::<T>::new(url)),
            Arc::new(ConnectServer::<T>::new(DIAL)),
        ],
    )
}

fn ctx() -> Ctx {
    Ctx::new(Clock::system())
}

#[tokio::test]
async fn conformance_suite_over_grpc() {
    conformance::nse_suite(|| async { client(serve_tcp(None).await) }).await;
    conformance::ns_suite(|| async { client(serve_tcp(None).await) }).await;
}

#[tokio::test]
async fn registry_memory_should_set_default_payload() {
    let ns_client = client::<NetworkService>(serve_tcp(None).await);
    let ns = NetworkService {
        name: "ns-1".into(),
        ..Default::default()
    };
    let reg = ns_client.run_register(&mut ctx(), ns).await.unwrap();
    assert_eq!(reg.payload, "IP");
    let found = ns_client
        .find_all(&mut ctx(), NetworkService::default())
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].item.payload, "IP",
        "stored with the default payload"
    );
}

#[tokio::test]
async fn interdomain_names_are_proxied_to_the_other_registry() {
    let remote = serve_tcp(None).await;
    let local = serve_tcp(Some(remote.clone())).await;
    let local_client = client::<NetworkServiceEndpoint>(local);
    let remote_client = client::<NetworkServiceEndpoint>(remote);
    let nse = |name: &str| NetworkServiceEndpoint {
        name: name.into(),
        url: "tcp://10.0.0.1:5001".into(),
        ..Default::default()
    };
    local_client
        .run_register(&mut ctx(), nse("nse@domain-2"))
        .await
        .unwrap();
    local_client
        .run_register(&mut ctx(), nse("local-nse"))
        .await
        .unwrap();
    let at_remote = remote_client
        .find_all(&mut ctx(), NetworkServiceEndpoint::default())
        .await
        .unwrap();
    let names: Vec<_> = at_remote.iter().map(|f| f.item.name.as_str()).collect();
    assert_eq!(
        names,
        ["nse@domain-2"],
        "only the interdomain endpoint travels"
    );
}

#[tokio::test]
async fn remote_errors_keep_their_code_and_name_the_url() {
    // Nothing listens on this port.
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = NsmUrl::Tcp {
        host: "127.0.0.1".into(),
        port: unused.local_addr().unwrap().port(),
    };
    drop(unused);
    let c = client::<NetworkServiceEndpoint>(url.clone());
    let err = c
        .run_register(&mut ctx(), NetworkServiceEndpoint::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.to_string().contains(&url.to_string()), "{err}");
}

#[tokio::test]
async fn a_registry_on_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("nsm-registry-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("registry.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(router(None).serve_with_incoming(UnixListenerStream::new(listener)));
    let c = client::<NetworkServiceEndpoint>(NsmUrl::Unix(path.clone()));
    let nse = conformance::endpoint("nse-unix", "icmp", "a", "unix:///run/nse.sock");
    let reg = c.run_register(&mut ctx(), nse).await.unwrap();
    assert!(reg.expiration_time.is_some(), "expire set a time");
    assert!(reg.initial_registration_time.is_some());
    let found = c
        .find_all(&mut ctx(), NetworkServiceEndpoint::default())
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
