//! Sending a run of equal-sized WireGuard datagrams to one peer with one `sendmsg` (UDP GSO,
//! `UDP_SEGMENT`): the kernel cuts the buffer into datagrams, so the whole run crosses the UDP/IP
//! stack (and a veth) as one packet. The pod's TCP hands the worker 64 KB super-frames, which become
//! runs of full-sized data packets, so this replaces ~45 `sendto`s by one. The receiving socket has
//! UDP GRO on, so such a run also arrives with one `recvmsg`.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt,
    sockopt,
};

/// Bytes of datagrams one send may carry (a UDP packet's 64 KB less room for headers).
pub(crate) const MAX_BYTES: usize = 65_000;
/// Datagrams one send may carry (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
pub(crate) const MAX_SEGMENTS: usize = 64;

/// Encrypted data packets waiting to be sent together: all `segment` bytes long, except possibly the
/// last, which may be shorter (and then ends the run).
pub(crate) struct Run {
    pub buf: Vec<u8>,
    pub len: usize,
    pub segment: usize,
    pub count: usize,
}

impl Run {
    pub(crate) fn new() -> Self {
        Self {
            // Room for a full run plus the largest single packet boringtun may write after it.
            buf: vec![0; MAX_BYTES + 65_535 + 256],
            len: 0,
            segment: 0,
            count: 0,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.count = 0;
        self.segment = 0;
    }
}

/// Sends `data` (datagrams of `segment` bytes, the last possibly shorter) to `to`. If the kernel
/// refuses GSO (e.g. a device without it), sends them one by one instead.
pub(crate) fn send(udp: &UdpSocket, to: SocketAddr, data: &[u8], segment: usize) -> io::Result<()> {
    if data.len() <= segment {
        return udp.send_to(data, to).map(drop);
    }
    let size = u16::try_from(segment).unwrap_or(u16::MAX);
    let addr = SockaddrStorage::from(to);
    let iov = [IoSlice::new(data)];
    let cmsg = [ControlMessage::UdpGsoSegments(&size)];
    match sendmsg(udp.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), Some(&addr)) {
        Ok(_) => Ok(()),
        Err(e @ (nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR)) => Err(e.into()),
        Err(e) => {
            tracing::debug!("wireguard worker: UDP GSO send refused ({e}); sending one by one");
            for datagram in data.chunks(segment) {
                udp.send_to(datagram, to)?;
            }
            Ok(())
        }
    }
}

/// Receives into `buf` what the kernel has for the socket: with UDP GRO on (see
/// [`enable_gro`]), several datagrams from one sender at once, all `segment` bytes long but the
/// last. Returns (bytes, sender, segment size).
pub(crate) fn recv(udp: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(i32);
    let msg = recvmsg::<SockaddrStorage>(
        udp.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )?;
    let n = msg.bytes;
    let mut segment = n;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::UdpGroSegments(size) = c {
                segment = usize::try_from(size).unwrap_or(n);
            }
        }
    }
    let from = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        })
        .ok_or_else(|| io::Error::other("datagram without an IP sender"))?;
    Ok((n, from, segment.max(1)))
}

/// Asks the kernel to hand over runs of datagrams from one sender at once (`UDP_GRO`). Best effort:
/// without it every datagram comes on its own, which [`recv`] handles too.
pub(crate) fn enable_gro(udp: &UdpSocket) {
    if let Err(e) = setsockopt(udp, sockopt::UdpGroSegment, &true) {
        tracing::debug!("wireguard: UDP GRO not available ({e})");
    }
}
