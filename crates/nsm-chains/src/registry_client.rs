//! Registry client chains (Go `registry/chains/client`): how forwarders and endpoints register with
//! their NSMgr, and how anything finds services.
//!
//! NSE: serialize → refresh → clienturl(url) → heal → connect.
//! NS:  clienturl(url) → heal → connect.

use std::sync::Arc;
use std::time::Duration;

use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_api::url::NsmUrl;
use nsm_core::registry::{RegistryChain, RegistryElement};
use nsm_registry::{ClientUrlServer, ConnectServer, HealClient, RefreshClient, SerializeServer};
use tokio_util::sync::CancellationToken;

/// An endpoint registry client that keeps its registrations alive (refresh) and re-registers them
/// after the registry restarts (heal). Background work stops when `stop` is cancelled.
pub fn nse_registry_client(
    url: NsmUrl,
    dial_timeout: Duration,
    stop: &CancellationToken,
) -> RegistryChain<NetworkServiceEndpoint> {
    RegistryChain::new(
        "nse-registry-client",
        vec![
            Arc::new(SerializeServer::new()) as RegistryElement<NetworkServiceEndpoint>,
            Arc::new(RefreshClient::new().with_cancellation(stop)),
            Arc::new(ClientUrlServer::new(url)),
            Arc::new(HealClient::<NetworkServiceEndpoint>::new().with_cancellation(stop)),
            Arc::new(ConnectServer::new(dial_timeout)),
        ],
    )
}

/// A network service registry client that re-registers after registry restarts.
pub fn ns_registry_client(
    url: NsmUrl,
    dial_timeout: Duration,
    stop: &CancellationToken,
) -> RegistryChain<NetworkService> {
    RegistryChain::new(
        "ns-registry-client",
        vec![
            Arc::new(ClientUrlServer::new(url)) as RegistryElement<NetworkService>,
            Arc::new(HealClient::<NetworkService>::new().with_cancellation(stop)),
            Arc::new(ConnectServer::new(dial_timeout)),
        ],
    )
}
