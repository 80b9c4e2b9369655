//! The server edge: a chain served as `networkservice.NetworkService`.

use async_trait::async_trait;
use nsm_api::Connection;
use nsm_api::NetworkServiceRequest;
use nsm_api::networkservice::network_service_server::{NetworkService, NetworkServiceServer};
use nsm_core::values::PeerInfo;
use nsm_core::{Chain, Clock, Ctx, NsmError};
use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};
use tonic::{Request, Response, Status};

use super::fdconn::{IncomingFds, UnixConnInfo};
use super::metadata::{grpc_timeout, incoming_token};
use super::tls::{TlsConnInfo, TlsPeer};

const ELEMENT: &str = "grpc";

/// Serves a NetworkService chain over gRPC.
#[derive(Debug, Clone)]
pub struct NetworkServiceGrpc {
    chain: Chain,
    clock: Clock,
}

impl NetworkServiceGrpc {
    /// Serves `chain`; `clock` becomes every call's clock.
    pub fn new(chain: Chain, clock: Clock) -> Self {
        Self { chain, clock }
    }

    /// The tonic service to add to a router.
    pub fn into_service(self) -> NetworkServiceServer<Self> {
        NetworkServiceServer::new(self)
    }
}

/// Builds the context of an incoming call: deadline (`grpc-timeout`), the caller's token, peer info
/// (with mTLS: the client's SPIFFE ID and leaf certificate; in plaintext: only its address) and, on
/// unix sockets, the connection's fd side channel ([`IncomingFds`]).
pub fn incoming_ctx<T>(clock: Clock, req: &Request<T>) -> Ctx {
    let mut ctx = Ctx::new(clock);
    if let Some(timeout) = grpc_timeout(req.metadata()) {
        ctx = ctx.with_timeout(timeout);
    }
    if let Some(token) = incoming_token(req.metadata()) {
        ctx.insert(token);
    }
    let ext = req.extensions();
    if let Some(TlsConnInfo { peer, fds }) = ext.get::<TlsConnInfo>() {
        let TlsPeer(peer, own) = peer;
        ctx.insert(peer.clone());
        ctx.insert(own.clone());
        if let Some(fds) = fds {
            ctx.insert(IncomingFds(fds.clone()));
        }
        return ctx;
    }
    let unix = ext.get::<UnixConnInfo>();
    if let Some(u) = unix {
        ctx.insert(IncomingFds(u.fds.clone()));
    }
    let remote_addr = ext
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .map(|a| a.to_string())
        .or_else(|| {
            let uds = unix
                .map(|u| &u.uds)
                .or_else(|| ext.get::<UdsConnectInfo>())?;
            let path = uds.peer_addr.as_ref()?.as_pathname()?.display().to_string();
            Some(format!("unix://{path}"))
        });
    ctx.insert(PeerInfo {
        remote_addr,
        ..Default::default()
    });
    ctx
}

impl NetworkServiceGrpc {
    /// Runs `work` on its own task: chain elements undo their work on errors, not on being dropped, so
    /// a caller that hangs up (or whose deadline tonic enforces) must not cut the chain half-way.
    async fn detached<T: Send + 'static>(
        work: impl Future<Output = Result<T, NsmError>> + Send + 'static,
    ) -> Result<T, Status> {
        match tokio::spawn(work).await {
            Ok(r) => r.map_err(Status::from),
            Err(e) => Err(NsmError::internal(ELEMENT, format!("chain task failed: {e}")).into()),
        }
    }
}

#[async_trait]
impl NetworkService for NetworkServiceGrpc {
    async fn request(
        &self,
        req: Request<NetworkServiceRequest>,
    ) -> Result<Response<Connection>, Status> {
        let mut ctx = incoming_ctx(self.clock, &req);
        let request = req.into_inner();
        if request.connection.is_none() {
            return Err(NsmError::invalid(ELEMENT, "the request has no connection").into());
        }
        let chain = self.chain.clone();
        let conn =
            Self::detached(async move { chain.run_request(&mut ctx, request).await }).await?;
        Ok(Response::new(conn))
    }

    async fn close(&self, req: Request<Connection>) -> Result<Response<()>, Status> {
        let mut ctx = incoming_ctx(self.clock, &req);
        let conn = req.into_inner();
        let chain = self.chain.clone();
        Self::detached(async move { chain.run_close(&mut ctx, conn).await }).await?;
        Ok(Response::new(()))
    }
}
