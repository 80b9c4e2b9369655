//! An in-process NSM domain for tests and benchmarks (Go sdk `tools/sandbox`).
//!
//! [`Sandbox::builder`] starts a registry and N nodes — each an NSMgr plus a forwarder — every one a
//! real gRPC server on `127.0.0.1` (or a unix socket), talking to the others over real gRPC. Endpoints
//! and clients are added per node. Every server is a [`Restartable`]: `stop()` cuts it off like a dead
//! process (open streams included) and `restart()` brings a fresh instance up on the same URL.
//!
//! Every component reports the per-connection state it holds ([`ConnState`]: begin, metadata, monitor,
//! IPAM leases, heal tasks) so tests can check that nothing outlives a connection
//! ([`Sandbox::wait_until_clean`]). [`elements`] has the small elements Go tests inject (count,
//! injecterror, replacelabels, a delay).

#![forbid(unsafe_code)]

pub mod elements;
mod restartable;
mod sandbox;

pub use restartable::{Component, ConnState, Restartable};
pub use sandbox::{
    Client, ClientConfig, DIAL_TIMEOUT, EndpointSpec, Identities, Node, SVID_TTL, Sandbox,
    SandboxBuilder, TRUST_DOMAIN, p2p,
};
