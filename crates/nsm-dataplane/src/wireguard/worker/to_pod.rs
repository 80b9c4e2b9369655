//! Peer → pod: datagrams received (runs with UDP GRO), decrypted, checked against the allowed
//! sources, and written to the TUN together (TCP segments coalesced by tun-rs's GRO table).

use std::io;
use std::net::{IpAddr, SocketAddr};

use boringtun::noise::TunnResult;
use tun_rs::VIRTIO_NET_HDR_LEN;

use super::{BATCH, Buffers, Counters, Worker, wait_writable};
use crate::wireguard::gso;

impl Worker {
    /// Decapsulates a batch of datagrams from the peer.
    pub(super) fn inbound(&mut self, buf: &mut Buffers) {
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
    pub(super) fn datagram(
        &mut self,
        buf: &mut Buffers,
        range: std::ops::Range<usize>,
        from: SocketAddr,
    ) {
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

    /// Queues a decrypted packet from `src` for the pod if `src` is allowed.
    pub(super) fn deliver(
        &self,
        queue: &mut Vec<Vec<u8>>,
        used: &mut usize,
        packet: &[u8],
        src: IpAddr,
    ) {
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
    pub(super) fn flush_to_pod(&self, buf: &mut Buffers) {
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
    pub(super) fn learn_endpoint(&mut self, from: SocketAddr) {
        if self.endpoint != Some(from) {
            tracing::debug!("wireguard worker: peer endpoint is now {from}");
            self.endpoint = Some(from);
            if let Ok(mut shown) = self.counters.endpoint.lock() {
                *shown = Some(from);
            }
        }
    }
}
