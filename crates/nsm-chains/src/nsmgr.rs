//! The NSMgr: the endpoint chain plus forwarder selection, and its two registries.
//!
//! NetworkService: endpoint chain → clientinfo → discoverforwarder → excludedprefixes → recvfd →
//! connect(client chain without refresh or heal, with recvfd → sendfd) → sendfd.
//!
//! NS registry: serialize → (memory, or querycache → clienturl(registry) → connect): discoverforwarder
//! and the forwarders' Finds are answered from the cache, which watches the registry.
//! NSE registry: validate → clientinfo → serialize → expire(1 min) → recvfd → sendfd → memory (this
//! node's endpoints, also what discoverforwarder searches) → localbypass(public URL) →
//! [clienturl(registry) → connect]. recvfd turns a passed endpoint socket (`inode://`) into
//! `unix:///proc/<pid>/fd/<n>`, which the memory store keeps and the NetworkService side dials;
//! sendfd passes the sockets of Find results on to callers on unix sockets (forwarders).

use std::sync::Arc;
use std::time::Duration;

use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_api::services;
use nsm_api::url::NsmUrl;
use nsm_core::chain::Element;
use nsm_core::registry::{RegistryChain, RegistryElement};
use nsm_core::token::SharedTokenGenerator;
use nsm_core::{Chain, Clock};
use nsm_identity::TransportSecurity;
use nsm_networkservice::authorize::AuthorizeServer;
use nsm_networkservice::begin::BeginClient;
use nsm_networkservice::clientinfo::{ClientInfo, ClientInfoLabels};
use nsm_networkservice::connect::ConnectServer;
use nsm_networkservice::discoverforwarder::DiscoverForwarderServer;
use nsm_networkservice::excludedprefixes::ExcludedPrefixesServer;
use nsm_networkservice::mechanisms::recvfd::{RecvFdClient, RecvFdServer};
use nsm_networkservice::mechanisms::sendfd::{SendFdClient, SendFdServer};
use nsm_registry::grpc::{NetworkServiceEndpointRegistryGrpc, NetworkServiceRegistryGrpc};
use nsm_registry::{
    ClientInfoServer, ClientUrlServer, ExpireServer, LocalBypassServer, MemoryServer,
    QueryCacheClient, SerializeServer, ValidateServer,
};
use nsm_registry::{RecvFdServer as RegistryRecvFdServer, SendFdServer as RegistrySendFdServer};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::client::{ClientOptions, new_client_parts};
use crate::endpoint::{Endpoint, EndpointOptions};
use crate::registry_client::registry_connect;

/// How long a registration lives without refresh (Go hard-codes one minute).
pub const NSE_EXPIRY: Duration = Duration::from_secs(60);

/// What an NSMgr is made of.
pub struct NsmgrOptions {
    /// The NSMgr's name (path segment name).
    pub name: String,
    /// The URL other nodes reach this NSMgr at (written into the central registry by localbypass).
    pub public_url: NsmUrl,
    /// The central registry; `None` keeps network services in memory (single-node meshes).
    pub registry_url: Option<NsmUrl>,
    /// Signs path and per-RPC tokens.
    pub token_generator: SharedTokenGenerator,
    /// Labels added to connections and registrations (nodeName, podName, clusterName).
    pub labels: ClientInfoLabels,
    /// The service forwarders register under.
    pub forwarder_service_name: String,
    /// Time to establish a gRPC connection to forwarders and the registry.
    pub dial_timeout: Duration,
    /// How long NSE registrations live without refresh.
    pub nse_expiry: Duration,
    /// Where the excluded-prefixes file lives, if not the default.
    pub excluded_prefixes_file: Option<std::path::PathBuf>,
    /// The clock.
    pub clock: Clock,
    /// How the NSMgr is served and dials forwarders and the registry (plaintext by default).
    pub security: TransportSecurity,
    /// The server authorize element (default: allow everything, as the sdk chains; `nsm nsmgr` uses
    /// the default Rego policies).
    pub authorize: Element,
}

impl NsmgrOptions {
    /// Options with Go's defaults.
    pub fn new(
        name: impl Into<String>,
        public_url: NsmUrl,
        token_generator: SharedTokenGenerator,
    ) -> Self {
        Self {
            name: name.into(),
            public_url,
            registry_url: None,
            token_generator,
            labels: ClientInfoLabels::default(),
            forwarder_service_name: "forwarder".into(),
            dial_timeout: Duration::from_millis(100),
            nse_expiry: NSE_EXPIRY,
            excluded_prefixes_file: None,
            clock: Clock::system(),
            security: TransportSecurity::Insecure,
            authorize: Arc::new(AuthorizeServer::any()),
        }
    }
}

