//! `fdpass`: what the `sendfd` and `recvfd` elements share — the NetworkService ones
//! ([`mechanisms::sendfd`](crate::mechanisms::sendfd), [`mechanisms::recvfd`](crate::mechanisms::recvfd))
//! and the registry's (`nsm_registry::{sendfd, recvfd}`) — on top of the fd side channel of
//! [`fdconn`](crate::grpc::fdconn).
//!
//! - Sending: [`open_path`] / [`open_inode`] open a file `O_PATH` (enough to name it; grpcfd does the
//!   same) and give the `(st_dev, st_ino)` it travels under as `inode://dev/ino`.
//! - Receiving: [`inode_key`] reads an `inode://` URL, [`incoming`] finds the side channel of the call
//!   being served, [`claim`] waits for a passed fd until the call's deadline ([`DEFAULT_WAIT`] without
//!   one) and fails with recvfd's errors.
//! - Holding: [`HeldFds`] keeps received fds under a key (an inode URL per connection, an endpoint
//!   name), each with the inode URL it came under and its local name
//!   `<scheme>:///proc/<our pid>/fd/<n>` ([`proc_url`]); dropping an entry closes its fd.
//!
//! Not an element: no Request or Close of its own, no state but the [`HeldFds`] an element owns.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nsm_api::url::NsmUrl;
use nsm_core::{Ctx, NsmError, Result};
use parking_lot::Mutex;

use crate::grpc::fdconn::{FdError, FdTransceiver, IncomingFds, InodeKey};

#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// The element the receiving errors name.
const RECVFD: &str = "recvfd";

/// How long to wait for an fd when the call has no deadline.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(15);

/// Opens `path` `O_PATH` and close-on-exec: enough to pass the file and, for a socket, to connect
/// through `/proc/<pid>/fd/<n>`.
pub fn open_path(path: &Path) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// [`open_path`] and the key the file is passed under (`inode://dev/ino`).
pub fn open_inode(path: &Path) -> io::Result<(OwnedFd, InodeKey)> {
    let fd = open_path(path)?;
    let key = InodeKey::of(&fd).map_err(io::Error::other)?;
    Ok((fd, key))
}

/// `<scheme>:///proc/<our pid>/fd/<n>`: how this process names a received fd (`file` for a
/// mechanism's file, `unix` for an endpoint's socket).
pub fn proc_url(scheme: &str, fd: &impl AsRawFd) -> String {
    format!(
        "{scheme}:///proc/{}/fd/{}",
        std::process::id(),
        fd.as_raw_fd()
    )
}

/// The key `url` names if it is an `inode://dev/ino` URL.
pub fn inode_key(url: &str) -> Option<InodeKey> {
    NsmUrl::parse(url)
        .ok()
        .as_ref()
        .and_then(InodeKey::from_url)
}

/// The fd side channel of the call being served, if it came on a unix socket.
pub fn incoming(ctx: &Ctx) -> Option<FdTransceiver> {
    ctx.get::<IncomingFds>().map(|f| f.0.clone())
}

/// Claims the fd for `key` from `fds`, bounded by the call's deadline (or [`DEFAULT_WAIT`]).
///
/// The errors name recvfd and `what` (the URL, or the endpoint and its URL); a missing fd is
/// `DeadlineExceeded` "no fd arrived for `what` (`sender_hint`)".
pub async fn claim(
    ctx: &Ctx,
    fds: &FdTransceiver,
    key: InodeKey,
    what: &str,
    sender_hint: &str,
) -> Result<OwnedFd> {
    let clock = *ctx.clock();
    let deadline = ctx
        .deadline()
        .unwrap_or_else(|| clock.instant() + DEFAULT_WAIT);
    tokio::select! {
        r = fds.recv(key) => r.map_err(|e| match e {
            FdError::Closed => NsmError::unavailable(
                RECVFD,
                format!("no fd for {what}: the connection it would arrive on is closed"),
            ),
            other => NsmError::internal(RECVFD, format!("no fd for {what}: {other}")),
        }),
        () = clock.sleep_until(deadline) => Err(NsmError::deadline(
            RECVFD,
            format!("no fd arrived for {what} ({sender_hint})"),
        )),
    }
}

/// One received fd (closed when dropped) with the inode URL it came under and its name here.
#[derive(Debug)]
pub struct HeldFd {
    fd: OwnedFd,
    inode_url: String,
    local_url: String,
}

