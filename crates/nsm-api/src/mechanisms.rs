//! Mechanism classes, types and parameter keys (api `pkg/api/networkservice/mechanisms/*`), and typed
//! accessors over a [`Mechanism`]'s parameter map.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::connection::Mechanism;

/// Mechanism classes (`Mechanism.cls`).
pub mod cls {
    /// Same node: the interface is handed to a workload on this node.
    pub const LOCAL: &str = "LOCAL";
    /// Across nodes: a tunnel between forwarders.
    pub const REMOTE: &str = "REMOTE";
}

/// Parameter keys shared by several mechanism types (api `mechanisms/common`).
pub mod common {
    /// Tunnel source address.
    pub const SRC_IP: &str = "src_ip";
    /// Tunnel destination address.
    pub const DST_IP: &str = "dst_ip";
    /// Tunnel source port.
    pub const SRC_PORT: &str = "src_port";
    /// Tunnel destination port.
    pub const DST_PORT: &str = "dst_port";
    /// The source address before an nsmgr-proxy swapped it.
    pub const SRC_ORIGINAL_IP: &str = "orig_src_ip";
    /// The destination address before an nsmgr-proxy swapped it.
    pub const DST_ORIGINAL_IP: &str = "orig_dst_ip";
    /// Inode number of a network namespace.
    pub const NETNS_INODE: &str = "netnsInode";
    /// Interface name (Linux: at most 15 bytes).
    pub const INTERFACE_NAME: &str = "name";
    /// URL of a file (netns, socket): `file:///proc/<pid>/ns/net` locally, `inode://dev/ino` on the wire.
    pub const INODE_URL: &str = "inodeURL";
    /// PCI address of a device.
    pub const PCI_ADDRESS: &str = "pciAddress";
    /// SR-IOV device token id.
    pub const DEVICE_TOKEN_ID: &str = "tokenID";
    /// MTU of a tunnel.
    pub const MTU: &str = "MTU";
}

/// KERNEL (LOCAL): a kernel interface in the workload's network namespace.
pub mod kernel {
    pub use super::common::{
        DEVICE_TOKEN_ID, INODE_URL as NETNS_URL, INTERFACE_NAME, NETNS_INODE, PCI_ADDRESS,
    };
    /// Type name.
    pub const MECHANISM: &str = "KERNEL";
    /// Longest Linux interface name, in bytes.
    pub const LINUX_IF_MAX_LENGTH: usize = 15;
    /// URL scheme of a netns file before fd passing.
    pub const NETNS_URL_SCHEME: &str = "file";
    /// "true" when the workload side can take a VLAN sub-interface.
    pub const SUPPORTS_VLAN: &str = "supportsVlan";
    /// VLAN id (decimal).
    pub const VLAN: &str = "vlan";
}

/// MEMIF (LOCAL): a shared-memory packet interface.
pub mod memif {
    pub use super::common::INODE_URL as NETNS_URL;
    pub use super::common::INODE_URL as SOCKET_FILE_URL;
    /// Type name.
    pub const MECHANISM: &str = "MEMIF";
    /// Abstract socket name.
    pub const SOCKET_FILENAME: &str = "socketfile";
    /// URL scheme of a socket file.
    pub const FILE_SCHEME: &str = "file";
}

/// VFIO (LOCAL): an SR-IOV virtual function passed to the workload.
pub mod vfio {
    pub use super::common::{DEVICE_TOKEN_ID, PCI_ADDRESS};
    /// Type name.
    pub const MECHANISM: &str = "VFIO";
    /// cgroup directory of the workload.
    pub const CGROUP_DIR: &str = "cgroupDir";
    /// IOMMU group of the device.
    pub const IOMMU_GROUP: &str = "iommuGroup";
    /// Major number of /dev/vfio/vfio.
    pub const VFIO_MAJOR: &str = "vfioMajor";
    /// Minor number of /dev/vfio/vfio.
    pub const VFIO_MINOR: &str = "vfioMinor";
    /// Major number of the device node.
    pub const DEVICE_MAJOR: &str = "deviceMajor";
    /// Minor number of the device node.
    pub const DEVICE_MINOR: &str = "deviceMinor";
}

