//! The executor: applies a [`Plan`] with rtnetlink and removes exactly what it created.
//!
//! - **Apply** is idempotent: the same plan for a connection that is already applied is a no-op (a
//!   refresh); a different plan replaces the old state. A node-side link left over under the derived name
//!   is deleted first, so an interface is never duplicated.
//! - Every created object is **recorded** ([`Applied`]); if a step fails, the recorded objects are removed
//!   in reverse order before the error is returned, so a failed apply leaves nothing behind.
//! - **Remove** deletes the recorded objects. Deleting a node-side veth end deletes its pod end (and the
//!   addresses, routes, neighbours and tc filters on either end). The VXLAN device is shared per
//!   (VNI, port): it is deleted when the last connection's receive filter is gone.
//! - [`Executor::adopt_or_cleanup`] deletes every link whose alias says this owner created it: what an
//!   earlier run left behind after a crash. (Adopting them would need the control-plane state too, which
//!   died with the process; the client's refresh re-creates the connection.)
//!
//! All calls are serialised by one lock: connections sharing a VXLAN device must not race.

mod ops;

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::Handle;
use tokio::sync::Mutex;

use crate::error::ApplyError;
use crate::names::{LinkAlias, Role};
use crate::netns::Netns;
use crate::plan::{Plan, PodInterface, TunnelPlan};

/// Applies and removes plans in one node namespace.
pub struct Executor {
    owner: String,
    node: Netns,
    handle: Handle,
    state: Mutex<HashMap<String, Applied>>,
}

/// What was applied for one connection.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The plan.
    pub plan: Plan,
    created: Vec<Created>,
}

#[derive(Debug, Clone)]
enum Created {
    /// A veth, by its node end (deleting it deletes the pod end too).
    Veth { index: u32, name: String },
    /// An ingress redirect filter on a shared VXLAN device.
    TunnelFilter { device: u32, prio: u16 },
    /// An FDB entry on a shared VXLAN device.
    Fdb {
        device: u32,
        mac: [u8; 6],
        remote: IpAddr,
    },
    /// A shared VXLAN device this connection created; deleted only when no filter uses it any more.
    Vxlan,
}

/// Priority of the one redirect filter on a node-side veth.
const VETH_FILTER_PRIO: u16 = 1;

impl Executor {
    /// An executor for links in `node` owned by `owner` (the forwarder name; see [`LinkAlias`]).
    pub fn new(node: Netns, owner: impl Into<String>) -> io::Result<Self> {
        let handle = node.netlink()?;
        Ok(Self {
            owner: owner.into(),
            node,
            handle,
            state: Mutex::default(),
        })
    }

    /// The node namespace.
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// The plan applied for `connection_id`, if any.
    pub async fn applied(&self, connection_id: &str) -> Option<Plan> {
        self.state
            .lock()
            .await
            .get(connection_id)
            .map(|a| a.plan.clone())
    }

    /// Applies `plan` (see the module doc).
    pub async fn apply(&self, plan: &Plan) -> Result<(), ApplyError> {
        let mut state = self.state.lock().await;
        if let Some(old) = state.get(&plan.connection_id) {
            if old.plan == *plan && self.still_there(old).await {
                return Ok(());
            }
            if let Some(old) = state.remove(&plan.connection_id) {
                self.undo(&old.created, old.plan.tunnel.as_ref()).await?;
            }
        }
        let mut created = Vec::new();
        match self.build(plan, &mut created).await {
            Ok(()) => {
                state.insert(
                    plan.connection_id.clone(),
                    Applied {
                        plan: plan.clone(),
                        created,
                    },
                );
                Ok(())
            }
            Err(cause) => match self.undo(&created, plan.tunnel.as_ref()).await {
                Ok(()) => Err(cause),
                Err(rollback) => Err(ApplyError::RollbackFailed {
                    cause: Box::new(cause),
                    rollback: Box::new(rollback),
                }),
            },
        }
    }

