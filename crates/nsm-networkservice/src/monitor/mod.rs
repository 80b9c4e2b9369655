//! `monitor`: this hop's `connection.MonitorConnection` service and the element that feeds it.
//!
//! **Request**: stops the connection's passthrough loop (if any), runs the rest of the chain and, on
//! success, publishes the returned connection as UPDATE. If a [`ClientConn`](crate::dial::ClientConn) to
//! the next hop is then in client metadata (this hop is a passthrough: nsmgr, forwarder), it subscribes
//! to the next hop's MonitorConnections for this connection (selector = our segment), waits for the
//! INITIAL_STATE_TRANSFER (failure → closes the rest of the chain and fails "unable to monitor") and
//! re-publishes the next hop's changes with our view of the path. If that stream fails for any reason
//! other than our own cancellation, the connection is published with state DOWN — that is how a dead
//! forwarder or NSE becomes visible, hop by hop, up to the client's `heal`.
//!
//! **Close**: stops the passthrough loop, runs the rest of the chain, publishes DELETE.
//!
//! **State**: the hop's connections (shared with [`MonitorConnectionGrpc`]) and, per connection, the
//! passthrough loop handle in server metadata. **Background**: one task per passthrough connection.
//!
//! Subscribers get INITIAL_STATE_TRANSFER first (possibly empty), then UPDATE/DELETE events filtered by
//! their selector ([`matches_selector`]). Each has a bounded queue; one that falls behind is disconnected
//! with `RESOURCE_EXHAUSTED` rather than slowing the chain down.

mod client_filter;
mod grpc;
mod hub;
mod server;

pub(crate) use client_filter::{ClientFilter, subscribe_next_hop};
pub use grpc::MonitorConnectionGrpc;
pub use hub::{DEFAULT_SUBSCRIBER_BUFFER, matches_selector};
pub use server::MonitorServer;

#[cfg(test)]
mod tests;
