//! Registry client chains (Go `registry/chains/client`): how forwarders and endpoints register with
//! their NSMgr, and how anything finds services.
//!
//! NSE: serialize → refresh → clienturl(url) → heal → sendfd → recvfd → connect (sendfd: an endpoint
//! serving on a unix socket passes the socket as an fd when it talks to its NSMgr over a unix socket;
//! recvfd claims the endpoint sockets the NSMgr passes with the results of heal's watching Find, one
//! per endpoint, instead of leaving them unclaimed).
//! NS:  clienturl(url) → heal → connect.

use std::sync::Arc;
use std::time::Duration;

use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_api::url::NsmUrl;
use nsm_core::registry::{RegistryChain, RegistryElement};
use nsm_identity::TransportSecurity;
use nsm_registry::connect::GrpcRegistryItem;
use nsm_registry::{
    ClientUrlServer, ConnectServer, Dialer, HealClient, RecvFdClient, RefreshClient, SendFdClient,
    SerializeServer,
};
use tokio_util::sync::CancellationToken;

/// How registry `connect` dials with `security`: `None` (plaintext) or an mTLS dialer.
pub fn registry_dialer(security: &TransportSecurity) -> Option<Dialer> {
    security.tls()?;
    let security = security.clone();
    Some(Arc::new(move |url: NsmUrl, timeout: Duration| {
        let security = security.clone();
        Box::pin(async move {
            nsm_networkservice::grpc::client_channel_with(&url, timeout, &security).await
        })
    }))
}

/// Registry `connect` dialing with `security`.
pub fn registry_connect<T: GrpcRegistryItem>(
    dial_timeout: Duration,
    security: &TransportSecurity,
) -> ConnectServer<T> {
    ConnectServer::new(dial_timeout).with_dialer(registry_dialer(security))
}

/// An endpoint registry client that keeps its registrations alive (refresh) and re-registers them
/// after the registry restarts (heal). Background work stops when `stop` is cancelled.
pub fn nse_registry_client(
    url: NsmUrl,
    dial_timeout: Duration,
    stop: &CancellationToken,
) -> RegistryChain<NetworkServiceEndpoint> {
    nse_registry_client_with(url, dial_timeout, stop, &TransportSecurity::Insecure)
}

/// [`nse_registry_client`] dialing with `security`.
pub fn nse_registry_client_with(
    url: NsmUrl,
    dial_timeout: Duration,
    stop: &CancellationToken,
    security: &TransportSecurity,
) -> RegistryChain<NetworkServiceEndpoint> {
    RegistryChain::new(
        "nse-registry-client",
        vec![
            Arc::new(SerializeServer::new()) as RegistryElement<NetworkServiceEndpoint>,
            Arc::new(RefreshClient::new().with_cancellation(stop)),
            Arc::new(ClientUrlServer::new(url)),
            Arc::new(HealClient::<NetworkServiceEndpoint>::new().with_cancellation(stop)),
            Arc::new(SendFdClient::new()),
            Arc::new(RecvFdClient::new()),
            Arc::new(registry_connect(dial_timeout, security)),
        ],
    )
}

/// A network service registry client that re-registers after registry restarts.
pub fn ns_registry_client(
    url: NsmUrl,
    dial_timeout: Duration,
    stop: &CancellationToken,
) -> RegistryChain<NetworkService> {
    ns_registry_client_with(url, dial_timeout, stop, &TransportSecurity::Insecure)
}

/// [`ns_registry_client`] dialing with `security`.
pub fn ns_registry_client_with(
    url: NsmUrl,
    dial_timeout: Duration,
    stop: &CancellationToken,
    security: &TransportSecurity,
) -> RegistryChain<NetworkService> {
    RegistryChain::new(
        "ns-registry-client",
        vec![
            Arc::new(ClientUrlServer::new(url)) as RegistryElement<NetworkService>,
            Arc::new(HealClient::<NetworkService>::new().with_cancellation(stop)),
            Arc::new(registry_connect(dial_timeout, security)),
        ],
    )
}