    /// Removes what was applied for `connection_id`; `Ok(false)` if nothing was.
    pub async fn remove(&self, connection_id: &str) -> Result<bool, ApplyError> {
        let Some(old) = self.state.lock().await.remove(connection_id) else {
            return Ok(false);
        };
        self.undo(&old.created, old.plan.tunnel.as_ref()).await?;
        Ok(true)
    }

    /// Forgets every applied connection without touching the kernel (what a crash does; for tests).
    pub async fn forget_all(&self) {
        self.state.lock().await.clear();
    }

    /// Deletes every link in the node namespace whose alias names this owner (see the module doc).
    /// Returns the deleted link names.
    pub async fn adopt_or_cleanup(&self) -> Result<Vec<String>, ApplyError> {
        let _state = self.state.lock().await;
        let links = ops::links(&self.handle)
            .await
            .map_err(|e| self.nl("dump links", "*", e))?;
        let mut ours: Vec<(Role, u32, String)> = links
            .iter()
            .filter_map(|m| {
                let alias = LinkAlias::parse(ops::alias(m)?)?;
                (alias.owner == self.owner)
                    .then(|| (alias.role, m.header.index, ops::name(m).to_string()))
            })
            .collect();
        // Veths first, shared tunnel devices last.
        ours.sort_by_key(|(role, ..)| *role == Role::Tunnel);
        let mut removed = Vec::new();
        for (_, index, name) in ours {
            self.delete_link(index, &name).await?;
            removed.push(name);
        }
        Ok(removed)
    }

    async fn still_there(&self, applied: &Applied) -> bool {
        for pod in &applied.plan.pods {
            if !matches!(
                ops::link_by_name(&self.handle, &pod.node_name).await,
                Ok(Some(_))
            ) {
                return false;
            }
        }
        true
    }

    fn nl(&self, op: &'static str, interface: &str, source: rtnetlink::Error) -> ApplyError {
        ApplyError::Netlink {
            op,
            interface: interface.to_string(),
            netns: self.node.to_string(),
            source,
        }
    }

    async fn index_of(&self, h: &Handle, ns: &Netns, name: &str) -> Result<u32, ApplyError> {
        match ops::link_by_name(h, name).await {
            Ok(Some(m)) => Ok(m.header.index),
            Ok(None) => Err(ApplyError::LinkMissing {
                interface: name.to_string(),
                netns: ns.to_string(),
            }),
            Err(e) => Err(ApplyError::Netlink {
                op: "look up",
                interface: name.to_string(),
                netns: ns.to_string(),
                source: e,
            }),
        }
    }

    async fn build(&self, plan: &Plan, created: &mut Vec<Created>) -> Result<(), ApplyError> {
        let mut pods = Vec::new();
        for pod in &plan.pods {
            let ns = Netns::open(&pod.netns).map_err(|source| ApplyError::Netns {
                path: pod.netns.clone(),
                interface: pod.name.clone(),
                source,
            })?;
            let h = ns.netlink().map_err(|source| ApplyError::Netns {
                path: pod.netns.clone(),
                interface: pod.name.clone(),
                source,
            })?;
            // A node end under our derived name is a leftover of this very connection: replace it.
            if let Ok(Some(stale)) = ops::link_by_name(&self.handle, &pod.node_name).await {
                self.delete_link(stale.header.index, &pod.node_name).await?;
            }
            if let Ok(Some(_)) = ops::link_by_name(&h, &pod.name).await {
                return Err(ApplyError::NameTaken {
                    name: pod.name.clone(),
                    netns: pod.netns.clone(),
                });
            }
            pods.push((pod, ns, h));
        }
        if let Some(t) = &plan.tunnel {
            self.check_underlay(t).await?;
        }
        let mut node_ends = Vec::new();
        for (pod, ns, h) in &pods {
            node_ends.push(self.build_veth(pod, ns, h, created).await?);
        }
        match (&plan.tunnel, node_ends.as_slice()) {
            (Some(t), [node_end]) => self.build_tunnel(t, *node_end, created).await,
            (None, [a, b]) => {
                self.redirect(*a, *b, &plan.pods[0].node_name).await?;
                self.redirect(*b, *a, &plan.pods[1].node_name).await
            }
            _ => Ok(()),
        }
    }

