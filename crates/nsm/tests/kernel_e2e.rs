//! Issue 6 acceptance: real `nsm registry | nsmgr | forwarder | nse | nsc` processes, one network
//! namespace per node and per pod, the kernel data plane (veth + VXLAN + tc cross-connect; a pod TUN
//! and a userspace WireGuard link for an IP-payload service), our own ICMP echo. As root; skipped
//! with a message otherwise (failing under CI=true). Every test uses its own run id, removes
//! everything it made (also on failure) and checks the root namespace is unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use std::sync::Arc;
use std::time::Duration;

use e2e::*;
use nsm_testbed::{Testbed, links, now};

const CIDR: &str = "169.254.200.0/28";
const SVC: &str = "kernel://icmp-responder/nsm-1";
const CONNECT: Duration = Duration::from_secs(30);

/// One client in pod `c1` on `client_node`; returns the connection after checking path length.
fn connect(
    tb: &mut Testbed,
    name: &str,
    pod_tag: &str,
    node: usize,
) -> (String, nsm_testbed::Connected) {
    let c = tb.add_pod(pod_tag).unwrap();
    tb.spawn_nsc(name, &c, node, SVC, &[], false).unwrap();
    let conn = tb.wait_connected(name, CONNECT).unwrap();
    (c, conn)
}

#[test]
fn kernel2kernel_on_one_node() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (mut tb, e) = mesh_with_nse(1, 1, CIDR, &[]);
    let t0 = now();
    let (c, conn) = connect(&mut tb, "nsc", "c1", 1);
    let setup = t0.elapsed();
    assert_eq!(conn.path, ["nsc", "nsmgr-1", "forwarder-1", "icmp-server"]);
    assert_eq!(conn.mechanism, "KERNEL");
    assert_eq!(conn.interface, "nsm-1");
    check_interfaces(&conn, &c, &e, CIDR, None);
    ping_both_ways(&tb, &conn, &c, &e);
    eprintln!("local: client start → connected {setup:?}");
    close_client(&mut tb, "nsc");
    assert_clean(&tb, &[&c, &e]);
}

#[test]
fn kernel2vxlan2kernel_across_two_nodes() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (mut tb, e) = mesh_with_nse(2, 2, CIDR, &[]);
    let (c, conn) = connect(&mut tb, "nsc", "c1", 1);
    assert_eq!(
        conn.path,
        [
            "nsc",
            "nsmgr-1",
            "forwarder-1",
            "nsmgr-2",
            "forwarder-2",
            "icmp-server"
        ]
    );
    assert_eq!(conn.interface, "nsm-1");
    check_interfaces(&conn, &c, &e, CIDR, Some(1450));
    for n in &tb.nodes {
        let vx: Vec<_> = links(&n.ns)
            .unwrap()
            .into_iter()
            .filter(|l| l.kind == "vxlan")
            .collect();
        assert_eq!(vx.len(), 1, "{}: {vx:?}", n.ns);
        assert_eq!(vx[0].port, Some(4789));
        assert_eq!(vx[0].mtu, 1450);
    }
    ping_both_ways(&tb, &conn, &c, &e);
    close_client(&mut tb, "nsc");
    assert_clean(&tb, &[&c, &e]);
}

#[test]
fn non_default_vxlan_port_on_all_forwarders() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (mut tb, e) = mesh_with_nse(2, 2, CIDR, &[("NSM_VXLAN_PORT", "4790")]);
    let (c, conn) = connect(&mut tb, "nsc", "c1", 1);
    assert_eq!(conn.path.len(), 6);
    check_interfaces(&conn, &c, &e, CIDR, Some(1450));
    for n in &tb.nodes {
        let ports: Vec<_> = links(&n.ns)
            .unwrap()
            .into_iter()
            .filter(|l| l.kind == "vxlan")
            .map(|l| l.port)
            .collect();
        assert_eq!(ports, [Some(4790)], "{}", n.ns);
    }
    ping_both_ways(&tb, &conn, &c, &e);
    close_client(&mut tb, "nsc");
    assert_clean(&tb, &[&c, &e]);
}

