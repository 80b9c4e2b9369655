//! The etcd store of the nsm-rs registry, for running several registry replicas on one etcd.
//!
//! - [`pb`]: prost/tonic code generated (with protox, no `protoc`) from our subset of etcd v3.4's
//!   `rpc.proto` and `kv.proto` (same packages, names and field numbers as etcd);
//! - [`client`]: a minimal etcd v3 client (Range, Put, Delete, leases, prefix Watch);
//! - [`store`]: [`EtcdServer`], the store element for both registries (same role and Find rules as
//!   `nsm_registry::MemoryServer`), with NSE expiry as etcd leases;
//! - [`chain`]: the registry chains on etcd (the memory chain without the in-process `expire` timers).

#![forbid(unsafe_code)]

/// Generated etcd v3 API subset.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    /// `mvccpb` (etcd `api/mvccpb/kv.proto`).
    pub mod mvccpb {
        include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    }
    /// `etcdserverpb` (etcd `api/etcdserverpb/rpc.proto`).
    pub mod etcdserverpb {
        include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    }
}

pub mod chain;
pub mod client;
pub mod store;
pub mod testing;

pub use chain::EtcdRegistry;
pub use client::EtcdClient;
pub use store::EtcdServer;
