//! Fixture for the end-to-end tests: real `nsm` processes in network namespaces the test creates
//! (nsm-testbed), the skip-or-fail rule, and a root-namespace guard.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use nsm_testbed::{Connected, Testbed, TestbedOptions, addresses, links, root_snapshot};

pub const READY: Duration = Duration::from_secs(30);

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// True if the test may run; false (after saying why) if it must be skipped. Panics under CI=true.
pub fn privileged() -> bool {
    let probe = format!(
        "nsmt{}-probe{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    );
    let ok = nix::unistd::geteuid().is_root() && nsm_testbed::ip_ok(&["netns", "add", &probe]);
    let _ = nsm_testbed::ip_ok(&["netns", "del", &probe]);
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: end-to-end test cannot create a network namespace (needs root and iproute2)"
        );
        eprintln!("SKIPPED: not root or cannot create a network namespace");
    }
    ok
}

/// Options for a testbed with a unique id (`nsmt<pid>-<n>`).
pub fn opts() -> TestbedOptions {
    let id = format!(
        "nsmt{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    );
    let mut o = TestbedOptions::new(id, env!("CARGO_BIN_EXE_nsm"));
    o.ready_timeout = READY;
    o
}

/// Asserts on drop that the root namespace's links, addresses and routes are unchanged.
pub struct RootGuard(String);

impl RootGuard {
    pub fn new() -> Self {
        Self(root_snapshot().unwrap())
    }
}

impl Drop for RootGuard {
    fn drop(&mut self) {
        let now = root_snapshot().unwrap();
        if now != self.0 && !std::thread::panicking() {
            panic!(
                "root namespace changed:\nbefore:\n{}\nafter:\n{now}",
                self.0
            );
        }
    }
}

/// A mesh of `nodes` nodes with an icmp-responder `icmp-server` in pod `e1` on `nse_node`.
pub fn mesh_with_nse(
    nodes: usize,
    nse_node: usize,
    cidr: &str,
    fwd_env: &[(&str, &str)],
) -> (Testbed, String) {
    let mut tb = Testbed::mesh(opts(), nodes, fwd_env).unwrap();
    let e = tb.add_pod("e1").unwrap();
    tb.start_nse("icmp-server", &e, nse_node, &[("NSM_CIDR_PREFIX", cidr)])
        .unwrap();
    (tb, e)
}

/// Non-`lo` link names of `ns`.
pub fn names(ns: &str) -> Vec<String> {
    links(ns).unwrap().into_iter().map(|l| l.name).collect()
}

/// Checks both pods' interfaces against what the client printed: names, addresses from `cidr`, MTU.
pub fn check_interfaces(
    conn: &Connected,
    client_pod: &str,
    endpoint_pod: &str,
    cidr: &str,
    mtu: Option<u32>,
) {
    let cidr: IpNet = cidr.parse().unwrap();
    let client = links(client_pod).unwrap();
    assert_eq!(client.len(), 1, "client pod links: {client:?}");
    assert_eq!(client[0].name, conn.interface);
    assert!(client[0].up, "client interface down");
    let endpoint = links(endpoint_pod).unwrap();
    assert_eq!(endpoint.len(), 1, "endpoint pod links: {endpoint:?}");
    for (ns, link, want) in [
        (client_pod, &client[0], &conn.src),
        (endpoint_pod, &endpoint[0], &conn.dst),
    ] {
        let mut have = addresses(ns, &link.name).unwrap();
        let mut want = want.clone();
        have.sort();
        want.sort();
        assert_eq!(have, want, "addresses of {} in {ns}", link.name);
        for a in &have {
            let ip: IpAddr = a.split('/').next().unwrap().parse().unwrap();
            assert!(cidr.contains(&ip), "{a} not from {cidr}");
        }
        if let Some(m) = mtu {
            assert_eq!(link.mtu, m, "MTU of {} in {ns}", link.name);
        }
    }
}

/// Pings endpoint from client and client from endpoint; asserts replies both ways.
pub fn ping_both_ways(tb: &Testbed, conn: &Connected, client_pod: &str, endpoint_pod: &str) {
    let (src, dst) = (conn.src_ip().unwrap(), conn.dst_ip().unwrap());
    // The first echo may race the last netlink call of the forwarder; allow a short settling time.
    tb.first_ping(client_pod, dst, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("client → endpoint: {e}"));
    let r = tb.ping(client_pod, dst, 3, Duration::from_secs(1)).unwrap();
    assert_eq!(r.len(), 3, "client → endpoint {dst}: {r:?}");
    let r = tb
        .ping(endpoint_pod, src, 3, Duration::from_secs(1))
        .unwrap();
    assert_eq!(r.len(), 3, "endpoint → client {src}: {r:?}");
}

/// Each pod has exactly one link: a TUN a forwarder made (alias `nsm:forwarder-…`; the kernel's
/// `/sys/class/net/<if>/type` is 65534, `ARPHRD_NONE`).
pub fn assert_forwarder_tuns(pods: &[&str]) {
    for pod in pods {
        let l = links(pod).unwrap();
        assert!(
            l.len() == 1 && l[0].kind == "tun" && l[0].alias.starts_with("nsm:forwarder-"),
            "{pod}: {l:?}"
        );
        let ty = std::process::Command::new("ip")
            .args(["netns", "exec", pod])
            .args(["cat", &format!("/sys/class/net/{}/type", l[0].name)])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&ty.stdout).trim(), "65534", "{pod}");
    }
}