#[test]
fn ipv6_addressing_across_two_nodes() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let cidr = "fd00:200::/120";
    let (mut tb, e) = mesh_with_nse(2, 2, cidr, &[]);
    let (c, conn) = connect(&mut tb, "nsc", "c1", 1);
    assert_eq!(conn.path.len(), 6);
    assert!(conn.dst_ip().unwrap().is_ipv6(), "{conn:?}");
    check_interfaces(&conn, &c, &e, cidr, Some(1450));
    ping_both_ways(&tb, &conn, &c, &e);
    close_client(&mut tb, "nsc");
    assert_clean(&tb, &[&c, &e]);
}

#[test]
fn ipv6_underlay_across_two_nodes() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let mut o = opts();
    o.underlay_v6 = true;
    let mut tb = Testbed::mesh(o, 2, &[]).unwrap();
    let e = tb.add_pod("e1").unwrap();
    tb.start_nse("icmp-server", &e, 2, &[("NSM_CIDR_PREFIX", CIDR)])
        .unwrap();
    let (c, conn) = connect(&mut tb, "nsc", "c1", 1);
    assert_eq!(conn.path.len(), 6);
    // IPv6 VXLAN header is 20 bytes longer; NSM's rule stays underlay − 50 (Go does the same).
    check_interfaces(&conn, &c, &e, CIDR, None);
    ping_both_ways(&tb, &conn, &c, &e);
    close_client(&mut tb, "nsc");
    assert_clean(&tb, &[&c, &e]);
}

#[test]
fn three_nodes_two_clients_one_endpoint() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (mut tb, e) = mesh_with_nse(3, 2, CIDR, &[]);
    let (c1, conn1) = connect(&mut tb, "nsc-1", "c1", 1);
    let (c3, conn3) = connect(&mut tb, "nsc-3", "c3", 3);
    assert_eq!(conn1.path[1], "nsmgr-1");
    assert_eq!(conn3.path[1], "nsmgr-3");
    assert_eq!(conn1.path.len(), 6);
    assert_eq!(conn3.path.len(), 6);
    assert_ne!(conn1.src, conn3.src, "two clients, two address pairs");
    assert_eq!(links(&e).unwrap().len(), 2, "one interface per client");
    for (pod, conn) in [(&c1, &conn1), (&c3, &conn3)] {
        tb.first_ping(pod, conn.dst_ip().unwrap(), Duration::from_secs(5))
            .unwrap_or_else(|err| panic!("{pod}: {err}"));
        let r = tb
            .ping(pod, conn.dst_ip().unwrap(), 3, Duration::from_secs(1))
            .unwrap();
        assert_eq!(r.len(), 3, "{pod}");
        let r = tb
            .ping(&e, conn.src_ip().unwrap(), 3, Duration::from_secs(1))
            .unwrap();
        assert_eq!(r.len(), 3, "endpoint → {pod}");
    }
    close_client(&mut tb, "nsc-1");
    // The other connection keeps working after the first one closed.
    let r = tb
        .ping(&c3, conn3.dst_ip().unwrap(), 2, Duration::from_secs(1))
        .unwrap();
    assert_eq!(r.len(), 2, "nsc-3 after nsc-1 closed");
    close_client(&mut tb, "nsc-3");
    assert_clean(&tb, &[&c1, &c3, &e]);
}

#[test]
fn forwarder_killed_and_restarted_leaves_no_stale_links() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    // Short token lifetimes: the client refreshes every ~2 s, so a restarted forwarder that adopts what
    // its predecessor built sees the connection claimed (or sweeps it) within seconds, not minutes.
    let mut o = opts();
    o.env.push(("NSM_MAX_TOKEN_LIFETIME".into(), "6s".into()));
    let mut tb = Testbed::mesh(o, 2, &[]).unwrap();
    let e = tb.add_pod("e1").unwrap();
    tb.start_nse("icmp-server", &e, 2, &[("NSM_CIDR_PREFIX", CIDR)])
        .unwrap();
    let (c, conn) = connect(&mut tb, "nsc", "c1", 1);
    ping_both_ways(&tb, &conn, &c, &e);
    let node1 = tb.node(1).unwrap();
    let before = links(&node1.ns).unwrap();
    assert_eq!(before.len(), 3, "ul + veth + vxlan: {before:?}");
    tb.kill("forwarder-1").unwrap();
    tb.start_forwarder(1, &[]).unwrap();
    // Never a duplicate: at most one veth and one VXLAN device of forwarder-1 while the connection is
    // refreshed or healed through the new process; ping must work again.
    let start = now();
    let mut back = None;
    while start.elapsed() < Duration::from_secs(5) || back.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no echo reply through the restarted forwarder within 30 s"
        );
        let l = links(&node1.ns).unwrap();
        let veths = l
            .iter()
            .filter(|l| l.kind == "veth" && l.name != "ul")
            .count();
        let vxlans = l.iter().filter(|l| l.kind == "vxlan").count();
        assert!(veths <= 1 && vxlans <= 1, "duplicates after restart: {l:?}");
        if back.is_none()
            && tb
                .ping(&c, conn.dst_ip().unwrap(), 1, Duration::from_millis(200))
                .is_ok_and(|r| !r.is_empty())
        {
            back = Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("ping works again {back:?} after the restart");
    let log = tb.log("forwarder-1");
    assert!(
        log.contains("removed") || log.contains("adopt"),
        "restarted forwarder did not look at its earlier run's links:\n{log}"
    );
    close_client(&mut tb, "nsc");
    assert_clean(&tb, &[&c, &e]);
}

