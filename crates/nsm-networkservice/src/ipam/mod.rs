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

pub mod point2point;
pub mod singlepoint;

mod pool;

use nsm_api::Connection;
use nsm_api::connectioncontext::{IpContext, Route};

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
