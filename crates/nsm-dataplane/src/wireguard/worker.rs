//! The per-link worker thread: TUN ↔ boringtun `Tunn` ↔ UDP.
//!
//! One `poll` waits on three fds: the TUN (packets from the pod), the UDP socket (datagrams from the
//! peer) and an eventfd that [`super::WireguardLink::stop`] writes to, so stopping never waits for
//! traffic or a timer. The poll times out every [`TIMER_TICK`] so that boringtun's timers
//! (handshake retries, rekeys, keepalives, session expiry) run when the link is idle; they also run
//! after every wake-up, which costs a clock read.
//!
//! If the TUN fails for good (someone deleted the pod interface), the worker stops by itself; the
//! link then reports `running: false` until it is stopped.
//!
//! Batching, because a syscall per packet made the link CPU-bound at ~1 Gbit/s (BENCHMARKS.md):
//! the TUN has virtio-net headers and TSO offload, so one read can bring a 64 KB TCP super-frame,
//! which tun-rs splits into MTU-sized packets; their encryptions form a run of equal-sized datagrams
//! sent with one `sendmsg` (UDP GSO, [`super::gso`]); the socket has UDP GRO on, so such a run also
//! arrives with one `recvmsg`; and the decrypted packets of a receive are written to the TUN
//! together, TCP segments coalesced (tun-rs's GRO table).
//!
//! Each wake-up drains a bounded batch from each readable fd (so one direction cannot starve the
//! other). A datagram boringtun refuses (garbage, wrong size, wrong key, replay) is counted in
//! `dropped` and otherwise ignored. The peer's endpoint, if not configured, is learnt from the
//! first datagram boringtun accepts, and follows the peer when it roams.

mod to_peer;
mod to_pod;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::gso;
use boringtun::noise::Tunn;
use ipnet::IpNet;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::EventFd;
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};

/// How often boringtun's timers run on an idle link (its own device layer uses 250 ms).
pub(crate) const TIMER_TICK: Duration = Duration::from_millis(250);
/// Packets taken from one fd per wake-up.
const BATCH: usize = 64;
/// Room for the largest IP packet plus WireGuard's overhead (boringtun wants ≥ len + 32 and ≥ 148).
const BUF: usize = 65_535 + 256;
/// How long a send waits for room in a full socket or TUN queue before the packet is dropped.
const SEND_WAIT_MS: u8 = 100;

/// Counters of one link, updated by its worker and readable at any time.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub handshakes: AtomicU64,
    pub dropped: AtomicU64,
    pub no_endpoint: AtomicU64,
    pub refused_source: AtomicU64,
    pub endpoint: std::sync::Mutex<Option<SocketAddr>>,
    pub running: AtomicBool,
}

impl Counters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Everything the worker owns; dropped (TUN and socket closed) when it returns.
pub(crate) struct Worker {
    pub tunn: Tunn,
    pub tun: SyncDevice,
    pub udp: UdpSocket,
    pub wake: Arc<EventFd>,
    pub endpoint: Option<SocketAddr>,
    /// The pod interface's MTU (the largest packet a super-frame is split into).
    pub mtu: usize,
    /// Allowed inner source addresses (empty: all).
    pub allowed: Vec<IpNet>,
    pub counters: Arc<Counters>,
}

struct Buffers {
    /// A raw TUN read: virtio-net header + up to a 64 KB super-frame.
    raw: Vec<u8>,
    /// The super-frame split into MTU-sized packets, and their sizes.
    segments: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// A UDP datagram received.
    datagram: Vec<u8>,
    /// boringtun's output.
    dst: Vec<u8>,
    /// Decrypted packets waiting to be written to the TUN (each after a header's room), and how
    /// many of `to_pod` are in use.
    to_pod: Vec<Vec<u8>>,
    to_pod_len: usize,
    gro: GROTable,
    /// Encrypted datagrams for the peer, sent together.
    run: gso::Run,
}

impl Buffers {
    fn new(mtu: usize) -> Self {
        Self {
            raw: vec![0; VIRTIO_NET_HDR_LEN + 65_535],
            segments: vec![vec![0; mtu]; IDEAL_BATCH_SIZE],
            sizes: vec![0; IDEAL_BATCH_SIZE],
            datagram: vec![0; BUF],
            dst: vec![0; BUF],
            to_pod: Vec::new(),
            to_pod_len: 0,
            gro: GROTable::default(),
            run: gso::Run::new(),
        }
    }
}

impl Worker {
    /// Runs until the wake fd is written to (or poll fails for good). Closes the TUN and hands the
    /// socket back.
    pub(crate) fn run(mut self) -> UdpSocket {
        self.counters.running.store(true, Ordering::Relaxed);
        let mut buf = Buffers::new(self.mtu);
        let mut last_handshake = None;
        // The side that knows where the peer is starts the handshake now, so the first packet from
        // the pod does not wait for it.
        if self.endpoint.is_some() {
            let r = self.tunn.format_handshake_initiation(&mut buf.dst, false);
            self.to_network(r, None);
        }
        loop {
            let (tun_ready, udp_ready, stop) = match self.wait() {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::error!("wireguard worker: poll failed ({e}); stopping");
                    break;
                }
            };
            if stop {
                break;
            }
            if tun_ready && let Err(e) = self.outbound(&mut buf) {
                // The pod interface was deleted: nothing left to serve. Stopping here also keeps a
                // detached TUN fd's endless POLLERR from spinning the loop.
                tracing::warn!("wireguard worker: TUN read failed ({e}); stopping");
                break;
            }
            if udp_ready {
                self.inbound(&mut buf);
            }
            let r = self.tunn.update_timers(&mut buf.dst);
            self.to_network(r, None);
            self.count_handshake(&mut last_handshake);
        }
        self.counters.running.store(false, Ordering::Relaxed);
        drop(self.tun);
        self.udp
    }

    /// (TUN readable, UDP readable, stop asked).
    fn wait(&self) -> nix::Result<(bool, bool, bool)> {
        let mut fds = [
            PollFd::new(self.tun.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.udp.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
        ];
        let tick = PollTimeout::try_from(TIMER_TICK).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, tick) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok((false, false, false)),
            Err(e) => return Err(e),
        }
        let ready = |fd: &PollFd<'_>| {
            fd.revents()
                .is_some_and(|r| !(r & !PollFlags::POLLOUT).is_empty())
        };
        Ok((ready(&fds[0]), ready(&fds[1]), ready(&fds[2])))
    }

    /// Counts a new session: the time since the last handshake only ever shrinks when one completes.
    fn count_handshake(&self, last: &mut Option<Duration>) {
        let now = self.tunn.time_since_last_handshake();
        let new = match (*last, now) {
            (None, Some(_)) => true,
            (Some(before), Some(after)) => after < before,
            _ => false,
        };
        if new {
            Counters::add(&self.counters.handshakes, 1);
        }
        *last = now;
    }
}

/// Waits (bounded) until `fd` can take a write; false on timeout or error.
fn wait_writable(fd: &impl AsFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
    matches!(poll(&mut fds, PollTimeout::from(SEND_WAIT_MS)), Ok(n) if n > 0)
}
