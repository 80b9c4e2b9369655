//! The pure planner: mechanisms + connection context → the kernel state one connection needs.
//!
//! A forwarder sits between an *incoming* mechanism (its server side: the client pod, or the remote
//! forwarder) and an *outgoing* one (its client side: the endpoint pod, or the remote forwarder):
//!
//! | incoming | outgoing | plan |
//! |---|---|---|
//! | KERNEL | KERNEL | veth into the client pod + veth into the endpoint pod, node ends cross-connected |
//! | KERNEL | VXLAN  | veth into the client pod, cross-connected with the VXLAN tunnel to `dst_ip` |
//! | VXLAN  | KERNEL | VXLAN tunnel from `src_ip`, cross-connected with a veth into the endpoint pod |
//! | KERNEL | WIREGUARD | a TUN in the client pod, joined by a userspace WireGuard link to `dst_ip:dst_port` |
//! | WIREGUARD | KERNEL | a TUN in the endpoint pod, joined by a userspace WireGuard link to `src_ip:src_port` |
//!
//! Every other pair (WIREGUARD ↔ WIREGUARD, WIREGUARD ↔ VXLAN, …) is [`PlanError::Unsupported`].
//!
//! **WireGuard (payload IP, docs/wireguard.md).** The pod gets a layer-3 TUN ([`PodKind::Tun`]): no
//! node veth, no tc mirred, no MAC, FDB or neighbours; a route's gateway means nothing on a
//! point-to-point link, so every route is a device route. The link's worker thread is the
//! cross-connect. Pod MTU = min(context MTU, the mechanism's `MTU` or underlay − 80); below 1280 with
//! IPv6 addresses (68 with IPv4 only) the plan is refused. The [`WireguardPlan`] carries public data
//! only (addresses, ports, public keys, allowed sources), so a refresh compares equal and changes
//! nothing; the key pair and socket are looked up by the executor under `local_public`.
//!
//! **Why two veths on one node, not one veth between the pods:** every side owns one interface and the
//! cross-connect only joins two node-side interfaces (sdk-vpp's structure, reference §2.1), so refresh,
//! heal and close handle each side alike, and the node can observe every connection's traffic.
//!
//! **Cross-connect = tc `ingress` + `u32` + `mirred egress redirect`** in both directions (reference §4.2:
//! it matched or beat a bridge in every pass, needs no per-connection bridge, and keeps every offload).
//!
//! **Same VNI towards two remotes.** Linux allows one VXLAN device per (VNI, UDP port, namespace), while
//! NSM only keeps VNIs unique per (remote, VNI) — so a node serving two remote clients may get the same
//! VNI twice. We therefore create **one VXLAN device per (VNI, port)**, without a fixed remote, shared by
//! every connection with that VNI, and tell connections apart by the pods' MAC addresses:
//! - both pod interfaces get MACs that both forwarders know (the connection's `EthernetContext`, else
//!   derived from the connection's first path-segment id), and the pods get **static neighbours** for
//!   the far side's addresses (as sdk-vpp's veth variant does), so no broadcast ever needs to cross;
//! - transmit: an FDB entry `far pod MAC → remote tunnel IP` on the shared device;
//! - receive: a `u32` filter on the shared device's ingress matching the *near* pod's MAC as Ethernet
//!   destination, redirecting to that connection's node-side veth.
//!
//! Frames to unknown MACs (broadcast, other connections) match no FDB entry or filter and are dropped, so
//! connections stay isolated. The device is plain (not `external`), so the kernel fast path and its
//! GSO/GRO are exactly the ones measured in reference §4.3. Unlike `external` + eBPF demux (the other
//! option), this needs no BPF programs, which cannot be compiled on these machines.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use nsm_api::Mechanism;
use nsm_api::connectioncontext::{ConnectionContext, IpContext};
use nsm_api::mechanisms::{MechanismType, TunnelEnd, vxlan, wireguard};
pub use nsm_core::metadata::Side;

use crate::error::PlanError;
use crate::names::{self, IFNAME_MAX, LinkAlias, Role};
use crate::wireguard::{PERSISTENT_KEEPALIVE, PublicKey};

/// Forwarder-wide inputs of the planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanConfig {
    /// The forwarder's name; part of every alias, so two forwarders sharing a node never touch each
    /// other's links.
    pub owner: String,
    /// `NSM_VXLAN_PORT`; 0 means 4789.
    pub vxlan_port: u16,
    /// MTU of the underlay link carrying tunnel traffic.
    pub underlay_mtu: u32,
    /// MTU of purely local connections when the context gives none (NSM: 9000).
    pub local_mtu: u32,
}

