//! The node namespace's netlink sockets: a pool of handles, and link deletion that completes when the
//! kernel announces the link gone.
//!
//! - **Pool.** Every executor operation (one connection's apply or remove) takes a handle of its own
//!   ([`NodeNetlink::handle`]), so operations of different connections never queue behind each other on
//!   one socket; each handle's connection runs on its own thread ([`Netns::netlink`]). Handles go back
//!   to the pool when dropped; at most [`MAX_IDLE`] idle ones are kept.
//! - **Deletion** ([`NodeNetlink::delete_link`]). The kernel answers `RTM_DELLINK` only after an
//!   `rcu_barrier` (~20–40 ms here), long after the link has left the namespace: it unlinks the device,
//!   removes its addresses, routes, neighbours and qdiscs, announces `RTM_DELLINK` to the link
//!   multicast group, and only then waits for RCU before it frees the device and acknowledges. So the
//!   request is sent on a handle of its own and the deletion is complete for us at whichever comes
//!   first: the announcement for that link index (usually < 1 ms), or the acknowledgement (the
//!   backstop if an announcement was lost). The handle returns to the pool once the kernel has
//!   acknowledged.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use tokio::sync::{broadcast, oneshot};

use super::ops;
use crate::netns::Netns;

/// Idle handles kept for later operations; more are closed when they come back.
const MAX_IDLE: usize = 16;

/// `RTMGRP_LINK`: the link notifications multicast group.
pub(super) const RTMGRP_LINK: u32 = 1;

/// Announced link deletions buffered per waiter before it counts as lagging (then it waits for the
/// acknowledgement instead).
const EVENTS_BUFFER: usize = 1024;

/// Netlink access to the node namespace (see the module doc).
pub(super) struct NodeNetlink {
    ns: Netns,
    idle: Mutex<Vec<Handle>>,
    /// Indexes of links the kernel announced deleted.
    deleted: broadcast::Sender<u32>,
    /// Ends the announcement listener's thread when the executor goes.
    _stop_events: oneshot::Sender<()>,
}

/// A handle taken from the pool; goes back on drop.
pub(super) struct Pooled {
    handle: Option<Handle>,
    pool: Arc<NodeNetlink>,
}

impl std::ops::Deref for Pooled {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        // Only `Drop` takes the handle out.
        self.handle.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.pool.put_back(h);
        }
    }
}

impl NodeNetlink {
    /// Opens the pool for `ns` and starts listening to its link announcements.
    pub(super) fn new(ns: Netns) -> io::Result<Arc<Self>> {
        let (deleted, _) = broadcast::channel(EVENTS_BUFFER);
        let (stop_events, stop) = oneshot::channel();
        let announce = deleted.clone();
        ns.drive("nsm-netlink-events", move || {
            let (mut conn, handle, mut messages) = rtnetlink::new_connection()?;
            conn.socket_mut()
                .socket_mut()
                .bind(&SocketAddr::new(0, RTMGRP_LINK))?;
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
            Ok(((), async move {
                tokio::select! {
                    () = conn => {}
                    () = listen => {}
                    _ = stop => {}
                }
            }))
        })?;
        Ok(Arc::new(Self {
            ns,
            idle: Mutex::default(),
            deleted,
            _stop_events: stop_events,
        }))
    }

    /// A handle for one operation.
    pub(super) fn handle(self: &Arc<Self>) -> io::Result<Pooled> {
        let idle = self.lock_idle().pop();
        let handle = match idle {
            Some(h) => h,
            None => self.ns.netlink()?,
        };
        Ok(Pooled {
            handle: Some(handle),
            pool: self.clone(),
        })
    }

    fn put_back(&self, handle: Handle) {
        let mut idle = self.lock_idle();
        if idle.len() < MAX_IDLE {
            idle.push(handle);
        }
    }

    fn lock_idle(&self) -> MutexGuard<'_, Vec<Handle>> {
        // The list stays consistent whatever a panicking holder did (push/pop only).
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes link `index` with `handle`, which is used for nothing else (see the module doc); a
    /// link already gone is success.
    pub(super) async fn delete_link(
        &self,
        handle: Pooled,
        index: u32,
    ) -> Result<(), rtnetlink::Error> {
        let mut announced = self.deleted.subscribe();
        let mut acked = Box::pin(async move {
            let r = ops::del_link(&handle, index).await.or_else(ignore_missing);
            drop(handle);
            r
        });
        loop {
            tokio::select! {
                r = &mut acked => return r,
                ev = announced.recv() => match ev {
                    Ok(i) if i == index => break,
                    Ok(_) => {}
                    // Announcements lost or the listener gone: the acknowledgement decides.
                    Err(_) => return acked.await,
                },
            }
        }
        // Gone from the namespace; the acknowledgement follows once the kernel has freed the device.
        tokio::spawn(async move {
            if let Err(e) = acked.await {
                tracing::warn!(
                    index,
                    "executor: link deletion acknowledged with an error after the kernel announced it: {e}"
                );
            }
        });
        Ok(())
    }
}

/// Treats "it is already gone" as success: removal is idempotent.
pub(super) fn ignore_missing(e: rtnetlink::Error) -> Result<(), rtnetlink::Error> {
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
