//! [`WireguardServer`]: completes a selected WIREGUARD mechanism with this forwarder's end (see the
//! module doc).

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use nsm_api::mechanisms::{MechanismType, TunnelEnd, wireguard};
use nsm_api::{Connection, Mechanism, NetworkServiceRequest, payload};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};

use super::{LocalEnds, NAME, Side, close_then_release, params, reserve_checked};
use crate::mechanisms::mtu::{TunnelMtu, lower_context_mtu};

/// Server side: answers a WIREGUARD mechanism (payload `IP`) with this forwarder's end.
pub struct WireguardServer {
    tunnel_ip: IpAddr,
    mtu: TunnelMtu,
    ends: Arc<dyn LocalEnds>,
}

impl WireguardServer {
    /// Tunnels to `tunnel_ip` (`NSM_TUNNEL_IP`), whose interface has MTU `uplink_mtu`; ends come from
    /// `ends` (shared with [`super::WireguardClient`] and the data plane).
    pub fn new(tunnel_ip: IpAddr, uplink_mtu: u32, ends: Arc<dyn LocalEnds>) -> Self {
        Self {
            tunnel_ip,
            mtu: TunnelMtu::from_uplink(uplink_mtu, wireguard::OVERHEAD),
            ends,
        }
    }

    /// Checks the client's end and settles the MTU, before anything is reserved or sent on.
    fn prepare(&self, m: &mut Mechanism, conn: &mut Connection) -> Result<()> {
        params::ip(m, TunnelEnd::Src, self.tunnel_ip)?;
        params::port(m, TunnelEnd::Src)?;
        params::public_key(m, TunnelEnd::Src)?;
        let mtu = self.mtu.agree(params::mtu(m, conn)?);
        params::check_mtu(mtu, conn)?;
        m.set_mtu(mtu);
        lower_context_mtu(conn, mtu);
        m.set_tunnel_ip(TunnelEnd::Dst, self.tunnel_ip);
        Ok(())
    }

    /// Puts our end (reserved now, or kept from an earlier Request) on the answer.
    fn answer(&self, conn: &mut Connection) -> Result<()> {
        let m = conn
            .mechanism
            .as_mut()
            .filter(|m| m.is(MechanismType::Wireguard))
            .ok_or_else(|| {
                NsmError::internal(NAME, "the answer lost its WIREGUARD mechanism downstream")
            })?;
        let reserved = reserve_checked(&*self.ends, &conn.id, Side::Server)?;
        m.set_tunnel_ip(TunnelEnd::Dst, self.tunnel_ip);
        m.set_tunnel_port(TunnelEnd::Dst, reserved.end.port);
        m.set_wireguard_public_key(TunnelEnd::Dst, reserved.end.public_key);
        Ok(())
    }
}

#[async_trait]
impl NetworkServiceServer for WireguardServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let Some(conn) = request
            .connection
            .as_mut()
            .filter(|c| c.payload == payload::IP)
        else {
            return next.request(ctx, request).await;
        };
        let Some(mut m) = conn.mechanism.take_if(|m| m.is(MechanismType::Wireguard)) else {
            return next.request(ctx, request).await;
        };
        let prepared = if conn.id.is_empty() {
            Err(NsmError::invalid(NAME, "connection has no id"))
        } else {
            self.prepare(&mut m, conn)
        };
        conn.mechanism = Some(m);
        prepared?;
        let downstream = next.clone();
        let mut conn = next.request(ctx, request).await?;
        if let Err(e) = self.answer(&mut conn) {
            let mut close_ctx = ctx.postpone();
            let _ = downstream.close(&mut close_ctx, conn).await;
            return Err(e);
        }
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        close_then_release(&*self.ends, Side::Server, ctx, conn, next).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
