//! The domain: a registry and nodes, each node an NSMgr plus forwarders, endpoints and clients.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint, NetworkServiceLabels};
use nsm_api::url::NsmUrl;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_chains::client::{ClientOptions, ClientParts, new_client_parts};
use nsm_chains::endpoint::{Endpoint, EndpointOptions};
use nsm_chains::forwarder::{Forwarder, ForwarderOptions, NoopDataplane, registration};
use nsm_chains::icmp_responder::IcmpResponder;
use nsm_chains::nsmgr::{Nsmgr, NsmgrOptions};
use nsm_chains::registry_client::{ns_registry_client_with, nse_registry_client_with};
use nsm_chains::registry_memory::Registry;
use nsm_core::chain::Element;
use nsm_core::registry::RegistryChain;
use nsm_core::token::{SharedTokenGenerator, TestTokenGenerator};
use nsm_core::{Chain, Clock, Ctx, NsmError};
use nsm_identity::{
    DevCa, DevSource, JwtTokenGenerator, SignedDuration, TlsIdentity, TransportSecurity,
};
use nsm_networkservice::authorize::{AuthorizeClient, AuthorizeServer};
use nsm_networkservice::begin::BeginClient;
use nsm_networkservice::clientinfo::ClientInfoLabels;
use nsm_networkservice::clienturl::{ClientUrlClient, ClientUrlServer};
use nsm_networkservice::connect::{ConnectClient, ConnectServer};
use nsm_networkservice::dial::DialClient;
use nsm_networkservice::mechanisms::kernel::KernelClient;
use nsm_networkservice::mechanismtranslation::MechanismTranslationClient;
use nsm_networkservice::metadata::MetadataClient;
use nsm_networkservice::retry::RetryClient;
use nsm_policy::{PolicyRuntime, default_client_policies_with, default_server_policies_with};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::elements::ReplaceLabels;
use crate::restartable::{Component, ConnState, Restartable};

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
    nsmgr_tcp: bool,
    default_forwarders: bool,
    secure: bool,
    policies: bool,
    max_token_lifetime: SignedDuration,
}

impl SandboxBuilder {
    /// In a secure sandbox, whether the hops evaluate the default policies (default true; false
    /// measures mTLS and tokens alone).
    pub fn policies(mut self, yes: bool) -> Self {
        self.policies = yes;
        self
    }

    /// Runs the whole domain secured as a production mesh: every component (registry, NSMgrs,
    /// forwarders, endpoints, clients) gets its own X.509-SVID from a development CA (trust domain
    /// [`TRUST_DOMAIN`], SPIFFE ID `spiffe://sandbox.nsm/<component name>`), every connection is
    /// SPIFFE mTLS, tokens are ES256 JWTs ([`JwtTokenGenerator`], 10 minutes by default) and every
    /// hop runs the default Rego policies (servers: `authorize.NewServer()`'s four, clients:
    /// `authorize.NewClient()`'s four), each component with its own token caches.
    pub fn secure(mut self) -> Self {
        self.secure = true;
        self
    }

    /// The longest token lifetime in a secure sandbox (default 10 minutes, as Go).
    pub fn max_token_lifetime(mut self, d: Duration) -> Self {
        self.max_token_lifetime = SignedDuration::positive(d);
        self
    }

    /// Whether every node gets a forwarder `forwarder-<i>` labelled `p2p=true` (default true).
    pub fn default_forwarders(mut self, yes: bool) -> Self {
        self.default_forwarders = yes;
        self
    }

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

    /// With [`Self::unix_sockets`]: every NSMgr also listens on TCP 127.0.0.1 and publishes that URL,
    /// so NSMgr-to-NSMgr hops (a forwarder calling the remote NSMgr) go over TCP while the local hops
    /// (client → NSMgr → forwarder → endpoint) stay on unix sockets, as deployed.
    pub fn nsmgr_tcp(mut self, yes: bool) -> Self {
        self.nsmgr_tcp = yes;
        self
    }

