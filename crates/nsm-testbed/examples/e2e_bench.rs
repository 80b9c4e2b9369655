//! End-to-end figures of the real processes (issue 6, BENCHMARKS.md "Processes and kernel data plane"):
//! - connection set-up (client start → `connected` line) and client start → first ICMP echo reply, for a
//!   local (same node) and a remote (VXLAN) connection, median of `runs`;
//! - TCP throughput (iperf3, one stream) client pod → node 1 → VXLAN → node 2 → endpoint pod through the
//!   real `nsm` processes, against the hand-built path of reference Appendix A (direct veth underlay) and
//!   the same hand-built path over a bridged underlay like the testbed's, interleaved rounds, same run.
//!
//! As root: `cargo build --release && cargo run --release -p nsm-testbed --example e2e_bench --
//! [target/release/nsm] [seconds] [rounds] [runs]`. Needs iperf3. Namespaces `nsmb<pid>…` / the testbed's
//! own; all deleted at the end; the root namespace is checked unchanged.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    missing_docs
)]

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use nsm_testbed::{Testbed, TestbedOptions, ip, root_snapshot};

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Ns(String);
impl Ns {
    fn new(tag: &str) -> Self {
        let n = format!("nsmb{}-{tag}", std::process::id());
        sh(&["ip", "netns", "add", &n]);
        sh(&["ip", "-n", &n, "link", "set", "lo", "up"]);
        Ns(n)
    }
    fn ip(&self, a: &[&str]) {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(a);
        sh(&v);
    }
    fn exec(&self, a: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(a);
        sh(&v);
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Reference Appendix A: client pod, two nodes, endpoint pod; VXLAN vni 100; tc mirred xconnect; MTU
/// 1450; /32 addresses. `bridge`: the underlay goes through a bridge in a fifth namespace (as in the
/// testbed) instead of a direct veth.
fn hand_built(tag: &str, bridge: bool) -> Vec<Ns> {
    let (c, n1, n2, e) = (
        Ns::new(&format!("{tag}c")),
        Ns::new(&format!("{tag}n1")),
        Ns::new(&format!("{tag}n2")),
        Ns::new(&format!("{tag}e")),
    );
    let mut extra = Vec::new();
    if bridge {
        let u = Ns::new(&format!("{tag}u"));
        u.ip(&["link", "add", "br0", "type", "bridge"]);
        u.ip(&["link", "set", "br0", "up"]);
        for (n, i) in [(&n1, "1"), (&n2, "2")] {
            sh(&[
                "ip",
                "-n",
                &u.0,
                "link",
                "add",
                &format!("p{i}"),
                "type",
                "veth",
                "peer",
                "name",
                &format!("u{i}"),
                "netns",
                &n.0,
            ]);
            u.ip(&["link", "set", &format!("p{i}"), "master", "br0", "up"]);
        }
        extra.push(u);
    } else {
        sh(&[
            "ip", "link", "add", "u1", "netns", &n1.0, "type", "veth", "peer", "name", "u2",
            "netns", &n2.0,
        ]);
    }
    n1.ip(&["addr", "add", "169.254.100.1/24", "dev", "u1"]);
    n2.ip(&["addr", "add", "169.254.100.2/24", "dev", "u2"]);
    n1.ip(&["link", "set", "u1", "up"]);
    n2.ip(&["link", "set", "u2", "up"]);
    for (n, l, r, dev) in [
        (&n1, "169.254.100.1", "169.254.100.2", "u1"),
        (&n2, "169.254.100.2", "169.254.100.1", "u2"),
    ] {
        n.ip(&[
            "link",
            "add",
            "vx1",
            "type",
            "vxlan",
            "id",
            "100",
            "local",
            l,
            "remote",
            r,
            "dstport",
            "4789",
            "dev",
            dev,
            "nolearning",
        ]);
    }
    for (p, n, fwd) in [(&c, &n1, "c-fwd"), (&e, &n2, "e-fwd")] {
        sh(&[
            "ip", "link", "add", "nsm-1", "netns", &p.0, "type", "veth", "peer", "name", fwd,
            "netns", &n.0,
        ]);
    }
    for (p, me, peer) in [
        (&c, "169.254.1.101/32", "169.254.1.100/32"),
        (&e, "169.254.1.100/32", "169.254.1.101/32"),
    ] {
        p.ip(&["link", "set", "nsm-1", "mtu", "1450", "up"]);
        p.ip(&["addr", "add", me, "dev", "nsm-1"]);
        p.ip(&["route", "add", peer, "dev", "nsm-1"]);
    }
    for (n, fwd) in [(&n1, "c-fwd"), (&n2, "e-fwd")] {
        n.ip(&["link", "set", fwd, "mtu", "1450", "up"]);
        n.ip(&["link", "set", "vx1", "mtu", "1450", "up"]);
        n.exec(&["tc", "qdisc", "add", "dev", fwd, "ingress"]);
        n.exec(&["tc", "qdisc", "add", "dev", "vx1", "ingress"]);
        for (a, b) in [(fwd, "vx1"), ("vx1", fwd)] {
            n.exec(&[
                "tc", "filter", "add", "dev", a, "ingress", "protocol", "all", "u32", "match",
                "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", b,
            ]);
        }
    }
    let mut v = vec![c, e, n1, n2];
    v.extend(extra);
    v
}

/// One iperf3 TCP stream from namespace `c` to `dst` served in `e`; Gbit/s at the receiver.
fn iperf(c: &str, e: &str, dst: IpAddr, secs: u32) -> f64 {
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            e,
            "iperf3",
            "-s",
            "-1",
            "-B",
            &dst.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        c,
        "iperf3",
        "-c",
        &dst.to_string(),
        "-t",
        &secs.to_string(),
        "-J",
    ]);
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e9
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Client start → `connected`, and client start → first echo reply; then close and wait until clean.
fn one_connection(tb: &mut Testbed, name: &str, node: usize, svc: &str) -> (Duration, Duration) {
    let pod = tb.add_pod(name).unwrap();
    tb.spawn_nsc(name, &pod, node, svc, &[], false).unwrap();
    let start = tb.started(name).unwrap();
    let conn = tb.wait_connected(name, Duration::from_secs(30)).unwrap();
    let connected = start.elapsed();
    let first = tb
        .first_ping(&pod, conn.dst_ip().unwrap(), Duration::from_secs(10))
        .unwrap();
    let ping = first - start;
    tb.stop(name, Duration::from_secs(10)).unwrap();
    (connected, ping)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/release/nsm".into());
    let secs: u32 = args.get(2).map_or(5, |s| s.parse().unwrap());
    let rounds: usize = args.get(3).map_or(3, |s| s.parse().unwrap());
    let runs: usize = args.get(4).map_or(5, |s| s.parse().unwrap());
    let bin = std::fs::canonicalize(&bin).unwrap();
    let root_before = root_snapshot().unwrap();

    let mut opts = TestbedOptions::new(format!("nsmb{}-mesh", std::process::id()), &bin);
    // Readiness is read from INFO lines; the components log little per connection at INFO.
    opts.log_level = "INFO".into();
    let mut tb = Testbed::mesh(opts, 2, &[]).unwrap();
    let e = tb.add_pod("e2").unwrap();
    tb.start_nse(
        "icmp-server",
        &e,
        2,
        &[("NSM_CIDR_PREFIX", "169.254.200.0/24")],
    )
    .unwrap();

    // Set-up times: remote (client on node 1) and local (client on node 2), interleaved.
    let (mut rc, mut rp, mut lc, mut lp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let (c, p) = one_connection(
            &mut tb,
            &format!("r{i}"),
            1,
            "kernel://icmp-responder/nsm-1",
        );
        rc.push(c);
        rp.push(p);
        let (c, p) = one_connection(
            &mut tb,
            &format!("l{i}"),
            2,
            "kernel://icmp-responder/nsm-1",
        );
        lc.push(c);
        lp.push(p);
        eprintln!(
            "run {i}: remote connected {} first reply {}; local connected {} first reply {}",
            ms(rc[i]),
            ms(rp[i]),
            ms(lc[i]),
            ms(lp[i])
        );
    }

    // Throughput through the processes (client on node 1), vs hand-built, interleaved.
    let pod = tb.add_pod("tp").unwrap();
    tb.spawn_nsc("tp", &pod, 1, "kernel://icmp-responder/nsm-1", &[], false)
        .unwrap();
    let conn = tb.wait_connected("tp", Duration::from_secs(30)).unwrap();
    let dst = conn.dst_ip().unwrap();
    tb.first_ping(&pod, dst, Duration::from_secs(5)).unwrap();
    let direct = hand_built("d", false);
    let bridged = hand_built("b", true);
    let hdst: IpAddr = "169.254.1.100".parse().unwrap();
    let (mut h, mut hb, mut m) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        h.push(iperf(&direct[0].0, &direct[1].0, hdst, secs));
        hb.push(iperf(&bridged[0].0, &bridged[1].0, hdst, secs));
        m.push(iperf(&pod, &e, dst, secs));
        eprintln!(
            "round {r}: hand-built {:.2}, hand-built over bridge {:.2}, nsm processes {:.2} Gbit/s",
            h[r], hb[r], m[r]
        );
    }
    let mtu = nsm_testbed::links(&pod).unwrap()[0].mtu;
    drop(direct);
    drop(bridged);
    let td = tb.teardown();
    assert!(td.errors.is_empty(), "{:?}", td.errors);
    drop(tb);

