//! A userspace WireGuard point-to-point link: the data-plane building block for NSM's `WIREGUARD`
//! remote mechanism (IP payload). The kernel here has no WireGuard module, so the protocol runs in
//! userspace on boringtun's sans-IO `Tunn`.
//!
//! The pieces, in the order a forwarder uses them:
//! - [`KeyPair::generate`] makes the connection's X25519 key pair; [`PublicKey`] is what travels in
//!   `src_public_key` / `dst_public_key` (standard base64, as `wg` prints it). Private keys never leave
//!   the process.
//! - [`TunnelSocket::bind`] binds the UDP socket on (tunnel IP, port) in the node namespace. It is a
//!   step of its own because the client side must offer `src_port` before it knows its peer.
//! - [`WireguardLink::start`] takes the socket, the key pair, the peer's public key and (if known) its
//!   endpoint, and the wanted pod interface.
//!
//! **On start:** it creates a TUN device (layer 3, no packet information, virtio-net headers with
//! TSO/checksum offload) inside the pod namespace
//! with the given name (refused if the name is taken there), sets MTU and up, adds the addresses and
//! routes, then starts one worker thread that pumps TUN ↔ UDP through a `Tunn`. The side that knows
//! the peer's endpoint sends the handshake initiation at once; the other side learns the endpoint
//! from the first authenticated datagram (as WireGuard roaming does). If any step fails, the TUN is
//! closed before the error is returned, and the socket comes back with the error: nothing else is
//! left behind.
//!
//! **On stop** ([`WireguardLink::stop`] or drop): the worker is woken through an eventfd, returns at
//! once and is joined; the TUN fd is closed (so the pod interface, its addresses and routes
//! disappear). `stop` hands the UDP socket back (a replacement link can reuse the port); drop closes
//! it (the port is free again). A failed start also hands the socket back, in [`StartError`].
//!
//! **Pod namespace lifetime:** the open TUN holds a reference to the pod's namespace (the kernel's
//! TUN socket does), so a pod namespace deleted while its link runs (`ip netns del`, a pod that
//! died) lives on, with the interface in it, until the link is stopped: Close must stop the link.
//! If the pod interface itself is deleted, the worker notices and stops by itself
//! ([`LinkStats::running`] turns false).
//!
//! **State kept:** per link, the worker thread's handle, the wake fd and shared [`LinkStats`]
//! counters; the worker owns the `Tunn` (sessions, timers), the TUN device, the socket and the
//! current peer endpoint. Nothing is persisted: after a crash the TUN disappears with the process.
//!
//! Not done here (the forwarder's job): choosing the tunnel IP, port and MTU (NSM: uplink MTU − 80),
//! filling in the mechanism parameters, and choosing the allowed sources (NSM: the far pod's
//! addresses; [`LinkConfig::allowed_sources`]).

mod error;
mod gso;
mod keys;
mod socket;
mod tun;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use boringtun::noise::Tunn;
use ipnet::IpNet;
use nix::sys::eventfd::{EfdFlags, EventFd};

pub use error::{StartError, WireguardError};
pub use keys::{KeyPair, PublicKey};
pub use socket::TunnelSocket;
pub use tun::PodInterface;

use crate::netns::Netns;
use worker::{Counters, Worker};

/// NSM's persistent keepalive for WireGuard peers (seconds).
pub const PERSISTENT_KEEPALIVE: u16 = 10;

/// What a link needs besides its socket.
#[derive(Debug)]
pub struct LinkConfig {
    /// The pod namespace the TUN is made in.
    pub pod: Netns,
    /// The pod interface to make.
    pub interface: PodInterface,
    /// This side's key pair.
    pub key: KeyPair,
    /// The peer's public key.
    pub peer: PublicKey,
    /// The peer's `ip:port`, if known; without it the link learns it from the peer's first packet.
    pub peer_endpoint: Option<SocketAddr>,
    /// Seconds between keepalives when idle (NSM: [`PERSISTENT_KEEPALIVE`]); `None`: off.
    pub persistent_keepalive: Option<u16>,
    /// WireGuard's allowed IPs on receive: a decrypted packet whose source is in none of these is
    /// dropped (counted in [`LinkStats::refused_source`]). Empty: every authenticated packet is
    /// written to the pod (a point-to-point link has one peer).
    pub allowed_sources: Vec<IpNet>,
}

/// A snapshot of a link's counters ("tx": pod → peer, "rx": peer → pod).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets read from the pod interface.
    pub tx_packets: u64,
    /// Bytes of those packets (IP packets, before encryption).
    pub tx_bytes: u64,
    /// Packets decrypted and written to the pod interface.
    pub rx_packets: u64,
    /// Bytes of those packets.
    pub rx_bytes: u64,
    /// Handshakes completed (new sessions, including rekeys).
    pub handshakes: u64,
    /// Datagrams refused (garbage, wrong key, replays) or packets that could not be sent/written.
    pub dropped: u64,
    /// Packets not sent because the peer's endpoint is not known yet.
    pub no_endpoint: u64,
    /// Decrypted packets dropped because their source is not in [`LinkConfig::allowed_sources`].
    pub refused_source: u64,
    /// The peer's endpoint as last learnt (or configured).
    pub peer_endpoint: Option<SocketAddr>,
    /// Whether the worker is running.
    pub running: bool,
}

