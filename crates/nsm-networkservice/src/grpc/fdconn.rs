//! File descriptors passed alongside a gRPC connection on a unix socket, wire-compatible with Go's
//! `github.com/edwarnicke/grpcfd` v0.1.1 (what NSM v1.1.1 peers use).
//!
//! [`FdUnixStream`] wraps the raw [`UnixStream`] *below* TLS (or below plaintext HTTP/2): the byte
//! stream passes through unchanged, and the fds travel as `SCM_RIGHTS` control messages attached to
//! bytes of it.
//!
//! - **Send**: [`FdTransceiver::send_path`] / [`FdTransceiver::send`] queue an fd; the next writes on the
//!   connection carry the queued fds, each attached to **one byte** of the outgoing stream (its own
//!   `sendmsg`), then the rest of the buffer goes out with a plain write — as grpcfd does. Our copy of
//!   the fd is closed once it has left. Queuing before the call's message is written guarantees that
//!   the fd reaches the peer no later than the message naming it.
//! - **Receive**: every read is a `recvmsg` with room for 64 fds; each fd received is `fstat`-ed and
//!   kept under its `(st_dev, st_ino)` until a [`FdTransceiver::recv`] claims it (waiters are woken on
//!   each arrival). Each arrival is claimed at most once; arrivals nobody claims (a Go peer sends fds
//!   back on every response, which nobody waits for) are dropped [`UNCLAIMED_TTL`] after they came.
//! - **Connection end**: when the stream is dropped, every unclaimed and every still-queued fd is
//!   closed and waiters fail with [`FdError::Closed`]. Claimed fds belong to whoever claimed them.
//!
//! Handles: servers find the transceiver of an incoming call as [`IncomingFds`] in the call's context
//! (from the connection info, see [`UnixConnInfo`]); clients find the one of a channel's current
//! connection in [`ServerPeer::fds`](super::ServerPeer::fds).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use nsm_api::url::NsmUrl;
use nsm_core::Clock;
use parking_lot::Mutex;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::transport::server::{Connected, UdsConnectInfo};

/// At most this many fds are read with one `recvmsg` (grpcfd's `maxFDCount`).
pub const MAX_FDS_PER_READ: usize = 64;

/// How long a received fd nobody claimed is kept.
pub const UNCLAIMED_TTL: Duration = Duration::from_secs(30);

/// `(st_dev, st_ino)` of a passed file: what an `inode://dev/ino` URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InodeKey {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl InodeKey {
    /// The key of an open file.
    pub fn of(fd: impl AsFd) -> Result<Self, FdError> {
        let st = rustix::fs::fstat(fd).map_err(|e| FdError::Stat(e.into()))?;
        Ok(Self {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// The key an `inode://dev/ino` URL names.
    pub fn from_url(url: &NsmUrl) -> Option<Self> {
        match url {
            NsmUrl::Inode { dev, ino } => Some(Self {
                dev: *dev,
                ino: *ino,
            }),
            _ => None,
        }
    }

    /// `inode://dev/ino`.
    pub fn url(&self) -> NsmUrl {
        NsmUrl::Inode {
            dev: self.dev,
            ino: self.ino,
        }
    }
}

/// Why an fd could not be passed.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    /// The connection that would carry (or did carry) the fd is gone.
    #[error("the unix-socket connection carrying the fds is closed")]
    Closed,
    /// The file to pass cannot be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `fstat` failed.
    #[error("cannot stat the fd: {0}")]
    Stat(io::Error),
}

/// Identifies one queued fd, to withdraw it if the call it belonged to fails before it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

#[derive(Default)]
struct State {
    outgoing: VecDeque<(Ticket, OwnedFd)>,
    next_ticket: u64,
    received: HashMap<InodeKey, VecDeque<(OwnedFd, Instant)>>,
    /// Carried by a stream (a client may queue fds before the connection they will go on is made).
    attached: bool,
    closed: bool,
}

impl State {
    /// Drops arrivals older than [`UNCLAIMED_TTL`].
    fn sweep(&mut self, now: Instant) {
        self.received.retain(|_, q| {
            q.retain(|(_, at)| now.saturating_duration_since(*at) < UNCLAIMED_TTL);
            !q.is_empty()
        });
    }

    fn claim(&mut self, key: &InodeKey) -> Option<OwnedFd> {
        let q = self.received.get_mut(key)?;
        let fd = q.pop_front().map(|(fd, _)| fd);
        if q.is_empty() {
            self.received.remove(key);
        }
        fd
    }
}

struct Shared {
    state: Mutex<State>,
    arrived: Notify,
    clock: Clock,
}

/// The fd side channel of one unix-socket connection (cheap to clone; all clones share it).
#[derive(Clone)]
pub struct FdTransceiver(Arc<Shared>);

impl fmt::Debug for FdTransceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.state.lock();
        f.debug_struct("FdTransceiver")
            .field("outgoing", &s.outgoing.len())
            .field("received", &s.received.len())
            .field("closed", &s.closed)
            .finish()
    }
}

