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

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::gso;
use boringtun::noise::{Tunn, TunnResult};
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

    /// Encapsulates a batch of packets from the pod.
    fn outbound(&mut self, buf: &mut Buffers) -> io::Result<()> {
        for _ in 0..BATCH {
            let count =
                match self
                    .tun
                    .recv_multiple(&mut buf.raw, &mut buf.segments, &mut buf.sizes, 0)
                {
                    Ok(count) => count,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        // A frame tun-rs cannot split (bad virtio header): drop it.
                        Counters::add(&self.counters.dropped, 1);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
            for i in 0..count {
                let n = buf.sizes[i];
                Counters::add(&self.counters.tx_packets, 1);
                Counters::add(&self.counters.tx_bytes, n);
                self.encrypt_into_run(&buf.segments[i][..n], &mut buf.run, &mut buf.dst);
            }
            self.flush_run(&mut buf.run);
        }
        Ok(())
    }

    /// Encrypts one packet from the pod and adds it to the run of datagrams for the peer (sent at
    /// once when the run is full or cannot take it). Other results (a handshake initiation while no
    /// session exists) are sent on their own.
    fn encrypt_into_run(&mut self, packet: &[u8], run: &mut gso::Run, scratch: &mut [u8]) {
        if run.len + packet.len() + 64 > gso::MAX_BYTES || run.count == gso::MAX_SEGMENTS {
            self.flush_run(run);
        }
        let r = self.tunn.encapsulate(packet, &mut run.buf[run.len..]);
        let size = match r {
            // A data packet (type 4) was written into the run's buffer.
            TunnResult::WriteToNetwork(p) if p.first() == Some(&4) => p.len(),
            other => {
                // Not data: copy it out, so the run's buffer stays free for the run.
                let len = match other {
                    TunnResult::WriteToNetwork(p) => {
                        let len = p.len().min(scratch.len());
                        scratch[..len].copy_from_slice(&p[..len]);
                        Some(len)
                    }
                    _ => None,
                };
                if let Some(len) = len {
                    self.to_network(TunnResult::WriteToNetwork(&mut scratch[..len]), None);
                }
                return;
            }
        };
        if run.count > 0 && size > run.segment {
            // Longer than the run's datagrams: send the run, then start a new one with this packet.
            self.send_datagrams(&run.buf[..run.len], run.segment, run.count);
            run.buf.copy_within(run.len..run.len + size, 0);
            run.clear();
        }
        if run.count == 0 {
            run.segment = size;
        }
        run.len += size;
        run.count += 1;
        if size < run.segment {
            // A shorter datagram can only end a run.
            self.flush_run(run);
        }
    }

    /// Sends the run of datagrams, if any.
    fn flush_run(&self, run: &mut gso::Run) {
        if run.count > 0 {
            self.send_datagrams(&run.buf[..run.len], run.segment, run.count);
        }
        run.clear();
    }

    /// Sends `count` datagrams of `segment` bytes (the last possibly shorter) to the peer.
    fn send_datagrams(&self, data: &[u8], segment: usize, count: usize) {
        let Some(to) = self.endpoint else {
            Counters::add(&self.counters.no_endpoint, count);
            return;
        };
        loop {
            match gso::send(&self.udp, to, data, segment) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && wait_writable(&self.udp) => {}
                Err(e) => {
                    tracing::debug!("wireguard worker: UDP send to {to}: {e}");
                    Counters::add(&self.counters.dropped, count);
                    return;
                }
            }
        }
    }

    /// Decapsulates a batch of datagrams from the peer.
    fn inbound(&mut self, buf: &mut Buffers) {
        for _ in 0..BATCH {
            let (n, from, segment) = match gso::recv(&self.udp, &mut buf.datagram) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // E.g. ECONNREFUSED reported for an earlier send: not fatal.
                    tracing::debug!("wireguard worker: UDP receive: {e}");
                    continue;
                }
            };
            if n == 0 {
                // boringtun reads an empty datagram as "hand out the next queued packet".
                Counters::add(&self.counters.dropped, 1);
                continue;
            }
            let mut start = 0;
            while start < n {
                let end = (start + segment).min(n);
                self.datagram(buf, start..end, from);
                start = end;
            }
            self.flush_to_pod(buf);
        }
    }

    /// Handles one datagram, `buf.datagram[range]`, from `from`.
    fn datagram(&mut self, buf: &mut Buffers, range: std::ops::Range<usize>, from: SocketAddr) {
        let r = self
            .tunn
            .decapsulate(Some(from.ip()), &buf.datagram[range], &mut buf.dst);
        if matches!(r, TunnResult::Err(_)) {
            Counters::add(&self.counters.dropped, 1);
            return;
        }
        self.learn_endpoint(from);
        match r {
            TunnResult::WriteToTunnelV4(p, src) => {
                self.deliver(&mut buf.to_pod, &mut buf.to_pod_len, p, src.into())
            }
            TunnResult::WriteToTunnelV6(p, src) => {
                self.deliver(&mut buf.to_pod, &mut buf.to_pod_len, p, src.into())
            }
            TunnResult::WriteToNetwork(_) => {
                self.to_network(r, Some(from));
                // A completed handshake releases the packets queued while it ran: boringtun
                // hands them out one per call with an empty datagram, until Done.
                loop {
                    let q = self.tunn.decapsulate(None, &[], &mut buf.dst);
                    if !matches!(q, TunnResult::WriteToNetwork(_)) {
                        break;
                    }
                    self.to_network(q, None);
                }
            }
            TunnResult::Done | TunnResult::Err(_) => {}
        }
    }

    /// Sends a `WriteToNetwork` result to `to` (or the peer's endpoint); ignores other results.
    fn to_network(&self, r: TunnResult<'_>, to: Option<SocketAddr>) {
        let packet = match r {
            TunnResult::WriteToNetwork(p) => p,
            TunnResult::Err(e) => {
                tracing::trace!("wireguard worker: {e:?}");
                return;
            }
            _ => return,
        };
        let Some(to) = to.or(self.endpoint) else {
            // Only the side without a configured endpoint gets here, before the peer has spoken.
            Counters::add(&self.counters.no_endpoint, 1);
            return;
        };
        loop {
            match self.udp.send_to(packet, to) {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait_writable(&self.udp) {
                        Counters::add(&self.counters.dropped, 1);
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!("wireguard worker: UDP send to {to}: {e}");
                    Counters::add(&self.counters.dropped, 1);
                    return;
                }
            }
        }
    }

    /// Queues a decrypted packet from `src` for the pod if `src` is allowed.
    fn deliver(&self, queue: &mut Vec<Vec<u8>>, used: &mut usize, packet: &[u8], src: IpAddr) {
        if !self.allowed.is_empty() && !self.allowed.iter().any(|net| net.contains(&src)) {
            Counters::add(&self.counters.refused_source, 1);
            return;
        }
        if *used == queue.len() {
            queue.push(Vec::with_capacity(VIRTIO_NET_HDR_LEN + packet.len()));
        }
        let slot = &mut queue[*used];
        slot.clear();
        slot.resize(VIRTIO_NET_HDR_LEN, 0);
        slot.extend_from_slice(packet);
        *used += 1;
    }

    /// Writes the queued packets into the pod, TCP segments of one flow coalesced (GRO).
    fn flush_to_pod(&self, buf: &mut Buffers) {
        let used = std::mem::take(&mut buf.to_pod_len);
        if used == 0 {
            return;
        }
        let batch = &mut buf.to_pod[..used];
        let bytes: usize = batch.iter().map(|p| p.len() - VIRTIO_NET_HDR_LEN).sum();
        loop {
            match self
                .tun
                .send_multiple(&mut buf.gro, batch, VIRTIO_NET_HDR_LEN)
            {
                Ok(_) => {
                    Counters::add(&self.counters.rx_packets, used);
                    Counters::add(&self.counters.rx_bytes, bytes);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && wait_writable(&self.tun) => {}
                Err(e) => {
                    tracing::debug!("wireguard worker: TUN write: {e}");
                    Counters::add(&self.counters.dropped, used);
                    return;
                }
            }
        }
    }

    /// WireGuard roaming: the endpoint is where the last authenticated datagram came from.
    fn learn_endpoint(&mut self, from: SocketAddr) {
        if self.endpoint != Some(from) {
            tracing::debug!("wireguard worker: peer endpoint is now {from}");
            self.endpoint = Some(from);
            if let Ok(mut shown) = self.counters.endpoint.lock() {
                *shown = Some(from);
            }
        }
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
