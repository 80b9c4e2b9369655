//! A stand-in SPIFFE Workload API (feature `testing`): a SPIRE agent reduced to `FetchX509SVID`.
//!
//! [`FakeWorkloadApi::start`] binds a unix socket and serves the service `SpiffeWorkloadAPI` (the proto
//! has no package, so the method path is `/SpiffeWorkloadAPI/FetchX509SVID`). Every call must carry
//! the metadata `workload.spiffe.io: true`, exactly once, as SPIRE demands; without it the call fails
//! with `InvalidArgument` "security header missing from request". A call gets the current
//! [`X509Material`] as one `X509SVIDResponse` at once and another each time
//! [`FakeWorkloadApi::set`] rotates it. Other Workload API methods answer `Unimplemented`.
//!
//! [`FakeWorkloadApi::stop`] behaves like a dying agent: every open stream and connection is cut and the
//! socket file removed; a new [`FakeWorkloadApi::start`] on the same path is the agent coming back.
//!
//! State: the current response (a watch channel every open stream follows), counters of accepted and
//! refused calls, and the serving task.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};

use crate::{IdentityError, X509Material};

/// The metadata key every Workload API call carries.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// The Workload API service name (the proto has no package).
pub const SERVICE: &str = "SpiffeWorkloadAPI";

/// The `FetchX509SVID` method path.
pub const FETCH_X509_SVID_PATH: &str = "/SpiffeWorkloadAPI/FetchX509SVID";

/// The Workload API messages `FetchX509SVID` uses, field numbers as in the SPIFFE proto.
pub mod pb {
    use std::collections::HashMap;

    /// `X509SVIDRequest {}`: no parameters.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct X509SvidRequest {}

    /// `X509SVIDResponse`: the workload's SVIDs, CRLs and federated bundles.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509SvidResponse {
        /// `svids = 1`.
        #[prost(message, repeated, tag = "1")]
        pub svids: Vec<X509Svid>,
        /// `crl = 2`: DER CRLs.
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub crl: Vec<Vec<u8>>,
        /// `federated_bundles = 3`: trust domain ID → DER certificates, concatenated.
        #[prost(map = "string, bytes", tag = "3")]
        pub federated_bundles: HashMap<String, Vec<u8>>,
    }

    /// `X509SVID`: one identity.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct X509Svid {
        /// `spiffe_id = 1`.
        #[prost(string, tag = "1")]
        pub spiffe_id: String,
        /// `x509_svid = 2`: DER certificates, leaf first, concatenated.
        #[prost(bytes = "vec", tag = "2")]
        pub x509_svid: Vec<u8>,
        /// `x509_svid_key = 3`: PKCS#8 DER.
        #[prost(bytes = "vec", tag = "3")]
        pub x509_svid_key: Vec<u8>,
        /// `bundle = 4`: the trust domain's DER certificates, concatenated.
        #[prost(bytes = "vec", tag = "4")]
        pub bundle: Vec<u8>,
        /// `hint = 5`.
        #[prost(string, tag = "5")]
        pub hint: String,
    }
}

/// The `FetchX509SVID` response carrying `material` (one SVID, its trust domain's bundle).
pub fn response_of(material: &X509Material) -> pb::X509SvidResponse {
    let concat = |certs: &[rustls_pki_types::CertificateDer<'static>]| {
        certs.iter().flat_map(|c| c.iter().copied()).collect()
    };
    pb::X509SvidResponse {
        svids: vec![pb::X509Svid {
            spiffe_id: material.svid.spiffe_id().to_string(),
            x509_svid: concat(material.svid.chain()),
            x509_svid_key: material.svid.key_der().to_vec(),
            bundle: concat(material.bundle.roots()),
            hint: String::new(),
        }],
        crl: Vec::new(),
        federated_bundles: HashMap::new(),
    }
}

#[derive(Debug, Default)]
struct Counters {
    served: AtomicUsize,
    refused: AtomicUsize,
}

