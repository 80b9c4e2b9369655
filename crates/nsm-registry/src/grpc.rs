//! gRPC server adapters: serve a registry chain as `registry.NetworkServiceRegistry` /
//! `registry.NetworkServiceEndpointRegistry`.
//!
//! Each call gets a fresh [`Ctx`] on the given clock, with the caller's `grpc-timeout` as its deadline
//! and the peer address as [`PeerInfo`] (on unix sockets also the connection's fd side channel,
//! [`IncomingFds`], for `recvfd`). Errors become statuses through `From<NsmError>`; a Find stream
//! is the chain's stream mapped to the wire response messages, ended with `DeadlineExceeded` when the
//! call's deadline passes.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use nsm_api::registry::network_service_endpoint_registry_server::{
    NetworkServiceEndpointRegistry, NetworkServiceEndpointRegistryServer,
};
use nsm_api::registry::network_service_registry_server::{
    NetworkServiceRegistry, NetworkServiceRegistryServer,
};
use nsm_api::registry::{
    NetworkService, NetworkServiceEndpoint, NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse, NetworkServiceQuery, NetworkServiceResponse,
};
use nsm_core::registry::{RegistryChain, RegistryItem};
use nsm_core::values::PeerInfo;
use nsm_core::{Clock, Ctx};
use nsm_networkservice::grpc::TlsConnInfo;
use nsm_networkservice::grpc::fdconn::{FdTransceiver, IncomingFds, UnixConnInfo};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

const NAME: &str = "grpc";

/// Parses a `grpc-timeout` header value (`<up to 8 digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn timeout_of(md: &MetadataMap) -> Option<Duration> {
    md.get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

fn ctx_for<M>(clock: Clock, req: &Request<M>) -> Ctx {
    let mut ctx = Ctx::new(clock);
    if let Some(t) = timeout_of(req.metadata()) {
        ctx = ctx.with_timeout(t);
    }
    ctx.insert(PeerInfo {
        remote_addr: req.remote_addr().map(|a| a.to_string()),
        ..PeerInfo::default()
    });
    if let Some(fds) = incoming_fds(req) {
        ctx.insert(IncomingFds(fds));
    }
    ctx
}

/// The fd side channel of the unix-socket connection a call came on (plaintext or TLS); none on TCP.
fn incoming_fds<M>(req: &Request<M>) -> Option<FdTransceiver> {
    let ext = req.extensions();
    match ext.get::<TlsConnInfo>() {
        Some(tls) => tls.fds.clone(),
        None => ext.get::<UnixConnInfo>().map(|u| u.fds.clone()),
    }
}

async fn register<T: RegistryItem>(
    chain: &RegistryChain<T>,
    clock: Clock,
    req: Request<T>,
) -> Result<Response<T>, Status> {
    let mut ctx = ctx_for(clock, &req);
    let limits = ctx.clone();
    let item = req.into_inner();
    let reg = limits
        .within(NAME, chain.run_register(&mut ctx, item))
        .await?;
    Ok(Response::new(reg))
}

async fn unregister<T: RegistryItem>(
    chain: &RegistryChain<T>,
    clock: Clock,
    req: Request<T>,
) -> Result<Response<()>, Status> {
    let mut ctx = ctx_for(clock, &req);
    let limits = ctx.clone();
    let item = req.into_inner();
    limits
        .within(NAME, chain.run_unregister(&mut ctx, item))
        .await?;
    Ok(Response::new(()))
}

/// A Find response stream on the wire.
pub type ResponseStream<M> = BoxStream<'static, Result<M, Status>>;

async fn find<T: RegistryItem>(
    chain: &RegistryChain<T>,
    clock: Clock,
    req: Request<T::QueryMsg>,
) -> Result<Response<ResponseStream<T::ResponseMsg>>, Status> {
    let mut ctx = ctx_for(clock, &req);
    let limits = ctx.clone();
    let query = T::query_from_msg(req.into_inner());
    let found = limits.within(NAME, chain.run_find(&mut ctx, query)).await?;
    let responses = found.map(|r| r.map(T::response_to_msg).map_err(Status::from));
    let Some(deadline) = ctx.deadline() else {
        return Ok(Response::new(responses.boxed()));
    };
    // Races the stream against the deadline; the deadline wins with one final error.
    let sleep = Box::pin(clock.sleep_until(deadline));
    let limited = stream::unfold(
        (responses.boxed(), sleep, false),
        |(mut responses, mut sleep, expired)| async move {
            if expired {
                return None;
            }
            tokio::select! {
                r = responses.next() => r.map(|r| (r, (responses, sleep, false))),
                () = &mut sleep => Some((
                    Err(Status::deadline_exceeded(format!(
                        "{NAME}: deadline exceeded: the Find call's deadline passed"
                    ))),
                    (responses, sleep, true),
                )),
            }
        },
    );
    Ok(Response::new(limited.boxed()))
}

/// Serves a network service registry chain.
#[derive(Clone)]
pub struct NetworkServiceRegistryGrpc {
    chain: RegistryChain<NetworkService>,
    clock: Clock,
}

impl NetworkServiceRegistryGrpc {
    /// Serves `chain`; each call's context uses `clock`.
    pub fn new(chain: RegistryChain<NetworkService>, clock: Clock) -> Self {
        Self { chain, clock }
    }

    /// The tonic service to add to a server.
    pub fn into_service(self) -> NetworkServiceRegistryServer<Self> {
        NetworkServiceRegistryServer::new(self)
    }
}

#[async_trait]
impl NetworkServiceRegistry for NetworkServiceRegistryGrpc {
    async fn register(
        &self,
        request: Request<NetworkService>,
    ) -> Result<Response<NetworkService>, Status> {
        register(&self.chain, self.clock, request).await
    }

    type FindStream = ResponseStream<NetworkServiceResponse>;

    async fn find(
        &self,
        request: Request<NetworkServiceQuery>,
    ) -> Result<Response<Self::FindStream>, Status> {
        find(&self.chain, self.clock, request).await
    }

    async fn unregister(&self, request: Request<NetworkService>) -> Result<Response<()>, Status> {
        unregister(&self.chain, self.clock, request).await
    }
}

/// Serves a network service endpoint registry chain.
#[derive(Clone)]
pub struct NetworkServiceEndpointRegistryGrpc {
    chain: RegistryChain<NetworkServiceEndpoint>,
    clock: Clock,
}

impl NetworkServiceEndpointRegistryGrpc {
    /// Serves `chain`; each call's context uses `clock`.
    pub fn new(chain: RegistryChain<NetworkServiceEndpoint>, clock: Clock) -> Self {
        Self { chain, clock }
    }

    /// The tonic service to add to a server.
    pub fn into_service(self) -> NetworkServiceEndpointRegistryServer<Self> {
        NetworkServiceEndpointRegistryServer::new(self)
    }
}

#[async_trait]
impl NetworkServiceEndpointRegistry for NetworkServiceEndpointRegistryGrpc {
    async fn register(
        &self,
        request: Request<NetworkServiceEndpoint>,
    ) -> Result<Response<NetworkServiceEndpoint>, Status> {
        register(&self.chain, self.clock, request).await
    }

    type FindStream = ResponseStream<NetworkServiceEndpointResponse>;

    async fn find(
        &self,
        request: Request<NetworkServiceEndpointQuery>,
    ) -> Result<Response<Self::FindStream>, Status> {
        find(&self.chain, self.clock, request).await
    }

    async fn unregister(
        &self,
        request: Request<NetworkServiceEndpoint>,
    ) -> Result<Response<()>, Status> {
        unregister(&self.chain, self.clock, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("1x"), None);
    }
}