    println!("machine: {} CPUs, {}", num_cpus(), kernel());
    println!(
        "set-up, client start → connected (median of {runs}): local {}, remote {}",
        ms(median(lc)),
        ms(median(rc))
    );
    println!(
        "client start → first echo reply (median of {runs}): local {}, remote {}",
        ms(median(lp)),
        ms(median(rp))
    );
    let (mh, mhb, mm) = (median(h.clone()), median(hb.clone()), median(m.clone()));
    println!(
        "iperf3 -t {secs}, 1 TCP stream, median of {rounds} interleaved rounds (Gbit/s), pod MTU {mtu}:"
    );
    println!("  hand-built (Appendix A, direct veth underlay) {h:.2?} → {mh:.2}");
    println!("  hand-built over a bridged underlay            {hb:.2?} → {mhb:.2}");
    println!(
        "  nsm processes (testbed, bridged underlay)     {m:.2?} → {mm:.2} ({:.0} % of hand-built, {:.0} % of hand-built over bridge)",
        100.0 * mm / mh,
        100.0 * mm / mhb
    );
    assert_eq!(
        root_before,
        root_snapshot().unwrap(),
        "root namespace changed"
    );
    let _ = ip(&["netns", "list"]);
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn kernel() -> String {
    sh(&["uname", "-sr"]).trim().to_string()
}
