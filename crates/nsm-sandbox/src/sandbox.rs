//! The domain: a registry and nodes, each node an NSMgr plus forwarders, endpoints and clients.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint, NetworkServiceLabels};
use nsm_api::url::NsmUrl;
use nsm_chains::client::{ClientOptions, new_client};
use nsm_chains::endpoint::{Endpoint, EndpointOptions};
use nsm_chains::forwarder::{Forwarder, ForwarderOptions, NoopDataplane, registration};
use nsm_chains::icmp_responder::IcmpResponder;
use nsm_chains::nsmgr::{Nsmgr, NsmgrOptions};
use nsm_chains::registry_client::{ns_registry_client, nse_registry_client};
use nsm_chains::registry_memory::Registry;
use nsm_core::chain::Element;
use nsm_core::registry::RegistryChain;
use nsm_core::token::{SharedTokenGenerator, TestTokenGenerator};
use nsm_core::{Chain, Clock, Ctx, NsmError};
use nsm_networkservice::clientinfo::ClientInfoLabels;
use nsm_networkservice::retry::RetryClient;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::restartable::Restartable;

/// Time to establish gRPC connections inside the sandbox (all on loopback).
pub const DIAL_TIMEOUT: Duration = Duration::from_millis(500);

/// Builds a [`Sandbox`].
pub struct SandboxBuilder {
    nodes: usize,
    registry_expiry: Duration,
    nse_expiry: Duration,
    token_generator: SharedTokenGenerator,
    clock: Clock,
    unix_dir: Option<std::path::PathBuf>,
}

impl SandboxBuilder {
    /// Number of nodes (default 1).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// How long registrations live in the registry and NSMgrs without refresh (default 1 minute).
    pub fn registry_expiry(mut self, d: Duration) -> Self {
        self.registry_expiry = d;
        self.nse_expiry = d;
        self
    }

    /// The token generator of every component (default: test tokens valid one hour).
    pub fn token_generator(mut self, g: SharedTokenGenerator) -> Self {
        self.token_generator = g;
        self
    }

    /// Serve NSMgrs, forwarders and endpoints on unix sockets in `dir` instead of TCP.
    pub fn unix_sockets(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.unix_dir = Some(dir.into());
        self
    }

    /// Starts the registry and the nodes, each node with one forwarder labelled `p2p=true`.
    pub async fn build(self) -> Result<Sandbox, NsmError> {
        let stop = CancellationToken::new();
        let clock = self.clock;
        let expiry = self.registry_expiry;
        let registry = Restartable::start("registry", loopback(), move |_url| {
            let r = Registry::new(expiry, None, DIAL_TIMEOUT, clock);
            (r.routes(), Box::new(r))
        })
        .await?;
        let mut sb = Sandbox {
            registry: Arc::new(registry),
            nodes: Vec::new(),
            token_generator: self.token_generator,
            clock,
            nse_expiry: self.nse_expiry,
            stop,
            unix_dir: self.unix_dir,
        };
        for i in 0..self.nodes {
            let node = sb.add_node(&format!("node-{i}")).await?;
            node.new_forwarder(&format!("forwarder-{i}"), p2p()).await?;
        }
        Ok(sb)
    }
}

fn loopback() -> NsmUrl {
    NsmUrl::Tcp {
        host: "127.0.0.1".into(),
        port: 0,
    }
}

fn p2p() -> BTreeMap<String, String> {
    [("p2p".to_string(), "true".to_string())].into()
}