/// Runs `nsm nsc --once` in a new pod on node 1; returns (exit code, log).
fn nsc_once(tb: &mut Testbed, name: &str, pod: &str, services: &str) -> (i32, String) {
    tb.spawn_nsc(
        name,
        pod,
        1,
        services,
        &[("NSM_REQUEST_TIMEOUT", "3s")],
        true,
    )
    .unwrap();
    let status = tb.wait_exit(name, Duration::from_secs(30)).unwrap();
    let log = tb.log(name);
    let last = log.lines().last().unwrap_or_default().to_string();
    eprintln!("{name}: exit {:?}: {last}", status.code());
    (status.code().unwrap_or(-1), log)
}

#[test]
fn bad_input_gives_a_clear_error_and_leaves_nothing_behind() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    // Plaintext, so that case 2's in-process client (no identity of its own) can talk to the NSMgr.
    let mut o = opts();
    o.env.push(("NSM_INSECURE".into(), "true".into()));
    let mut tb = Testbed::mesh(o, 2, &[]).unwrap();
    let e = tb.add_pod("e1").unwrap();
    tb.start_nse("icmp-server", &e, 2, &[("NSM_CIDR_PREFIX", CIDR)])
        .unwrap();

    // 1. The interface name is already taken in the client pod.
    let c = tb.add_pod("c1").unwrap();
    nsm_testbed::ip(&[
        "-n", &c, "link", "add", "nsm-1", "type", "veth", "peer", "name", "other",
    ])
    .unwrap();
    let (code, log) = nsc_once(&mut tb, "nsc-taken", &c, SVC);
    assert_eq!(code, 1, "{log}");
    // The error the client ends with says why, even when its deadline cut the last try short.
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("request for") && last.contains("\"nsm-1\" is already taken"),
        "{log}"
    );
    let mut left = names(&c);
    left.sort();
    assert_eq!(
        left,
        ["nsm-1", "other"],
        "the pod's own links stay, nothing added"
    );
    // The client may give up (deadline) while an attempt is still under way: the forwarders finish
    // it and roll the endpoint side back a moment after the client exited.
    assert_clean(&tb, &[&e]);

    // 2. An inode URL that names no namespace (an in-process client sends what `nsm nsc` never would).
    let node1 = tb.node(1).unwrap();
    for bad in ["file:///proc/999999999/ns/net", "file:///etc/hostname"] {
        let err = request_with_netns(&node1.socket, bad);
        eprintln!("{bad}: {err}");
        // A file that exists crosses the unix socket as an fd: the forwarder names it /proc/<pid>/fd/<n>.
        let named = err.contains(bad.trim_start_matches("file://")) || err.contains("/fd/");
        assert!(err.contains("namespace") && named, "{bad}: {err}");
        assert_clean(&tb, &[&e]);
    }

    // 3. An exhausted CIDR: a /31 holds exactly one client/endpoint pair.
    let e2 = tb.add_pod("e2").unwrap();
    tb.start_nse(
        "tiny-server",
        &e2,
        2,
        &[
            ("NSM_SERVICE_NAMES", "tiny"),
            ("NSM_CIDR_PREFIX", "169.254.201.0/31"),
        ],
    )
    .unwrap();
    let c2 = tb.add_pod("c2").unwrap();
    tb.spawn_nsc("nsc-first", &c2, 1, "kernel://tiny/nsm-1", &[], false)
        .unwrap();
    tb.wait_connected("nsc-first", CONNECT).unwrap();
    let c3 = tb.add_pod("c3").unwrap();
    let (code, log) = nsc_once(&mut tb, "nsc-second", &c3, "kernel://tiny/nsm-1");
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("169.254.201.0/31") || log.to_lowercase().contains("exhaust"),
        "{log}"
    );
    assert!(names(&c3).is_empty(), "{:?}", names(&c3));
    assert_eq!(
        links(&e2).unwrap().len(),
        1,
        "only the first client's interface"
    );
    close_client(&mut tb, "nsc-first");
    assert_clean(&tb, &[&c2, &c3, &e, &e2]);
}