impl FdTransceiver {
    /// A transceiver no stream carries yet: fds queued on it leave once [`FdUnixStream::attach`] gives
    /// it a connection (a client queues on it while its channel reconnects).
    pub fn detached(clock: Clock) -> Self {
        Self(Arc::new(Shared {
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
            clock,
        }))
    }

    /// Opens `path` (`O_PATH`, as grpcfd does) and queues it; returns the `inode://` URL the peer will
    /// find it under and the ticket to [`withdraw`](Self::withdraw) it.
    pub fn send_path(&self, path: &Path) -> Result<(NsmUrl, Ticket), FdError> {
        let fd = crate::fdpass::open_path(path).map_err(|source| FdError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let (key, ticket) = self.send(fd)?;
        Ok((key.url(), ticket))
    }

    /// Queues `fd` for the next writes on the connection.
    pub fn send(&self, fd: OwnedFd) -> Result<(InodeKey, Ticket), FdError> {
        let key = InodeKey::of(&fd)?;
        let mut s = self.0.state.lock();
        if s.closed {
            return Err(FdError::Closed);
        }
        let ticket = Ticket(s.next_ticket);
        s.next_ticket += 1;
        s.outgoing.push_back((ticket, fd));
        Ok((key, ticket))
    }

    /// Drops a queued fd that has not left yet (its call failed); true if it was still queued.
    pub fn withdraw(&self, ticket: Ticket) -> bool {
        let mut s = self.0.state.lock();
        let before = s.outgoing.len();
        s.outgoing.retain(|(t, _)| *t != ticket);
        s.outgoing.len() != before
    }

    /// Claims the next fd received for `key`, waiting for it to arrive. Callers bound the wait (the
    /// call's deadline).
    pub async fn recv(&self, key: InodeKey) -> Result<OwnedFd, FdError> {
        loop {
            let arrived = self.0.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut s = self.0.state.lock();
                s.sweep(self.0.clock.instant());
                if let Some(fd) = s.claim(&key) {
                    return Ok(fd);
                }
                if s.closed {
                    return Err(FdError::Closed);
                }
            }
            arrived.await;
        }
    }

    /// Claims the next fd received for `key` if one is there, without waiting.
    pub fn try_recv(&self, key: InodeKey) -> Option<OwnedFd> {
        self.0.state.lock().claim(&key)
    }

    /// Claims and closes one fd received for `key` if there is one (a call whose file the claimer
    /// already holds still carries it again).
    pub fn discard(&self, key: InodeKey) {
        let mut s = self.0.state.lock();
        drop(s.claim(&key));
    }

    /// Fds received and not claimed yet (for tests and diagnostics).
    pub fn unclaimed(&self) -> usize {
        self.0
            .state
            .lock()
            .received
            .values()
            .map(VecDeque::len)
            .sum()
    }

