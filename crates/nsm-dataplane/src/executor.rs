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
//! - **Restarts**: [`Executor::adopt`] reads back what an earlier run of this owner left in the kernel
//!   (links by their alias `nsm:<owner>:<connection id>:<role>`, the receive filters on shared VXLAN
//!   devices by their redirect target) and keeps it as *unclaimed* per connection id, touching nothing.
//!   The first [`Executor::apply`] for such a connection (the refresh or heal that reaches the restarted
//!   forwarder) **takes it over** without touching the kernel if it is exactly what the plan asks for
//!   (node and pod ends with the plan's names, aliases, MAC and addresses; the tunnel filter on the plan's
//!   device), so live traffic is not interrupted; if the plan differs, the old objects are removed first
//!   and the plan is built anew (never half-applied). A Close removes an unclaimed connection.
//!   [`Executor::sweep_unclaimed`] — run by the forwarder after a grace period — removes whatever no
//!   request claimed, and shared tunnel devices nobody uses any more.
//! - [`Executor::adopt_or_cleanup`] is the blunt alternative: delete every link of this owner at once.
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
    /// What an earlier run left, per connection id, not yet claimed by a request. Locked after `state`.
    adopted: Mutex<HashMap<String, Unclaimed>>,
}

/// Kernel objects of one connection made by an earlier run.
#[derive(Debug, Clone, Default)]
struct Unclaimed {
    /// Node-side veth ends: (index, name).
    veths: Vec<(u32, String)>,
    /// Receive filters on shared VXLAN devices redirecting to one of those veths: (device, priority).
    filters: Vec<(u32, u16)>,
}

