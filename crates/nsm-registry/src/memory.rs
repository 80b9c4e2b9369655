//! `memory`: the in-memory store of a registry (Go `registry/common/memory`), one per item kind.
//!
//! - Register: runs the rest of the chain first, then stores what it returned under its name (a new
//!   registration under the same name replaces the old one, URL included) and tells every watcher.
//! - Find: `watch=false` yields the current matches ([`crate::matchutils`]), then whatever the rest of
//!   the chain finds, then ends. `watch=true` yields the current matches and then every change; the
//!   snapshot and the subscription are taken under one lock, so no change is missed or repeated.
//! - Unregister: forgets the item (unknown names are fine) and continues down the chain. An endpoint's
//!   removal reaches watchers as `deleted=true`; a network service's removal is not announced, as in Go.
//!
//! State: the items in an [`ItemIndex`] (by name, by endpoint service name, by name trigram, so a
//! Find naming a service or a name of three bytes or more does not walk every item), and the open
//! watchers. Items are shared (`Arc`) and cloned only while a stream hands them out, not under the
//! store's lock.
//!
//! Watchers get changes through a bounded buffer. One that falls behind is not silently skipped: its
//! stream delivers what was buffered and then ends with `ResourceExhausted` ("watcher fell behind"), so
//! the subscriber knows it must Find again.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::stream::{self, Stream, StreamExt};
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_core::registry::{FindStream, Found, Query, RegistryItem, RegistryNext, RegistryServer};
use nsm_core::{Ctx, NsmError, Result};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::matchutils;

pub mod index;

pub use index::ItemIndex;

const NAME: &str = "memory";

/// How many unread changes a watcher may have before it is ended (Go's default event channel size).
pub const DEFAULT_WATCH_BUFFER: usize = 1024;

/// What the memory store needs to know about an item kind beyond [`RegistryItem`].
///
/// Every match of a query must contain the query's name ([`RegistryItem::name`]) as a substring
/// (both kinds match names by substring): the name-trigram index relies on it.
pub trait MemoryItem: RegistryItem {
    /// Whether `item` matches the query template `query`.
    fn matches(query: &Self, item: &Self) -> bool;
    /// Whether Unregister is announced to watchers as `deleted=true`.
    const ANNOUNCES_DELETION: bool;
    /// Whether a watching Find also asks the rest of the chain (Go's NS store never does).
    const WATCH_CONTINUES: bool;
    /// Index keys of an item: every query naming one of them only looks at items carrying it.
    fn index_keys(&self) -> &[String] {
        &[]
    }
    /// An index key every match of `query` must carry (None: look at every item).
    fn query_key(_query: &Self) -> Option<&str> {
        None
    }
}

impl MemoryItem for NetworkService {
    fn matches(query: &Self, item: &Self) -> bool {
        matchutils::match_network_services(query, item)
    }
    const ANNOUNCES_DELETION: bool = false;
    const WATCH_CONTINUES: bool = false;
}

impl MemoryItem for NetworkServiceEndpoint {
    fn matches(query: &Self, item: &Self) -> bool {
        matchutils::match_network_service_endpoints(query, item)
    }
    const ANNOUNCES_DELETION: bool = true;
    const WATCH_CONTINUES: bool = true;
    fn index_keys(&self) -> &[String] {
        &self.network_service_names
    }
    fn query_key(query: &Self) -> Option<&str> {
        // Service names of a query must all be offered by a match, so any one of them narrows.
        query.network_service_names.first().map(String::as_str)
    }
}

/// A stored item as found: the item is shared with the store and cloned only when it is handed on.
pub fn found<T: Clone>(item: Arc<T>, deleted: bool) -> Found<T> {
    Found {
        item: Arc::unwrap_or_clone(item),
        deleted,
    }
}

/// The current matches as the start of a Find stream (items cloned as the stream is read).
pub fn snapshot_stream<T: MemoryItem>(
    current: Vec<Arc<T>>,
) -> impl Stream<Item = Result<Found<T>>> + Send + 'static {
    stream::iter(current).map(|item| Ok(found(item, false)))
}

struct Watcher<T> {
    query: T,
    tx: mpsc::Sender<(Arc<T>, bool)>,
    fell_behind: Arc<AtomicBool>,
}

struct Store<T> {
    items: ItemIndex<T>,
    watchers: HashMap<u64, Watcher<T>>,
    next_watcher: u64,
}

