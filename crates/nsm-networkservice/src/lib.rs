//! NetworkService chain elements, one module per element, named as in the Go sdk v1.1.1.
//!
//! Each module's documentation says what the element does on Request, on Close, what per-connection
//! state it keeps and which background events it fires. Chains that compose these elements live in
//! `nsm-chains`.

#![forbid(unsafe_code)]

// Path, identity and per-connection state.
pub mod authorize;
pub mod begin;
pub mod clientinfo;
mod encoded;
pub mod metadata;
pub mod trimpath;
pub mod updatepath;
pub mod updatetoken;

// Timers driven through begin's event handle.
pub mod heal;
pub mod livenesscheck;
pub mod refresh;
pub mod retry;
pub mod timeout;

// Selecting the next hop.
pub mod clienturl;
pub mod discover;
pub mod discoverforwarder;
pub mod roundrobin;

// Talking to the next hop over gRPC.
pub mod connect;
pub mod dial;
pub mod fdpass;
pub mod grpc;
pub mod monitor;

// Mechanisms and connection context.
pub mod dnscontext;
pub mod excludedprefixes;
pub mod filtermechanisms;
pub mod ipam;
pub mod mechanisms;
pub mod mechanismtranslation;
