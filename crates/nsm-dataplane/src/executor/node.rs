//! The node namespace's netlink: one shared handle, and link deletion that completes when the kernel
//! announces the link gone.
//!
//! - **Requests** go through one handle whose connection runs on a thread of its own
//!   ([`Netns::netlink`]). The kernel takes its RTNL lock for nearly every request anyway, so more
//!   sockets would not run them in parallel; what must not happen is a slow request blocking a tokio
//!   worker, or another connection's deletion (below) holding up this socket.
//! - **Deletion** ([`NodeNetlink::delete_link`]). The kernel answers `RTM_DELLINK` only after an
//!   `rcu_barrier` (~20–40 ms here, outside the RTNL lock), long after the link has left the
//!   namespace: it unlinks the device, removes its addresses, routes, neighbours and qdiscs, announces
//!   `RTM_DELLINK` to the link multicast group, and only then waits for RCU before it frees the device
//!   and acknowledges. So each deletion is sent from a short-lived thread of its own, which waits for
//!   the acknowledgement there (deletions of different connections overlap in the kernel), and the
//!   deletion is complete for us at whichever comes first: the announcement for that link index
//!   (usually < 1 ms), or the acknowledgement (the backstop if an announcement was lost). At most
//!   [`MAX_DELETION_THREADS`] such threads exist at once (a mass Close waits for a free one); how many
//!   are running, the most at once and how many were started is counted ([`DeletionThreads`]).
//! - **Announcements** are heard on a socket of their own whose kernel filter passes only
//!   `RTM_DELLINK`, so the link changes of every set-up do not wake the listener.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkMessage;
use rtnetlink::Handle;
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use rtnetlink::sys::{AsyncSocket, Socket, SocketAddr, protocols::NETLINK_ROUTE};
use socket2::{SockFilter, SockRef};
use tokio::sync::{Semaphore, broadcast, oneshot};

use super::ops;
use crate::netns::Netns;

/// `RTMGRP_LINK`: the link notifications multicast group.
pub(super) const RTMGRP_LINK: u32 = 1;

/// A socket filter (classic BPF) that lets only `RTM_DELLINK` announcements through: the kernel drops
/// the rest (every `RTM_NEWLINK` of every link change in the namespace, several per connection)
/// before they are queued, so the listener neither wakes for them nor parses them. Each announcement
/// is one message in its own buffer, so its type is at offset 4 (host byte order, which `ldh` reads
/// as big-endian; hence the constant).
const DELLINK_ONLY: [SockFilter; 4] = [
    // ldh [4]: nlmsg_type
    SockFilter::new(0x28, 0, 0, 4),
    // jeq RTM_DELLINK ? next : drop
    SockFilter::new(
        0x15,
        0,
        1,
        u16::from_be_bytes(RTM_DELLINK.to_ne_bytes()) as u32,
    ),
    // ret: accept whole
    SockFilter::new(0x06, 0, 0, u32::MAX),
    // ret: drop
    SockFilter::new(0x06, 0, 0, 0),
];

/// `RTM_DELLINK`.
const RTM_DELLINK: u16 = 17;

/// Announced link deletions buffered per waiter before it counts as lagging (then it waits for the
/// acknowledgement instead).
const EVENTS_BUFFER: usize = 1024;

/// Deletion threads alive at once: enough for the kernel to overlap deletions (32 take ~86 ms from
/// 32 threads against ~724 ms one after another), few enough that a mass Close does not start a
/// thread per link.
pub const MAX_DELETION_THREADS: usize = 32;

/// Link-deletion threads of one executor, counted (see [`crate::Executor::deletion_threads`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletionThreads {
    /// Running now: sending a deletion or waiting for the kernel's answer to it.
    pub live: usize,
    /// The most running at once since the executor was made; never above [`MAX_DELETION_THREADS`].
    pub peak: usize,
    /// Started since the executor was made (each deletes one link).
    pub started: usize,
}

/// The counters behind [`DeletionThreads`].
#[derive(Debug, Default)]
struct DeletionGauge {
    live: AtomicUsize,
    peak: AtomicUsize,
    started: AtomicUsize,
}

impl DeletionGauge {
    /// Counts the calling deletion thread as running until the guard is dropped.
    fn running(&self) -> Running<'_> {
        // Relaxed: statistics; the semaphore, not these counters, orders the threads.
        self.started.fetch_add(1, Ordering::Relaxed);
        let live = self.live.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(live, Ordering::Relaxed);
        Running(self)
    }
}