/// A built NSMgr.
pub struct Nsmgr {
    /// The NetworkService side.
    pub endpoint: Endpoint,
    /// The network service registry chain.
    pub ns_registry: RegistryChain<NetworkService>,
    /// The endpoint registry chain.
    pub nse_registry: RegistryChain<NetworkServiceEndpoint>,
    /// The local endpoint store (this node's forwarders and NSEs).
    pub local_endpoints: Arc<MemoryServer<NetworkServiceEndpoint>>,
    /// The begin element of the client chain towards forwarders (to count live connections).
    pub client_begin: Arc<BeginClient>,
    stop: CancellationToken,
    clock: Clock,
}

impl Drop for Nsmgr {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Nsmgr {
    /// Builds the NSMgr's chains.
    pub fn new(opts: NsmgrOptions) -> Self {
        let stop = CancellationToken::new();
        let ns_registry = ns_registry_chain(&opts, &stop);
        let local_endpoints = Arc::new(MemoryServer::<NetworkServiceEndpoint>::new());
        let mut info = ClientInfoServer::new();
        if let Some(v) = &opts.labels.node_name {
            info = info.with_node_name(v.clone());
        }
        if let Some(v) = &opts.labels.pod_name {
            info = info.with_pod_name(v.clone());
        }
        if let Some(v) = &opts.labels.cluster_name {
            info = info.with_cluster_name(v.clone());
        }
        let mut nse: Vec<RegistryElement<NetworkServiceEndpoint>> = vec![
            Arc::new(ValidateServer::new()),
            Arc::new(info),
            Arc::new(SerializeServer::new()),
            Arc::new(ExpireServer::new(opts.nse_expiry).with_cancellation(&stop)),
            Arc::new(RegistryRecvFdServer::new()),
            Arc::new(RegistrySendFdServer::new()),
            local_endpoints.clone(),
            Arc::new(LocalBypassServer::new(opts.public_url.to_string())),
        ];
        if let Some(url) = &opts.registry_url {
            nse.push(Arc::new(ClientUrlServer::new(url.clone())));
            nse.push(Arc::new(registry_connect(
                opts.dial_timeout,
                &opts.security,
            )));
        }
        let nse_registry = RegistryChain::new("nsmgr-nse-registry", nse);
        let local_chain = RegistryChain::new(
            "nsmgr-local-nses",
            vec![local_endpoints.clone() as RegistryElement<_>],
        );

        let excluded = match &opts.excluded_prefixes_file {
            Some(p) => ExcludedPrefixesServer::with_config_path(p.clone()),
            None => ExcludedPrefixesServer::new(),
        };
        let client = new_client_parts(ClientOptions {
            // Files (network namespaces) the client passed go on to the forwarder as fds.
            additional: vec![Arc::new(RecvFdClient::new()), Arc::new(SendFdClient::new())],
            dial_timeout: opts.dial_timeout,
            security: opts.security.clone(),
            ..ClientOptions::new(opts.name.clone(), opts.token_generator.clone())
        });
        let mut ep =
            EndpointOptions::new(opts.name.clone(), opts.token_generator.clone(), opts.clock);
        ep.security = opts.security.clone();
        ep.authorize = opts.authorize.clone();
        ep.additional = vec![
            Arc::new(ClientInfo::new(opts.labels.clone())),
            Arc::new(DiscoverForwarderServer::new(
                ns_registry.clone(),
                local_chain,
                opts.forwarder_service_name.clone(),
            )),
            Arc::new(excluded),
            Arc::new(RecvFdServer::new()),
            Arc::new(ConnectServer::new(client.chain)),
            Arc::new(SendFdServer::new()),
        ];
        Self {
            endpoint: Endpoint::new(ep),
            ns_registry,
            nse_registry,
            local_endpoints,
            client_begin: client.begin,
            stop,
            clock: opts.clock,
        }
    }

    /// The NSMgr's chain (for `--print-chain`).
    pub fn chain(&self) -> &Chain {
        &self.endpoint.chain
    }

    /// NetworkService, MonitorConnection and both registries.
    pub fn routes(&self) -> Routes {
        self.endpoint
            .routes()
            .add_service(
                NetworkServiceRegistryGrpc::new(self.ns_registry.clone(), self.clock)
                    .into_service(),
            )
            .add_service(
                NetworkServiceEndpointRegistryGrpc::new(self.nse_registry.clone(), self.clock)
                    .into_service(),
            )
    }

    /// Service names for the health service.
    pub const SERVICES: [&'static str; 4] = services::ALL;
}

fn ns_registry_chain(
    opts: &NsmgrOptions,
    stop: &CancellationToken,
) -> RegistryChain<NetworkService> {
    let mut ns: Vec<RegistryElement<NetworkService>> = vec![Arc::new(SerializeServer::new())];
    match &opts.registry_url {
        Some(url) => {
            ns.push(Arc::new(
                QueryCacheClient::<NetworkService>::new().with_cancellation(stop),
            ));
            ns.push(Arc::new(ClientUrlServer::new(url.clone())));
            ns.push(Arc::new(registry_connect(
                opts.dial_timeout,
                &opts.security,
            )));
        }
        None => ns.push(Arc::new(MemoryServer::<NetworkService>::new())),
    }
    RegistryChain::new("nsmgr-ns-registry", ns)
}
