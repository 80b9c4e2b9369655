//! Registry chain elements of nsm-rs, one module per element, named as in the Go sdk
//! (`pkg/registry/common/*`).
//!
//! What lives here:
//! - stores and server-side elements: [`memory`] (the in-memory store with watch fan-out, matching by
//!   [`matchutils`]), [`expire`], [`setregistrationtime`], [`setpayload`], [`serialize`],
//!   [`clientinfo`], [`localbypass`], [`proxy`], [`validate`], [`validatequery`], [`recvfd`];
//! - the edges to other registries: [`clienturl`] + [`connect`] (gRPC client), [`grpc`] (gRPC server
//!   adapters serving a chain);
//! - client-side elements: [`refresh`], [`heal`], [`querycache`] and [`sendfd`];
//! - [`conformance`]: the Register/Find/Unregister/watch/expiry suite every store chain must pass.
//!
//! Chains composed from these elements live in `nsm-chains`.

#![forbid(unsafe_code)]

pub mod clientinfo;
pub mod clienturl;
pub mod conformance;
pub mod connect;
pub mod expire;
pub mod grpc;
pub mod heal;
pub mod localbypass;
pub mod matchutils;
pub mod memory;
pub mod proxy;
pub mod querycache;
pub mod recvfd;
pub mod refresh;
pub mod sendfd;
pub mod serialize;
pub mod setpayload;
pub mod setregistrationtime;
pub mod validate;
pub mod validatequery;

#[cfg(test)]
mod testutil;

pub use clientinfo::ClientInfoServer;
pub use clienturl::ClientUrlServer;
pub use connect::{ConnectServer, Dialer};
pub use expire::ExpireServer;
pub use heal::HealClient;
pub use localbypass::LocalBypassServer;
pub use memory::MemoryServer;
pub use proxy::ProxyServer;
pub use querycache::QueryCacheClient;
pub use recvfd::{RecvFdClient, RecvFdServer};
pub use refresh::RefreshClient;
pub use sendfd::{SendFdClient, SendFdServer};
pub use serialize::SerializeServer;
pub use setpayload::SetPayloadServer;
pub use setregistrationtime::SetRegistrationTimeServer;
pub use validate::ValidateServer;
pub use validatequery::ValidateQueryServer;
