use nsm_api::connectioncontext::{EthernetContext, IpNeighbor, Route};
use nsm_api::mechanisms::kernel;
use nsm_api::mechanisms::wireguard;

use super::*;

fn kernel_mech(url: &str, name: &str) -> Mechanism {
    let mut m = MechanismType::Kernel.mechanism();
    m.set_param(kernel::NETNS_URL, url);
    m.set_param(kernel::INTERFACE_NAME, name);
    m
}

fn vxlan_mech(src: &str, dst: &str, vni: u32) -> Mechanism {
    let mut m = MechanismType::Vxlan.mechanism();
    m.set_param(vxlan::SRC_IP, src);
    m.set_param(vxlan::DST_IP, dst);
    m.set_param(vxlan::VNI, vni.to_string());
    m
}

fn vx(t: Option<TunnelPlan>) -> VxlanPlan {
    match t {
        Some(TunnelPlan::Vxlan(v)) => v,
        other => panic!("a VXLAN tunnel expected: {other:?}"),
    }
}

fn wg(t: &Option<TunnelPlan>) -> &WireguardPlan {
    match t {
        Some(TunnelPlan::Wireguard(w)) => w,
        other => panic!("a WireGuard tunnel expected: {other:?}"),
    }
}

const KEY_A: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
const KEY_B: &str = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=";

fn wireguard_mech() -> Mechanism {
    let mut m = MechanismType::Wireguard.mechanism();
    m.set_param(wireguard::SRC_IP, "169.254.100.1");
    m.set_param(wireguard::SRC_PORT, "40001");
    m.set_param(wireguard::SRC_PUBLIC_KEY, KEY_A);
    m.set_param(wireguard::DST_IP, "169.254.100.2");
    m.set_param(wireguard::DST_PORT, "40002");
    m.set_param(wireguard::DST_PUBLIC_KEY, KEY_B);
    m
}