impl PlanConfig {
    /// Defaults: port 4789, underlay 1500, local 9000.
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            vxlan_port: vxlan::DEFAULT_PORT,
            underlay_mtu: 1500,
            local_mtu: 9000,
        }
    }

    /// Rejects owners that would make aliases ambiguous.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.owner.is_empty() || self.owner.contains(':') {
            return Err(PlanError::BadOwner(self.owner.clone()));
        }
        Ok(())
    }

    fn port(&self) -> u16 {
        if self.vxlan_port == 0 {
            vxlan::DEFAULT_PORT
        } else {
            self.vxlan_port
        }
    }
}

/// One connection as the forwarder sees it after the downstream Request succeeded.
#[derive(Debug, Clone, Copy)]
pub struct PlanRequest<'a> {
    /// This forwarder's connection id.
    pub connection_id: &'a str,
    /// An id both forwarders of a connection share (the first path segment's id); seeds the pod MACs when
    /// the context carries none.
    pub path_id: &'a str,
    /// Server-side mechanism (towards the client).
    pub incoming: &'a Mechanism,
    /// Client-side mechanism (towards the endpoint).
    pub outgoing: &'a Mechanism,
    /// The connection context the endpoint returned.
    pub context: &'a ConnectionContext,
}

/// The desired kernel state of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// This forwarder's connection id.
    pub connection_id: String,
    /// Interfaces into pods (one or two).
    pub pods: Vec<PodInterface>,
    /// The tunnel, for a remote connection.
    pub tunnel: Option<TunnelPlan>,
}

/// What kind of interface a pod gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodKind {
    /// A veth whose node end is cross-connected (KERNEL ↔ KERNEL, KERNEL ↔ VXLAN).
    Veth,
    /// A layer-3 TUN made by the WireGuard link (KERNEL ↔ WIREGUARD): no node end, no MAC, no
    /// neighbours, device routes only; the link's worker is the cross-connect.
    Tun,
}

/// An interface in a pod's namespace: a veth whose pod end lives there, or a TUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// Whose pod.
    pub role: Role,
    /// Veth or TUN.
    pub kind: PodKind,
    /// The pod's network namespace file.
    pub netns: PathBuf,
    /// Pod-end name (the mechanism's `name`).
    pub name: String,
    /// Node-end name (derived from owner + connection id + role); empty for a TUN.
    pub node_name: String,
    /// Alias put on both ends (on the TUN for a TUN).
    pub alias: LinkAlias,
    /// Pod-end MAC; zero for a TUN.
    pub mac: [u8; 6],
    /// MTU of both ends.
    pub mtu: u32,
    /// Addresses of the pod end.
    pub addresses: Vec<IpNet>,
    /// Routes in the pod via the pod end (never with a gateway on a TUN).
    pub routes: Vec<RoutePlan>,
    /// Permanent neighbours in the pod; none on a TUN.
    pub neighbours: Vec<NeighbourPlan>,
}

/// A route in a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// Destination prefix.
    pub destination: IpNet,
    /// Gateway (installed `onlink`); `None` = scope link.
    pub via: Option<IpAddr>,
}

/// A permanent neighbour entry in a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourPlan {
    /// The address.
    pub ip: IpAddr,
    /// Its MAC.
    pub mac: [u8; 6],
}

/// The tunnel part of a remote connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelPlan {
    /// VXLAN (payload ETHERNET).
    Vxlan(VxlanPlan),
    /// WireGuard (payload IP).
    Wireguard(WireguardPlan),
}

impl TunnelPlan {
    /// The VXLAN part, if this is a VXLAN tunnel.
    pub fn vxlan(&self) -> Option<&VxlanPlan> {
        match self {
            Self::Vxlan(v) => Some(v),
            Self::Wireguard(_) => None,
        }
    }
}

/// The VXLAN part of a remote connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPlan {
    /// Shared device name (per VNI and port).
    pub device: String,
    /// Its alias.
    pub alias: LinkAlias,
    /// VNI.
    pub vni: u32,
    /// UDP port (source and destination).
    pub port: u16,
    /// This forwarder's tunnel address.
    pub local: IpAddr,
    /// The peer forwarder's tunnel address.
    pub remote: IpAddr,
    /// Device MTU (underlay − 50, or the mechanism's `MTU`).
    pub mtu: u32,
    /// MAC of the pod on this node: frames to it are demultiplexed to this connection.
    pub near_mac: [u8; 6],
    /// MAC of the pod behind the tunnel: the FDB sends frames for it to `remote`.
    pub far_mac: [u8; 6],
    /// The node-side veth joined to the tunnel.
    pub node_interface: String,
}

