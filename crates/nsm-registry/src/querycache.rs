//! `querycache` (registry client side): answers repeated Finds from memory, kept fresh by a watching
//! Find (Go `registry/common/querycache`, keyed by the whole query instead of by endpoint name).
//!
//! - Find, `watch=false`: a query seen before whose cached answer is not empty is answered from memory
//!   without calling the rest of the chain. Otherwise (a miss) the element first opens a *watching*
//!   Find for the same template down the chain, then runs the plain Find, returns its answer and keeps
//!   it; a task applies every change the watch reports (new or updated items are replaced in place or
//!   appended, `deleted=true` removes). The watch is opened before the snapshot is taken, so no change
//!   in between is lost. An empty answer is never served from memory (a caller retrying "not found"
//!   always asks the registry), but its entry stays and fills as matching items register.
//! - Find, `watch=true`: passes through.
//! - Register / Unregister: pass through; on success the cached answers are updated at once with what
//!   was registered or removed, so a caller that registers through this chain sees its change in its
//!   next Find without waiting for the watch.
//! - Freshness: an entry ends (and the next Find for it goes down the chain again) when its watch
//!   stream ends or fails (the registry behind restarted, a watcher fell behind), when it has not been
//!   used for `expiry` (default one minute, as Go; timers on the context's clock), or — for kinds whose
//!   removals are not announced to watchers (network services, [`MemoryItem::ANNOUNCES_DELETION`]) —
//!   `expiry` after it was filled, used or not, so a removed service is forgotten within that time.
//!   Between a change at the registry and its watch event there is a short window (one hop of network
//!   latency) in which a Find still answers the previous state, as with Go's cache.
//! - State: at most `max_entries` entries (default 256; the least recently used is dropped for a new
//!   one), each its items, its expiry and one watch stream with its task. Everything stops when the
//!   element is dropped or the [`QueryCacheClient::with_cancellation`] token is cancelled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use nsm_core::registry::{FindStream, Found, Query, RegistryNext, RegistryServer, collect_found};
use nsm_core::{Clock, Ctx, Result};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::memory::MemoryItem;

const NAME: &str = "querycache";

/// How long an unused entry lives (Go's default).
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(60);

/// How many distinct queries are cached at most.
pub const DEFAULT_MAX_ENTRIES: usize = 256;

/// The cached answer of one query.
struct Entry<T> {
    template: T,
    state: Mutex<EntryState<T>>,
    /// Ends this entry's watch task.
    stop: CancellationToken,
}

struct EntryState<T> {
    items: Vec<T>,
    expires: Instant,
}

impl<T: MemoryItem> Entry<T> {
    /// Applies one watch event (or a write-through change) to the cached answer.
    fn apply(&self, found: &Found<T>) {
        let mut s = self.state.lock();
        let at = s.items.iter().position(|i| i.name() == found.item.name());
        match (
            found.deleted || !T::matches(&self.template, &found.item),
            at,
        ) {
            (true, Some(i)) => {
                s.items.remove(i);
            }
            (true, None) => {}
            (false, Some(i)) => s.items[i] = found.item.clone(),
            (false, None) => s.items.push(found.item.clone()),
        }
    }
}

/// The entries, shared with the watch tasks.
struct Entries<T> {
    by_query: Mutex<HashMap<Vec<u8>, Arc<Entry<T>>>>,
}

impl<T: MemoryItem> Entries<T> {
    /// The cached answer for `key` if it may be served now.
    fn lookup(&self, key: &[u8], now: Instant, expiry: Duration) -> Option<Vec<T>> {
        let mut map = self.by_query.lock();
        let entry = map.get(key)?.clone();
        let mut s = entry.state.lock();
        if s.expires <= now {
            drop(s);
            map.remove(key);
            entry.stop.cancel();
            return None;
        }
        if s.items.is_empty() {
            return None;
        }
        if T::ANNOUNCES_DELETION {
            s.expires = now + expiry;
        }
        Some(s.items.clone())
    }

    /// Applies a change to every entry (its own test decides whether the item belongs there).
    fn apply(&self, found: &Found<T>) {
        let entries: Vec<_> = self.by_query.lock().values().cloned().collect();
        for e in entries {
            e.apply(found);
        }
    }

    /// Drops `key`'s entry if it is still `entry`.
    fn forget(&self, key: &[u8], entry: &Arc<Entry<T>>) {
        let mut map = self.by_query.lock();
        if map.get(key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            map.remove(key);
        }
        entry.stop.cancel();
    }
}