/// Requests `icmp-responder` through the NSMgr at `socket` with a KERNEL mechanism naming `netns_url`;
/// returns the error text.
fn request_with_netns(socket: &std::path::Path, netns_url: &str) -> String {
    use nsm_api::url::NsmUrl;
    use nsm_api::{Connection, NetworkServiceRequest};
    use nsm_chains::client::{ClientOptions, new_client};
    use nsm_core::{Clock, Ctx};
    use nsm_networkservice::mechanisms::kernel::KernelClient;

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tokens = Arc::new(nsm_core::token::TestTokenGenerator {
            lifetime: Duration::from_secs(60),
        });
        let client = new_client(ClientOptions {
            url: Some(NsmUrl::Unix(socket.to_path_buf())),
            additional: vec![Arc::new(
                KernelClient::new(Some("nsm-9".into())).with_netns_url(netns_url),
            )],
            dial_timeout: Duration::from_secs(5),
            ..ClientOptions::new("bad-netns", tokens)
        });
        let request = NetworkServiceRequest {
            connection: Some(Connection {
                id: "bad-netns-0".into(),
                network_service: "icmp-responder".into(),
                ..Default::default()
            }),
            mechanism_preferences: Vec::new(),
        };
        let mut ctx = Ctx::new(Clock::system()).with_timeout(Duration::from_secs(10));
        match client.run_request(&mut ctx, request).await {
            Ok(c) => panic!("request with {netns_url} succeeded: {c:?}"),
            Err(e) => e.to_string(),
        }
    })
}

#[test]
fn unreachable_tunnel_ip_gives_a_clear_error() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let mut tb = Testbed::new(opts()).unwrap();
    tb.add_underlay().unwrap();
    tb.add_node().unwrap();
    tb.add_node().unwrap();
    tb.start_registry().unwrap();
    tb.start_nsmgr(1).unwrap();
    tb.start_nsmgr(2).unwrap();
    // forwarder-1 claims a tunnel address that is on none of its interfaces and has no route.
    tb.start_forwarder(1, &[("NSM_TUNNEL_IP", "169.254.77.1")])
        .unwrap();
    tb.start_forwarder(2, &[]).unwrap();
    let e = tb.add_pod("e1").unwrap();
    tb.start_nse("icmp-server", &e, 2, &[("NSM_CIDR_PREFIX", CIDR)])
        .unwrap();
    let c = tb.add_pod("c1").unwrap();
    let (code, log) = nsc_once(&mut tb, "nsc", &c, SVC);
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("169.254.77.1"),
        "the error names the tunnel IP:\n{log}"
    );
    assert_clean(&tb, &[&c, &e]);
}

#[test]
fn interface_name_over_15_bytes_is_refused_by_the_url_parser() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nsm"))
        .arg("nsc")
        .env(
            "NSM_NETWORK_SERVICES",
            "kernel://icmp-responder/abcdefghijklmnop",
        )
        .env("NSM_CONNECT_TO", "unix:///nonexistent/nsm.sock")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("NSM_NETWORK_SERVICES"), "{err}");
}

/// The IP-payload service (WireGuard across nodes); its NSE registers it with `NSM_PAYLOAD=IP`.
const WG_SERVICE: &str = "icmp-ip";
const WG_SVC: &str = "kernel://icmp-ip/nsm-1";

/// A mesh of `nodes` nodes with an icmp-responder `icmp-ip` (payload IP) in pod `e1` on `nse_node`.
fn mesh_with_ip_nse(nodes: usize, nse_node: usize, cidr: &str) -> (Testbed, String) {
    mesh_with_ip_nse_over(opts(), nodes, nse_node, cidr)
}

