//! Throughput benchmark (not a test): the hand-built reference topology (reference §4.2 / Appendix A)
//! against the same topology built by our executor, iperf3 in both, interleaved rounds, plus the set-up
//! time (apply start → first ICMP echo reply) for a local and a remote connection.
//!
//! `cargo run --release -p nsm-dataplane --example throughput -- [seconds] [rounds]` as root.
//! Everything lives in namespaces named `nsmb<pid>-…` with link-local addresses; all are deleted at the end.

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

use nsm_api::Mechanism;
use nsm_api::connectioncontext::{ConnectionContext, IpContext, Route};
use nsm_api::mechanisms::{MechanismType, kernel, vxlan};
use nsm_dataplane::executor::Executor;
use nsm_dataplane::plan::{PlanConfig, PlanRequest, plan};

/// Appendix A, verbatim in spirit: tc mirred xconnect, MTU 1450, /32 addresses and link routes.
fn hand_built(c: &Ns, n1: &Ns, n2: &Ns, e: &Ns) {
    sh(&[
        "ip", "link", "add", "u1", "netns", &n1.0, "type", "veth", "peer", "name", "u2", "netns",
        &n2.0,
    ]);
    n1.ip(&["addr", "add", "169.254.100.1/24", "dev", "u1"]);
    n2.ip(&["addr", "add", "169.254.100.2/24", "dev", "u2"]);
    n1.ip(&["link", "set", "u1", "up"]);
    n2.ip(&["link", "set", "u2", "up"]);
    for (n, l, r) in [
        (n1, "169.254.100.1", "169.254.100.2"),
        (n2, "169.254.100.2", "169.254.100.1"),
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
            "nolearning",
        ]);
    }
    sh(&[
        "ip", "link", "add", "nsm-1", "netns", &c.0, "type", "veth", "peer", "name", "c-fwd",
        "netns", &n1.0,
    ]);
    sh(&[
        "ip", "link", "add", "nsm-1", "netns", &e.0, "type", "veth", "peer", "name", "e-fwd",
        "netns", &n2.0,
    ]);
    for (p, me, peer) in [
        (c, "169.254.1.101/32", "169.254.1.100/32"),
        (e, "169.254.1.100/32", "169.254.1.101/32"),
    ] {
        p.ip(&["link", "set", "nsm-1", "mtu", "1450", "up"]);
        p.ip(&["addr", "add", me, "dev", "nsm-1"]);
        p.ip(&["route", "add", peer, "dev", "nsm-1"]);
    }
    for (n, fwd) in [(n1, "c-fwd"), (n2, "e-fwd")] {
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
}

fn kernel_mech(ns: &Ns, name: &str) -> Mechanism {
    let mut m = MechanismType::Kernel.mechanism();
    m.set_param(kernel::NETNS_URL, format!("file://{}", ns.path()));
    m.set_param(kernel::INTERFACE_NAME, name);
    m
}

