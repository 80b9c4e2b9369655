//! Restarts: what an earlier run of this owner left in the kernel.
//!
//! [`Executor::adopt`] reads back the links by their alias `nsm:<owner>:<connection id>:<role>` and the
//! receive filters on shared VXLAN devices by their redirect target, and keeps them as *unclaimed* per
//! connection id, touching nothing. The first [`Executor::apply`] for such a connection (the refresh or
//! heal that reaches the restarted forwarder) **takes it over** without touching the kernel if it is
//! exactly what the plan asks for (node and pod ends with the plan's names, aliases, MAC and addresses;
//! the tunnel filter on the plan's device), so live traffic is not interrupted; if the plan differs,
//! the old objects are removed first and the plan is built anew (never half-applied). A Close removes
//! an unclaimed connection. [`Executor::sweep_unclaimed`] — run by the forwarder after a grace period —
//! removes whatever no request claimed, and shared tunnel devices nobody uses any more.
//! [`Executor::adopt_or_cleanup`] is the blunt alternative: delete every link of this owner at once.

use netlink_packet_route::link::LinkMessage;
use rtnetlink::Handle;

use super::{ApplyError, Created, Executor, PodResult, lock, ops};
use crate::names::{LinkAlias, Role};
use crate::plan::Plan;

/// Kernel objects of one connection made by an earlier run.
#[derive(Debug, Clone, Default)]
pub(super) struct Unclaimed {
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

impl Executor {
    /// Reads back what an earlier run of this owner left (see the module doc) and keeps it unclaimed;
    /// changes nothing in the kernel. Returns the connection ids found.
    pub async fn adopt(&self) -> Result<Vec<String>, ApplyError> {
        let node = self.netlink.handle();
        let _tunnels = self.tunnels.lock().await;
        let mut redirects = Vec::new();
        let mut ours = Vec::new();
        for (alias, m) in self.own_links(&node).await? {
            if alias.role == Role::Tunnel {
                let name = ops::name(&m);
                for (prio, target) in ops::ingress_redirects(&node, m.header.index)
                    .await
                    .map_err(|e| self.nl("dump filters", name, e))?
                {
                    redirects.push((m.header.index, prio, target));
                }
            } else {
                ours.push((alias.id, m.header.index, ops::name(&m).to_string()));
            }
        }
        let conns = lock(&self.conns);
        let mut adopted = lock(&self.adopted);
        for (id, index, name) in ours {
            if conns.contains_key(&id) {
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
    pub fn unclaimed(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.adopted).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Removes every adopted connection no request claimed, then this owner's tunnel devices that no
    /// connection uses. Returns the removed link names.
    pub async fn sweep_unclaimed(&self) -> Result<Vec<String>, ApplyError> {
        let node = self.netlink.handle();
        let unclaimed: Vec<Unclaimed> = lock(&self.adopted).drain().map(|(_, u)| u).collect();
        let _tunnels = self.tunnels.lock().await;
        let mut removed = Vec::new();
        let mut first_error = None;
        for u in unclaimed {
            match self.undo_objects(&node, &u.created(), None).await {
                Ok(()) => removed.extend(u.veths.iter().map(|(_, n)| n.clone())),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match self.delete_unused_tunnels(&node).await {
            Ok(names) => removed.extend(names),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(removed), Err)
    }

    /// Removes an unclaimed connection's objects, and the tunnel devices they leave unused.
    pub(super) async fn undo_unclaimed(
        &self,
        node: &Handle,
        u: &Unclaimed,
    ) -> Result<(), ApplyError> {
        let _tunnels = self.tunnels.lock().await;
        self.undo_objects(node, &u.created(), None).await?;
        self.delete_unused_tunnels(node).await.map(drop)
    }

    /// Deletes this owner's VXLAN devices without receive filters; returns their names. The caller
    /// holds the tunnel lock.
    async fn delete_unused_tunnels(&self, node: &Handle) -> Result<Vec<String>, ApplyError> {
        let mut removed = Vec::new();
        for (alias, m) in self.own_links(node).await? {
            let name = ops::name(&m);
            if alias.role == Role::Tunnel
                && self
                    .delete_tunnel_if_idle(node, m.header.index, name)
                    .await?
            {
                removed.push(name.to_string());
            }
        }
        Ok(removed)
    }

    /// Every link in the node namespace whose alias names this owner, with that alias.
    async fn own_links(&self, node: &Handle) -> Result<Vec<(LinkAlias, LinkMessage)>, ApplyError> {
        let links = ops::links(node)
            .await
            .map_err(|e| self.nl("dump links", "*", e))?;
        Ok(links
            .into_iter()
            .filter_map(|m| Some((self.own_alias(&m)?, m)))
            .collect())
    }

    /// The record of `plan` if what an earlier run left is exactly what it asks for; `None` otherwise.
    pub(super) async fn take_over(
        &self,
        node: &Handle,
        plan: &Plan,
        pods: &[PodResult],
        u: &Unclaimed,
    ) -> Option<Vec<Created>> {
        if u.veths.len() != plan.pods.len() {
            return None;
        }
        let mut created = Vec::new();
        for (want, pod) in plan.pods.iter().zip(pods) {
            let (index, name) = u.veths.iter().find(|(_, n)| *n == want.node_name)?;
            let node_end = ops::link_by_name(node, name).await.ok()??;
            let alias = want.alias.to_string();
            if node_end.header.index != *index || ops::alias(&node_end) != Some(alias.as_str()) {
                return None;
            }
            let h = &pod.as_ref().ok()?.handle;
            let pod_end = ops::link_by_name(h, &want.name).await.ok()??;
            if ops::alias(&pod_end) != Some(alias.as_str())
                || ops::mac(&pod_end) != Some(want.mac)
                || ops::mtu(&pod_end) != Some(want.mtu)
            {
                return None;
            }
            let mut have = ops::link_addresses(h, pod_end.header.index).await.ok()?;
            let mut wanted = want.addresses.clone();
            have.sort();
            wanted.sort();
            if have != wanted {
                return None;
            }
            created.push(Created::Veth {
                index: *index,
                name: name.clone(),
            });
        }
        match super::vxlan_of(plan) {
            Some(t) => {
                let device = ops::link_by_name(node, &t.device).await.ok()??.header.index;
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
        let node = self.netlink.handle();
        let _tunnels = self.tunnels.lock().await;
        let mut ours: Vec<(Role, u32, String)> = self
            .own_links(&node)
            .await?
            .into_iter()
            .map(|(alias, m)| (alias.role, m.header.index, ops::name(&m).to_string()))
            .collect();
        // Veths first, shared tunnel devices last.
        ours.sort_by_key(|(role, ..)| *role == Role::Tunnel);
        let mut removed = Vec::new();
        for (_, index, name) in ours {
            self.delete_link(&node, index, &name).await?;
            removed.push(name);
        }
        Ok(removed)
    }
}
