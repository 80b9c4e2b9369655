//! `sendfd` (endpoint registry client): an endpoint that serves on a unix socket passes the socket
//! itself to the registry it talks to over a unix socket (Go `registry/common/sendfd`), so an NSMgr
//! that cannot see the socket's path (another container's filesystem) can still dial it.
//!
//! - Register: when the endpoint's `url` is `unix:///path` and the call goes to a `unix://` client
//!   URL (`clienturl` first), opens `path` `O_PATH`, hands the fd to `connect` ([`FilesToPass`]: it
//!   rides on the call's connection, below TLS, as grpcfd does) and sends `url` as
//!   `inode://<st_dev>/<st_ino>`; the answer gets the original URL back. A socket file that cannot be
//!   opened fails the call naming sendfd and the URL.
//! - Unregister: the same (the peer's `recvfd` claims the resent copy); a socket that cannot be
//!   opened any more is unregistered under its plain URL instead of failing (the registry finds the
//!   registration by name).
//! - Find: passes through.
//! - State: none; fds that did not leave with a failed call are closed by `connect`.
//!
//! [`SendFdServer`] (NSMgr) is the other direction: Find results naming a `unix://` socket go to a
//! caller on a unix socket as fds, each result's URL rewritten to `inode://` (the forwarder's
//! `recvfd` claims them and dials the endpoints through them). Deleted results are not sent. Register
//! and Unregister pass through. State: none.
//!
//! Over TCP (any other client URL) the registration passes unchanged: fds travel only on unix
//! sockets. Go rewrites the URL regardless and its registry then keeps an `inode://` URL it cannot
//! dial.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use nsm_api::registry::NetworkServiceEndpoint;
use nsm_api::url::NsmUrl;
use nsm_core::registry::{FindStream, Query, RegistryNext, RegistryServer};
use nsm_core::values::ClientUrl;
use nsm_core::{Ctx, NsmError, Result};
use nsm_networkservice::fdpass::{incoming, open_inode};
use nsm_networkservice::grpc::fdconn::FdTransceiver;
use parking_lot::Mutex;

const NAME: &str = "sendfd";

type Nse = NetworkServiceEndpoint;

/// Files to pass with the current call: `sendfd` adds them, `connect` queues them on the call's
/// connection (our counterpart of grpcfd's per-RPC credentials).
#[derive(Debug, Clone, Default)]
pub struct FilesToPass(Arc<Mutex<Vec<OwnedFd>>>);

impl FilesToPass {
    /// Adds `fd` to the call's files.
    pub fn push(&self, fd: OwnedFd) {
        self.0.lock().push(fd);
    }

    /// Takes the files (once).
    pub fn take(&self) -> Vec<OwnedFd> {
        std::mem::take(&mut *self.0.lock())
    }

    /// The call's files, creating the list if needed.
    pub fn of(ctx: &mut Ctx) -> Self {
        if let Some(f) = ctx.get::<Self>() {
            return f.clone();
        }
        let f = Self::default();
        ctx.insert(f.clone());
        f
    }
}

/// Passes a unix-socket endpoint URL as an fd.
#[derive(Debug, Default)]
pub struct SendFdClient;

impl SendFdClient {
    /// The element.
    pub fn new() -> Self {
        Self
    }
}

/// A URL this call replaced: `(inode URL, original URL)`.
struct Swap {
    inode: String,
    original: String,
}

/// The socket path of `nse`'s URL, if the call can pass it (unix URL, unix connection).
fn passable(ctx: &Ctx, nse: &Nse) -> Option<std::path::PathBuf> {
    let Some(ClientUrl(NsmUrl::Unix(_))) = ctx.get::<ClientUrl>() else {
        return None;
    };
    match NsmUrl::parse(&nse.url) {
        Ok(NsmUrl::Unix(path)) => Some(path),
        _ => None,
    }
}

/// Puts the socket of `nse`'s URL among the call's files and swaps in its inode URL.
fn pass(ctx: &mut Ctx, nse: &mut Nse, path: &Path) -> std::io::Result<Swap> {
    // `O_PATH` is enough to name the socket; connecting goes through `/proc/<pid>/fd/<n>`.
    let (fd, key) = open_inode(path)?;
    FilesToPass::of(ctx).push(fd);
    let swap = Swap {
        inode: key.url().to_string(),
        original: std::mem::take(&mut nse.url),
    };
    nse.url.clone_from(&swap.inode);
    Ok(swap)
}

/// Drops the files a call left behind (it failed before `connect` took them).
fn drop_unsent(ctx: &mut Ctx) {
    if let Some(f) = ctx.remove::<FilesToPass>() {
        drop(f.take());
    }
}

#[async_trait]
impl RegistryServer<Nse> for SendFdClient {
    async fn register(&self, ctx: &mut Ctx, mut nse: Nse, next: RegistryNext<Nse>) -> Result<Nse> {
        let Some(path) = passable(ctx, &nse) else {
            return next.register(ctx, nse).await;
        };
        let swap = pass(ctx, &mut nse, &path).map_err(|e| {
            NsmError::invalid(
                NAME,
                format!(
                    "cannot pass the socket of endpoint {:?} ({}): {e}",
                    nse.name, nse.url
                ),
            )
        })?;
        let result = next.register(ctx, nse).await;
        drop_unsent(ctx);
        let mut reg = result?;
        if reg.url == swap.inode {
            reg.url = swap.original;
        }
        Ok(reg)
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<Nse>,
        next: RegistryNext<Nse>,
    ) -> Result<FindStream<Nse>> {
        next.find(ctx, query).await
    }

    async fn unregister(&self, ctx: &mut Ctx, mut nse: Nse, next: RegistryNext<Nse>) -> Result<()> {
        if let Some(path) = passable(ctx, &nse)
            && let Err(e) = pass(ctx, &mut nse, &path)
        {
            tracing::debug!(error = %e, name = %nse.name, url = %nse.url,
                "sendfd: unregistering without passing the socket");
        }
        let result = next.unregister(ctx, nse).await;
        drop_unsent(ctx);
        result
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// Passes the sockets Find results name to a caller on a unix socket.
#[derive(Debug, Default)]
pub struct SendFdServer;

impl SendFdServer {
    /// The element.
    pub fn new() -> Self {
        Self
    }
}

/// Sends the socket `nse`'s `unix://` URL names and swaps in its inode URL; a socket that cannot be
/// opened leaves the result as it is.
fn send_result(fds: &FdTransceiver, nse: &mut Nse) {
    let Ok(NsmUrl::Unix(path)) = NsmUrl::parse(&nse.url) else {
        return;
    };
    match fds.send_path(&path) {
        Ok((inode, _)) => nse.url = inode.to_string(),
        Err(e) => tracing::debug!(error = %e, name = %nse.name, url = %nse.url,
            "sendfd: Find result sent without its socket"),
    }
}

#[async_trait]
impl RegistryServer<Nse> for SendFdServer {
    async fn register(&self, ctx: &mut Ctx, nse: Nse, next: RegistryNext<Nse>) -> Result<Nse> {
        next.register(ctx, nse).await
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<Nse>,
        next: RegistryNext<Nse>,
    ) -> Result<FindStream<Nse>> {
        let fds = incoming(ctx);
        let found = next.find(ctx, query).await?;
        let Some(fds) = fds else {
            return Ok(found);
        };
        Ok(found
            .map(move |r| {
                r.map(|mut f| {
                    if !f.deleted {
                        send_result(&fds, &mut f.item);
                    }
                    f
                })
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
#[path = "sendfd_tests.rs"]
mod tests;