/// An in-process NSM domain.
pub struct Sandbox {
    /// The registry.
    pub registry: Arc<Restartable>,
    /// The nodes, in creation order.
    pub nodes: Vec<Arc<Node>>,
    token_generator: SharedTokenGenerator,
    clock: Clock,
    nse_expiry: Duration,
    stop: CancellationToken,
    unix_dir: Option<std::path::PathBuf>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Sandbox {
    /// A builder with Go's defaults: one node, one-minute expiry, test tokens.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder {
            nodes: 1,
            registry_expiry: Duration::from_secs(60),
            nse_expiry: Duration::from_secs(60),
            token_generator: Arc::new(TestTokenGenerator::default()),
            clock: Clock::system(),
            unix_dir: None,
        }
    }

    /// The clock every component uses.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// A fresh call context with a deadline.
    pub fn ctx(&self, timeout: Duration) -> Ctx {
        Ctx::new(self.clock).with_timeout(timeout)
    }

    /// Adds a node: an NSMgr registered with the domain's registry, no forwarder yet.
    pub async fn add_node(&mut self, name: &str) -> Result<Arc<Node>, NsmError> {
        let bind = self.bind_url(&format!("{name}-nsmgr"));
        let registry_url = self.registry.url().clone();
        let token = self.token_generator.clone();
        let clock = self.clock;
        let expiry = self.nse_expiry;
        let node_name = name.to_string();
        let nsmgr_name = format!("nsmgr-{name}");
        let nsmgr = Restartable::start(nsmgr_name.clone(), bind, move |url| {
            let mut o = NsmgrOptions::new(nsmgr_name.clone(), url, token.clone());
            o.registry_url = Some(registry_url.clone());
            o.labels = ClientInfoLabels {
                node_name: Some(node_name.clone()),
                ..Default::default()
            };
            o.dial_timeout = DIAL_TIMEOUT;
            o.nse_expiry = expiry;
            o.clock = clock;
            let n = Nsmgr::new(o);
            (n.routes(), Box::new(n))
        })
        .await?;
        let node = Arc::new(Node {
            name: name.to_string(),
            nsmgr: Arc::new(nsmgr),
            token_generator: self.token_generator.clone(),
            clock: self.clock,
            stop: self.stop.child_token(),
            unix_dir: self.unix_dir.clone(),
            entries: Mutex::new(BTreeMap::new()),
        });
        self.nodes.push(node.clone());
        Ok(node)
    }

    fn bind_url(&self, name: &str) -> NsmUrl {
        bind_url(self.unix_dir.as_deref(), name)
    }

    /// Registers a network service in the registry.
    pub async fn register_ns(&self, ns: NetworkService) -> Result<NetworkService, NsmError> {
        let client = ns_registry_client(self.registry.url().clone(), DIAL_TIMEOUT, &self.stop);
        client
            .run_register(&mut self.ctx(Duration::from_secs(5)), ns)
            .await
    }

    /// An endpoint registry client talking to the registry directly.
    pub fn nse_registry(&self) -> RegistryChain<NetworkServiceEndpoint> {
        nse_registry_client(self.registry.url().clone(), DIAL_TIMEOUT, &self.stop)
    }
}

fn bind_url(unix_dir: Option<&std::path::Path>, name: &str) -> NsmUrl {
    match unix_dir {
        Some(dir) => NsmUrl::Unix(dir.join(format!("{name}.sock"))),
        None => loopback(),
    }
}

/// What an endpoint serves.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// Endpoint name.
    pub name: String,
    /// Services it provides.
    pub services: Vec<String>,
    /// Labels per service.
    pub labels: BTreeMap<String, String>,
    /// If set, the endpoint is an icmp-responder handing out addresses from these prefixes; otherwise
    /// a plain endpoint with only `additional`.
    pub cidrs: Option<Vec<IpNet>>,
}

impl EndpointSpec {
    /// A plain endpoint of `service`.
    pub fn new(name: &str, service: &str) -> Self {
        Self {
            name: name.into(),
            services: vec![service.into()],
            labels: BTreeMap::new(),
            cidrs: None,
        }
    }
}

/// One component of a node with its registration.
struct Entry {
    server: Arc<Restartable>,
    registration: NetworkServiceEndpoint,
    registry: RegistryChain<NetworkServiceEndpoint>,
    stop: CancellationToken,
}

