//! The registry (Go `cmd-registry-memory`, sdk `chains/memory`).
//!
//! NSE: validate → serialize → setregistrationtime → expire(period) → memory → proxy → connect.
//! NS:  validate → serialize → setpayload → memory → proxy → connect.
//! `proxy` forwards only interdomain names (`name@domain`) to the proxy registry URL.

use std::sync::Arc;
use std::time::Duration;

use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_api::url::NsmUrl;
use nsm_core::Clock;
use nsm_core::registry::{RegistryChain, RegistryElement};
use nsm_identity::TransportSecurity;
use nsm_registry::grpc::{NetworkServiceEndpointRegistryGrpc, NetworkServiceRegistryGrpc};
use nsm_registry::{
    ExpireServer, MemoryServer, ProxyServer, SerializeServer, SetPayloadServer,
    SetRegistrationTimeServer, ValidateServer,
};
use tokio_util::sync::CancellationToken;

use crate::registry_client::registry_connect;
use tonic::service::Routes;

/// A built registry.
pub struct Registry {
    /// The network service chain.
    pub ns: RegistryChain<NetworkService>,
    /// The endpoint chain.
    pub nse: RegistryChain<NetworkServiceEndpoint>,
    /// The endpoint store (for counts).
    pub nse_store: Arc<MemoryServer<NetworkServiceEndpoint>>,
    stop: CancellationToken,
    clock: Clock,
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Registry {
    /// Builds a memory registry whose registrations expire after `expiry` without refresh.
    pub fn new(
        expiry: Duration,
        proxy_url: Option<NsmUrl>,
        dial_timeout: Duration,
        clock: Clock,
    ) -> Self {
        Self::new_with(
            expiry,
            proxy_url,
            dial_timeout,
            clock,
            &TransportSecurity::Insecure,
        )
    }

    /// [`Registry::new`] dialing the proxy registry with `security`.
    pub fn new_with(
        expiry: Duration,
        proxy_url: Option<NsmUrl>,
        dial_timeout: Duration,
        clock: Clock,
        security: &TransportSecurity,
    ) -> Self {
        let stop = CancellationToken::new();
        let nse_store = Arc::new(MemoryServer::<NetworkServiceEndpoint>::new());
        let nse: Vec<RegistryElement<NetworkServiceEndpoint>> = vec![
            Arc::new(ValidateServer::new()),
            Arc::new(SerializeServer::new()),
            Arc::new(SetRegistrationTimeServer::new()),
            Arc::new(ExpireServer::new(expiry).with_cancellation(&stop)),
            nse_store.clone(),
            Arc::new(ProxyServer::new(proxy_url.clone())),
            Arc::new(registry_connect(dial_timeout, security)),
        ];
        let ns: Vec<RegistryElement<NetworkService>> = vec![
            Arc::new(ValidateServer::new()),
            Arc::new(SerializeServer::new()),
            Arc::new(SetPayloadServer::new()),
            Arc::new(MemoryServer::<NetworkService>::new()),
            Arc::new(ProxyServer::new(proxy_url)),
            Arc::new(registry_connect(dial_timeout, security)),
        ];
        Self {
            ns: RegistryChain::new("registry-ns", ns),
            nse: RegistryChain::new("registry-nse", nse),
            nse_store,
            stop,
            clock,
        }
    }

    /// Both registry services.
    pub fn routes(&self) -> Routes {
        Routes::new(NetworkServiceRegistryGrpc::new(self.ns.clone(), self.clock).into_service())
            .add_service(
                NetworkServiceEndpointRegistryGrpc::new(self.nse.clone(), self.clock)
                    .into_service(),
            )
    }
}
