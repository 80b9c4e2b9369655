//! `begin`: per-connection serialisation and the event handle that re-runs the chain.
//!
//! **Request**: looks up (or creates) the connection's slot by `Connection.id` and runs the rest of the
//! chain while holding the slot, so Requests, Closes and background events of one connection never
//! overlap. It puts an [`EventFactory`] into the context; later elements (refresh, timeout, heal) keep
//! it and call [`EventFactory::request`] / [`EventFactory::close`] from background tasks to re-run the
//! rest of the chain *from begin's position* with the stored request. A failed first Request forgets the
//! connection; a failed re-request of an established one keeps it. A first Request that succeeds only
//! after the caller's deadline passed is closed again and fails with `DeadlineExceeded` (the caller is
//! gone and would never close it). The client variant merges an external
//! re-request with the stored connection as Go does (stored path and ids win; an endpoint name and
//! `extra_context` entries the caller changed, compared with the connection last returned to it, are
//! taken from the new request).
//!
//! **Close**: closes the *stored* connection (not the one passed in) through the rest of the chain and
//! forgets it. Closing an unknown id succeeds and does nothing.
//!
//! **State**: one slot per connection id: status, last request with the returned connection (stored
//! once, in wire form, and shared with the `monitor` after begin when it recorded the same bytes —
//! see `crate::encoded`; the connection last returned to the caller is kept apart only after an
//! event changed the stored one), the rest of the chain and the last context (for events; without
//! the caller's per-RPC token, which `updatetoken` already wrote into the stored path). If the
//! context already carries an event handle (a chain nested inside another chain's begin), begin
//! passes straight through.

mod client;
mod factory;
mod merge;
mod server;

pub use client::BeginClient;
pub use factory::{EventFactory, RequestOptions};
pub use server::BeginServer;