/// Node links other than the underlay veth (what forwarders made).
pub fn forwarder_links(tb: &Testbed) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for n in &tb.nodes {
        for l in links(&n.ns).unwrap() {
            if l.name != "ul" {
                out.push((n.ns.clone(), format!("{} ({}) {}", l.name, l.kind, l.alias)));
            }
        }
    }
    out
}

/// Waits (bounded) until the pods have no links and the nodes only their underlay veth.
pub fn assert_clean(tb: &Testbed, pods: &[&str]) {
    let mut left = Vec::new();
    for _ in 0..200 {
        left = forwarder_links(tb);
        for p in pods {
            for n in names(p) {
                left.push((p.to_string(), n));
            }
        }
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("left behind: {left:?}");
}

/// SIGTERMs a client and checks it exited 0.
pub fn close_client(tb: &mut Testbed, name: &str) {
    let status = tb.stop(name, Duration::from_secs(20)).unwrap();
    let log = tb.log(name);
    assert!(
        status.is_some_and(|s| s.success()),
        "{name} did not exit cleanly on SIGTERM ({status:?}):\n{log}"
    );
}

/// UDP sockets in each node namespace (`ss -Huan`): the forwarders' WireGuard sockets live there.
pub fn node_udp_sockets(tb: &Testbed) -> Vec<String> {
    let mut out = Vec::new();
    for n in &tb.nodes {
        let o = std::process::Command::new("ip")
            .args(["netns", "exec", &n.ns, "ss", "-Huan"])
            .output()
            .unwrap();
        assert!(o.status.success(), "ss in {}", n.ns);
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            out.push(format!(
                "{}: {}",
                n.ns,
                l.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    }
    out
}

/// Threads named `nsm-wg-*` (WireGuard workers) in every forwarder process.
pub fn wireguard_workers(tb: &mut Testbed) -> usize {
    let names: Vec<String> = tb.nodes.iter().map(|n| n.forwarder.clone()).collect();
    let mut count = 0;
    for name in names {
        let pid = tb.pid(&name).unwrap();
        count += std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.starts_with("nsm-wg-"))
            .count();
    }
    count
}

/// Waits (bounded) until no WireGuard worker runs and the node namespaces have the UDP sockets of
/// `before` again (the ends were released).
pub fn assert_wireguard_clean(tb: &mut Testbed, before: &[String]) {
    let mut last = (0, Vec::new());
    for _ in 0..200 {
        last = (wireguard_workers(tb), node_udp_sockets(tb));
        if last.0 == 0 && last.1 == before {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "WireGuard left behind: {} workers, UDP sockets {:?} (before: {before:?})",
        last.0, last.1
    );
}
