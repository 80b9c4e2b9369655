//! Local NSM meshes in network namespaces, for `nsm up` and the end-to-end tests.
//!
//! A [`Testbed`] owns everything one run creates:
//! - an **underlay** namespace `<id>-u` with a bridge `br0` (169.254.100.254/24, the registry's address);
//! - **node** namespaces `<id>-n<i>`, each joined to the bridge by a veth created directly inside the
//!   namespaces (`ul` in the node, `169.254.100.<i>/24`, optionally `fd00:100::<i>/64`);
//! - **pod** namespaces (`<id>-c<k>` client pods, `<id>-e<k>` endpoint pods);
//! - `nsm` **processes** started with `ip netns exec <ns> <nsm> <subcommand>` in their own process group
//!   (a terminal's Ctrl-C reaches only the owner, which tears down in order), stdout+stderr to
//!   `<dir>/<name>.log`, readiness read from those logs;
//! - a **state file** `<dir>/state.json` (`<dir>` = `<base>/<id>`, base `/run/nsm-up` for root) that
//!   records each namespace *before* it is created and each process right after it started, so
//!   [`down`] can remove exactly what a crashed run left behind, and nothing a live run still owns.
//!
//! Nothing is ever added to the caller's (root) namespace: every link is created inside run-owned
//! namespaces, and every address is link-local (169.254.0.0/16) or ULA (fd00::/8). [`root_snapshot`]
//! lets callers check that. Dropping a [`Testbed`] stops its processes (SIGTERM, then SIGKILL), deletes its
//! namespaces and its directory, even while unwinding from a panic (then it prints the logs first).

#![forbid(unsafe_code)]

mod devca;
mod ip;
mod mesh;
mod proc;
mod state;

pub use devca::DevCa;
pub use ip::{LinkInfo, addresses, ip, ip_ok, links, root_snapshot};
pub use mesh::{Connected, Node, OWN_PID_NAMESPACE, Teardown, Testbed, TestbedOptions, Tier, ping};
pub use state::{DownReport, down, state_base};

use std::time::Instant;

/// Wall-clock now, for process timings (real processes, so an injected clock would be meaningless).
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

/// The environment variables the `nsm` components read for their own set-up: a harness that starts
/// them clears these so nothing leaks in from the caller's shell, then sets what it needs.
pub const COMPONENT_ENV: [&str; 16] = [
    "NSM_NAME",
    "NSM_LISTEN_ON",
    "NSM_CONNECT_TO",
    "NSM_REGISTRY_URL",
    "NSM_CTL_NSMGRS",
    "NSM_CTL_TIMEOUT",
    "NSM_LABELS",
    "NSM_NETWORK_SERVICES",
    "NSM_IDENTITY_DIR",
    "SPIFFE_ENDPOINT_SOCKET",
    "REGISTRY_MEMORY_LISTEN_ON",
    "NODE_NAME",
    "NSM_SERVICE_NAMES",
    "NSM_FORWARDER_NETWORK_SERVICE_NAME",
    "NSM_CIDR_PREFIX",
    "NSM_POLICY",
];
