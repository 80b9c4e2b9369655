//! `discover` (server, in forwarders and nsmgr-proxies): finds the endpoints that may serve a request.
//!
//! **Request**: if a next-hop URL is already in the context, passes through. If the connection names
//! its endpoint (`network_service_endpoint_name`), looks that endpoint up by exact name and continues
//! with its URL. Otherwise finds the network service (exact name; `NotFound` if absent), the live
//! endpoints registered for it, filters them with the service's matches (see [`selector`]), sets
//! `Connection.payload` to the service's payload and continues with [`Candidates`] in the context for
//! `roundrobin`. No candidate is `NotFound`, listing the labels and the endpoints seen.
//!
//! **Close**: looks the endpoint up by name for its URL (the connection must name it); if it is gone,
//! closes downstream without a URL, as Go does. **State**: none; every call asks the registries.
//!
//! Registry calls run on a copy of the context, so values registry elements set (their own client URL)
//! never reach the network service chain.

pub mod selector;

#[cfg(test)]
pub(crate) mod testing;

use async_trait::async_trait;
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_api::url::NsmUrl;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::registry::RegistryChain;
use nsm_core::values::{Candidates, ClientUrl};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};

use self::selector::{fmt_labels, match_endpoints};

const NAME: &str = "discover";

/// Finds candidate endpoints in the registries.
pub struct DiscoverServer {
    ns_registry: RegistryChain<NetworkService>,
    nse_registry: RegistryChain<NetworkServiceEndpoint>,
}

impl DiscoverServer {
    /// Looks services up in `ns_registry` and endpoints in `nse_registry` (used as clients).
    pub fn new(
        ns_registry: RegistryChain<NetworkService>,
        nse_registry: RegistryChain<NetworkServiceEndpoint>,
    ) -> Self {
        Self {
            ns_registry,
            nse_registry,
        }
    }

    async fn endpoint_by_name(&self, ctx: &Ctx, name: &str) -> Result<NetworkServiceEndpoint> {
        let template = NetworkServiceEndpoint {
            name: name.to_string(),
            ..Default::default()
        };
        find_nses(&self.nse_registry, ctx, template)
            .await?
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| {
                NsmError::not_found(
                    NAME,
                    format!("network service endpoint {name} is not found"),
                )
            })
    }

    async fn candidates(&self, ctx: &Ctx, conn: &Connection) -> Result<Candidates> {
        let ns = find_network_service(
            &self.ns_registry,
            ctx,
            NAME,
            &conn.network_service,
            &conn.payload,
        )
        .await?;
        let template = NetworkServiceEndpoint {
            network_service_names: vec![ns.name.clone()],
            ..Default::default()
        };
        let all = find_nses(&self.nse_registry, ctx, template).await?;
        let seen: Vec<String> = all.iter().map(|n| n.name.clone()).collect();
        let endpoints = match_endpoints(ctx.clock().now(), &conn.labels, &ns, all)
            .map_err(|e| NsmError::invalid(NAME, format!("network service {}: {e}", ns.name)))?;
        if endpoints.is_empty() {
            return Err(NsmError::not_found(
                NAME,
                format!(
                    "no network service endpoint of {} matches connection labels {} (registered: [{}])",
                    ns.name,
                    fmt_labels(&conn.labels),
                    seen.join(", ")
                ),
            ));
        }
        Ok(Candidates {
            network_service: ns,
            endpoints,
        })
    }
}

/// Finds network service `name` (exact name; the registry matches substrings).
pub(crate) async fn find_network_service(
    registry: &RegistryChain<NetworkService>,
    ctx: &Ctx,
    element: &'static str,
    name: &str,
    payload: &str,
) -> Result<NetworkService> {
    if name.is_empty() {
        // An empty name would match every service in the registry's substring search.
        return Err(NsmError::invalid(
            element,
            "the connection names no network service",
        ));
    }
    let template = NetworkService {
        name: name.to_string(),
        payload: payload.to_string(),
        ..Default::default()
    };
    registry
        .find_all(&mut ctx.clone(), template)
        .await?
        .into_iter()
        .map(|f| f.item)
        .find(|ns| ns.name == name)
        .ok_or_else(|| NsmError::not_found(element, format!("network service {name} is not found")))
}

/// Finds endpoints matching `template` (deleted entries are dropped). An endpoint listed twice — an
/// NSMgr answers with its local copy and the central registry's — is kept once, at its first place, so
/// a failing endpoint is neither tried nor reported twice.
pub(crate) async fn find_nses(
    registry: &RegistryChain<NetworkServiceEndpoint>,
    ctx: &Ctx,
    template: NetworkServiceEndpoint,
) -> Result<Vec<NetworkServiceEndpoint>> {
    let mut seen = std::collections::HashSet::new();
    Ok(registry
        .find_all(&mut ctx.clone(), template)
        .await?
        .into_iter()
        .filter(|f| !f.deleted)
        .map(|f| f.item)
        .filter(|nse| seen.insert(nse.name.clone()))
        .collect())
}

/// The endpoint's URL as a next-hop URL.
pub(crate) fn endpoint_url(element: &'static str, nse: &NetworkServiceEndpoint) -> Result<NsmUrl> {
    NsmUrl::parse(&nse.url).map_err(|e| {
        NsmError::invalid(element, format!("endpoint {} has a bad URL: {e}", nse.name))
    })
}

#[async_trait]
impl NetworkServiceServer for DiscoverServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        if ctx.get::<ClientUrl>().is_some() {
            return next.request(ctx, request).await;
        }
        let conn = request.connection.get_or_insert_default();
        let mut ctx = ctx.clone();
        if !conn.network_service_endpoint_name.is_empty() {
            let nse = self
                .endpoint_by_name(&ctx, &conn.network_service_endpoint_name)
                .await?;
            ctx.insert(ClientUrl(endpoint_url(NAME, &nse)?));
            return next.request(&mut ctx, request).await;
        }
        let candidates = self.candidates(&ctx, conn).await?;
        conn.payload = candidates.network_service.payload.clone();
        ctx.insert(candidates);
        next.request(&mut ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        if ctx.get::<ClientUrl>().is_some() {
            return next.close(ctx, conn).await;
        }
        if conn.network_service_endpoint_name.is_empty() {
            return Err(NsmError::invalid(
                NAME,
                format!(
                    "cannot close connection {:?}: network_service_endpoint_name is not set",
                    conn.id
                ),
            ));
        }
        let mut ctx = ctx.clone();
        match self
            .endpoint_by_name(&ctx, &conn.network_service_endpoint_name)
            .await
            .and_then(|nse| endpoint_url(NAME, &nse))
        {
            Ok(url) => {
                ctx.insert(ClientUrl(url));
            }
            Err(e) => {
                tracing::warn!(conn = %conn.id, error = %e, "discover: closing without endpoint URL")
            }
        }
        next.close(&mut ctx, conn).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests;
