//! IPAM elements: addresses for the two ends of each connection, from configured prefixes.
//!
//! - [`point2point`]: a /32 (/128) pair per connection plus routes to each other (Go `point2pointipam`);
//! - [`singlepoint`]: one endpoint address per prefix shared by all connections, one client address per
//!   connection, both with the prefix's length (Go `singlepointipam`).
//!
//! Both honour `ip_context.excluded_prefixes` (excluded addresses are skipped, never consumed), keep a
//! connection's addresses across refreshes unless they became excluded, free them on Close and when the
//! first Request of a connection fails, and report an empty pool as `ResourceExhausted` naming it.
//! Their state is a lease table keyed by connection id inside the element, so it does not depend on
//! the `metadata` element.
//!
//! **Restarts and heals** (sdk#1358): a connection new to the element (no lease: the endpoint restarted,
//! or the client healed to it) that *brings* addresses — the ones an earlier run of this endpoint handed
//! out — gets them back when they lie in one of its prefixes with the element's prefix length and are
//! free, so clients are not reshuffled when the same endpoint comes back. Addresses it brings that are
//! not honoured (another endpoint's CIDR, or now taken) are removed from the context with their routes
//! before new ones are allocated, so a client healed to an endpoint with another CIDR ends up with only
//! the new addresses.

pub mod point2point;
pub mod singlepoint;

mod pool;

use nsm_api::connectioncontext::{IpContext, Route};
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::{Ctx, Next, Result};

/// What differs between the two IPAM elements: how a connection's addresses are chosen and freed,
/// and whether each end gets a route to the other.
trait LeaseBook {
    /// Point-to-point addresses come with a host route to the peer.
    const ROUTES: bool;
    /// Finds or allocates `id`'s addresses (dst, src) and says whether they are new.
    fn lease_for(&self, id: &str, ipc: &mut IpContext) -> Result<(String, String, bool)>;
    /// Gives `id`'s addresses back.
    fn free(&self, id: &str);
}

/// Request: put the connection's addresses (and routes) into its context, run the rest of the chain,
/// and give fresh addresses back if that fails — a failed first Request leaves no lease behind.
async fn request_with_lease<B: LeaseBook>(
    book: &B,
    ctx: &mut Ctx,
    mut request: NetworkServiceRequest,
    next: Next,
) -> Result<Connection> {
    let conn = request.connection.get_or_insert_default();
    let id = conn.id.clone();
    let ipc = ip_context(conn);
    let (dst, src, fresh) = book.lease_for(&id, ipc)?;
    add_addr(&mut ipc.src_ip_addrs, &src);
    add_addr(&mut ipc.dst_ip_addrs, &dst);
    if B::ROUTES {
        add_route(&mut ipc.src_routes, &dst);
        add_route(&mut ipc.dst_routes, &src);
    }
    let result = next.request(ctx, request).await;
    if result.is_err() && fresh {
        book.free(&id);
    }
    result
}

/// Close: give the addresses back, then close the rest of the chain.
async fn close_with_lease(
    book: &impl LeaseBook,
    ctx: &mut Ctx,
    conn: Connection,
    next: Next,
) -> Result<()> {
    book.free(&conn.id);
    next.close(ctx, conn).await
}

/// The connection's IP context, created if absent.
fn ip_context(conn: &mut Connection) -> &mut IpContext {
    conn.context
        .get_or_insert_default()
        .ip_context
        .get_or_insert_default()
}

fn add_addr(list: &mut Vec<String>, addr: &str) {
    if !list.iter().any(|a| a == addr) {
        list.push(addr.to_string());
    }
}

fn remove_addr(list: &mut Vec<String>, addr: &str) {
    list.retain(|a| a != addr);
}

fn add_route(routes: &mut Vec<Route>, prefix: &str) {
    if !routes.iter().any(|r| r.prefix == prefix) {
        routes.push(Route {
            prefix: prefix.to_string(),
            ..Default::default()
        });
    }
}

fn remove_route(routes: &mut Vec<Route>, prefix: &str) {
    routes.retain(|r| r.prefix != prefix);
}

/// Parses `addr/len` into the address and the length.
fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (a, l) = s.split_once('/')?;
    Some((a.trim().parse().ok()?, l.trim().parse().ok()?))
}

/// Drops every address of `ipc` (and the routes to them) except `keep`: what a connection new to this
/// IPAM brought from elsewhere.
fn strip_foreign(ipc: &mut IpContext, keep: &[String]) {
    let mut gone = Vec::new();
    for list in [&mut ipc.src_ip_addrs, &mut ipc.dst_ip_addrs] {
        list.retain(|a| {
            let k = keep.contains(a);
            if !k {
                gone.push(a.clone());
            }
            k
        });
    }
    for g in &gone {
        remove_route(&mut ipc.src_routes, g);
        remove_route(&mut ipc.dst_routes, g);
    }
}