/// A node: an NSMgr with its forwarders and endpoints.
pub struct Node {
    /// Node name (the `nodeName` label).
    pub name: String,
    /// The NSMgr.
    pub nsmgr: Arc<Restartable>,
    token_generator: SharedTokenGenerator,
    clock: Clock,
    stop: CancellationToken,
    unix_dir: Option<std::path::PathBuf>,
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl Node {
    async fn add_entry(
        &self,
        name: &str,
        service: &str,
        registration_of: impl Fn(&NsmUrl) -> NetworkServiceEndpoint,
        factory: impl Fn(NsmUrl) -> crate::restartable::Built + Send + Sync + 'static,
    ) -> Result<Arc<Restartable>, NsmError> {
        let _ = service;
        let server = Arc::new(
            Restartable::start(name, bind_url(self.unix_dir.as_deref(), name), factory).await?,
        );
        let registration = registration_of(server.url());
        let entry_stop = self.stop.child_token();
        let registry = nse_registry_client(self.nsmgr.url().clone(), DIAL_TIMEOUT, &entry_stop);
        registry
            .run_register(
                &mut Ctx::new(self.clock).with_timeout(Duration::from_secs(5)),
                registration.clone(),
            )
            .await?;
        self.entries.lock().insert(
            name.to_string(),
            Entry {
                server: server.clone(),
                registration,
                registry,
                stop: entry_stop,
            },
        );
        Ok(server)
    }

    /// Starts a forwarder with `labels` (under service `forwarder`) and registers it with the NSMgr.
    pub async fn new_forwarder(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Arc<Restartable>, NsmError> {
        let token = self.token_generator.clone();
        let clock = self.clock;
        let connect_to = self.nsmgr.url().clone();
        let fwd_name = name.to_string();
        self.add_entry(
            name,
            "forwarder",
            |url| registration(name, "forwarder", labels.clone(), url),
            move |_url| {
                let f = Forwarder::new(
                    ForwarderOptions {
                        name: fwd_name.clone(),
                        connect_to: connect_to.clone(),
                        token_generator: token.clone(),
                        dial_timeout: DIAL_TIMEOUT,
                        clock,
                    },
                    &NoopDataplane,
                );
                (f.routes(), Box::new(f))
            },
        )
        .await
    }

    /// Starts an endpoint and registers it with the NSMgr. `additional` elements run after the
    /// endpoint chain (and after the icmp-responder elements, if any).
    pub async fn new_endpoint(
        &self,
        spec: EndpointSpec,
        additional: Vec<Element>,
    ) -> Result<Arc<Restartable>, NsmError> {
        let token = self.token_generator.clone();
        let clock = self.clock;
        let s = spec.clone();
        let reg = |url: &NsmUrl| NetworkServiceEndpoint {
            name: spec.name.clone(),
            network_service_names: spec.services.clone(),
            network_service_labels: spec
                .services
                .iter()
                .map(|svc| {
                    (
                        svc.clone(),
                        NetworkServiceLabels {
                            labels: spec.labels.clone(),
                        },
                    )
                })
                .collect(),
            url: url.to_string(),
            ..Default::default()
        };
        self.add_entry(&spec.name, "", reg, move |_url| {
            let mut base = EndpointOptions::new(s.name.clone(), token.clone(), clock);
            base.additional = additional.clone();
            match &s.cidrs {
                Some(cidrs) => {
                    let e = IcmpResponder::new(base, cidrs.clone(), Vec::new());
                    (e.endpoint.routes(), Box::new(e))
                }
                None => {
                    let e = Endpoint::new(base);
                    (e.routes(), Box::new(e))
                }
            }
        })
        .await
    }

    /// Stops a forwarder or endpoint as if its process died (its registration stops refreshing and
    /// expires later, as in Go).
    pub async fn kill(&self, name: &str) {
        let entry = self.entries.lock().remove(name);
        if let Some(e) = entry {
            e.stop.cancel();
            e.server.stop().await;
        }
    }

    /// Stops a forwarder or endpoint and unregisters it (a clean shutdown).
    pub async fn shutdown(&self, name: &str) -> Result<(), NsmError> {
        let entry = self.entries.lock().remove(name);
        if let Some(e) = entry {
            e.server.stop().await;
            let r = e
                .registry
                .run_unregister(
                    &mut Ctx::new(self.clock).with_timeout(Duration::from_secs(5)),
                    e.registration,
                )
                .await;
            e.stop.cancel();
            r?;
        }
        Ok(())
    }

    /// A client chain (refresh + heal) to this node's NSMgr, wrapped in retry like Go's sandbox
    /// client.
    pub fn new_client(&self, name: &str, additional: Vec<Element>) -> Chain {
        let client = new_client(ClientOptions {
            url: Some(self.nsmgr.url().clone()),
            refresh: true,
            heal: true,
            additional,
            dial_timeout: DIAL_TIMEOUT,
            ..ClientOptions::new(name, self.token_generator.clone())
        });
        Chain::new(
            "sandbox-client",
            vec![Arc::new(
                RetryClient::new(Arc::new(client)).with_try_timeout(Duration::from_secs(2)),
            )],
        )
    }
}
