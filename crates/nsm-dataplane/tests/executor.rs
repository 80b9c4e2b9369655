//! The executor in namespaces this test creates (reference §4.4): same node, two nodes over VXLAN
//! (default and non-default port), three nodes with the same VNI, crash cleanup, bad input, and a mass
//! Close within the cap on link-deletion threads.
//! Runs as root; skips otherwise (fails under CI=true).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use std::time::Duration;

use nsm_core::clock::Clock;
use nsm_dataplane::executor::{Executor, MAX_DELETION_THREADS};
use nsm_dataplane::plan::{PlanConfig, PlanRequest, TunnelPlan, plan};
use nsm_dataplane::{ApplyError, Plan};

fn mk_plan(
    owner: &str,
    conn: &str,
    path: &str,
    inc: &nsm_api::Mechanism,
    out: &nsm_api::Mechanism,
    ctx: &nsm_api::connectioncontext::ConnectionContext,
    port: u16,
) -> Plan {
    let mut cfg = PlanConfig::new(owner);
    cfg.vxlan_port = port;
    plan(
        &cfg,
        &PlanRequest {
            connection_id: conn,
            path_id: path,
            incoming: inc,
            outgoing: out,
            context: ctx,
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_node_kernel_to_kernel_pings_and_removes_cleanly() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (node, c, e) = (TestNs::new("node"), TestNs::new("c"), TestNs::new("e"));
    let exec = Executor::new(node.netns(), "fwd-local").unwrap();
    let ctx = p2p(1);
    let p = mk_plan(
        "fwd-local",
        "conn-1",
        "nsc-1",
        &kernel_mech(&c, "nsm-1"),
        &kernel_mech(&e, "nsm-1"),
        &ctx,
        0,
    );
    exec.apply(&p).await.unwrap();
    exec.apply(&p).await.unwrap(); // refresh: idempotent
    assert_eq!(
        node.links().len(),
        2,
        "two node-side veth ends: {:?}",
        node.links()
    );
    let link = c.ip(&["-o", "link", "show", "dev", "nsm-1"]);
    assert!(
        link.contains("mtu 9000") && link.contains("nsm:fwd-local:conn-1:client"),
        "{link}"
    );
    assert!(c.ip(&["-o", "addr"]).contains("169.254.1.101/32"));
    assert!(e.ip(&["-o", "-6", "addr"]).contains("fd00:1::100/128"));
    ping_both_ways(&c, &e, 1).await;
    assert!(exec.remove("conn-1").await.unwrap());
    assert!(node.links().is_empty(), "{:?}", node.links());
    assert!(c.links().is_empty() && e.links().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_vxlan_ping_with_mtu_1450_on_default_and_custom_port() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    for port in [4789u16, 8472] {
        let (n1, n2, c, e) = (
            TestNs::new("n1"),
            TestNs::new("n2"),
            TestNs::new("c"),
            TestNs::new("e"),
        );
        underlay(&n1, "169.254.100.1/24", &n2, "169.254.100.2/24", "1");
        let f1 = Executor::new(n1.netns(), "fwd1").unwrap();
        let f2 = Executor::new(n2.netns(), "fwd2").unwrap();
        let ctx = p2p(2);
        let vx = vxlan_mech("169.254.100.1", "169.254.100.2", 4242, Some(port));
        let p1 = mk_plan(
            "fwd1",
            "a",
            "nsc-a",
            &kernel_mech(&c, "nsm-1"),
            &vx,
            &ctx,
            port,
        );
        let p2 = mk_plan(
            "fwd2",
            "b",
            "nsc-a",
            &vx,
            &kernel_mech(&e, "nsm-1"),
            &ctx,
            port,
        );
        f2.apply(&p2).await.unwrap();
        f1.apply(&p1).await.unwrap();
        let vxd = n1.ip(&[
            "-d",
            "-o",
            "link",
            "show",
            "dev",
            &p1.tunnel
                .as_ref()
                .and_then(TunnelPlan::vxlan)
                .unwrap()
                .device,
        ]);
        assert!(
            vxd.contains(&format!("dstport {port}")) && vxd.contains("id 4242"),
            "{vxd}"
        );
        assert!(
            c.ip(&["-o", "link", "show", "dev", "nsm-1"])
                .contains("mtu 1450")
        );
        assert!(
            e.ip(&["-o", "link", "show", "dev", "nsm-1"])
                .contains("mtu 1450")
        );
        ping_both_ways(&c, &e, 2).await;
        f1.remove("a").await.unwrap();
        f2.remove("b").await.unwrap();
        assert_eq!(n1.links(), ["u1a"], "only the underlay is left");
        assert_eq!(n2.links(), ["u1b"]);
        assert!(c.links().is_empty() && e.links().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_same_vni_both_clients_ping_the_endpoint_node() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (n1, n2, n3) = (TestNs::new("n1"), TestNs::new("n2"), TestNs::new("n3"));
    let (c1, c3, e) = (TestNs::new("c1"), TestNs::new("c3"), TestNs::new("e"));
    // node2 has two underlay links, one to each client node.
    underlay(&n1, "169.254.101.1/24", &n2, "169.254.101.2/24", "1");
    underlay(&n3, "169.254.103.3/24", &n2, "169.254.103.2/24", "3");
    let (f1, f2, f3) = (
        Executor::new(n1.netns(), "fwd1").unwrap(),
        Executor::new(n2.netns(), "fwd2").unwrap(),
        Executor::new(n3.netns(), "fwd3").unwrap(),
    );
    let (ctx_a, ctx_b) = (p2p(3), p2p(4));
    let vni = 77;
    let vx_a = vxlan_mech("169.254.101.1", "169.254.101.2", vni, None);
    let vx_b = vxlan_mech("169.254.103.3", "169.254.103.2", vni, None);
    let plans = [
        (
            &f2,
            mk_plan(
                "fwd2",
                "a2",
                "nsc-a",
                &vx_a,
                &kernel_mech(&e, "nsm-a"),
                &ctx_a,
                0,
            ),
        ),
        (
            &f2,
            mk_plan(
                "fwd2",
                "b2",
                "nsc-b",
                &vx_b,
                &kernel_mech(&e, "nsm-b"),
                &ctx_b,
                0,
            ),
        ),
        (
            &f1,
            mk_plan(
                "fwd1",
                "a1",
                "nsc-a",
                &kernel_mech(&c1, "nsm-1"),
                &vx_a,
                &ctx_a,
                0,
            ),
        ),
        (
            &f3,
            mk_plan(
                "fwd3",
                "b3",
                "nsc-b",
                &kernel_mech(&c3, "nsm-1"),
                &vx_b,
                &ctx_b,
                0,
            ),
        ),
    ];
    for (f, p) in &plans {
        f.apply(p).await.unwrap();
    }
    assert_eq!(
        n2.links().iter().filter(|l| l.starts_with("nsx")).count(),
        1,
        "one shared VXLAN device"
    );
    ping_both_ways(&c1, &e, 3).await;
    ping_both_ways(&c3, &e, 4).await;
    // Isolation: even with a route and a neighbour entry for connection b's endpoint interface, client 1's
    // frames have no FDB entry on node 1 and no receive filter on node 2 for that MAC.
    let mac_b = e.ip(&["-o", "link", "show", "dev", "nsm-b"]);
    let mac_b = mac_b
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    c1.ip(&["route", "add", "169.254.4.100/32", "dev", "nsm-1"]);
    c1.ip(&[
        "neigh",
        "add",
        "169.254.4.100",
        "lladdr",
        &mac_b,
        "dev",
        "nsm-1",
        "nud",
        "permanent",
    ]);
    assert_eq!(ping(&c1, "169.254.4.100").await, 0);
    // Closing one keeps the other (and the shared device) working.
    f2.remove("a2").await.unwrap();
    f1.remove("a1").await.unwrap();
    ping_both_ways(&c3, &e, 4).await;
    f2.remove("b2").await.unwrap();
    f3.remove("b3").await.unwrap();
    assert_eq!(
        n2.links().len(),
        2,
        "only the two underlay links: {:?}",
        n2.links()
    );
    assert!(e.links().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_leftovers_are_removed_by_adopt_or_cleanup_and_never_duplicated() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (n1, n2, c) = (TestNs::new("n1"), TestNs::new("n2"), TestNs::new("c"));
    underlay(&n1, "169.254.100.1/24", &n2, "169.254.100.2/24", "1");
    let ctx = p2p(5);
    let vx = vxlan_mech("169.254.100.1", "169.254.100.2", 99, None);
    let p = mk_plan("fwd1", "a", "nsc", &kernel_mech(&c, "nsm-1"), &vx, &ctx, 0);
    {
        let crashed = Executor::new(n1.netns(), "fwd1").unwrap();
        crashed.apply(&p).await.unwrap();
    } // dropped without remove: a SIGKILL
    // A restarted forwarder re-applying the same connection replaces, never duplicates.
    let restarted = Executor::new(n1.netns(), "fwd1").unwrap();
    restarted.apply(&p).await.unwrap();
    assert_eq!(
        n1.links().len(),
        3,
        "underlay + veth end + vxlan: {:?}",
        n1.links()
    );
    restarted.forget_all(); // and crash again
    // Someone else's link with a foreign alias is left alone.
    n1.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ]);
    n1.ip(&["link", "set", "other0", "alias", "nsm:fwd9:x:client"]);
    let fresh = Executor::new(n1.netns(), "fwd1").unwrap();
    let mut removed = fresh.adopt_or_cleanup().await.unwrap();
    removed.sort();
    assert_eq!(removed.len(), 2, "{removed:?}");
    let mut left = n1.links();
    left.sort();
    assert_eq!(left, ["other0", "other1", "u1a"]);
    assert!(c.links().is_empty(), "the pod end went with its peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error_and_leaves_nothing() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (n1, c, e) = (TestNs::new("n1"), TestNs::new("c"), TestNs::new("e"));
    let exec = Executor::new(n1.netns(), "fwd").unwrap();
    let ctx = p2p(6);

    // An inode URL naming no namespace (a plain file, and a missing one).
    let mut ghost = kernel_mech(&c, "nsm-1");
    ghost.set_param("inodeURL", "file:///etc/hostname");
    let p = mk_plan("fwd", "x", "x", &ghost, &kernel_mech(&e, "nsm-1"), &ctx, 0);
    let err = exec.apply(&p).await.unwrap_err();
    assert!(matches!(err, ApplyError::Netns { .. }), "{err}");
    assert!(err.to_string().contains("/etc/hostname"), "{err}");
    ghost.set_param("inodeURL", "file:///proc/999999999/ns/net");
    let p = mk_plan("fwd", "x", "x", &ghost, &kernel_mech(&e, "nsm-1"), &ctx, 0);
    assert!(matches!(
        exec.apply(&p).await.unwrap_err(),
        ApplyError::Netns { .. }
    ));

    // A name already taken in the endpoint pod: the client side, already built, is rolled back.
    e.ip(&[
        "link", "add", "taken0", "type", "veth", "peer", "name", "taken1",
    ]);
    let p = mk_plan(
        "fwd",
        "y",
        "y",
        &kernel_mech(&c, "nsm-1"),
        &kernel_mech(&e, "taken0"),
        &ctx,
        0,
    );
    let err = exec.apply(&p).await.unwrap_err();
    assert!(
        matches!(err, ApplyError::NameTaken { ref name, .. } if name == "taken0"),
        "{err}"
    );

    // Unreachable tunnel destination (the node has an address but no route to it).
    n1.ip(&["link", "add", "u0", "type", "veth", "peer", "name", "u9"]);
    n1.ip(&["addr", "add", "169.254.100.1/24", "dev", "u0"]);
    n1.ip(&["link", "set", "u0", "up"]);
    let vx = vxlan_mech("169.254.100.1", "169.254.200.2", 5, None);
    let p = mk_plan("fwd", "z", "z", &kernel_mech(&c, "nsm-1"), &vx, &ctx, 0);
    let err = exec.apply(&p).await.unwrap_err();
    assert!(matches!(err, ApplyError::TunnelUnreachable { .. }), "{err}");
    assert!(err.to_string().contains("169.254.200.2"), "{err}");

    let mut left = n1.links();
    left.sort();
    assert_eq!(left, ["u0", "u9"], "nothing of ours in the node");
    assert!(c.links().is_empty());
    assert_eq!(e.links().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_executor_adopts_live_connections_and_sweeps_the_rest() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (n1, n2) = (TestNs::new("n1"), TestNs::new("n2"));
    let (c, e, c2) = (TestNs::new("c"), TestNs::new("e"), TestNs::new("c2"));
    underlay(&n1, "169.254.100.1/24", &n2, "169.254.100.2/24", "1");
    let ctx = p2p(7);
    let vx1 = vxlan_mech("169.254.100.1", "169.254.100.2", 77, None);
    let p1 = mk_plan("fwd1", "a", "nsc", &kernel_mech(&c, "nsm-1"), &vx1, &ctx, 0);
    let p2 = mk_plan("fwd2", "a", "nsc", &vx1, &kernel_mech(&e, "nsm-1"), &ctx, 0);
    // A second, local connection on node 1 that nobody will claim after the restart.
    let lone = mk_plan(
        "fwd1",
        "b",
        "nsc-b",
        &kernel_mech(&c2, "nsm-1"),
        &kernel_mech(&e, "nsm-2"),
        &p2p(8),
        0,
    );
    let e2 = Executor::new(n2.netns(), "fwd2").unwrap();
    e2.apply(&p2).await.unwrap();
    {
        let crashed = Executor::new(n1.netns(), "fwd1").unwrap();
        crashed.apply(&p1).await.unwrap();
        crashed.apply(&lone).await.unwrap();
    } // SIGKILL
    ping_both_ways(&c, &e, 7).await;
    let before = n1.links();
    let restarted = Executor::new(n1.netns(), "fwd1").unwrap();
    assert_eq!(restarted.adopt().await.unwrap(), ["a", "b"]);
    assert_eq!(n1.links(), before, "adopting changes nothing");
    // The refresh of "a" claims it without touching the kernel: same links, same indexes.
    let idx = n1.ip(&["-o", "link"]);
    restarted.apply(&p1).await.unwrap();
    assert_eq!(n1.ip(&["-o", "link"]), idx);
    assert_eq!(restarted.unclaimed(), ["b"]);
    ping_both_ways(&c, &e, 7).await;
    // The grace period passes: "b" is removed, "a" stays.
    let removed = restarted.sweep_unclaimed().await.unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(c2.links().is_empty());
    ping_both_ways(&c, &e, 7).await;
    // A re-request with changed parameters replaces the interface (never half-applied)...
    let mut changed = p2p(9);
    changed.ethernet_context = ctx.ethernet_context.clone();
    let p1b = mk_plan(
        "fwd1",
        "a",
        "nsc",
        &kernel_mech(&c, "nsm-1"),
        &vx1,
        &changed,
        0,
    );
    restarted.apply(&p1b).await.unwrap();
    assert!(c.ip(&["-o", "addr"]).contains("169.254.9.101/32"));
    assert!(!c.ip(&["-o", "addr"]).contains("169.254.7.101/32"));
    // ...and a new connection asking for the same interface in the same pod evicts the old one.
    let again = mk_plan(
        "fwd1",
        "a2",
        "nsc",
        &kernel_mech(&c, "nsm-1"),
        &vx1,
        &ctx,
        0,
    );
    restarted.apply(&again).await.unwrap();
    assert_eq!(c.links(), ["nsm-1"]);
    assert_eq!(restarted.applied("a").await, None);
    restarted.remove("a2").await.unwrap();
    e2.remove("a").await.unwrap();
    assert!(c.links().is_empty() && e.links().is_empty());
    let mut left = n1.links();
    left.sort();
    assert_eq!(left, ["u1a"], "tunnel device removed with its last user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_are_built_and_removed_completely() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (n1, n2, e) = (TestNs::new("n1"), TestNs::new("n2"), TestNs::new("e"));
    underlay(&n1, "169.254.100.1/24", &n2, "169.254.100.2/24", "1");
    let (f1, f2) = (
        Executor::new(n1.netns(), "fwd1").unwrap(),
        Executor::new(n2.netns(), "fwd2").unwrap(),
    );
    // Local connections on node 2 and remote ones from node 1, all over one VNI (one shared VXLAN
    // device on each node), every client in a pod of its own, the endpoint pod shared.
    let clients: Vec<TestNs> = (0..8).map(|i| TestNs::new(&format!("c{i}"))).collect();
    let vx = vxlan_mech("169.254.100.1", "169.254.100.2", 77, None);
    let mut plans: Vec<(&Executor, Plan)> = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (id, ctx, nse_if) = (format!("conn-{i}"), p2p(20 + i as u8), format!("nsm-{i}"));
        if i % 2 == 0 {
            let local = kernel_mech(c, "nsm-1");
            let p = mk_plan("fwd2", &id, &id, &local, &kernel_mech(&e, &nse_if), &ctx, 0);
            plans.push((&f2, p));
        } else {
            let p1 = mk_plan("fwd1", &id, &id, &kernel_mech(c, "nsm-1"), &vx, &ctx, 0);
            let p2 = mk_plan("fwd2", &id, &id, &vx, &kernel_mech(&e, &nse_if), &ctx, 0);
            plans.push((&f1, p1));
            plans.push((&f2, p2));
        }
    }
    let applied = futures::future::join_all(plans.iter().map(|(f, p)| f.apply(p))).await;
    for r in applied {
        r.unwrap();
    }
    for (i, c) in clients.iter().enumerate() {
        ping_both_ways(c, &e, 20 + i as u8).await;
    }
    assert_eq!(
        n2.links().iter().filter(|l| l.starts_with("nsx")).count(),
        1,
        "one shared VXLAN device: {:?}",
        n2.links()
    );
    // The same connection applied several times at once: one after the other, one interface.
    let (f, p) = &plans[0];
    let again = futures::future::join_all((0..4).map(|_| f.apply(p))).await;
    assert!(again.iter().all(Result::is_ok), "{again:?}");
    assert_eq!(clients[0].links(), ["nsm-1"]);
    let removed =
        futures::future::join_all(plans.iter().map(|(f, p)| f.remove(&p.connection_id))).await;
    for r in removed {
        assert!(r.unwrap());
    }
    assert_eq!(n1.links(), ["u1a"], "only the underlay is left");
    assert_eq!(n2.links(), ["u1b"]);
    assert!(e.links().is_empty(), "{:?}", e.links());
    assert!(clients.iter().all(|c| c.links().is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_close_deletes_every_link_with_at_most_32_deletion_threads_at_once() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (node, c, e) = (TestNs::new("node"), TestNs::new("c"), TestNs::new("e"));
    let exec = Executor::new(node.netns(), "fwd-mass").unwrap();
    // Local connections between two shared pods: each Close deletes two veths (one per pod), so the
    // Closes together ask for four times as many deletions as the cap allows at once.
    const CONNS: usize = 64;
    const DELETIONS: usize = 2 * CONNS;
    assert_eq!(MAX_DELETION_THREADS, 32, "the cap this test is named for");
    let plans: Vec<Plan> = (0..CONNS)
        .map(|i| {
            let (id, name) = (format!("conn-{i}"), format!("nsm-{i}"));
            let (cm, em) = (kernel_mech(&c, &name), kernel_mech(&e, &name));
            mk_plan("fwd-mass", &id, &id, &cm, &em, &p2p(10 + i as u8), 0)
        })
        .collect();
    for r in futures::future::join_all(plans.iter().map(|p| exec.apply(p))).await {
        r.unwrap();
    }
    assert_eq!(node.links().len(), DELETIONS, "{:?}", node.links());
    assert_eq!((c.links().len(), e.links().len()), (CONNS, CONNS));
    assert_eq!(
        exec.deletion_threads().started,
        0,
        "applying deleted nothing"
    );

    let clock = Clock::system();
    let start = clock.instant();
    let closed = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join_all(plans.iter().map(|p| exec.remove(&p.connection_id))),
    )
    .await
    .expect("a mass Close hangs (60 s)");
    let took = start.elapsed();
    for r in closed {
        assert!(r.unwrap(), "every Close found its connection");
    }
    // Each deletion is done for the Close at the kernel's announcement; its thread ends at the
    // acknowledgement, after the kernel has freed the device.
    let deadline = clock.instant() + Duration::from_secs(30);
    while exec.deletion_threads().live > 0 {
        assert!(
            clock.instant() < deadline,
            "deletion threads still alive 30 s after the Close: {:?}",
            exec.deletion_threads()
        );
        clock.sleep(Duration::from_millis(20)).await;
    }
    let threads = exec.deletion_threads();
    eprintln!("mass close of {CONNS} connections: {took:?}, {threads:?}");
    assert_eq!(
        threads.started, DELETIONS,
        "one thread per link: {threads:?}"
    );
    assert!(
        threads.peak <= MAX_DELETION_THREADS,
        "more deletion threads at once than the cap: {threads:?}"
    );
    assert!(
        threads.peak > 1,
        "deletions of different connections overlap: {threads:?}"
    );
    assert!(node.links().is_empty(), "{:?}", node.links());
    assert!(c.links().is_empty(), "{:?}", c.links());
    assert!(e.links().is_empty(), "{:?}", e.links());
    for p in &plans {
        assert_eq!(exec.applied(&p.connection_id).await, None);
    }
}
