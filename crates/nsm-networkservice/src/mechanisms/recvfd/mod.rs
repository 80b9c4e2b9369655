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
//!   **Close**: resolves like a Request (a kept file, else the fd passed with the Close, awaited
//!   until the deadline; a missing one is logged and the Close goes on, where Go fails it before
//!   it reaches the next hop), closes downstream, then closes the files.
//! - [`RecvFdClient`] — **Request**: resolves the mechanism of the answer from the next hop (an
//!   endpoint passing its own network namespace); if its fd does not come, the downstream connection
//!   is closed again before the error is returned. Where `sendfd` (after us) has already put its
//!   own name back on the answer (the answer named a file we sent: on a refresh the one we received
//!   before, or an endpoint in our own network namespace naming its own), the copy of the file that
//!   came with it is claimed: closed if we hold the file already, else kept and named as above.
//!   **Close**: closes downstream, then claims the file the server passes back with its Close reply
//!   (Go's `sendfd` server sends on Close, and so does ours): if `sendfd` (after us) passed a file
//!   with the Close, the copy of it that came with the reply is taken and closed, without waiting (a
//!   server without `sendfd` sends none, and the fd cannot trail the reply on our side). If the
//!   connection reached us naming an `inode://` URL of no file we hold, that fd is awaited as Go
//!   does, bounded by the call's deadline (or [`DEFAULT_WAIT`]): a missing one fails the Close with
//!   `DeadlineExceeded` naming recvfd and the URL, after the downstream Close. When the Close
//!   failed downstream nothing is awaited (a copy already there is still taken). Then the files
//!   are closed.
//!
//! **State**: the received files of each connection, in its metadata (server and client side
//! separately) from the first file received on; closed on Close (also a failed one), and dropped —
//! and so closed — with the metadata (failed first Request). Nothing is kept across calls about
//! fds that did not arrive.
//! Fds nobody claims expire ([`UNCLAIMED_TTL`](crate::grpc::fdconn::UNCLAIMED_TTL)) or die with
//! the gRPC connection. Without a unix-socket connection (TCP) values pass
//! unchanged.

mod client;
mod server;

pub use client::RecvFdClient;
pub use server::RecvFdServer;

pub use crate::fdpass::DEFAULT_WAIT;

use nsm_api::Mechanism;
use nsm_api::mechanisms::common;
use std::sync::Arc;

use nsm_core::metadata::{ConnMetadata, Side};
use nsm_core::{Ctx, NsmError, Result};

use crate::fdpass::{HeldFd, HeldFds, claim, inode_key};
use crate::grpc::fdconn::FdTransceiver;

const ELEMENT: &str = "recvfd";

/// What a missing fd's error tells the caller.
const SENDER_HINT: &str = "the sender must pass it over the same unix-socket connection";

/// What a missing fd's error tells the caller of a Close.
const CLOSE_HINT: &str =
    "the server's sendfd passes back the file a Close names, over the same unix-socket connection";

/// The files received for one connection, by the inode URL they arrived under, each named
/// `file:///proc/<our pid>/fd/<n>`: kept in its metadata from the first file on (most connections
/// never get one, e.g. every connection on TCP, and then keep nothing).
#[derive(Debug, Clone, Default)]
struct Received(HeldFds<String>);

/// The received files of the call's connection on one side.
struct ReceivedFiles {
    md: Arc<ConnMetadata>,
    side: Side,
}

impl ReceivedFiles {
    fn of(ctx: &Ctx, side: Side) -> Result<Self> {
        let md = ctx.metadata().ok_or_else(|| {
            NsmError::internal(
                ELEMENT,
                "no connection metadata (the metadata element must run first)",
            )
        })?;
        Ok(Self {
            md: md.clone(),
            side,
        })
    }

    /// The files kept, if any was ever received.
    fn held(&self) -> Option<HeldFds<String>> {
        self.md.get::<Received>(self.side).map(|r| r.0)
    }