    async fn redirect(&self, from: u32, to: u32, name: &str) -> Result<(), ApplyError> {
        ops::ensure_ingress(&self.handle, from)
            .await
            .map_err(|e| self.nl("add ingress qdisc", name, e))?;
        ops::add_redirect(&self.handle, from, VETH_FILTER_PRIO, to, None)
            .await
            .map_err(|e| self.nl("add redirect filter", name, e))
    }

    /// Creates one veth and configures its pod end; returns the node end's index.
    async fn build_veth(
        &self,
        pod: &PodInterface,
        ns: &Netns,
        h: &Handle,
        created: &mut Vec<Created>,
    ) -> Result<u32, ApplyError> {
        let pod_err = |op, source| ApplyError::Netlink {
            op,
            interface: pod.name.clone(),
            netns: ns.to_string(),
            source,
        };
        ops::add_veth(
            &self.handle,
            &pod.node_name,
            &pod.name,
            ns.raw_fd(),
            pod.mac,
            pod.mtu,
        )
        .await
        .map_err(|e| self.nl("create veth", &pod.node_name, e))?;
        let node_index = self
            .index_of(&self.handle, &self.node, &pod.node_name)
            .await?;
        created.push(Created::Veth {
            index: node_index,
            name: pod.node_name.clone(),
        });
        let alias = pod.alias.to_string();
        ops::set_alias_up(&self.handle, node_index, &alias)
            .await
            .map_err(|e| self.nl("set alias/up", &pod.node_name, e))?;
        let pod_index = self.index_of(h, ns, &pod.name).await?;
        ops::set_alias_up(h, pod_index, &alias)
            .await
            .map_err(|e| pod_err("set alias/up", e))?;
        for a in &pod.addresses {
            ops::add_address(h, pod_index, *a)
                .await
                .map_err(|e| pod_err("add address", e))?;
        }
        for r in &pod.routes {
            ops::add_route(h, pod_index, r.destination, r.via)
                .await
                .map_err(|e| pod_err("add route", e))?;
        }
        for n in &pod.neighbours {
            ops::add_neighbour(h, pod_index, n.ip, n.mac)
                .await
                .map_err(|e| pod_err("add neighbour", e))?;
        }
        Ok(node_index)
    }

    async fn check_underlay(&self, t: &TunnelPlan) -> Result<(), ApplyError> {
        let netns = self.node.to_string();
        let addrs = ops::addresses(&self.handle)
            .await
            .map_err(|e| self.nl("dump addresses", "*", e))?;
        if !addrs.contains(&t.local) {
            return Err(ApplyError::TunnelSourceMissing {
                local: t.local,
                netns,
            });
        }
        let routes = ops::unicast_routes(&self.handle, t.remote.is_ipv4())
            .await
            .map_err(|e| self.nl("dump routes", "*", e))?;
        if !routes.iter().any(|r: &IpNet| r.contains(&t.remote)) {
            return Err(ApplyError::TunnelUnreachable {
                remote: t.remote,
                netns,
            });
        }
        Ok(())
    }

