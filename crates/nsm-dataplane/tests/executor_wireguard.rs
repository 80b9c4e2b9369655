//! The executor with WireGuard plans, in namespaces this test creates: two nodes on a veth underlay
//! (169.254.110.0/24 or fd00:110::/64) and a pod per node. The ends are reserved as the mechanism
//! elements would (client side on node 1, server side on node 2), the mechanism is assembled from
//! them, and both plans are applied. Checks: pings both ways, the pod interface is a TUN with the
//! planned MTU, refresh changes nothing, remove leaves no TUN and no thread and the port is free after
//! release, a taken name fails `NameTaken` with nothing left and the port reusable, a far key change
//! rebuilds the link, and a restart leaves no TUN and frees the ports.
//! Runs as root; skips otherwise (fails under CI=true).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use nsm_api::Mechanism;
use nsm_api::connectioncontext::ConnectionContext;
use nsm_api::mechanisms::{MechanismType, wireguard};
use nsm_core::metadata::Side;
use nsm_dataplane::executor::Executor;
use nsm_dataplane::plan::{PlanConfig, PlanRequest, plan};
use nsm_dataplane::wireguard_ends::{ReservedEnd, WireguardEnds};
use nsm_dataplane::{ApplyError, Plan};

/// Two nodes, a pod on each, an executor and ends per node.
struct World {
    n1: TestNs,
    n2: TestNs,
    c: TestNs,
    e: TestNs,
    f1: Executor,
    f2: Executor,
    ends1: Arc<WireguardEnds>,
    ends2: Arc<WireguardEnds>,
    ip1: IpAddr,
    ip2: IpAddr,
    /// The pod interface name (both pods), unique per test: worker threads are named after it.
    name: String,
}

impl World {
    fn new(tag: &str, v6: bool) -> Self {
        let (n1, n2, c, e) = (
            TestNs::new("wn1"),
            TestNs::new("wn2"),
            TestNs::new("wc"),
            TestNs::new("we"),
        );
        let (a, b) = if v6 {
            ("fd00:110::1/64", "fd00:110::2/64")
        } else {
            ("169.254.110.1/24", "169.254.110.2/24")
        };
        underlay(&n1, a, &n2, b, tag);
        let ip = |s: &str| s.split('/').next().unwrap().parse::<IpAddr>().unwrap();
        let (ip1, ip2) = (ip(a), ip(b));
        let f1 = Executor::new(n1.netns(), "fwd1").unwrap();
        let f2 = Executor::new(n2.netns(), "fwd2").unwrap();
        let ends1 = Arc::new(WireguardEnds::new(n1.netns(), ip1, 0));
        let ends2 = Arc::new(WireguardEnds::new(n2.netns(), ip2, 0));
        f1.use_wireguard(ends1.clone());
        f2.use_wireguard(ends2.clone());
        World {
            n1,
            n2,
            c,
            e,
            f1,
            f2,
            ends1,
            ends2,
            ip1,
            ip2,
            name: format!("nsm-{tag}"),
        }
    }

    /// Threads of this process running a worker for this world's links.
    fn workers(&self) -> usize {
        wireguard_workers(&self.name)
    }

    /// The TUN's `ip -d link` line in `pod`.
    fn tun_line(&self, pod: &TestNs) -> String {
        pod.ip(&["-d", "-o", "link", "show", "dev", &self.name])
    }

    /// The mechanism both forwarders see once the server answered.
    fn mechanism(&self, client: &ReservedEnd, server: &ReservedEnd) -> Mechanism {
        let mut m = MechanismType::Wireguard.mechanism();
        m.set_param(wireguard::SRC_IP, self.ip1.to_string());
        m.set_param(wireguard::SRC_PORT, client.local.port().to_string());
        m.set_param(wireguard::SRC_PUBLIC_KEY, client.public_key.to_string());
        m.set_param(wireguard::DST_IP, self.ip2.to_string());
        m.set_param(wireguard::DST_PORT, server.local.port().to_string());
        m.set_param(wireguard::DST_PUBLIC_KEY, server.public_key.to_string());
        m
    }

    /// Reserves both ends of connection `a` (node 1) / `b` (node 2) and plans both sides.
    fn plans(&self, ctx: &ConnectionContext) -> (Plan, Plan, ReservedEnd, ReservedEnd) {
        let client = self.ends1.reserve("a", Side::Client).unwrap().0;
        let server = self.ends2.reserve("b", Side::Server).unwrap().0;
        let wg = self.mechanism(&client, &server);
        let p1 = mk_plan("fwd1", "a", &kernel_mech(&self.c, &self.name), &wg, ctx);
        let p2 = mk_plan("fwd2", "b", &wg, &kernel_mech(&self.e, &self.name), ctx);
        (p1, p2, client, server)
    }

    /// Applies node 2's plan, then node 1's (the server side is up before the client's packets come).
    async fn apply_both(&self, p1: &Plan, p2: &Plan) {
        self.f2.apply(p2).await.unwrap();
        self.f1.apply(p1).await.unwrap();
    }

    /// Plans connection `n` (on [`p2p`]`(n)` addresses), applies both sides and checks that pings pass
    /// both ways.
    async fn connect(&self, n: u8) -> (Plan, Plan, ReservedEnd, ReservedEnd) {
        let (p1, p2, client, server) = self.plans(&p2p(n));
        self.apply_both(&p1, &p2).await;
        ping_both_ways(&self.c, &self.e, n).await;
        (p1, p2, client, server)
    }

    /// Removes connection `a` on node 1 and `b` on node 2 (both applied) and checks that no worker
    /// thread is left.
    async fn remove_both(&self) {
        assert!(self.f1.remove("a").await.unwrap());
        assert!(self.f2.remove("b").await.unwrap());
        assert_eq!(self.workers(), 0, "no worker thread left");
    }
}