/// The WireGuard part of a remote connection: public data only (the key pair and the bound socket
/// are held by the forwarder's WireGuard ends under `local_public`), so plans compare equal on refresh.
/// The pod interface (a [`PodKind::Tun`]) is the plan's one pod; its MTU is the link's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardPlan {
    /// Which end of the tunnel this forwarder is: `Client` when it requested WIREGUARD from the next
    /// hop (its `src_*`), `Server` when it was asked for it (its `dst_*`).
    pub side: Side,
    /// This forwarder's tunnel IP and port.
    pub local: SocketAddr,
    /// This forwarder's public key for the connection.
    pub local_public: PublicKey,
    /// The far forwarder's tunnel IP and port.
    pub peer: SocketAddr,
    /// The far forwarder's public key.
    pub peer_public: PublicKey,
    /// Persistent keepalive in seconds (NSM: 10).
    pub keepalive: u16,
    /// Sources accepted from the peer: the far pod's addresses and the prefixes routed into the
    /// tunnel (WireGuard's allowed IPs).
    pub allowed: Vec<IpNet>,
}

/// The remote mechanism of a connection, and whether this forwarder serves it (it is the incoming
/// one).
#[derive(Clone, Copy)]
enum Remote<'a> {
    Vxlan(&'a Mechanism, bool),
    Wireguard(&'a Mechanism, bool),
}

impl<'a> Remote<'a> {
    fn mechanism(self) -> &'a Mechanism {
        match self {
            Self::Vxlan(m, _) | Self::Wireguard(m, _) => m,
        }
    }

    fn overhead(self) -> u32 {
        match self {
            Self::Vxlan(..) => vxlan::OVERHEAD,
            Self::Wireguard(..) => wireguard::OVERHEAD,
        }
    }
}

/// The tunnel end as seen from this forwarder.
struct TunnelEnds {
    local: IpAddr,
    remote: IpAddr,
    port: Option<u16>,
}

