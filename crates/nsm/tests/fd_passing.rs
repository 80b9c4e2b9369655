//! Issue 5 acceptance (fd passing): the client and the endpoint each run in their own PID namespace
//! with their own `/proc` (`unshare --pid --fork --mount-proc`), as in containers, so the NSMgr and
//! the forwarder cannot open `/proc/<their pid>/ns/net`: the network namespaces travel as fds over
//! the unix sockets (grpcfd wire format, below mTLS). Real `nsm registry | nsmgr | forwarder | nse |
//! nsc` processes in namespaces the test creates; as root, skipped otherwise (failing under CI=true);
//! the root namespace is checked unchanged.
//!
//! The endpoint's own socket travels the same way (registry `sendfd`/`recvfd`): an endpoint whose
//! socket lives on a tmpfs mounted in its own mount namespace registers it as an fd, and the NSMgr
//! and the forwarder reach it through `/proc/<pid>/fd/<n>` without ever seeing its path.
//!
//! An endpoint in the forwarder's own network namespace passes the forwarder a copy of the namespace
//! the forwarder passed it: Request+Close cycles must leave the forwarder's namespace fds where they
//! were (those copies used to pile up unclaimed until they expired, 30 s later).

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

/// `OWN_PID_NAMESPACE`, then a private tmpfs on `dir` (visible only to the wrapped process).
fn own_pid_namespace_and_private_dir(dir: &std::path::Path) -> Vec<String> {
    let mut w: Vec<String> = OWN_PID_NAMESPACE.map(String::from).to_vec();
    w.extend([
        "sh".into(),
        "-c".into(),
        format!(
            "mount -t tmpfs nsm-fd-passing {} && exec \"$@\"",
            dir.display()
        ),
        "sh".into(),
    ]);
    w
}

fn endpoint_socket_outside_the_nsmgr_view(nodes: usize) {
    let _root = RootGuard::new();
    let mut tb = Testbed::mesh(opts(), nodes, &[]).unwrap();
    let e = tb.add_pod("e1").unwrap();
    let c = tb.add_pod("c1").unwrap();
    let private = tb.dir.join("private");
    std::fs::create_dir_all(&private).unwrap();
    let sock = private.join("icmp-server.sock");
    let listen = format!("unix://{}", sock.display());
    tb.wrapper = own_pid_namespace_and_private_dir(&private);
    tb.start_nse(
        "icmp-server",
        &e,
        nodes,
        &[("NSM_CIDR_PREFIX", CIDR), ("NSM_LISTEN_ON", &listen)],
    )
    .unwrap();
    assert!(
        !sock.exists(),
        "the endpoint's socket is not visible outside its mount namespace"
    );
    // The endpoint's node's NSMgr holds the passed socket (its forwarder will too, once it found the
    // endpoint through the NSMgr's registry).
    let node = tb.nodes[nodes - 1].clone();
    let nsmgr = tb.pid(&node.nsmgr).unwrap();
    assert_eq!(
        settled_fds_naming(nsmgr, &sock, 1),
        1,
        "the NSMgr holds the endpoint's socket"
    );
    tb.wrapper = OWN_PID_NAMESPACE.map(String::from).to_vec();
    tb.spawn_nsc("nsc", &c, 1, SVC, &[], false).unwrap();
    let conn = match tb.wait_connected("nsc", CONNECT) {
        Ok(conn) => conn,
        Err(err) => panic!("{err}\n{}", tb.dump_logs(40)),
    };
    assert_eq!(conn.path.len(), 2 + 2 * nodes, "{:?}", conn.path);
    let forwarder = tb.pid(&node.forwarder).unwrap();
    // One for its Find client, one for its registration client (heal's watch gets the results too).
    assert_eq!(
        settled_fds_naming(forwarder, &sock, 2),
        2,
        "the forwarder holds it too"
    );
    check_interfaces(&conn, &c, &e, CIDR, None);
    ping_both_ways(&tb, &conn, &c, &e);
    close_client(&mut tb, "nsc");
    assert_clean(&tb, &[&c, &e]);
}

/// How many of process `pid`'s fds name `path` (the kernel still names a passed `O_PATH` fd by the
/// path it was opened at in the sender's mount namespace).
/// [`fds_naming`] once it equals `want` or, after 5 s, whatever it is then: a copy opened to pass the
/// socket along (the NSMgr's registry `sendfd` answering a forwarder's Find) lives until it is sent.
fn settled_fds_naming(pid: u32, path: &std::path::Path, want: usize) -> usize {
    let mut n = fds_naming(pid, path);
    for _ in 0..250 {
        if n == want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        n = fds_naming(pid, path);
    }
    n
}

fn fds_naming(pid: u32, path: &std::path::Path) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

#[test]
fn endpoint_socket_passed_as_fd_on_one_node() {
    if !privileged() {
        return;
    }
    endpoint_socket_outside_the_nsmgr_view(1);
}

#[test]
fn endpoint_socket_passed_as_fd_across_two_nodes() {
    if !privileged() {
        return;
    }
    endpoint_socket_outside_the_nsmgr_view(2);
}

/// How many of process `pid`'s fds are network namespaces.
fn netns_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("net:["))
        .count()
}

/// [`netns_fds`] once it is at most `want` or, after 5 s, whatever it is then (a connection's
/// namespace fds are released as its Close completes).
fn settled_netns_fds(pid: u32, want: usize) -> usize {
    let mut n = netns_fds(pid);
    for _ in 0..250 {
        if n <= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        n = netns_fds(pid);
    }
    n
}

#[test]
fn endpoint_in_the_forwarders_namespace_leaves_no_netns_fd_behind() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let mut tb = Testbed::mesh(opts(), 1, &[]).unwrap();
    let node = tb.nodes[0].clone();
    let c = tb.add_pod("c1").unwrap();
    tb.start_nse("icmp-server", &node.ns, 1, &[("NSM_CIDR_PREFIX", CIDR)])
        .unwrap();
    let forwarder = tb.pid(&node.forwarder).unwrap();
    let baseline = netns_fds(forwarder);
    for i in 0..3 {
        let name = format!("nsc-{i}");
        tb.spawn_nsc(&name, &c, 1, SVC, &[], true).unwrap();
        if let Err(err) = tb.wait_connected(&name, CONNECT) {
            panic!("{err}\n{}", tb.dump_logs(40));
        }
        let status = tb.wait_exit(&name, Duration::from_secs(20)).unwrap();
        assert!(status.success(), "{name}: {status:?}\n{}", tb.log(&name));
    }
    assert_eq!(
        settled_netns_fds(forwarder, baseline),
        baseline,
        "the forwarder's namespace fds after 3 Request+Close cycles"
    );
    assert_clean(&tb, &[&c]);
}
