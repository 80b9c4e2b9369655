//! `etcd`: the etcd-backed store of a registry, one per item kind — the same role as
//! `nsm_registry::MemoryServer`, shared by every registry replica on the same etcd and key prefix.
//!
//! - Keys: `<prefix>/nse/<name>` and `<prefix>/ns/<name>`; values are the protobuf-encoded items.
//! - Register (endpoints): sets `expiration_time = min(now + expire period, requested)` (what `expire`
//!   does in the memory chain), runs the rest of the chain, then grants an etcd lease of the remaining
//!   time (whole seconds, at least 1; etcd may round it up to its minimum) and puts the item with it. A
//!   refresh — on any replica — puts again with a fresh lease; the old lease is revoked in the
//!   background (the key is no longer attached to it). Expiry is etcd's: when the lease runs out etcd
//!   deletes the key, and every replica's watchers see `deleted=true` with the last value. Network
//!   services are put without a lease.
//! - Unregister: deletes the key (unknown names are fine) and continues down the chain.
//! - Find: answers from the in-memory mirror (below) once it has caught up with etcd: one cheap
//!   linearizable count-only Range tells etcd's current revision, and the Find waits (up to 250 ms,
//!   asking the mirror's etcd watch for a progress notification) for the mirror to get there — so a registration acknowledged by
//!   any replica before the Find is seen. A mirror still behind after that makes the Find read the
//!   whole prefix from etcd instead. Matching is `nsm_registry::matchutils` (the memory store's rules,
//!   on the same `ItemIndex`: by name, service name and name trigram). `watch=true` takes the snapshot and subscribes to the local
//!   fan-out under one lock (when reading etcd directly: subscribes first, reads at revision R, and
//!   streams only changes above R), so nothing is missed or repeated. When etcd cannot be reached,
//!   Finds are answered from the last known state (a warning is logged); a store that never reached
//!   etcd returns the error.
//! - Background: one etcd watch per store (prefix, from the last seen revision + 1, with previous
//!   values) keeps an in-memory mirror of the prefix and fans changes out to the local watchers. When the
//!   etcd watch breaks (etcd restart, compaction) the mirror re-reads the prefix, announces the
//!   difference and watches again, retrying with backoff while etcd is down.
//! - A local watcher that falls behind (more than the buffer of unread changes) is not silently
//!   dropped: its stream ends with `ResourceExhausted`, so the client Finds again.
//! - Errors: etcd unreachable → `Unavailable` naming the address tried.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, Stream, StreamExt};
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_core::clock::{from_timestamp, to_timestamp};
use nsm_core::registry::{FindStream, Found, Query, RegistryNext, RegistryServer};
use nsm_core::{Clock, Ctx, NsmError, Result};
use nsm_registry::memory::{DEFAULT_WATCH_BUFFER, ItemIndex, MemoryItem, found, snapshot_stream};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::client::{EtcdClient, Snapshot, WatchEvent, WatchHandle};
use crate::pb::mvccpb::KeyValue;

const NAME: &str = "etcd";

/// What the etcd store needs to know about an item kind.
pub trait EtcdItem: MemoryItem {
    /// The key directory under the prefix (`nse` or `ns`).
    const DIR: &'static str;
    /// Whether items of this kind live on an etcd lease (expire).
    const LEASED: bool;
    /// Sets the expiration time a Register asks for, bounded by `period` (no-op for unleased items).
    fn bound_expiration(&mut self, _clock: &Clock, _period: Duration) {}
    /// Lease TTL in whole seconds for a registered item (None: no lease).
    fn lease_ttl(&self, _clock: &Clock) -> Option<i64> {
        None
    }
}

impl EtcdItem for NetworkService {
    const DIR: &'static str = "ns";
    const LEASED: bool = false;
}

impl EtcdItem for NetworkServiceEndpoint {
    const DIR: &'static str = "nse";
    const LEASED: bool = true;
    fn bound_expiration(&mut self, clock: &Clock, period: Duration) {
        let mut expires = clock.now() + period;
        if let Some(requested) = self.expiration_time.as_ref().and_then(from_timestamp) {
            expires = expires.min(requested);
        }
        self.expiration_time = Some(to_timestamp(expires));
    }
    fn lease_ttl(&self, clock: &Clock) -> Option<i64> {
        let left = self
            .expiration_time
            .as_ref()
            .map_or(Duration::ZERO, |t| clock.until_timestamp(t));
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Some(i64::try_from(secs.max(1)).unwrap_or(i64::MAX))
    }
}

struct Watcher<T> {
    query: T,
    tx: mpsc::Sender<(i64, Arc<T>, bool)>,
    fell_behind: Arc<AtomicBool>,
}

