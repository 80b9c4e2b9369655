//! The registry chains on etcd (what `nsm registry --store etcd://…` serves).
//!
//! NSE: validate → serialize → setregistrationtime → etcd(expire period) → proxy → connect.
//! NS:  validate → serialize → setpayload → etcd → proxy → connect.
//!
//! Unlike the memory chain there is no `expire` element: the etcd store bounds `expiration_time` by
//! the expire period itself and etcd leases remove expired endpoints, so an endpoint refreshed through
//! another replica is never expired by this one.

use std::sync::Arc;
use std::time::Duration;

use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_api::url::NsmUrl;
use nsm_core::Clock;
use nsm_core::registry::{RegistryChain, RegistryElement};
use nsm_registry::grpc::{NetworkServiceEndpointRegistryGrpc, NetworkServiceRegistryGrpc};
use nsm_registry::{
    ConnectServer, ProxyServer, SerializeServer, SetPayloadServer, SetRegistrationTimeServer,
    ValidateServer,
};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::client::EtcdClient;
use crate::store::EtcdServer;

/// A built etcd registry.
pub struct EtcdRegistry {
    /// The network service chain.
    pub ns: RegistryChain<NetworkService>,
    /// The endpoint chain.
    pub nse: RegistryChain<NetworkServiceEndpoint>,
    /// The endpoint store (mirror counts, sync state).
    pub nse_store: Arc<EtcdServer<NetworkServiceEndpoint>>,
    /// The network service store.
    pub ns_store: Arc<EtcdServer<NetworkService>>,
    stop: CancellationToken,
    clock: Clock,
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl EtcdRegistry {
    /// Builds the chains on `client` under key `prefix`; endpoints expire after at most `expiry`
    /// without a refresh. Needs a tokio runtime (the stores start their etcd watches).
    pub fn new(
        client: EtcdClient,
        prefix: &str,
        expiry: Duration,
        proxy_url: Option<NsmUrl>,
        dial_timeout: Duration,
        clock: Clock,
    ) -> Self {
        let stop = CancellationToken::new();
        let nse_store = Arc::new(
            EtcdServer::<NetworkServiceEndpoint>::new(client.clone(), prefix, expiry)
                .with_cancellation(&stop),
        );
        let ns_store = Arc::new(
            EtcdServer::<NetworkService>::new(client, prefix, expiry).with_cancellation(&stop),
        );
        let nse: Vec<RegistryElement<NetworkServiceEndpoint>> = vec![
            Arc::new(ValidateServer::new()),
            Arc::new(SerializeServer::new()),
            Arc::new(SetRegistrationTimeServer::new()),
            nse_store.clone(),
            Arc::new(ProxyServer::new(proxy_url.clone())),
            Arc::new(ConnectServer::new(dial_timeout)),
        ];
        let ns: Vec<RegistryElement<NetworkService>> = vec![
            Arc::new(ValidateServer::new()),
            Arc::new(SerializeServer::new()),
            Arc::new(SetPayloadServer::new()),
            ns_store.clone(),
            Arc::new(ProxyServer::new(proxy_url)),
            Arc::new(ConnectServer::new(dial_timeout)),
        ];
        Self {
            ns: RegistryChain::new("registry-etcd-ns", ns),
            nse: RegistryChain::new("registry-etcd-nse", nse),
            nse_store,
            ns_store,
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
