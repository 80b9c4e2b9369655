//! The kernel data plane of nsm-rs.
//!
//! What lives here:
//! - [`plan`](mod@plan): a pure function from the selected mechanisms + connection context to the kernel state one
//!   connection needs (veths into pods, addresses, routes, neighbours, the VXLAN tunnel, the cross-connect);
//!   unit-tested without root. Its module doc explains the design choices (tc mirred cross-connect, one
//!   VXLAN device per VNI with MAC demultiplexing for the "same VNI, two remotes" case).
//! - [`executor`]: applies a plan with rtnetlink in the right namespaces, records what it created, removes
//!   exactly that, rolls back on failure, and cleans up what an earlier run left behind.
//! - [`netns`]: namespace handles (the setns → new_connection → setns back pattern).
//! - [`forwarder`]: [`KernelDataplane`], the `nsm_chains::forwarder::Dataplane` that wires both into a
//!   forwarder chain.
//! - [`icmp`]: our own ICMP echo (IPv4 + IPv6), so tests do not depend on iputils.
//! - [`wireguard`]: a userspace WireGuard point-to-point link (pod TUN ↔ boringtun ↔ UDP in the node
//!   namespace), the building block for NSM's WIREGUARD mechanism.
//! - [`wireguard_ends`]: per (connection id, side), the key pair and bound UDP socket of this
//!   forwarder's end of a WireGuard tunnel, from the offer to Close; shared by the WIREGUARD
//!   mechanism elements and the executor.

#![forbid(unsafe_code)]

pub mod error;
pub mod executor;
#[cfg(feature = "forwarder")]
pub mod forwarder;
pub mod icmp;
pub mod names;
pub mod netns;
pub mod plan;
pub mod wireguard;
pub mod wireguard_ends;

pub use error::{ApplyError, PlanError};
pub use executor::{Applied, Executor};
#[cfg(feature = "forwarder")]
pub use forwarder::KernelDataplane;
pub use plan::{Plan, PlanConfig, PlanRequest, plan};