fn context(n: u8) -> ConnectionContext {
    ConnectionContext {
        ip_context: Some(IpContext {
            src_ip_addrs: vec![format!("169.254.{n}.101/32")],
            dst_ip_addrs: vec![format!("169.254.{n}.100/32")],
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

fn first_reply(ns: &Ns, dst: &str) -> Duration {
    let netns = ns.netns();
    let dst: IpAddr = dst.parse().unwrap();
    for _ in 0..200 {
        if !nsm_dataplane::icmp::ping(Some(&netns), dst, 1, Duration::from_millis(50))
            .unwrap()
            .is_empty()
        {
            return Duration::ZERO;
        }
    }
    panic!("no echo reply from {dst}");
}

/// Ours: the same four namespaces and underlay, connection built by two executors.
async fn ours(c: &Ns, n1: &Ns, n2: &Ns, e: &Ns) -> Duration {
    sh(&[
        "ip", "link", "add", "u1", "netns", &n1.0, "type", "veth", "peer", "name", "u2", "netns",
        &n2.0,
    ]);
    n1.ip(&["addr", "add", "169.254.100.1/24", "dev", "u1"]);
    n2.ip(&["addr", "add", "169.254.100.2/24", "dev", "u2"]);
    n1.ip(&["link", "set", "u1", "up"]);
    n2.ip(&["link", "set", "u2", "up"]);
    let ctx = context(1);
    let mut vx = MechanismType::Vxlan.mechanism();
    vx.set_param(vxlan::SRC_IP, "169.254.100.1");
    vx.set_param(vxlan::DST_IP, "169.254.100.2");
    vx.set_param(vxlan::VNI, "100");
    let start = Instant::now();
    let f1 = Executor::new(n1.netns(), "bench1").unwrap();
    let f2 = Executor::new(n2.netns(), "bench2").unwrap();
    let (kc, ke) = (kernel_mech(c, "nsm-1"), kernel_mech(e, "nsm-1"));
    let req = |id, inc, out| PlanRequest {
        connection_id: id,
        path_id: "bench",
        incoming: inc,
        outgoing: out,
        context: &ctx,
    };
    f2.apply(&plan(&PlanConfig::new("bench2"), &req("b", &vx, &ke)).unwrap())
        .await
        .unwrap();
    f1.apply(&plan(&PlanConfig::new("bench1"), &req("a", &kc, &vx)).unwrap())
        .await
        .unwrap();
    first_reply(c, "169.254.1.100");
    let setup = start.elapsed();
    std::mem::forget(f1); // keep the links: the namespaces' deletion removes them
    std::mem::forget(f2);
    setup
}

async fn local_setup() -> Duration {
    let (node, c, e) = (Ns::new("ln"), Ns::new("lc"), Ns::new("le"));
    let ctx = context(2);
    let start = Instant::now();
    let f = Executor::new(node.netns(), "benchl").unwrap();
    let p = plan(
        &PlanConfig::new("benchl"),
        &PlanRequest {
            connection_id: "l",
            path_id: "l",
            incoming: &kernel_mech(&c, "nsm-1"),
            outgoing: &kernel_mech(&e, "nsm-1"),
            context: &ctx,
        },
    )
    .unwrap();
    f.apply(&p).await.unwrap();
    first_reply(&c, "169.254.2.100");
    let d = start.elapsed();
    f.remove("l").await.unwrap();
    d
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).map_or(10, |s| s.parse().unwrap());
    let rounds: usize = args.get(2).map_or(3, |s| s.parse().unwrap());
    let root_before = sh(&["ip", "-o", "link", "show"]);
    let (hc, hn1, hn2, he) = (Ns::new("hc"), Ns::new("hn1"), Ns::new("hn2"), Ns::new("he"));
    hand_built(&hc, &hn1, &hn2, &he);
    let (oc, on1, on2, oe) = (Ns::new("oc"), Ns::new("on1"), Ns::new("on2"), Ns::new("oe"));
    let remote_setup = ours(&oc, &on1, &on2, &oe).await;
    let local = local_setup().await;
    first_reply(&hc, "169.254.1.100");
    let (mut hand, mut mine) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        hand.push(iperf(&hc, &he, "169.254.1.100", secs));
        mine.push(iperf(&oc, &oe, "169.254.1.100", secs));
        eprintln!(
            "round {r}: hand-built {:.2} Gbit/s, ours {:.2} Gbit/s",
            hand[r], mine[r]
        );
    }
    let (h, m) = (median(&mut hand.clone()), median(&mut mine.clone()));
    println!("hand-built runs {hand:?} median {h:.2} Gbit/s");
    println!(
        "ours       runs {mine:?} median {m:.2} Gbit/s ({:.0} %)",
        100.0 * m / h
    );
    println!("setup apply→first echo reply: local {local:?}, remote {remote_setup:?}");
    drop((hc, hn1, hn2, he, oc, on1, on2, oe));
    assert_eq!(
        root_before,
        sh(&["ip", "-o", "link", "show"]),
        "root namespace links changed"
    );
}
