//! [`KernelDataplane`]: the kernel data plane as `nsm_chains::forwarder::Dataplane` elements.
//!
//! Server side (after roundrobin, before connect), in call order:
//! 1. `xconnect` ([`XConnectServer`]): **Request** — runs the rest of the chain (the incoming mechanism,
//!    then the whole client side towards the endpoint) and, once the downstream Request succeeded, plans
//!    and applies the connection; if applying fails, closes downstream again and returns a typed error.
//!    Building the connection from the endpoint back to the client is how NSM does it too. **Close** —
//!    removes exactly what was applied, then closes downstream. **State**: the executor's record per
//!    connection id.
//! 2. `mechanisms` for the incoming side: KERNEL (the client pod passes its netns URL and interface name;
//!    nothing to add), VXLAN (`VxlanServer`: `dst_ip`/`dst_port`, the VNI, MTU = underlay − 50; only for
//!    payload ETHERNET) and WIREGUARD (`WireguardServer`: `dst_ip`, MTU = underlay − 80, then
//!    `dst_port`/`dst_public_key` of this forwarder's end; only for payload IP).
//!
//! Client side (after mechanismtranslation): `xconnect` ([`XConnectClient`]: fills the pods' MACs in the
//! `EthernetContext` if empty, so both forwarders of a remote connection agree on them, and records the
//! outgoing mechanism the next hop selected), `kernel` (offer KERNEL), `vxlan` (offer VXLAN from this
//! forwarder's tunnel IP; payload ETHERNET only), `wireguard` (offer WIREGUARD with this forwarder's
//! end; payload IP only), `filtermechanisms` (LOCAL to a unix URL, REMOTE to a TCP one). Go's order.
//!
//! **Payload picks the remote mechanism** (docs/wireguard.md §1): ETHERNET ⇒ VXLAN, IP ⇒ WIREGUARD,
//! anything else ⇒ no remote offer. Both mechanisms' elements gate themselves on the payload. A service
//! registered without a payload gets IP from the registry; `nsm nse` registers ETHERNET by default.
//!
//! **WireGuard ends**: one [`WireguardEnds`] is shared by `WireguardClient`, `WireguardServer` (which
//! reserve and release a key pair and bound socket per connection and side) and the executor (which
//! starts the link with them on apply and stops it on remove). On Close the executor stops the link
//! first (xconnect is first in the chain), then the elements release the end, closing the socket.
//!
//! The NSC and NSE need nothing from this crate: their `kernel` elements only pass their netns URL and
//! the interface name; the forwarder creates, addresses and removes the interfaces from the outside.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use nsm_api::mechanisms::MechanismType;
use nsm_api::{Connection, Mechanism, NetworkServiceRequest};
use nsm_chains::forwarder::Dataplane;
use nsm_core::chain::Element;
use nsm_core::metadata::Side;
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};
use nsm_networkservice::filtermechanisms::FilterMechanismsClient;
use nsm_networkservice::mechanisms::MechanismsServer;
use nsm_networkservice::mechanisms::kernel::KernelClient;
use nsm_networkservice::mechanisms::vxlan::{VxlanClient, VxlanServer};
use nsm_networkservice::mechanisms::wireguard::{WireguardClient, WireguardServer};

use crate::error::{ApplyError, PlanError};
use crate::executor::Executor;
use crate::names;
use crate::plan::{PlanConfig, PlanRequest, plan};
use crate::wireguard_ends::WireguardEnds;

const NAME: &str = "xconnect";

/// The kernel data plane of one forwarder.
pub struct KernelDataplane {
    executor: Arc<Executor>,
    config: PlanConfig,
    tunnel_ip: IpAddr,
    vxlan: Arc<VxlanServer>,
    wireguard: Arc<WireguardEnds>,
}

impl KernelDataplane {
    /// A data plane applying through `executor`, with tunnels from `tunnel_ip` (`NSM_TUNNEL_IP`).
    /// WireGuard ends are bound on `tunnel_ip` in the executor's node namespace, each on a free port
    /// (docs/wireguard.md phase 1); the executor is set to start links with them. Fails only if the
    /// node namespace handle cannot be duplicated.
    pub fn new(
        executor: Arc<Executor>,
        config: PlanConfig,
        tunnel_ip: IpAddr,
    ) -> std::io::Result<Self> {
        let vxlan = Arc::new(
            VxlanServer::new(tunnel_ip, config.vxlan_port).with_uplink_mtu(config.underlay_mtu),
        );
        let wireguard = Arc::new(WireguardEnds::new(
            executor.node().try_clone()?,
            tunnel_ip,
            0,
        ));
        executor.use_wireguard(wireguard.clone());
        Ok(Self {
            executor,
            config,
            tunnel_ip,
            vxlan,
            wireguard,
        })
    }
}