fn p2p_context() -> ConnectionContext {
    ConnectionContext {
        ip_context: Some(IpContext {
            src_ip_addrs: vec!["169.254.1.101/32".into(), "fd00::101/128".into()],
            dst_ip_addrs: vec!["169.254.1.100/32".into(), "fd00::100/128".into()],
            src_routes: vec![Route {
                prefix: "169.254.1.100/32".into(),
                ..Default::default()
            }],
            dst_routes: vec![Route {
                prefix: "169.254.1.101/32".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn request<'a>(
    incoming: &'a Mechanism,
    outgoing: &'a Mechanism,
    context: &'a ConnectionContext,
) -> PlanRequest<'a> {
    PlanRequest {
        connection_id: "conn-1",
        path_id: "nsc-1",
        incoming,
        outgoing,
        context,
    }
}

#[test]
fn same_node_has_two_veths_mirrored_addresses_and_mtu_9000() {
    let ctx = p2p_context();
    let inc = kernel_mech("file:///proc/10/ns/net", "nsm-1");
    let out = kernel_mech("file:///proc/20/ns/net", "nse-1");
    let p = plan(&PlanConfig::new("fwd-a"), &request(&inc, &out, &ctx)).unwrap();
    assert!(p.tunnel.is_none());
    let [c, e] = &p.pods[..] else {
        panic!("two pods expected: {p:?}")
    };
    assert_eq!((c.role, e.role), (Role::Client, Role::Endpoint));
    assert_eq!(c.netns, PathBuf::from("/proc/10/ns/net"));
    assert_eq!((c.name.as_str(), e.name.as_str()), ("nsm-1", "nse-1"));
    assert_eq!((c.mtu, e.mtu), (9000, 9000));
    assert_eq!(c.addresses[0].to_string(), "169.254.1.101/32");
    assert_eq!(e.addresses[1].to_string(), "fd00::100/128");
    // Link routes to the far side, the src_route deduplicated against them.
    let dests: Vec<String> = c.routes.iter().map(|r| r.destination.to_string()).collect();
    assert_eq!(dests, ["169.254.1.100/32", "fd00::100/128"]);
    assert!(c.routes.iter().all(|r| r.via.is_none()));
    // Static neighbours point at the *far pod's* MAC (L2 cross-connect, no ARP needed).
    assert_eq!(c.neighbours.len(), 2);
    assert!(c.neighbours.iter().all(|n| n.mac == e.mac));
    assert!(e.neighbours.iter().all(|n| n.mac == c.mac));
    assert_ne!(c.node_name, e.node_name);
    assert!(c.node_name.len() <= 15 && c.node_name.starts_with("nsm"));
    assert_eq!(c.alias.to_string(), "nsm:fwd-a:conn-1:client");
}

#[test]
fn client_side_vxlan_points_at_dst_and_lowers_mtu() {
    let mut ctx = p2p_context();
    ctx.mtu = 9000;
    let inc = kernel_mech("/var/run/netns/pod", "nsm-1");
    let out = vxlan_mech("169.254.100.1", "169.254.100.2", 4242);
    let p = plan(&PlanConfig::new("fwd1"), &request(&inc, &out, &ctx)).unwrap();
    let t = vx(p.tunnel.clone());
    assert_eq!(t.local.to_string(), "169.254.100.1");
    assert_eq!(t.remote.to_string(), "169.254.100.2");
    assert_eq!((t.vni, t.port, t.mtu), (4242, 4789, 1450));
    assert_eq!(t.device, "nsx00109212b5");
    assert_eq!(p.pods.len(), 1);
    assert_eq!(p.pods[0].mtu, 1450, "min(context 9000, tunnel 1450)");
    assert_eq!(t.node_interface, p.pods[0].node_name);
    assert_eq!(t.near_mac, p.pods[0].mac);
}

#[test]
fn server_side_vxlan_swaps_ends_and_uses_its_port_and_mtu_parameter() {
    let ctx = p2p_context();
    let mut inc = vxlan_mech("169.254.100.1", "169.254.100.2", 7);
    inc.set_param(vxlan::DST_PORT, "4790");
    inc.set_param(vxlan::MTU, "1400");
    let out = kernel_mech("file:///proc/20/ns/net", "nsm-1");
    let mut cfg = PlanConfig::new("fwd2");
    cfg.vxlan_port = 5000;
    let p = plan(&cfg, &request(&inc, &out, &ctx)).unwrap();
    let t = vx(p.tunnel.clone());
    assert_eq!(
        (t.local.to_string(), t.remote.to_string()),
        ("169.254.100.2".into(), "169.254.100.1".into())
    );
    assert_eq!((t.port, t.mtu), (4790, 1400));
    assert_eq!(p.pods[0].role, Role::Endpoint);
    assert_eq!(p.pods[0].mtu, 1400);
}

#[test]
fn both_forwarders_agree_on_pod_macs() {
    let ctx = p2p_context();
    let k1 = kernel_mech("/proc/1/ns/net", "nsm-1");
    let k2 = kernel_mech("/proc/2/ns/net", "nsm-1");
    let v = vxlan_mech("169.254.100.1", "169.254.100.2", 8);
    let mut r1 = request(&k1, &v, &ctx);
    r1.connection_id = "fwd1-conn";
    let mut r2 = request(&v, &k2, &ctx);
    r2.connection_id = "fwd2-conn";
    let t1 = vx(plan(&PlanConfig::new("fwd1"), &r1).unwrap().tunnel);
    let t2 = vx(plan(&PlanConfig::new("fwd2"), &r2).unwrap().tunnel);
    assert_eq!(t1.far_mac, t2.near_mac);
    assert_eq!(t1.near_mac, t2.far_mac);
    assert_ne!(t1.near_mac, t1.far_mac);
}

#[test]
fn same_vni_to_two_remotes_shares_one_device_but_not_macs() {
    // Three nodes: clients on node1 and node3, endpoint on node2, fwd2 got VNI 10 from both.
    let ctx = p2p_context();
    let from1 = vxlan_mech("169.254.100.1", "169.254.100.2", 10);
    let from3 = vxlan_mech("169.254.100.3", "169.254.100.2", 10);
    let ka = kernel_mech("/proc/5/ns/net", "nsm-1");
    let kb = kernel_mech("/proc/5/ns/net", "nsm-2");
    let mut ra = request(&from1, &ka, &ctx);
    ra.path_id = "nsc-a";
    ra.connection_id = "a";
    let mut rb = request(&from3, &kb, &ctx);
    rb.path_id = "nsc-b";
    rb.connection_id = "b";
    let cfg = PlanConfig::new("fwd2");
    let (a, b) = (plan(&cfg, &ra).unwrap(), plan(&cfg, &rb).unwrap());
    let (ta, tb) = (vx(a.tunnel.clone()), vx(b.tunnel.clone()));
    assert_eq!(
        ta.device, tb.device,
        "Linux allows one device per VNI and port"
    );
    assert_ne!(ta.remote, tb.remote);
    assert_ne!(ta.near_mac, tb.near_mac, "receive demux key");
    assert_ne!(ta.far_mac, tb.far_mac, "transmit FDB key");
    assert_ne!(a.pods[0].node_name, b.pods[0].node_name);
}

#[test]
fn ethernet_context_macs_win_and_routes_get_gateways() {
    let mut ctx = p2p_context();
    ctx.ethernet_context = Some(EthernetContext {
        src_mac: "02:00:00:00:00:01".into(),
        dst_mac: "02:00:00:00:00:02".into(),
        vlan_tag: 0,
    });
    let ip = ctx.ip_context.as_mut().unwrap();
    ip.src_routes.push(Route {
        prefix: "169.254.50.0/24".into(),
        ..Default::default()
    });
    ip.src_routes.push(Route {
        prefix: "169.254.60.0/24".into(),
        next_hop: "169.254.1.99".into(),
    });
    ip.ip_neighbors.push(IpNeighbor {
        ip: "169.254.1.7".into(),
        hardware_address: "02:aa:bb:cc:dd:ee".into(),
    });
    let inc = kernel_mech("/proc/1/ns/net", "nsm-1");
    let out = kernel_mech("/proc/2/ns/net", "nsm-1");
    let p = plan(&PlanConfig::new("f"), &request(&inc, &out, &ctx)).unwrap();
    let c = &p.pods[0];
    assert_eq!(c.mac, [2, 0, 0, 0, 0, 1]);
    assert_eq!(p.pods[1].mac, [2, 0, 0, 0, 0, 2]);
    let via = |d: &str| {
        c.routes
            .iter()
            .find(|r| r.destination.to_string() == d)
            .unwrap()
            .via
    };
    assert_eq!(
        via("169.254.50.0/24"),
        Some("169.254.1.100".parse().unwrap())
    );
    assert_eq!(
        via("169.254.60.0/24"),
        Some("169.254.1.99".parse().unwrap())
    );
    assert!(
        c.neighbours
            .iter()
            .any(|n| n.mac == [2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee])
    );
}

#[test]
fn bad_inputs_are_typed_errors() {
    let ctx = p2p_context();
    let good = kernel_mech("/proc/2/ns/net", "nsm-1");
    let cfg = PlanConfig::new("f");
    let long = kernel_mech("/proc/1/ns/net", "sixteen-bytes-xx");
    let e = plan(&cfg, &request(&long, &good, &ctx)).unwrap_err();
    assert!(
        matches!(e, PlanError::BadInterfaceName { side: "client", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("longer than 15 bytes"));

    let inode = kernel_mech("inode://4/4026532", "nsm-1");
    let e = plan(&cfg, &request(&inode, &good, &ctx)).unwrap_err();
    assert!(matches!(e, PlanError::BadNetnsUrl { .. }), "{e}");
    assert!(e.to_string().contains("recvfd"), "{e}");
    assert_eq!(
        netns_path("client", "file:///proc/77/fd/9").unwrap(),
        PathBuf::from("/proc/77/fd/9"),
        "an fd recvfd received"
    );
    let own = kernel_mech("file:///proc/thread-self/ns/net", "nsm-1");
    let e = plan(&cfg, &request(&own, &good, &ctx)).unwrap_err();
    assert!(e.to_string().contains("sender's own namespace"), "{e}");
    let relative = kernel_mech("file://proc/1/ns/net", "nsm-1");
    assert!(plan(&cfg, &request(&relative, &good, &ctx)).is_err());

    let mut no_ns = MechanismType::Kernel.mechanism();
    no_ns.set_param(kernel::INTERFACE_NAME, "x");
    assert_eq!(
        plan(&cfg, &request(&no_ns, &good, &ctx)).unwrap_err(),
        PlanError::MissingNetns { side: "client" }
    );

    let v = vxlan_mech("169.254.100.1", "not-an-ip", 5);
    let e = plan(&cfg, &request(&good, &v, &ctx)).unwrap_err();
    assert!(
        matches!(e, PlanError::BadVxlan { key: "dst_ip", .. }),
        "{e}"
    );
    let v0 = vxlan_mech("169.254.100.1", "169.254.100.2", 0);
    assert!(matches!(
        plan(&cfg, &request(&good, &v0, &ctx)).unwrap_err(),
        PlanError::BadVxlan { key: "vni", .. }
    ));
    let vv = vxlan_mech("169.254.100.1", "169.254.100.2", 5);
    assert!(matches!(
        plan(&cfg, &request(&vv, &vv, &ctx)).unwrap_err(),
        PlanError::Unsupported { .. }
    ));
    assert!(matches!(
        plan(&PlanConfig::new("a:b"), &request(&good, &good, &ctx)).unwrap_err(),
        PlanError::BadOwner(_)
    ));
}

#[test]
fn client_side_wireguard_is_one_tun_and_a_link_to_dst() {
    let mut ctx = p2p_context();
    ctx.mtu = 9000;
    let inc = kernel_mech("/proc/1/ns/net", "nsm-1");
    let out = wireguard_mech();
    let p = plan(&PlanConfig::new("fwd1"), &request(&inc, &out, &ctx)).unwrap();
    let [c] = &p.pods[..] else {
        panic!("one pod expected: {p:?}")
    };
    assert_eq!(
        (c.kind, c.role, c.name.as_str()),
        (PodKind::Tun, Role::Client, "nsm-1")
    );
    assert!(c.node_name.is_empty() && c.neighbours.is_empty() && c.mac == [0; 6]);
    assert_eq!(c.mtu, 1420, "min(context 9000, underlay 1500 - 80)");
    assert_eq!(c.alias.to_string(), "nsm:fwd1:conn-1:client");
    let w = wg(&p.tunnel);
    assert_eq!(w.side, Side::Client);
    assert_eq!(w.local.to_string(), "169.254.100.1:40001");
    assert_eq!(w.peer.to_string(), "169.254.100.2:40002");
    assert_eq!(w.local_public.to_string(), KEY_A);
    assert_eq!(w.peer_public.to_string(), KEY_B);
    assert_eq!(w.keepalive, 10);
    // The far pod's addresses (the endpoint's: dst_ip_addrs) are what may come out of the tunnel.
    let allowed: Vec<String> = w.allowed.iter().map(ToString::to_string).collect();
    assert_eq!(allowed, ["169.254.1.100/32", "fd00::100/128"]);
}

#[test]
fn server_side_wireguard_swaps_ends_and_takes_the_mechanism_mtu() {
    let ctx = p2p_context();
    let mut inc = wireguard_mech();
    inc.set_param(wireguard::MTU, "1400");
    let out = kernel_mech("/proc/2/ns/net", "nse-1");
    let p = plan(&PlanConfig::new("fwd2"), &request(&inc, &out, &ctx)).unwrap();
    let [e] = &p.pods[..] else {
        panic!("one pod expected: {p:?}")
    };
    assert_eq!(
        (e.kind, e.role, e.mtu),
        (PodKind::Tun, Role::Endpoint, 1400)
    );
    let w = wg(&p.tunnel);
    assert_eq!(w.side, Side::Server);
    assert_eq!(w.local.to_string(), "169.254.100.2:40002");
    assert_eq!(w.peer.to_string(), "169.254.100.1:40001");
    assert_eq!(
        (w.local_public.to_string(), w.peer_public.to_string()),
        (KEY_B.into(), KEY_A.into())
    );
    let allowed: Vec<String> = w.allowed.iter().map(ToString::to_string).collect();
    assert_eq!(allowed, ["169.254.1.101/32", "fd00::101/128"]);
    // Planned twice, the same plan (a refresh changes nothing).
    assert_eq!(
        p,
        plan(&PlanConfig::new("fwd2"), &request(&inc, &out, &ctx)).unwrap()
    );
}

#[test]
fn wireguard_routes_are_device_routes_and_allowed() {
    let mut ctx = p2p_context();
    let ip = ctx.ip_context.as_mut().unwrap();
    ip.src_routes.push(Route {
        prefix: "169.254.50.0/24".into(),
        ..Default::default()
    });
    ip.src_routes.push(Route {
        prefix: "169.254.60.0/24".into(),
        next_hop: "169.254.1.99".into(),
    });
    let inc = kernel_mech("/proc/1/ns/net", "nsm-1");
    let out = wireguard_mech();
    let p = plan(&PlanConfig::new("f"), &request(&inc, &out, &ctx)).unwrap();
    let c = &p.pods[0];
    assert!(c.routes.iter().all(|r| r.via.is_none()), "{:?}", c.routes);
    let dests: Vec<String> = c.routes.iter().map(|r| r.destination.to_string()).collect();
    assert_eq!(
        dests,
        [
            "169.254.1.100/32",
            "fd00::100/128",
            "169.254.50.0/24",
            "169.254.60.0/24"
        ]
    );
    let allowed: Vec<String> = wg(&p.tunnel)
        .allowed
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(allowed, dests);
}

#[test]
fn wireguard_mtu_below_what_the_family_needs_is_refused() {
    let mut ctx = p2p_context();
    ctx.mtu = 1200;
    let inc = kernel_mech("/proc/1/ns/net", "nsm-1");
    let out = wireguard_mech();
    let cfg = PlanConfig::new("f");
    assert_eq!(
        plan(&cfg, &request(&inc, &out, &ctx)).unwrap_err(),
        PlanError::MtuTooSmall {
            mtu: 1200,
            least: 1280,
            family: "IPv6"
        }
    );
    // IPv4 only: 1200 is fine, 60 is not.
    let ip = ctx.ip_context.as_mut().unwrap();
    ip.src_ip_addrs.truncate(1);
    ip.dst_ip_addrs.truncate(1);
    assert_eq!(
        plan(&cfg, &request(&inc, &out, &ctx)).unwrap().pods[0].mtu,
        1200
    );
    ctx.mtu = 60;
    assert!(matches!(
        plan(&cfg, &request(&inc, &out, &ctx)).unwrap_err(),
        PlanError::MtuTooSmall { least: 68, .. }
    ));
}

#[test]
fn bad_wireguard_parameters_name_the_parameter() {
    let ctx = p2p_context();
    let inc = kernel_mech("/proc/1/ns/net", "nsm-1");
    let cfg = PlanConfig::new("f");
    let cases: [(&str, &str, &str); 8] = [
        (wireguard::SRC_PUBLIC_KEY, "", "src_public_key"),
        (wireguard::DST_PUBLIC_KEY, "AAAA", "dst_public_key"),
        (
            wireguard::DST_PUBLIC_KEY,
            "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo=",
            "dst_public_key",
        ),
        (wireguard::SRC_IP, "x", "src_ip"),
        (wireguard::DST_PORT, "0", "dst_port"),
        (wireguard::SRC_PORT, "65536", "src_port"),
        (wireguard::DST_PORT, "x", "dst_port"),
        (wireguard::DST_IP, "fd00::2", "dst_ip"),
    ];
    for (key, value, want) in cases {
        let mut out = wireguard_mech();
        out.set_param(key, value);
        let e = plan(&cfg, &request(&inc, &out, &ctx)).unwrap_err();
        assert!(
            matches!(&e, PlanError::BadWireguard { key, .. } if *key == want),
            "{key}={value:?}: {e}"
        );
    }
}

#[test]
fn other_wireguard_pairs_are_unsupported() {
    let ctx = p2p_context();
    let w = wireguard_mech();
    let v = vxlan_mech("169.254.100.1", "169.254.100.2", 5);
    let cfg = PlanConfig::new("f");
    for (inc, out) in [(&w, &w), (&w, &v), (&v, &w)] {
        assert!(matches!(
            plan(&cfg, &request(inc, out, &ctx)).unwrap_err(),
            PlanError::Unsupported { .. }
        ));
    }
    // Local KERNEL <-> KERNEL stays two veths whatever the payload.
    let k1 = kernel_mech("/proc/1/ns/net", "nsm-1");
    let k2 = kernel_mech("/proc/2/ns/net", "nse-1");
    let p = plan(&cfg, &request(&k1, &k2, &ctx)).unwrap();
    assert!(p.pods.iter().all(|p| p.kind == PodKind::Veth));
}
