//! What `nsm ctl` asks the mesh: registry contents, NSMgr discovery, connection state, health.
//!
//! Every dial goes through [`nsm_networkservice::grpc::client_channel_with`] with the transport
//! security chosen by [`security_from_env`], so mTLS applies here as it does between components.
//!
//! **NSMgr discovery.** Without `--nsmgr`, the NSMgrs are the distinct URLs of the endpoints in the
//! registry: forwarders and NSEs register through their NSMgr, whose `localbypass` replaces their URL
//! with the NSMgr's public URL before the registration reaches the registry. An endpoint that
//! registered directly with the registry shows up as an "NSMgr" too; it serves MonitorConnections
//! as well, so its connections are still found (and merged with the NSMgrs' view of the same path).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use nsm_api::Connection;
use nsm_api::connection::MonitorScopeSelector;
use nsm_api::connection::monitor_connection_client::MonitorConnectionClient;
use nsm_api::registry::network_service_endpoint_registry_client::NetworkServiceEndpointRegistryClient;
use nsm_api::registry::network_service_registry_client::NetworkServiceRegistryClient;
use nsm_api::registry::{
    NetworkService, NetworkServiceEndpoint, NetworkServiceEndpointQuery, NetworkServiceQuery,
};
use nsm_api::url::NsmUrl;
use nsm_core::Clock;
use nsm_core::values::PeerInfo;
use nsm_identity::TransportSecurity;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The identity variables that switch `nsm ctl` to mTLS.
pub const IDENTITY_VARS: [&str; 2] = ["NSM_IDENTITY_DIR", "SPIFFE_ENDPOINT_SOCKET"];

/// mTLS when an identity source is configured (`NSM_IDENTITY_DIR` or `SPIFFE_ENDPOINT_SOCKET`),
/// plaintext otherwise.
pub async fn security_from_env() -> Result<TransportSecurity, String> {
    let configured = IDENTITY_VARS
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()));
    if !configured {
        return Ok(TransportSecurity::Insecure);
    }
    nsm_identity::install_crypto_provider();
    nsm_identity::transport_from_env()
        .await
        .map_err(|e| e.to_string())
}

/// A connection as one NSMgr reported it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The NSMgr (or other hop) that reported it.
    pub nsmgr: NsmUrl,
    /// Its view of the connection (path index at its own segment).
    pub conn: Connection,
}

impl Seen {
    /// The id the client chose (the first path segment's id), else the connection id.
    pub fn client_id(&self) -> &str {
        client_id(&self.conn)
    }
}

/// The id the client chose (the first path segment's id), else the connection id.
pub fn client_id(conn: &Connection) -> &str {
    conn.path_or_default()
        .path_segments
        .first()
        .map(|s| s.id.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or(&conn.id)
}

/// The mesh as `nsm ctl` sees it.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// The registry.
    pub registry: NsmUrl,
    /// NSMgrs given with `--nsmgr` (otherwise discovered).
    pub nsmgrs: Option<Vec<NsmUrl>>,
    /// Per dial and per call.
    pub timeout: Duration,
    /// Plaintext or mTLS.
    pub security: TransportSecurity,
    /// Wall clock.
    pub clock: Clock,
}

impl Mesh {
    /// Dials `url`.
    pub async fn channel(&self, url: &NsmUrl) -> Result<Channel, String> {
        nsm_networkservice::grpc::client_channel_with(url, self.timeout, &self.security)
            .await
            .map(|(c, _)| c)
            .map_err(|e| short_error(&e.to_string()))
    }

