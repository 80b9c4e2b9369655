//! `validate`: refuses or repairs bad registrations before they reach the store (no Go counterpart; Go
//! stores whatever it is sent).
//!
//! - Register of an endpoint: an empty name gets a generated one (`nse-<uuid>`, like the k8s registry's
//!   `generateName`); an empty or unparsable URL is refused; label maps over [`MAX_LABELS`] labels or
//!   [`MAX_LABEL_BYTES`] bytes in total are refused.
//! - Register of a network service: an empty name is refused; the labels in its matches have the same
//!   limits.
//! - Unregister of either without a name is refused (there is nothing to remove). Find passes through.
//!
//! Refusals are `InvalidArgument` naming this element and the offending value.

use std::collections::BTreeMap;

use async_trait::async_trait;
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_api::url::NsmUrl;
use nsm_core::registry::{FindStream, Query, RegistryItem, RegistryNext, RegistryServer};
use nsm_core::{Ctx, NsmError, Result};

const NAME: &str = "validate";

/// Most labels one item may carry, over all its maps.
pub const MAX_LABELS: usize = 128;
/// Most bytes (keys plus values) the labels of one item may take.
pub const MAX_LABEL_BYTES: usize = 16 * 1024;

/// Checks registrations (both registries).
#[derive(Debug, Clone, Default)]
pub struct ValidateServer;

impl ValidateServer {
    /// The element.
    pub fn new() -> Self {
        Self
    }
}

#[derive(Default)]
struct LabelBudget {
    count: usize,
    bytes: usize,
}

impl LabelBudget {
    fn add(&mut self, labels: &BTreeMap<String, String>) {
        self.count += labels.len();
        self.bytes += labels.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    }

    fn check(&self, kind: &str, name: &str) -> Result<()> {
        if self.count > MAX_LABELS || self.bytes > MAX_LABEL_BYTES {
            return Err(NsmError::invalid(
                NAME,
                format!(
                    "{kind} {name:?} has {} labels in {} bytes (limit {MAX_LABELS} labels, {MAX_LABEL_BYTES} bytes)",
                    self.count, self.bytes
                ),
            ));
        }
        Ok(())
    }
}

fn check_endpoint(nse: &mut NetworkServiceEndpoint) -> Result<()> {
    if nse.name.is_empty() {
        nse.name = format!("nse-{}", uuid::Uuid::new_v4());
    }
    if let Err(e) = NsmUrl::parse(&nse.url) {
        return Err(NsmError::invalid(
            NAME,
            format!("endpoint {:?} url {:?}: {e}", nse.name, nse.url),
        ));
    }
    let mut budget = LabelBudget::default();
    for labels in nse.network_service_labels.values() {
        budget.add(&labels.labels);
    }
    budget.check("endpoint", &nse.name)
}

fn check_service(ns: &NetworkService) -> Result<()> {
    if ns.name.is_empty() {
        return Err(NsmError::invalid(NAME, "network service without a name"));
    }
    let mut budget = LabelBudget::default();
    for m in &ns.matches {
        budget.add(&m.source_selector);
        if let Some(md) = &m.metadata {
            budget.add(&md.labels);
        }
        for d in &m.routes {
            budget.add(&d.destination_selector);
        }
    }
    budget.check("network service", &ns.name)
}

fn check_unregister<T: RegistryItem>(item: &T) -> Result<()> {
    if item.name().is_empty() {
        return Err(NsmError::invalid(
            NAME,
            format!("cannot unregister a {} without a name", T::KIND),
        ));
    }
    Ok(())
}

#[async_trait]
impl RegistryServer<NetworkServiceEndpoint> for ValidateServer {
    async fn register(
        &self,
        ctx: &mut Ctx,
        mut nse: NetworkServiceEndpoint,
        next: RegistryNext<NetworkServiceEndpoint>,
    ) -> Result<NetworkServiceEndpoint> {
        check_endpoint(&mut nse)?;
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
        check_unregister(&nse)?;
        next.unregister(ctx, nse).await
    }
    fn name(&self) -> &'static str {
        NAME
    }
}

#[async_trait]
impl RegistryServer<NetworkService> for ValidateServer {
    async fn register(
        &self,
        ctx: &mut Ctx,
        ns: NetworkService,
        next: RegistryNext<NetworkService>,
    ) -> Result<NetworkService> {
        check_service(&ns)?;
        next.register(ctx, ns).await
    }
    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<NetworkService>,
        next: RegistryNext<NetworkService>,
    ) -> Result<FindStream<NetworkService>> {
        next.find(ctx, query).await
    }
    async fn unregister(
        &self,
        ctx: &mut Ctx,
        ns: NetworkService,
        next: RegistryNext<NetworkService>,
    ) -> Result<()> {
        check_unregister(&ns)?;
        next.unregister(ctx, ns).await
    }
    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_api::registry::NetworkServiceLabels;
    use nsm_core::Clock;
    use nsm_core::registry::RegistryChain;
    use std::sync::Arc;

    fn chain() -> RegistryChain<NetworkServiceEndpoint> {
        RegistryChain::new("t", vec![Arc::new(ValidateServer::new())])
    }

    #[tokio::test]
    async fn nameless_endpoint_gets_a_generated_name() {
        let mut ctx = Ctx::new(Clock::system());
        let nse = NetworkServiceEndpoint {
            url: "tcp://10.0.0.1:5001".into(),
            ..Default::default()
        };
        let reg = chain().run_register(&mut ctx, nse).await.unwrap();
        assert!(
            reg.name.starts_with("nse-") && reg.name.len() > 10,
            "{}",
            reg.name
        );
    }

    #[tokio::test]
    async fn bad_urls_and_huge_label_maps_are_refused() {
        let mut ctx = Ctx::new(Clock::system());
        for url in ["", "bogus://x", "tcp://host"] {
            let nse = NetworkServiceEndpoint {
                name: "nse-1".into(),
                url: url.into(),
                ..Default::default()
            };
            let err = chain().run_register(&mut ctx, nse).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            let msg = err.to_string();
            assert!(
                msg.starts_with("validate:") && msg.contains(&format!("{url:?}")),
                "{msg}"
            );
        }
        let labels = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        let nse = NetworkServiceEndpoint {
            name: "nse-1".into(),
            url: "tcp://10.0.0.1:5001".into(),
            network_service_labels: BTreeMap::from([(
                "svc".to_string(),
                NetworkServiceLabels { labels },
            )]),
            ..Default::default()
        };
        let err = chain().run_register(&mut ctx, nse).await.unwrap_err();
        assert!(err.to_string().contains("129 labels"), "{err}");
    }
}
