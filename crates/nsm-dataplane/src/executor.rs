//! The executor: applies a [`Plan`] with rtnetlink and removes exactly what it created.
//!
//! - **Apply** is idempotent: the same plan for a connection that is already applied is a no-op (a
//!   refresh); a different plan replaces the old state. A node-side link left over under the derived name
//!   is deleted first, so an interface is never duplicated (it is looked for only when the creation
//!   reports a name taken; otherwise the kernel's echo of the new link gives both veth ends' indexes,
//!   see `ops`).
//! - Every created object is **recorded** ([`Applied`]); if a step fails, the recorded objects are removed
//!   in reverse order before the error is returned, so a failed apply leaves nothing behind.
//! - **Remove** deletes the recorded objects. Deleting a node-side veth end deletes its pod end (and the
//!   addresses, routes, neighbours and tc filters on either end). The VXLAN device is shared per
//!   (VNI, port): it is deleted when the last connection's receive filter is gone. A deletion is done
//!   when the kernel announces the link gone, not when it acknowledges (see `node`).
//! - A pod interface is addressed once the kernel reports it operational (see `pod`), so the first
//!   packets of a new connection are not lost.
//! - **WireGuard** (a plan with [`TunnelPlan::Wireguard`]): apply takes the end's key pair and socket
//!   from the [`WireguardEnds`] the mechanism elements reserved them in (found by the plan's
//!   `local_public`), and starts a [`WireguardLink`] with them: the link makes the pod's TUN (MTU,
//!   addresses, device routes) in the namespace of the mechanism's netns URL and runs one worker
//!   thread; the executor then puts the connection's alias on the TUN. Recorded: the running link.
//!   If the start fails, the socket goes back to its end at once (the port stays reserved for the
//!   retry) and nothing is left (no TUN, no thread); a later failure stops the link again. Remove
//!   stops the link (thread joined, TUN gone) and puts the socket back; the elements' Close then
//!   releases the end, which closes the socket. A changed far key or endpoint is a different plan,
//!   so the link is stopped and started anew on the same socket. A link whose worker stopped by
//!   itself (its TUN was deleted) is rebuilt by the next apply.
//! - **Restarts** (`adopt` module): [`Executor::adopt`] reads back what an earlier run of this owner
//!   left and keeps it *unclaimed* per connection id; the first [`Executor::apply`] for such a
//!   connection takes it over without touching the kernel if it is exactly what the plan asks for, else
//!   replaces it; [`Executor::sweep_unclaimed`] removes what no request claimed. WireGuard links are
//!   not adopted: their TUNs and sockets close with the process that held them, so there is nothing
//!   left to find; heal (or a refresh, which gets new ends) builds them anew.
//!
//! **Concurrency.** Operations on one connection id run one at a time (a lock per connection; the
//! forwarder's `begin` already orders a connection's Request, refreshes and Close); operations on
//! different connections run concurrently, each on netlink sockets of its own. What connections share — the VXLAN devices, their receive-filter priorities and FDB — is
//! changed under one tunnel lock, which local (kernel ↔ kernel) connections never take. The node
//! socket is driven by a thread of its own (`node`); the pod sockets of all operations by one other
//! thread ([`NetlinkHost`]); link deletions by short-lived threads of their own.

mod adopt;
mod node;
pub(crate) mod ops;
mod pod;

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::future::BoxFuture;
use ipnet::IpNet;
use netlink_packet_route::link::LinkMessage;
use rtnetlink::Handle;

use crate::error::ApplyError;
use crate::names::LinkAlias;
use crate::netns::{NetlinkHost, Netns};
use crate::plan::{Plan, PodInterface, PodKind, TunnelPlan, VxlanPlan, WireguardPlan};
use crate::wireguard::{self, LinkConfig, PublicKey, StartError, WireguardError, WireguardLink};
use crate::wireguard_ends::WireguardEnds;
use node::NodeNetlink;
pub use node::{DeletionThreads, MAX_DELETION_THREADS};
use pod::{Pod, PodResult};