    async fn build_tunnel(
        &self,
        t: &TunnelPlan,
        node_end: u32,
        created: &mut Vec<Created>,
    ) -> Result<(), ApplyError> {
        let dev = &t.device;
        let device = match ops::link_by_name(&self.handle, dev).await {
            Ok(Some(m)) => m.header.index,
            _ => {
                ops::add_vxlan(&self.handle, dev, t.vni, t.port, t.local, t.mtu)
                    .await
                    .map_err(|e| self.nl("create vxlan", dev, e))?;
                let index = self.index_of(&self.handle, &self.node, dev).await?;
                created.push(Created::Vxlan);
                ops::set_alias_up(&self.handle, index, &t.alias.to_string())
                    .await
                    .map_err(|e| self.nl("set alias/up", dev, e))?;
                index
            }
        };
        ops::ensure_ingress(&self.handle, device)
            .await
            .map_err(|e| self.nl("add ingress qdisc", dev, e))?;
        let used = ops::ingress_priorities(&self.handle, device)
            .await
            .map_err(|e| self.nl("dump filters", dev, e))?;
        let prio = (1..=u16::MAX)
            .find(|p| !used.contains(p))
            .ok_or_else(|| self.nl("pick filter priority", dev, rtnetlink::Error::RequestFailed))?;
        ops::add_redirect(&self.handle, device, prio, node_end, Some(t.near_mac))
            .await
            .map_err(|e| self.nl("add receive filter", dev, e))?;
        created.push(Created::TunnelFilter { device, prio });
        ops::add_fdb(&self.handle, device, t.far_mac, t.remote)
            .await
            .map_err(|e| self.nl("add fdb entry", dev, e))?;
        created.push(Created::Fdb {
            device,
            mac: t.far_mac,
            remote: t.remote,
        });
        self.redirect(node_end, device, &t.node_interface).await
    }

    /// Removes `created` in reverse order, then the shared tunnel device if nothing uses it any more.
    async fn undo(
        &self,
        created: &[Created],
        tunnel: Option<&TunnelPlan>,
    ) -> Result<(), ApplyError> {
        let mut first_error = None;
        for c in created.iter().rev() {
            let r = match c {
                Created::Veth { index, name } => self.delete_link(*index, name).await,
                Created::TunnelFilter { device, prio } => {
                    ops::del_filter(&self.handle, *device, *prio)
                        .await
                        .or_else(ignore_missing)
                        .map_err(|e| self.nl("delete receive filter", "vxlan", e))
                }
                Created::Fdb {
                    device,
                    mac,
                    remote,
                } => ops::del_fdb(&self.handle, *device, *mac, *remote)
                    .await
                    .or_else(ignore_missing)
                    .map_err(|e| self.nl("delete fdb entry", "vxlan", e)),
                Created::Vxlan => Ok(()), // deleted below once unused
            };
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        if let Some(t) = tunnel
            && let Err(e) = self.delete_tunnel_if_unused(t).await
        {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn delete_tunnel_if_unused(&self, t: &TunnelPlan) -> Result<(), ApplyError> {
        let Ok(Some(m)) = ops::link_by_name(&self.handle, &t.device).await else {
            return Ok(());
        };
        if ops::alias(&m).and_then(LinkAlias::parse).map(|a| a.owner) != Some(self.owner.clone()) {
            return Ok(());
        }
        let users = ops::ingress_priorities(&self.handle, m.header.index)
            .await
            .map_err(|e| self.nl("dump filters", &t.device, e))?;
        if users.is_empty() {
            self.delete_link(m.header.index, &t.device).await?;
        }
        Ok(())
    }

    async fn delete_link(&self, index: u32, name: &str) -> Result<(), ApplyError> {
        // Only delete the link if the index still carries the recorded name (indices are reused).
        match ops::link_by_name(&self.handle, name).await {
            Ok(Some(m)) if m.header.index == index => ops::del_link(&self.handle, index)
                .await
                .or_else(ignore_missing)
                .map_err(|e| self.nl("delete link", name, e)),
            Ok(_) => Ok(()),
            Err(e) => Err(self.nl("look up", name, e)),
        }
    }
}

/// Treats "it is already gone" as success: removal is idempotent.
fn ignore_missing(e: rtnetlink::Error) -> Result<(), rtnetlink::Error> {
    match &e {
        rtnetlink::Error::NetlinkError(m)
            if [nix::errno::Errno::ENODEV, nix::errno::Errno::ENOENT]
                .iter()
                .any(|c| m.raw_code() == -(*c as i32)) =>
        {
            Ok(())
        }
        _ => Err(e),
    }
}