/// NOOP (LOCAL): no interface at all.
pub mod noop {
    /// Type name.
    pub const MECHANISM: &str = "NOOP";
}

/// VXLAN (REMOTE): an L2 tunnel; only for payload ETHERNET.
pub mod vxlan {
    pub use super::common::{DST_IP, DST_PORT, MTU, SRC_IP, SRC_PORT};
    /// Type name.
    pub const MECHANISM: &str = "VXLAN";
    /// VXLAN network identifier (decimal, 24 bits).
    pub const VNI: &str = "vni";
    /// The IANA VXLAN port, used when none is configured.
    pub const DEFAULT_PORT: u16 = 4789;
    /// Bytes of VXLAN encapsulation over IPv4 (outer IP + UDP + VXLAN + inner Ethernet).
    pub const OVERHEAD: u32 = 50;
}

/// WIREGUARD (REMOTE): an L3 tunnel; only for payload IP.
pub mod wireguard {
    pub use super::common::{DST_IP, DST_PORT, MTU, SRC_IP, SRC_PORT};
    /// Type name.
    pub const MECHANISM: &str = "WIREGUARD";
    /// Base64 public key of the client-side forwarder.
    pub const SRC_PUBLIC_KEY: &str = "src_public_key";
    /// Base64 public key of the endpoint-side forwarder.
    pub const DST_PUBLIC_KEY: &str = "dst_public_key";
    /// The WireGuard port NSM uses on both sides.
    pub const DEFAULT_PORT: u16 = 51820;
    /// Bytes of WireGuard encapsulation.
    pub const OVERHEAD: u32 = 80;
}

/// Which end of a tunnel a parameter describes: `src_*` belongs to the client-side (requesting)
/// forwarder, `dst_*` to the serving one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelEnd {
    /// The client-side forwarder (`src_*`).
    Src,
    /// The endpoint-side forwarder (`dst_*`).
    Dst,
}

impl TunnelEnd {
    /// The tunnel address key (`src_ip` / `dst_ip`).
    pub fn ip_key(self) -> &'static str {
        match self {
            Self::Src => common::SRC_IP,
            Self::Dst => common::DST_IP,
        }
    }

    /// The tunnel port key (`src_port` / `dst_port`).
    pub fn port_key(self) -> &'static str {
        match self {
            Self::Src => common::SRC_PORT,
            Self::Dst => common::DST_PORT,
        }
    }

    /// The WireGuard public key key (`src_public_key` / `dst_public_key`).
    pub fn public_key_key(self) -> &'static str {
        match self {
            Self::Src => wireguard::SRC_PUBLIC_KEY,
            Self::Dst => wireguard::DST_PUBLIC_KEY,
        }
    }
}

/// VLAN (REMOTE): a VLAN sub-interface on a host device.
pub mod vlan {
    /// Type name.
    pub const MECHANISM: &str = "VLAN";
    /// VLAN id (decimal, 12 bits).
    pub const ID: &str = "vlan-id";
}

/// SRV6 (REMOTE): constants only; no v1.1 forwarder implements it.
pub mod srv6 {
    /// Type name.
    pub const MECHANISM: &str = "SRV6";
    /// Source host address.
    pub const SRC_HOST_IP: &str = "src_host_ip";
    /// Destination host address.
    pub const DST_HOST_IP: &str = "dst_host_ip";
    /// Source binding SID.
    pub const SRC_BSID: &str = "src_bsid";
    /// Destination binding SID.
    pub const DST_BSID: &str = "dst_bsid";
    /// Source local SID.
    pub const SRC_LOCAL_SID: &str = "src_localsid";
    /// Destination local SID.
    pub const DST_LOCAL_SID: &str = "dst_localsid";
    /// Source host local SID.
    pub const SRC_HOST_LOCAL_SID: &str = "src_host_localsid";
    /// Destination host local SID.
    pub const DST_HOST_LOCAL_SID: &str = "dst_host_localsid";
    /// Source hardware address.
    pub const SRC_HARDWARE_ADDRESS: &str = "src_hw_addr";
    /// Destination hardware address.
    pub const DST_HARDWARE_ADDRESS: &str = "dst_hw_addr";
}