/// Applies and removes plans in one node namespace.
pub struct Executor {
    owner: String,
    node: Netns,
    netlink: NodeNetlink,
    /// Drives the pod-namespace sockets of every operation (see [`pod`]).
    pod_netlink: NetlinkHost,
    /// One slot per connection id with an operation running or a plan applied.
    conns: Mutex<HashMap<String, Arc<Slot>>>,
    /// What an earlier run left, per connection id, not yet claimed by a request.
    adopted: Mutex<HashMap<String, adopt::Unclaimed>>,
    /// Held while shared tunnel devices, their filters or FDB entries change.
    tunnels: tokio::sync::Mutex<()>,
    /// The WireGuard ends (keys and sockets) links are started with; see [`Executor::use_wireguard`].
    wireguard: Mutex<Option<Arc<WireguardEnds>>>,
}

/// A connection's applied state; locked for the whole of an operation on it.
type Slot = tokio::sync::Mutex<Option<Applied>>;

/// What was applied for one connection.
#[derive(Debug)]
pub struct Applied {
    /// The plan.
    pub plan: Plan,
    created: Vec<Created>,
}

#[derive(Debug)]
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
    /// A running WireGuard link (its TUN in the pod, its worker thread, the end's socket). Stopping
    /// it removes the TUN; the socket goes back to the end with public key `public`.
    Wireguard {
        link: Mutex<Option<WireguardLink>>,
        public: PublicKey,
    },
}

impl Created {
    /// Whether it is (on) a shared VXLAN device, changed under the tunnel lock.
    fn is_tunnel(&self) -> bool {
        matches!(
            self,
            Created::TunnelFilter { .. } | Created::Fdb { .. } | Created::Vxlan
        )
    }
}

/// A link that could not start, as an apply error (a taken name is [`ApplyError::NameTaken`]).
fn wireguard_error(want: &PodInterface, error: WireguardError) -> ApplyError {
    match error {
        WireguardError::NameTaken { name, .. } => ApplyError::NameTaken {
            name,
            netns: want.netns.clone(),
        },
        source => ApplyError::Wireguard {
            interface: want.name.clone(),
            netns: want.netns.clone(),
            source,
        },
    }
}

/// The VXLAN part of `plan`, if it has one.
fn vxlan_of(plan: &Plan) -> Option<&VxlanPlan> {
    plan.tunnel.as_ref().and_then(TunnelPlan::vxlan)
}

/// Priority of the one redirect filter on a node-side veth.
const VETH_FILTER_PRIO: u16 = 1;

