//! `monitor`: this hop's `connection.MonitorConnection` service and the element that feeds it.
//!
//! **Request**: stops the connection's passthrough (if any), runs the rest of the chain and, on
//! success, publishes the returned connection as UPDATE (and leaves its encoded record in the
//! context, which the `begin` before it keeps instead of a copy of its own). If a [`ClientConn`](crate::dial::ClientConn) to
//! the next hop is then in client metadata (this hop is a passthrough: nsmgr, forwarder), it watches the
//! connection at the next hop's MonitorConnections — on ONE stream per next-hop URL shared by every
//! connection through us (selector = our segment's name, no id; see `upstream.rs`), opened on first
//! use, whose INITIAL_STATE_TRANSFER it waits for (failure → closes the rest of the chain and fails
//! "unable to monitor") — and re-publishes the next hop's changes of this connection with our view of
//! the path. If that stream fails for any reason other than our own cancellation, every connection on
//! it is published with state DOWN — that is how a dead forwarder or NSE becomes visible, hop by hop,
//! up to the client's `heal`.
//!
//! **Close**: stops the passthrough, runs the rest of the chain, publishes DELETE.
//!
//! **State**: the hop's connections (shared with [`MonitorConnectionGrpc`]) and, per connection, the
//! passthrough registration in server metadata. **Background**: one task per shared next-hop stream
//! (not per connection); a stream without connections closes after a minute.
//!
//! Subscribers get INITIAL_STATE_TRANSFER first (possibly empty), then UPDATE/DELETE events filtered by
//! their selector ([`matches_selector`]: by name, and by id where the selector gives one; subscribers
//! are indexed by that id, so an event costs only the subscribers that may match). Each has a bounded
//! queue; one that falls behind is disconnected with `RESOURCE_EXHAUSTED` rather than slowing the chain
//! down.

mod client_filter;
mod grpc;
mod hub;
mod server;
mod upstream;

pub use grpc::MonitorConnectionGrpc;
pub use hub::{DEFAULT_SUBSCRIBER_BUFFER, matches_selector};
pub use server::MonitorServer;
pub(crate) use upstream::{Upstreams, WatchGuard, Watcher};

#[cfg(test)]
mod tests;
