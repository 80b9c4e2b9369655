//! Our own ICMP echo (IPv4 and IPv6), so tests and `nsm ping` do not depend on iputils.
//!
//! Uses raw ICMP sockets (root or CAP_NET_RAW): datagram ICMP sockets would need
//! `net.ipv4.ping_group_range`, which is "1 0" (disabled) in every fresh network namespace. Each echo
//! carries an identifier unique to the call, and replies are matched by (identifier, sequence), so
//! concurrent pings in one namespace do not confuse each other. The kernel computes ICMPv6 checksums
//! for raw ICMPv6 sockets; ICMPv4 checksums are computed here.

use std::io;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::Netns;

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
const PAYLOAD: &[u8; 16] = b"nsm-rs icmp echo";

static NEXT_ID: AtomicU16 = AtomicU16::new(0);

/// Sends `count` echo requests to `dst` from inside `ns` (or the caller's namespace), one after the
/// other, waiting up to `timeout` for each reply. Returns the round-trip times of the replies received
/// (fewer than `count` if some were lost).
pub fn ping(
    ns: Option<&Netns>,
    dst: IpAddr,
    count: u16,
    timeout: Duration,
) -> io::Result<Vec<Duration>> {
    match ns {
        Some(ns) => ns.run(|| ping_here(dst, count, timeout))?,
        None => ping_here(dst, count, timeout),
    }
}

/// [`ping`] in the calling thread's namespace.
pub fn ping_here(dst: IpAddr, count: u16, timeout: Duration) -> io::Result<Vec<Duration>> {
    let (domain, proto) = match dst {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let socket = Socket::new(domain, Type::RAW, Some(proto))?;
    let target = SocketAddr::new(dst, 0).into();
    let id = (std::process::id() as u16).wrapping_mul(31) ^ NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut rtts = Vec::new();
    for seq in 0..count {
        let packet = echo_request(dst.is_ipv4(), id, seq);
        // Round-trip times of real packets: an injected (possibly paused) clock would be meaningless.
        #[allow(clippy::disallowed_methods)]
        let sent = Instant::now();
        socket.send_to(&packet, &target)?;
        if let Some(rtt) = await_reply(&socket, dst.is_ipv4(), id, seq, sent, timeout)? {
            rtts.push(rtt);
        }
    }
    Ok(rtts)
}

fn await_reply(
    socket: &Socket,
    v4: bool,
    id: u16,
    seq: u16,
    sent: Instant,
    timeout: Duration,
) -> io::Result<Option<Duration>> {
    let mut buf = [0u8; 2048];
    loop {
        let left = match timeout.checked_sub(sent.elapsed()) {
            Some(d) if !d.is_zero() => d,
            _ => return Ok(None),
        };
        socket.set_read_timeout(Some(left))?;
        // `Read for &Socket` is socket2's safe recv into initialised memory.
        let n = match (&mut &*socket).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if is_reply(&buf[..n], v4, id, seq) {
            return Ok(Some(sent.elapsed()));
        }
    }
}

fn is_reply(bytes: &[u8], v4: bool, id: u16, seq: u16) -> bool {
    let icmp = if v4 {
        let Some(first) = bytes.first() else {
            return false;
        };
        let ihl = usize::from(first & 0x0f) * 4;
        match bytes.get(ihl..) {
            Some(rest) => rest,
            None => return false,
        }
    } else {
        bytes
    };
    if icmp.len() < 8 {
        return false;
    }
    let want = if v4 { ECHO_REPLY_V4 } else { ECHO_REPLY_V6 };
    icmp[0] == want
        && u16::from_be_bytes([icmp[4], icmp[5]]) == id
        && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
}

fn echo_request(v4: bool, id: u16, seq: u16) -> Vec<u8> {
    let kind = if v4 { ECHO_REQUEST_V4 } else { ECHO_REQUEST_V6 };
    let mut p = vec![kind, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(PAYLOAD);
    if v4 {
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_request_verifies_to_zero() {
        let p = echo_request(true, 0x1234, 7);
        assert_eq!(checksum(&p), 0);
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn replies_are_matched_by_id_and_sequence() {
        let mut reply = echo_request(false, 9, 3);
        reply[0] = ECHO_REPLY_V6;
        assert!(is_reply(&reply, false, 9, 3));
        assert!(!is_reply(&reply, false, 9, 4));
        assert!(
            !is_reply(&echo_request(false, 9, 3), false, 9, 3),
            "own request"
        );
        let mut v4 = vec![0x45u8; 20];
        let mut r4 = echo_request(true, 1, 1);
        r4[0] = ECHO_REPLY_V4;
        v4.extend(r4);
        assert!(is_reply(&v4, true, 1, 1));
    }
}
