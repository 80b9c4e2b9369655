//! The errors of the userspace WireGuard link.

use std::io;
use std::net::SocketAddr;

/// Why a WireGuard key, socket or link could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WireguardError {
    /// A public key in a mechanism parameter is not the standard base64 of 32 bytes.
    #[error("bad WireGuard public key {text:?}: {reason}")]
    BadKey {
        /// The text as received (public keys are not secret).
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The system's random source failed.
    #[error("cannot generate a WireGuard key pair: {0}")]
    KeyGeneration(#[source] io::Error),
    /// The tunnel's UDP socket could not be bound in the node namespace.
    #[error("cannot bind the WireGuard UDP socket to {addr} in namespace {netns}: {source}")]
    Bind {
        /// The address asked for (port 0: any free port).
        addr: SocketAddr,
        /// The node namespace.
        netns: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The interface name is not usable as a Linux interface name.
    #[error("bad interface name {name:?}: {reason}")]
    BadInterfaceName {
        /// The name asked for.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An interface with this name already exists in the pod namespace.
    #[error("interface name {name:?} is already taken in namespace {netns}")]
    NameTaken {
        /// The name asked for.
        name: String,
        /// The pod namespace.
        netns: String,
    },
    /// Opening or creating the TUN device failed.
    #[error("cannot create TUN device {name:?} in namespace {netns}: {source}")]
    Tun {
        /// The interface name.
        name: String,
        /// The pod namespace.
        netns: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A netlink step on the pod interface failed (the TUN has been removed again).
    #[error("cannot configure {name:?} in namespace {netns}: {step}: {source}")]
    Configure {
        /// The interface name.
        name: String,
        /// The pod namespace.
        netns: String,
        /// What was being done (e.g. "add address fd00:1::1/128").
        step: String,
        /// The netlink error (boxed: it is large, and every result of this module carries the enum).
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Entering a namespace, opening a netlink socket or starting a thread failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl WireguardError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// A failed [`super::WireguardLink::start`]: the error, and the socket it was given (still bound, so
/// the caller can retry on the same port, or drop it to free the port). No interface is left.
#[derive(Debug)]
pub struct StartError {
    /// Why the link could not start.
    pub error: WireguardError,
    /// The socket, handed back.
    pub socket: super::TunnelSocket,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

impl From<StartError> for WireguardError {
    /// Drops the socket (closing it) and keeps the error.
    fn from(e: StartError) -> Self {
        e.error
    }
}