/// [`mesh_with_ip_nse`] with testbed options `o`.
fn mesh_with_ip_nse_over(
    o: nsm_testbed::TestbedOptions,
    nodes: usize,
    nse_node: usize,
    cidr: &str,
) -> (Testbed, String) {
    let mut tb = Testbed::mesh(o, nodes, &[]).unwrap();
    let e = tb.add_pod("e1").unwrap();
    tb.start_nse(
        "icmp-ip",
        &e,
        nse_node,
        &[
            ("NSM_CIDR_PREFIX", cidr),
            ("NSM_PAYLOAD", "IP"),
            ("NSM_SERVICE_NAMES", WG_SERVICE),
        ],
    )
    .unwrap();
    (tb, e)
}

/// One Kernel2Wireguard2Kernel connection on a 2-node mesh with testbed options `o`.
struct WgConnected {
    tb: Testbed,
    /// The endpoint pod (node 2) and the client pod (node 1).
    e: String,
    c: String,
    conn: nsm_testbed::Connected,
    /// The node UDP sockets before the connection (for [`assert_wireguard_clean`]).
    udp_before: Vec<String>,
}

/// Client `nsc` (environment `nsc_env`) in pod `c1` on node 1, connected to the IP-payload NSE on
/// node 2.
fn wireguard_connected(
    o: nsm_testbed::TestbedOptions,
    cidr: &str,
    nsc_env: &[(&str, &str)],
) -> WgConnected {
    let (mut tb, e) = mesh_with_ip_nse_over(o, 2, 2, cidr);
    let udp_before = node_udp_sockets(&tb);
    let c = tb.add_pod("c1").unwrap();
    tb.spawn_nsc("nsc", &c, 1, WG_SVC, nsc_env, false).unwrap();
    let conn = tb.wait_connected("nsc", CONNECT).unwrap();
    WgConnected {
        tb,
        e,
        c,
        conn,
        udp_before,
    }
}

/// Testbed options whose tokens live 6 s: clients refresh every ~2 s.
fn short_tokens() -> nsm_testbed::TestbedOptions {
    let mut o = opts();
    o.env.push(("NSM_MAX_TOKEN_LIFETIME".into(), "6s".into()));
    o
}

/// A Kernel2Wireguard2Kernel connection from pod `c1` on node 1 to the IP-payload NSE on node 2:
/// pings both ways, both pod interfaces are TUNs with MTU underlay − 80, no node veth or VXLAN device,
/// one WireGuard worker and socket per forwarder; everything is gone after the client closes.
fn kernel2wireguard2kernel(cidr: &str, underlay_v6: bool) {
    let _root = RootGuard::new();
    let mut o = opts();
    o.underlay_v6 = underlay_v6;
    let WgConnected {
        mut tb,
        e,
        c,
        conn,
        udp_before,
    } = wireguard_connected(o, cidr, &[]);
    assert_eq!(
        conn.path,
        [
            "nsc",
            "nsmgr-1",
            "forwarder-1",
            "nsmgr-2",
            "forwarder-2",
            "icmp-ip"
        ]
    );
    assert_eq!(conn.interface, "nsm-1");
    check_interfaces(&conn, &c, &e, cidr, Some(1420));
    assert_forwarder_tuns(&[&c, &e]);
    assert!(
        forwarder_links(&tb).is_empty(),
        "no node veth or VXLAN device: {:?}",
        forwarder_links(&tb)
    );
    assert_eq!(wireguard_workers(&mut tb), 2, "one link per forwarder");
    assert_eq!(
        node_udp_sockets(&tb).len(),
        udp_before.len() + 2,
        "one socket per forwarder: {:?}",
        node_udp_sockets(&tb)
    );
    ping_both_ways(&tb, &conn, &c, &e);
    close_client(&mut tb, "nsc");
    assert_clean(&tb, &[&c, &e]);
    assert_wireguard_clean(&mut tb, &udp_before);
}

#[test]
fn kernel2wireguard2kernel_across_two_nodes() {
    if !privileged() {
        return;
    }
    kernel2wireguard2kernel(CIDR, false);
}

#[test]
fn kernel2wireguard2kernel_with_ipv6_addressing() {
    if !privileged() {
        return;
    }
    kernel2wireguard2kernel("fd00:201::/120", false);
}

