//! Netlink primitives the executor (and the WireGuard pod TUN, `wireguard::tun`) is built from. Each
//! interface/namespace context.
//!
//! Links are created with `NLM_F_ECHO`: the kernel then sends the new link's `RTM_NEWLINK` back to the
//! requester before it acknowledges, so its index (and, for a veth, the peer's index, `IFLA_LINK`) is
//! known without a lookup by name. A kernel that does not echo (before Linux 6.3) sends none; the
//! caller then looks the link up.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage, State};
use netlink_packet_route::neighbour::{
    NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteScope, RouteType};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32Option, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::{
    Error, Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

/// `htons(ETH_P_ALL)`, as tc's `protocol all` sends it.
const PROTO_ALL: u16 = 0x0003_u16.to_be();
/// `ffff:` — the ingress qdisc.
const INGRESS: u32 = 0xffff_0000;

/// The link called `name`, if any.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, Error> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Err(e) if is_errno(&e, Errno::ENODEV) => Ok(None),
        r => r,
    }
}

/// The link with index `index`, if any.
pub async fn link_by_index(h: &Handle, index: u32) -> Result<Option<LinkMessage>, Error> {
    match h.link().get().match_index(index).execute().try_next().await {
        Err(e) if is_errno(&e, Errno::ENODEV) => Ok(None),
        r => r,
    }
}

/// Whether the kernel refused with `errno`.
pub fn is_errno(e: &Error, errno: Errno) -> bool {
    matches!(e, Error::NetlinkError(m) if m.raw_code() == -(errno as i32))
}

/// Treats "it is already gone" as success: removal is idempotent.
pub fn ignore_missing(e: Error) -> Result<(), Error> {
    if is_errno(&e, Errno::ENODEV) || is_errno(&e, Errno::ENOENT) {
        Ok(())
    } else {
        Err(e)
    }
}

/// Every link.
pub async fn links(h: &Handle) -> Result<Vec<LinkMessage>, Error> {
    h.link().get().execute().try_collect().await
}

/// The alias of a link, if set.
pub fn alias(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    })
}

/// The MAC address of a link.
pub fn mac(m: &LinkMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
        _ => None,
    })
}

/// The MTU of a link.
pub fn mtu(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(v) => Some(*v),
        _ => None,
    })
}

/// Whether a link is operationally up, as the kernel itself judges it (`netif_oper_up`): `UP`, or
/// `UNKNOWN` for devices that do not track an operational state — a TUN with its queue attached
/// reports `UNKNOWN` for good, and IPv6 treats it as up.
pub fn oper_up(m: &LinkMessage) -> bool {
    m.attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::OperState(State::Up | State::Unknown)))
}

/// The name of a link.
pub fn name(m: &LinkMessage) -> &str {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(s) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("")
}

/// The index of a veth end's peer, in the peer's namespace (`IFLA_LINK`).
pub fn peer_index(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) if *i != 0 => Some(*i),
        _ => None,
    })
}

/// Creates the link `msg` describes (failing if its name is taken) and returns the kernel's echo of
/// it, if the kernel echoes (see the module doc).
async fn add_link_echo(h: &Handle, msg: LinkMessage) -> Result<Option<LinkMessage>, Error> {
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewLink(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO;
    let mut h = h.clone();
    let mut resp = h.request(req)?;
    let mut echoed = None;
    while let Some(m) = futures::StreamExt::next(&mut resp).await {
        match m.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(Error::NetlinkError(e)),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => echoed = Some(l),
            _ => {}
        }
    }
    Ok(echoed)
}

/// Creates a veth: `node` in the handle's namespace, `pod` directly inside the namespace behind `pod_fd`
/// (never in between, so nothing ever appears in the node namespace under the pod's name). Returns the
/// kernel's echo of the node end, if it echoes.
pub async fn add_veth(
    h: &Handle,
    node: &str,
    pod: &str,
    pod_fd: i32,
    pod_mac: [u8; 6],
    mtu: u32,
) -> Result<Option<LinkMessage>, Error> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(pod.to_string())
        .mtu(mtu)
        .address(pod_mac.to_vec())
        .setns_by_fd(pod_fd)
        .build();
    let msg = LinkVeth::new(node, pod)
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    add_link_echo(h, msg).await
}

