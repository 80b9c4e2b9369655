//! The pod side of one operation: the pod's namespace and a netlink handle inside it (driven by the
//! executor's pod-socket thread, so opening one starts no thread); and the wait for a new pod
//! interface to become operational before it gets its addresses.
//!
//! Why wait: the kernel configures IPv6 on an interface only once its link watcher has seen it up
//! (`operstate` UP), and at that moment it re-validates the addresses already there; packets to them
//! arriving meanwhile are dropped (counted as `Ip6InAddrErrors`). Built quickly and pinged at once,
//! a connection sometimes lost its first IPv6 echo that way. The pod end is therefore brought up
//! before the node end (see `build_veth`): it then gets its carrier while its queue is not active
//! yet, an event the link watcher handles at once (< 1 ms here), where an end brought up second can
//! wait for the watcher's next run, up to a second later.

use std::io;
use std::time::Duration;

use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::sys::{AsyncSocket, SocketAddr};

use super::node::RTMGRP_LINK;
use super::ops;
use crate::netns::{NetlinkHost, Netns};
use crate::plan::PodInterface;

/// A pod namespace opened for one operation, with a netlink handle inside it.
pub(super) struct Pod {
    pub(super) handle: Handle,
    pub(super) ns: Netns,
}

/// A pod namespace that could not be opened: the `ApplyError::Netns` of a build.
pub(super) type PodResult = Result<Pod, (std::path::PathBuf, String, io::Error)>;

impl Pod {
    /// Opens the pod's namespace and a netlink socket in it, driven by `host` (the executor's one
    /// thread for pod sockets: their requests are all quick, see [`NetlinkHost`]).
    pub(super) async fn open(want: &PodInterface, host: &NetlinkHost) -> PodResult {
        let err = |e| (want.netns.clone(), want.name.clone(), e);
        let ns = Netns::open(&want.netns).map_err(err)?;
        let handle = host.netlink(&ns).await.map_err(err)?;
        Ok(Self { handle, ns })
    }

    /// Returns once link `index` is operationally up (see the module doc). Usually it already is
    /// when asked; otherwise this listens to the pod's link announcements until the kernel reports
    /// it, for at most [`LINKWATCH_BOUND`] in case an announcement is lost (then the build goes on as
    /// it would have without waiting).
    pub(super) async fn operational(&self, index: u32) {
        if self.is_up(index).await {
            return;
        }
        let subscribed = self.ns.drive("nsm-netlink-watch", || {
            let (mut conn, handle, announced) = rtnetlink::new_connection()?;
            conn.socket_mut()
                .socket_mut()
                .bind(&SocketAddr::new(0, RTMGRP_LINK))?;
            Ok(((handle, announced), conn))
        });
        let (watch, mut announced) = match subscribed {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(index, netns = %self.ns, "executor: cannot listen to link announcements ({e}); going on");
                return;
            }
        };
        // Asked again now that announcements are heard: it may have come up in between.
        if !self.is_up(index).await {
            let up = async {
                while let Some((m, _)) = announced.next().await {
                    if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = m.payload
                        && l.header.index == index
                        && ops::oper_up(&l)
                    {
                        return;
                    }
                }
            };
            // Kernel time, not connection time: the link watcher runs at most a second late.
            if tokio::time::timeout(LINKWATCH_BOUND, up).await.is_err() {
                tracing::debug!(index, netns = %self.ns, "executor: no announcement that the pod interface is up; going on");
            }
        }
        // The listener's thread ends when it finds both gone; only the handle's drop wakes it.
        drop(announced);
        drop(watch);
    }

    async fn is_up(&self, index: u32) -> bool {
        matches!(ops::link_by_index(&self.handle, index).await, Ok(Some(m)) if ops::oper_up(&m))
    }
}

/// How long the kernel's link watcher may take to report a new interface operational (it rate-limits
/// non-urgent events to one run per second).
const LINKWATCH_BOUND: Duration = Duration::from_millis(1500);