/// A running link; see the module doc. Stopped on drop.
#[derive(Debug)]
pub struct WireguardLink {
    interface: String,
    /// The pod interface's index (in the pod namespace).
    index: u32,
    local: SocketAddr,
    wake: Arc<EventFd>,
    counters: Arc<Counters>,
    worker: Option<JoinHandle<std::net::UdpSocket>>,
}

impl WireguardLink {
    /// Makes the pod interface and starts the worker; see the module doc. On error no interface is
    /// left and the socket comes back in the [`StartError`].
    pub async fn start(socket: TunnelSocket, config: LinkConfig) -> Result<Self, StartError> {
        Self::start_with(socket, config, None).await
    }

    /// [`WireguardLink::start`], configuring the pod interface with `netlink` (a handle already in
    /// the pod namespace, as the executor has one) instead of a socket of its own.
    pub(crate) async fn start_with(
        socket: TunnelSocket,
        config: LinkConfig,
        netlink: Option<&rtnetlink::Handle>,
    ) -> Result<Self, StartError> {
        let wake = match EventFd::from_value_and_flags(
            0,
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        ) {
            Ok(wake) => Arc::new(wake),
            Err(e) => {
                let error = WireguardError::io("eventfd", e.into());
                return Err(StartError { error, socket });
            }
        };
        let (device, index) = match tun::create(&config.pod, &config.interface, netlink).await {
            Ok(made) => made,
            Err(error) => return Err(StartError { error, socket }),
        };
        let counters = Arc::new(Counters::default());
        if let Ok(mut shown) = counters.endpoint.lock() {
            *shown = config.peer_endpoint;
        }
        let tunn = Tunn::new(
            config.key.secret(),
            config.peer.to_x25519(),
            None,
            config.persistent_keepalive,
            session_index(&config.key),
            None,
        );
        let local = socket.local_addr();
        // A second fd on the socket, so that it can be handed back even if the thread cannot start
        // (the closure, and with it the worker's fd, is dropped then). Closed once the worker runs.
        let spare = match socket.try_clone() {
            Ok(spare) => spare,
            Err(e) => {
                let error = WireguardError::io("duplicate the UDP socket", e);
                return Err(StartError { error, socket });
            }
        };
        let worker = Worker {
            tunn,
            tun: device,
            udp: socket.into_inner(),
            wake: wake.clone(),
            endpoint: config.peer_endpoint,
            // The kernel refused an MTU above 65535 when the TUN was configured.
            mtu: usize::try_from(config.interface.mtu.min(65_535)).unwrap_or(65_535),
            allowed: config.allowed_sources,
            counters: counters.clone(),
        };
        let handle = match std::thread::Builder::new()
            .name(format!("nsm-wg-{}", config.interface.name))
            .spawn(move || worker.run())
        {
            Ok(handle) => handle,
            Err(e) => {
                let error = WireguardError::io("start the WireGuard worker thread", e);
                return Err(StartError {
                    error,
                    socket: spare,
                });
            }
        };
        drop(spare);
        Ok(Self {
            interface: config.interface.name,
            index,
            local,
            wake,
            counters,
            worker: Some(handle),
        })
    }

    /// The pod interface's index in the pod namespace.
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// The local UDP address (tunnel IP and port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The counters now.
    pub fn stats(&self) -> LinkStats {
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        LinkStats {
            tx_packets: get(&c.tx_packets),
            tx_bytes: get(&c.tx_bytes),
            rx_packets: get(&c.rx_packets),
            rx_bytes: get(&c.rx_bytes),
            handshakes: get(&c.handshakes),
            dropped: get(&c.dropped),
            no_endpoint: get(&c.no_endpoint),
            refused_source: get(&c.refused_source),
            peer_endpoint: c.endpoint.lock().ok().and_then(|e| *e),
            running: c.running.load(Ordering::Relaxed),
        }
    }

    /// Stops the worker and waits for it. When this returns the pod interface is gone; the socket
    /// comes back (drop it to free the port, or start a new link on it). `None` only if the worker
    /// panicked (the socket was closed then).
    pub fn stop(mut self) -> Option<TunnelSocket> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Option<TunnelSocket> {
        let handle = self.worker.take()?;
        if let Err(e) = self.wake.write(1) {
            // Cannot happen for a fresh non-blocking eventfd (its counter would have to be near
            // u64::MAX); the worker then stops at its next timer tick instead.
            tracing::warn!("wireguard link {}: wake failed ({e})", self.interface);
        }
        match handle.join() {
            Ok(udp) => Some(TunnelSocket::from_inner(udp, self.local)),
            Err(_) => {
                tracing::error!("wireguard link {}: worker panicked", self.interface);
                None
            }
        }
    }
}

impl Drop for WireguardLink {
    fn drop(&mut self) {
        drop(self.shutdown());
    }
}

/// boringtun's 24-bit session index base: any value works for a single peer; derived from the public
/// key so two links of one process differ in logs.
fn session_index(key: &KeyPair) -> u32 {
    let b = *key.public().as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], 0])
}