    /// Keeps `fd`, received under `inode_url`.
    fn keep(&self, inode_url: String, fd: HeldFd) {
        self.md
            .with(self.side, |r: &mut Received| r.0.clone())
            .insert(inode_url, fd);
    }

    /// The local name of the file received under `inode_url`, if kept.
    fn local_url(&self, inode_url: &String) -> Option<String> {
        self.held()?.local_url(inode_url)
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
        let Some(key) = inode_key(&value) else {
            return Ok(());
        };
        if let Some(file_url) = self.local_url(&value) {
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
        let fd = claim(ctx, fds, key, &value, SENDER_HINT).await?;
        let received = HeldFd::new(fd, value.clone(), "file");
        m.set_param(common::INODE_URL, received.local_url());
        self.keep(value, received);
        Ok(())
    }

    /// The answer named `inode_url`, the inode URL of a file our `sendfd` sent, and `sendfd` put its
    /// own name back on `m`. The peer may have passed its own copy of the file with the answer (it
    /// came no later than the answer): if we hold the file already (a refresh), the copy is closed
    /// and `m` keeps naming ours; otherwise the copy is kept and named like any received file (our
    /// own name may not be one the rest of this process can open, e.g. `/proc/thread-self/…`). No
    /// copy (the peer named our file without passing it back): `m` keeps `sendfd`'s name.
    fn adopt_copy(&self, fds: &FdTransceiver, inode_url: &str, m: &mut Mechanism) {
        let Some(key) = inode_key(inode_url) else {
            return;
        };
        let inode_url = inode_url.to_string();
        if let Some(file_url) = self.local_url(&inode_url) {
            fds.discard(key);
            m.set_param(common::INODE_URL, file_url);
            return;
        }
        let Some(fd) = fds.try_recv(key) else {
            return;
        };
        let received = HeldFd::new(fd, inode_url.clone(), "file");
        m.set_param(common::INODE_URL, received.local_url());
        self.keep(inode_url, received);
    }

    /// Puts the inode URL back where `m` names one of our files; returns that inode URL (also when
    /// `sendfd` already did).
    fn restore(&self, m: Option<&mut Mechanism>) -> Option<String> {
        let m = m?;
        let value = m.inode_url()?.to_string();
        let held = self.held()?;
        if held.local_url(&value).is_some() {
            return Some(value);
        }
        let inode = held.inode_of(&value)?;
        m.set_param(common::INODE_URL, inode.clone());
        Some(inode)
    }

    /// Closes every file but the one kept under `inode_url`.
    fn keep_only(&self, inode_url: &str) {
        if let Some(held) = self.held() {
            held.keep_only(&inode_url.to_string());
        }
    }

    /// Closes every file.
    fn close_all(&self) {
        if let Some(held) = self.held() {
            held.clear();
        }
    }
}

/// Left in the call's context by `sendfd`'s client half when it passed a file with a Close: that
/// file's inode URL (the server's `sendfd` passes the file back with its reply, see
/// [`RecvFdClient`]'s Close).
#[derive(Debug, Clone)]
pub(crate) struct ClosedWithSentFile(pub(crate) String);

/// Left in the call's context by `sendfd`'s client half when it put its own name back on an answer
/// that named a file it sent: that file's inode URL (see [`ReceivedFiles::adopt_copy`]).
#[derive(Debug, Clone)]
pub(crate) struct AnswerNamedSentFile(pub(crate) String);

/// The inode URL `file_url` arrived under, if it names a file `recvfd` received on `side` for the
/// call's connection: `sendfd` names it so again without sending it back to the hop it came from
/// (Go sends it; nobody there claims it).
pub(crate) fn received_as(ctx: &Ctx, side: Side, file_url: &str) -> Option<String> {
    let files = ctx.metadata()?.get::<Received>(side)?;
    files.0.inode_of(file_url)
}

#[cfg(test)]
pub(crate) mod tests;
