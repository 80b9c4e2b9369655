//! `connection.MonitorConnection` over this hop's connections.

use async_trait::async_trait;
use futures::stream::BoxStream;
use nsm_api::ConnectionEvent;
use nsm_api::connection::MonitorScopeSelector;
use nsm_api::connection::monitor_connection_server::{MonitorConnection, MonitorConnectionServer};
use std::sync::Arc;
use tonic::{Request, Response, Status};

use super::hub::Hub;

/// The MonitorConnection service of a hop; get it from
/// [`MonitorServer::monitor_connection`](super::MonitorServer::monitor_connection).
#[derive(Clone)]
pub struct MonitorConnectionGrpc {
    pub(super) hub: Arc<Hub>,
}

impl std::fmt::Debug for MonitorConnectionGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MonitorConnectionGrpc")
    }
}

impl MonitorConnectionGrpc {
    /// The tonic service to add to a router.
    pub fn into_service(self) -> MonitorConnectionServer<Self> {
        MonitorConnectionServer::new(self)
    }
}

#[async_trait]
impl MonitorConnection for MonitorConnectionGrpc {
    type MonitorConnectionsStream = BoxStream<'static, Result<ConnectionEvent, Status>>;

    async fn monitor_connections(
        &self,
        request: Request<MonitorScopeSelector>,
    ) -> Result<Response<Self::MonitorConnectionsStream>, Status> {
        Ok(Response::new(self.hub.subscribe(request.into_inner())))
    }
}