fn mk_plan(
    owner: &str,
    conn: &str,
    inc: &Mechanism,
    out: &Mechanism,
    ctx: &ConnectionContext,
) -> Plan {
    plan(
        &PlanConfig::new(owner),
        &PlanRequest {
            connection_id: conn,
            path_id: "nsc-1",
            incoming: inc,
            outgoing: out,
            context: ctx,
        },
    )
    .unwrap()
}

/// Whether `addr` can be bound in `node` (the port is free there). Retries for up to a second
/// when it cannot: another test of this process may fork (`ip …`) at that moment, and the child
/// holds copies of every fd until its exec closes them.
fn port_free(node: &TestNs, addr: SocketAddr) -> bool {
    let ns = node.netns();
    for _ in 0..20 {
        if ns.run(move || UdpSocket::bind(addr).is_ok()).unwrap() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// Whether `addr` is bound in `node` (by one of our sockets).
fn port_taken(node: &TestNs, addr: SocketAddr) -> bool {
    node.netns()
        .run(move || UdpSocket::bind(addr).is_err())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_wireguard_ping_refresh_and_remove_leaves_nothing() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    for (tag, v6) in [("w4", false), ("w6", true)] {
        let w = World::new(tag, v6);

        let mut ctx = p2p(11);
        ctx.mtu = 9000;
        let (p1, p2, client, server) = w.plans(&ctx);
        assert_eq!(p1.pods[0].mtu, 1420, "underlay 1500 - 80");
        w.apply_both(&p1, &p2).await;
        for pod in [&w.c, &w.e] {
            let line = w.tun_line(pod);
            assert!(
                line.contains(" tun ") && line.contains("mtu 1420"),
                "{line}"
            );
            assert!(line.contains("nsm:fwd"), "alias on the TUN: {line}");
        }
        assert_eq!(w.n1.links(), [format!("u{tag}a")], "no node veth, no VXLAN");
        ping_both_ways(&w.c, &w.e, 11).await;
        // A refresh (the same plan) changes nothing: the link keeps running.
        let index = w.c.ip(&["-o", "link", "show", "dev", &w.name]);
        w.f1.apply(&p1).await.unwrap();
        assert_eq!(w.c.ip(&["-o", "link", "show", "dev", &w.name]), index);
        assert_eq!(w.workers(), 2);
        // Remove: no TUN, no thread; the socket is back with its end until release.
        w.remove_both().await;
        assert!(w.c.links().is_empty() && w.e.links().is_empty());
        assert!(port_taken(&w.n1, client.local), "reserved until Close");
        assert!(w.ends1.release("a", Side::Client));
        assert!(w.ends2.release("b", Side::Server));
        assert!(port_free(&w.n1, client.local) && port_free(&w.n2, server.local));
        assert_eq!(w.n1.links(), [format!("u{tag}a")]);
        assert_eq!(w.n2.links(), [format!("u{tag}b")]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_name_fails_name_taken_leaves_nothing_and_the_port_is_reused() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let w = World::new("wt", false);

    let (p1, p2, client, _) = w.plans(&p2p(12));
    w.f2.apply(&p2).await.unwrap();
    w.c.ip(&[
        "link", "add", &w.name, "type", "veth", "peer", "name", "other",
    ]);
    let e = w.f1.apply(&p1).await.unwrap_err();
    assert!(matches!(e, ApplyError::NameTaken { .. }), "{e}");
    assert_eq!(
        w.c.links(),
        ["other", w.name.as_str()],
        "only the veth that took the name"
    );
    assert_eq!(w.workers(), 1, "only node 2's link");
    assert!(w.f1.applied("a").await.is_none());
    // The retry gets the same end (port and key) once the name is free.
    w.c.ip(&["link", "del", &w.name]);
    w.f1.apply(&p1).await.unwrap();
    assert_eq!(w.ends1.get("a", Side::Client).unwrap(), client);
    ping_both_ways(&w.c, &w.e, 12).await;
    w.remove_both().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_key_change_rebuilds_the_link_and_traffic_resumes() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let w = World::new("wk", false);

    let (p1, _, client, old_server) = w.connect(13).await;
    // Node 2's forwarder lost its end (a restart): it answers a refresh with a new key and port.
    w.f2.remove("b").await.unwrap();
    w.ends2.release("b", Side::Server);
    assert!(port_free(&w.n2, old_server.local));
    let (q1, q2, same_client, new_server) = w.plans(&p2p(13));
    assert_eq!(same_client, client, "the client keeps its end");
    assert_ne!(new_server.public_key, old_server.public_key);
    assert_ne!(q1, p1, "the far key changed");
    w.apply_both(&q1, &q2).await;
    assert_eq!(w.f1.applied("a").await.unwrap(), q1);
    ping_both_ways(&w.c, &w.e, 13).await;
    assert_eq!(w.workers(), 2, "the old link is gone");
    w.remove_both().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_leaves_no_tun_and_frees_the_ports() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let w = World::new("wr", false);

    let (_, _, client, server) = w.connect(14).await;
    // The forwarder processes die: executors and ends go, with every link, TUN and socket.
    let World {
        n1,
        n2,
        c,
        e,
        f1,
        f2,
        ends1,
        ends2,
        name,
        ..
    } = w;
    drop((f1, f2, ends1, ends2));
    assert!(c.links().is_empty() && e.links().is_empty());
    assert_eq!(wireguard_workers(&name), 0);
    assert!(port_free(&n1, client.local) && port_free(&n2, server.local));
    // A new run finds nothing of ours to adopt.
    let f1 = Executor::new(n1.netns(), "fwd1").unwrap();
    assert!(f1.adopt().await.unwrap().is_empty());
}