    /// Starts the registry and the nodes, each node with one forwarder labelled `p2p=true`.
    pub async fn build(self) -> Result<Sandbox, NsmError> {
        let stop = CancellationToken::new();
        let clock = self.clock;
        let expiry = self.registry_expiry;
        let identities = if self.secure {
            nsm_identity::install_crypto_provider();
            Some(Arc::new(Identities::new(clock, self.max_token_lifetime)?))
        } else {
            None
        };
        let sec = Security {
            identities,
            tokens: self.token_generator,
            policies: self.policies,
        };
        let transport = sec.transport("registry")?;
        let t = transport.clone();
        let registry = Restartable::start_with("registry", loopback(), transport, move |_url| {
            let r = Registry::new_with(expiry, None, DIAL_TIMEOUT, clock, &t);
            (r.routes(), Box::new(r) as Box<dyn Component>)
        })
        .await?;
        let mut sb = Sandbox {
            registry: Arc::new(registry),
            nodes: Vec::new(),
            sec,
            clock,
            nse_expiry: self.nse_expiry,
            stop,
            unix_dir: self.unix_dir,
            nsmgr_tcp: self.nsmgr_tcp,
        };
        for i in 0..self.nodes {
            let node = sb.add_node(&format!("node-{i}")).await?;
            if self.default_forwarders {
                node.new_forwarder(&format!("forwarder-{i}"), p2p()).await?;
            }
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

/// The labels of the default forwarders: `p2p=true`.
pub fn p2p() -> BTreeMap<String, String> {
    [("p2p".to_string(), "true".to_string())].into()
}

/// An in-process NSM domain.
pub struct Sandbox {
    /// The registry.
    pub registry: Arc<Restartable>,
    /// The nodes, in creation order.
    pub nodes: Vec<Arc<Node>>,
    sec: Security,
    clock: Clock,
    nse_expiry: Duration,
    stop: CancellationToken,
    unix_dir: Option<std::path::PathBuf>,
    nsmgr_tcp: bool,
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
            nsmgr_tcp: false,
            default_forwarders: true,
            secure: false,
            policies: true,
            max_token_lifetime: SignedDuration::positive(Duration::from_secs(600)),
        }
    }

    /// The identities of a secure sandbox (`None` in plaintext).
    pub fn identities(&self) -> Option<&Arc<Identities>> {
        self.sec.identities.as_ref()
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
        let clock = self.clock;
        let expiry = self.nse_expiry;
        let node_name = name.to_string();
        let nsmgr_name = format!("nsmgr-{name}");
        let transport = self.sec.transport(&nsmgr_name)?;
        let token = self.sec.tokens(&transport, None);
        let (sec, t, n) = (self.sec.clone(), transport.clone(), nsmgr_name.clone());
        let factory = move |url: NsmUrl| {
            let mut o = NsmgrOptions::new(n.clone(), url, token.clone());
            o.security = t.clone();
            o.authorize = sec.server_authorize(clock);
            o.registry_url = Some(registry_url.clone());
            o.labels = ClientInfoLabels {
                node_name: Some(node_name.clone()),
                ..Default::default()
            };
            o.dial_timeout = DIAL_TIMEOUT;
            o.nse_expiry = expiry;
            o.clock = clock;
            let n = Nsmgr::new(o);
            (n.routes(), Box::new(n) as Box<dyn Component>)
        };
        let nsmgr = match (&self.unix_dir, self.nsmgr_tcp) {
            (Some(_), true) => {
                Restartable::start_with_public(nsmgr_name, bind, loopback(), transport, factory)
                    .await?
            }
            _ => Restartable::start_with(nsmgr_name, bind, transport, factory).await?,
        };
        let node = Arc::new(Node {
            name: name.to_string(),
            nsmgr: Arc::new(nsmgr),
            sec: self.sec.clone(),
            clock: self.clock,
            stop: self.stop.child_token(),
            unix_dir: self.unix_dir.clone(),
            entries: Mutex::new(BTreeMap::new()),
            clients: Mutex::new(Vec::new()),
        });
        self.nodes.push(node.clone());
        Ok(node)
    }

    fn bind_url(&self, name: &str) -> NsmUrl {
        bind_url(self.unix_dir.as_deref(), name)
    }

    /// Registers a network service in the registry.
    pub async fn register_ns(&self, ns: NetworkService) -> Result<NetworkService, NsmError> {
        let client = ns_registry_client_with(
            self.registry.url().clone(),
            DIAL_TIMEOUT,
            &self.stop,
            &self.sec.transport("sandbox-admin")?,
        );
        client
            .run_register(&mut self.ctx(Duration::from_secs(5)), ns)
            .await
    }

    /// An endpoint registry client talking to the registry directly.
    pub fn nse_registry(&self) -> RegistryChain<NetworkServiceEndpoint> {
        let transport = self
            .sec
            .transport("sandbox-admin")
            .unwrap_or(TransportSecurity::Insecure);
        nse_registry_client_with(
            self.registry.url().clone(),
            DIAL_TIMEOUT,
            &self.stop,
            &transport,
        )
    }

    /// A bare client to `url`: the request goes out as given (no path update, token or retry), so
    /// tests can send what a broken or hostile peer would.
    pub fn raw_client(&self, url: &NsmUrl) -> Chain {
        let transport = self
            .sec
            .transport("raw-client")
            .unwrap_or(TransportSecurity::Insecure);
        let tokens = self.sec.tokens(&transport, None);
        Chain::new(
            "raw-client",
            vec![
                Arc::new(ClientUrlClient::new(url.clone())),
                Arc::new(MetadataClient::new()),
                Arc::new(DialClient::new(DIAL_TIMEOUT).with_security(transport)),
                Arc::new(ConnectClient::new(tokens)),
            ],
        )
    }

    /// The per-connection state every running component and client holds, by name.
    pub async fn connection_state(&self) -> BTreeMap<String, ConnState> {
        let mut out = BTreeMap::new();
        for node in &self.nodes {
            node.connection_state(&mut out).await;
        }
        out
    }

    /// Waits (polling every 20 ms) until no component holds per-connection state; on timeout returns
    /// the components that still do.
    pub async fn wait_until_clean(
        &self,
        timeout: Duration,
    ) -> Result<(), BTreeMap<String, ConnState>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let dirty: BTreeMap<String, ConnState> = self
                .connection_state()
                .await
                .into_iter()
                .filter(|(_, s)| !s.is_empty())
                .collect();
            if dirty.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(dirty);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
    /// A passthrough endpoint (Go `newPassThroughEndpoint`): before `additional`, it requests the same
    /// service again through its NSMgr with the connection's labels replaced by its own `labels`.
    pub passthrough: bool,
}

impl EndpointSpec {
    /// A plain endpoint of `service`.
    pub fn new(name: &str, service: &str) -> Self {
        Self {
            name: name.into(),
            services: vec![service.into()],
            labels: BTreeMap::new(),
            cidrs: None,
            passthrough: false,
        }
    }

