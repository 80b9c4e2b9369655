//! `connect`: the end of a registry chain that talks to another registry over gRPC (Go
//! `registry/common/connect`).
//!
//! - Register/Find/Unregister: dial the [`ClientUrl`] an earlier element put in the context
//!   (`clienturl`, `proxy`), call the same method on the remote registry and return its answer; a
//!   failed call keeps the remote status code (`NsmError::Remote`). A Find result is the remote stream.
//! - State: one gRPC channel per URL, dialled on first use (within the dial timeout) and reused; tonic
//!   reconnects a channel whose peer went away.
//! - URLs: `tcp://host:port` (plain HTTP/2) and `unix:///path` (dialled with a unix-socket connector).
//! - Transport: plaintext by default; [`ConnectServer::with_dialer`] plugs in another way to dial
//!   (SPIFFE mTLS: the chains pass one built on `nsm_networkservice::grpc::client_channel_with`).
//! - The context's deadline, if any, is sent as the call's `grpc-timeout`.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use nsm_api::registry::network_service_endpoint_registry_client::NetworkServiceEndpointRegistryClient;
use nsm_api::registry::network_service_registry_client::NetworkServiceRegistryClient;
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_api::url::NsmUrl;
use nsm_core::registry::{FindStream, Query, RegistryItem, RegistryNext, RegistryServer};
use nsm_core::values::ClientUrl;
use nsm_core::{Ctx, NsmError, Result};
use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tonic::codec::Streaming;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Status};

const NAME: &str = "connect";

/// The gRPC calls of a registry, per item kind.
#[async_trait]
pub trait GrpcRegistryItem: RegistryItem {
    /// Calls `Register` on the remote registry.
    async fn call_register(ch: Channel, req: Request<Self>) -> Result<Self, Status>;
    /// Calls `Find` on the remote registry.
    async fn call_find(
        ch: Channel,
        req: Request<Self::QueryMsg>,
    ) -> Result<Streaming<Self::ResponseMsg>, Status>;
    /// Calls `Unregister` on the remote registry.
    async fn call_unregister(ch: Channel, req: Request<Self>) -> Result<(), Status>;
}

