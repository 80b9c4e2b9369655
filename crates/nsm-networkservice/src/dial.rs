//! `dial`: a gRPC channel to the next hop named by [`ClientUrl`].
//!
//! **Request**: without a [`ClientUrl`] in the context, passes through. Otherwise makes sure the
//! connection's client metadata holds a [`ClientConn`] for that URL: reuses the stored one, or takes a
//! channel from the element's per-URL cache (dialing on a miss, bounded by the dial timeout). If the URL
//! changed since the last Request (heal or a re-selection picked another hop), the downstream is first
//! closed through the *old* channel, best effort. A failed dial fails the Request with `Unavailable`
//! naming the URL and leaves nothing stored; a failed first Request drops the conn again.
//!
//! **Close**: closes through the stored channel (dialing again if needed), then drops the [`ClientConn`].
//!
//! **State**: [`ClientConn`] in client metadata (read by `connect`, `monitor` and `heal`); a cache of
//! channels shared by every connection to the same URL. When the last connection using a channel is
//! closed successfully, the channel is kept for [`IDLE_CHANNEL_TIMEOUT`] (context clock) for the next
//! connection to that URL; after a failed Close or a failed first Request it is dropped at once.
//! **Background**: one timer task per idle URL.
//!
//! **Transport**: plaintext by default ([`DialClient::new`]); [`DialClient::with_tls`] /
//! [`DialClient::with_security`] dial with SPIFFE mTLS, and the [`ClientConn`] then carries the
//! server's verified identity ([`ServerPeer`]) for `connect` (token audience) and `authorize`. Channels
//! are pinned to the SVID they were dialed with, and `connect` signs with that SVID. The SVID wanted
//! is the one the incoming call's connection authenticated us with ([`LocalIdentity`] in the context,
//! so the token this hop sends onwards verifies both with the certificate the next hop saw and with
//! the one the previous hop saw), else the current one: when our SVID rotates, the next Request or
//! Close of an NSC's connection redials its hop.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use nsm_api::url::NsmUrl;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::metadata::{ConnMetadata, Side};
use nsm_core::token::LocalIdentity;
use nsm_core::values::ClientUrl;
use nsm_core::{Clock, Ctx, NetworkServiceServer, Next, NsmError, Result};
use nsm_identity::{Svid, TlsIdentity, TransportSecurity};
use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::grpc::{ServerPeer, client_channel_as, client_channel_with};

const ELEMENT: &str = "dial";

/// The channel to the next hop of one connection, in client metadata. Every connection over the same
/// channel shares one [`Dialed`] (the cache's), so this is a pointer, not a copy per connection.
#[derive(Debug, Clone)]
pub struct ClientConn(Arc<Dialed>);

impl std::ops::Deref for ClientConn {
    type Target = Dialed;
    fn deref(&self) -> &Dialed {
        &self.0
    }
}

/// A dialed channel and what it was dialed with.
#[derive(Debug)]
pub struct Dialed {
    /// The URL dialed.
    pub url: NsmUrl,
    /// The channel (shared with other connections to the same URL).
    pub channel: Channel,
    /// The server's identity as the TLS handshake authenticated it (empty in plaintext).
    pub peer: ServerPeer,
    /// Our own SVID the channel presents (TLS only); `connect` signs the tokens it sends with it.
    pub(crate) svid: Option<Arc<Svid>>,
}