    async fn within<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| format!("{what}: no answer within {}", fmt_timeout(self.timeout)))?
    }

    /// Every network service in the registry, sorted by name.
    pub async fn services(&self) -> Result<Vec<NetworkService>, String> {
        let what = format!("registry {}", self.registry);
        self.within(&what, async {
            let mut c = NetworkServiceRegistryClient::new(self.channel(&self.registry).await?);
            let mut stream = c
                .find(NetworkServiceQuery {
                    network_service: Some(NetworkService::default()),
                    watch: false,
                })
                .await
                .map_err(|e| format!("{what}: Find network services: {}", e.message()))?
                .into_inner();
            let mut out = BTreeMap::new();
            while let Some(item) = stream.next().await {
                let item =
                    item.map_err(|e| format!("{what}: Find network services: {}", e.message()))?;
                if let Some(ns) = item.network_service.filter(|_| !item.deleted) {
                    out.insert(ns.name.clone(), ns);
                }
            }
            Ok(out.into_values().collect())
        })
        .await
    }

    /// Every endpoint in the registry (forwarders included), sorted by name.
    pub async fn endpoints(&self) -> Result<Vec<NetworkServiceEndpoint>, String> {
        let what = format!("registry {}", self.registry);
        self.endpoints_at(&self.registry, NetworkServiceEndpoint::default())
            .await
            .map_err(|e| format!("{what}: {e}"))
    }

    /// The endpoints `url` (a registry or an NSMgr) finds for `query`, sorted by name.
    pub async fn endpoints_at(
        &self,
        url: &NsmUrl,
        query: NetworkServiceEndpoint,
    ) -> Result<Vec<NetworkServiceEndpoint>, String> {
        self.within("Find endpoints", async {
            let mut c = NetworkServiceEndpointRegistryClient::new(self.channel(url).await?);
            let mut stream = c
                .find(NetworkServiceEndpointQuery {
                    network_service_endpoint: Some(query),
                    watch: false,
                })
                .await
                .map_err(|e| format!("Find endpoints: {}", e.message()))?
                .into_inner();
            let mut out = BTreeMap::new();
            while let Some(item) = stream.next().await {
                let item = item.map_err(|e| format!("Find endpoints: {}", e.message()))?;
                if let Some(nse) = item.network_service_endpoint.filter(|_| !item.deleted) {
                    out.insert(nse.name.clone(), nse);
                }
            }
            Ok(out.into_values().collect())
        })
        .await
    }

    /// The NSMgrs: `--nsmgr`, or the distinct endpoint URLs in the registry (see the module doc).
    pub async fn nsmgr_urls(
        &self,
        endpoints: Option<&[NetworkServiceEndpoint]>,
    ) -> Result<Vec<NsmUrl>, String> {
        if let Some(n) = &self.nsmgrs {
            return Ok(n.clone());
        }
        let fetched;
        let endpoints = match endpoints {
            Some(e) => e,
            None => {
                fetched = self.endpoints().await?;
                &fetched
            }
        };
        Ok(nsmgrs_of(endpoints))
    }

    /// gRPC health of `service` (`""`: the whole server) at `url`: `SERVING` or why not. With mTLS,
    /// also the server's identity from the handshake.
    pub async fn health(&self, url: &NsmUrl, service: &str) -> Result<Option<PeerInfo>, String> {
        self.within(&url.to_string(), async {
            let (ch, peer) =
                nsm_networkservice::grpc::client_channel_with(url, self.timeout, &self.security)
                    .await
                    .map_err(|e| short_error(&e.to_string()))?;
            let mut c = HealthClient::new(ch);
            let resp = c
                .check(HealthCheckRequest {
                    service: service.to_string(),
                })
                .await
                .map_err(|e| format!("health check: {}", e.message()))?
                .into_inner();
            if resp.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                Ok(peer.get())
            } else {
                Err(format!("health status {}", resp.status().as_str_name()))
            }
        })
        .await
    }

    /// The connections `url` reports in its INITIAL_STATE_TRANSFER, sorted by client id.
    pub async fn connections_at(&self, url: &NsmUrl) -> Result<Vec<Connection>, String> {
        self.within(&url.to_string(), async {
            let mut c = MonitorConnectionClient::new(self.channel(url).await?);
            let mut stream = c
                .monitor_connections(MonitorScopeSelector::default())
                .await
                .map_err(|e| format!("MonitorConnections: {}", e.message()))?
                .into_inner();
            let first = stream
                .next()
                .await
                .ok_or("MonitorConnections ended before the initial state")?
                .map_err(|e| format!("MonitorConnections: {}", e.message()))?;
            let mut conns: Vec<Connection> = first.connections.into_values().collect();
            conns.sort_by(|a, b| client_id(a).cmp(client_id(b)).then(a.id.cmp(&b.id)));
            Ok(conns)
        })
        .await
    }

    /// Connections from every NSMgr (and the NSMgrs that did not answer, with why).
    pub async fn all_connections(&self, nsmgrs: &[NsmUrl]) -> (Vec<Seen>, Vec<(NsmUrl, String)>) {
        let answers = futures::future::join_all(
            nsmgrs
                .iter()
                .map(|u| async move { (u.clone(), self.connections_at(u).await) }),
        )
        .await;
        let mut seen = Vec::new();
        let mut failed = Vec::new();
        for (url, r) in answers {
            match r {
                Ok(conns) => seen.extend(conns.into_iter().map(|conn| Seen {
                    nsmgr: url.clone(),
                    conn,
                })),
                Err(e) => failed.push((url, e)),
            }
        }
        (seen, failed)
    }
}

