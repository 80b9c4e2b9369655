//! mTLS for the gRPC edges: accepted connections wrapped in TLS (with the client's SPIFFE identity
//! passed to handlers in [`TlsConnInfo`]) and a dialer doing TLS itself, so that unix sockets get
//! TLS too and the server's identity is known to the caller ([`ServerPeer`]) before the first token
//! is signed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use nsm_core::token::LocalIdentity;
use nsm_core::values::PeerInfo;
use nsm_core::{Clock, SharedValues};
use nsm_identity::{TlsIdentity, peer_info};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::fdconn::{FdTransceiver, IncomingFds};

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The verified TLS identity of the client of an incoming call, and our own identity as the
/// connection's handshake presented it (what [`TlsConnInfo`] is built from).
#[derive(Debug, Clone)]
pub struct TlsPeer(pub PeerInfo, pub LocalIdentity);

/// Connection info of a TLS connection (a request extension, cloned into every call): who the peer
/// is and, on unix sockets, the connection's fd side channel (below TLS).
#[derive(Debug, Clone)]
pub struct TlsConnInfo {
    /// The fd side channel (unix sockets only).
    pub fds: Option<FdTransceiver>,
    /// The values every call's context on this connection shares: [`PeerInfo`], [`LocalIdentity`]
    /// and, on unix sockets, [`IncomingFds`]. Held once, so a call's clone copies no identity.
    pub(crate) shared: Arc<SharedValues>,
}

impl TlsConnInfo {
    fn new(TlsPeer(peer, own): TlsPeer, fds: Option<FdTransceiver>) -> Self {
        let mut shared = SharedValues::new();
        shared.insert(peer);
        shared.insert(own);
        if let Some(fds) = &fds {
            shared.insert(IncomingFds(fds.clone()));
        }
        Self {
            fds,
            shared: Arc::new(shared),
        }
    }

    /// The peer's identity as the handshake verified it.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.shared.get::<PeerInfo>()
    }
}

/// An accepted connection after the TLS handshake.
pub(crate) struct TlsConn<T> {
    io: TlsStream<T>,
    info: TlsConnInfo,
}

impl<T> Connected for TlsConn<T>
where
    T: Send + Unpin + 'static,
{
    type ConnectInfo = TlsConnInfo;
    fn connect_info(&self) -> TlsConnInfo {
        self.info.clone()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Accepts with `accept`, runs each handshake on its own task (a slow client does not hold up
/// others) and yields the connections that completed it. Failed handshakes are logged and dropped.
pub(crate) fn tls_incoming<T, A, F>(
    mut accept: A,
    tls: Arc<TlsIdentity>,
    kill: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn<T>>>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    A: FnMut() -> F + Send + 'static,
    F: Future<Output = io::Result<(T, Option<String>, Option<FdTransceiver>)>> + Send,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = kill.cancelled() => return,
                () = tx.closed() => return,
                r = accept() => r,
            };
            let (io, remote_addr, fds) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // Pin the connection to the SVID current now: tokens answered on it are signed with the
            // same key, so the client keeps verifying them after our SVID rotates.
            let svid = tls.current().svid.clone();
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config_as(&svid));
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                    Ok(Ok(io)) => {
                        let mut peer = peer_info(io.get_ref().1.peer_certificates());
                        peer.remote_addr = remote_addr;
                        let _ = tx
                            .send(Ok(TlsConn {
                                io,
                                info: TlsConnInfo::new(TlsPeer(peer, LocalIdentity(svid)), fds),
                            }))
                            .await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(remote = ?remote_addr, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        tracing::info!(remote = ?remote_addr, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The server end of a channel as the dialer found it at the last (re)connect: its identity (TLS)
/// and the connection's fd side channel (unix sockets).
#[derive(Debug, Clone, Default)]
pub struct ServerPeer {
    peer: Arc<Mutex<Option<PeerInfo>>>,
    fds: Arc<Mutex<Option<FdTransceiver>>>,
}

impl ServerPeer {
    /// The server's identity from the last handshake, if the channel uses TLS.
    pub fn get(&self) -> Option<PeerInfo> {
        self.peer.lock().clone()
    }

    pub(crate) fn set(&self, peer: PeerInfo) {
        *self.peer.lock() = Some(peer);
    }

    /// The fd side channel for the next call on the channel (unix sockets only): the current
    /// connection's, or, once that is gone, one the channel's next connection will carry (the call
    /// makes the channel reconnect). Fds queued on it leave no later than the call's message.
    pub fn fds(&self) -> Option<FdTransceiver> {
        let mut slot = self.fds.lock();
        let current = slot.as_ref()?;
        if current.is_closed() {
            let next = FdTransceiver::detached(Clock::system());
            *slot = Some(next.clone());
            return Some(next);
        }
        Some(current.clone())
    }

    /// The transceiver a new connection carries: the one fds are already queued on if no connection
    /// carries it yet, else a fresh one.
    pub(crate) fn fds_for_new_connection(&self) -> FdTransceiver {
        let mut slot = self.fds.lock();
        match slot.as_ref() {
            Some(t) if !t.is_attached() && !t.is_closed() => t.clone(),
            _ => {
                let t = FdTransceiver::detached(Clock::system());
                *slot = Some(t.clone());
                t
            }
        }
    }
}