    /// Fds queued and not sent yet.
    pub fn queued(&self) -> usize {
        self.0.state.lock().outgoing.len()
    }

    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.0.state.lock().closed
    }

    /// True once a stream carries it.
    pub fn is_attached(&self) -> bool {
        self.0.state.lock().attached
    }

    fn has_outgoing(&self) -> bool {
        !self.0.state.lock().outgoing.is_empty()
    }

    fn arrive(&self, fd: OwnedFd) {
        let key = match InodeKey::of(&fd) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(error = %e, "grpcfd: dropping a received fd that cannot be stat-ed");
                return;
            }
        };
        let now = self.0.clock.instant();
        {
            let mut s = self.0.state.lock();
            if s.closed {
                return;
            }
            s.sweep(now);
            s.received.entry(key).or_default().push_back((fd, now));
        }
        self.0.arrived.notify_waiters();
    }

    fn close(&self) {
        let (queued, received) = {
            let mut s = self.0.state.lock();
            s.closed = true;
            (
                std::mem::take(&mut s.outgoing),
                std::mem::take(&mut s.received),
            )
        };
        // Closed outside the lock.
        drop((queued, received));
        self.0.arrived.notify_waiters();
    }

    /// Sends the first queued fd attached to `byte`; `Ok(None)` if none is queued.
    fn send_one(&self, sock: &UnixStream, byte: u8) -> io::Result<Option<usize>> {
        let Some((ticket, fd)) = self.0.state.lock().outgoing.pop_front() else {
            return Ok(None);
        };
        let fds = [fd.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        let sent = rustix::net::sendmsg(
            sock,
            &[IoSlice::new(&[byte])],
            &mut control,
            SendFlags::NOSIGNAL,
        );
        match sent {
            Ok(n) => Ok(Some(n)),
            Err(e) => {
                let e = io::Error::from(e);
                if e.kind() == io::ErrorKind::WouldBlock {
                    // Not sent: keep it first in line for the next try.
                    self.0.state.lock().outgoing.push_front((ticket, fd));
                }
                Err(e)
            }
        }
    }

    /// One `recvmsg` into `data`, keeping the fds that came with it.
    fn recv_into(&self, sock: &UnixStream, data: &mut [u8]) -> io::Result<usize> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_READ))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(data)];
        let msg = rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                for fd in fds {
                    self.arrive(fd);
                }
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            tracing::warn!("grpcfd: more fds arrived with one read than fit; some were lost");
        }
        Ok(msg.bytes)
    }
}

/// The transceiver of the connection an incoming call arrived on (a [`Ctx`](nsm_core::Ctx) value set
/// by the gRPC server edge; absent on TCP).
#[derive(Debug, Clone)]
pub struct IncomingFds(pub FdTransceiver);

/// Connection info of a plaintext unix-socket connection (a request extension).
#[derive(Debug, Clone)]
pub struct UnixConnInfo {
    /// What tonic knows about the peer.
    pub uds: UdsConnectInfo,
    /// The connection's fd side channel.
    pub fds: FdTransceiver,
}

/// A unix stream that carries fds alongside its bytes (see the module docs).
pub struct FdUnixStream {
    io: UnixStream,
    fds: FdTransceiver,
}

impl fmt::Debug for FdUnixStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FdUnixStream")
            .field("fd", &self.io.as_raw_fd())
            .field("fds", &self.fds)
            .finish()
    }
}

impl FdUnixStream {
    /// Wraps a connected stream.
    pub fn new(io: UnixStream) -> Self {
        Self::with_clock(io, Clock::system())
    }

    /// Wraps a connected stream; `clock` times out unclaimed fds.
    pub fn with_clock(io: UnixStream, clock: Clock) -> Self {
        Self::attach(io, FdTransceiver::detached(clock))
    }

    /// Wraps a connected stream with a transceiver made earlier (fds already queued on it leave with
    /// the first writes).
    pub fn attach(io: UnixStream, fds: FdTransceiver) -> Self {
        fds.0.state.lock().attached = true;
        Self { io, fds }
    }

    /// The connection's fd side channel.
    pub fn transceiver(&self) -> FdTransceiver {
        self.fds.clone()
    }
}

impl Drop for FdUnixStream {
    fn drop(&mut self) {
        self.fds.close();
    }
}

impl Connected for FdUnixStream {
    type ConnectInfo = UnixConnInfo;
    fn connect_info(&self) -> UnixConnInfo {
        UnixConnInfo {
            uds: self.io.connect_info(),
            fds: self.fds.clone(),
        }
    }
}

impl AsyncRead for FdUnixStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.io.poll_read_ready(cx))?;
            let data = buf.initialize_unfilled();
            let (io, fds) = (&this.io, &this.fds);
            match io.try_io(Interest::READABLE, || fds.recv_into(io, data)) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for FdUnixStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(&first) = buf.first() else {
            return Poll::Ready(Ok(0));
        };
        while this.fds.has_outgoing() {
            ready!(this.io.poll_write_ready(cx))?;
            let (io, fds) = (&this.io, &this.fds);
            match io.try_io(Interest::WRITABLE, || fds.send_one(io, first)) {
                // One byte carried one fd; the caller writes the rest (and the next fds) next.
                Ok(Some(n)) => return Poll::Ready(Ok(n)),
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.fds.has_outgoing() {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return Pin::new(this).poll_write(cx, first);
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// `file:///proc/<our pid>/fd/<n>`: how this process names a received fd to the rest of the chain
/// (and to the data plane, which opens it).
pub fn proc_fd_url(fd: &OwnedFd) -> String {
    crate::fdpass::proc_url("file", fd)
}

#[cfg(test)]
#[path = "fdconn_tests.rs"]
mod tests;