    /// With `labels` for every service.
    pub fn labels<'a>(mut self, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.labels = labels
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// An icmp-responder over `cidrs`.
    pub fn icmp_responder(mut self, cidrs: Vec<IpNet>) -> Self {
        self.cidrs = Some(cidrs);
        self
    }

    /// A passthrough endpoint (see [`EndpointSpec::passthrough`]).
    pub fn passthrough(mut self, yes: bool) -> Self {
        self.passthrough = yes;
        self
    }
}

/// A served endpoint and the begin element of its onward client, if it is a passthrough.
struct SandboxEndpoint {
    inner: Box<dyn Component>,
    client_begin: Option<Arc<BeginClient>>,
}

impl Component for SandboxEndpoint {
    fn state(&self) -> ConnState {
        let mut s = self.inner.state();
        s.begin += self.client_begin.as_ref().map_or(0, |b| b.len());
        s
    }
}

fn endpoint_state(e: &Endpoint) -> ConnState {
    ConnState {
        begin: e.begin.len(),
        metadata: e.metadata.len(),
        monitor: e.monitor_server.connections().len(),
        monitor_loops: e.monitor_server.passthrough_loops(),
        ..Default::default()
    }
}

impl Component for Endpoint {
    fn state(&self) -> ConnState {
        endpoint_state(self)
    }
}

impl Component for IcmpResponder {
    fn state(&self) -> ConnState {
        ConnState {
            ipam_leases: self.ipam.leased(),
            ..endpoint_state(&self.endpoint)
        }
    }
}

impl Component for Forwarder {
    fn state(&self) -> ConnState {
        let mut s = endpoint_state(&self.endpoint);
        s.begin += self.client_begin.len();
        s
    }
}

impl Component for Nsmgr {
    fn state(&self) -> ConnState {
        let mut s = endpoint_state(&self.endpoint);
        s.begin += self.client_begin.len();
        s
    }
}

impl Component for Registry {}

/// What a sandbox client does besides connecting (all on by default, like Go's sandbox client).
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    /// Wrap the chain in retry (2 s per try).
    pub retry: bool,
    /// Refresh connections before their tokens expire.
    pub refresh: bool,
    /// Heal connections when the path breaks.
    pub heal: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            retry: true,
            refresh: true,
            heal: true,
        }
    }
}

