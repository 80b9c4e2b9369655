//! WireGuard link benchmark (not a test): one TCP stream (iperf3) pod A → pod B through two userspace
//! WireGuard links (`nsm_dataplane::wireguard`), against two kernel baselines measured in the same
//! run, rounds interleaved: the plain veth between the two node namespaces (the underlay), and a
//! kernel VXLAN over that veth (MTU 1450). Also the ICMP echo round trip over each path, and the CPU
//! the link workers use per Gbit.
//!
//! `cargo build --release -p nsm-dataplane --example wireguard_bench &&
//!  target/release/examples/wireguard_bench [seconds] [rounds]` as root (defaults 5 s, 3 rounds).
//! Everything lives in namespaces named `nsmb<pid>-…` with link-local / fd00::/8 addresses; all
//! are deleted at the end (also on panic).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    missing_docs
)]

mod bench;

use bench::{Ns, iperf, median, sh};

use std::net::IpAddr;
use std::time::{Duration, Instant};

use nsm_dataplane::wireguard::{
    KeyPair, LinkConfig, PERSISTENT_KEEPALIVE, PodInterface, TunnelSocket, WireguardLink,
};

/// Node A and B joined by a veth (169.254.77.0/24), a VXLAN over it (169.254.78.0/24, MTU 1450).
fn nodes(a: &Ns, b: &Ns) {
    sh(&[
        "ip", "link", "add", "und", "netns", &a.0, "type", "veth", "peer", "name", "und", "netns",
        &b.0,
    ]);
    for (n, me, peer) in [(a, "1", "2"), (b, "2", "1")] {
        n.ip(&["addr", "add", &format!("169.254.77.{me}/24"), "dev", "und"]);
        n.ip(&["link", "set", "und", "up"]);
        n.ip(&[
            "link",
            "add",
            "vx",
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "4789",
            "local",
            &format!("169.254.77.{me}"),
            "remote",
            &format!("169.254.77.{peer}"),
            "dev",
            "und",
        ]);
        n.ip(&["addr", "add", &format!("169.254.78.{me}/24"), "dev", "vx"]);
        n.ip(&["link", "set", "vx", "mtu", "1450", "up"]);
    }
}

/// The two WireGuard links; the endpoint side (B) learns the client's endpoint.
async fn links(node_a: &Ns, node_b: &Ns, pod_a: &Ns, pod_b: &Ns) -> (WireguardLink, WireguardLink) {
    let (ka, kb) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let sa = TunnelSocket::bind(&node_a.netns(), "169.254.77.1".parse().unwrap(), 0).unwrap();
    let sb = TunnelSocket::bind(&node_b.netns(), "169.254.77.2".parse().unwrap(), 0).unwrap();
    let iface = |me: &str, peer: &str| PodInterface {
        name: "nsm-wg".into(),
        mtu: 1500 - 80,
        addresses: vec![format!("169.254.31.{me}/32").parse().unwrap()],
        routes: vec![format!("169.254.31.{peer}/32").parse().unwrap()],
    };
    let b_at = sb.local_addr();
    let lb = WireguardLink::start(
        sb,
        LinkConfig {
            pod: pod_b.netns(),
            interface: iface("100", "101"),
            key: kb.clone(),
            peer: ka.public(),
            peer_endpoint: None,
            persistent_keepalive: Some(PERSISTENT_KEEPALIVE),
            allowed_sources: vec![],
        },
    )
    .await
    .unwrap();
    let la = WireguardLink::start(
        sa,
        LinkConfig {
            pod: pod_a.netns(),
            interface: iface("101", "100"),
            key: ka,
            peer: kb.public(),
            peer_endpoint: Some(b_at),
            persistent_keepalive: Some(PERSISTENT_KEEPALIVE),
            allowed_sources: vec![],
        },
    )
    .await
    .unwrap();
    (la, lb)
}

/// This process's CPU time (user + system), in clock ticks: the link workers are its only busy
/// threads while iperf3 runs.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime) are 11 and 12 after the command name and state.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Median ICMP echo round trip (µs) from `from` to `dst`, 20 echoes.
fn rtt(from: &Ns, dst: &str) -> f64 {
    let dst: IpAddr = dst.parse().unwrap();
    let rtts =
        nsm_dataplane::icmp::ping(Some(&from.netns()), dst, 20, Duration::from_secs(1)).unwrap();
    assert!(rtts.len() >= 18, "{} of 20 echoes answered", rtts.len());
    let mut us: Vec<f64> = rtts.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    median(&mut us)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).map_or(5, |s| s.parse().unwrap());
    let rounds: usize = args.get(2).map_or(3, |s| s.parse().unwrap());
    let (node_a, node_b) = (Ns::new("na"), Ns::new("nb"));
    let (pod_a, pod_b) = (Ns::new("pa"), Ns::new("pb"));
    nodes(&node_a, &node_b);
    let started = Instant::now();
    let (la, lb) = links(&node_a, &node_b, &pod_a, &pod_b).await;
    let first = rtt(&pod_a, "169.254.31.100");
    println!(
        "links up and first echoes answered in {:.1} ms (median echo {first:.0} µs)",
        started.elapsed().as_secs_f64() * 1e3
    );
    println!("load average at start: {}", loadavg());
    let tick = 100.0; // USER_HZ on Linux
    let (mut veth, mut vxlan, mut wg, mut wg_cpu) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let v = iperf(&node_a, &node_b, "169.254.77.2", secs);
        let x = iperf(&node_a, &node_b, "169.254.78.2", secs);
        let before = cpu_ticks();
        let w = iperf(&pod_a, &pod_b, "169.254.31.100", secs);
        // CPU of both workers (both ends of the link run in this process) per Gbit/s of payload.
        let cpu = (cpu_ticks() - before) as f64 / tick / (secs as f64 + 0.3);
        println!(
            "round {round}: veth {v:.2}  vxlan {x:.2}  wireguard {w:.2} Gbit/s  (workers {:.0} % of one CPU)",
            cpu * 100.0
        );
        veth.push(v);
        vxlan.push(x);
        wg.push(w);
        wg_cpu.push(cpu * 100.0);
    }
    let (rv, rx, rw) = (
        rtt(&node_a, "169.254.77.2"),
        rtt(&node_a, "169.254.78.2"),
        rtt(&pod_a, "169.254.31.100"),
    );
    println!(
        "median Gbit/s: veth {:.2}  vxlan {:.2}  wireguard {:.2}; workers {:.0} % CPU",
        median(&mut veth),
        median(&mut vxlan),
        median(&mut wg),
        median(&mut wg_cpu)
    );
    println!("median echo µs: veth {rv:.0}  vxlan {rx:.0}  wireguard {rw:.0}");
    println!("link A: {:?}", la.stats());
    println!("link B: {:?}", lb.stats());
    println!("load average at end: {}", loadavg());
    la.stop();
    lb.stop();
}