#[test]
fn kernel2wireguard2kernel_over_ipv6_underlay() {
    if !privileged() {
        return;
    }
    // The overhead is 80 bytes whatever the underlay family, so the MTU is still underlay − 80.
    kernel2wireguard2kernel(CIDR, true);
}

#[test]
fn wireguard_taken_name_gives_a_clear_error_and_both_forwarders_roll_back() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (mut tb, e) = mesh_with_ip_nse(2, 2, CIDR);
    let udp_before = node_udp_sockets(&tb);
    let c = tb.add_pod("c1").unwrap();
    nsm_testbed::ip(&[
        "-n", &c, "link", "add", "nsm-1", "type", "veth", "peer", "name", "other",
    ])
    .unwrap();
    let (code, log) = nsc_once(&mut tb, "nsc-taken", &c, WG_SVC);
    assert_eq!(code, 1, "{log}");
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("\"nsm-1\" is already taken"), "{log}");
    let mut left = names(&c);
    left.sort();
    assert_eq!(left, ["nsm-1", "other"], "the pod's own links stay");
    // The endpoint side was built first (downstream) and is rolled back: no TUN, no worker, no
    // socket, in either forwarder.
    assert_clean(&tb, &[&e]);
    assert_wireguard_clean(&mut tb, &udp_before);
}

/// `ip -o link show` in `pod`: its one interface, ifindex first.
fn pod_link_line(pod: &str) -> String {
    nsm_testbed::ip(&["-n", pod, "-o", "link", "show"])
        .unwrap()
        .lines()
        .filter(|l| !l.contains(": lo:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn wireguard_refresh_keeps_the_link_its_keys_and_ports() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let WgConnected {
        mut tb,
        e,
        c,
        conn,
        udp_before,
    } = wireguard_connected(short_tokens(), CIDR, &[("NSM_LOG_LEVEL", "debug")]);
    ping_both_ways(&tb, &conn, &c, &e);
    let (tun_c, tun_e, sockets) = (pod_link_line(&c), pod_link_line(&e), node_udp_sockets(&tb));
    // Three refreshes or so: the same plan each time, so nothing is rebuilt.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(pod_link_line(&c), tun_c, "client TUN rebuilt by a refresh");
    assert_eq!(
        pod_link_line(&e),
        tun_e,
        "endpoint TUN rebuilt by a refresh"
    );
    assert_eq!(node_udp_sockets(&tb), sockets, "ports changed on refresh");
    // The client did refresh meanwhile (its refresh element logs each next schedule at debug).
    let log = tb.log("nsc");
    assert!(log.matches("next refresh in").count() >= 3, "{log}");
    assert_eq!(wireguard_workers(&mut tb), 2);
    ping_both_ways(&tb, &conn, &c, &e);
    close_client(&mut tb, "nsc");
    assert_clean(&tb, &[&c, &e]);
    assert_wireguard_clean(&mut tb, &udp_before);
}

#[test]
fn wireguard_forwarder_killed_and_restarted_comes_back_with_new_keys() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    // The first refresh through the restarted forwarder rebuilds both ends.
    let WgConnected {
        mut tb,
        e,
        c,
        conn,
        udp_before,
    } = wireguard_connected(short_tokens(), CIDR, &[]);
    ping_both_ways(&tb, &conn, &c, &e);
    let sockets = node_udp_sockets(&tb);
    tb.kill("forwarder-1").unwrap();
    // The TUN and the socket die with the process: nothing of forwarder-1 is left to adopt.
    let start = now();
    while !names(&c).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5), "{:?}", names(&c));
        std::thread::sleep(Duration::from_millis(20));
    }
    tb.start_forwarder(1, &[]).unwrap();
    let start = now();
    let back = loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no echo reply through the restarted forwarder within 30 s"
        );
        if tb
            .ping(&c, conn.dst_ip().unwrap(), 1, Duration::from_millis(200))
            .is_ok_and(|r| !r.is_empty())
        {
            break start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("ping works again {back:?} after the restart");
    ping_both_ways(&tb, &conn, &c, &e);
    // One link per forwarder (forwarder-2 rebuilt its link for the new key, not a second one); the
    // restarted forwarder has a new port.
    assert_eq!(wireguard_workers(&mut tb), 2);
    let now_sockets = node_udp_sockets(&tb);
    assert_eq!(now_sockets.len(), sockets.len(), "{now_sockets:?}");
    assert_ne!(now_sockets, sockets, "forwarder-1 bound a new end");
    close_client(&mut tb, "nsc");
    assert_clean(&tb, &[&c, &e]);
    assert_wireguard_clean(&mut tb, &udp_before);
}

