//! A gRPC server that can be stopped and restarted on the same URL.

use std::sync::Arc;

use nsm_api::url::NsmUrl;
use nsm_core::NsmError;
use nsm_identity::TransportSecurity;
use nsm_networkservice::grpc::{Serving, serve, serve_with};
use tokio::sync::Mutex;
use tonic::service::Routes;

/// What a factory builds: the routes to serve and the component that must stay alive while they are
/// served (and can report its per-connection state).
pub type Built = (Routes, Box<dyn Component>);

/// A served component: reports how much per-connection state it holds (for leak checks).
pub trait Component: Send + Sync + 'static {
    /// Per-connection state held right now.
    fn state(&self) -> ConnState {
        ConnState::default()
    }
}

/// Per-connection state of one component; all zero once every connection is closed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnState {
    /// Connections tracked by `begin` (server and client chains).
    pub begin: usize,
    /// Connections with metadata (server and client chains).
    pub metadata: usize,
    /// Connections the `monitor` element reports.
    pub monitor: usize,
    /// Passthrough monitor loops (one per connection monitored at the next hop).
    pub monitor_loops: usize,
    /// IPAM leases.
    pub ipam_leases: usize,
    /// Heal monitor/heal tasks (clients).
    pub heal_tasks: usize,
}

impl ConnState {
    /// True if nothing is held.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl std::ops::Add for ConnState {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            begin: self.begin + o.begin,
            metadata: self.metadata + o.metadata,
            monitor: self.monitor + o.monitor,
            monitor_loops: self.monitor_loops + o.monitor_loops,
            ipam_leases: self.ipam_leases + o.ipam_leases,
            heal_tasks: self.heal_tasks + o.heal_tasks,
        }
    }
}

type Factory = Arc<dyn Fn(NsmUrl) -> Built + Send + Sync>;

/// How many ports a first start tries (see [`Restartable::first_start`]).
const START_ATTEMPTS: usize = 5;

/// What the listener's error says when the port was taken.
const ADDR_IN_USE: &str = "Address already in use";

/// True for a TCP URL asking for any free port.
fn any_port(url: &NsmUrl) -> bool {
    matches!(url, NsmUrl::Tcp { port: 0, .. })
}

struct Running {
    serving: Serving,
    /// The second listener, on [`Restartable::public_url`], if any.
    public: Option<Serving>,
    component: Box<dyn Component>,
}

/// A restartable server.
pub struct Restartable {
    name: String,
    url: NsmUrl,
    /// A second URL the component also serves on and publishes as its own (e.g. an NSMgr's TCP URL
    /// for other nodes beside its unix socket for local clients).
    public: Option<NsmUrl>,
    factory: Factory,
    security: TransportSecurity,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for Restartable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.name, self.url)
    }
}

impl Restartable {
    /// Binds `bind` (port 0 allowed) and serves what `factory` builds for the final URL.
    pub async fn start(
        name: impl Into<String>,
        bind: NsmUrl,
        factory: impl Fn(NsmUrl) -> Built + Send + Sync + 'static,
    ) -> Result<Self, NsmError> {
        Self::start_with(name, bind, TransportSecurity::Insecure, factory).await
    }

    /// [`Restartable::start`] serving with `security` (SPIFFE mTLS in a secure sandbox).
    pub async fn start_with(
        name: impl Into<String>,
        bind: NsmUrl,
        security: TransportSecurity,
        factory: impl Fn(NsmUrl) -> Built + Send + Sync + 'static,
    ) -> Result<Self, NsmError> {
        Self::first_start(name.into(), bind, None, security, Arc::new(factory)).await
    }

    /// [`Restartable::start_with`] serving on two listeners: `bind` (what [`Self::url`] returns, for
    /// local clients) and `public_bind` (port 0 allowed), whose final URL the factory receives as the
    /// component's own — as a deployed NSMgr serves local clients on a unix socket and publishes a
    /// TCP URL for other nodes.
    pub async fn start_with_public(
        name: impl Into<String>,
        bind: NsmUrl,
        public_bind: NsmUrl,
        security: TransportSecurity,
        factory: impl Fn(NsmUrl) -> Built + Send + Sync + 'static,
    ) -> Result<Self, NsmError> {
        Self::first_start(
            name.into(),
            bind,
            Some(public_bind),
            security,
            Arc::new(factory),
        )
        .await
    }

