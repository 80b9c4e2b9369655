//! Registry chains: elements for `NetworkServiceRegistry` and `NetworkServiceEndpointRegistry`.
//!
//! Both registries have the same shape — Register, a streaming Find (optionally watching), Unregister —
//! so one generic element trait serves both, parameterised by the item kind ([`RegistryItem`]:
//! `NetworkService` or `NetworkServiceEndpoint`). Find returns a stream instead of pushing into a sink
//! as Go does: an element that rewrites results maps the stream it gets from `next`.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use nsm_api::registry::{
    NetworkService, NetworkServiceEndpoint, NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse, NetworkServiceQuery, NetworkServiceResponse,
};

use crate::ctx::Ctx;
use crate::error::{NsmError, Result};

/// One Find result: an item, and whether it was deleted (unregistered or expired).
#[derive(Debug, Clone, PartialEq)]
pub struct Found<T> {
    /// The item.
    pub item: T,
    /// True when the item went away (watch streams only).
    pub deleted: bool,
}

/// A stream of Find results; it ends after the current matches unless the query watches.
pub type FindStream<T> = BoxStream<'static, Result<Found<T>>>;

/// A registry query in typed form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query<T> {
    /// The template items must match (`None` = everything).
    pub template: T,
    /// Keep streaming changes after the current matches.
    pub watch: bool,
}

/// What differs between the two registries.
pub trait RegistryItem:
    prost::Message + Clone + Default + PartialEq + Send + Sync + 'static
{
    /// The Find query message.
    type QueryMsg: prost::Message + Clone + Default + Send + 'static;
    /// The Find response message.
    type ResponseMsg: prost::Message + Clone + Default + Send + 'static;
    /// "network service" or "network service endpoint", for messages.
    const KIND: &'static str;

    /// The item's name.
    fn name(&self) -> &str;
    /// Sets the item's name.
    fn set_name(&mut self, name: String);
    /// Query message → typed query.
    fn query_from_msg(q: Self::QueryMsg) -> Query<Self>;
    /// Typed query → query message.
    fn query_to_msg(q: Query<Self>) -> Self::QueryMsg;
    /// Find result → response message.
    fn response_to_msg(f: Found<Self>) -> Self::ResponseMsg;
    /// Response message → Find result.
    fn response_from_msg(r: Self::ResponseMsg) -> Found<Self>;
}

impl RegistryItem for NetworkService {
    type QueryMsg = NetworkServiceQuery;
    type ResponseMsg = NetworkServiceResponse;
    const KIND: &'static str = "network service";

    fn name(&self) -> &str {
        &self.name
    }
    fn set_name(&mut self, name: String) {
        self.name = name;
    }
    fn query_from_msg(q: NetworkServiceQuery) -> Query<Self> {
        Query {
            template: q.network_service.unwrap_or_default(),
            watch: q.watch,
        }
    }
    fn query_to_msg(q: Query<Self>) -> NetworkServiceQuery {
        NetworkServiceQuery {
            network_service: Some(q.template),
            watch: q.watch,
        }
    }
    fn response_to_msg(f: Found<Self>) -> NetworkServiceResponse {
        NetworkServiceResponse {
            network_service: Some(f.item),
            deleted: f.deleted,
        }
    }
    fn response_from_msg(r: NetworkServiceResponse) -> Found<Self> {
        Found {
            item: r.network_service.unwrap_or_default(),
            deleted: r.deleted,
        }
    }
}

impl RegistryItem for NetworkServiceEndpoint {
    type QueryMsg = NetworkServiceEndpointQuery;
    type ResponseMsg = NetworkServiceEndpointResponse;
    const KIND: &'static str = "network service endpoint";

    fn name(&self) -> &str {
        &self.name
    }
    fn set_name(&mut self, name: String) {
        self.name = name;
    }
    fn query_from_msg(q: NetworkServiceEndpointQuery) -> Query<Self> {
        Query {
            template: q.network_service_endpoint.unwrap_or_default(),
            watch: q.watch,
        }
    }
    fn query_to_msg(q: Query<Self>) -> NetworkServiceEndpointQuery {
        NetworkServiceEndpointQuery {
            network_service_endpoint: Some(q.template),
            watch: q.watch,
        }
    }
    fn response_to_msg(f: Found<Self>) -> NetworkServiceEndpointResponse {
        NetworkServiceEndpointResponse {
            network_service_endpoint: Some(f.item),
            deleted: f.deleted,
        }
    }
    fn response_from_msg(r: NetworkServiceEndpointResponse) -> Found<Self> {
        Found {
            item: r.network_service_endpoint.unwrap_or_default(),
            deleted: r.deleted,
        }
    }
}

/// One element of a registry chain for items of kind `T`.
#[async_trait]
pub trait RegistryServer<T: RegistryItem>: Send + Sync + 'static {
    /// Registers (or refreshes) an item; returns it as stored.
    async fn register(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<T>;
    /// Finds items matching a query.
    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<T>,
        next: RegistryNext<T>,
    ) -> Result<FindStream<T>>;
    /// Removes an item.
    async fn unregister(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<()>;
    /// The element's name.
    fn name(&self) -> &'static str;
}