impl<T: MemoryItem> Store<T> {
    /// Hands the change to every interested watcher; ends the ones that are gone or full.
    fn announce(&mut self, item: &Arc<T>, deleted: bool) {
        self.watchers.retain(|_, w| {
            if !T::matches(&w.query, item) {
                return true;
            }
            match w.tx.try_send((item.clone(), deleted)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    w.fell_behind.store(true, Ordering::SeqCst);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

/// The in-memory store for items of kind `T` (`NetworkService` or `NetworkServiceEndpoint`).
pub struct MemoryServer<T: MemoryItem> {
    store: Arc<Mutex<Store<T>>>,
    watch_buffer: usize,
}

impl<T: MemoryItem> Default for MemoryServer<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: MemoryItem> MemoryServer<T> {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            store: Arc::new(Mutex::new(Store {
                items: ItemIndex::new(),
                watchers: HashMap::new(),
                next_watcher: 0,
            })),
            watch_buffer: DEFAULT_WATCH_BUFFER,
        }
    }

    /// Sets how many unread changes a watcher may have before it is ended (at least 1).
    pub fn with_watch_buffer(mut self, size: usize) -> Self {
        self.watch_buffer = size.max(1);
        self
    }

    /// Number of stored items.
    pub fn len(&self) -> usize {
        self.store.lock().items.len()
    }

    /// True if nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of open watching Finds.
    pub fn watchers(&self) -> usize {
        self.store.lock().watchers.len()
    }

    /// The stored item called `name`.
    pub fn get(&self, name: &str) -> Option<T> {
        self.store.lock().items.get(name).map(|i| T::clone(i))
    }

    fn watch(&self, query: T) -> FindStream<T> {
        let (tx, rx) = mpsc::channel(self.watch_buffer);
        let fell_behind = Arc::new(AtomicBool::new(false));
        let mut store = self.store.lock();
        let current = store.items.matching(&query);
        let id = store.next_watcher;
        store.next_watcher += 1;
        store.watchers.insert(
            id,
            Watcher {
                query,
                tx,
                fell_behind: fell_behind.clone(),
            },
        );
        drop(store);
        let changes = WatchStream {
            rx,
            fell_behind,
            finished: false,
            id,
            store: Arc::downgrade(&self.store),
        };
        snapshot_stream(current).chain(changes).boxed()
    }
}

#[async_trait]
impl<T: MemoryItem> RegistryServer<T> for MemoryServer<T> {
    async fn register(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<T> {
        let registered = next.register(ctx, item).await?;
        let stored = Arc::new(registered.clone());
        let mut store = self.store.lock();
        store.items.insert(stored.clone());
        store.announce(&stored, false);
        drop(store);
        Ok(registered)
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<T>,
        next: RegistryNext<T>,
    ) -> Result<FindStream<T>> {
        if !query.watch {
            let current = self.store.lock().items.matching(&query.template);
            let rest = next.find(ctx, query).await?;
            return Ok(snapshot_stream(current).chain(rest).boxed());
        }
        if !T::WATCH_CONTINUES {
            return Ok(self.watch(query.template));
        }
        let rest = next.find(ctx, query.clone()).await?;
        Ok(stream::select(rest, self.watch(query.template)).boxed())
    }

    async fn unregister(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<()> {
        {
            let mut store = self.store.lock();
            if let Some(removed) = store.items.remove(item.name())
                && T::ANNOUNCES_DELETION
            {
                store.announce(&removed, true);
            }
        }
        next.unregister(ctx, item).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// The changes half of a watching Find; unsubscribes when dropped.
struct WatchStream<T: MemoryItem> {
    rx: mpsc::Receiver<(Arc<T>, bool)>,
    fell_behind: Arc<AtomicBool>,
    finished: bool,
    id: u64,
    store: Weak<Mutex<Store<T>>>,
}

impl<T: MemoryItem> Stream for WatchStream<T> {
    type Item = Result<Found<T>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((item, deleted))) => Poll::Ready(Some(Ok(found(item, deleted)))),
            Poll::Ready(None) => {
                self.finished = true;
                if self.fell_behind.load(Ordering::SeqCst) {
                    Poll::Ready(Some(Err(NsmError::ResourceExhausted {
                        element: NAME,
                        what: format!(
                            "watcher fell behind: more than {} unread {} changes; Find again",
                            self.rx.max_capacity(),
                            T::KIND
                        ),
                    })))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: MemoryItem> Drop for WatchStream<T> {
    fn drop(&mut self) {
        if let Some(store) = self.store.upgrade() {
            store.lock().watchers.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests;
