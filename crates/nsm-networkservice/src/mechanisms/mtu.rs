//! Tunnel MTU arithmetic shared by the remote mechanisms (VXLAN: 50 bytes of overhead, WIREGUARD: 80).
//!
//! Not an element: [`super::vxlan`] and [`super::wireguard`] call these while they complete a
//! mechanism. A tunnel leaves its uplink's MTU minus the encapsulation overhead for the packets inside;
//! two forwarders agree on the smaller of their two values, and the pods get at most that.

use nsm_api::Connection;

/// The smallest MTU an IPv4 interface may have (RFC 791).
pub const MIN_IPV4_MTU: u32 = 68;

/// The smallest MTU an IPv6 interface may have (RFC 8200).
pub const MIN_IPV6_MTU: u32 = 1280;

/// The MTU this forwarder's end of a tunnel leaves for the packets it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelMtu(u32);

impl TunnelMtu {
    /// `uplink_mtu` (the interface holding the tunnel IP) minus `overhead` bytes of encapsulation.
    pub fn from_uplink(uplink_mtu: u32, overhead: u32) -> Self {
        Self(uplink_mtu.saturating_sub(overhead))
    }

    /// The value in bytes.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The MTU both ends can carry: the smaller of `offered` and ours; an absent or 0 offer means ours.
    pub fn agree(self, offered: Option<u32>) -> u32 {
        match offered {
            Some(o) if o != 0 => o.min(self.0),
            _ => self.0,
        }
    }
}

/// Lowers `ConnectionContext.MTU` to `mtu` when it is 0 (unset) or larger, so the pods' interfaces fit
/// in the tunnel (Go sdk-vpp `mtu` server).
pub fn lower_context_mtu(conn: &mut Connection, mtu: u32) {
    let context = conn.context.get_or_insert_default();
    if context.mtu == 0 || context.mtu > mtu {
        context.mtu = mtu;
    }
}

/// The smallest MTU the connection's pod interfaces accept: 1280 if any pod address is IPv6, else 68.
pub fn min_pod_mtu(conn: &Connection) -> u32 {
    let ipv6 = conn
        .context
        .as_ref()
        .and_then(|c| c.ip_context.as_ref())
        .is_some_and(|ip| {
            ip.src_ip_addrs
                .iter()
                .chain(&ip.dst_ip_addrs)
                .any(|a| a.contains(':'))
        });
    if ipv6 { MIN_IPV6_MTU } else { MIN_IPV4_MTU }
}

#[cfg(test)]
mod tests {
    use nsm_api::connectioncontext::{ConnectionContext, IpContext};

    use super::*;

    #[test]
    fn agree_takes_the_smaller_and_treats_zero_as_absent() {
        let ours = TunnelMtu::from_uplink(1500, 80);
        assert_eq!(ours.get(), 1420);
        assert_eq!(ours.agree(None), 1420);
        assert_eq!(ours.agree(Some(0)), 1420);
        assert_eq!(ours.agree(Some(1400)), 1400);
        assert_eq!(ours.agree(Some(9000)), 1420);
        assert_eq!(TunnelMtu::from_uplink(40, 50).get(), 0, "saturates");
    }

    #[test]
    fn context_mtu_is_only_lowered() {
        let mut conn = Connection::default();
        lower_context_mtu(&mut conn, 1420);
        assert_eq!(conn.context.as_ref().unwrap().mtu, 1420, "0 = unset");
        lower_context_mtu(&mut conn, 1450);
        assert_eq!(conn.context.as_ref().unwrap().mtu, 1420, "never raised");
        lower_context_mtu(&mut conn, 1400);
        assert_eq!(conn.context.as_ref().unwrap().mtu, 1400);
    }

    #[test]
    fn ipv6_pod_addresses_need_1280() {
        let mut conn = Connection::default();
        assert_eq!(min_pod_mtu(&conn), 68);
        conn.context = Some(Box::new(ConnectionContext {
            ip_context: Some(IpContext {
                src_ip_addrs: vec!["169.254.0.1/32".into()],
                dst_ip_addrs: vec!["fd00::2/128".into()],
                ..Default::default()
            }),
            ..Default::default()
        }));
        assert_eq!(min_pod_mtu(&conn), 1280);
    }
}
