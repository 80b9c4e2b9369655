//! `mechanisms/vxlan`: the VXLAN tunnel's control-plane parameters (Go `mechanisms/vxlan/vni` plus
//! sdk-vpp's VXLAN MTU); no kernel or VPP calls.
//!
//! Only connections with payload `ETHERNET` are handled, as in Go: a Request with any other payload
//! passes both elements untouched (an IP connection goes over WireGuard), and Close has nothing of
//! theirs to release.
//!
//! **Client, Request**: offers `REMOTE/VXLAN` with `src_ip`/`src_port` = this forwarder's tunnel
//! endpoint (existing VXLAN preferences, and a selected VXLAN mechanism, get them set instead).
//! **Server, Request**: when VXLAN is selected, sets `dst_ip`/`dst_port`, the `MTU` if the uplink MTU is
//! known, and a VNI: random 24-bit, **even** when the source address is byte-wise ≤ the destination
//! (`orig_*` addresses win when present) and **odd** otherwise, so the two forwarders of a pair never
//! pick the same VNI for tunnels in opposite directions; unique per (`src_ip`, VNI) among live
//! connections. **Close**: releases the VNI.
//!
//! **State**: the connection's (src_ip, VNI) in server-side metadata, so refreshes keep the VNI; the set
//! of VNIs in use, shared by all connections of this element. A failed first Request releases its VNI.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use nsm_api::mechanisms::{MechanismType, common, vxlan};
use nsm_api::{Connection, Mechanism, NetworkServiceRequest, payload};
use nsm_core::metadata::Side;
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};
use parking_lot::Mutex;

use crate::mechanisms::mtu::TunnelMtu;

const NAME: &str = "vxlan";

/// Largest 24-bit VNI.
const VNI_MASK: u32 = 0x00FF_FFFF;

/// Random draws before falling back to a scan of the whole half of the VNI space.
const RANDOM_TRIES: usize = 64;

/// True for a connection these elements serve: payload `ETHERNET`.
fn ethernet(request: &NetworkServiceRequest) -> bool {
    request
        .connection
        .as_ref()
        .is_some_and(|c| c.payload == payload::ETHERNET)
}

/// Client side: offers a VXLAN tunnel from this forwarder.
pub struct VxlanClient {
    tunnel_ip: IpAddr,
    port: u16,
}

impl VxlanClient {
    /// Tunnel source `tunnel_ip`:`port` (port 0 = the IANA port 4789).
    pub fn new(tunnel_ip: IpAddr, port: u16) -> Self {
        Self {
            tunnel_ip,
            port: or_default_port(port),
        }
    }

    fn set_source(&self, m: &mut Mechanism) {
        m.set_param(vxlan::SRC_IP, self.tunnel_ip.to_string());
        m.set_param(vxlan::SRC_PORT, self.port.to_string());
    }
}

fn or_default_port(port: u16) -> u16 {
    if port == 0 { vxlan::DEFAULT_PORT } else { port }
}

#[async_trait]
impl NetworkServiceServer for VxlanClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        if !ethernet(&request) {
            return next.request(ctx, request).await;
        }
        let mut offered = false;
        for m in &mut request.mechanism_preferences {
            if m.is(MechanismType::Vxlan) {
                self.set_source(m);
                offered = true;
            }
        }
        if !offered {
            let mut m = MechanismType::Vxlan.mechanism();
            self.set_source(&mut m);
            request.mechanism_preferences.push(m);
        }
        if let Some(m) = request
            .connection
            .as_mut()
            .and_then(|c| c.mechanism.as_mut())
            .filter(|m| m.is(MechanismType::Vxlan))
        {
            self.set_source(m);
        }
        next.request(ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// Server side: completes the selected VXLAN mechanism and allocates its VNI.
pub struct VxlanServer {
    tunnel_ip: IpAddr,
    port: u16,
    mtu: Option<u32>,
    in_use: Arc<Mutex<HashSet<VniKey>>>,
}

/// One allocated VNI: unique per tunnel source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct VniKey {
    src: IpAddr,
    vni: u32,
}

impl VxlanServer {
    /// Tunnel destination `tunnel_ip`:`port` (port 0 = the IANA port 4789).
    pub fn new(tunnel_ip: IpAddr, port: u16) -> Self {
        Self {
            tunnel_ip,
            port: or_default_port(port),
            mtu: None,
            in_use: Arc::default(),
        }
    }

    /// Sets the `MTU` parameter to `uplink_mtu` minus the VXLAN overhead (50 bytes).
    pub fn with_uplink_mtu(mut self, uplink_mtu: u32) -> Self {
        self.mtu = Some(TunnelMtu::from_uplink(uplink_mtu, vxlan::OVERHEAD).get());
        self
    }