/// A deletion thread counted in [`DeletionGauge::live`].
struct Running<'a>(&'a DeletionGauge);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Netlink access to the node namespace (see the module doc).
pub(super) struct NodeNetlink {
    ns: Netns,
    handle: Handle,
    /// Indexes of links the kernel announced deleted.
    deleted: broadcast::Sender<u32>,
    /// Permits for deletion threads ([`MAX_DELETION_THREADS`]).
    deletion_threads: Arc<Semaphore>,
    /// Counts deletion threads ([`DeletionThreads`]).
    gauge: Arc<DeletionGauge>,
    /// Ends the announcement listener's thread when the executor goes.
    _stop_events: oneshot::Sender<()>,
}

impl NodeNetlink {
    /// Opens the handle for `ns` and starts listening to its link announcements.
    pub(super) fn new(ns: Netns) -> io::Result<Self> {
        let handle = ns.netlink()?;
        let (deleted, _) = broadcast::channel(EVENTS_BUFFER);
        let (stop_events, stop) = oneshot::channel();
        let announce = deleted.clone();
        ns.drive("nsm-netlink-events", move || {
            let (mut conn, handle, mut messages) = rtnetlink::new_connection()?;
            let socket = conn.socket_mut().socket_mut();
            socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
            if let Err(e) = SockRef::from(&*socket).attach_filter(&DELLINK_ONLY) {
                tracing::debug!(
                    "executor: no kernel filter for link announcements ({e}); reading them all"
                );
            }
            let listen = async move {
                let _handle = handle;
                while let Some((m, _)) = messages.next().await {
                    if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) = m.payload
                    {
                        // No waiter is not an error.
                        let _ = announce.send(l.header.index);
                    }
                }
            };
            let run = async move {
                tokio::select! {
                    () = conn => {}
                    () = listen => {}
                    _ = stop => {}
                }
            };
            Ok(((), run))
        })?;
        Ok(Self {
            ns,
            handle,
            deleted,
            deletion_threads: Arc::new(Semaphore::new(MAX_DELETION_THREADS)),
            gauge: Arc::default(),
            _stop_events: stop_events,
        })
    }

    /// The handle for requests in the node namespace.
    pub(super) fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The deletion threads, counted.
    pub(super) fn deletion_threads(&self) -> DeletionThreads {
        DeletionThreads {
            live: self.gauge.live.load(Ordering::Relaxed),
            peak: self.gauge.peak.load(Ordering::Relaxed),
            started: self.gauge.started.load(Ordering::Relaxed),
        }
    }

    /// Deletes link `index` (see the module doc); a link already gone is success. `Err(io)` if no
    /// thread could be started for it.
    pub(super) async fn delete_link(&self, index: u32) -> io::Result<Result<(), rtnetlink::Error>> {
        let permit = self
            .deletion_threads
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let gauge = self.gauge.clone();
        let mut announced = self.deleted.subscribe();
        let (tx, mut acked) = oneshot::channel();
        self.ns.spawn("nsm-netlink-del", move |entered| {
            let running = gauge.running();
            let r = entered.and_then(|()| del_link_blocking(index));
            let r = r.unwrap_or_else(|e| Err(rtnetlink::Error::NamespaceError(e.to_string())));
            let _ = tx.send(r.or_else(ops::ignore_missing));
            // Counted out before the permit is free for the next thread, so `live` never counts
            // more threads than there are permits.
            drop(running);
            drop(permit);
        })?;
        loop {
            tokio::select! {
                r = &mut acked => return Ok(answer(r)),
                ev = announced.recv() => match ev {
                    Ok(i) if i == index => break,
                    Ok(_) => {}
                    // Announcements lost or the listener gone: the acknowledgement decides.
                    Err(_) => return Ok(answer(acked.await)),
                },
            }
        }
        // Gone from the namespace; the acknowledgement follows once the kernel has freed the device.
        tokio::spawn(async move {
            if let Err(e) = answer(acked.await) {
                tracing::warn!(
                    index,
                    "executor: link deletion acknowledged with an error after the kernel announced it: {e}"
                );
            }
        });
        Ok(Ok(()))
    }
}

/// The deletion thread's answer; it always sends one unless it panicked.
fn answer(
    r: Result<Result<(), rtnetlink::Error>, oneshot::error::RecvError>,
) -> Result<(), rtnetlink::Error> {
    r.unwrap_or(Err(rtnetlink::Error::RequestFailed))
}

/// Sends `RTM_DELLINK` for link `index` on a new socket in this thread's namespace and waits for the
/// kernel's answer (`Ok(Err)` for a netlink error).
fn del_link_blocking(index: u32) -> io::Result<Result<(), rtnetlink::Error>> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelLink(link));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&buf, 0)?;
    loop {
        let mut reply = Vec::with_capacity(8192);
        let n = socket.recv(&mut reply, 0)?;
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if msg.header.sequence_number != 1 {
            continue;
        }
        return Ok(match msg.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => Err(rtnetlink::Error::NetlinkError(e)),
            _ => Ok(()),
        });
    }
}
