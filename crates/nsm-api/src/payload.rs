//! Payload names carried in `Connection.payload` and `NetworkService.payload`.

/// Layer 2 frames (VXLAN, VLAN tunnels).
pub const ETHERNET: &str = "ETHERNET";
/// Layer 3 packets (WireGuard tunnels); the default a registry assigns to a service without one.
pub const IP: &str = "IP";
