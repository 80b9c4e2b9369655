//! `etcd`: the etcd-backed store of a registry, one per item kind — the same role as
//! `nsm_registry::MemoryServer`, shared by every registry replica on the same etcd and key prefix.
//!
//! - Keys: `<prefix>/nse/<name>` and `<prefix>/ns/<name>`; values are the protobuf-encoded items.
//! - Register (endpoints): sets `expiration_time = min(now + expire period, requested)` (what `expire`
//!   does in the memory chain), runs the rest of the chain, then puts the item attached to the
//!   replica's lease for that second of expiry (see `LeaseBook`: one lease per second, shared by
//!   every endpoint expiring in it, so a Register is usually one etcd write, not a lease grant and a
//!   write). A refresh — on any replica — puts again on a later lease. Expiry is etcd's: when the
//!   lease runs out etcd deletes the key, and every replica's watchers see `deleted=true` with the
//!   last value. Network services are put without a lease.
//! - Unregister: deletes the key (unknown names are fine; the lease, maybe shared, is left to run
//!   out) and continues down the chain.
//! - Find: answers from the in-memory mirror (below) once it has caught up with etcd: one cheap
//!   linearizable read of a single key tells etcd's current revision, and the Find waits (up to
//!   250 ms, asking the mirror's etcd watch for a progress notification when the revision moved on
//!   outside the prefix) for the mirror to get there — so a registration acknowledged by any replica
//!   before the Find is seen. A mirror still behind after that makes the Find read the whole prefix
//!   from etcd instead. Matching is `nsm_registry::matchutils` (the memory store's rules, on the same
//!   `ItemIndex`: by name, service name and name trigram). `watch=true` takes the snapshot and
//!   subscribes to the local fan-out under one lock (when reading etcd directly: subscribes first,
//!   reads at revision R, and streams only changes above R), so nothing is missed or repeated. When
//!   etcd cannot be reached, Finds are answered from the last known state (a warning is logged); a
//!   store that never reached etcd returns the error.
//! - Background: one etcd watch per store (prefix, from the last seen revision + 1, with previous
//!   values) keeps an in-memory mirror of the prefix and fans changes out to the local watchers. When the
//!   etcd watch breaks (etcd restart, compaction) the mirror re-reads the prefix, announces the
//!   difference and watches again, retrying with backoff while etcd is down.
//! - A local watcher that falls behind (more than the buffer of unread changes) is not silently
//!   dropped: its stream ends with `ResourceExhausted`, so the client Finds again.
//! - Errors: etcd unreachable → `Unavailable` naming the address tried.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
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
use prost_types::Timestamp;
use tokio::sync::{Notify, OnceCell, mpsc};
use tokio_util::sync::CancellationToken;

use crate::client::{EtcdClient, Snapshot, WatchEvent, WatchHandle};
use crate::pb::mvccpb::KeyValue;

const NAME: &str = "etcd";

/// What the etcd store needs to know about an item kind.
pub trait EtcdItem: MemoryItem {
    /// The key directory under the prefix (`nse` or `ns`).
    const DIR: &'static str;
    /// Sets the expiration time a Register asks for, bounded by `period` (no-op for unleased items).
    fn bound_expiration(&mut self, _clock: &Clock, _period: Duration) {}
    /// When a registered item expires (None: it lives on no lease).
    fn expires(&self) -> Option<&Timestamp> {
        None
    }
}

impl EtcdItem for NetworkService {
    const DIR: &'static str = "ns";
}

impl EtcdItem for NetworkServiceEndpoint {
    const DIR: &'static str = "nse";
    fn bound_expiration(&mut self, clock: &Clock, period: Duration) {
        let mut expires = clock.now() + period;
        if let Some(requested) = self.expiration_time.as_ref().and_then(from_timestamp) {
            expires = expires.min(requested);
        }
        self.expiration_time = Some(to_timestamp(expires));
    }
    fn expires(&self) -> Option<&Timestamp> {
        // A registered endpoint always has one (`bound_expiration`); a missing one reads as "now".
        Some(self.expiration_time.as_ref().unwrap_or(&NO_TIME))
    }
}

const NO_TIME: Timestamp = Timestamp {
    seconds: 0,
    nanos: 0,
};

