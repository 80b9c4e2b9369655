//! Test doubles shared by the unit tests of this crate's selection and mechanism elements: an in-memory
//! registry element with the memory registry's matching rules, and a probe element that records what
//! reached it and can fail on demand.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream;
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint, NetworkServiceLabels};
use nsm_api::url::NsmUrl;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::metadata::ConnMetadata;
use nsm_core::registry::{
    FindStream, Found, Query, RegistryChain, RegistryItem, RegistryNext, RegistryServer,
};
use nsm_core::values::{Candidates, ClientUrl};
use nsm_core::{Chain, Clock, Ctx, NetworkServiceServer, Next, NsmError, Result};
use parking_lot::Mutex;

/// How the fake registry decides that a stored item answers a query (sdk `matchutils`).
pub(crate) trait Matches {
    fn matches(query: &Self, stored: &Self) -> bool;
}

impl Matches for NetworkService {
    fn matches(q: &Self, s: &Self) -> bool {
        (q.name.is_empty() || s.name.contains(&q.name))
            && (q.payload.is_empty() || q.payload == s.payload)
    }
}

impl Matches for NetworkServiceEndpoint {
    fn matches(q: &Self, s: &Self) -> bool {
        let labels_ok = q.network_service_labels.iter().all(|(svc, want)| {
            s.network_service_labels.get(svc).is_some_and(|have| {
                want.labels
                    .iter()
                    .all(|(k, v)| have.labels.get(k) == Some(v))
            })
        });
        (q.name.is_empty() || s.name.contains(&q.name))
            && labels_ok
            && q.network_service_names
                .iter()
                .all(|n| s.network_service_names.contains(n))
            && (q.url.is_empty() || s.url.contains(&q.url))
    }
}

/// A registry element answering Find from a list the test can change at any time.
pub(crate) struct FakeRegistry<T> {
    pub(crate) items: Mutex<Vec<T>>,
}

impl<T: RegistryItem + Matches> FakeRegistry<T> {
    /// The fake and a one-element chain over it.
    pub(crate) fn chain(items: Vec<T>) -> (Arc<Self>, RegistryChain<T>) {
        let fake = Arc::new(Self {
            items: Mutex::new(items),
        });
        let chain = RegistryChain::new("fake", vec![fake.clone()]);
        (fake, chain)
    }
}

#[async_trait]
impl<T: RegistryItem + Matches> RegistryServer<T> for FakeRegistry<T> {
    async fn register(&self, _: &mut Ctx, item: T, _: RegistryNext<T>) -> Result<T> {
        self.items.lock().push(item.clone());
        Ok(item)
    }
    async fn find(&self, _: &mut Ctx, q: Query<T>, _: RegistryNext<T>) -> Result<FindStream<T>> {
        let found: Vec<Result<Found<T>>> = self
            .items
            .lock()
            .iter()
            .filter(|s| T::matches(&q.template, s))
            .map(|s| {
                Ok(Found {
                    item: s.clone(),
                    deleted: false,
                })
            })
            .collect();
        Ok(stream::iter(found).boxed())
    }
    async fn unregister(&self, _: &mut Ctx, item: T, _: RegistryNext<T>) -> Result<()> {
        self.items.lock().retain(|s| s.name() != item.name());
        Ok(())
    }
    fn name(&self) -> &'static str {
        "fake"
    }
}

/// A network service without matches.
pub(crate) fn ns(name: &str) -> NetworkService {
    NetworkService {
        name: name.into(),
        payload: "ETHERNET".into(),
        matches: vec![],
    }
}

/// An endpoint of `services` (each with `labels`) at `url`.
pub(crate) fn nse(
    name: &str,
    url: &str,
    services: &[&str],
    labels: &[(&str, &str)],
) -> NetworkServiceEndpoint {
    let labels = NetworkServiceLabels {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    NetworkServiceEndpoint {
        name: name.into(),
        network_service_names: services.iter().map(|s| s.to_string()).collect(),
        network_service_labels: services
            .iter()
            .map(|s| (s.to_string(), labels.clone()))
            .collect(),
        url: url.into(),
        ..Default::default()
    }
}

/// A context with fresh connection metadata.
pub(crate) fn ctx() -> Ctx {
    let mut c = Ctx::new(Clock::system());
    c.set_metadata(Some(Arc::new(ConnMetadata::default())));
    c
}

/// A request for `service` with connection id `id` and `labels`.
pub(crate) fn request(id: &str, service: &str, labels: &[(&str, &str)]) -> NetworkServiceRequest {
    NetworkServiceRequest {
        connection: Some(Connection {
            id: id.into(),
            network_service: service.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
        mechanism_preferences: vec![],
    }
}

/// What reached a [`Probe`].
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) request: NetworkServiceRequest,
    pub(crate) url: Option<NsmUrl>,
    pub(crate) candidates: Option<Candidates>,
    pub(crate) close: bool,
}

impl Seen {
    pub(crate) fn conn(&self) -> Connection {
        self.request.connection.clone().unwrap_or_default()
    }
}

type FailFn = Box<dyn Fn(&Seen) -> Option<NsmError> + Send + Sync>;

/// Records every call and fails those `fail` picks; otherwise continues the chain.
pub(crate) struct Probe {
    pub(crate) seen: Mutex<Vec<Seen>>,
    fail: FailFn,
}

impl Probe {
    pub(crate) fn ok() -> Arc<Self> {
        Self::failing(|_| None)
    }

    pub(crate) fn failing(
        fail: impl Fn(&Seen) -> Option<NsmError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Vec::new()),
            fail: Box::new(fail),
        })
    }

    /// Fails requests whose client URL is one of `urls`.
    pub(crate) fn failing_urls(urls: &'static [&'static str]) -> Arc<Self> {
        Self::failing(move |s| {
            let u = s.url.as_ref().map(ToString::to_string).unwrap_or_default();
            urls.contains(&u.as_str())
                .then(|| NsmError::unavailable("connect", format!("{u} refused")))
        })
    }

    pub(crate) fn last(&self) -> Seen {
        self.seen
            .lock()
            .last()
            .cloned()
            .expect("probe was not called")
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.seen
            .lock()
            .iter()
            .map(|s| s.url.as_ref().map(ToString::to_string).unwrap_or_default())
            .collect()
    }

    fn record(&self, ctx: &Ctx, request: NetworkServiceRequest, close: bool) -> Option<NsmError> {
        let seen = Seen {
            request,
            url: ctx.get::<ClientUrl>().map(|u| u.0.clone()),
            candidates: ctx.get::<Candidates>().cloned(),
            close,
        };
        let err = (self.fail)(&seen);
        self.seen.lock().push(seen);
        err
    }
}

#[async_trait]
impl NetworkServiceServer for Probe {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        match self.record(ctx, request.clone(), false) {
            Some(e) => Err(e),
            None => next.request(ctx, request).await,
        }
    }
    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        let request = NetworkServiceRequest {
            connection: Some(conn.clone()),
            mechanism_preferences: vec![],
        };
        match self.record(ctx, request, true) {
            Some(e) => Err(e),
            None => next.close(ctx, conn).await,
        }
    }
    fn name(&self) -> &'static str {
        "probe"
    }
}

/// A test chain of `elements`.
pub(crate) fn chain(elements: Vec<Arc<dyn NetworkServiceServer>>) -> Chain {
    Chain::new("test", elements)
}