struct MirrorState<T> {
    /// The mirrored items, indexed as in the memory store.
    items: ItemIndex<T>,
    revision: i64,
    synced: bool,
    watchers: HashMap<u64, Watcher<T>>,
    next_watcher: u64,
}

impl<T: EtcdItem> MirrorState<T> {
    fn announce(&mut self, revision: i64, item: &Arc<T>, deleted: bool) {
        if deleted && !T::ANNOUNCES_DELETION {
            return;
        }
        self.watchers.retain(|_, w| {
            if !T::matches(&w.query, item) {
                return true;
            }
            match w.tx.try_send((revision, item.clone(), deleted)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    w.fell_behind.store(true, Ordering::SeqCst);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Replaces the mirror with a fresh snapshot, announcing what changed.
    fn resync(&mut self, revision: i64, fresh: BTreeMap<String, T>) {
        let old = std::mem::take(&mut self.items);
        for (name, item) in fresh {
            let item = Arc::new(item);
            if old.get(&name).is_none_or(|o| **o != *item) {
                self.announce(revision, &item, false);
            }
            self.items.insert(item);
        }
        for item in old.iter() {
            if self.items.get(item.name()).is_none() {
                self.announce(revision, item, true);
            }
        }
        self.revision = revision;
        self.synced = true;
    }

    fn apply(&mut self, revision: i64, events: Vec<WatchEvent>) {
        for ev in events {
            let rev = if ev.kv.mod_revision > 0 {
                ev.kv.mod_revision
            } else {
                revision
            };
            if ev.deleted {
                let last = ev.prev_kv.as_ref().and_then(decode::<T>);
                let removed = match last {
                    Some(last) => self.items.remove(last.name()).or(Some(Arc::new(last))),
                    None => None,
                };
                if let Some(item) = removed {
                    self.announce(rev, &item, true);
                }
            } else if let Some(item) = decode::<T>(&ev.kv) {
                let item = Arc::new(item);
                self.items.insert(item.clone());
                self.announce(rev, &item, false);
            }
        }
        self.revision = self.revision.max(revision);
    }
}

fn decode<T: EtcdItem>(kv: &KeyValue) -> Option<T> {
    match T::decode(kv.value.as_slice()) {
        Ok(item) => Some(item),
        Err(e) => {
            tracing::warn!(
                "etcd: skipping undecodable {} at {:?}: {e}",
                T::KIND,
                String::from_utf8_lossy(&kv.key)
            );
            None
        }
    }
}

fn decode_all<T: EtcdItem>(snap: &Snapshot) -> BTreeMap<String, T> {
    snap.kvs
        .iter()
        .filter_map(decode::<T>)
        .map(|i| (i.name().to_string(), i))
        .collect()
}

/// The etcd-backed store for items of kind `T`.
pub struct EtcdServer<T: EtcdItem> {
    client: EtcdClient,
    prefix: Vec<u8>,
    period: Duration,
    mirror: Arc<Mutex<MirrorState<T>>>,
    /// Signalled whenever the mirror applies changes.
    changed: Arc<Notify>,
    /// The mirror's current etcd watch (to ask for progress).
    watch_handle: Arc<Mutex<Option<WatchHandle>>>,
    watch_buffer: usize,
    stop: CancellationToken,
}

/// How long a Find waits for the mirror to catch up with etcd before reading etcd directly.
const CATCH_UP: Duration = Duration::from_millis(250);

/// Whether the mirror reflects etcd as of a given moment.
enum Barrier {
    /// Caught up: the mirror answers.
    CaughtUp,
    /// Still behind: read etcd.
    Behind,
}

impl<T: EtcdItem> Drop for EtcdServer<T> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl<T: EtcdItem> EtcdServer<T> {
    /// A store under `<prefix>/<nse|ns>/` on `client`; endpoints live at most `expire_period`
    /// without a refresh. Starts the background mirror (needs a tokio runtime).
    pub fn new(client: EtcdClient, prefix: &str, expire_period: Duration) -> Self {
        let prefix = format!("{}/{}/", prefix.trim_end_matches('/'), T::DIR).into_bytes();
        let s = Self {
            client,
            prefix,
            period: expire_period,
            mirror: Arc::new(Mutex::new(MirrorState {
                items: ItemIndex::new(),
                revision: 0,
                synced: false,
                watchers: HashMap::new(),
                next_watcher: 0,
            })),
            changed: Arc::new(Notify::new()),
            watch_handle: Arc::default(),
            watch_buffer: DEFAULT_WATCH_BUFFER,
            stop: CancellationToken::new(),
        };
        tokio::spawn(run_mirror(
            s.client.clone(),
            s.prefix.clone(),
            Arc::downgrade(&s.mirror),
            s.changed.clone(),
            s.watch_handle.clone(),
            s.stop.clone(),
        ));
        s
    }

    /// Sets how many unread changes a watcher may have before it is ended (at least 1).
    pub fn with_watch_buffer(mut self, size: usize) -> Self {
        self.watch_buffer = size.max(1);
        self
    }

    /// Stops the background mirror when `token` is cancelled.
    pub fn with_cancellation(self, token: &CancellationToken) -> Self {
        let stop = self.stop.clone();
        let token = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => stop.cancel(),
                () = stop.cancelled() => {}
            }
        });
        self
    }

    /// Number of items in the local mirror.
    pub fn mirrored(&self) -> usize {
        self.mirror.lock().items.len()
    }

    /// Whether the mirror has read etcd at least once.
    pub fn synced(&self) -> bool {
        self.mirror.lock().synced
    }

    /// Number of open watching Finds.
    pub fn watchers(&self) -> usize {
        self.mirror.lock().watchers.len()
    }

    fn key(&self, name: &str) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(name.as_bytes());
        k
    }

