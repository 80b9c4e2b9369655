//! `recvfd` (endpoint registry server, NSMgr): receives the socket an endpoint passed with its
//! registration (Go `registry/common/recvfd`) and names it so this process can dial it.
//!
//! - Register: an `inode://dev/ino` URL arriving on a unix-socket connection is resolved by claiming
//!   the fd with that `(dev, ino)` from the connection ([`IncomingFds`]), waiting at most until the
//!   call's deadline ([`DEFAULT_WAIT`] without one), and replaced with `unix:///proc/<our pid>/fd/<n>`
//!   (dialing that path connects to the socket through the fd, wherever the socket file lives). A
//!   refresh of a registration whose file is held keeps the same name and closes the resent copy. The
//!   answer gets the `inode://` URL back. Another socket for a registered name takes the held fd's
//!   number (`dup3`), so the name stays `unix:///proc/<pid>/fd/<n>` for the endpoint's lifetime. A missing fd fails the call with `DeadlineExceeded` naming
//!   recvfd, the endpoint and the URL, with nothing kept.
//! - Unregister: the held name is put back in place of the `inode://` URL, the rest of the chain
//!   runs, then the fd is closed (on success; a failed Unregister leaves the registration, and so
//!   the fd, alive). `expire` unregisters through this element too, so expiry closes it as well.
//! - Find: for a caller on a unix socket, results naming a held file show the `inode://` URL it
//!   came under (what the endpoint registered; `sendfd` passes the file along). A caller without an
//!   fd side channel (TCP, e.g. `nsm ctl` on the node) gets this process's
//!   `unix:///proc/<pid>/fd/<n>` name, as in Go: dialable by a process of the node allowed to open
//!   our fds, where an `inode://` URL is dialable by nobody.
//! - State: one fd per registered endpoint name, closed on Unregister, replaced when a registration
//!   passes another socket, closed when the element is dropped.
//!
//! Without an fd side channel (TCP) an `inode://` URL of a registration whose file is not held
//! passes unchanged, as in Go.
//!
//! [`RecvFdClient`] (forwarder, Find through its NSMgr) is the other direction: `inode://` Find
//! results are resolved with the fds the NSMgr's `sendfd` passed on the unix connection
//! ([`ReplyFds`], left by `connect`), waiting at most [`DEFAULT_WAIT`] (less if the call's deadline
//! is nearer) per result; a result whose fd does not come stays as it is (logged). One fd per
//! endpoint name is kept (updates reuse its name and close the resent copy) until a deleted result
//! for the name arrives or the element is dropped; another socket for the name takes its number. Register and Unregister pass through.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use nsm_api::registry::NetworkServiceEndpoint;
use nsm_core::registry::{FindStream, Found, Query, RegistryNext, RegistryServer};
use nsm_core::{Ctx, Result};
pub use nsm_networkservice::fdpass::DEFAULT_WAIT;
use nsm_networkservice::fdpass::{HeldFd, HeldFds, claim, incoming, inode_key};
use nsm_networkservice::grpc::fdconn::FdTransceiver;
#[cfg(doc)]
use nsm_networkservice::grpc::fdconn::IncomingFds;

use crate::connect::ReplyFds;

const NAME: &str = "recvfd";

type Nse = NetworkServiceEndpoint;

/// What a missing fd's error tells the endpoint.
const SENDER_HINT: &str =
    "the endpoint's sendfd must pass its socket over the same unix-socket connection";

/// The sockets endpoints passed, by endpoint name, each named `unix:///proc/<our pid>/fd/<n>`.
type HeldFiles = HeldFds<String>;

/// Receives passed endpoint sockets.
#[derive(Debug, Default)]
pub struct RecvFdServer {
    held: HeldFiles,
}

impl RecvFdServer {
    /// The element.
    pub fn new() -> Self {
        Self::default()
    }

    /// The names held for `endpoint`: `(inode URL, unix URL)` (for tests and diagnostics).
    pub fn held(&self, endpoint: &str) -> Option<(String, String)> {
        self.held.names(&endpoint.to_string())
    }

    /// How many fds are held.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }
}

