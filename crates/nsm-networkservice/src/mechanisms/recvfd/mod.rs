//! `mechanisms/recvfd`: receives the files a peer's `sendfd` passed (see
//! [`fdconn`](crate::grpc::fdconn)) and names them for the rest of this process.
//!
//! An `inode://dev/ino` value of a mechanism's `inodeURL` is resolved by claiming the fd with that
//! `(dev, ino)` from the connection's fd side channel — waiting for it, at most until the call's
//! deadline — and replaced with `file:///proc/<our pid>/fd/<n>` (what the data plane opens). Answers
//! get the `inode://` value back. The fds are kept per connection, so that refreshes present the
//! same file name and Close can still use it.
//!
//! - [`RecvFdServer`] — **Request**: resolves the mechanism preferences and the connection's
//!   mechanism of the incoming call; after success, keeps only the file the selected mechanism names
//!   (none if it names none of them).
//!   A missing fd fails the call with `DeadlineExceeded` naming recvfd and the inode URL.
//!   **Close**: resolves (from the kept files), closes downstream, then closes the files.
//! - [`RecvFdClient`] — **Request**: resolves the mechanism of the answer from the next hop (an
//!   endpoint passing its own network namespace); if its fd does not come, the downstream connection
//!   is closed again before the error is returned. On a refresh, `sendfd` (after us) has already put
//!   our name back on the answer; the copy of the file that came with it is claimed and closed.
//!   **Close**: closes downstream, then the files.
//!
//! **State**: the received files of each connection, in its metadata (server and client side
//! separately); dropped — and so closed — with the metadata (Close, failed first Request).
//! Unclaimed fds die with the gRPC connection. Without a unix-socket connection (TCP) values pass
//! unchanged.

mod client;
mod server;

pub use client::RecvFdClient;
pub use server::RecvFdServer;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use nsm_api::Mechanism;
use nsm_api::mechanisms::common;
use nsm_api::url::NsmUrl;
use nsm_core::metadata::Side;
use nsm_core::{Ctx, NsmError, Result};
use parking_lot::Mutex;

use crate::grpc::fdconn::{FdError, FdTransceiver, InodeKey, proc_fd_url};

const ELEMENT: &str = "recvfd";

/// How long to wait for an fd when the call has no deadline.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(15);

/// One received file: the fd (closed when dropped) and its name here.
#[derive(Debug)]
struct Received {
    _fd: OwnedFd,
    file_url: String,
}

/// The files received for one connection, by the inode URL they arrived under.
#[derive(Debug, Clone, Default)]
struct ReceivedFiles(Arc<Mutex<HashMap<String, Received>>>);

impl ReceivedFiles {
    fn of(ctx: &Ctx, side: Side) -> Result<Self> {
        let md = ctx.metadata().ok_or_else(|| {
            NsmError::internal(
                ELEMENT,
                "no connection metadata (the metadata element must run first)",
            )
        })?;
        Ok(md.with(side, |f: &mut ReceivedFiles| f.clone()))
    }

    fn file_url(&self, inode_url: &str) -> Option<String> {
        self.0.lock().get(inode_url).map(|r| r.file_url.clone())
    }

    /// Resolves `m`'s `inodeURL` if it is an `inode://` URL: from the kept files, or by claiming the
    /// fd from `fds` (waiting until the deadline).
    async fn resolve(
        &self,
        ctx: &Ctx,
        fds: Option<&FdTransceiver>,
        m: &mut Mechanism,
    ) -> Result<()> {
        let Some(value) = m.inode_url().map(str::to_string) else {
            return Ok(());
        };
        let Some(key) = NsmUrl::parse(&value)
            .ok()
            .as_ref()
            .and_then(InodeKey::from_url)
        else {
            return Ok(());
        };
        if let Some(file_url) = self.file_url(&value) {
            // The sender passes the file with every call; we hold it already.
            if let Some(fds) = fds {
                fds.discard(key);
            }
            m.set_param(common::INODE_URL, file_url);
            return Ok(());
        }
        let Some(fds) = fds else {
            return Ok(());
        };
        let fd = wait_for(ctx, fds, key, &value).await?;
        let file_url = proc_fd_url(&fd);
        m.set_param(common::INODE_URL, file_url.clone());
        self.0.lock().insert(value, Received { _fd: fd, file_url });
        Ok(())
    }

    /// Where `m` already names one of our files (our `sendfd` put our name back on an answer that
    /// carried the file again), claims and closes the copy that came with it.
    fn discard_resent(&self, fds: &FdTransceiver, m: &Mechanism) {
        let Some(value) = m.inode_url() else { return };
        let inode = {
            let files = self.0.lock();
            files
                .iter()
                .find(|(_, r)| r.file_url == value)
                .map(|(inode, _)| inode.clone())
        };
        let key = inode.and_then(|i| NsmUrl::parse(&i).ok());
        if let Some(key) = key.as_ref().and_then(InodeKey::from_url) {
            fds.discard(key);
        }
    }

    /// Puts the inode URL back where `m` names one of our files; returns that inode URL (also when
    /// `sendfd` already did).
    fn restore(&self, m: Option<&mut Mechanism>) -> Option<String> {
        let m = m?;
        let value = m.inode_url()?;
        let files = self.0.lock();
        if files.contains_key(value) {
            return Some(value.to_string());
        }
        let (inode, _) = files.iter().find(|(_, r)| r.file_url == value)?;
        let inode = inode.clone();
        m.set_param(common::INODE_URL, inode.clone());
        Some(inode)
    }

    /// Closes every file but the one kept under `inode_url`.
    fn keep_only(&self, inode_url: &str) {
        let dropped: Vec<Received> = {
            let mut files = self.0.lock();
            let others: Vec<String> = files.keys().filter(|k| *k != inode_url).cloned().collect();
            others.iter().filter_map(|k| files.remove(k)).collect()
        };
        drop(dropped);
    }

    /// Closes every file.
    fn close_all(&self) {
        let all = std::mem::take(&mut *self.0.lock());
        drop(all);
    }
}

/// The inode URL `file_url` arrived under, if it names a file `recvfd` received on `side` for the
/// call's connection: `sendfd` names it so again without sending it back to the hop it came from
/// (Go sends it; nobody there claims it).
pub(crate) fn received_as(ctx: &Ctx, side: Side, file_url: &str) -> Option<String> {
    let files = ctx.metadata()?.get::<ReceivedFiles>(side)?;
    let files = files.0.lock();
    files
        .iter()
        .find(|(_, r)| r.file_url == file_url)
        .map(|(inode, _)| inode.clone())
}

/// Claims the fd for `key`, bounded by the call's deadline (or [`DEFAULT_WAIT`]).
async fn wait_for(ctx: &Ctx, fds: &FdTransceiver, key: InodeKey, url: &str) -> Result<OwnedFd> {
    let clock = *ctx.clock();
    let deadline = ctx
        .deadline()
        .unwrap_or_else(|| clock.instant() + DEFAULT_WAIT);
    tokio::select! {
        r = fds.recv(key) => r.map_err(|e| match e {
            FdError::Closed => NsmError::unavailable(
                ELEMENT,
                format!("no fd for {url}: the connection it would arrive on is closed"),
            ),
            other => NsmError::internal(ELEMENT, format!("no fd for {url}: {other}")),
        }),
        () = clock.sleep_until(deadline) => Err(NsmError::deadline(
            ELEMENT,
            format!(
                "no fd arrived for {url} (the sender must pass it over the same unix-socket connection)"
            ),
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests;