    fn revoke_later(&self, lease: i64) {
        if lease == 0 {
            return;
        }
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.lease_revoke(lease).await {
                tracing::debug!("etcd: revoking replaced lease {lease:x}: {e}");
            }
        });
    }

    /// Waits until the mirror holds everything etcd held when this was called, up to [`CATCH_UP`]:
    /// reads the key count and store revision R (one count-only Range), then — unless the mirror is
    /// already at R — asks the mirror's etcd watch for a progress notification, which etcd sends once
    /// every event up to its current revision has been delivered.
    async fn barrier(&self) -> Result<Barrier> {
        let (count, revision) = self.client.prefix_count(&self.prefix).await?;
        let caught_up = |m: &MirrorState<T>| {
            m.synced
                && m.revision >= revision
                && i64::try_from(m.items.len()).is_ok_and(|n| n == count)
        };
        let wait = async {
            let mut asked = false;
            loop {
                let notified = self.changed.notified();
                if caught_up(&self.mirror.lock()) {
                    return;
                }
                if !asked && let Some(h) = self.watch_handle.lock().as_ref() {
                    h.request_progress();
                    asked = true;
                }
                notified.await;
            }
        };
        Ok(match tokio::time::timeout(CATCH_UP, wait).await {
            Ok(()) => Barrier::CaughtUp,
            Err(_) => Barrier::Behind,
        })
    }

    /// Current matches for a non-watching Find.
    async fn find_now(&self, query: &T) -> Result<Vec<Arc<T>>> {
        match self.barrier().await {
            Ok(Barrier::CaughtUp) => Ok(self.mirror.lock().items.matching(query)),
            Ok(Barrier::Behind) => Ok(self.current(query).await?.1),
            Err(e) => {
                let m = self.mirror.lock();
                if !m.synced {
                    return Err(e);
                }
                tracing::warn!(
                    "etcd: answering Find from the last known state (revision {}): {e}",
                    m.revision
                );
                Ok(m.items.matching(query))
            }
        }
    }

    /// Current matches: from etcd, or from the mirror when etcd is unreachable (and the mirror has
    /// read it before).
    async fn current(&self, query: &T) -> Result<(i64, Vec<Arc<T>>)> {
        match self.client.range_prefix(&self.prefix).await {
            Ok(snap) => {
                let items = decode_all::<T>(&snap)
                    .into_values()
                    .filter(|i| T::matches(query, i))
                    .map(Arc::new)
                    .collect();
                Ok((snap.revision, items))
            }
            Err(e) => {
                let m = self.mirror.lock();
                if !m.synced {
                    return Err(e);
                }
                tracing::warn!(
                    "etcd: answering Find from the last known state (revision {}): {e}",
                    m.revision
                );
                Ok((m.revision, m.items.matching(query)))
            }
        }
    }

    async fn watch(&self, query: T) -> Result<FindStream<T>> {
        let from_mirror = match self.barrier().await {
            Ok(Barrier::CaughtUp) => true,
            Ok(Barrier::Behind) => false,
            Err(e) => {
                if !self.synced() {
                    return Err(e);
                }
                tracing::warn!("etcd: watching from the last known state: {e}");
                true
            }
        };
        let (tx, rx) = mpsc::channel(self.watch_buffer);
        let fell_behind = Arc::new(AtomicBool::new(false));
        let (id, snapshot) = {
            let mut m = self.mirror.lock();
            // From the mirror: snapshot and subscription under one lock, nothing missed or repeated.
            let snapshot = from_mirror.then(|| m.items.matching(&query));
            let id = m.next_watcher;
            m.next_watcher += 1;
            m.watchers.insert(
                id,
                Watcher {
                    query: query.clone(),
                    tx,
                    fell_behind: fell_behind.clone(),
                },
            );
            (id, snapshot)
        };
        let mut changes = WatchStream {
            rx,
            fell_behind,
            finished: false,
            id,
            after: 0,
            mirror: Arc::downgrade(&self.mirror),
            buffer: self.watch_buffer,
        };
        let current = match snapshot {
            Some(s) => s,
            None => {
                // Subscribed first: every change committed after this Range reaches `changes`.
                let (revision, current) = self.current(&query).await?;
                changes.after = revision;
                current
            }
        };
        Ok(snapshot_stream(current).chain(changes).boxed())
    }
}

