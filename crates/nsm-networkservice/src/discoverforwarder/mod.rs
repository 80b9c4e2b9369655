//! `discoverforwarder` (server, NSMgr): picks the local forwarder a connection goes through.
//!
//! Forwarders are ordinary endpoints of the network service `forwarder` (configurable), registered
//! in the NSMgr's local endpoint registry with labels under that service name.
//!
//! **Request**: a connection that already has a forwarder (server-side metadata) keeps it: it is looked
//! up by name and the rest of the chain runs with its URL; if it is gone, the selection is cleared and
//! the Request fails with `NotFound` (the next Request selects again). Otherwise the network service is
//! found (exact name), then all forwarders, and the service's matches choose the candidates (see
//! [`select_forwarders`]); candidates are tried in registry order with their URL as next hop, and the
//! first success is stored as the connection's forwarder. If the request's path already names a
//! forwarder after this NSMgr's segment (a refresh or heal reaching a restarted NSMgr that does not
//! know the connection), that forwarder is tried first when it qualifies, so the data path stays
//! where it is instead of being built a second time elsewhere (sdk#1230). No candidate → `NotFound` listing the labels
//! required and the forwarders seen; all failing → every candidate and why.
//!
//! **Close**: closes through the stored forwarder (an error if none is stored or it is gone).
//! **State**: the selected forwarder's name in server-side metadata (required).

mod select;

pub use select::{ForwarderSelection, select_forwarders};

use std::sync::Arc;

use async_trait::async_trait;
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::error::CandidateFailure;
use nsm_core::metadata::{ConnMetadata, Side};
use nsm_core::registry::RegistryChain;
use nsm_core::values::ClientUrl;
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};

use crate::discover::{endpoint_url, find_network_service, find_nses};

const NAME: &str = "discoverforwarder";

/// The forwarder chosen for a connection.
#[derive(Debug, Clone)]
struct SelectedForwarder(String);

/// Selects a forwarder by the network service's match metadata labels.
pub struct DiscoverForwarderServer {
    ns_registry: RegistryChain<NetworkService>,
    nse_registry: RegistryChain<NetworkServiceEndpoint>,
    forwarder_service_name: String,
}

impl DiscoverForwarderServer {
    /// Finds services in `ns_registry` and forwarders (endpoints of `forwarder_service_name`, normally
    /// `"forwarder"`) in `nse_registry`.
    pub fn new(
        ns_registry: RegistryChain<NetworkService>,
        nse_registry: RegistryChain<NetworkServiceEndpoint>,
        forwarder_service_name: String,
    ) -> Self {
        Self {
            ns_registry,
            nse_registry,
            forwarder_service_name,
        }
    }

    /// The stored forwarder, looked up by name (an exact match preferred; the registry matches
    /// substrings and Go takes its first answer).
    async fn stored(&self, ctx: &Ctx, name: &str) -> Result<Option<NetworkServiceEndpoint>> {
        let template = NetworkServiceEndpoint {
            name: name.to_string(),
            ..Default::default()
        };
        let found = find_nses(&self.nse_registry, ctx, template).await?;
        let exact = found.iter().position(|n| n.name == name).unwrap_or(0);
        Ok(found.into_iter().nth(exact))
    }

    async fn select_and_request(
        &self,
        ctx: &mut Ctx,
        metadata: &ConnMetadata,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let conn = request.connection.clone().unwrap_or_default();
        let ns = find_network_service(
            &self.ns_registry,
            ctx,
            NAME,
            &conn.network_service,
            &conn.payload,
        )
        .await?;
        let template = NetworkServiceEndpoint {
            network_service_names: vec![self.forwarder_service_name.clone()],
            ..Default::default()
        };
        let forwarders = find_nses(&self.nse_registry, ctx, template).await?;
        let selection =
            select_forwarders(&self.forwarder_service_name, &conn.labels, &ns, &forwarders)
                .map_err(|e| {
                    NsmError::invalid(NAME, format!("network service {}: {e}", ns.name))
                })?;
        if selection.candidates.is_empty() {
            return Err(NsmError::not_found(
                NAME,
                selection.describe_none(&ns, &conn.labels),
            ));
        }
        let mut candidates = selection.candidates;
        if let Some(on_path) = forwarder_on_path(&conn)
            && let Some(i) = candidates.iter().position(|f| f.name == on_path)
        {
            // A connection this NSMgr does not know but whose path already names a forwarder (the
            // NSMgr restarted): keep the data path where it is.
            let fwd = candidates.remove(i);
            candidates.insert(0, fwd);
        }
        let mut failures = Vec::new();
        for fwd in &candidates {
            let attempt = async {
                let mut ctx = ctx.clone();
                ctx.insert(ClientUrl(endpoint_url(NAME, fwd)?));
                next.clone().request(&mut ctx, request.clone()).await
            };
            match attempt.await {
                Ok(conn) => {
                    metadata.insert(Side::Server, SelectedForwarder(fwd.name.clone()));
                    return Ok(conn);
                }
                Err(e) => failures.push(CandidateFailure {
                    name: fwd.name.clone(),
                    error: Box::new(e),
                }),
            }
        }
        Err(NsmError::AllCandidatesFailed {
            element: NAME,
            what: format!("forwarder for network service {}", ns.name),
            candidates: failures,
        })
    }
}

/// The name of the path segment after ours (the forwarder an earlier run of this NSMgr selected), if
/// the request's path has one.
fn forwarder_on_path(conn: &Connection) -> Option<String> {
    let path = conn.path.as_ref()?;
    let next = usize::try_from(path.index).ok()?.checked_add(1)?;
    path.path_segments
        .get(next)
        .map(|s| s.name.clone())
        .filter(|n| !n.is_empty())
}

fn metadata(ctx: &Ctx) -> Result<Arc<ConnMetadata>> {
    ctx.metadata()
        .cloned()
        .ok_or_else(|| NsmError::internal(NAME, "no connection metadata in context"))
}

#[async_trait]
impl NetworkServiceServer for DiscoverForwarderServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let metadata = metadata(ctx)?;
        let Some(SelectedForwarder(name)) = metadata.get(Side::Server) else {
            return self.select_and_request(ctx, &metadata, request, next).await;
        };
        let Some(fwd) = self.stored(ctx, &name).await? else {
            metadata.remove::<SelectedForwarder>(Side::Server);
            return Err(NsmError::not_found(
                NAME,
                format!(
                    "forwarder {name} selected for this connection is not registered any more; \
                     selection cleared, the next request selects a forwarder again"
                ),
            ));
        };
        let mut ctx = ctx.clone();
        ctx.insert(ClientUrl(endpoint_url(NAME, &fwd)?));
        next.request(&mut ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        let metadata = metadata(ctx)?;
        let Some(SelectedForwarder(name)) = metadata.get(Side::Server) else {
            return Err(NsmError::not_found(
                NAME,
                format!("no forwarder is selected for connection {:?}", conn.id),
            ));
        };
        let fwd = self
            .stored(ctx, &name)
            .await?
            .ok_or_else(|| NsmError::not_found(NAME, format!("forwarder {name} is not found")))?;
        let mut ctx = ctx.clone();
        ctx.insert(ClientUrl(endpoint_url(NAME, &fwd)?));
        next.close(&mut ctx, conn).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests;