/// Creates a VXLAN device with no fixed remote (the FDB decides), learning off. Returns the kernel's
/// echo of it, if it echoes.
pub async fn add_vxlan(
    h: &Handle,
    name: &str,
    vni: u32,
    port: u16,
    local: IpAddr,
    mtu: u32,
) -> Result<Option<LinkMessage>, Error> {
    let b = LinkVxlan::new(name, vni)
        .port(port)
        .learning(false)
        .mtu(mtu);
    let b = match local {
        IpAddr::V4(a) => b.local(a),
        IpAddr::V6(a) => b.local6(a),
    };
    add_link_echo(h, b.build()).await
}

/// Sets alias and admin state of link `index`.
pub async fn set_alias_up(h: &Handle, index: u32, alias: &str) -> Result<(), Error> {
    let msg = LinkUnspec::new_with_index(index)
        .alias(alias.to_string())
        .up()
        .build();
    h.link().set(msg).execute().await
}

/// Adds `net` to link `index` (IPv6 with NODAD, so it is usable at once).
pub async fn add_address(h: &Handle, index: u32, net: IpNet) -> Result<(), Error> {
    let mut req = h.address().add(index, net.addr(), net.prefix_len());
    if net.addr().is_ipv6() {
        let m = req.message_mut();
        m.header.flags |= AddressHeaderFlags::Nodad | AddressHeaderFlags::Permanent;
        m.attributes
            .retain(|a| !matches!(a, AddressAttribute::Flags(_)));
    }
    req.execute().await
}

/// Adds (replaces) a route via link `index`: scope link without gateway, `onlink` with one.
pub async fn add_route(
    h: &Handle,
    index: u32,
    dst: IpNet,
    via: Option<IpAddr>,
) -> Result<(), Error> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(invalid)?
        .output_interface(index);
    b = match via {
        Some(gw) => b.gateway(gw).map_err(invalid)?.onlink(),
        None => b.scope(RouteScope::Link),
    };
    h.route().add(b.build()).replace().execute().await
}

fn invalid<E: std::fmt::Debug>(e: E) -> Error {
    Error::InvalidNla(format!("{e:?}"))
}

/// Adds a permanent neighbour on link `index`.
pub async fn add_neighbour(h: &Handle, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), Error> {
    h.neighbours()
        .add(index, ip)
        .link_layer_address(&mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
}

fn fdb_message(index: u32, mac: [u8; 6], remote: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(remote.into()));
    m
}

/// `bridge fdb append <mac> dev <vxlan> dst <remote>` (NTF_SELF).
pub async fn add_fdb(h: &Handle, index: u32, mac: [u8; 6], remote: IpAddr) -> Result<(), Error> {
    let mut req = h
        .neighbours()
        .add_bridge(index, &mac)
        .destination(remote)
        .flags(NeighbourFlags::Own);
    *req.message_mut() = fdb_message(index, mac, remote);
    req.replace().execute().await
}

/// Removes what [`add_fdb`] added.
pub async fn del_fdb(h: &Handle, index: u32, mac: [u8; 6], remote: IpAddr) -> Result<(), Error> {
    h.neighbours()
        .del(fdb_message(index, mac, remote))
        .execute()
        .await
}

/// Adds the `ingress` qdisc to link `index` unless it has one.
pub async fn ensure_ingress(h: &Handle, index: u32) -> Result<(), Error> {
    match h.qdisc().add(index as i32).ingress().execute().await {
        Err(e) if is_errno(&e, Errno::EEXIST) => Ok(()),
        r => r,
    }
}

/// Ingress filter on `from`: frames (all of them, or those whose Ethernet destination is `dst_mac`) are
/// redirected to the egress of `to` (`u32 … action mirred egress redirect`).
pub async fn add_redirect(
    h: &Handle,
    from: u32,
    prio: u16,
    to: u32,
    dst_mac: Option<[u8; 6]>,
) -> Result<(), Error> {
    let selector = match dst_mac {
        Some(mac) => mac_selector(mac),
        None => {
            let mut sel = TcU32Selector::default();
            sel.flags = TcU32SelectorFlags::Terminal;
            sel.nkeys = 1;
            sel.keys = vec![TcU32Key::default()];
            sel
        }
    };
    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    h.clone()
        .traffic_filter(from as i32)
        .add()
        .parent(INGRESS)
        .priority(prio)
        .protocol(PROTO_ALL)
        .u32(&[
            TcFilterU32Option::Selector(selector),
            TcFilterU32Option::Action(vec![action]),
        ])?
        .execute()
        .await
}