impl Dataplane for KernelDataplane {
    fn server_elements(&self) -> Vec<Element> {
        let incoming: BTreeMap<String, Element> = [
            (
                MechanismType::Kernel.to_string(),
                Arc::new(IncomingKernel) as Element,
            ),
            (
                MechanismType::Vxlan.to_string(),
                self.vxlan.clone() as Element,
            ),
            (
                MechanismType::Wireguard.to_string(),
                Arc::new(WireguardServer::new(
                    self.tunnel_ip,
                    self.config.underlay_mtu,
                    self.wireguard.clone(),
                )) as Element,
            ),
        ]
        .into();
        vec![
            Arc::new(XConnectServer {
                executor: self.executor.clone(),
                config: self.config.clone(),
            }),
            Arc::new(MechanismsServer::new(incoming)),
        ]
    }

    fn client_elements(&self) -> Vec<Element> {
        vec![
            Arc::new(XConnectClient),
            Arc::new(KernelClient::new(None)),
            Arc::new(VxlanClient::new(self.tunnel_ip, self.config.vxlan_port)),
            Arc::new(WireguardClient::new(
                self.tunnel_ip,
                self.config.underlay_mtu,
                self.wireguard.clone(),
            )),
            Arc::new(FilterMechanismsClient::new()),
        ]
    }
}

/// The mechanism the next hop selected, kept in client-side metadata for [`XConnectServer`].
#[derive(Debug, Clone)]
struct Outgoing(Mechanism);

/// Server side: applies the plan after the downstream Request, removes it on Close.
pub struct XConnectServer {
    executor: Arc<Executor>,
    config: PlanConfig,
}

fn plan_error(e: PlanError) -> NsmError {
    NsmError::invalid(NAME, e.to_string())
}

fn apply_error(e: ApplyError) -> NsmError {
    match e {
        ApplyError::Netns { .. }
        | ApplyError::NameTaken { .. }
        | ApplyError::TunnelSourceMissing { .. }
        | ApplyError::TunnelUnreachable { .. } => NsmError::invalid(NAME, e.to_string()),
        other => NsmError::internal(NAME, other.to_string()),
    }
}

fn path_id(conn: &Connection) -> String {
    conn.path
        .as_ref()
        .and_then(|p| p.path_segments.first())
        .map(|s| s.id.clone())
        .unwrap_or_else(|| conn.id.clone())
}

#[async_trait]
impl NetworkServiceServer for XConnectServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let undo = next.clone();
        let conn = next.request(ctx, request).await?;
        let outgoing = ctx
            .metadata()
            .and_then(|m| m.get::<Outgoing>(Side::Client))
            .ok_or_else(|| {
                NsmError::internal(
                    NAME,
                    "no outgoing mechanism recorded (XConnectClient missing?)",
                )
            })?;
        let incoming = conn
            .mechanism
            .clone()
            .ok_or_else(|| NsmError::internal(NAME, "connection has no incoming mechanism"))?;
        let context = conn.context.clone().unwrap_or_default();
        let path = path_id(&conn);
        let result = match plan(
            &self.config,
            &PlanRequest {
                connection_id: &conn.id,
                path_id: &path,
                incoming: &incoming,
                outgoing: &outgoing.0,
                context: &context,
            },
        ) {
            Ok(p) => self.executor.apply(&p).await.map_err(apply_error),
            Err(e) => Err(plan_error(e)),
        };
        if let Err(e) = result {
            let mut close_ctx = ctx.postpone();
            let _ = undo.close(&mut close_ctx, conn).await;
            return Err(e);
        }
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        let removed = self.executor.remove(&conn.id).await.map_err(apply_error);
        let downstream = next.close(ctx, conn).await;
        removed?;
        downstream
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// Client side: agrees on pod MACs and records the outgoing mechanism.
pub struct XConnectClient;

#[async_trait]
impl NetworkServiceServer for XConnectClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let conn = request.connection.get_or_insert_default();
        let seed = path_id(conn);
        let eth = conn
            .context
            .get_or_insert_default()
            .ethernet_context
            .get_or_insert_default();
        if eth.src_mac.is_empty() {
            eth.src_mac = names::format_mac(&names::derived_mac(&[&seed, "src"]));
        }
        if eth.dst_mac.is_empty() {
            eth.dst_mac = names::format_mac(&names::derived_mac(&[&seed, "dst"]));
        }
        let conn = next.request(ctx, request).await?;
        let metadata = ctx
            .metadata()
            .ok_or_else(|| NsmError::internal(NAME, "no connection metadata in context"))?;
        let m = conn
            .mechanism
            .clone()
            .ok_or_else(|| NsmError::internal(NAME, "next hop selected no mechanism"))?;
        metadata.insert(Side::Client, Outgoing(m));
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// Incoming KERNEL: the client pod already gave its netns URL and interface name; checks they are there.
struct IncomingKernel;

#[async_trait]
impl NetworkServiceServer for IncomingKernel {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let m = request
            .connection
            .as_ref()
            .and_then(|c| c.mechanism.as_ref());
        if m.and_then(Mechanism::inode_url).is_none() {
            return Err(NsmError::invalid(
                "kernel",
                "incoming KERNEL mechanism has no inodeURL (the client's network namespace)",
            ));
        }
        next.request(ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        "kernel"
    }
}
