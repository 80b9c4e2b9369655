//! Pod → peer: packets read from the TUN (super-frames split by tun-rs), encrypted into runs of
//! datagrams, sent with UDP GSO.

use std::io;
use std::net::SocketAddr;

use boringtun::noise::TunnResult;

use super::{BATCH, Buffers, Counters, Worker, wait_writable};
use crate::wireguard::gso;

impl Worker {
    /// Encapsulates a batch of packets from the pod.
    pub(super) fn outbound(&mut self, buf: &mut Buffers) -> io::Result<()> {
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
    pub(super) fn encrypt_into_run(
        &mut self,
        packet: &[u8],
        run: &mut gso::Run,
        scratch: &mut [u8],
    ) {
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
    pub(super) fn flush_run(&self, run: &mut gso::Run) {
        if run.count > 0 {
            self.send_datagrams(&run.buf[..run.len], run.segment, run.count);
        }
        run.clear();
    }

    /// Sends `count` datagrams of `segment` bytes (the last possibly shorter) to the peer.
    pub(super) fn send_datagrams(&self, data: &[u8], segment: usize, count: usize) {
        let Some(to) = self.endpoint else {
            Counters::add(&self.counters.no_endpoint, count);
            return;
        };
        self.send_to(to, data, segment, count);
    }

    /// Sends `count` datagrams of `segment` bytes to `to`, waiting (bounded) for room in a full
    /// socket; counts them dropped if they cannot go.
    fn send_to(&self, to: SocketAddr, data: &[u8], segment: usize, count: usize) {
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

    /// Sends a `WriteToNetwork` result to `to` (or the peer's endpoint); ignores other results.
    pub(super) fn to_network(&self, r: TunnResult<'_>, to: Option<SocketAddr>) {
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
        // One datagram: a plain send (see `gso::send`).
        self.send_to(to, packet, packet.len(), 1);
    }
}