async fn run_mirror<T: EtcdItem>(
    client: EtcdClient,
    prefix: Vec<u8>,
    mirror: Weak<Mutex<MirrorState<T>>>,
    changed: Arc<Notify>,
    watch_handle: Arc<Mutex<Option<WatchHandle>>>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let round = async {
            let snap = client.range_prefix(&prefix).await?;
            let fresh = decode_all::<T>(&snap);
            let Some(m) = mirror.upgrade() else {
                return Ok(());
            };
            m.lock().resync(snap.revision, fresh);
            drop(m);
            changed.notify_waiters();
            let (changes, handle) = client.watch_prefix(&prefix, snap.revision + 1).await?;
            *watch_handle.lock() = Some(handle);
            let mut changes = Box::pin(changes);
            while let Some(batch) = changes.next().await {
                let (revision, events) = batch?;
                let Some(m) = mirror.upgrade() else {
                    return Ok(());
                };
                m.lock().apply(revision, events);
                changed.notify_waiters();
            }
            Ok::<(), NsmError>(())
        };
        let failed = tokio::select! {
            () = stop.cancelled() => return,
            r = round => r.err(),
        };
        *watch_handle.lock() = None;
        if mirror.strong_count() == 0 {
            return;
        }
        match failed {
            Some(e) => tracing::warn!(
                "etcd: mirror of {}: {e}; retrying in {backoff:?}",
                String::from_utf8_lossy(&prefix)
            ),
            None => backoff = Duration::from_millis(100),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[async_trait]
impl<T: EtcdItem> RegistryServer<T> for EtcdServer<T> {
    async fn register(&self, ctx: &mut Ctx, mut item: T, next: RegistryNext<T>) -> Result<T> {
        let clock = *ctx.clock();
        item.bound_expiration(&clock, self.period);
        let registered = next.register(ctx, item).await?;
        let lease = match registered.lease_ttl(&clock) {
            Some(ttl) if T::LEASED => self.client.lease_grant(ttl).await?,
            _ => 0,
        };
        let value = registered.encode_to_vec();
        let prev = match self
            .client
            .put(self.key(registered.name()), value, lease)
            .await
        {
            Ok(prev) => prev,
            Err(e) => {
                self.revoke_later(lease);
                return Err(e);
            }
        };
        if let Some(prev) = prev
            && prev.lease != lease
        {
            self.revoke_later(prev.lease);
        }
        Ok(registered)
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<T>,
        next: RegistryNext<T>,
    ) -> Result<FindStream<T>> {
        if !query.watch {
            let current = self.find_now(&query.template).await?;
            let rest = next.find(ctx, query).await?;
            return Ok(snapshot_stream(current).chain(rest).boxed());
        }
        if !T::WATCH_CONTINUES {
            return self.watch(query.template).await;
        }
        let rest = next.find(ctx, query.clone()).await?;
        let own = self.watch(query.template).await?;
        Ok(stream::select(rest, own).boxed())
    }

    async fn unregister(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<()> {
        if let Some(prev) = self.client.delete(self.key(item.name())).await? {
            self.revoke_later(prev.lease);
        }
        next.unregister(ctx, item).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// The changes half of a watching Find; unsubscribes when dropped.
struct WatchStream<T: EtcdItem> {
    rx: mpsc::Receiver<(i64, Arc<T>, bool)>,
    fell_behind: Arc<AtomicBool>,
    finished: bool,
    id: u64,
    /// Changes at or below this revision are already in the initial matches.
    after: i64,
    mirror: Weak<Mutex<MirrorState<T>>>,
    buffer: usize,
}

impl<T: EtcdItem> Stream for WatchStream<T> {
    type Item = Result<Found<T>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some((rev, item, deleted))) => {
                    if rev > self.after {
                        return Poll::Ready(Some(Ok(found(item, deleted))));
                    }
                }
                Poll::Ready(None) => {
                    self.finished = true;
                    if self.fell_behind.load(Ordering::SeqCst) {
                        return Poll::Ready(Some(Err(NsmError::ResourceExhausted {
                            element: NAME,
                            what: format!(
                                "watcher fell behind: more than {} unread {} changes; Find again",
                                self.buffer,
                                T::KIND
                            ),
                        })));
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: EtcdItem> Drop for WatchStream<T> {
    fn drop(&mut self) {
        if let Some(m) = self.mirror.upgrade() {
            m.lock().watchers.remove(&self.id);
        }
    }
}