/// The mechanism types NSM v1.1.1 defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MechanismType {
    /// `KERNEL`
    Kernel,
    /// `MEMIF`
    Memif,
    /// `VFIO`
    Vfio,
    /// `NOOP`
    Noop,
    /// `VXLAN`
    Vxlan,
    /// `WIREGUARD`
    Wireguard,
    /// `VLAN`
    Vlan,
    /// `SRV6`
    Srv6,
}

impl MechanismType {
    /// Every type, LOCAL ones first.
    pub const ALL: [MechanismType; 8] = [
        Self::Kernel,
        Self::Memif,
        Self::Vfio,
        Self::Noop,
        Self::Vxlan,
        Self::Wireguard,
        Self::Vlan,
        Self::Srv6,
    ];

    /// The wire name (`Mechanism.type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => kernel::MECHANISM,
            Self::Memif => memif::MECHANISM,
            Self::Vfio => vfio::MECHANISM,
            Self::Noop => noop::MECHANISM,
            Self::Vxlan => vxlan::MECHANISM,
            Self::Wireguard => wireguard::MECHANISM,
            Self::Vlan => vlan::MECHANISM,
            Self::Srv6 => srv6::MECHANISM,
        }
    }

    /// The class this type belongs to (`cls::LOCAL` or `cls::REMOTE`).
    pub fn cls(self) -> &'static str {
        match self {
            Self::Kernel | Self::Memif | Self::Vfio | Self::Noop => cls::LOCAL,
            Self::Vxlan | Self::Wireguard | Self::Vlan | Self::Srv6 => cls::REMOTE,
        }
    }

    /// An empty mechanism of this type and its class.
    pub fn mechanism(self) -> Mechanism {
        Mechanism {
            cls: self.cls().to_string(),
            r#type: self.as_str().to_string(),
            parameters: Default::default(),
        }
    }
}

impl fmt::Display for MechanismType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mechanism type name that NSM v1.1.1 does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown mechanism type {0:?} (known: KERNEL, MEMIF, VFIO, NOOP, VXLAN, WIREGUARD, VLAN, SRV6)"
)]
pub struct UnknownMechanismType(pub String);

impl FromStr for MechanismType {
    type Err = UnknownMechanismType;

    /// Parses a type name, ignoring ASCII case (URL schemes are lower case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownMechanismType(s.to_string()))
    }
}

impl Mechanism {
    /// The typed mechanism type, if the `type` field names a known one.
    pub fn mechanism_type(&self) -> Option<MechanismType> {
        self.r#type.parse().ok()
    }

    /// True if this mechanism is of type `t`.
    pub fn is(&self, t: MechanismType) -> bool {
        self.r#type == t.as_str()
    }

    /// A parameter value, if set and non-empty.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.parameters
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Sets a parameter.
    pub fn set_param(&mut self, key: &str, value: impl Into<String>) {
        self.parameters.insert(key.to_string(), value.into());
    }

    /// The interface name parameter (`name`).
    pub fn interface_name(&self) -> Option<&str> {
        self.param(common::INTERFACE_NAME)
    }

    /// The inode URL parameter (`inodeURL`): a netns or socket file.
    pub fn inode_url(&self) -> Option<&str> {
        self.param(common::INODE_URL)
    }