#[test]
fn mixed_mesh_ethernet_over_vxlan_and_ip_over_wireguard_at_once() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (mut tb, e_ip) = mesh_with_ip_nse(2, 2, CIDR);
    let e_eth = tb.add_pod("e2").unwrap();
    tb.start_nse(
        "icmp-server",
        &e_eth,
        2,
        &[("NSM_CIDR_PREFIX", "169.254.202.0/28")],
    )
    .unwrap();
    let udp_before = node_udp_sockets(&tb);
    let (c_eth, conn_eth) = connect(&mut tb, "nsc-eth", "c1", 1);
    let c_ip = tb.add_pod("c2").unwrap();
    tb.spawn_nsc("nsc-ip", &c_ip, 1, WG_SVC, &[], false)
        .unwrap();
    let conn_ip = tb.wait_connected("nsc-ip", CONNECT).unwrap();
    assert_eq!(links(&c_eth).unwrap()[0].kind, "veth", "ETHERNET => VXLAN");
    assert_eq!(links(&c_ip).unwrap()[0].kind, "tun", "IP => WIREGUARD");
    for n in &tb.nodes {
        let kinds: Vec<_> = links(&n.ns)
            .unwrap()
            .into_iter()
            .filter(|l| l.name != "ul")
            .map(|l| l.kind)
            .collect();
        assert_eq!(
            kinds.iter().filter(|k| *k == "vxlan").count(),
            1,
            "{kinds:?}"
        );
        assert_eq!(
            kinds.iter().filter(|k| *k == "veth").count(),
            1,
            "{kinds:?}"
        );
    }
    assert_eq!(wireguard_workers(&mut tb), 2);
    ping_both_ways(&tb, &conn_eth, &c_eth, &e_eth);
    ping_both_ways(&tb, &conn_ip, &c_ip, &e_ip);
    close_client(&mut tb, "nsc-ip");
    // The VXLAN connection is untouched by the WireGuard one's Close.
    ping_both_ways(&tb, &conn_eth, &c_eth, &e_eth);
    close_client(&mut tb, "nsc-eth");
    assert_clean(&tb, &[&c_eth, &c_ip, &e_eth, &e_ip]);
    assert_wireguard_clean(&mut tb, &udp_before);
}

#[test]
fn two_wireguard_connections_between_the_same_nodes_are_separate_links() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (mut tb, e) = mesh_with_ip_nse(2, 2, CIDR);
    let udp_before = node_udp_sockets(&tb);
    let mut clients = Vec::new();
    for (name, tag) in [("nsc-1", "c1"), ("nsc-2", "c2")] {
        let c = tb.add_pod(tag).unwrap();
        tb.spawn_nsc(name, &c, 1, WG_SVC, &[], false).unwrap();
        clients.push((name, c));
    }
    let mut conns = Vec::new();
    for (name, _) in &clients {
        conns.push(tb.wait_connected(name, CONNECT).unwrap());
    }
    assert_ne!(conns[0].src, conns[1].src, "two clients, two address pairs");
    assert_eq!(links(&e).unwrap().len(), 2, "one TUN per client");
    // A link (worker and socket on its own port) per connection and forwarder.
    assert_eq!(wireguard_workers(&mut tb), 4);
    assert_eq!(node_udp_sockets(&tb).len(), udp_before.len() + 4);
    for ((_, c), conn) in clients.iter().zip(&conns) {
        ping_both_ways(&tb, conn, c, &e);
    }
    close_client(&mut tb, "nsc-1");
    let r = tb
        .ping(
            &clients[1].1,
            conns[1].dst_ip().unwrap(),
            2,
            Duration::from_secs(1),
        )
        .unwrap();
    assert_eq!(r.len(), 2, "nsc-2 after nsc-1 closed");
    assert_eq!(wireguard_workers(&mut tb), 2);
    close_client(&mut tb, "nsc-2");
    assert_clean(&tb, &[&clients[0].1, &clients[1].1, &e]);
    assert_wireguard_clean(&mut tb, &udp_before);
}