/// `e` without repeated causes (`a: b: b` → `a: b`) and without the `dial: unavailable:` prefix.
pub fn short_error(e: &str) -> String {
    let e = e.strip_prefix("dial: unavailable: ").unwrap_or(e);
    let mut parts: Vec<&str> = Vec::new();
    for p in e.split(": ") {
        if parts.last() != Some(&p) && !parts.contains(&p) {
            parts.push(p);
        }
    }
    parts.join(": ")
}

/// `e` without a leading `failed to dial <url>: ` (for messages that name `url` already).
pub fn dial_reason(url: &NsmUrl, e: &str) -> String {
    let prefix = format!("failed to dial {url}: ");
    e.strip_prefix(&prefix).unwrap_or(e).to_string()
}

/// Distinct endpoint URLs, sorted.
pub fn nsmgrs_of(endpoints: &[NetworkServiceEndpoint]) -> Vec<NsmUrl> {
    endpoints
        .iter()
        .filter(|e| !e.url.is_empty())
        .map(|e| e.url.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter_map(|u| NsmUrl::parse(&u).ok())
        .collect()
}

/// `5s`, `1.5s`, `250ms`.
pub fn fmt_timeout(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_api::{Path, PathSegment};

    #[test]
    fn nsmgrs_are_distinct_endpoint_urls() {
        let nse = |name: &str, url: &str| NetworkServiceEndpoint {
            name: name.into(),
            url: url.into(),
            ..Default::default()
        };
        let urls = nsmgrs_of(&[
            nse("fwd-1", "tcp://10.0.0.1:5001"),
            nse("nse-1", "tcp://10.0.0.1:5001"),
            nse("nse-2", "unix:///run/nsm.sock"),
            nse("broken", "not a url"),
            nse("none", ""),
        ]);
        let s: Vec<String> = urls.iter().map(ToString::to_string).collect();
        assert_eq!(s, ["tcp://10.0.0.1:5001", "unix:///run/nsm.sock"]);
    }

    #[test]
    fn client_id_is_the_first_segment() {
        let mut c = Connection {
            id: "uuid-at-nsmgr".into(),
            ..Default::default()
        };
        assert_eq!(client_id(&c), "uuid-at-nsmgr");
        c.path = Some(Path {
            index: 1,
            path_segments: vec![
                PathSegment {
                    name: "nsc".into(),
                    id: "nsc-0".into(),
                    ..Default::default()
                },
                PathSegment {
                    name: "nsmgr".into(),
                    id: "uuid-at-nsmgr".into(),
                    ..Default::default()
                },
            ],
        });
        assert_eq!(client_id(&c), "nsc-0");
    }

    #[test]
    fn errors_are_shortened() {
        assert_eq!(
            short_error(
                "dial: unavailable: failed to dial unix:///x: transport error: Connection refused (os error 111): Connection refused (os error 111)"
            ),
            "failed to dial unix:///x: transport error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn timeouts() {
        assert_eq!(fmt_timeout(Duration::from_secs(5)), "5s");
        assert_eq!(fmt_timeout(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_timeout(Duration::from_millis(1500)), "1.5s");
    }
}