/// A shared registry element.
pub type RegistryElement<T> = Arc<dyn RegistryServer<T>>;

/// The rest of a registry chain.
pub struct RegistryNext<T: RegistryItem> {
    elements: Arc<[RegistryElement<T>]>,
    pos: usize,
    parent: Option<Arc<RegistryNext<T>>>,
}

impl<T: RegistryItem> Clone for RegistryNext<T> {
    fn clone(&self) -> Self {
        Self {
            elements: self.elements.clone(),
            pos: self.pos,
            parent: self.parent.clone(),
        }
    }
}

impl<T: RegistryItem> RegistryNext<T> {
    /// The end of a registry chain: Register echoes, Find finds nothing, Unregister succeeds.
    pub fn tail() -> Self {
        Self {
            elements: Arc::from(Vec::new()),
            pos: 0,
            parent: None,
        }
    }

    fn step(&self) -> Option<(RegistryElement<T>, Self)> {
        let e = self.elements.get(self.pos)?.clone();
        Some((
            e,
            Self {
                elements: self.elements.clone(),
                pos: self.pos + 1,
                parent: self.parent.clone(),
            },
        ))
    }

    /// Runs the rest of the chain for Register.
    pub async fn register(self, ctx: &mut Ctx, item: T) -> Result<T> {
        match self.step() {
            Some((e, rest)) => e.register(ctx, item, rest).await,
            None => match self.parent {
                Some(p) => Box::pin(RegistryNext::clone(&p).register(ctx, item)).await,
                None => Ok(item),
            },
        }
    }

    /// Runs the rest of the chain for Find.
    pub async fn find(self, ctx: &mut Ctx, query: Query<T>) -> Result<FindStream<T>> {
        match self.step() {
            Some((e, rest)) => e.find(ctx, query, rest).await,
            None => match self.parent {
                Some(p) => Box::pin(RegistryNext::clone(&p).find(ctx, query)).await,
                None => Ok(stream::empty().boxed()),
            },
        }
    }

    /// Runs the rest of the chain for Unregister.
    pub async fn unregister(self, ctx: &mut Ctx, item: T) -> Result<()> {
        match self.step() {
            Some((e, rest)) => e.unregister(ctx, item, rest).await,
            None => match self.parent {
                Some(p) => Box::pin(RegistryNext::clone(&p).unregister(ctx, item)).await,
                None => Ok(()),
            },
        }
    }
}

/// A registry chain; itself an element, so chains nest.
pub struct RegistryChain<T: RegistryItem> {
    name: &'static str,
    elements: Arc<[RegistryElement<T>]>,
}

impl<T: RegistryItem> Clone for RegistryChain<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            elements: self.elements.clone(),
        }
    }
}

impl<T: RegistryItem> RegistryChain<T> {
    /// A chain of `elements` in call order.
    pub fn new(name: &'static str, elements: Vec<RegistryElement<T>>) -> Self {
        Self {
            name,
            elements: Arc::from(elements),
        }
    }

    /// Element names in call order.
    pub fn element_names(&self) -> Vec<&'static str> {
        self.elements.iter().map(|e| e.name()).collect()
    }

    fn start(&self, next: RegistryNext<T>) -> RegistryNext<T> {
        RegistryNext {
            elements: self.elements.clone(),
            pos: 0,
            parent: Some(Arc::new(next)),
        }
    }

    /// Register through the whole chain.
    pub async fn run_register(&self, ctx: &mut Ctx, item: T) -> Result<T> {
        self.start(RegistryNext::tail()).register(ctx, item).await
    }

    /// Find through the whole chain.
    pub async fn run_find(&self, ctx: &mut Ctx, query: Query<T>) -> Result<FindStream<T>> {
        self.start(RegistryNext::tail()).find(ctx, query).await
    }

    /// Find through the whole chain and collect a non-watching result.
    pub async fn find_all(&self, ctx: &mut Ctx, template: T) -> Result<Vec<Found<T>>> {
        let s = self
            .run_find(
                ctx,
                Query {
                    template,
                    watch: false,
                },
            )
            .await?;
        s.collect::<Vec<_>>().await.into_iter().collect()
    }

    /// Unregister through the whole chain.
    pub async fn run_unregister(&self, ctx: &mut Ctx, item: T) -> Result<()> {
        self.start(RegistryNext::tail()).unregister(ctx, item).await
    }
}

#[async_trait]
impl<T: RegistryItem> RegistryServer<T> for RegistryChain<T> {
    async fn register(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<T> {
        self.start(next).register(ctx, item).await
    }
    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<T>,
        next: RegistryNext<T>,
    ) -> Result<FindStream<T>> {
        self.start(next).find(ctx, query).await
    }
    async fn unregister(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<()> {
        self.start(next).unregister(ctx, item).await
    }
    fn name(&self) -> &'static str {
        self.name
    }
}

/// Collects a finite Find stream, failing on the first error.
pub async fn collect_found<T>(s: FindStream<T>) -> Result<Vec<Found<T>>, NsmError> {
    s.collect::<Vec<_>>().await.into_iter().collect()
}
