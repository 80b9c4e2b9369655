//! The endpoint chain: the base of every server hop (NSMgr, forwarder, NSE).
//!
//! updatepath → begin → updatetoken → authorize → metadata → timeout → monitor → trimpath → *additional*
//!
//! Served as `networkservice.NetworkService` + `connection.MonitorConnection` + health.

use std::sync::Arc;

use nsm_api::services;
use nsm_api::url::NsmUrl;
use nsm_core::chain::Element;
use nsm_core::token::SharedTokenGenerator;
use nsm_core::{Chain, Clock, NsmError};
use nsm_identity::TransportSecurity;
use nsm_networkservice::authorize::AuthorizeServer;
use nsm_networkservice::begin::BeginServer;
use nsm_networkservice::grpc::NetworkServiceGrpc;
use nsm_networkservice::grpc::{Serving, serve_with};
use nsm_networkservice::metadata::MetadataServer;
use nsm_networkservice::monitor::{MonitorConnectionGrpc, MonitorServer};
use nsm_networkservice::timeout::TimeoutServer;
use nsm_networkservice::trimpath::TrimPathServer;
use nsm_networkservice::updatepath::UpdatePathServer;
use nsm_networkservice::updatetoken::UpdateTokenServer;
use tonic::service::Routes;

/// What an endpoint chain is made of.
pub struct EndpointOptions {
    /// The hop's name (its path segment name).
    pub name: String,
    /// Signs this hop's path tokens.
    pub token_generator: SharedTokenGenerator,
    /// The authorize element (default: allow everything, as the sdk chains).
    pub authorize: Element,
    /// Elements after the base chain (the component's own functionality).
    pub additional: Vec<Element>,
    /// The clock every timer uses.
    pub clock: Clock,
    /// How the endpoint is served ([`Endpoint::serve`]) and how onward clients built from these
    /// options dial (plaintext by default; SPIFFE mTLS in production).
    pub security: TransportSecurity,
}

impl EndpointOptions {
    /// Options with allow-all authorization and no additional elements.
    pub fn new(
        name: impl Into<String>,
        token_generator: SharedTokenGenerator,
        clock: Clock,
    ) -> Self {
        Self {
            name: name.into(),
            token_generator,
            authorize: Arc::new(AuthorizeServer::any()),
            additional: Vec::new(),
            clock,
            security: TransportSecurity::Insecure,
        }
    }
}

/// A built endpoint: its chain and the services that expose it.
pub struct Endpoint {
    /// The hop's name.
    pub name: String,
    /// The whole server chain.
    pub chain: Chain,
    /// This hop's MonitorConnection service.
    pub monitor: MonitorConnectionGrpc,
    /// The begin element (to count live connections).
    pub begin: Arc<BeginServer>,
    /// The metadata element (to count connections with per-connection state).
    pub metadata: Arc<MetadataServer>,
    /// The monitor element (to see the connections this hop reports).
    pub monitor_server: Arc<MonitorServer>,
    /// The transport security [`Endpoint::serve`] uses.
    pub security: TransportSecurity,
    clock: Clock,
}

impl Endpoint {
    /// Builds the endpoint chain.
    pub fn new(opts: EndpointOptions) -> Self {
        let monitor = Arc::new(MonitorServer::new());
        let monitor_grpc = monitor.monitor_connection();
        let begin = Arc::new(BeginServer::new());
        let metadata = Arc::new(MetadataServer::new());
        let mut elements: Vec<Element> = vec![
            Arc::new(UpdatePathServer::new(opts.name.clone())),
            begin.clone(),
            Arc::new(UpdateTokenServer::new(opts.token_generator)),
            opts.authorize,
            metadata.clone(),
            Arc::new(TimeoutServer::new()),
            monitor.clone(),
            Arc::new(TrimPathServer::new()),
        ];
        elements.extend(opts.additional);
        Self {
            name: opts.name,
            chain: Chain::new("endpoint", elements),
            monitor: monitor_grpc,
            begin,
            metadata,
            monitor_server: monitor,
            security: opts.security,
            clock: opts.clock,
        }
    }

    /// The gRPC services of this endpoint (NetworkService, MonitorConnection).
    pub fn routes(&self) -> Routes {
        Routes::new(NetworkServiceGrpc::new(self.chain.clone(), self.clock).into_service())
            .add_service(self.monitor.clone().into_service())
    }

    /// Serves [`Endpoint::routes`] on `url` with the endpoint's transport security.
    pub async fn serve(&self, url: &NsmUrl) -> Result<Serving, NsmError> {
        let router = tonic::transport::Server::builder().add_routes(self.routes());
        serve_with(url, router, &self.security).await
    }

    /// Names of the services [`Endpoint::routes`] serves, for the health service.
    pub const SERVICES: [&'static str; 2] =
        [services::NETWORK_SERVICE, services::MONITOR_CONNECTION];
}