impl HeldFd {
    /// Holds `fd`, received under `inode_url`, named `<scheme>:///proc/<our pid>/fd/<n>`.
    pub fn new(fd: OwnedFd, inode_url: String, scheme: &str) -> Self {
        let local_url = proc_url(scheme, &fd);
        Self {
            fd,
            inode_url,
            local_url,
        }
    }

    /// The inode URL the fd came under.
    pub fn inode_url(&self) -> &str {
        &self.inode_url
    }

    /// Its name in this process.
    pub fn local_url(&self) -> &str {
        &self.local_url
    }

    /// Puts `fd` in place of the held one under the same fd number (`dup3`), so the local name
    /// stays: a connection cached under it reaches the new file, and a number we closed can never
    /// come back naming something else.
    fn replace(&mut self, fd: &OwnedFd, inode_url: String) -> Result<()> {
        rustix::io::dup3(fd, &mut self.fd, rustix::io::DupFlags::CLOEXEC).map_err(|e| {
            NsmError::internal(
                RECVFD,
                format!("cannot put {inode_url} in place of {}: {e}", self.local_url),
            )
        })?;
        self.inode_url = inode_url;
        Ok(())
    }
}

/// Received fds by key, shared by the clones of one map. Entries dropped from it close their fds.
#[derive(Debug)]
pub struct HeldFds<K>(Arc<Mutex<HashMap<K, HeldFd>>>);

impl<K> Clone for HeldFds<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K> Default for HeldFds<K> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<K: Eq + Hash> HeldFds<K> {
    /// `(inode URL, local URL)` held under `key`.
    pub fn names(&self, key: &K) -> Option<(String, String)> {
        let held = self.0.lock();
        held.get(key)
            .map(|h| (h.inode_url.clone(), h.local_url.clone()))
    }

    /// How many fds are held.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }

    /// The local URL held under `key`.
    pub fn local_url(&self, key: &K) -> Option<String> {
        self.0.lock().get(key).map(|h| h.local_url.clone())
    }

    /// The local URL held under `key` if it came under `inode_url`.
    pub fn local_if(&self, key: &K, inode_url: &str) -> Option<String> {
        let held = self.0.lock();
        held.get(key)
            .filter(|h| h.inode_url == inode_url)
            .map(|h| h.local_url.clone())
    }

    /// The inode URL held under `key` if its local URL is `local_url`.
    pub fn inode_if(&self, key: &K, local_url: &str) -> Option<String> {
        let held = self.0.lock();
        held.get(key)
            .filter(|h| h.local_url == local_url)
            .map(|h| h.inode_url.clone())
    }

    /// The inode URL of whichever held fd is named `local_url` here.
    pub fn inode_of(&self, local_url: &str) -> Option<String> {
        let held = self.0.lock();
        held.values()
            .find(|h| h.local_url == local_url)
            .map(|h| h.inode_url.clone())
    }

    /// Holds `fd` under `key`, closing whatever was held there.
    pub fn insert(&self, key: K, fd: HeldFd) {
        let replaced = self.0.lock().insert(key, fd);
        drop(replaced);
    }

    /// Holds `fresh` under `key`: when an fd is held there and `same(held)` says it stands for the
    /// same thing, `fresh`'s file takes the held fd's number (see [`HeldFd`]'s `dup3`) and the held
    /// local URL stays; otherwise `fresh` is held as it is. Returns the local URL now held.
    pub fn adopt(
        &self,
        key: K,
        fresh: HeldFd,
        same: impl FnOnce(&HeldFd) -> bool,
    ) -> Result<String> {
        let mut held = self.0.lock();
        match held.get_mut(&key) {
            Some(h) if same(h) => {
                h.replace(&fresh.fd, fresh.inode_url)?;
                Ok(h.local_url.clone())
            }
            _ => {
                let local_url = fresh.local_url.clone();
                drop(held.insert(key, fresh));
                Ok(local_url)
            }
        }
    }

    /// Closes the fd held under `key`.
    pub fn remove(&self, key: &K) {
        let removed = self.0.lock().remove(key);
        drop(removed);
    }

    /// Closes every fd but the one held under `key`.
    pub fn keep_only(&self, key: &K) {
        let dropped: Vec<(K, HeldFd)> = self.0.lock().extract_if(|k, _| k != key).collect();
        drop(dropped);
    }

    /// Closes every fd.
    pub fn clear(&self) {
        let all = std::mem::take(&mut *self.0.lock());
        drop(all);
    }
}