/// Caches Find answers of the rest of the chain (see the module docs).
pub struct QueryCacheClient<T: MemoryItem> {
    entries: Arc<Entries<T>>,
    expiry: Duration,
    max_entries: usize,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl<T: MemoryItem> Default for QueryCacheClient<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: MemoryItem> QueryCacheClient<T> {
    /// A cache with Go's one-minute expiry and at most [`DEFAULT_MAX_ENTRIES`] queries.
    pub fn new() -> Self {
        let stop = CancellationToken::new();
        Self {
            entries: Arc::new(Entries {
                by_query: Mutex::default(),
            }),
            expiry: DEFAULT_EXPIRY,
            max_entries: DEFAULT_MAX_ENTRIES,
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        }
    }

    /// Entries end after `expiry` without use (or after `expiry`, see the module docs).
    pub fn with_expiry(mut self, expiry: Duration) -> Self {
        self.expiry = expiry;
        self
    }

    /// Caches at most `n` queries (at least 1).
    pub fn with_max_entries(mut self, n: usize) -> Self {
        self.max_entries = n.max(1);
        self
    }

    /// Also stops every watch when `token` is cancelled (the owner's lifetime).
    pub fn with_cancellation(mut self, token: &CancellationToken) -> Self {
        let stop = token.child_token();
        self._stop_on_drop = stop.clone().drop_guard();
        self.stop = stop;
        self
    }

    /// Number of cached queries (each with one open watch).
    pub fn len(&self) -> usize {
        self.entries.by_query.lock().len()
    }

    /// True if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A miss: opens the watch, then runs the plain Find and keeps its answer.
    async fn fill(
        &self,
        ctx: &mut Ctx,
        key: Vec<u8>,
        query: Query<T>,
        next: RegistryNext<T>,
    ) -> Result<FindStream<T>> {
        let already = self.entries.by_query.lock().contains_key(&key);
        if already || self.stop.is_cancelled() {
            // An entry that is empty for now (its watch fills it) or one being filled by another Find.
            return next.find(ctx, query).await;
        }
        let mut watch_ctx = ctx.without_deadline();
        watch_ctx.set_metadata(None);
        let watch_query = Query {
            template: query.template.clone(),
            watch: true,
        };
        let watch = ctx
            .within(NAME, next.clone().find(&mut watch_ctx, watch_query))
            .await;
        let found = collect_found(next.find(ctx, query.clone()).await?).await?;
        match watch {
            Ok(changes) => {
                let items = found.iter().filter(|f| !f.deleted).map(|f| f.item.clone());
                self.keep(key, query.template, items.collect(), changes, *ctx.clock());
            }
            Err(e) => tracing::debug!(error = %e, "querycache: cannot watch; answer not cached"),
        }
        Ok(stream::iter(found.into_iter().map(Ok)).boxed())
    }

    /// Stores a new entry and starts following its watch.
    fn keep(&self, key: Vec<u8>, template: T, items: Vec<T>, changes: FindStream<T>, clock: Clock) {
        let now = clock.instant();
        let entry = Arc::new(Entry {
            template,
            state: Mutex::new(EntryState {
                items,
                expires: now + self.expiry,
            }),
            stop: self.stop.child_token(),
        });
        {
            let mut map = self.entries.by_query.lock();
            if map.contains_key(&key) {
                // Another Find filled it meanwhile; dropping `changes` closes our watch.
                return;
            }
            if map.len() >= self.max_entries {
                evict_least_recently_used(&mut map);
            }
            map.insert(key.clone(), entry.clone());
        }
        tokio::spawn(follow(self.entries.clone(), key, entry, changes, clock));
    }
}

/// Drops the entry that expires first (the least recently used one).
fn evict_least_recently_used<T>(map: &mut HashMap<Vec<u8>, Arc<Entry<T>>>) {
    let oldest = map
        .iter()
        .min_by_key(|(_, e)| e.state.lock().expires)
        .map(|(k, _)| k.clone());
    if let Some(e) = oldest.and_then(|k| map.remove(&k)) {
        e.stop.cancel();
    }
}

/// Applies `entry`'s watch events until the watch ends, the entry expires or is stopped.
async fn follow<T: MemoryItem>(
    entries: Arc<Entries<T>>,
    key: Vec<u8>,
    entry: Arc<Entry<T>>,
    mut changes: FindStream<T>,
    clock: Clock,
) {
    loop {
        let expires = entry.state.lock().expires;
        tokio::select! {
            () = entry.stop.cancelled() => break,
            () = clock.sleep_until(expires) => {
                if entry.state.lock().expires <= clock.instant() {
                    break;
                }
            }
            change = changes.next() => match change {
                Some(Ok(found)) => entries.apply(&found),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "querycache: watch failed; entry dropped");
                    break;
                }
                None => break,
            },
        }
    }
    entries.forget(&key, &entry);
}

#[async_trait]
impl<T: MemoryItem> RegistryServer<T> for QueryCacheClient<T> {
    async fn register(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<T> {
        let registered = next.register(ctx, item).await?;
        self.entries.apply(&Found {
            item: registered.clone(),
            deleted: false,
        });
        Ok(registered)
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<T>,
        next: RegistryNext<T>,
    ) -> Result<FindStream<T>> {
        if query.watch {
            return next.find(ctx, query).await;
        }
        let key = query.template.encode_to_vec();
        let now = ctx.clock().instant();
        if let Some(items) = self.entries.lookup(&key, now, self.expiry) {
            let found = items.into_iter().map(|item| {
                Ok(Found {
                    item,
                    deleted: false,
                })
            });
            return Ok(stream::iter(found).boxed());
        }
        self.fill(ctx, key, query, next).await
    }

    async fn unregister(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<()> {
        next.unregister(ctx, item.clone()).await?;
        self.entries.apply(&Found {
            item,
            deleted: true,
        });
        Ok(())
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests;
