//! Deterministic names, aliases and MAC addresses.
//!
//! Everything the executor creates outside a pod must be recognisable later — after a refresh, a crash or a
//! restart — without any state on disk. So names and MACs are pure functions of (owner, connection id,
//! role), and every link carries an interface alias `nsm:<owner>:<connection id>:<role>`
//! ([`LinkAlias`]) that [`crate::Executor::adopt_or_cleanup`] looks for.

use std::fmt;

/// Longest Linux interface name, in bytes (IFNAMSIZ − 1).
pub const IFNAME_MAX: usize = 15;

/// 64-bit FNV-1a: stable across Rust versions and platforms (unlike `DefaultHasher`), which matters
/// because names derived from it must survive a restart of the forwarder.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Node-side veth name for one side of a connection: `nsm` + 12 hex digits = 15 bytes.
pub fn node_interface_name(owner: &str, connection_id: &str, role: Role) -> String {
    let h = stable_hash(&[owner, connection_id, role.as_str()]);
    format!("nsm{:012x}", h & 0xffff_ffff_ffff)
}

/// Name of the VXLAN device shared by every connection with this VNI and port in one namespace:
/// `nsx` + 6 hex digits of VNI + 4 hex digits of port = 13 bytes.
pub fn vxlan_device_name(vni: u32, port: u16) -> String {
    format!("nsx{vni:06x}{port:04x}")
}

/// A locally administered unicast MAC derived from `seed` (bit 1 of the first octet set, bit 0 clear).
pub fn derived_mac(seed: &[&str]) -> [u8; 6] {
    let b = stable_hash(seed).to_be_bytes();
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (or `-` separated); `None` for anything else.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (slot, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *slot = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// What a link is for. Part of its alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The veth whose pod end is in the client's (NSC's) namespace.
    Client,
    /// The veth whose pod end is in the endpoint's (NSE's) namespace.
    Endpoint,
    /// A VXLAN device (shared per VNI and port).
    Tunnel,
}

impl Role {
    /// The alias spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Endpoint => "endpoint",
            Role::Tunnel => "vxlan",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "client" => Some(Role::Client),
            "endpoint" => Some(Role::Endpoint),
            "vxlan" => Some(Role::Tunnel),
            _ => None,
        }
    }
}

/// The alias `nsm:<owner>:<id>:<role>`; `id` is the connection id, or `<vni>/<port>` for a shared tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAlias {
    /// The forwarder that made the link.
    pub owner: String,
    /// Connection id (or VNI/port of a shared VXLAN device).
    pub id: String,
    /// What the link is for.
    pub role: Role,
}

impl LinkAlias {
    /// Parses an alias; `None` when it was not written by this crate. The owner never contains ':' (checked
    /// by [`crate::plan::PlanConfig::validate`]); the id may.
    pub fn parse(alias: &str) -> Option<Self> {
        let rest = alias.strip_prefix("nsm:")?;
        let (owner, rest) = rest.split_once(':')?;
        let (id, role) = rest.rsplit_once(':')?;
        Some(Self {
            owner: owner.to_string(),
            id: id.to_string(),
            role: Role::parse(role)?,
        })
    }
}

impl fmt::Display for LinkAlias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nsm:{}:{}:{}", self.owner, self.id, self.role.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_are_stable() {
        let a = node_interface_name("fwd-1", "conn-1", Role::Client);
        assert_eq!(a.len(), IFNAME_MAX);
        assert_eq!(a, node_interface_name("fwd-1", "conn-1", Role::Client));
        assert_ne!(a, node_interface_name("fwd-1", "conn-1", Role::Endpoint));
        assert_ne!(a, node_interface_name("fwd-2", "conn-1", Role::Client));
        // Pinned: a restarted forwarder must derive the same name as its predecessor.
        assert_eq!(stable_hash(&["a"]), 620_337_896_427_418_084);
        assert_eq!(vxlan_device_name(0xabcdef, 4789), "nsxabcdef12b5");
    }

    #[test]
    fn macs_are_unicast_local_and_round_trip() {
        let m = derived_mac(&["x", "src"]);
        assert_eq!(m[0] & 0x03, 0x02);
        assert_eq!(parse_mac(&format_mac(&m)), Some(m));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:zz"), None);
    }

    #[test]
    fn alias_round_trips_with_colons_in_the_id() {
        let a = LinkAlias {
            owner: "fwd".into(),
            id: "nsc:1".into(),
            role: Role::Endpoint,
        };
        assert_eq!(a.to_string(), "nsm:fwd:nsc:1:endpoint");
        assert_eq!(LinkAlias::parse(&a.to_string()), Some(a));
        assert_eq!(LinkAlias::parse("nsm:fwd:x:bogus"), None);
        assert_eq!(LinkAlias::parse("other"), None);
    }
}