    /// Number of VNIs currently allocated (for leak checks).
    pub fn allocated(&self) -> usize {
        self.in_use.lock().len()
    }

    /// Picks the connection's VNI; returns it and whether it was newly allocated by this call.
    fn assign(&self, ctx: &Ctx, m: &Mechanism) -> Result<(VniKey, bool)> {
        let metadata = ctx
            .metadata()
            .ok_or_else(|| NsmError::internal(NAME, "no connection metadata in context"))?;
        let src = parse_ip(m, vxlan::SRC_IP)?;
        let mut in_use = self.in_use.lock();
        if let Some(kept) = metadata.get::<VniKey>(Side::Server) {
            if kept.src == src {
                return Ok((kept, false));
            }
            // The peer's tunnel address changed: the old key no longer identifies this tunnel.
            in_use.remove(&kept);
            metadata.remove::<VniKey>(Side::Server);
        }
        // A VNI the peer already carries (e.g. after this forwarder restarted) is kept when free.
        let key = match m.vni().filter(|v| *v != 0).map(|vni| VniKey { src, vni }) {
            Some(k) if !in_use.contains(&k) => k,
            _ => {
                let even = even_vni(m, self.tunnel_ip);
                let vni = pick_vni(even, |vni| in_use.contains(&VniKey { src, vni })).ok_or_else(
                    || NsmError::ResourceExhausted {
                        element: NAME,
                        what: format!("VNI pool for tunnel source {src}"),
                    },
                )?;
                VniKey { src, vni }
            }
        };
        in_use.insert(key);
        metadata.insert(Side::Server, key);
        Ok((key, true))
    }

    fn release(&self, ctx: &Ctx) {
        if let Some(key) = ctx
            .metadata()
            .and_then(|m| m.remove::<VniKey>(Side::Server))
        {
            self.in_use.lock().remove(&key);
        }
    }
}

fn parse_ip(m: &Mechanism, key: &str) -> Result<IpAddr> {
    let text = m.param(key).unwrap_or_default();
    text.parse().map_err(|_| {
        NsmError::invalid(
            NAME,
            format!("VXLAN mechanism parameter {key} = {text:?} is not an IP address"),
        )
    })
}

/// Go's parity rule: even if the (original) source address is byte-wise ≤ the destination.
fn even_vni(m: &Mechanism, own: IpAddr) -> bool {
    let addr = |orig: &str, plain: &str| {
        m.param(orig)
            .or_else(|| m.param(plain))
            .and_then(|s| s.parse::<IpAddr>().ok())
    };
    let Some(src) = addr(common::SRC_ORIGINAL_IP, vxlan::SRC_IP) else {
        return true;
    };
    let dst = addr(common::DST_ORIGINAL_IP, vxlan::DST_IP).unwrap_or(own);
    as_16_bytes(src) <= as_16_bytes(dst)
}

fn as_16_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn random_u32() -> u32 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A free non-zero 24-bit VNI of the requested parity, or `None` if that half of the space is full.
fn pick_vni(even: bool, taken: impl Fn(u32) -> bool) -> Option<u32> {
    let with_parity = |r: u32| (r.wrapping_mul(2) | u32::from(!even)) & VNI_MASK;
    let usable = |v: u32| v != 0 && !taken(v);
    for _ in 0..RANDOM_TRIES {
        let v = with_parity(random_u32());
        if usable(v) {
            return Some(v);
        }
    }
    // Nearly full: walk the whole half once from a random point, so this always terminates.
    let start = random_u32();
    (0..=VNI_MASK / 2)
        .map(|i| with_parity(start.wrapping_add(i)))
        .find(|v| usable(*v))
}

#[async_trait]
impl NetworkServiceServer for VxlanServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let Some(m) = request
            .connection
            .as_mut()
            .filter(|c| c.payload == payload::ETHERNET)
            .and_then(|c| c.mechanism.as_mut())
            .filter(|m| m.is(MechanismType::Vxlan))
        else {
            return next.request(ctx, request).await;
        };
        m.set_param(vxlan::DST_IP, self.tunnel_ip.to_string());
        m.set_param(vxlan::DST_PORT, self.port.to_string());
        if let Some(mtu) = self.mtu {
            m.set_param(vxlan::MTU, mtu.to_string());
        }
        let (key, allocated) = self.assign(ctx, m)?;
        m.set_param(vxlan::VNI, key.vni.to_string());
        let result = next.request(ctx, request).await;
        if result.is_err() && allocated {
            self.release(ctx);
        }
        result
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        self.release(ctx);
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests;