/// Locks a map that every holder leaves consistent (single inserts and removals).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Executor {
    /// An executor for links in `node` owned by `owner` (the forwarder name; see [`LinkAlias`]).
    pub fn new(node: Netns, owner: impl Into<String>) -> io::Result<Self> {
        let netlink = NodeNetlink::new(node.try_clone()?)?;
        Ok(Self {
            owner: owner.into(),
            node,
            netlink,
            pod_netlink: NetlinkHost::new("nsm-netlink-pods")?,
            conns: Mutex::default(),
            adopted: Mutex::default(),
            tunnels: tokio::sync::Mutex::default(),
            wireguard: Mutex::default(),
        })
    }

    /// Starts WireGuard links with the keys and sockets of `ends` (the table the WIREGUARD mechanism
    /// elements reserve in). Without it, a WireGuard plan fails with [`ApplyError::NoWireguard`].
    pub fn use_wireguard(&self, ends: Arc<WireguardEnds>) {
        *lock(&self.wireguard) = Some(ends);
    }

    fn wireguard_ends(&self) -> Option<Arc<WireguardEnds>> {
        lock(&self.wireguard).clone()
    }

    /// The node namespace.
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// Its link-deletion threads, counted: running now, the most at once (at most
    /// [`MAX_DELETION_THREADS`]) and how many were started. A link deletion is done for the caller at
    /// the kernel's announcement; its thread runs on until the kernel acknowledges (see `node`).
    pub fn deletion_threads(&self) -> DeletionThreads {
        self.netlink.deletion_threads()
    }

    /// The plan applied for `connection_id`, if any.
    pub async fn applied(&self, connection_id: &str) -> Option<Plan> {
        let slot = lock(&self.conns).get(connection_id).cloned()?;
        let applied = slot.lock().await;
        applied.as_ref().map(|a| a.plan.clone())
    }

    /// Applies `plan` (see the module doc).
    pub async fn apply(&self, plan: &Plan) -> Result<(), ApplyError> {
        let node = self.netlink.handle();
        let mut pods: Vec<PodResult> = Vec::with_capacity(plan.pods.len());
        for want in &plan.pods {
            pods.push(Pod::open(want, &self.pod_netlink).await);
        }
        for stale in self.same_interface_elsewhere(plan, &pods).await {
            // The pod's interface belongs to another connection of ours: the client came back (a
            // restarted NSC, a lost Close) and asks for the same interface again. It cannot hold two
            // interfaces with one name, so the old connection gives way, completely.
            tracing::info!(connection = %plan.connection_id, old = %stale, "executor: replacing an older connection's interface in the same pod");
            self.remove_with(&node, &stale).await?;
        }
        let slot = self.slot(&plan.connection_id);
        let mut applied = slot.lock().await;
        let result = self.apply_locked(&node, plan, pods, &mut applied).await;
        drop(applied);
        self.release(&plan.connection_id, &slot);
        result
    }

    async fn apply_locked(
        &self,
        node: &Handle,
        plan: &Plan,
        pods: Vec<PodResult>,
        applied: &mut Option<Applied>,
    ) -> Result<(), ApplyError> {
        if applied.is_none() {
            let unclaimed = lock(&self.adopted).remove(&plan.connection_id);
            if let Some(u) = unclaimed {
                if let Some(created) = self.take_over(node, plan, &pods, &u).await {
                    tracing::info!(connection = %plan.connection_id, "executor: adopted the interfaces of an earlier run");
                    *applied = Some(Applied {
                        plan: plan.clone(),
                        created,
                    });
                    return Ok(());
                }
                tracing::info!(connection = %plan.connection_id, "executor: an earlier run's interfaces differ from the request; replacing them");
                self.undo_unclaimed(node, &u).await?;
            }
        }
        if let Some(old) = applied.as_ref()
            && old.plan == *plan
            && self.still_there(node, old).await
        {
            return Ok(());
        }
        if let Some(old) = applied.take() {
            self.undo(node, &old.created, vxlan_of(&old.plan)).await?;
        }
        let pods = pods.into_iter().collect::<Result<Vec<_>, _>>().map_err(
            |(path, interface, source)| ApplyError::Netns {
                path,
                interface,
                source,
            },
        )?;
        let mut created = Vec::new();
        match self.build(node, plan, &pods, &mut created).await {
            Ok(()) => {
                *applied = Some(Applied {
                    plan: plan.clone(),
                    created,
                });
                Ok(())
            }
            Err(cause) => match self.undo(node, &created, vxlan_of(plan)).await {
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
        let node = self.netlink.handle();
        self.remove_with(&node, connection_id).await
    }

    async fn remove_with(&self, node: &Handle, connection_id: &str) -> Result<bool, ApplyError> {
        let slot = self.slot(connection_id);
        let mut applied = slot.lock().await;
        let result = match applied.take() {
            Some(old) => self
                .undo(node, &old.created, vxlan_of(&old.plan))
                .await
                .map(|()| true),
            None => {
                let unclaimed = lock(&self.adopted).remove(connection_id);
                match unclaimed {
                    Some(u) => self.undo_unclaimed(node, &u).await.map(|()| true),
                    None => Ok(false),
                }
            }
        };
        drop(applied);
        self.release(connection_id, &slot);
        result
    }

    /// Forgets every applied connection without touching the kernel (what a crash does; for tests).
    /// WireGuard links are stopped and their sockets closed, as a crash would close them.
    pub fn forget_all(&self) {
        lock(&self.conns).clear();
    }

    /// The slot of `connection_id`, made if there is none.
    fn slot(&self, connection_id: &str) -> Arc<Slot> {
        lock(&self.conns)
            .entry(connection_id.to_string())
            .or_default()
            .clone()
    }

    /// Drops the slot of `connection_id` if it is empty and nobody else holds it. Slots are only
    /// handed out under the map's lock, so with the map locked a count of two (the map and `slot`)
    /// cannot grow.
    fn release(&self, connection_id: &str, slot: &Arc<Slot>) {
        let mut conns = lock(&self.conns);
        let unused = conns
            .get(connection_id)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
            && Arc::strong_count(slot) == 2
            && slot.try_lock().is_ok_and(|a| a.is_none());
        if unused {
            conns.remove(connection_id);
        }
    }

    /// Ids of other connections of this owner whose interface sits in one of `plan`'s pods under the
    /// name the plan wants there.
    async fn same_interface_elsewhere(&self, plan: &Plan, pods: &[PodResult]) -> Vec<String> {
        let mut out = Vec::new();
        for (want, pod) in plan.pods.iter().zip(pods) {
            let Ok(pod) = pod else {
                continue;
            };
            let Ok(Some(m)) = ops::link_by_name(&pod.handle, &want.name).await else {
                continue;
            };
            if let Some(a) = self.own_alias(&m)
                && a.role == want.role
                && a.id != plan.connection_id
                && !out.contains(&a.id)
            {
                out.push(a.id);
            }
        }
        out
    }

    async fn still_there(&self, node: &Handle, applied: &Applied) -> bool {
        for pod in applied.plan.pods.iter().filter(|p| p.kind == PodKind::Veth) {
            if !matches!(ops::link_by_name(node, &pod.node_name).await, Ok(Some(_))) {
                return false;
            }
        }
        // A link whose worker stopped by itself (its TUN was deleted) is rebuilt.
        applied.created.iter().all(|c| match c {
            Created::Wireguard { link, .. } => {
                lock(link).as_ref().is_some_and(|l| l.stats().running)
            }
            _ => true,
        })
    }

    /// The alias of link `m` if it names this owner.
    fn own_alias(&self, m: &LinkMessage) -> Option<LinkAlias> {
        ops::alias(m)
            .and_then(LinkAlias::parse)
            .filter(|a| a.owner == self.owner)
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

    async fn build(
        &self,
        node: &Handle,
        plan: &Plan,
        pods: &[Pod],
        created: &mut Vec<Created>,
    ) -> Result<(), ApplyError> {
        let tunnel = match &plan.tunnel {
            None => None,
            Some(TunnelPlan::Vxlan(t)) => Some(t),
            Some(TunnelPlan::Wireguard(w)) => {
                return self.build_wireguard(node, plan, w, pods, created).await;
            }
        };
        if let Some(t) = tunnel {
            self.check_underlay(node, t.local, t.remote).await?;
        }
        let mut node_ends = Vec::new();
        for (want, pod) in plan.pods.iter().zip(pods) {
            node_ends.push(self.build_veth(node, want, pod, created).await?);
        }
        match (tunnel, node_ends.as_slice()) {
            (Some(t), [node_end]) => {
                let _tunnels = self.tunnels.lock().await;
                self.build_tunnel(node, t, *node_end, created).await
            }
            (None, [a, b]) => futures::future::try_join(
                self.redirect(node, *a, *b, &plan.pods[0].node_name),
                self.redirect(node, *b, *a, &plan.pods[1].node_name),
            )
            .await
            .map(drop),
            _ => Ok(()),
        }
    }

    async fn redirect(
        &self,
        node: &Handle,
        from: u32,
        to: u32,
        name: &str,
    ) -> Result<(), ApplyError> {
        // Sent together on one socket: the kernel takes the qdisc first, without a round trip between.
        futures::future::try_join(
            async {
                ops::ensure_ingress(node, from)
                    .await
                    .map_err(|e| self.nl("add ingress qdisc", name, e))
            },
            async {
                ops::add_redirect(node, from, VETH_FILTER_PRIO, to, None)
                    .await
                    .map_err(|e| self.nl("add redirect filter", name, e))
            },
        )
        .await
        .map(drop)
    }

    /// Makes way for a veth whose creation found a name taken: a node end under our derived name is a
    /// leftover of this very connection and is deleted; the pod's interface name taken by anything
    /// else is `NameTaken`. (Checked only then: a creation that succeeds needs no lookup.)
    async fn clear_way(
        &self,
        node: &Handle,
        want: &PodInterface,
        pod: &Pod,
    ) -> Result<(), ApplyError> {
        if let Ok(Some(stale)) = ops::link_by_name(node, &want.node_name).await {
            self.delete_link(node, stale.header.index, &want.node_name)
                .await?;
        }
        if let Ok(Some(_)) = ops::link_by_name(&pod.handle, &want.name).await {
            return Err(ApplyError::NameTaken {
                name: want.name.clone(),
                netns: want.netns.clone(),
            });
        }
        Ok(())
    }

    /// Creates one veth and configures its pod end; returns the node end's index.
    async fn build_veth(
        &self,
        node: &Handle,
        want: &PodInterface,
        pod: &Pod,
        created: &mut Vec<Created>,
    ) -> Result<u32, ApplyError> {
        let pod_netns = pod.ns.to_string();
        let pod_err = |op, source| ApplyError::Netlink {
            op,
            interface: want.name.clone(),
            netns: pod_netns.clone(),
            source,
        };
        let add = || {
            ops::add_veth(
                node,
                &want.node_name,
                &want.name,
                pod.ns.raw_fd(),
                want.mac,
                want.mtu,
            )
        };
        let echo = match add().await {
            // A name is taken: clear the way if it is a leftover of ours, else fail `NameTaken`.
            Err(e) if ops::is_errno(&e, nix::errno::Errno::EEXIST) => {
                self.clear_way(node, want, pod).await?;
                add().await
            }
            r => r,
        }
        .map_err(|e| self.nl("create veth", &want.node_name, e))?
        .filter(|m| ops::name(m) == want.node_name);
        // The echo names both indexes; a kernel that does not echo needs the lookups.
        let node_index = match &echo {
            Some(m) => m.header.index,
            None => self.index_of(node, &self.node, &want.node_name).await?,
        };
        created.push(Created::Veth {
            index: node_index,
            name: want.node_name.clone(),
        });
        let alias = want.alias.to_string();
        // Pod end up first: it gets its carrier when the node end comes up, while its queue is not
        // active yet, which the kernel treats as urgent — so it turns operational at once, where the
        // end brought up second may wait for the link watcher's next run, up to a second later.
        let h = &pod.handle;
        let pod_index = match echo.as_ref().and_then(ops::peer_index) {
            Some(index) => index,
            None => self.index_of(h, &pod.ns, &want.name).await?,
        };
        ops::set_alias_up(h, pod_index, &alias)
            .await
            .map_err(|e| pod_err("set alias/up", e))?;
        ops::set_alias_up(node, node_index, &alias)
            .await
            .map_err(|e| self.nl("set alias/up", &want.node_name, e))?;
        pod.operational(pod_index).await;
        // Sent together: one socket, so the kernel still takes them in this order, without a round
        // trip between them.
        let mut config: Vec<BoxFuture<'_, Result<(), ApplyError>>> = Vec::new();
        for a in &want.addresses {
            let f = ops::add_address(h, pod_index, *a);
            config.push(Box::pin(async {
                f.await.map_err(|e| pod_err("add address", e))
            }));
        }
        for r in &want.routes {
            let f = ops::add_route(h, pod_index, r.destination, r.via);
            config.push(Box::pin(async {
                f.await.map_err(|e| pod_err("add route", e))
            }));
        }
        for n in &want.neighbours {
            let f = ops::add_neighbour(h, pod_index, n.ip, n.mac);
            config.push(Box::pin(async {
                f.await.map_err(|e| pod_err("add neighbour", e))
            }));
        }
        futures::future::try_join_all(config).await?;
        Ok(node_index)
    }

    async fn check_underlay(
        &self,
        node: &Handle,
        local: IpAddr,
        remote: IpAddr,
    ) -> Result<(), ApplyError> {
        let netns = self.node.to_string();
        let addrs = ops::addresses(node)
            .await
            .map_err(|e| self.nl("dump addresses", "*", e))?;
        if !addrs.contains(&local) {
            return Err(ApplyError::TunnelSourceMissing { local, netns });
        }
        let routes = ops::unicast_routes(node, remote.is_ipv4())
            .await
            .map_err(|e| self.nl("dump routes", "*", e))?;
        if !routes.iter().any(|r: &IpNet| r.contains(&remote)) {
            return Err(ApplyError::TunnelUnreachable { remote, netns });
        }
        Ok(())
    }

    /// Starts the WireGuard link of `plan` (its one pod interface is a TUN): takes the reserved
    /// end's key and socket, starts the link (TUN in the pod with MTU, addresses and device routes;
    /// the worker), puts the connection's alias on the TUN and waits until it is operational. If the
    /// start fails, the socket goes back to the end at once; a later failure is undone by the
    /// caller (stopping the link puts it back).
    async fn build_wireguard(
        &self,
        node: &Handle,
        plan: &Plan,
        w: &WireguardPlan,
        pods: &[Pod],
        created: &mut Vec<Created>,
    ) -> Result<(), ApplyError> {
        let (Some(want), Some(pod)) = (plan.pods.first(), pods.first()) else {
            return Err(ApplyError::LinkMissing {
                interface: "the pod TUN of a WireGuard plan".to_string(),
                netns: plan.connection_id.clone(),
            });
        };
        let ends = self
            .wireguard_ends()
            .ok_or_else(|| ApplyError::NoWireguard {
                connection: plan.connection_id.clone(),
            })?;
        self.check_underlay(node, w.local.ip(), w.peer.ip()).await?;
        let pod_ns = pod.ns.try_clone().map_err(|source| ApplyError::Netns {
            path: want.netns.clone(),
            interface: want.name.clone(),
            source,
        })?;
        let (key, socket) =
            ends.take(&w.local_public)
                .map_err(|source| ApplyError::WireguardEnd {
                    connection: plan.connection_id.clone(),
                    public_key: w.local_public.to_string(),
                    source,
                })?;
        let config = LinkConfig {
            pod: pod_ns,
            interface: wireguard::PodInterface {
                name: want.name.clone(),
                mtu: want.mtu,
                addresses: want.addresses.clone(),
                routes: want.routes.iter().map(|r| r.destination).collect(),
            },
            key,
            peer: w.peer_public,
            peer_endpoint: Some(w.peer),
            persistent_keepalive: Some(w.keepalive),
            allowed_sources: w.allowed.clone(),
        };
        // Configured on this operation's pod socket (no socket or thread of the link's own).
        let h = &pod.handle;
        let index = match WireguardLink::start_with(socket, config, Some(h)).await {
            Ok(link) => {
                let index = link.index();
                created.push(Created::Wireguard {
                    link: Mutex::new(Some(link)),
                    public: w.local_public,
                });
                index
            }
            Err(StartError { error, socket }) => {
                ends.put_back(&w.local_public, socket);
                return Err(wireguard_error(want, error));
            }
        };
        // The alias marks the TUN as this connection's (a later connection asking for the same
        // interface in the same pod replaces this one, as with veths).
        ops::set_alias_up(h, index, &want.alias.to_string())
            .await
            .map_err(|source| ApplyError::Netlink {
                op: "set alias/up",
                interface: want.name.clone(),
                netns: pod.ns.to_string(),
                source,
            })?;
        pod.operational(index).await;
        Ok(())
    }

    /// Stops a link and puts its socket back to its end (if the end is still reserved).
    async fn stop_link(&self, link: &Mutex<Option<WireguardLink>>, public: PublicKey) {
        let Some(link) = lock(link).take() else {
            return;
        };
        // Joins the worker thread: it returns at once when woken, but it is still a join.
        let socket = tokio::task::spawn_blocking(move || link.stop()).await;
        match (socket, self.wireguard_ends()) {
            (Ok(Some(socket)), Some(ends)) => ends.put_back(&public, socket),
            (Ok(_), _) => {}
            (Err(e), _) => tracing::error!("executor: stopping a WireGuard link failed: {e}"),
        }
    }

    /// Connects `node_end` to the shared VXLAN device. The caller holds the tunnel lock.
    async fn build_tunnel(
        &self,
        node: &Handle,
        t: &VxlanPlan,
        node_end: u32,
        created: &mut Vec<Created>,
    ) -> Result<(), ApplyError> {
        let dev = &t.device;
        let device = match ops::link_by_name(node, dev).await {
            Ok(Some(m)) => m.header.index,
            _ => {
                let echo = ops::add_vxlan(node, dev, t.vni, t.port, t.local, t.mtu)
                    .await
                    .map_err(|e| self.nl("create vxlan", dev, e))?;
                let index = match echo.filter(|m| ops::name(m) == dev) {
                    Some(m) => m.header.index,
                    None => self.index_of(node, &self.node, dev).await?,
                };
                created.push(Created::Vxlan);
                ops::set_alias_up(node, index, &t.alias.to_string())
                    .await
                    .map_err(|e| self.nl("set alias/up", dev, e))?;
                index
            }
        };
        ops::ensure_ingress(node, device)
            .await
            .map_err(|e| self.nl("add ingress qdisc", dev, e))?;
        let used = ops::ingress_priorities(node, device)
            .await
            .map_err(|e| self.nl("dump filters", dev, e))?;
        let prio = (1..=u16::MAX)
            .find(|p| !used.contains(p))
            .ok_or_else(|| self.nl("pick filter priority", dev, rtnetlink::Error::RequestFailed))?;
        ops::add_redirect(node, device, prio, node_end, Some(t.near_mac))
            .await
            .map_err(|e| self.nl("add receive filter", dev, e))?;
        created.push(Created::TunnelFilter { device, prio });
        ops::add_fdb(node, device, t.far_mac, t.remote)
            .await
            .map_err(|e| self.nl("add fdb entry", dev, e))?;
        created.push(Created::Fdb {
            device,
            mac: t.far_mac,
            remote: t.remote,
        });
        self.redirect(node, node_end, device, &t.node_interface)
            .await
    }

    /// Removes `created` in reverse order, then the shared tunnel device if nothing uses it any more.
    async fn undo(
        &self,
        node: &Handle,
        created: &[Created],
        tunnel: Option<&VxlanPlan>,
    ) -> Result<(), ApplyError> {
        let shared = tunnel.is_some() || created.iter().any(Created::is_tunnel);
        let _tunnels = match shared {
            true => Some(self.tunnels.lock().await),
            false => None,
        };
        self.undo_objects(node, created, tunnel).await
    }

    /// [`Executor::undo`] for a caller that already holds the tunnel lock if it needs it.
    async fn undo_objects(
        &self,
        node: &Handle,
        created: &[Created],
        tunnel: Option<&VxlanPlan>,
    ) -> Result<(), ApplyError> {
        let mut first_error = None;
        for c in created.iter().rev() {
            let r = match c {
                Created::Veth { index, name } => self.delete_link(node, *index, name).await,
                Created::TunnelFilter { device, prio } => ops::del_filter(node, *device, *prio)
                    .await
                    .or_else(ops::ignore_missing)
                    .map_err(|e| self.nl("delete receive filter", "vxlan", e)),
                Created::Fdb {
                    device,
                    mac,
                    remote,
                } => ops::del_fdb(node, *device, *mac, *remote)
                    .await
                    .or_else(ops::ignore_missing)
                    .map_err(|e| self.nl("delete fdb entry", "vxlan", e)),
                Created::Vxlan => Ok(()), // deleted below once unused
                Created::Wireguard { link, public } => {
                    self.stop_link(link, *public).await;
                    Ok(())
                }
            };
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        if let Some(t) = tunnel
            && let Err(e) = self.delete_tunnel_if_unused(node, t).await
        {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes the tunnel device of `t` if it is ours and no filter uses it. The caller holds the
    /// tunnel lock.
    async fn delete_tunnel_if_unused(
        &self,
        node: &Handle,
        t: &VxlanPlan,
    ) -> Result<(), ApplyError> {
        let Ok(Some(m)) = ops::link_by_name(node, &t.device).await else {
            return Ok(());
        };
        if self.own_alias(&m).is_none() {
            return Ok(());
        }
        self.delete_tunnel_if_idle(node, m.header.index, &t.device)
            .await
            .map(drop)
    }

    /// Deletes tunnel device `index` (called `name`) if no receive filter uses it; whether it did.
    /// The caller holds the tunnel lock.
    async fn delete_tunnel_if_idle(
        &self,
        node: &Handle,
        index: u32,
        name: &str,
    ) -> Result<bool, ApplyError> {
        let users = ops::ingress_priorities(node, index)
            .await
            .map_err(|e| self.nl("dump filters", name, e))?;
        if !users.is_empty() {
            return Ok(false);
        }
        self.delete_link(node, index, name).await?;
        Ok(true)
    }

    /// Deletes link `index` if it still carries the recorded `name` (indexes are reused; see [`node`]).
    async fn delete_link(&self, node: &Handle, index: u32, name: &str) -> Result<(), ApplyError> {
        match ops::link_by_name(node, name).await {
            Ok(Some(m)) if m.header.index == index => self
                .netlink
                .delete_link(index)
                .await
                .map_err(|source| ApplyError::NodeNetlink {
                    netns: self.node.to_string(),
                    source,
                })?
                .map_err(|e| self.nl("delete link", name, e)),
            Ok(_) => Ok(()),
            Err(e) => Err(self.nl("look up", name, e)),
        }
    }
}