/// A running fake agent. Dropping it stops it as [`FakeWorkloadApi::stop`] does, without waiting.
#[derive(Debug)]
pub struct FakeWorkloadApi {
    path: PathBuf,
    current: watch::Sender<Arc<pb::X509SvidResponse>>,
    counters: Arc<Counters>,
    kill: CancellationToken,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl FakeWorkloadApi {
    /// Serves `material` on the unix socket `path` (a socket file left there is replaced).
    pub async fn start(path: &Path, material: &X509Material) -> Result<Self, IdentityError> {
        use std::os::unix::fs::FileTypeExt;
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(path).map_err(|e| IdentityError::io(path, e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| IdentityError::io(path, e))?;
        let (current, _) = watch::channel(Arc::new(response_of(material)));
        let counters = Arc::new(Counters::default());
        let kill = CancellationToken::new();
        let service = WorkloadApi {
            current: current.clone(),
            counters: counters.clone(),
            kill: kill.clone(),
        };
        let k = kill.clone();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener)
            .map(move |r| r.map(|io| Killable::new(io, &k)));
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, kill.clone().cancelled_owned()),
        );
        Ok(Self {
            path: path.to_path_buf(),
            current,
            counters,
            kill,
            task: Some(task),
        })
    }

    /// The endpoint clients use: `unix://<path>`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Rotates: every open stream receives `material`, and new calls start with it.
    pub fn set(&self, material: &X509Material) {
        self.current.send_replace(Arc::new(response_of(material)));
    }

    /// Calls answered so far (with the security header).
    pub fn served_calls(&self) -> usize {
        self.counters.served.load(Ordering::Relaxed)
    }

    /// Calls refused for a missing or wrong security header.
    pub fn refused_calls(&self) -> usize {
        self.counters.refused.load(Ordering::Relaxed)
    }

    /// Dies: cuts every stream and connection, waits for the server to finish and removes the socket.
    pub async fn stop(mut self) -> Result<(), IdentityError> {
        self.kill.cancel();
        let result = match self.task.take() {
            Some(task) => match task.await {
                Ok(r) => r.map_err(|e| IdentityError::WorkloadApi(format!("fake agent: {e}"))),
                Err(e) => Err(IdentityError::WorkloadApi(format!("fake agent task: {e}"))),
            },
            None => Ok(()),
        };
        let _ = std::fs::remove_file(&self.path);
        result
    }
}

impl Drop for FakeWorkloadApi {
    fn drop(&mut self) {
        self.kill.cancel();
        if self.task.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The gRPC service: routes `FetchX509SVID`, answers everything else `Unimplemented`.
#[derive(Clone)]
struct WorkloadApi {
    current: watch::Sender<Arc<pb::X509SvidResponse>>,
    counters: Arc<Counters>,
    kill: CancellationToken,
}

impl NamedService for WorkloadApi {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tonic::codegen::Service<http::Request<Body>> for WorkloadApi {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != FETCH_X509_SVID_PATH {
            let method = req.uri().path().to_string();
            return Box::pin(async move {
                Ok(
                    Status::unimplemented(format!("{method} is not served by this fake"))
                        .into_http(),
                )
            });
        }
        let fetch = FetchX509Svid(self.clone());
        Box::pin(async move {
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.server_streaming(fetch, req).await)
        })
    }
}

/// `FetchX509SVID`: the current response now, then each rotation, until the agent stops.
struct FetchX509Svid(WorkloadApi);

type SvidStream = Pin<Box<dyn Stream<Item = Result<pb::X509SvidResponse, Status>> + Send>>;

impl ServerStreamingService<pb::X509SvidRequest> for FetchX509Svid {
    type Response = pb::X509SvidResponse;
    type ResponseStream = SvidStream;
    type Future = BoxFuture<Result<Response<SvidStream>, Status>>;

    fn call(&mut self, request: Request<pb::X509SvidRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move {
            // SPIRE wants the header exactly once, with the value `true`.
            let mut values = request.metadata().get_all(SECURITY_HEADER).iter();
            let ok = matches!((values.next(), values.next()), (Some(v), None) if v == "true");
            if !ok {
                api.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Status::invalid_argument(
                    "security header missing from request",
                ));
            }
            api.counters.served.fetch_add(1, Ordering::Relaxed);
            let rx = api.current.subscribe();
            let stream =
                futures::stream::unfold((rx, api.kill, true), |(mut rx, kill, first)| async move {
                    if !first {
                        tokio::select! {
                            () = kill.cancelled() => return None,
                            r = rx.changed() => r.ok()?,
                        }
                    } else if kill.is_cancelled() {
                        return None;
                    }
                    let msg = rx.borrow_and_update().as_ref().clone();
                    Some((Ok(msg), (rx, kill, false)))
                });
            Ok(Response::new(Box::pin(stream) as SvidStream))
        })
    }
}

/// An accepted connection whose reads and writes fail once the agent stops, so hyper drops it at once
/// (a graceful shutdown would wait for the open streams).
struct Killable {
    io: UnixStream,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Killable {
    fn new(io: UnixStream, kill: &CancellationToken) -> Self {
        Self {
            io,
            killed: Box::pin(kill.clone().cancelled_owned()),
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "fake Workload API stopped",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl tonic::transport::server::Connected for Killable {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Killable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Killable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