impl Unclaimed {
    /// What undoing it removes (filters first, as `undo` walks the list backwards).
    fn created(&self) -> Vec<Created> {
        let mut out: Vec<Created> = self
            .veths
            .iter()
            .map(|(index, name)| Created::Veth {
                index: *index,
                name: name.clone(),
            })
            .collect();
        out.extend(
            self.filters
                .iter()
                .map(|(device, prio)| Created::TunnelFilter {
                    device: *device,
                    prio: *prio,
                }),
        );
        out
    }
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
            adopted: Mutex::default(),
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
        if !state.contains_key(&plan.connection_id) {
            let unclaimed = self.adopted.lock().await.remove(&plan.connection_id);
            if let Some(u) = unclaimed {
                if let Some(created) = self.take_over(plan, &u).await {
                    tracing::info!(connection = %plan.connection_id, "executor: adopted the interfaces of an earlier run");
                    state.insert(
                        plan.connection_id.clone(),
                        Applied {
                            plan: plan.clone(),
                            created,
                        },
                    );
                    return Ok(());
                }
                tracing::info!(connection = %plan.connection_id, "executor: an earlier run's interfaces differ from the request; replacing them");
                self.undo_unclaimed(&u).await?;
            }
        }
        for stale in self.same_interface_elsewhere(plan).await {
            // The pod's interface belongs to another connection of ours: the client came back (a
            // restarted NSC, a lost Close) and asks for the same interface again. It cannot hold two
            // interfaces with one name, so the old connection gives way, completely.
            tracing::info!(connection = %plan.connection_id, old = %stale, "executor: replacing an older connection's interface in the same pod");
            if let Some(old) = state.remove(&stale) {
                self.undo(&old.created, old.plan.tunnel.as_ref()).await?;
            } else if let Some(u) = self.adopted.lock().await.remove(&stale) {
                self.undo_unclaimed(&u).await?;
            }
        }
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
        let mut state = self.state.lock().await;
        let Some(old) = state.remove(connection_id) else {
            let unclaimed = self.adopted.lock().await.remove(connection_id);
            return match unclaimed {
                Some(u) => self.undo_unclaimed(&u).await.map(|()| true),
                None => Ok(false),
            };
        };
        drop(state);
        self.undo(&old.created, old.plan.tunnel.as_ref()).await?;
        Ok(true)
    }

    /// Forgets every applied connection without touching the kernel (what a crash does; for tests).
    pub async fn forget_all(&self) {
        self.state.lock().await.clear();
    }

    /// Reads back what an earlier run of this owner left (see the module doc) and keeps it unclaimed;
    /// changes nothing in the kernel. Returns the connection ids found.
    pub async fn adopt(&self) -> Result<Vec<String>, ApplyError> {
        let state = self.state.lock().await;
        let links = ops::links(&self.handle)
            .await
            .map_err(|e| self.nl("dump links", "*", e))?;
        let mut redirects = Vec::new();
        let mut ours = Vec::new();
        for m in &links {
            let Some(alias) = ops::alias(m).and_then(LinkAlias::parse) else {
                continue;
            };
            if alias.owner != self.owner {
                continue;
            }
            if alias.role == Role::Tunnel {
                let name = ops::name(m);
                for (prio, target) in ops::ingress_redirects(&self.handle, m.header.index)
                    .await
                    .map_err(|e| self.nl("dump filters", name, e))?
                {
                    redirects.push((m.header.index, prio, target));
                }
            } else {
                ours.push((alias.id, m.header.index, ops::name(m).to_string()));
            }
        }
        let mut adopted = self.adopted.lock().await;
        for (id, index, name) in ours {
            if state.contains_key(&id) {
                continue;
            }
            let u = adopted.entry(id).or_default();
            if !u.veths.iter().any(|(i, _)| *i == index) {
                u.veths.push((index, name));
            }
            for (device, prio, _) in redirects.iter().filter(|r| r.2 == index) {
                if !u.filters.contains(&(*device, *prio)) {
                    u.filters.push((*device, *prio));
                }
            }
        }
        let mut ids: Vec<String> = adopted.keys().cloned().collect();
        ids.sort();
        Ok(ids)
    }

    /// Connection ids adopted by [`Executor::adopt`] that no request has claimed yet.
    pub async fn unclaimed(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.adopted.lock().await.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Removes every adopted connection no request claimed, then this owner's tunnel devices that no
    /// connection uses. Returns the removed link names.
    pub async fn sweep_unclaimed(&self) -> Result<Vec<String>, ApplyError> {
        let _state = self.state.lock().await;
        let unclaimed: Vec<Unclaimed> = self.adopted.lock().await.drain().map(|(_, u)| u).collect();
        let mut removed = Vec::new();
        let mut first_error = None;
        for u in unclaimed {
            match self.undo_unclaimed(&u).await {
                Ok(()) => removed.extend(u.veths.iter().map(|(_, n)| n.clone())),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match self.delete_unused_tunnels().await {
            Ok(names) => removed.extend(names),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(removed), Err)
    }

    /// Removes an unclaimed connection's objects, and the tunnel devices they leave unused.
    async fn undo_unclaimed(&self, u: &Unclaimed) -> Result<(), ApplyError> {
        self.undo(&u.created(), None).await?;
        self.delete_unused_tunnels().await.map(drop)
    }

    /// Deletes this owner's VXLAN devices without receive filters; returns their names.
    async fn delete_unused_tunnels(&self) -> Result<Vec<String>, ApplyError> {
        let links = ops::links(&self.handle)
            .await
            .map_err(|e| self.nl("dump links", "*", e))?;
        let mut removed = Vec::new();
        for m in &links {
            let ours = ops::alias(m)
                .and_then(LinkAlias::parse)
                .is_some_and(|a| a.owner == self.owner && a.role == Role::Tunnel);
            if !ours {
                continue;
            }
            let name = ops::name(m).to_string();
            let users = ops::ingress_priorities(&self.handle, m.header.index)
                .await
                .map_err(|e| self.nl("dump filters", &name, e))?;
            if users.is_empty() {
                self.delete_link(m.header.index, &name).await?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Ids of other connections of this owner whose interface sits in one of `plan`'s pods under the
    /// name the plan wants there.
    async fn same_interface_elsewhere(&self, plan: &Plan) -> Vec<String> {
        let mut out = Vec::new();
        for pod in &plan.pods {
            let Ok(ns) = Netns::open(&pod.netns) else {
                continue;
            };
            let Ok(h) = ns.netlink() else {
                continue;
            };
            let Ok(Some(m)) = ops::link_by_name(&h, &pod.name).await else {
                continue;
            };
            if let Some(a) = ops::alias(&m).and_then(LinkAlias::parse)
                && a.owner == self.owner
                && a.role == pod.role
                && a.id != plan.connection_id
                && !out.contains(&a.id)
            {
                out.push(a.id);
            }
        }
        out
    }

    /// The record of `plan` if what an earlier run left is exactly what it asks for; `None` otherwise.
    async fn take_over(&self, plan: &Plan, u: &Unclaimed) -> Option<Vec<Created>> {
        if u.veths.len() != plan.pods.len() {
            return None;
        }
        let mut created = Vec::new();
        for pod in &plan.pods {
            let (index, name) = u.veths.iter().find(|(_, n)| *n == pod.node_name)?;
            let node_end = ops::link_by_name(&self.handle, name).await.ok()??;
            let alias = pod.alias.to_string();
            if node_end.header.index != *index || ops::alias(&node_end) != Some(alias.as_str()) {
                return None;
            }
            let ns = Netns::open(&pod.netns).ok()?;
            let h = ns.netlink().ok()?;
            let pod_end = ops::link_by_name(&h, &pod.name).await.ok()??;
            if ops::alias(&pod_end) != Some(alias.as_str())
                || ops::mac(&pod_end) != Some(pod.mac)
                || ops::mtu(&pod_end) != Some(pod.mtu)
            {
                return None;
            }
            let mut have = ops::link_addresses(&h, pod_end.header.index).await.ok()?;
            let mut want = pod.addresses.clone();
            have.sort();
            want.sort();
            if have != want {
                return None;
            }
            created.push(Created::Veth {
                index: *index,
                name: name.clone(),
            });
        }
        match &plan.tunnel {
            Some(t) => {
                let device = ops::link_by_name(&self.handle, &t.device)
                    .await
                    .ok()??
                    .header
                    .index;
                let [(d, prio)] = u.filters.as_slice() else {
                    return None;
                };
                if *d != device {
                    return None;
                }
                created.push(Created::TunnelFilter {
                    device,
                    prio: *prio,
                });
                created.push(Created::Fdb {
                    device,
                    mac: t.far_mac,
                    remote: t.remote,
                });
            }
            None if !u.filters.is_empty() => return None,
            None => {}
        }
        Some(created)
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
