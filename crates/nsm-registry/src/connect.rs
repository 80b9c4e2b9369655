//! `connect`: the end of a registry chain that talks to another registry over gRPC (Go
//! `registry/common/connect`).
//!
//! - Register/Find/Unregister: dial the [`ClientUrl`] an earlier element put in the context
//!   (`clienturl`, `proxy`), call the same method on the remote registry and return its answer; a
//!   failed call keeps the remote status code (`NsmError::Remote`). A Find result is the remote stream.
//! - State: one gRPC channel per URL, dialled on first use (within the dial timeout) and reused; tonic
//!   reconnects a channel whose peer went away.
//! - URLs: `tcp://host:port` (plain HTTP/2) and `unix:///path` (dialled with a unix-socket connector;
//!   `unix:///proc/<pid>/fd/<n>` reaches a socket through an fd `recvfd` holds).
//! - Files: fds `sendfd` put in the context ([`FilesToPass`]) are queued on the unix connection's fd
//!   side channel before the call and withdrawn if it fails; a Find leaves that side channel in the
//!   context ([`ReplyFds`]) for `recvfd`.
//! - Transport: plaintext by default; [`ConnectServer::with_dialer`] plugs in another way to dial
//!   (SPIFFE mTLS: the chains pass one built on `nsm_networkservice::grpc::client_channel_with`).
//! - The context's deadline, if any, is sent as the call's `grpc-timeout`.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use nsm_api::registry::network_service_endpoint_registry_client::NetworkServiceEndpointRegistryClient;
use nsm_api::registry::network_service_registry_client::NetworkServiceRegistryClient;
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_api::url::NsmUrl;
use nsm_core::registry::{FindStream, Query, RegistryItem, RegistryNext, RegistryServer};
use nsm_core::values::ClientUrl;
use nsm_core::{Ctx, NsmError, Result};
use nsm_identity::TransportSecurity;
use nsm_networkservice::grpc::fdconn::{FdTransceiver, Ticket};
use nsm_networkservice::grpc::{ServerPeer, client_channel_with};
use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tonic::codec::Streaming;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::sendfd::FilesToPass;

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

/// Dials `url` (`tcp://` or `unix://`) in plaintext within `timeout`. Unix-socket connections carry
/// passed fds (the returned [`ServerPeer`] holds their side channel, see [`crate::sendfd`]).
pub async fn dial(url: &NsmUrl, timeout: Duration) -> Result<Dialed> {
    client_channel_with(url, timeout, &TransportSecurity::Insecure).await
}

/// A dialled channel and what the dialer learnt about its server end (identity, fd side channel).
pub type Dialed = (Channel, ServerPeer);

/// Dials a registry URL within a timeout (a transport: plaintext, mTLS…).
pub type Dialer = Arc<
    dyn Fn(NsmUrl, Duration) -> futures::future::BoxFuture<'static, Result<Dialed>> + Send + Sync,
>;

/// Calls the registry at the context's client URL.
pub struct ConnectServer<T> {
    dial_timeout: Duration,
    dialer: Option<Dialer>,
    channels: Mutex<HashMap<NsmUrl, Arc<OnceCell<Dialed>>>>,
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

    async fn channel(&self, ctx: &Ctx) -> Result<(NsmUrl, Channel, ServerPeer)> {
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
        let (ch, peer) = cell
            .get_or_try_init(|| async {
                match &self.dialer {
                    Some(d) => d(url.clone(), self.dial_timeout).await,
                    None => dial(&url, self.dial_timeout).await,
                }
            })
            .await?
            .clone();
        Ok((url, ch, peer))
    }
}

/// The fd side channel of the unix connection a Find's results arrive on (set by `connect` for the
/// elements before it: `recvfd` claims the files the results name).
#[derive(Debug, Clone)]
pub struct ReplyFds(pub FdTransceiver);

/// The fds `sendfd` asked to pass with a call ([`FilesToPass`]), queued on the call's connection.
struct QueuedFds(Option<(FdTransceiver, Vec<Ticket>)>);

impl QueuedFds {
    /// Queues the call's files on `peer`'s fd side channel (they leave no later than the message).
    fn queue(ctx: &Ctx, peer: &ServerPeer, url: &NsmUrl) -> Result<Self> {
        let files = ctx
            .get::<FilesToPass>()
            .map(FilesToPass::take)
            .unwrap_or_default();
        if files.is_empty() {
            return Ok(Self(None));
        }
        let Some(fds) = peer.fds() else {
            return Err(NsmError::internal(
                NAME,
                format!("sendfd passes files but the connection to {url} cannot carry fds"),
            ));
        };
        let mut tickets = Vec::with_capacity(files.len());
        for fd in files {
            match fds.send(fd) {
                Ok((_, t)) => tickets.push(t),
                Err(e) => {
                    Self(Some((fds, tickets))).settle(false);
                    return Err(NsmError::unavailable(
                        NAME,
                        format!("cannot pass a file to {url}: {e}"),
                    ));
                }
            }
        }
        Ok(Self(Some((fds, tickets))))
    }

    /// After the call: a failed call's fds that have not left yet are withdrawn (closed).
    fn settle(self, ok: bool) {
        if let (false, Some((fds, tickets))) = (ok, self.0) {
            for t in tickets {
                fds.withdraw(t);
            }
        }
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
        let (url, ch, peer) = self.channel(ctx).await?;
        let queued = QueuedFds::queue(ctx, &peer, &url)?;
        let call = async {
            T::call_register(ch, request(ctx, item))
                .await
                .map_err(|s| NsmError::remote(NAME, url.to_string(), s))
        };
        let result = ctx.within(NAME, call).await;
        queued.settle(result.is_ok());
        result
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<T>,
        _next: RegistryNext<T>,
    ) -> Result<FindStream<T>> {
        let (url, ch, peer) = self.channel(ctx).await?;
        if let Some(fds) = peer.fds() {
            ctx.insert(ReplyFds(fds));
        }
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
        let (url, ch, peer) = self.channel(ctx).await?;
        let queued = QueuedFds::queue(ctx, &peer, &url)?;
        let call = async {
            T::call_unregister(ch, request(ctx, item))
                .await
                .map_err(|s| NsmError::remote(NAME, url.to_string(), s))
        };
        let result = ctx.within(NAME, call).await;
        queued.settle(result.is_ok());
        result
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
