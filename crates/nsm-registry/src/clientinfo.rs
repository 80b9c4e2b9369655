//! `clientinfo` (endpoints): Register adds `nodeName`, `podName` and `clusterName` to the labels of
//! every service the endpoint offers (`network_service_labels[*]`), never overwriting a label the
//! endpoint set itself (Go `registry/common/clientinfo`). Find and Unregister pass through.
//!
//! Values are given explicitly or read once from `NODE_NAME`, `POD_NAME` and `CLUSTER_NAME` by
//! [`ClientInfoServer::from_env`]; as in Go, a variable that is set (even to "") adds its label and one
//! that is unset adds nothing.

use async_trait::async_trait;
use nsm_api::registry::NetworkServiceEndpoint;
use nsm_core::registry::{FindStream, Query, RegistryNext, RegistryServer};
use nsm_core::{Ctx, Result};

/// Label carrying the node name.
pub const NODE_NAME_LABEL: &str = "nodeName";
/// Label carrying the pod name.
pub const POD_NAME_LABEL: &str = "podName";
/// Label carrying the cluster name.
pub const CLUSTER_NAME_LABEL: &str = "clusterName";

/// Adds node/pod/cluster labels on Register.
#[derive(Debug, Clone, Default)]
pub struct ClientInfoServer {
    labels: Vec<(&'static str, String)>,
}

impl ClientInfoServer {
    /// Adds no labels until values are given with the `with_*` methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `NODE_NAME`, `POD_NAME` and `CLUSTER_NAME` from the environment.
    pub fn from_env() -> Self {
        let mut s = Self::new();
        for (env, label) in [
            ("NODE_NAME", NODE_NAME_LABEL),
            ("POD_NAME", POD_NAME_LABEL),
            ("CLUSTER_NAME", CLUSTER_NAME_LABEL),
        ] {
            match std::env::var(env) {
                Ok(v) => s.set(label, v),
                Err(_) => tracing::debug!("clientinfo: {env} is not set; no {label} label"),
            }
        }
        s
    }

    fn set(&mut self, label: &'static str, value: String) {
        self.labels.retain(|(l, _)| *l != label);
        self.labels.push((label, value));
    }

    /// Sets the `nodeName` value.
    pub fn with_node_name(mut self, v: impl Into<String>) -> Self {
        self.set(NODE_NAME_LABEL, v.into());
        self
    }

    /// Sets the `podName` value.
    pub fn with_pod_name(mut self, v: impl Into<String>) -> Self {
        self.set(POD_NAME_LABEL, v.into());
        self
    }

    /// Sets the `clusterName` value.
    pub fn with_cluster_name(mut self, v: impl Into<String>) -> Self {
        self.set(CLUSTER_NAME_LABEL, v.into());
        self
    }
}

#[async_trait]
impl RegistryServer<NetworkServiceEndpoint> for ClientInfoServer {
    async fn register(
        &self,
        ctx: &mut Ctx,
        mut nse: NetworkServiceEndpoint,
        next: RegistryNext<NetworkServiceEndpoint>,
    ) -> Result<NetworkServiceEndpoint> {
        for service in nse.network_service_labels.values_mut() {
            for (label, value) in &self.labels {
                service
                    .labels
                    .entry((*label).to_string())
                    .or_insert_with(|| value.clone());
            }
        }
        next.register(ctx, nse).await
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<NetworkServiceEndpoint>,
        next: RegistryNext<NetworkServiceEndpoint>,
    ) -> Result<FindStream<NetworkServiceEndpoint>> {
        next.find(ctx, query).await
    }

    async fn unregister(
        &self,
        ctx: &mut Ctx,
        nse: NetworkServiceEndpoint,
        next: RegistryNext<NetworkServiceEndpoint>,
    ) -> Result<()> {
        next.unregister(ctx, nse).await
    }

    fn name(&self) -> &'static str {
        "clientinfo"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_api::registry::NetworkServiceLabels;
    use nsm_core::Clock;
    use nsm_core::registry::RegistryChain;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    #[tokio::test]
    async fn labels_every_service_without_overwriting() {
        let server = ClientInfoServer::new()
            .with_node_name("node-1")
            .with_pod_name("pod-1")
            .with_cluster_name("c1");
        let chain = RegistryChain::new("t", vec![Arc::new(server)]);
        let nse = NetworkServiceEndpoint {
            name: "nse".into(),
            network_service_labels: BTreeMap::from([
                (
                    "a".to_string(),
                    NetworkServiceLabels {
                        labels: BTreeMap::from([("podName".to_string(), "mine".to_string())]),
                    },
                ),
                ("b".to_string(), NetworkServiceLabels::default()),
            ]),
            ..Default::default()
        };
        let mut ctx = Ctx::new(Clock::system());
        let got = chain.run_register(&mut ctx, nse).await.unwrap();
        let a = &got.network_service_labels["a"].labels;
        let b = &got.network_service_labels["b"].labels;
        assert_eq!(a["podName"], "mine", "an existing label is kept");
        assert_eq!(a["nodeName"], "node-1");
        assert_eq!(b["podName"], "pod-1");
        assert_eq!(b["clusterName"], "c1");
    }
}