/// Deletes the ingress filter of priority `prio` on link `index`.
pub async fn del_filter(h: &Handle, index: u32, prio: u16) -> Result<(), Error> {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.parent = INGRESS.into();
    msg.header.info = (u32::from(prio) << 16) | u32::from(PROTO_ALL);
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelTrafficFilter(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut h = h.clone();
    let mut resp = h.request(req)?;
    while let Some(m) = futures::StreamExt::next(&mut resp).await {
        if let NetlinkPayload::Error(e) = m.payload
            && e.code.is_some()
        {
            return Err(Error::NetlinkError(e));
        }
    }
    Ok(())
}

/// Priorities of the ingress filters of link `index`. Each connection owns one whole priority on a
/// shared VXLAN device, so a priority in use means a connection still uses the device.
pub async fn ingress_priorities(h: &Handle, index: u32) -> Result<Vec<u16>, Error> {
    let msgs: Vec<TcMessage> = h
        .clone()
        .traffic_filter(index as i32)
        .get()
        .ingress()
        .execute()
        .try_collect()
        .await?;
    let mut out: Vec<u16> = msgs.iter().map(|m| (m.header.info >> 16) as u16).collect();
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `(priority, redirect target)` of every ingress `mirred` redirect filter of link `index` (what an
/// earlier run installed; read back when adopting its links).
pub async fn ingress_redirects(h: &Handle, index: u32) -> Result<Vec<(u16, u32)>, Error> {
    let msgs: Vec<TcMessage> = h
        .clone()
        .traffic_filter(index as i32)
        .get()
        .ingress()
        .execute()
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for m in &msgs {
        let prio = (m.header.info >> 16) as u16;
        let actions = m
            .attributes
            .iter()
            .filter_map(|a| match a {
                TcAttribute::Options(o) => Some(o),
                _ => None,
            })
            .flatten()
            .filter_map(|o| match o {
                TcOption::U32(TcFilterU32Option::Action(a)) => Some(a),
                _ => None,
            })
            .flatten();
        for act in actions {
            let targets = act
                .attributes
                .iter()
                .filter_map(|a| match a {
                    TcActionAttribute::Options(o) => Some(o),
                    _ => None,
                })
                .flatten()
                .filter_map(|o| match o {
                    TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) => Some(p.ifindex),
                    _ => None,
                });
            out.extend(targets.map(|t| (prio, t)));
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Addresses (with prefix length) of link `index`.
pub async fn link_addresses(h: &Handle, index: u32) -> Result<Vec<IpNet>, Error> {
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            })?;
            // Kernel-made IPv6 link-local addresses are not ours.
            if let IpAddr::V6(v6) = ip
                && v6.segments()[0] & 0xffc0 == 0xfe80
            {
                return None;
            }
            IpNet::new(ip, m.header.prefix_len).ok()
        })
        .collect())
}

/// Every address of the namespace.
pub async fn addresses(h: &Handle) -> Result<Vec<IpAddr>, Error> {
    let msgs: Vec<_> = h.address().get().execute().try_collect().await?;
    Ok(msgs
        .iter()
        .flat_map(|m| {
            m.attributes.iter().filter_map(|a| match a {
                AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            })
        })
        .collect())
}

/// Destinations of the unicast routes of the main table, for a reachability check.
pub async fn unicast_routes(h: &Handle, v4: bool) -> Result<Vec<IpNet>, Error> {
    let query = if v4 {
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
    } else {
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
    };
    let msgs: Vec<RouteMessage> = h.route().get(query).execute().try_collect().await?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.kind == RouteType::Unicast)
        .filter_map(|m| {
            let len = m.header.destination_prefix_length;
            let dst = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(d) => route_addr(d),
                _ => None,
            });
            let dst = dst.unwrap_or(if v4 {
                IpAddr::from([0u8; 4])
            } else {
                IpAddr::from([0u16; 8])
            });
            IpNet::new(dst, len).ok()
        })
        .collect())
}

fn route_addr(a: &netlink_packet_route::route::RouteAddress) -> Option<IpAddr> {
    use netlink_packet_route::route::RouteAddress;
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Ingress selector used by [`add_redirect`] when matching a MAC (exposed for unit tests).
pub fn mac_selector(mac: [u8; 6]) -> TcU32Selector {
    let key = |mask: u32, val: u32, off: i32| {
        let mut k = TcU32Key::default();
        k.mask = mask;
        k.val = val;
        k.off = off;
        k
    };
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.keys = vec![
        key(
            0xffff_ffff,
            u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]),
            -14,
        ),
        key(0xffff_0000, u32::from_be_bytes([mac[4], mac[5], 0, 0]), -10),
    ];
    sel.nkeys = 2;
    sel
}
