//! `proxy`: sends interdomain items (a name containing `@`) to the proxy registry and keeps everything
//! else local (Go `registry/common/proxy`).
//!
//! - Register/Unregister of an interdomain name: sets [`ClientUrl`] to the proxy registry and continues
//!   (to `connect`). Any other name: returns at once (Register echoes the item, Unregister succeeds), so a
//!   local registration never leaves this registry.
//! - Find: forwarded only when the query is interdomain — its name, or for endpoints one of its service
//!   names, contains `@`; otherwise finds nothing here.
//! - Without a proxy URL, interdomain items are treated like local ones (nothing to forward to).

use std::marker::PhantomData;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream;
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_api::url::NsmUrl;
use nsm_core::registry::{FindStream, Query, RegistryItem, RegistryNext, RegistryServer};
use nsm_core::values::ClientUrl;
use nsm_core::{Ctx, Result};

/// True for interdomain names (`name@domain`).
pub fn is_interdomain(name: &str) -> bool {
    name.contains('@')
}

/// Which queries are interdomain, per item kind.
pub trait ProxyItem: RegistryItem {
    /// True if a Find for this template must go to the proxy registry.
    fn query_is_interdomain(template: &Self) -> bool;
}

impl ProxyItem for NetworkService {
    fn query_is_interdomain(template: &Self) -> bool {
        is_interdomain(&template.name)
    }
}

impl ProxyItem for NetworkServiceEndpoint {
    fn query_is_interdomain(template: &Self) -> bool {
        is_interdomain(&template.name)
            || template
                .network_service_names
                .iter()
                .any(|n| is_interdomain(n))
    }
}

/// Forwards interdomain items to the proxy registry.
#[derive(Debug, Clone)]
pub struct ProxyServer<T> {
    proxy_url: Option<NsmUrl>,
    _kind: PhantomData<fn() -> T>,
}

impl<T: ProxyItem> ProxyServer<T> {
    /// Forwards to `proxy_url` (`None`: forward nothing).
    pub fn new(proxy_url: Option<NsmUrl>) -> Self {
        Self {
            proxy_url,
            _kind: PhantomData,
        }
    }

    fn target(&self, interdomain: bool) -> Option<ClientUrl> {
        self.proxy_url
            .clone()
            .filter(|_| interdomain)
            .map(ClientUrl)
    }
}

#[async_trait]
impl<T: ProxyItem> RegistryServer<T> for ProxyServer<T> {
    async fn register(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<T> {
        match self.target(is_interdomain(item.name())) {
            Some(url) => {
                ctx.insert(url);
                next.register(ctx, item).await
            }
            None => Ok(item),
        }
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<T>,
        next: RegistryNext<T>,
    ) -> Result<FindStream<T>> {
        match self.target(T::query_is_interdomain(&query.template)) {
            Some(url) => {
                ctx.insert(url);
                next.find(ctx, query).await
            }
            None => Ok(stream::empty().boxed()),
        }
    }

    async fn unregister(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<()> {
        match self.target(is_interdomain(item.name())) {
            Some(url) => {
                ctx.insert(url);
                next.unregister(ctx, item).await
            }
            None => Ok(()),
        }
    }

    fn name(&self) -> &'static str {
        "proxy"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Probe, nse};
    use nsm_core::Clock;
    use nsm_core::registry::{RegistryChain, collect_found};
    use std::sync::Arc;

    #[tokio::test]
    async fn only_interdomain_items_reach_the_proxy_registry() {
        let url = NsmUrl::parse("tcp://proxy:5005").unwrap();
        let probe = Probe::new();
        let chain = RegistryChain::new(
            "t",
            vec![
                Arc::new(ProxyServer::<NetworkServiceEndpoint>::new(Some(
                    url.clone(),
                ))),
                probe.clone(),
            ],
        );
        let mut ctx = Ctx::new(Clock::system());
        chain.run_register(&mut ctx, nse("local")).await.unwrap();
        chain.run_unregister(&mut ctx, nse("local")).await.unwrap();
        let found = chain.run_find(&mut ctx, Query::default()).await.unwrap();
        assert!(collect_found(found).await.unwrap().is_empty());
        assert!(probe.calls().is_empty(), "local items stay here");

        let mut ctx = Ctx::new(Clock::system());
        chain
            .run_register(&mut ctx, nse("nse@remote"))
            .await
            .unwrap();
        assert_eq!(probe.calls(), ["register nse@remote"]);
        assert_eq!(probe.last_client_url(), Some(url.clone()));
        let mut q = Query::<NetworkServiceEndpoint>::default();
        q.template.network_service_names = vec!["svc@remote".into()];
        drop(chain.run_find(&mut ctx, q).await.unwrap());
        chain
            .run_unregister(&mut ctx, nse("nse@remote"))
            .await
            .unwrap();
        assert_eq!(probe.calls().len(), 3);
    }
}