#[async_trait]
impl RegistryServer<Nse> for RecvFdServer {
    async fn register(&self, ctx: &mut Ctx, mut nse: Nse, next: RegistryNext<Nse>) -> Result<Nse> {
        let fds = incoming(ctx);
        let inode_url = nse.url.clone();
        let Some(key) = inode_key(&inode_url) else {
            let reg = next.register(ctx, nse).await?;
            // The endpoint no longer passes a socket: the one it passed before is not needed.
            self.held.remove(&reg.name);
            return Ok(reg);
        };
        // A fresh fd is kept only once the registration succeeded.
        let mut fresh = None;
        match self.held.local_if(&nse.name, &inode_url) {
            Some(unix_url) => {
                // The endpoint passes its socket with every refresh; we hold it already.
                if let Some(fds) = &fds {
                    fds.discard(key);
                }
                nse.url = unix_url;
            }
            None => {
                if let Some(fds) = &fds {
                    let what = format!("endpoint {:?} url {}", nse.name, nse.url);
                    let fd = claim(ctx, fds, key, &what, SENDER_HINT).await?;
                    let held = HeldFd::new(fd, inode_url.clone(), "unix");
                    nse.url = held.local_url().to_string();
                    fresh = Some(held);
                }
            }
        }
        // Another socket for a held name goes under the held name (see `HeldFds::adopt`).
        let held_url = self.held.local_url(&nse.name);
        if let (Some(_), Some(url)) = (&fresh, held_url) {
            nse.url = url;
        }
        let unix_url = nse.url.clone();
        let mut reg = next.register(ctx, nse).await?;
        if let Some(fresh) = fresh {
            self.held
                .adopt(reg.name.clone(), fresh, |h| h.local_url() == unix_url)?;
        }
        if reg.url == unix_url {
            reg.url = inode_url;
        }
        Ok(reg)
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<Nse>,
        next: RegistryNext<Nse>,
    ) -> Result<FindStream<Nse>> {
        let found = next.find(ctx, query).await?;
        if incoming(ctx).is_none() {
            return Ok(found);
        }
        let held = self.held.clone();
        Ok(found
            .map(move |r| {
                r.map(|mut f| {
                    if let Some(inode_url) = held.inode_if(&f.item.name, &f.item.url) {
                        f.item.url = inode_url;
                    }
                    f
                })
            })
            .boxed())
    }

    async fn unregister(&self, ctx: &mut Ctx, mut nse: Nse, next: RegistryNext<Nse>) -> Result<()> {
        if let Some(key) = inode_key(&nse.url) {
            // The endpoint's sendfd passed the socket again; nobody needs this copy.
            if let Some(fds) = incoming(ctx) {
                fds.discard(key);
            }
            if let Some(unix_url) = self.held.local_if(&nse.name, &nse.url) {
                nse.url = unix_url;
            }
        }
        let name = nse.name.clone();
        next.unregister(ctx, nse).await?;
        self.held.remove(&name);
        Ok(())
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// Resolves the endpoint sockets Find results were passed with.
#[derive(Debug, Default)]
pub struct RecvFdClient {
    held: HeldFiles,
}

impl RecvFdClient {
    /// The element.
    pub fn new() -> Self {
        Self::default()
    }

    /// The names held for `endpoint`: `(inode URL, unix URL)`.
    pub fn held(&self, endpoint: &str) -> Option<(String, String)> {
        self.held.names(&endpoint.to_string())
    }
}

/// Names `found`'s passed socket by a held fd, claiming it from `fds` if it is new.
async fn resolve_found(
    held: &HeldFiles,
    fds: &FdTransceiver,
    clock: nsm_core::Clock,
    wait: Duration,
    found: &mut Found<Nse>,
) {
    let nse = &mut found.item;
    let key = inode_key(&nse.url);
    let known = held.local_if(&nse.name, &nse.url);
    if found.deleted {
        if let Some(unix_url) = known {
            nse.url = unix_url;
        }
        held.remove(&nse.name);
        return;
    }
    let Some(key) = key else { return };
    if let Some(unix_url) = known {
        fds.discard(key);
        nse.url = unix_url;
        return;
    }
    tokio::select! {
        r = fds.recv(key) => match r {
            Ok(fd) => {
                // Another socket for a held name takes the held fd's number.
                let fresh = HeldFd::new(fd, nse.url.clone(), "unix");
                match held.adopt(nse.name.clone(), fresh, |_| true) {
                    Ok(unix_url) => nse.url = unix_url,
                    Err(e) => tracing::warn!(error = %e, "recvfd: Find result left as it is"),
                }
            }
            Err(e) => tracing::warn!(error = %e, name = %nse.name, url = %nse.url,
                "recvfd: no fd for a Find result"),
        },
        () = clock.sleep(wait) => tracing::warn!(name = %nse.name, url = %nse.url,
            "recvfd: no fd arrived for a Find result within {wait:?}"),
    }
}

#[async_trait]
impl RegistryServer<Nse> for RecvFdClient {
    async fn register(&self, ctx: &mut Ctx, nse: Nse, next: RegistryNext<Nse>) -> Result<Nse> {
        next.register(ctx, nse).await
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<Nse>,
        next: RegistryNext<Nse>,
    ) -> Result<FindStream<Nse>> {
        let found = next.find(ctx, query).await?;
        let Some(ReplyFds(fds)) = ctx.remove::<ReplyFds>() else {
            return Ok(found);
        };
        let (held, clock) = (self.held.clone(), *ctx.clock());
        let wait = ctx
            .remaining()
            .map_or(DEFAULT_WAIT, |r| r.min(DEFAULT_WAIT));
        Ok(found
            .then(move |r| {
                let (held, fds) = (held.clone(), fds.clone());
                async move {
                    let mut f = r?;
                    resolve_found(&held, &fds, clock, wait, &mut f).await;
                    tracing::debug!(name = %f.item.name, url = %f.item.url, deleted = f.deleted,
                        unclaimed = fds.unclaimed(), "recvfd: Find result");
                    Ok(f)
                }
            })
            .boxed())
    }

    async fn unregister(&self, ctx: &mut Ctx, nse: Nse, next: RegistryNext<Nse>) -> Result<()> {
        next.unregister(ctx, nse).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
#[path = "recvfd_tests.rs"]
pub(crate) mod tests;
