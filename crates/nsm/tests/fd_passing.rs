//! Issue 5 acceptance (fd passing): the client and the endpoint each run in their own PID namespace
//! with their own `/proc` (`unshare --pid --fork --mount-proc`), as in containers, so the NSMgr and
//! the forwarder cannot open `/proc/<their pid>/ns/net`: the network namespaces travel as fds over
//! the unix sockets (grpcfd wire format, below mTLS). Real `nsm registry | nsmgr | forwarder | nse |
//! nsc` processes in namespaces the test creates; as root, skipped otherwise (failing under CI=true);
//! the root namespace is checked unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use std::time::Duration;

use e2e::*;
use nsm_testbed::{OWN_PID_NAMESPACE, Testbed};

const CIDR: &str = "169.254.201.0/28";
const SVC: &str = "kernel://icmp-responder/nsm-1";
const CONNECT: Duration = Duration::from_secs(30);

/// The PID namespace of process `pid`'s first child (the process `unshare --fork` started).
fn child_pid_namespace(pid: u32) -> String {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let child = children
        .split_whitespace()
        .next()
        .expect("unshare has a child");
    std::fs::read_link(format!("/proc/{child}/ns/pid"))
        .unwrap()
        .display()
        .to_string()
}

fn own_pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .unwrap()
        .display()
        .to_string()
}

fn client_and_endpoint_in_own_pid_namespaces(nodes: usize) {
    let _root = RootGuard::new();
    let mut tb = Testbed::mesh(opts(), nodes, &[]).unwrap();
    let e = tb.add_pod("e1").unwrap();
    let c = tb.add_pod("c1").unwrap();
    tb.wrapper = OWN_PID_NAMESPACE.map(String::from).to_vec();
    tb.start_nse("icmp-server", &e, nodes, &[("NSM_CIDR_PREFIX", CIDR)])
        .unwrap();
    tb.spawn_nsc("nsc", &c, 1, SVC, &[], false).unwrap();
    let conn = tb.wait_connected("nsc", CONNECT).unwrap();
    for name in ["nsc", "icmp-server"] {
        let pid = tb.pid(name).unwrap();
        assert_ne!(
            child_pid_namespace(pid),
            own_pid_namespace(),
            "{name} runs in its own PID namespace"
        );
    }
    assert_eq!(conn.mechanism, "KERNEL");
    assert_eq!(conn.interface, "nsm-1");
    assert_eq!(conn.path.len(), 2 + 2 * nodes, "{:?}", conn.path);
    // Both ends sent /proc/thread-self/ns/net: only the passed fds can have put the interfaces there.
    check_interfaces(&conn, &c, &e, CIDR, None);
    ping_both_ways(&tb, &conn, &c, &e);
    close_client(&mut tb, "nsc");
    assert_clean(&tb, &[&c, &e]);
}

#[test]
fn netns_fds_cross_pid_namespaces_on_one_node() {
    if !privileged() {
        return;
    }
    client_and_endpoint_in_own_pid_namespaces(1);
}

#[test]
fn netns_fds_cross_pid_namespaces_across_two_nodes() {
    if !privileged() {
        return;
    }
    client_and_endpoint_in_own_pid_namespaces(2);
}