/// Builds the plan. Pure: no system calls.
pub fn plan(config: &PlanConfig, req: &PlanRequest<'_>) -> Result<Plan, PlanError> {
    config.validate()?;
    let ip = req.context.ip_context.clone().unwrap_or_default();
    let (client_mac, endpoint_mac) = pod_macs(req)?;
    let kind = |m: &Mechanism| m.mechanism_type();
    let (incoming, outgoing) = (kind(req.incoming), kind(req.outgoing));
    use MechanismType::{Kernel, Vxlan, Wireguard};
    let remote = match (incoming, outgoing) {
        (Some(Kernel), Some(Kernel)) => None,
        (Some(Kernel), Some(Vxlan)) => Some(Remote::Vxlan(req.outgoing, false)),
        (Some(Vxlan), Some(Kernel)) => Some(Remote::Vxlan(req.incoming, true)),
        (Some(Kernel), Some(Wireguard)) => Some(Remote::Wireguard(req.outgoing, false)),
        (Some(Wireguard), Some(Kernel)) => Some(Remote::Wireguard(req.incoming, true)),
        _ => {
            return Err(PlanError::Unsupported {
                incoming: req.incoming.r#type.clone(),
                outgoing: req.outgoing.r#type.clone(),
            });
        }
    };
    let tunnel_mtu = remote.map(|r| {
        r.mechanism()
            .mtu()
            .unwrap_or_else(|| config.underlay_mtu.saturating_sub(r.overhead()))
    });
    let pod_mtu = match (req.context.mtu, tunnel_mtu) {
        (0, None) => config.local_mtu,
        (0, Some(t)) => t,
        (c, None) => c,
        (c, Some(t)) => c.min(t),
    };
    let pod_kind = match remote {
        Some(Remote::Wireguard(..)) => PodKind::Tun,
        _ => PodKind::Veth,
    };
    let mut pods = Vec::new();
    let sides = [
        (
            incoming,
            Role::Client,
            req.incoming,
            client_mac,
            endpoint_mac,
        ),
        (
            outgoing,
            Role::Endpoint,
            req.outgoing,
            endpoint_mac,
            client_mac,
        ),
    ];
    for (kind, role, m, mac, far_mac) in sides {
        if kind == Some(MechanismType::Kernel) {
            let mut pod = pod_interface(config, req.connection_id, role, m, &ip)?;
            pod.mtu = pod_mtu;
            match pod_kind {
                PodKind::Veth => {
                    pod.mac = mac;
                    pod.neighbours = neighbours(role, &ip, far_mac)?;
                }
                PodKind::Tun => into_tun(&mut pod)?,
            }
            pods.push(pod);
        }
    }
    let tunnel = match remote {
        None => None,
        Some(Remote::Vxlan(m, served)) => {
            let mtu = tunnel_mtu.unwrap_or(pod_mtu);
            let ends = tunnel_ends(m, served)?;
            let port = ends.port.unwrap_or_else(|| config.port());
            let vni = m.vni().filter(|v| *v != 0).ok_or(PlanError::BadVxlan {
                key: vxlan::VNI,
                reason: format!("{:?} is not a VNI in 1..2^24", m.param(vxlan::VNI)),
            })?;
            // The pod on this node is the client pod when we serve the tunnel's far end as its client.
            let (near_mac, far_mac) = if served {
                (endpoint_mac, client_mac)
            } else {
                (client_mac, endpoint_mac)
            };
            Some(TunnelPlan::Vxlan(VxlanPlan {
                device: names::vxlan_device_name(vni, port),
                alias: LinkAlias {
                    owner: config.owner.clone(),
                    id: format!("{vni}/{port}"),
                    role: Role::Tunnel,
                },
                vni,
                port,
                local: ends.local,
                remote: ends.remote,
                mtu,
                near_mac,
                far_mac,
                node_interface: pods
                    .first()
                    .map(|p| p.node_name.clone())
                    .unwrap_or_default(),
            }))
        }
        Some(Remote::Wireguard(m, served)) => {
            let pod = pods.first().ok_or(PlanError::Unsupported {
                incoming: req.incoming.r#type.clone(),
                outgoing: req.outgoing.r#type.clone(),
            })?;
            Some(TunnelPlan::Wireguard(wireguard_plan(m, served, pod, &ip)?))
        }
    };
    Ok(Plan {
        connection_id: req.connection_id.to_string(),
        pods,
        tunnel,
    })
}

/// Turns a planned veth into a TUN: no node end, MAC or neighbours; a gateway means nothing on a
/// point-to-point layer-3 link, so every route becomes a device route. Checks the MTU against the
/// pod's address families (IPv6 needs 1280, IPv4 68).
fn into_tun(pod: &mut PodInterface) -> Result<(), PlanError> {
    pod.kind = PodKind::Tun;
    pod.node_name = String::new();
    pod.mac = [0; 6];
    pod.neighbours = Vec::new();
    for r in &mut pod.routes {
        r.via = None;
    }
    let v6 = pod.addresses.iter().any(|a| a.addr().is_ipv6());
    let least = if v6 { IPV6_MIN_MTU } else { IPV4_MIN_MTU };
    if pod.mtu < least {
        return Err(PlanError::MtuTooSmall {
            mtu: pod.mtu,
            least,
            family: if v6 { "IPv6" } else { "IPv4" },
        });
    }
    Ok(())
}

/// The least MTU IPv6 works with (RFC 8200).
const IPV6_MIN_MTU: u32 = 1280;
/// The least MTU IPv4 works with (RFC 791).
const IPV4_MIN_MTU: u32 = 68;