    /// The VXLAN VNI, if set and a valid 24-bit number.
    pub fn vni(&self) -> Option<u32> {
        self.param(vxlan::VNI)
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|v| *v < (1 << 24))
    }

    /// The tunnel MTU parameter (`MTU`), if set and numeric.
    pub fn mtu(&self) -> Option<u32> {
        self.param(common::MTU).and_then(|v| v.parse().ok())
    }

    /// Sets the tunnel MTU parameter (`MTU`, decimal).
    pub fn set_mtu(&mut self, mtu: u32) {
        self.set_param(common::MTU, mtu.to_string());
    }

    /// The text of a tunnel end's address (`src_ip` / `dst_ip`), if set and non-empty. Not parsed: the
    /// element that uses it reports a bad value with the parameter's name.
    pub fn tunnel_ip(&self, end: TunnelEnd) -> Option<&str> {
        self.param(end.ip_key())
    }

    /// Sets a tunnel end's address in Go `net.IP` text form (IPv6 without brackets).
    pub fn set_tunnel_ip(&mut self, end: TunnelEnd, ip: IpAddr) {
        self.set_param(end.ip_key(), ip.to_string());
    }

    /// The text of a tunnel end's port (`src_port` / `dst_port`), if set and non-empty. Not parsed.
    pub fn tunnel_port(&self, end: TunnelEnd) -> Option<&str> {
        self.param(end.port_key())
    }

    /// Sets a tunnel end's port (decimal).
    pub fn set_tunnel_port(&mut self, end: TunnelEnd, port: u16) {
        self.set_param(end.port_key(), port.to_string());
    }

    /// The text of a WIREGUARD end's public key (`src_public_key` / `dst_public_key`), if set and
    /// non-empty. Not decoded: NSM carries it as standard base64 of 32 bytes, which the user checks.
    pub fn wireguard_public_key(&self, end: TunnelEnd) -> Option<&str> {
        self.param(end.public_key_key())
    }

    /// Sets a WIREGUARD end's public key (standard base64 text, as `wg pubkey` prints it).
    pub fn set_wireguard_public_key(&mut self, end: TunnelEnd, key: impl Into<String>) {
        self.set_param(end.public_key_key(), key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_round_trip_and_classes_are_right() {
        for t in MechanismType::ALL {
            assert_eq!(t.as_str().parse::<MechanismType>(), Ok(t));
            assert_eq!(t.as_str().to_lowercase().parse::<MechanismType>(), Ok(t));
        }
        assert_eq!(MechanismType::Kernel.cls(), "LOCAL");
        assert_eq!(MechanismType::Vxlan.cls(), "REMOTE");
        assert!("IPSEC".parse::<MechanismType>().is_err());
    }

    #[test]
    fn typed_params_reject_garbage() {
        let mut m = MechanismType::Vxlan.mechanism();
        m.set_param(vxlan::VNI, "16777216");
        assert_eq!(m.vni(), None, "VNI is 24 bits");
        m.set_param(vxlan::VNI, "42");
        assert_eq!(m.vni(), Some(42));
        m.set_param(common::INTERFACE_NAME, "");
        assert_eq!(m.interface_name(), None);
    }

    #[test]
    fn wireguard_accessors_use_the_go_keys_and_report_missing_as_none() {
        let mut m = MechanismType::Wireguard.mechanism();
        for end in [TunnelEnd::Src, TunnelEnd::Dst] {
            assert_eq!(m.tunnel_ip(end), None);
            assert_eq!(m.tunnel_port(end), None);
            assert_eq!(m.wireguard_public_key(end), None);
        }
        m.set_tunnel_ip(TunnelEnd::Src, "fd00::1".parse().unwrap());
        m.set_tunnel_port(TunnelEnd::Dst, 51820);
        m.set_wireguard_public_key(TunnelEnd::Dst, "k");
        m.set_mtu(1420);
        m.set_param(wireguard::SRC_PUBLIC_KEY, "");
        assert_eq!(m.param("src_ip"), Some("fd00::1"));
        assert_eq!(m.param("dst_port"), Some("51820"));
        assert_eq!(m.param("dst_public_key"), Some("k"));
        assert_eq!(m.param("MTU"), Some("1420"));
        assert_eq!(m.tunnel_ip(TunnelEnd::Src), Some("fd00::1"));
        assert_eq!(
            m.wireguard_public_key(TunnelEnd::Src),
            None,
            "empty = missing"
        );
        m.set_param(wireguard::DST_PORT, "x");
        assert_eq!(
            m.tunnel_port(TunnelEnd::Dst),
            Some("x"),
            "raw text, not parsed"
        );
    }
}
