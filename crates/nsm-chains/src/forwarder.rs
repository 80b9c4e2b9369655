//! The forwarder: the endpoint chain around a pluggable data plane.
//!
//! NetworkService: endpoint chain → recvfd → sendfd → discover → roundrobin → *data plane server
//! elements* → connect(client chain without refresh: mechanismtranslation → *data plane client
//! elements* → recvfd → sendfd).
//!
//! The forwarder finds the endpoint through the NSMgr's registry (its `connect_to` URL) and registers
//! itself there as an endpoint of service `forwarder` with its labels (see [`registration`]).
//! NS and NSE registry clients: querycache → clienturl(NSMgr) → [NSE: recvfd →] connect, so a
//! steady-state Request does not go to the registry at all (the caches follow the NSMgr's registries
//! by watching Finds). recvfd claims the endpoint sockets the NSMgr passes with Find results and
//! names them `unix:///proc/<our pid>/fd/<n>`, so the forwarder reaches endpoints whose socket paths
//! it cannot see.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nsm_api::registry::{NetworkService, NetworkServiceEndpoint, NetworkServiceLabels};
use nsm_api::url::NsmUrl;
use nsm_core::chain::Element;
use nsm_core::registry::{RegistryChain, RegistryElement};
use nsm_core::token::SharedTokenGenerator;
use nsm_core::{Chain, Clock};
use nsm_identity::TransportSecurity;
use nsm_networkservice::authorize::AuthorizeServer;
use nsm_networkservice::begin::BeginClient;
use nsm_networkservice::connect::ConnectServer;
use nsm_networkservice::discover::DiscoverServer;
use nsm_networkservice::mechanisms::kernel::KernelClient;
use nsm_networkservice::mechanisms::recvfd::{RecvFdClient, RecvFdServer};
use nsm_networkservice::mechanisms::sendfd::{SendFdClient, SendFdServer};
use nsm_networkservice::mechanismtranslation::MechanismTranslationClient;
use nsm_networkservice::roundrobin::RoundRobinServer;
use nsm_registry::{ClientUrlServer, QueryCacheClient, RecvFdClient as RegistryRecvFdClient};
use tonic::service::Routes;

use crate::client::{ClientOptions, new_client_parts};
use crate::endpoint::{Endpoint, EndpointOptions};
use crate::registry_client::registry_connect;

/// The part of a forwarder that moves packets: elements on the server side (incoming mechanism,
/// cross-connect) and on the client side (outgoing mechanism preferences). The sandbox uses
/// [`NoopDataplane`].
pub trait Dataplane: Send + Sync {
    /// Elements after roundrobin, before connect.
    fn server_elements(&self) -> Vec<Element>;
    /// Elements of the client chain after mechanismtranslation.
    fn client_elements(&self) -> Vec<Element>;
}

/// A data plane that wires nothing: it offers the endpoint a KERNEL mechanism, so the connection is
/// negotiated as with a real data plane, but no interface is made.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopDataplane;

impl Dataplane for NoopDataplane {
    fn server_elements(&self) -> Vec<Element> {
        Vec::new()
    }
    fn client_elements(&self) -> Vec<Element> {
        vec![Arc::new(KernelClient::new(None))]
    }
}

/// What a forwarder is made of.
pub struct ForwarderOptions {
    /// Name (path segment and registration name).
    pub name: String,
    /// The NSMgr this forwarder registers with and discovers endpoints through.
    pub connect_to: NsmUrl,
    /// Signs tokens.
    pub token_generator: SharedTokenGenerator,
    /// Time to establish gRPC connections.
    pub dial_timeout: Duration,
    /// The clock.
    pub clock: Clock,
    /// How the forwarder is served and dials the NSMgr and endpoints (plaintext by default).
    pub security: TransportSecurity,
    /// The server authorize element (default: allow everything; `nsm forwarder` uses the default
    /// Rego policies).
    pub authorize: Element,
}

