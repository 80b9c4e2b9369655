//! `clientinfo`: labels a connection with where its client runs.
//!
//! **Request**: adds `nodeName`, `podName` and `clusterName` labels to `Connection.labels` from the
//! process's `NODE_NAME`, `POD_NAME` and `CLUSTER_NAME` (read once, when the element is built). A label
//! the request already carries is never overwritten; an unset variable adds nothing. In Go this is a
//! client element that the NSMgr adapts into its server chain; here the one element serves both.
//!
//! **Close**: passes through. **State**: none. No background events.

use std::collections::BTreeMap;

use async_trait::async_trait;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::{Ctx, NetworkServiceServer, Next, Result};

const ELEMENT: &str = "clientinfo";

/// The label names and the environment variables they come from.
const LABELS: [(&str, &str); 3] = [
    ("nodeName", "NODE_NAME"),
    ("podName", "POD_NAME"),
    ("clusterName", "CLUSTER_NAME"),
];

/// Where the client runs; each field becomes one label when set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfoLabels {
    /// `nodeName` (from `NODE_NAME`).
    pub node_name: Option<String>,
    /// `podName` (from `POD_NAME`).
    pub pod_name: Option<String>,
    /// `clusterName` (from `CLUSTER_NAME`).
    pub cluster_name: Option<String>,
}

impl ClientInfoLabels {
    /// Reads `NODE_NAME`, `POD_NAME` and `CLUSTER_NAME`; unset or non-UTF-8 variables are left out.
    pub fn from_env() -> Self {
        let read = |var: &str| {
            let v = std::env::var(var).ok();
            if v.is_none() {
                tracing::warn!(
                    element = ELEMENT,
                    "environment variable {var} is not set; skipping"
                );
            }
            v
        };
        Self {
            node_name: read(LABELS[0].1),
            pod_name: read(LABELS[1].1),
            cluster_name: read(LABELS[2].1),
        }
    }

    /// Adds the set labels to `labels`, keeping any value already there.
    pub fn add_to(&self, labels: &mut BTreeMap<String, String>) {
        let values = [&self.node_name, &self.pod_name, &self.cluster_name];
        for ((label, _), value) in LABELS.iter().zip(values) {
            let Some(value) = value else { continue };
            match labels.get(*label) {
                Some(old) => tracing::debug!(
                    element = ELEMENT,
                    "label {label} is already {old:?}; not overwriting"
                ),
                None => {
                    labels.insert((*label).to_string(), value.clone());
                }
            }
        }
    }
}

/// `clientinfo` (usable in client and server chains).
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    labels: ClientInfoLabels,
}

impl ClientInfo {
    /// An element adding the given labels.
    pub fn new(labels: ClientInfoLabels) -> Self {
        Self { labels }
    }

    /// An element adding the labels read from `NODE_NAME`, `POD_NAME` and `CLUSTER_NAME`.
    pub fn from_env() -> Self {
        Self::new(ClientInfoLabels::from_env())
    }
}

#[async_trait]
impl NetworkServiceServer for ClientInfo {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let conn = request.connection.get_or_insert_with(Default::default);
        self.labels.add_to(&mut conn.labels);
        next.request(ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nsm_core::{Chain, Clock};

    use super::*;

    #[tokio::test]
    async fn adds_set_labels_without_overwriting() {
        let element = ClientInfo::new(ClientInfoLabels {
            node_name: Some("node-1".into()),
            pod_name: Some("nsc-pod".into()),
            cluster_name: None,
        });
        let c = Chain::new("t", vec![Arc::new(element)]);
        let mut req = NetworkServiceRequest::default();
        req.connection
            .get_or_insert_with(Default::default)
            .labels
            .insert("podName".into(), "given".into());
        let conn = c
            .run_request(&mut Ctx::new(Clock::system()), req)
            .await
            .unwrap();
        let want: BTreeMap<String, String> = [("nodeName", "node-1"), ("podName", "given")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(conn.labels, want);
    }
}