fn wireguard_plan(
    m: &Mechanism,
    served: bool,
    pod: &PodInterface,
    ip: &IpContext,
) -> Result<WireguardPlan, PlanError> {
    let bad = |key: &'static str, reason: String| PlanError::BadWireguard { key, reason };
    let addr = |end: TunnelEnd| -> Result<SocketAddr, PlanError> {
        let v = m.tunnel_ip(end).unwrap_or_default();
        let ip: IpAddr = v
            .parse()
            .map_err(|_| bad(end.ip_key(), format!("{v:?} is not an IP address")))?;
        let p = m.tunnel_port(end).unwrap_or_default();
        let port = p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(end.port_key(), format!("{p:?} is not a port in 1..65535")))?;
        Ok(SocketAddr::new(ip, port))
    };
    let key = |end: TunnelEnd| -> Result<PublicKey, PlanError> {
        let v = m.wireguard_public_key(end).unwrap_or_default();
        v.parse::<PublicKey>()
            .map_err(|e| bad(end.public_key_key(), e.to_string()))
    };
    let src = addr(TunnelEnd::Src)?;
    let dst = addr(TunnelEnd::Dst)?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(bad(
            wireguard::DST_IP,
            format!("{} and {} are of different families", src.ip(), dst.ip()),
        ));
    }
    let src_key = key(TunnelEnd::Src)?;
    let dst_key = key(TunnelEnd::Dst)?;
    let (side, local, local_public, peer, peer_public) = if served {
        (Side::Server, dst, dst_key, src, src_key)
    } else {
        (Side::Client, src, src_key, dst, dst_key)
    };
    // What the pod routes into the tunnel is what may come out of it: the far pod's addresses and
    // the prefixes routed to it.
    let far = match pod.role {
        Role::Client => &ip.dst_ip_addrs,
        _ => &ip.src_ip_addrs,
    };
    let mut allowed: Vec<IpNet> = Vec::new();
    let routed = pod.routes.iter().map(|r| r.destination);
    for net in parse_nets("ip_context (far addresses)", far)?
        .into_iter()
        .map(|n| n.trunc())
        .chain(routed)
    {
        if !allowed.contains(&net) {
            allowed.push(net);
        }
    }
    Ok(WireguardPlan {
        side,
        local,
        local_public,
        peer,
        peer_public,
        keepalive: PERSISTENT_KEEPALIVE,
        allowed,
    })
}

fn pod_macs(req: &PlanRequest<'_>) -> Result<([u8; 6], [u8; 6]), PlanError> {
    let eth = req.context.ethernet_context.clone().unwrap_or_default();
    let pick = |field: &'static str, value: &str, seed: &str| {
        if value.is_empty() {
            return Ok(names::derived_mac(&[req.path_id, seed]));
        }
        names::parse_mac(value).ok_or(PlanError::BadContext {
            field,
            value: value.to_string(),
        })
    };
    Ok((
        pick("ethernet_context.src_mac", &eth.src_mac, "src")?,
        pick("ethernet_context.dst_mac", &eth.dst_mac, "dst")?,
    ))
}

fn tunnel_ends(m: &Mechanism, served: bool) -> Result<TunnelEnds, PlanError> {
    let ip = |key: &'static str| -> Result<IpAddr, PlanError> {
        let v = m.param(key).unwrap_or_default();
        v.parse().map_err(|_| PlanError::BadVxlan {
            key,
            reason: format!("{v:?} is not an IP address"),
        })
    };
    let port = |key: &'static str| -> Result<Option<u16>, PlanError> {
        match m.param(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| PlanError::BadVxlan {
                key,
                reason: format!("{v:?} is not a port"),
            }),
        }
    };
    // Each forwarder uses its own port as source and destination (Go: server dst_port, client src_port).
    let (local, remote, port) = if served {
        (
            ip(vxlan::DST_IP)?,
            ip(vxlan::SRC_IP)?,
            port(vxlan::DST_PORT)?,
        )
    } else {
        (
            ip(vxlan::SRC_IP)?,
            ip(vxlan::DST_IP)?,
            port(vxlan::SRC_PORT)?,
        )
    };
    if local.is_ipv4() != remote.is_ipv4() {
        return Err(PlanError::BadVxlan {
            key: vxlan::DST_IP,
            reason: format!("{local} and {remote} are of different families"),
        });
    }
    Ok(TunnelEnds {
        local,
        remote,
        port,
    })
}

fn side_name(role: Role) -> &'static str {
    match role {
        Role::Client => "client",
        _ => "endpoint",
    }
}

