//! [`WireguardEnds`]: this forwarder's end of every WireGuard tunnel, from the offer to Close.
//!
//! An *end* is a connection's X25519 key pair and its UDP socket, bound in the node namespace on
//! (tunnel IP, port) — port 0 picks a free one (phase 1 of docs/wireguard.md: one socket per link;
//! the real port travels in `src_port` / `dst_port`). It is kept per (connection id, side):
//!
//! - **Reserve** (the mechanism elements, on Request): the client side must offer `src_port` and
//!   `src_public_key` before any peer exists, the server side answers with `dst_port` and
//!   `dst_public_key`; both ask here. A (connection id, side) that has an end gets the same one back
//!   (a refresh keeps key and port, so the plan is equal and apply does nothing); otherwise a key
//!   pair is generated and a socket bound. From then on a handshake the peer sends early waits in the
//!   socket's receive buffer until the link starts.
//! - **Take / put back** (the executor, on apply / remove): the executor finds the end by the public
//!   key in the plan (`WireguardPlan::local_public`), takes the socket and a copy of the key pair to
//!   start the link, and puts the socket back when it stops the link (a replaced link — the far key
//!   changed — keeps the port). The key pair stays here.
//! - **Release** (the mechanism elements, on Close or a failed first Request): the end is dropped; its
//!   socket, if the executor has put it back, is closed and the port is free again. A socket that a
//!   running link still holds when its end is released is closed when that link stops (put back
//!   finds no end and drops it).
//!
//! **State**: a map (connection id, side) → end, under one `Mutex` (the forwarder's `begin` already
//! serialises the events of one connection; the lock only guards the map). Nothing is persisted: a
//! restarted forwarder starts empty, and its peers get new keys through heal or refresh.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nsm_core::metadata::Side;

use crate::netns::Netns;
use crate::wireguard::{KeyPair, PublicKey, TunnelSocket, WireguardError};

/// What a reservation hands the mechanism elements: the parameters they put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedEnd {
    /// The bound address (tunnel IP and the real port).
    pub local: SocketAddr,
    /// The public key of the end's key pair.
    pub public_key: PublicKey,
}

/// One reserved end.
#[derive(Debug)]
struct End {
    key: KeyPair,
    /// `None` while a link runs on it.
    socket: Option<TunnelSocket>,
    local: SocketAddr,
}

