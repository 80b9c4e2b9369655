//! Typed errors of the planner and the executor. Every variant names the interface and/or namespace it is
//! about, so a client sees *which* part of its connection could not be built.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

/// Why no plan could be made from the mechanisms and the connection context.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The mechanism pair is not one this data plane connects.
    #[error("unsupported mechanism pair: incoming {incoming}, outgoing {outgoing}")]
    Unsupported {
        /// Incoming (server side) mechanism type.
        incoming: String,
        /// Outgoing (client side) mechanism type.
        outgoing: String,
    },
    /// A KERNEL mechanism has no inode URL.
    #[error("{side} KERNEL mechanism has no inodeURL (network namespace)")]
    MissingNetns {
        /// client or endpoint.
        side: &'static str,
    },
    /// The inode URL does not name a namespace file this process can open.
    #[error(
        "{side} inodeURL {url:?} does not name a network namespace file (expected file:///proc/<pid>/ns/net or an absolute path{hint})"
    )]
    BadNetnsUrl {
        /// client or endpoint.
        side: &'static str,
        /// The URL as received.
        url: String,
        /// Extra advice.
        hint: &'static str,
    },
    /// The interface name is not a valid Linux interface name.
    #[error("{side} interface name {name:?}: {reason}")]
    BadInterfaceName {
        /// client or endpoint.
        side: &'static str,
        /// The requested name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A VXLAN parameter is missing or malformed.
    #[error("VXLAN mechanism parameter {key}: {reason}")]
    BadVxlan {
        /// The parameter key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A WIREGUARD parameter is missing or malformed.
    #[error("WIREGUARD mechanism parameter {key}: {reason}")]
    BadWireguard {
        /// The parameter key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The pod interface's MTU is below what its address family needs.
    #[error("pod interface MTU {mtu} is below {least}, the least {family} works with")]
    MtuTooSmall {
        /// The MTU the plan arrived at.
        mtu: u32,
        /// The least usable MTU.
        least: u32,
        /// IPv4 or IPv6.
        family: &'static str,
    },
    /// An address, route or MAC in the connection context is malformed.
    #[error("connection context {field} = {value:?} is malformed")]
    BadContext {
        /// Field name.
        field: &'static str,
        /// The value.
        value: String,
    },
    /// The configuration cannot produce valid aliases.
    #[error("data plane owner name {0:?} must be non-empty and contain no ':'")]
    BadOwner(String),
}

/// Why applying or removing a plan failed. Whatever was created before the failure has been removed
/// again when [`crate::Executor::apply`] returns this.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The pod namespace file could not be opened or is not a network namespace.
    #[error("network namespace {path:?} for interface {interface:?}: {source}")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// The interface that was to be placed there.
        interface: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No thread or netlink socket could be started in the node namespace.
    #[error("cannot start netlink work in node namespace {netns}: {source}")]
    NodeNetlink {
        /// The node namespace.
        netns: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The pod already has an interface of the requested name.
    #[error("interface name {name:?} is already taken in network namespace {netns:?}")]
    NameTaken {
        /// The name.
        name: String,
        /// The pod namespace.
        netns: PathBuf,
    },
    /// The tunnel's local address is not configured on any link of the node namespace.
    #[error("tunnel source {local} is not an address of node namespace {netns}")]
    TunnelSourceMissing {
        /// The local tunnel address.
        local: IpAddr,
        /// The node namespace.
        netns: String,
    },
    /// No route to the tunnel's remote address.
    #[error("tunnel destination {remote} is unreachable from node namespace {netns} (no route)")]
    TunnelUnreachable {
        /// The remote tunnel address.
        remote: IpAddr,
        /// The node namespace.
        netns: String,
    },
    /// A netlink request failed.
    #[error("netlink: {op} {interface:?} in {netns}: {source}")]
    Netlink {
        /// What was being done.
        op: &'static str,
        /// The interface concerned.
        interface: String,
        /// The namespace.
        netns: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A link that should exist was not found.
    #[error("interface {interface:?} not found in {netns}")]
    LinkMissing {
        /// The interface.
        interface: String,
        /// The namespace.
        netns: String,
    },
    /// A WireGuard plan reached an executor that has no WireGuard ends (keys and sockets).
    #[error("connection {connection}: this data plane has no WireGuard ends configured")]
    NoWireguard {
        /// The connection id.
        connection: String,
    },
    /// The WireGuard link could not be started (nothing of it is left).
    #[error("WireGuard link {interface:?} in network namespace {netns:?}: {source}")]
    Wireguard {
        /// The pod interface.
        interface: String,
        /// The pod namespace.
        netns: PathBuf,
        /// Why.
        #[source]
        source: crate::wireguard::WireguardError,
    },
    /// The plan's WireGuard end (key pair and socket) is not available.
    #[error("connection {connection}: WireGuard end with public key {public_key}: {source}")]
    WireguardEnd {
        /// The connection id.
        connection: String,
        /// The plan's local public key.
        public_key: String,
        /// Why.
        #[source]
        source: crate::wireguard_ends::TakeError,
    },
    /// Rolling back after a failure failed too; both errors are reported.
    #[error("{cause}; rollback also failed: {rollback}")]
    RollbackFailed {
        /// The original failure.
        cause: Box<ApplyError>,
        /// The rollback failure.
        rollback: Box<ApplyError>,
    },
}
