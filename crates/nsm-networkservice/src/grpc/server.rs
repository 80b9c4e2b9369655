//! The server edge: a chain served as `networkservice.NetworkService`.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use nsm_api::Connection;
use nsm_api::NetworkServiceRequest;
use nsm_api::networkservice::network_service_server::{NetworkService, NetworkServiceServer};
use nsm_core::values::PeerInfo;
use nsm_core::{Chain, Clock, Ctx, NsmError};
use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};
use tonic::{Request, Response, Status};

use super::fdconn::{IncomingFds, UnixConnInfo};
use super::metadata::{grpc_timeout, incoming_token};
use super::tls::TlsConnInfo;

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
    if let Some(tls) = ext.get::<TlsConnInfo>() {
        // Peer, own identity and fd channel: pointed to, not copied into every call's context.
        return ctx.with_shared(tls.shared.clone());
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
    /// Runs `work` to completion: chain elements undo their work on errors, not on being dropped, so
    /// a caller that hangs up (or whose deadline tonic enforces) must not cut the chain half-way. The
    /// work is polled in place — no task of its own per call, which costs a spawn and a wake-up on
    /// every hop — and handed to a task only if the call is dropped before it finishes.
    async fn detached<T: Send + 'static>(
        work: impl Future<Output = Result<T, NsmError>> + Send + 'static,
    ) -> Result<T, Status> {
        let guarded = AssertUnwindSafe(work)
            .catch_unwind()
            .map(|r| r.unwrap_or_else(|_| Err(NsmError::internal(ELEMENT, "the chain panicked"))));
        RunToCompletion(Some(Box::pin(guarded)))
            .await
            .map_err(Status::from)
    }
}

/// Polls its work in place; dropped before the work is done, it spawns the rest of it.
struct RunToCompletion<T: Send + 'static>(Option<BoxFuture<'static, Result<T, NsmError>>>);

impl<T: Send + 'static> Future for RunToCompletion<T> {
    type Output = Result<T, NsmError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(work) = self.0.as_mut() else {
            return Poll::Ready(Err(NsmError::internal(ELEMENT, "polled after completion")));
        };
        let out = ready!(work.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(out)
    }
}

impl<T: Send + 'static> Drop for RunToCompletion<T> {
    fn drop(&mut self) {
        // Outside a runtime (it is shutting down) there is nothing left to finish the work on.
        if let Some(work) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(work);
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

#[cfg(test)]
mod run_to_completion_tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_call_dropped_half_way_still_finishes_its_work() {
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        let call = NetworkServiceGrpc::detached(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            done.store(true, Ordering::SeqCst);
            Ok(())
        });
        // The caller gives up long before the work is done.
        assert!(
            tokio::time::timeout(Duration::from_millis(1), call)
                .await
                .is_err()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            finished.load(Ordering::SeqCst),
            "the rest of the work ran on a task"
        );
    }

    #[tokio::test]
    async fn a_panicking_chain_is_an_internal_error() {
        let r = NetworkServiceGrpc::detached::<()>(async { panic!("boom") }).await;
        let status = r.expect_err("a panic is an error");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(
            status.message().contains("panicked"),
            "{}",
            status.message()
        );
    }
}
