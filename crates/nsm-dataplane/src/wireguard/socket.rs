//! The tunnel's UDP socket, bound in the node namespace.
//!
//! The client-side forwarder must put `src_port` into its offer before the peer exists, so binding is a
//! step of its own: [`TunnelSocket::bind`] (port 0 picks a free port, [`TunnelSocket::local_addr`]
//! reads it back), and the socket is later handed to [`super::WireguardLink::start`], which gives it
//! back on failure ([`super::StartError`]) and on [`super::WireguardLink::stop`], so a link can be
//! replaced (e.g. the peer's key changed) without giving up the port. The socket is made by a thread
//! that entered the node namespace and stays bound there; it can be used from any thread afterwards.
//! Dropping it closes it (the port is free again at once).

use std::net::{IpAddr, SocketAddr, UdpSocket};

use nix::sys::socket::{setsockopt, sockopt};

use super::WireguardError;
use crate::netns::Netns;

/// Socket buffer size asked for. The default (~208 KiB) overflows while a busy worker encrypts or
/// decrypts a burst: a TCP stream then lost ~11 % of its datagrams at the receiving socket
/// (BENCHMARKS.md, "WireGuard (userspace, building block)").
const BUFFER_BYTES: usize = 4 << 20;

/// A UDP socket bound to (tunnel IP, port) in a node namespace.
#[derive(Debug)]
pub struct TunnelSocket {
    socket: UdpSocket,
    local: SocketAddr,
}

impl TunnelSocket {
    /// Binds `ip:port` inside `node` (port 0: a free port). The address must be one of the node's.
    pub fn bind(node: &Netns, ip: IpAddr, port: u16) -> Result<Self, WireguardError> {
        let addr = SocketAddr::new(ip, port);
        let bind_err = |source| WireguardError::Bind {
            addr,
            netns: node.to_string(),
            source,
        };
        let socket = node
            .run(|| UdpSocket::bind(addr))
            .and_then(|bound| bound)
            .map_err(bind_err)?;
        let local = socket.local_addr().map_err(bind_err)?;
        socket.set_nonblocking(true).map_err(bind_err)?;
        enlarge_buffers(&socket);
        super::gso::enable_gro(&socket);
        Ok(Self { socket, local })
    }

    /// The bound address, with the port the kernel picked if 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The local port (the mechanism's `src_port` or `dst_port`).
    pub fn port(&self) -> u16 {
        self.local.port()
    }

    pub(crate) fn into_inner(self) -> UdpSocket {
        self.socket
    }

    /// Another handle on the same socket (a duplicated fd).
    pub(crate) fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            socket: self.socket.try_clone()?,
            local: self.local,
        })
    }

    /// Wraps a socket a stopped worker handed back.
    pub(crate) fn from_inner(socket: UdpSocket, local: SocketAddr) -> Self {
        Self { socket, local }
    }
}

/// Raises the socket's buffers to [`BUFFER_BYTES`], past the machine-wide limits if privileged
/// (`SO_RCVBUFFORCE`: CAP_NET_ADMIN, which a forwarder has); otherwise up to those limits. Best
/// effort: a smaller buffer only costs throughput under load.
fn enlarge_buffers(socket: &UdpSocket) {
    if setsockopt(socket, sockopt::RcvBufForce, &BUFFER_BYTES).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &BUFFER_BYTES);
    }
    if setsockopt(socket, sockopt::SndBufForce, &BUFFER_BYTES).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &BUFFER_BYTES);
    }
}
