//! `clienturl`: puts a fixed next-hop URL into the context ([`ClientUrl`]) on Register, Find and
//! Unregister, for `connect` to dial (Go `registry/common/clienturl`). Keeps no state.

use std::marker::PhantomData;

use async_trait::async_trait;
use nsm_api::url::NsmUrl;
use nsm_core::registry::{FindStream, Query, RegistryItem, RegistryNext, RegistryServer};
use nsm_core::values::ClientUrl;
use nsm_core::{Ctx, Result};

/// Sets the client URL for the rest of the chain.
#[derive(Debug, Clone)]
pub struct ClientUrlServer<T> {
    url: NsmUrl,
    _kind: PhantomData<fn() -> T>,
}

impl<T: RegistryItem> ClientUrlServer<T> {
    /// Every call goes to `url`.
    pub fn new(url: NsmUrl) -> Self {
        Self {
            url,
            _kind: PhantomData,
        }
    }
}

#[async_trait]
impl<T: RegistryItem> RegistryServer<T> for ClientUrlServer<T> {
    async fn register(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<T> {
        ctx.insert(ClientUrl(self.url.clone()));
        next.register(ctx, item).await
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<T>,
        next: RegistryNext<T>,
    ) -> Result<FindStream<T>> {
        ctx.insert(ClientUrl(self.url.clone()));
        next.find(ctx, query).await
    }

    async fn unregister(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<()> {
        ctx.insert(ClientUrl(self.url.clone()));
        next.unregister(ctx, item).await
    }

    fn name(&self) -> &'static str {
        "clienturl"
    }
}