    /// Picks the URLs and serves. A port-0 URL is learnt by binding once and serving later, so
    /// another socket (a parallel test's outgoing connection) can take the port in between: then
    /// fresh ports are picked, up to [`START_ATTEMPTS`] times.
    async fn first_start(
        name: String,
        bind: NsmUrl,
        public_bind: Option<NsmUrl>,
        security: TransportSecurity,
        factory: Factory,
    ) -> Result<Self, NsmError> {
        let mut attempt = 1;
        loop {
            let mut me = Self::reserve_factory(
                name.clone(),
                bind.clone(),
                security.clone(),
                factory.clone(),
            )
            .await?;
            if let Some(public_bind) = &public_bind {
                me.public = Some(probe(public_bind).await?);
            }
            match me.restart().await {
                Ok(()) => return Ok(me),
                Err(e)
                    if attempt < START_ATTEMPTS
                        && (any_port(&bind) || public_bind.as_ref().is_some_and(any_port))
                        && e.to_string().contains(ADDR_IN_USE) =>
                {
                    tracing::debug!(%name, error = %e, attempt, "sandbox: probed port taken, picking another");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Picks the URL (binding `bind` once to learn the port) without serving yet: [`Self::restart`]
    /// starts it. Like a process that registered but whose server is not up.
    pub async fn reserve(
        name: impl Into<String>,
        bind: NsmUrl,
        factory: impl Fn(NsmUrl) -> Built + Send + Sync + 'static,
    ) -> Result<Self, NsmError> {
        Self::reserve_with(name, bind, TransportSecurity::Insecure, factory).await
    }

    /// [`Restartable::reserve`] serving with `security` once started.
    pub async fn reserve_with(
        name: impl Into<String>,
        bind: NsmUrl,
        security: TransportSecurity,
        factory: impl Fn(NsmUrl) -> Built + Send + Sync + 'static,
    ) -> Result<Self, NsmError> {
        Self::reserve_factory(name.into(), bind, security, Arc::new(factory)).await
    }

    async fn reserve_factory(
        name: String,
        bind: NsmUrl,
        security: TransportSecurity,
        factory: Factory,
    ) -> Result<Self, NsmError> {
        let url = probe(&bind).await?;
        Ok(Self {
            name,
            url,
            public: None,
            factory,
            security,
            running: Mutex::new(None),
        })
    }

    /// The per-connection state of the running component (`None` while stopped).
    pub async fn state(&self) -> Option<ConnState> {
        self.running
            .lock()
            .await
            .as_ref()
            .map(|r| r.component.state())
    }

    /// The URL clients dial.
    pub fn url(&self) -> &NsmUrl {
        &self.url
    }

    /// The URL the component publishes as its own: the second listener's if it has one, else
    /// [`Self::url`].
    pub fn public_url(&self) -> &NsmUrl {
        self.public.as_ref().unwrap_or(&self.url)
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the server as if its process died: open connections and streams are cut, and the
    /// component is dropped (its background tasks stop).
    pub async fn stop(&self) {
        if let Some(r) = self.running.lock().await.take() {
            let _ = r.serving.stop().await;
            if let Some(public) = r.public {
                let _ = public.stop().await;
            }
        }
    }

    /// True while serving.
    pub async fn is_running(&self) -> bool {
        self.running.lock().await.is_some()
    }

    /// Builds a fresh component and serves it on the same URL (stopping the old one first).
    pub async fn restart(&self) -> Result<(), NsmError> {
        self.stop().await;
        let (routes, component) = (self.factory)(self.public_url().clone());
        let serving = serve_with(&self.url, router(routes.clone()).await, &self.security).await?;
        let public = match &self.public {
            Some(url) => match serve_with(url, router(routes).await, &self.security).await {
                Ok(public) => Some(public),
                Err(e) => {
                    let _ = serving.stop().await;
                    return Err(e);
                }
            },
            None => None,
        };
        *self.running.lock().await = Some(Running {
            serving,
            public,
            component,
        });
        Ok(())
    }
}

/// `routes` plus the health service.
async fn router(routes: Routes) -> tonic::transport::server::Router {
    let health = nsm_api::health::health_service(&nsm_api::services::ALL).await;
    tonic::transport::Server::builder()
        .add_routes(routes)
        .add_service(health)
}

/// Binds `bind` once to learn the final URL (the port, for port 0), so the factory sees the real
/// URL (components register their own URL).
async fn probe(bind: &NsmUrl) -> Result<NsmUrl, NsmError> {
    let probe = serve(
        bind,
        tonic::transport::Server::builder().add_routes(Routes::default()),
    )
    .await?;
    let url = probe.url().clone();
    probe.stop().await?;
    Ok(url)
}