/// Whole seconds from now until `t`, rounded up, at least 1 (an etcd lease TTL).
fn ttl_until(clock: &Clock, t: &Timestamp) -> i64 {
    let left = clock.until_timestamp(t);
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// The leases this replica attaches endpoints to: one per wall-clock second of expiry, shared by
/// every endpoint expiring within that second, granted on first use (concurrent Registers wait for
/// the same grant). A lease of second `s` is granted with a TTL that ends it at or after `s` and
/// before `s + 1` plus the grant's latency (etcd may raise short TTLs to its minimum), so an endpoint
/// never disappears before its `expiration_time` and at most about a second after it — the bound a
/// per-endpoint lease of whole seconds had. Leases are never revoked: other endpoints may still be
/// attached to one, and an unused lease simply runs out. Seconds at most one second ahead get a
/// lease of their own (a shared one could run out between the lookup and the put).
#[derive(Default)]
struct LeaseBook {
    by_second: Mutex<BTreeMap<i64, Arc<OnceCell<i64>>>>,
}

impl LeaseBook {
    /// A lease that lasts until `expires` (rounded up to the second); the second is the book key.
    async fn lease_for(
        &self,
        client: &EtcdClient,
        clock: &Clock,
        expires: &Timestamp,
    ) -> Result<(i64, Option<i64>)> {
        let second = expires.seconds + i64::from(expires.nanos > 0);
        let now = clock.now_timestamp().seconds;
        let end = Timestamp {
            seconds: second,
            nanos: 0,
        };
        if second <= now + 1 {
            return Ok((client.lease_grant(ttl_until(clock, &end)).await?, None));
        }
        let cell = {
            let mut book = self.by_second.lock();
            // Forget seconds that are (nearly) over; their leases run out on their own.
            *book = book.split_off(&(now + 2));
            book.entry(second).or_default().clone()
        };
        let id = cell
            .get_or_try_init(|| client.lease_grant(ttl_until(clock, &end)))
            .await?;
        Ok((*id, Some(second)))
    }

    /// Drops the shared lease of `second` if it is still `lease` (etcd no longer knows it).
    fn forget(&self, second: i64, lease: i64) {
        let mut book = self.by_second.lock();
        if book
            .get(&second)
            .is_some_and(|c| c.get().is_some_and(|id| *id == lease))
        {
            book.remove(&second);
        }
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
    /// The revision the mirror is known to be at: from events, re-reads and progress notifications.
    revision: i64,
    /// The highest revision of an event (or re-read) the mirror has applied. Unlike `revision` this
    /// never runs ahead of the events: etcd 3.4 before 3.4.24 may answer a progress request before
    /// delivering events up to the revision it reports (etcd issue 15220).
    event_revision: i64,
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
        self.event_revision = revision;
        self.synced = true;
    }

    fn apply(&mut self, revision: i64, events: Vec<WatchEvent>) {
        for ev in events {
            let rev = if ev.kv.mod_revision > 0 {
                ev.kv.mod_revision
            } else {
                revision
            };
            self.event_revision = self.event_revision.max(ev.kv.mod_revision);
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
    /// Shared endpoint leases, by second of expiry.
    leases: LeaseBook,
    /// The revision of this replica's last put or delete in the prefix.
    written: AtomicI64,
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
                event_revision: 0,
                synced: false,
                watchers: HashMap::new(),
                next_watcher: 0,
            })),
            changed: Arc::new(Notify::new()),
            watch_handle: Arc::default(),
            watch_buffer: DEFAULT_WATCH_BUFFER,
            stop: CancellationToken::new(),
            leases: LeaseBook::default(),
            written: AtomicI64::new(0),
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

    /// Waits until the mirror holds everything etcd held when this was called, up to [`CATCH_UP`].
    ///
    /// Fast path: one linearizable read of a single key (its cost does not grow with the number of
    /// keys) gives etcd's current revision R; if the mirror has applied events up to R (and up to
    /// this replica's own last write), it is caught up. Otherwise (writes outside the prefix moved
    /// the revision on, or events are still on their way), as before: a count-only read of the
    /// prefix gives its key count and revision R', and the Find waits until the mirror is at R' with
    /// that many items and has seen this replica's own writes, asking the mirror's etcd watch for a
    /// progress notification. The count guards against etcd 3.4's progress answers overtaking
    /// events (issue 15220); a change that keeps the count (a refresh through another replica still
    /// in flight) can still be missed there on etcd before 3.4.24.
    async fn barrier(&self) -> Result<Barrier> {
        let own = self.written.load(Ordering::SeqCst);
        let revision = self.client.current_revision(&self.prefix).await?;
        {
            let m = self.mirror.lock();
            if m.synced && m.event_revision >= revision.max(own) {
                return Ok(Barrier::CaughtUp);
            }
        }
        let (count, revision) = self.client.prefix_count(&self.prefix).await?;
        let caught_up = |m: &MirrorState<T>| {
            m.synced
                && m.revision >= revision
                && m.event_revision >= own
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

    /// Notes a change this replica made at `revision` (Finds wait for the mirror to see it).
    fn wrote(&self, revision: i64) {
        self.written.fetch_max(revision, Ordering::SeqCst);
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
        let key = self.key(registered.name());
        let value = registered.encode_to_vec();
        let Some(expires) = registered.expires() else {
            self.wrote(self.client.put(key, value, 0).await?);
            return Ok(registered);
        };
        let (lease, second) = self.leases.lease_for(&self.client, &clock, expires).await?;
        match self.client.put(key.clone(), value.clone(), lease).await {
            Ok(revision) => self.wrote(revision),
            // etcd no longer knows the shared lease (a new etcd cluster at the same address): take a
            // fresh one, once.
            Err(NsmError::NotFound { .. }) if second.is_some() => {
                if let Some(second) = second {
                    self.leases.forget(second, lease);
                }
                let (lease, _) = self.leases.lease_for(&self.client, &clock, expires).await?;
                self.wrote(self.client.put(key, value, lease).await?);
            }
            Err(e) => return Err(e),
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
        // The lease may be shared with other endpoints: it is left to run out.
        if let Some(revision) = self.client.delete(self.key(item.name())).await? {
            self.wrote(revision);
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