fn same_svid(a: Option<&Arc<Svid>>, b: Option<&Arc<Svid>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// How long a channel no connection uses any more is kept for the next one to the same URL.
pub const IDLE_CHANNEL_TIMEOUT: Duration = Duration::from_secs(60);

/// Channels by URL with the number of connections using each.
#[derive(Debug, Default)]
struct ChannelCache {
    entries: Mutex<HashMap<NsmUrl, (ClientConn, usize)>>,
    /// Unused channels kept after a successful Close: since when, by URL (one timer per URL).
    idle: Mutex<HashMap<NsmUrl, Instant>>,
}

impl ChannelCache {
    async fn acquire(
        &self,
        url: &NsmUrl,
        dial_timeout: Duration,
        security: &TransportSecurity,
        svid: Option<Arc<Svid>>,
    ) -> Result<ClientConn> {
        {
            let mut entries = self.entries.lock();
            match entries.get_mut(url) {
                Some((dialed, users)) if same_svid(dialed.svid.as_ref(), svid.as_ref()) => {
                    *users += 1;
                    return Ok(dialed.clone());
                }
                // Dialed with an SVID that has since rotated: connections still using it switch on
                // their next call; new ones get a fresh channel.
                Some(_) => {
                    entries.remove(url);
                }
                None => {}
            }
        }
        // Boxed: inline, the dial's state (kilobytes) would be part of every Request's and Close's
        // future through this element, which almost always finds the channel cached above.
        let (channel, peer) = Box::pin(async {
            match (security.tls(), &svid) {
                (Some(tls), Some(svid)) => client_channel_as(url, dial_timeout, tls, svid).await,
                _ => client_channel_with(url, dial_timeout, security).await,
            }
        })
        .await?;
        let dialed = ClientConn(Arc::new(Dialed {
            url: url.clone(),
            channel,
            peer,
            svid,
        }));
        // Another connection may have dialed the same URL meanwhile: keep one channel per URL.
        let mut entries = self.entries.lock();
        let (dialed, users) = entries.entry(url.clone()).or_insert((dialed, 0));
        *users += 1;
        Ok(dialed.clone())
    }

    /// One connection less on `url`'s channel. When none is left, the channel is dropped, or kept
    /// for [`IDLE_CHANNEL_TIMEOUT`] on `keep_idle`'s clock (so that a lone client's next Request
    /// does not pay a new TCP + HTTP/2 (+ TLS) handshake).
    fn release(self: &Arc<Self>, url: &NsmUrl, svid: Option<&Arc<Svid>>, keep_idle: Option<Clock>) {
        let mut entries = self.entries.lock();
        if let Some((dialed, users)) = entries.get_mut(url)
            && same_svid(dialed.svid.as_ref(), svid)
        {
            *users = users.saturating_sub(1);
            if *users == 0 {
                match keep_idle {
                    None => {
                        entries.remove(url);
                    }
                    Some(clock) => {
                        let timer_running = self
                            .idle
                            .lock()
                            .insert(url.clone(), clock.instant())
                            .is_some();
                        if !timer_running {
                            tokio::spawn(expire_idle(Arc::downgrade(self), url.clone(), clock));
                        }
                    }
                }
            }
        }
    }
}

/// Drops `url`'s channel once it has been unused for [`IDLE_CHANNEL_TIMEOUT`].
async fn expire_idle(cache: Weak<ChannelCache>, url: NsmUrl, clock: Clock) {
    let mut since = clock.instant();
    loop {
        clock.sleep_until(since + IDLE_CHANNEL_TIMEOUT).await;
        let Some(cache) = cache.upgrade() else { return };
        let mut entries = cache.entries.lock();
        let mut idle = cache.idle.lock();
        let Some(&last) = idle.get(&url) else { return };
        match entries.get(&url) {
            Some((_, 0)) if clock.instant() < last + IDLE_CHANNEL_TIMEOUT => since = last,
            Some((_, 0)) => {
                entries.remove(&url);
                idle.remove(&url);
                return;
            }
            // In use again (or gone): a later release starts a new timer.
            _ => {
                idle.remove(&url);
                return;
            }
        }
    }
}

/// The `dial` client element.
#[derive(Debug)]
pub struct DialClient {
    dial_timeout: Duration,
    cache: Arc<ChannelCache>,
    security: TransportSecurity,
}

impl DialClient {
    /// Dials in plaintext with at most `dial_timeout` per attempt.
    pub fn new(dial_timeout: Duration) -> Self {
        Self {
            dial_timeout,
            cache: Arc::default(),
            security: TransportSecurity::Insecure,
        }
    }

    /// Dials with SPIFFE mTLS using `tls`.
    pub fn with_tls(self, tls: Arc<TlsIdentity>) -> Self {
        self.with_security(TransportSecurity::Tls(tls))
    }

    /// Dials with the given transport security.
    pub fn with_security(mut self, security: TransportSecurity) -> Self {
        self.security = security;
        self
    }

    /// URLs with a cached channel, for tests and diagnostics.
    pub fn cached_urls(&self) -> Vec<NsmUrl> {
        self.cache.entries.lock().keys().cloned().collect()
    }

    fn drop_conn(&self, md: &ConnMetadata) {
        self.drop_conn_keeping(md, None);
    }

    /// [`drop_conn`](Self::drop_conn), keeping the channel a while if it was the last on its URL.
    fn drop_conn_keeping(&self, md: &ConnMetadata, keep_idle: Option<Clock>) {
        if let Some(old) = md.remove::<ClientConn>(Side::Client) {
            self.cache.release(&old.url, old.svid.as_ref(), keep_idle);
        }
    }

    /// The SVID to present: the one the incoming call's connection authenticated us with, else the
    /// current one (TLS only).
    fn wanted_svid(&self, ctx: &Ctx) -> Option<Arc<Svid>> {
        let tls = self.security.tls()?;
        ctx.get::<LocalIdentity>()
            .and_then(LocalIdentity::downcast::<Svid>)
            .or_else(|| Some(tls.current().svid.clone()))
    }

    /// Stores a channel for `url` unless one is stored already; true if this call stored it.
    async fn ensure_conn(
        &self,
        md: &ConnMetadata,
        url: &NsmUrl,
        current: Option<Arc<Svid>>,
    ) -> Result<bool> {
        let mut fresh = true;
        if let Some(c) = md.get::<ClientConn>(Side::Client).filter(|c| &c.url == url) {
            if same_svid(c.svid.as_ref(), current.as_ref()) {
                return Ok(false);
            }
            // Our SVID rotated since this channel was dialed (or the call arrived on a connection
            // authenticated with another one): redial the same hop.
            fresh = false;
        }
        self.drop_conn(md);
        let dialed = self
            .cache
            .acquire(url, self.dial_timeout, &self.security, current)
            .await?;
        md.insert(Side::Client, dialed);
        Ok(fresh)
    }
}

fn metadata(ctx: &Ctx) -> Result<Arc<ConnMetadata>> {
    ctx.metadata().cloned().ok_or_else(|| {
        NsmError::internal(
            ELEMENT,
            "no connection metadata (the metadata element must run first)",
        )
    })
}

#[async_trait]
impl NetworkServiceServer for DialClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let Some(ClientUrl(url)) = ctx.get::<ClientUrl>().cloned() else {
            return next.request(ctx, request).await;
        };
        let md = metadata(ctx)?;
        if let Some(old) = md.get::<ClientConn>(Side::Client).filter(|c| c.url != url) {
            // The next hop changed: release the old one through the old channel first.
            let mut close_ctx = ctx.postpone();
            close_ctx.insert(ClientUrl(old.url.clone()));
            let conn = request.connection.clone().unwrap_or_default();
            let closed = next.clone().close(&mut close_ctx, conn).await;
            if let Err(e) = &closed {
                tracing::debug!(url = %old.url, error = %e, "dial: closing via the previous next hop failed");
            }
            self.drop_conn_keeping(&md, closed.is_ok().then_some(*ctx.clock()));
        }
        let fresh = self.ensure_conn(&md, &url, self.wanted_svid(ctx)).await?;
        let result = next.request(ctx, request).await;
        if result.is_err() && fresh {
            self.drop_conn(&md);
        }
        result
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        let Some(ClientUrl(url)) = ctx.get::<ClientUrl>().cloned() else {
            return next.close(ctx, conn).await;
        };
        let md = metadata(ctx)?;
        let dialed = self.ensure_conn(&md, &url, self.wanted_svid(ctx)).await;
        // Run the rest even if the dial failed, so later client elements release what they hold.
        let result = next.close(ctx, conn).await;
        // A channel that worked is kept a while for the next connection; a failing one is dropped.
        let worked = dialed.is_ok() && result.is_ok();
        self.drop_conn_keeping(&md, worked.then_some(*ctx.clock()));
        dialed.and(result)
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}