impl ForwarderOptions {
    /// Options with plaintext, allow-all authorization and the default dial timeout.
    pub fn new(
        name: impl Into<String>,
        connect_to: NsmUrl,
        token_generator: SharedTokenGenerator,
        clock: Clock,
    ) -> Self {
        Self {
            name: name.into(),
            connect_to,
            token_generator,
            dial_timeout: crate::client::DEFAULT_DIAL_TIMEOUT,
            clock,
            security: TransportSecurity::Insecure,
            authorize: Arc::new(AuthorizeServer::any()),
        }
    }
}

/// A built forwarder.
pub struct Forwarder {
    /// The NetworkService side.
    pub endpoint: Endpoint,
    /// The begin element of the client chain towards endpoints (to count live connections).
    pub client_begin: Arc<BeginClient>,
}

impl Forwarder {
    /// Builds a forwarder around `dataplane`.
    pub fn new(opts: ForwarderOptions, dataplane: &dyn Dataplane) -> Self {
        let ns_registry = RegistryChain::new(
            "forwarder-ns-client",
            vec![
                Arc::new(QueryCacheClient::<NetworkService>::new())
                    as RegistryElement<NetworkService>,
                Arc::new(ClientUrlServer::<NetworkService>::new(
                    opts.connect_to.clone(),
                )),
                Arc::new(registry_connect(opts.dial_timeout, &opts.security)),
            ],
        );
        let nse_registry = RegistryChain::new(
            "forwarder-nse-client",
            vec![
                Arc::new(QueryCacheClient::<NetworkServiceEndpoint>::new())
                    as RegistryElement<NetworkServiceEndpoint>,
                Arc::new(ClientUrlServer::<NetworkServiceEndpoint>::new(
                    opts.connect_to.clone(),
                )),
                // Endpoint sockets the NSMgr passes with Find results (`inode://`).
                Arc::new(RegistryRecvFdClient::new()),
                Arc::new(registry_connect(opts.dial_timeout, &opts.security)),
            ],
        );
        let mut client_additional: Vec<Element> = vec![Arc::new(MechanismTranslationClient::new())];
        client_additional.extend(dataplane.client_elements());
        client_additional.push(Arc::new(RecvFdClient::new()));
        client_additional.push(Arc::new(SendFdClient::new()));
        let client = new_client_parts(ClientOptions {
            additional: client_additional,
            dial_timeout: opts.dial_timeout,
            security: opts.security.clone(),
            ..ClientOptions::new(opts.name.clone(), opts.token_generator.clone())
        });
        let mut additional: Vec<Element> = vec![
            // The client's network namespace arrives as an fd on unix sockets.
            Arc::new(RecvFdServer::new()),
            Arc::new(SendFdServer::new()),
            Arc::new(DiscoverServer::new(ns_registry, nse_registry)),
            Arc::new(RoundRobinServer::new()),
        ];
        additional.extend(dataplane.server_elements());
        additional.push(Arc::new(ConnectServer::new(client.chain)));
        let mut ep = EndpointOptions::new(opts.name, opts.token_generator, opts.clock);
        ep.security = opts.security;
        ep.authorize = opts.authorize;
        ep.additional = additional;
        Self {
            endpoint: Endpoint::new(ep),
            client_begin: client.begin,
        }
    }

    /// The forwarder's chain.
    pub fn chain(&self) -> &Chain {
        &self.endpoint.chain
    }

    /// NetworkService and MonitorConnection.
    pub fn routes(&self) -> Routes {
        self.endpoint.routes()
    }
}

/// The registration a forwarder sends: service `service_name` (default "forwarder") with `labels`
/// (default `p2p=true`) at `url`.
pub fn registration(
    name: &str,
    service_name: &str,
    labels: BTreeMap<String, String>,
    url: &NsmUrl,
) -> NetworkServiceEndpoint {
    NetworkServiceEndpoint {
        name: name.to_string(),
        network_service_names: vec![service_name.to_string()],
        network_service_labels: [(service_name.to_string(), NetworkServiceLabels { labels })]
            .into(),
        url: url.to_string(),
        ..Default::default()
    }
}