/// The WireGuard ends of one forwarder; see the module doc. Shared by the mechanism elements and the
/// executor.
#[derive(Debug)]
pub struct WireguardEnds {
    node: Netns,
    tunnel_ip: IpAddr,
    port: u16,
    ends: Mutex<HashMap<(String, Side), End>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every holder leaves the map consistent (single inserts, removals and field swaps).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WireguardEnds {
    /// Ends bound in `node` on `tunnel_ip:port` (port 0: a free port per end).
    pub fn new(node: Netns, tunnel_ip: IpAddr, port: u16) -> Self {
        Self {
            node,
            tunnel_ip,
            port,
            ends: Mutex::default(),
        }
    }

    /// The end of (`connection_id`, `side`): the one it has, else a new key pair and a newly bound
    /// socket; and whether it is new. Blocks briefly (the bind runs on a thread inside the node
    /// namespace).
    pub fn reserve(
        &self,
        connection_id: &str,
        side: Side,
    ) -> Result<(ReservedEnd, bool), WireguardError> {
        let id = (connection_id.to_string(), side);
        if let Some(end) = lock(&self.ends).get(&id) {
            let have = ReservedEnd {
                local: end.local,
                public_key: end.key.public(),
            };
            return Ok((have, false));
        }
        // Made outside the lock: binding enters the node namespace on a thread of its own.
        let key = KeyPair::generate()?;
        let socket = TunnelSocket::bind(&self.node, self.tunnel_ip, self.port)?;
        let local = socket.local_addr();
        let mut ends = lock(&self.ends);
        // `begin` orders one connection's events, so nobody reserved this id meanwhile; should it
        // happen anyway, the first end wins and ours is dropped (closing its socket).
        let mut new = false;
        let end = ends.entry(id).or_insert_with(|| {
            new = true;
            End {
                key,
                socket: Some(socket),
                local,
            }
        });
        let end = ReservedEnd {
            local: end.local,
            public_key: end.key.public(),
        };
        Ok((end, new))
    }

    /// The end of (`connection_id`, `side`), if reserved.
    pub fn get(&self, connection_id: &str, side: Side) -> Option<ReservedEnd> {
        lock(&self.ends)
            .get(&(connection_id.to_string(), side))
            .map(|e| ReservedEnd {
                local: e.local,
                public_key: e.key.public(),
            })
    }

    /// Drops the end of (`connection_id`, `side`); whether there was one. Its socket is closed now
    /// if it is here, else when the link holding it stops.
    pub fn release(&self, connection_id: &str, side: Side) -> bool {
        let end = lock(&self.ends).remove(&(connection_id.to_string(), side));
        end.is_some()
    }

    /// For the executor: the key pair and the socket of the end whose public key is `public`, the
    /// socket taken out until [`WireguardEnds::put_back`]. `Err` says why not: no such end (it was
    /// released, or never reserved here), or its socket is taken (a link runs on it).
    pub fn take(&self, public: &PublicKey) -> Result<(KeyPair, TunnelSocket), TakeError> {
        let mut ends = lock(&self.ends);
        let end = ends
            .values_mut()
            .find(|e| e.key.public() == *public)
            .ok_or(TakeError::NotReserved)?;
        let socket = end.socket.take().ok_or(TakeError::InUse)?;
        Ok((end.key.clone(), socket))
    }

    /// For the executor: gives back the socket of a stopped link. Dropped (closed) if its end was
    /// released meanwhile.
    pub fn put_back(&self, public: &PublicKey, socket: TunnelSocket) {
        let mut ends = lock(&self.ends);
        if let Some(end) = ends
            .values_mut()
            .find(|e| e.key.public() == *public && e.local == socket.local_addr())
            && end.socket.is_none()
        {
            end.socket = Some(socket);
        }
    }

    /// How many ends are reserved.
    pub fn len(&self) -> usize {
        lock(&self.ends).len()
    }

    /// Whether no end is reserved.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The mechanism elements' view (`WireguardClient` / `WireguardServer` reserve and release here).
#[cfg(feature = "forwarder")]
impl nsm_networkservice::mechanisms::wireguard::LocalEnds for WireguardEnds {
    fn reserve(
        &self,
        connection_id: &str,
        side: Side,
    ) -> Result<
        nsm_networkservice::mechanisms::wireguard::Reserved,
        nsm_networkservice::mechanisms::wireguard::LocalEndsError,
    > {
        use nsm_networkservice::mechanisms::wireguard::{LocalEnd, LocalEndsError, Reserved};
        let (end, new) = WireguardEnds::reserve(self, connection_id, side)
            .map_err(|e| LocalEndsError::Failed(Box::new(e)))?;
        Ok(Reserved {
            end: LocalEnd {
                port: end.local.port(),
                public_key: end.public_key.to_string(),
            },
            new,
        })
    }

    fn release(&self, connection_id: &str, side: Side) {
        WireguardEnds::release(self, connection_id, side);
    }
}

/// Why [`WireguardEnds::take`] has nothing to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TakeError {
    /// No end has this public key.
    #[error("no WireGuard end is reserved for this public key (released, or not made here)")]
    NotReserved,
    /// The end's socket is held by a running link.
    #[error("the WireGuard end's socket is in use by another link")]
    InUse,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binding enters the node namespace (setns), which needs root: skip without it, fail under
    /// CI=true. Sockets are bound on loopback only.
    fn privileged() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: this test needs root"
            );
            eprintln!("SKIPPED: not root");
        }
        root
    }

    fn ends() -> WireguardEnds {
        WireguardEnds::new(Netns::current().unwrap(), "127.0.0.1".parse().unwrap(), 0)
    }

    #[test]
    fn reserve_is_sticky_per_connection_and_side_and_release_frees_the_port() {
        if !privileged() {
            return;
        }
        let e = ends();
        let (a, new) = e.reserve("c1", Side::Client).unwrap();
        assert!(new);
        assert_eq!(
            e.reserve("c1", Side::Client).unwrap(),
            (a, false),
            "refresh: same end"
        );
        let b = e.reserve("c1", Side::Server).unwrap().0;
        assert_ne!(a.public_key, b.public_key);
        assert_ne!(a.local.port(), b.local.port());
        assert_eq!(e.get("c1", Side::Server), Some(b));
        assert!(e.release("c1", Side::Client));
        assert!(!e.release("c1", Side::Client));
        // The port is free again: binding it succeeds.
        std::net::UdpSocket::bind(a.local).unwrap();
        let again = e.reserve("c1", Side::Client).unwrap().0;
        assert_ne!(again.public_key, a.public_key, "after Close: a new key");
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn take_and_put_back_keep_the_port_until_release() {
        if !privileged() {
            return;
        }
        let e = ends();
        let a = e.reserve("c1", Side::Server).unwrap().0;
        let (key, socket) = e.take(&a.public_key).unwrap();
        assert_eq!(key.public(), a.public_key);
        assert_eq!(socket.local_addr(), a.local);
        assert_eq!(e.take(&a.public_key).unwrap_err(), TakeError::InUse);
        e.put_back(&a.public_key, socket);
        let (_, socket) = e.take(&a.public_key).unwrap();
        // Released while a link holds the socket: putting it back closes it.
        assert!(e.release("c1", Side::Server));
        e.put_back(&a.public_key, socket);
        assert_eq!(e.take(&a.public_key).unwrap_err(), TakeError::NotReserved);
        std::net::UdpSocket::bind(a.local).unwrap();
        assert!(e.is_empty());
    }

    #[cfg(feature = "forwarder")]
    #[test]
    fn the_elements_see_the_port_and_nsm_text_key() {
        use nsm_networkservice::mechanisms::wireguard::{LocalEnds, check_public_key};
        if !privileged() {
            return;
        }
        let e = ends();
        let r = LocalEnds::reserve(&e, "c1", Side::Client).unwrap();
        assert!(r.new && r.end.port != 0);
        check_public_key(&r.end.public_key).unwrap();
        let again = LocalEnds::reserve(&e, "c1", Side::Client).unwrap();
        assert_eq!((again.end, again.new), (r.end, false));
        LocalEnds::release(&e, "c1", Side::Client);
        assert!(e.is_empty());
    }
}
