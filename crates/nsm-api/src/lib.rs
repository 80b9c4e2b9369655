//! The NSM v1.1.1 wire contract.
//!
//! What lives here:
//! - [`connection`], [`connectioncontext`], [`networkservice`], [`registry`]: prost messages and tonic
//!   clients/servers generated at build time from our own `.proto` files (`/proto`), with the exact proto
//!   package names Go NSM puts on the wire;
//! - [`mechanisms`] and [`payload`]: mechanism classes, types and parameter keys, payload names;
//! - [`path`]: helpers over `Path`/`PathSegment`/`Connection`;
//! - [`url`]: every URL form NSM uses (socket URLs and client request URLs);
//! - [`codec`]: the gRPC codec of the generated code (prost, with buffers sized for NSM messages);
//! - [`health`]: the standard gRPC health service marking NSM services SERVING.

#![forbid(unsafe_code)]

/// Generated from `connectioncontext.proto` (proto package `connectioncontext`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod connectioncontext {
    include!(concat!(env!("OUT_DIR"), "/connectioncontext.rs"));
}

/// Generated from `connection.proto` (proto package `connection`), plus the monitor service.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod connection {
    include!(concat!(env!("OUT_DIR"), "/connection.rs"));
}

/// Generated from `networkservice.proto` (proto package `networkservice`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod networkservice {
    include!(concat!(env!("OUT_DIR"), "/networkservice.rs"));
}

/// Generated from `registry.proto` (proto package `registry`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod registry {
    include!(concat!(env!("OUT_DIR"), "/registry.rs"));
}

pub mod codec;
pub mod health;
pub mod mechanisms;
pub mod path;
pub mod payload;
pub mod services;
pub mod url;

/// The encoded `FileDescriptorSet` of our four proto files (for reflection and descriptor checks).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/nsm_descriptor.bin"));

pub use connection::{
    Connection, ConnectionEvent, ConnectionEventType, Mechanism, Path, PathSegment, State,
};
pub use networkservice::NetworkServiceRequest;
