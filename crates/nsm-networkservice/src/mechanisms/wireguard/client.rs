//! [`WireguardClient`]: offers this forwarder's end of a WIREGUARD tunnel (see the module doc).

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use nsm_api::mechanisms::{MechanismType, TunnelEnd, wireguard};
use nsm_api::{Connection, Mechanism, NetworkServiceRequest, payload};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};

use super::{LocalEnd, LocalEnds, NAME, Side, close_then_release, params, reserve_checked};
use crate::mechanisms::mtu::TunnelMtu;

/// Client side: offers a WIREGUARD tunnel from this forwarder for connections with payload `IP`.
pub struct WireguardClient {
    tunnel_ip: IpAddr,
    mtu: TunnelMtu,
    ends: Arc<dyn LocalEnds>,
}

impl WireguardClient {
    /// Tunnels from `tunnel_ip` (`NSM_TUNNEL_IP`), whose interface has MTU `uplink_mtu`; ends come from
    /// `ends` (shared with [`super::WireguardServer`] and the data plane).
    pub fn new(tunnel_ip: IpAddr, uplink_mtu: u32, ends: Arc<dyn LocalEnds>) -> Self {
        Self {
            tunnel_ip,
            mtu: TunnelMtu::from_uplink(uplink_mtu, wireguard::OVERHEAD),
            ends,
        }
    }

    /// Puts our end on `m`; the `MTU` is lowered to ours, never raised.
    fn set_source(&self, m: &mut Mechanism, end: &LocalEnd) {
        m.set_tunnel_ip(TunnelEnd::Src, self.tunnel_ip);
        m.set_tunnel_port(TunnelEnd::Src, end.port);
        m.set_wireguard_public_key(TunnelEnd::Src, end.public_key.clone());
        m.set_mtu(self.mtu.agree(m.mtu()));
    }

    /// Offers our end: on the WIREGUARD preferences already there (or a new one), and on a selected
    /// WIREGUARD mechanism (a refresh re-sends the one chosen last time).
    fn offer(&self, request: &mut NetworkServiceRequest, end: &LocalEnd) {
        let mut offered = false;
        for m in &mut request.mechanism_preferences {
            if m.is(MechanismType::Wireguard) {
                self.set_source(m, end);
                offered = true;
            }
        }
        if !offered {
            let mut m = MechanismType::Wireguard.mechanism();
            self.set_source(&mut m, end);
            request.mechanism_preferences.push(m);
        }
        if let Some(m) = selected_mut(request) {
            self.set_source(m, end);
        }
    }

    /// Checks the far end the next hop answered with.
    fn check_answer(&self, m: &Mechanism, conn: &Connection, end: &LocalEnd) -> Result<()> {
        params::ip(m, TunnelEnd::Dst, self.tunnel_ip)?;
        params::port(m, TunnelEnd::Dst)?;
        params::public_key(m, TunnelEnd::Dst)?;
        params::mtu(m, conn)?;
        if m.wireguard_public_key(TunnelEnd::Src) != Some(end.public_key.as_str()) {
            return Err(NsmError::invalid(
                NAME,
                format!(
                    "WIREGUARD parameter {} = {:?} came back changed (we offered {:?})",
                    wireguard::SRC_PUBLIC_KEY,
                    m.wireguard_public_key(TunnelEnd::Src).unwrap_or_default(),
                    end.public_key
                ),
            ));
        }
        Ok(())
    }
}

fn selected_mut(request: &mut NetworkServiceRequest) -> Option<&mut Mechanism> {
    request
        .connection
        .as_mut()
        .and_then(|c| c.mechanism.as_mut())
        .filter(|m| m.is(MechanismType::Wireguard))
}

/// True if this request may end up on WIREGUARD: payload `IP`, and no other mechanism already selected
/// (a refresh of a connection that uses another one keeps it, so an offer would be wasted).
fn wants_wireguard(request: &NetworkServiceRequest) -> bool {
    request.connection.as_ref().is_some_and(|c| {
        c.payload == payload::IP
            && c.mechanism
                .as_ref()
                .is_none_or(|m| m.is(MechanismType::Wireguard))
    })
}

#[async_trait]
impl NetworkServiceServer for WireguardClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        if !wants_wireguard(&request) {
            return next.request(ctx, request).await;
        }
        let id = request
            .connection
            .as_ref()
            .map(|c| c.id.clone())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| NsmError::invalid(NAME, "connection has no id"))?;
        let reserved = reserve_checked(&*self.ends, &id, Side::Client)?;
        // Undoes a Request that reserved the end; a refresh keeps what the connection already had.
        let undo = || {
            if reserved.new {
                self.ends.release(&id, Side::Client);
            }
        };
        self.offer(&mut request, &reserved.end);
        let downstream = next.clone();
        let conn = match next.request(ctx, request).await {
            Ok(conn) => conn,
            Err(e) => {
                undo();
                return Err(e);
            }
        };
        let Some(m) = conn
            .mechanism
            .as_ref()
            .filter(|m| m.is(MechanismType::Wireguard))
        else {
            // The next hop chose another mechanism: this connection needs no WireGuard end.
            self.ends.release(&id, Side::Client);
            return Ok(conn);
        };
        if let Err(e) = self.check_answer(m, &conn, &reserved.end) {
            if reserved.new {
                let mut close_ctx = ctx.postpone();
                let _ = downstream.close(&mut close_ctx, conn).await;
                undo();
            }
            return Err(e);
        }
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        close_then_release(&*self.ends, Side::Client, ctx, conn, next).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