#[async_trait]
impl GrpcRegistryItem for NetworkService {
    async fn call_register(ch: Channel, req: Request<Self>) -> Result<Self, Status> {
        let r = NetworkServiceRegistryClient::new(ch).register(req).await?;
        Ok(r.into_inner())
    }
    async fn call_find(
        ch: Channel,
        req: Request<Self::QueryMsg>,
    ) -> Result<Streaming<Self::ResponseMsg>, Status> {
        let r = NetworkServiceRegistryClient::new(ch).find(req).await?;
        Ok(r.into_inner())
    }
    async fn call_unregister(ch: Channel, req: Request<Self>) -> Result<(), Status> {
        NetworkServiceRegistryClient::new(ch)
            .unregister(req)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl GrpcRegistryItem for NetworkServiceEndpoint {
    async fn call_register(ch: Channel, req: Request<Self>) -> Result<Self, Status> {
        let r = NetworkServiceEndpointRegistryClient::new(ch)
            .register(req)
            .await?;
        Ok(r.into_inner())
    }
    async fn call_find(
        ch: Channel,
        req: Request<Self::QueryMsg>,
    ) -> Result<Streaming<Self::ResponseMsg>, Status> {
        let r = NetworkServiceEndpointRegistryClient::new(ch)
            .find(req)
            .await?;
        Ok(r.into_inner())
    }
    async fn call_unregister(ch: Channel, req: Request<Self>) -> Result<(), Status> {
        NetworkServiceEndpointRegistryClient::new(ch)
            .unregister(req)
            .await?;
        Ok(())
    }
}

/// Dials `url` within `timeout`.
pub async fn dial(url: &NsmUrl, timeout: Duration) -> Result<Channel> {
    let failed =
        |e: &dyn std::fmt::Display| NsmError::unavailable(NAME, format!("dial {url}: {e}"));
    let connecting = async {
        match url {
            NsmUrl::Tcp { .. } => {
                let authority = url.authority().unwrap_or_default();
                let endpoint = Endpoint::from_shared(format!("http://{authority}"))
                    .map_err(|e| failed(&e))?
                    .connect_timeout(timeout);
                endpoint.connect().await.map_err(|e| failed(&e))
            }
            NsmUrl::Unix(path) => {
                let path = path.clone();
                // The authority is never resolved: the connector below ignores it.
                let endpoint = Endpoint::from_static("http://localhost");
                endpoint
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
                    .await
                    .map_err(|e| failed(&e))
            }
            other => Err(NsmError::invalid(
                NAME,
                format!("cannot dial {other}: only tcp:// and unix:// URLs reach a registry"),
            )),
        }
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(r) => r,
        Err(_) => Err(failed(&format!("no connection within {timeout:?}"))),
    }
}

/// Dials a registry URL within a timeout (a transport: plaintext, mTLS…).
pub type Dialer = Arc<
    dyn Fn(NsmUrl, Duration) -> futures::future::BoxFuture<'static, Result<Channel>> + Send + Sync,
>;

/// Calls the registry at the context's client URL.
pub struct ConnectServer<T> {
    dial_timeout: Duration,
    dialer: Option<Dialer>,
    channels: Mutex<HashMap<NsmUrl, Arc<OnceCell<Channel>>>>,
    _kind: PhantomData<fn() -> T>,
}

impl<T: GrpcRegistryItem> ConnectServer<T> {
    /// Dials each URL within `dial_timeout`.
    pub fn new(dial_timeout: Duration) -> Self {
        Self {
            dial_timeout,
            dialer: None,
            channels: Mutex::default(),
            _kind: PhantomData,
        }
    }

    /// Dials with `dialer` instead of plaintext (`None` keeps plaintext).
    pub fn with_dialer(mut self, dialer: Option<Dialer>) -> Self {
        self.dialer = dialer;
        self
    }

    async fn channel(&self, ctx: &Ctx) -> Result<(NsmUrl, Channel)> {
        let Some(ClientUrl(url)) = ctx.get::<ClientUrl>().cloned() else {
            return Err(NsmError::internal(
                NAME,
                format!(
                    "no client URL for this {} call (clienturl or proxy must come first)",
                    T::KIND
                ),
            ));
        };
        let cell = self.channels.lock().entry(url.clone()).or_default().clone();
        let ch = cell
            .get_or_try_init(|| async {
                match &self.dialer {
                    Some(d) => d(url.clone(), self.dial_timeout).await,
                    None => dial(&url, self.dial_timeout).await,
                }
            })
            .await?
            .clone();
        Ok((url, ch))
    }
}

fn request<M>(ctx: &Ctx, msg: M) -> Request<M> {
    let mut req = Request::new(msg);
    if let Some(left) = ctx.remaining() {
        req.set_timeout(left);
    }
    req
}

#[async_trait]
impl<T: GrpcRegistryItem> RegistryServer<T> for ConnectServer<T> {
    async fn register(&self, ctx: &mut Ctx, item: T, _next: RegistryNext<T>) -> Result<T> {
        let (url, ch) = self.channel(ctx).await?;
        let call = async {
            T::call_register(ch, request(ctx, item))
                .await
                .map_err(|s| NsmError::remote(NAME, url.to_string(), s))
        };
        ctx.within(NAME, call).await
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<T>,
        _next: RegistryNext<T>,
    ) -> Result<FindStream<T>> {
        let (url, ch) = self.channel(ctx).await?;
        let target = url.to_string();
        let call = async {
            T::call_find(ch, request(ctx, T::query_to_msg(query)))
                .await
                .map_err(|s| NsmError::remote(NAME, target.clone(), s))
        };
        let stream = ctx.within(NAME, call).await?;
        Ok(stream
            .map(move |r| {
                r.map(T::response_from_msg)
                    .map_err(|s| NsmError::remote(NAME, target.clone(), s))
            })
            .boxed())
    }

    async fn unregister(&self, ctx: &mut Ctx, item: T, _next: RegistryNext<T>) -> Result<()> {
        let (url, ch) = self.channel(ctx).await?;
        let call = async {
            T::call_unregister(ch, request(ctx, item))
                .await
                .map_err(|s| NsmError::remote(NAME, url.to_string(), s))
        };
        ctx.within(NAME, call).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
