//! An in-process NSM domain for tests and benchmarks (Go sdk `tools/sandbox`).
//!
//! [`Sandbox::builder`] starts a registry and N nodes — each an NSMgr plus a forwarder — every one a
//! real gRPC server on `127.0.0.1` (or a unix socket), talking to the others over real gRPC. Endpoints
//! and clients are added per node. Every server is a [`Restartable`]: `stop()` cuts it off like a dead
//! process (open streams included) and `restart()` brings a fresh instance up on the same URL.

#![forbid(unsafe_code)]

mod restartable;
mod sandbox;

pub use restartable::Restartable;
pub use sandbox::{EndpointSpec, Node, Sandbox, SandboxBuilder};
