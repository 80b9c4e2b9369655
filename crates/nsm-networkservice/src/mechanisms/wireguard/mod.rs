//! `mechanisms/wireguard`: the WIREGUARD tunnel's control-plane parameters (sdk-vpp
//! `mechanisms/wireguard` with its `mtu` part); no TUN, socket or key is touched here. Only connections
//! with payload `IP` are handled; any other payload passes through untouched (a cross-node `ETHERNET`
//! connection uses VXLAN). Design: `docs/wireguard.md` §1 and §2.1–2.2.
//!
//! This forwarder's end of a tunnel (a UDP port and an X25519 key pair) is kept by a [`LocalEnds`]
//! implementation (the data plane's table, which also holds the bound socket), keyed by the connection
//! id the element sees and the [`Side`] it serves: in a forwarder both sides see the forwarder's own
//! path segment id, the id the data plane applies under.
//!
//! [`WireguardClient`] (client side, the requesting forwarder):
//! - **Request**, unless another mechanism is already selected (a refresh keeps it): takes the end
//!   reserved for (id, [`Side::Client`]) or reserves one, then offers `REMOTE/WIREGUARD` with `src_ip`
//!   (own tunnel IP), `src_port`, `src_public_key` and `MTU` (uplink − 80, lowered only: an existing
//!   smaller value stays). A selected WIREGUARD mechanism (refresh) gets the same values. After `next`,
//!   when the next hop selected WIREGUARD, checks `dst_ip` (same family as ours), `dst_port`,
//!   `dst_public_key`, `MTU` and that `src_public_key` came back unchanged: each bad one is an
//!   `InvalidArgument` naming it (Go's reselect quirk can answer with an empty key). When the next hop
//!   selected another mechanism, the end is released. On any failure of a Request that reserved a new
//!   end, the end is released (and a downstream connection that was made is closed); a failed refresh
//!   keeps its end.
//! - **Close**: passes on, then releases the end.
//!
//! [`WireguardServer`] (server side, the serving forwarder):
//! - **Request**, when WIREGUARD is selected and the payload is `IP`: checks the far end's `src_ip`
//!   (same family as ours), `src_port`, `src_public_key` and `MTU` (`InvalidArgument` naming the
//!   parameter; nothing reserved); sets `MTU` = min(offered, uplink − 80), refusing one too small for
//!   the pods (68, or 1280 with IPv6 pod addresses), and lowers `ConnectionContext.MTU` to it when 0 or
//!   larger; sets `dst_ip`; calls `next`. Then it takes or reserves the end for (id, [`Side::Server`])
//!   and answers with `dst_port` and `dst_public_key`: always the current key, never an empty one. If
//!   that fails, it closes downstream.
//! - **Close**: passes on, then releases the end.
//!
//! **State**: none of their own; the ends live in the shared [`LocalEnds`]. The same (id, side) gives
//! the same key and port, so a refresh changes nothing; heal Closes first, so a reselect gets new ones.

mod client;
mod params;
mod server;

pub use client::WireguardClient;
pub use nsm_core::metadata::Side;
pub use params::check_public_key;
pub use server::WireguardServer;

use nsm_api::Connection;
use nsm_core::{Ctx, Next, NsmError};

const NAME: &str = "wireguard";

/// This forwarder's end of one WireGuard tunnel, as the far side needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEnd {
    /// The UDP port the tunnel socket is bound to (on this forwarder's tunnel IP).
    pub port: u16,
    /// The public key in NSM's text form: standard base64 of the 32 bytes, 44 characters ending in `=`
    /// (Go `wgtypes.Key.String`, `wg pubkey`).
    pub public_key: String,
}

/// What [`LocalEnds::reserve`] handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// The end.
    pub end: LocalEnd,
    /// True if this call reserved it (the connection had none); false if it already existed.
    pub new: bool,
}

/// Why no end could be reserved.
#[derive(Debug, thiserror::Error)]
pub enum LocalEndsError {
    /// Making the key pair or binding the socket failed.
    #[error("cannot reserve a WireGuard end: {0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No port (or other resource) is left.
    #[error("no WireGuard end left: {0}")]
    Exhausted(String),
}

/// The table of this forwarder's WireGuard ends (a port with its bound socket, and a key pair), shared
/// by [`WireguardClient`], [`WireguardServer`] and the data plane that starts the links. Implemented by
/// the data plane, so these elements do not depend on it.
///
/// Calls for one connection are serialised by `begin`; calls for different connections may run
/// concurrently.
pub trait LocalEnds: Send + Sync + 'static {
    /// The end reserved for (`connection_id`, `side`), or a new one (new key pair, newly bound port).
    fn reserve(&self, connection_id: &str, side: Side) -> Result<Reserved, LocalEndsError>;

    /// Forgets the end of (`connection_id`, `side`) and frees its port; nothing if there is none.
    fn release(&self, connection_id: &str, side: Side);
}

fn reserve_error(e: LocalEndsError) -> NsmError {
    match e {
        LocalEndsError::Exhausted(what) => NsmError::ResourceExhausted {
            element: NAME,
            what: format!("WireGuard ends ({what})"),
        },
        other @ LocalEndsError::Failed(_) => NsmError::internal(NAME, other.to_string()),
    }
}

/// Close for both elements: passes on, then releases the end of (the connection's id, `side`), also
/// when a later element failed (its result is returned).
async fn close_then_release(
    ends: &dyn LocalEnds,
    side: Side,
    ctx: &mut Ctx,
    conn: Connection,
    next: Next,
) -> nsm_core::Result<()> {
    let id = conn.id.clone();
    let result = next.close(ctx, conn).await;
    ends.release(&id, side);
    result
}

/// The end of (`connection_id`, `side`), reserved now or kept from an earlier Request, checked for the
/// wire; a newly reserved end that fails the check is released again.
fn reserve_checked(
    ends: &dyn LocalEnds,
    connection_id: &str,
    side: Side,
) -> nsm_core::Result<Reserved> {
    let reserved = ends.reserve(connection_id, side).map_err(reserve_error)?;
    if let Err(e) = check_local_end(&reserved.end) {
        if reserved.new {
            ends.release(connection_id, side);
        }
        return Err(e);
    }
    Ok(reserved)
}

/// Checks that an end from [`LocalEnds`] can go on the wire (an implementation bug otherwise).
fn check_local_end(end: &LocalEnd) -> Result<(), NsmError> {
    if end.port == 0 {
        return Err(NsmError::internal(NAME, "local end has port 0"));
    }
    check_public_key(&end.public_key).map_err(|reason| {
        NsmError::internal(
            NAME,
            format!("local end's public key {:?} {reason}", end.public_key),
        )
    })
}

#[cfg(test)]
mod tests;