/// A client chain (NSC) with handles on its per-connection state.
pub struct Client {
    /// The client's name (its path segment).
    pub name: String,
    chain: Chain,
    begin: Arc<BeginClient>,
    metadata: Arc<MetadataClient>,
    heal: Option<Arc<nsm_networkservice::heal::HealClient>>,
}

impl std::ops::Deref for Client {
    type Target = Chain;
    fn deref(&self) -> &Chain {
        &self.chain
    }
}

impl Client {
    /// Requests (or refreshes) a connection.
    pub async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
    ) -> Result<Connection, NsmError> {
        self.chain.run_request(ctx, request).await
    }

    /// Closes a connection.
    pub async fn close(&self, ctx: &mut Ctx, conn: Connection) -> Result<(), NsmError> {
        self.chain.run_close(ctx, conn).await
    }

    /// Running monitor/heal tasks of this client.
    pub fn heal_tasks(&self) -> usize {
        self.heal.as_ref().map_or(0, |h| h.active_tasks())
    }

    /// Per-connection state held by this client.
    pub fn state(&self) -> ConnState {
        ConnState {
            begin: self.begin.len(),
            metadata: self.metadata.len(),
            heal_tasks: self.heal_tasks(),
            ..Default::default()
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
    sec: Security,
    clock: Clock,
    stop: CancellationToken,
    unix_dir: Option<std::path::PathBuf>,
    entries: Mutex<BTreeMap<String, Entry>>,
    clients: Mutex<Vec<Arc<Client>>>,
}

impl Node {
    /// The per-connection state of this node's running components and clients, by name.
    pub async fn connection_state(&self, out: &mut BTreeMap<String, ConnState>) {
        if let Some(s) = self.nsmgr.state().await {
            out.insert(self.nsmgr.name().to_string(), s);
        }
        let servers: Vec<Arc<Restartable>> = self
            .entries
            .lock()
            .values()
            .map(|e| e.server.clone())
            .collect();
        for server in servers {
            if let Some(s) = server.state().await {
                out.insert(server.name().to_string(), s);
            }
        }
        for c in self.clients.lock().iter() {
            out.insert(c.name.clone(), c.state());
        }
    }

    /// Names of the forwarders and endpoints started on this node (and not killed).
    pub fn entry_names(&self) -> Vec<String> {
        self.entries.lock().keys().cloned().collect()
    }

    /// The server of a forwarder or endpoint started on this node.
    pub fn entry(&self, name: &str) -> Option<Arc<Restartable>> {
        self.entries.lock().get(name).map(|e| e.server.clone())
    }

    async fn add_entry(
        &self,
        name: &str,
        start: bool,
        registration_of: impl Fn(&NsmUrl) -> NetworkServiceEndpoint,
        factory: impl Fn(NsmUrl) -> crate::restartable::Built + Send + Sync + 'static,
    ) -> Result<Arc<Restartable>, NsmError> {
        let bind = bind_url(self.unix_dir.as_deref(), name);
        let transport = self.sec.transport(name)?;
        let server = Arc::new(if start {
            Restartable::start_with(name, bind, transport.clone(), factory).await?
        } else {
            Restartable::reserve_with(name, bind, transport.clone(), factory).await?
        });
        let registration = registration_of(server.url());
        let entry_stop = self.stop.child_token();
        let registry = nse_registry_client_with(
            self.nsmgr.url().clone(),
            DIAL_TIMEOUT,
            &entry_stop,
            &transport,
        );
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
        let clock = self.clock;
        let connect_to = self.nsmgr.url().clone();
        let fwd_name = name.to_string();
        let transport = self.sec.transport(name)?;
        let token = self.sec.tokens(&transport, None);
        let sec = self.sec.clone();
        self.add_entry(
            name,
            true,
            |url| registration(name, "forwarder", labels.clone(), url),
            move |_url| {
                let f = Forwarder::new(
                    ForwarderOptions {
                        dial_timeout: DIAL_TIMEOUT,
                        security: transport.clone(),
                        authorize: sec.server_authorize(clock),
                        ..ForwarderOptions::new(
                            fwd_name.clone(),
                            connect_to.clone(),
                            token.clone(),
                            clock,
                        )
                    },
                    &NoopDataplane,
                );
                (f.routes(), Box::new(f) as Box<dyn Component>)
            },
        )
        .await
    }

    /// Starts an endpoint and registers it with the NSMgr. `additional` elements run after the
    /// endpoint chain (and after the icmp-responder or passthrough elements, if any).
    pub async fn new_endpoint(
        &self,
        spec: EndpointSpec,
        additional: Vec<Element>,
    ) -> Result<Arc<Restartable>, NsmError> {
        self.endpoint(spec, additional, true).await
    }

    /// Registers an endpoint whose server is not up yet: `restart()` the returned server to start it.
    pub async fn new_endpoint_not_started(
        &self,
        spec: EndpointSpec,
        additional: Vec<Element>,
    ) -> Result<Arc<Restartable>, NsmError> {
        self.endpoint(spec, additional, false).await
    }

    async fn endpoint(
        &self,
        spec: EndpointSpec,
        additional: Vec<Element>,
        start: bool,
    ) -> Result<Arc<Restartable>, NsmError> {
        let clock = self.clock;
        let nsmgr_url = self.nsmgr.url().clone();
        let s = spec.clone();
        let transport = self.sec.transport(&spec.name)?;
        let token = self.sec.tokens(&transport, None);
        let sec = self.sec.clone();
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
        self.add_entry(&spec.name, start, reg, move |_url| {
            let mut base = EndpointOptions::new(s.name.clone(), token.clone(), clock);
            base.security = transport.clone();
            base.authorize = sec.server_authorize(clock);
            let mut client_begin = None;
            if s.passthrough {
                let client = new_client_parts(ClientOptions {
                    additional: vec![
                        Arc::new(MechanismTranslationClient::new()),
                        Arc::new(ReplaceLabels(s.labels.clone())),
                        Arc::new(KernelClient::new(None)),
                    ],
                    dial_timeout: DIAL_TIMEOUT,
                    security: transport.clone(),
                    ..ClientOptions::new(format!("endpoint-client-{}", s.name), token.clone())
                });
                client_begin = Some(client.begin.clone());
                base.additional
                    .push(Arc::new(ClientUrlServer::new(nsmgr_url.clone())));
                base.additional
                    .push(Arc::new(ConnectServer::new(client.chain)));
            }
            base.additional.extend(additional.iter().cloned());
            let (routes, inner): (_, Box<dyn Component>) = match &s.cidrs {
                Some(cidrs) => {
                    let e = IcmpResponder::new(base, cidrs.clone(), Vec::new());
                    (e.endpoint.routes(), Box::new(e))
                }
                None => {
                    let e = Endpoint::new(base);
                    (e.routes(), Box::new(e))
                }
            };
            (
                routes,
                Box::new(SandboxEndpoint {
                    inner,
                    client_begin,
                }) as Box<dyn Component>,
            )
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

    /// A client chain (refresh + heal) to this node's NSMgr, wrapped in retry (2 s per try) like Go's
    /// sandbox client.
    pub fn new_client(&self, name: &str, additional: Vec<Element>) -> Arc<Client> {
        self.new_client_with(name, additional, ClientConfig::default())
    }

    /// A client chain (refresh + heal) to this node's NSMgr without retry: the first error is
    /// returned as is.
    pub fn new_client_without_retry(&self, name: &str, additional: Vec<Element>) -> Arc<Client> {
        let config = ClientConfig {
            retry: false,
            ..Default::default()
        };
        self.new_client_with(name, additional, config)
    }

    /// A client chain to this node's NSMgr with the given features.
    pub fn new_client_with(
        &self,
        name: &str,
        additional: Vec<Element>,
        config: ClientConfig,
    ) -> Arc<Client> {
        self.client(name, additional, config, None)
    }

    /// A client whose tokens live `max_token_lifetime` (which may be negative: tokens that are
    /// already expired, as `NSM_MAX_TOKEN_LIFETIME=-1m` gives in Go's `opa` example). In a plaintext
    /// sandbox the domain's token generator is used regardless.
    pub fn new_client_with_token_lifetime(
        &self,
        name: &str,
        additional: Vec<Element>,
        config: ClientConfig,
        max_token_lifetime: SignedDuration,
    ) -> Arc<Client> {
        self.client(name, additional, config, Some(max_token_lifetime))
    }

    fn client(
        &self,
        name: &str,
        additional: Vec<Element>,
        config: ClientConfig,
        max_token_lifetime: Option<SignedDuration>,
    ) -> Arc<Client> {
        let transport = self
            .sec
            .transport(name)
            .unwrap_or(TransportSecurity::Insecure);
        let tokens = self.sec.tokens(&transport, max_token_lifetime);
        let ClientConfig {
            retry,
            refresh,
            heal,
        } = config;
        let ClientParts {
            chain,
            begin,
            metadata,
            heal,
        } = new_client_parts(ClientOptions {
            url: Some(self.nsmgr.url().clone()),
            refresh,
            heal,
            additional,
            dial_timeout: DIAL_TIMEOUT,
            authorize: self.sec.client_authorize(self.clock),
            security: transport,
            ..ClientOptions::new(name, tokens)
        });
        let chain = if retry {
            Chain::new(
                "sandbox-client",
                vec![Arc::new(
                    RetryClient::new(Arc::new(chain)).with_try_timeout(Duration::from_secs(2)),
                )],
            )
        } else {
            chain
        };
        let client = Arc::new(Client {
            name: name.to_string(),
            chain,
            begin,
            metadata,
            heal,
        });
        self.clients.lock().push(client.clone());
        client
    }
}

/// The trust domain of a secure sandbox.
pub const TRUST_DOMAIN: &str = "sandbox.nsm";

/// How long a secure sandbox's SVIDs live (re-issued at half that).
pub const SVID_TTL: Duration = Duration::from_secs(3600);

/// The identities of a secure sandbox: a development CA and one SVID source per component name
/// (created on first use, kept across restarts of the component).
pub struct Identities {
    ca: Arc<DevCa>,
    max_token_lifetime: SignedDuration,
    by_name: Mutex<BTreeMap<String, ComponentIdentity>>,
}

/// A component's SVID source and the TLS identity built on it.
type ComponentIdentity = (Arc<DevSource>, Arc<TlsIdentity>);

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("components", &self.by_name.lock().len())
            .finish_non_exhaustive()
    }
}

fn identity_error(e: impl std::fmt::Display) -> NsmError {
    NsmError::internal("sandbox", format!("identity: {e}"))
}

impl Identities {
    fn new(clock: Clock, max_token_lifetime: SignedDuration) -> Result<Self, NsmError> {
        Ok(Self {
            ca: Arc::new(DevCa::with_clock(TRUST_DOMAIN, clock).map_err(identity_error)?),
            max_token_lifetime,
            by_name: Mutex::new(BTreeMap::new()),
        })
    }

    /// The CA.
    pub fn ca(&self) -> &Arc<DevCa> {
        &self.ca
    }

    /// The TLS identity of component `name` (issued on first use).
    pub fn tls(&self, name: &str) -> Result<Arc<TlsIdentity>, NsmError> {
        let mut by_name = self.by_name.lock();
        if let Some((_, tls)) = by_name.get(name) {
            return Ok(tls.clone());
        }
        let source = self.ca.source(name, SVID_TTL).map_err(identity_error)?;
        let tls = TlsIdentity::new(source.clone()).map_err(identity_error)?;
        by_name.insert(name.to_string(), (source, tls.clone()));
        Ok(tls)
    }

    /// Issues a new SVID (new key) to component `name` now, as a rotation by SPIRE would.
    pub fn rotate(&self, name: &str) -> Result<(), NsmError> {
        let source = self
            .by_name
            .lock()
            .get(name)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| identity_error(format!("no component {name}")))?;
        source.set(self.ca.material(name, SVID_TTL).map_err(identity_error)?);
        Ok(())
    }

    /// The SPIFFE ID of component `name`.
    pub fn spiffe_id(&self, name: &str) -> String {
        self.ca.spiffe_id(name)
    }
}

/// What a component is secured with: nothing (plaintext, the domain's token generator, allow-all) or
/// its identity from [`Identities`].
#[derive(Clone)]
struct Security {
    identities: Option<Arc<Identities>>,
    tokens: SharedTokenGenerator,
    policies: bool,
}

impl Security {
    fn transport(&self, name: &str) -> Result<TransportSecurity, NsmError> {
        match &self.identities {
            None => Ok(TransportSecurity::Insecure),
            Some(ids) => Ok(TransportSecurity::Tls(ids.tls(name)?)),
        }
    }

    fn tokens(
        &self,
        transport: &TransportSecurity,
        max_token_lifetime: Option<SignedDuration>,
    ) -> SharedTokenGenerator {
        match (transport.tls(), &self.identities) {
            (Some(tls), Some(ids)) => Arc::new(JwtTokenGenerator::new(
                tls.source(),
                max_token_lifetime.unwrap_or(ids.max_token_lifetime),
            )),
            _ => self.tokens.clone(),
        }
    }

    fn server_authorize(&self, clock: Clock) -> Element {
        match &self.identities {
            Some(_) if self.policies => Arc::new(AuthorizeServer::new(
                default_server_policies_with(&PolicyRuntime::new(clock)),
            )),
            _ => Arc::new(AuthorizeServer::any()),
        }
    }

    fn client_authorize(&self, clock: Clock) -> Element {
        match &self.identities {
            Some(_) if self.policies => Arc::new(AuthorizeClient::new(
                default_client_policies_with(&PolicyRuntime::new(clock)),
            )),
            _ => Arc::new(AuthorizeClient::any()),
        }
    }
}