fn pod_interface(
    config: &PlanConfig,
    connection_id: &str,
    role: Role,
    m: &Mechanism,
    ip: &IpContext,
) -> Result<PodInterface, PlanError> {
    let side = side_name(role);
    let url = m.inode_url().ok_or(PlanError::MissingNetns { side })?;
    let netns = netns_path(side, url)?;
    let name = m.interface_name().unwrap_or_default().to_string();
    if let Some(reason) = invalid_interface_name(&name) {
        return Err(PlanError::BadInterfaceName { side, name, reason });
    }
    let (near, far, extra) = match role {
        Role::Client => (&ip.src_ip_addrs, &ip.dst_ip_addrs, &ip.src_routes),
        _ => (&ip.dst_ip_addrs, &ip.src_ip_addrs, &ip.dst_routes),
    };
    let near = parse_nets("ip_context (own addresses)", near)?;
    let far = parse_nets("ip_context (far addresses)", far)?;
    let mut routes = Vec::new();
    let mut push = |r: RoutePlan| {
        if !routes
            .iter()
            .any(|x: &RoutePlan| x.destination == r.destination)
        {
            routes.push(r);
        }
    };
    for f in &far {
        if !near.iter().any(|n| n.contains(&f.addr())) {
            push(RoutePlan {
                destination: f.trunc(),
                via: None,
            });
        }
    }
    for r in extra {
        let destination = parse_net("ip_context routes", &r.prefix)?.trunc();
        let via = if !r.next_hop.is_empty() {
            Some(r.next_hop.parse().map_err(|_| PlanError::BadContext {
                field: "ip_context route nextHop",
                value: r.next_hop.clone(),
            })?)
        } else if far.iter().any(|f| f.contains(&destination.addr())) {
            None
        } else {
            far.iter()
                .map(IpNet::addr)
                .find(|a| a.is_ipv4() == destination.addr().is_ipv4())
        };
        push(RoutePlan { destination, via });
    }
    Ok(PodInterface {
        role,
        kind: PodKind::Veth,
        netns,
        name,
        node_name: names::node_interface_name(&config.owner, connection_id, role),
        alias: LinkAlias {
            owner: config.owner.clone(),
            id: connection_id.to_string(),
            role,
        },
        mac: [0; 6],
        mtu: 0,
        addresses: near,
        routes,
        neighbours: Vec::new(),
    })
}

fn neighbours(
    role: Role,
    ip: &IpContext,
    far_mac: [u8; 6],
) -> Result<Vec<NeighbourPlan>, PlanError> {
    let far = match role {
        Role::Client => &ip.dst_ip_addrs,
        _ => &ip.src_ip_addrs,
    };
    let mut out: Vec<NeighbourPlan> = parse_nets("ip_context (far addresses)", far)?
        .into_iter()
        .map(|n| NeighbourPlan {
            ip: n.addr(),
            mac: far_mac,
        })
        .collect();
    if role == Role::Client {
        for n in &ip.ip_neighbors {
            let bad = |value: &str| PlanError::BadContext {
                field: "ip_context.ip_neighbors",
                value: value.to_string(),
            };
            out.push(NeighbourPlan {
                ip: n.ip.parse().map_err(|_| bad(&n.ip))?,
                mac: names::parse_mac(&n.hardware_address)
                    .ok_or_else(|| bad(&n.hardware_address))?,
            });
        }
    }
    Ok(out)
}

fn parse_net(field: &'static str, s: &str) -> Result<IpNet, PlanError> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| PlanError::BadContext {
            field,
            value: s.to_string(),
        })
}

fn parse_nets(field: &'static str, v: &[String]) -> Result<Vec<IpNet>, PlanError> {
    v.iter().map(|s| parse_net(field, s)).collect()
}

/// The namespace file an inode URL names: `file:///proc/<pid>/ns/net`, `file:///proc/<pid>/fd/<n>` (an
/// fd `recvfd` received), `file:///var/run/netns/x` or a bare absolute path. `inode://dev/ino` is
/// rejected: the forwarder's `recvfd` resolves it before the data plane, so one arriving here was
/// sent over TCP or without its fd.
pub fn netns_path(side: &'static str, url: &str) -> Result<PathBuf, PlanError> {
    let bad = |hint| PlanError::BadNetnsUrl {
        side,
        url: url.to_string(),
        hint,
    };
    if url.starts_with("inode://") {
        return Err(bad(
            "; an inode:// URL is only meaningful with its fd, passed on a unix-socket connection (recvfd resolves it)",
        ));
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.starts_with("/proc/thread-self/") || path.starts_with("/proc/self/") {
        // Meaningful only inside the sender: without fd passing the forwarder would open its *own* netns.
        return Err(bad(
            "; /proc/self and /proc/thread-self name the sender's own namespace: send /proc/<pid>/ns/net or pass the fd",
        ));
    }
    if !path.starts_with('/') || path.contains("/../") || path.ends_with("/..") {
        return Err(bad(""));
    }
    Ok(PathBuf::from(path))
}

/// Why `name` cannot be a Linux interface name, if it cannot.
pub fn invalid_interface_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > IFNAME_MAX {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        Some("contains '/', ':', a NUL or a blank")
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
