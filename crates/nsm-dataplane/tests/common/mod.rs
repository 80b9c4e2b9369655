//! Fixture for privileged tests: throw-away network namespaces with unique names, a root-namespace
//! snapshot, and a skip-or-fail rule (skip with a message when not root; fail under `CI=true`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use nsm_api::Mechanism;
use nsm_api::connectioncontext::{ConnectionContext, IpContext, Route};
use nsm_api::mechanisms::{MechanismType, kernel, vxlan};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// True if the test may run; false (after printing why) if it must be skipped. Panics under CI=true.
pub fn privileged() -> bool {
    let probe = format!(
        "nsmt{}-probe{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    );
    let ok = nix::unistd::geteuid().is_root()
        && Command::new("ip")
            .args(["netns", "add", &probe])
            .status()
            .is_ok_and(|s| s.success());
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: privileged test cannot create a network namespace (need root)"
        );
        eprintln!("SKIPPED: not root or cannot create a network namespace");
    }
    ok
}

/// A network namespace deleted on drop.
pub struct TestNs {
    pub name: String,
}

impl TestNs {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "nsmt{}-{}{}",
            std::process::id(),
            tag,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    pub fn netns(&self) -> nsm_dataplane::netns::Netns {
        nsm_dataplane::netns::Netns::open(&self.path()).unwrap()
    }

    /// `ip -n <ns> <args…>` output.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Link names other than lo.
    pub fn links(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n != "lo")
            .collect()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Links, addresses and routes of the root namespace.
pub fn root_snapshot() -> String {
    [
        sh(&["ip", "-o", "link", "show"]),
        sh(&["ip", "-o", "addr", "show"]),
        sh(&["ip", "-o", "route", "show", "table", "all"]),
        sh(&["ip", "-o", "-6", "route", "show", "table", "all"]),
    ]
    .join("\n")
}

/// Asserts the root namespace is unchanged when dropped (also on panic).
pub struct RootGuard(pub String);

impl RootGuard {
    pub fn new() -> Self {
        Self(root_snapshot())
    }
}

impl Drop for RootGuard {
    fn drop(&mut self) {
        let now = root_snapshot();
        if now != self.0 && !std::thread::panicking() {
            panic!(
                "root namespace changed:\nbefore:\n{}\nafter:\n{now}",
                self.0
            );
        }
    }
}

/// Two "nodes" joined by a veth underlay u1/u2 (169.254.100.x/24 or fd00:100::x/64), created directly
/// inside the node namespaces.
pub fn underlay(a: &TestNs, a_ip: &str, b: &TestNs, b_ip: &str, tag: &str) {
    let (ua, ub) = (format!("u{tag}a"), format!("u{tag}b"));
    sh(&[
        "ip", "link", "add", &ua, "netns", &a.name, "type", "veth", "peer", "name", &ub, "netns",
        &b.name,
    ]);
    for (ns, dev, ip) in [(a, &ua, a_ip), (b, &ub, b_ip)] {
        ns.ip(&["addr", "add", ip, "dev", dev, "nodad"]);
        ns.ip(&["link", "set", dev, "up"]);
    }
}

pub fn kernel_mech(ns: &TestNs, name: &str) -> Mechanism {
    let mut m = MechanismType::Kernel.mechanism();
    m.set_param(kernel::NETNS_URL, ns.url());
    m.set_param(kernel::INTERFACE_NAME, name);
    m
}

pub fn vxlan_mech(src: &str, dst: &str, vni: u32, port: Option<u16>) -> Mechanism {
    let mut m = MechanismType::Vxlan.mechanism();
    m.set_param(vxlan::SRC_IP, src);
    m.set_param(vxlan::DST_IP, dst);
    m.set_param(vxlan::VNI, vni.to_string());
    if let Some(p) = port {
        m.set_param(vxlan::SRC_PORT, p.to_string());
        m.set_param(vxlan::DST_PORT, p.to_string());
    }
    m
}

/// point2pointipam-style context: client `.101`, endpoint `.100` (plus IPv6 `fd00:<n>::101/100`).
pub fn p2p(n: u8) -> ConnectionContext {
    ConnectionContext {
        ip_context: Some(IpContext {
            src_ip_addrs: vec![format!("169.254.{n}.101/32"), format!("fd00:{n}::101/128")],
            dst_ip_addrs: vec![format!("169.254.{n}.100/32"), format!("fd00:{n}::100/128")],
            src_routes: vec![Route {
                prefix: format!("169.254.{n}.100/32"),
                ..Default::default()
            }],
            dst_routes: vec![Route {
                prefix: format!("169.254.{n}.101/32"),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Pings `dst` from `ns` with our ICMP library; returns the number of replies out of 3.
pub async fn ping(ns: &TestNs, dst: &str) -> usize {
    ping_n(ns, dst, 3, std::time::Duration::from_secs(1)).await
}

/// Sends `count` echo requests to `dst` from `ns`, waiting up to `timeout` for each reply; returns the
/// number of replies.
pub async fn ping_n(ns: &TestNs, dst: &str, count: u16, timeout: std::time::Duration) -> usize {
    let netns = ns.netns();
    let dst: std::net::IpAddr = dst.parse().unwrap();
    tokio::task::spawn_blocking(move || {
        nsm_dataplane::icmp::ping(Some(&netns), dst, count, timeout)
            .unwrap()
            .len()
    })
    .await
    .unwrap()
}

/// Pings from client pod `c` to endpoint pod `e` and back, over IPv4 and IPv6, on [`p2p`]`(n)`
/// addresses: every ping gets its 3 replies.
pub async fn ping_both_ways(c: &TestNs, e: &TestNs, n: u8) {
    for (from, to) in [
        (c, format!("169.254.{n}.100")),
        (e, format!("169.254.{n}.101")),
        (c, format!("fd00:{n}::100")),
        (e, format!("fd00:{n}::101")),
    ] {
        assert_eq!(ping(from, &to).await, 3, "ping {to} from {}", from.name);
    }
}

/// Threads of this process running the WireGuard worker of pod interface `interface` (thread names
/// are cut at 15 bytes).
pub fn wireguard_workers(interface: &str) -> usize {
    let want = format!("nsm-wg-{interface}");
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| want.starts_with(comm.trim_end()) && !comm.trim_end().is_empty())
        .count()
}
