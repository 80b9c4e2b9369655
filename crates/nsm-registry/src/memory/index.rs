//! [`ItemIndex`]: the items of a store (the memory store, the etcd store's mirror) with the lookups a
//! Find needs, so that no Find walks every item when its template narrows the answer.
//!
//! - Items are kept behind [`Arc`]: a Find copies pointers while the store is locked and clones the
//!   items themselves later, while streaming them, with the lock released.
//! - By name: a hash map (Register, Unregister and exact lookups are O(1), no string comparisons
//!   along a tree).
//! - By index key (an endpoint's service names, [`MemoryItem::index_keys`]): a Find naming a service
//!   only looks at the items offering it.
//! - By name trigram: names match by substring, so an exact-name index alone cannot answer "names
//!   containing `q`". Every three-byte window of every name is indexed; a Find whose name is at
//!   least three bytes long only looks at the items carrying its rarest trigram, then checks the full
//!   match. A refresh under the same name does not touch the trigram index.
//!
//! Items get small integer ids (slots reused after removal), so the posting sets are sets of `u32`.
//! Candidate ids are visited in ascending order, which keeps answers deterministic for a given
//! history; callers must not rely on any particular order.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::MemoryItem;

/// One name trigram, the three bytes packed into the low 24 bits.
type Gram = u32;

fn grams(name: &str) -> Vec<Gram> {
    let mut g: Vec<Gram> = name
        .as_bytes()
        .windows(3)
        .map(|w| (u32::from(w[0]) << 16) | (u32::from(w[1]) << 8) | u32::from(w[2]))
        .collect();
    g.sort_unstable();
    g.dedup();
    g
}

/// Items by name, with the service-name and name-trigram indexes described in the module docs.
pub struct ItemIndex<T> {
    slots: Vec<Option<Arc<T>>>,
    free: Vec<u32>,
    ids: HashMap<Arc<str>, u32>,
    by_key: HashMap<String, BTreeSet<u32>>,
    by_gram: HashMap<Gram, BTreeSet<u32>>,
}

impl<T> Default for ItemIndex<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            ids: HashMap::new(),
            by_key: HashMap::new(),
            by_gram: HashMap::new(),
        }
    }
}

impl<T: MemoryItem> ItemIndex<T> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True if there are no items.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The item called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<T>> {
        let id = *self.ids.get(name)?;
        self.slots.get(id as usize)?.as_ref()
    }

    /// Every item, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<T>> {
        self.slots.iter().flatten()
    }

    /// Stores `item` under its name, replacing (and returning) the item stored there before.
    pub fn insert(&mut self, item: Arc<T>) -> Option<Arc<T>> {
        if let Some(&id) = self.ids.get(item.name()) {
            let slot = &mut self.slots[id as usize];
            let old = slot.replace(item.clone());
            if let Some(old) = &old
                && old.index_keys() != item.index_keys()
            {
                Self::unlink_keys(&mut self.by_key, old.index_keys(), id);
                Self::link_keys(&mut self.by_key, item.index_keys(), id);
            }
            return old;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(item.clone());
                id
            }
            None => {
                // More than u32::MAX items would not fit in memory long before this saturates.
                let id = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Some(item.clone()));
                id
            }
        };
        self.ids.insert(Arc::from(item.name()), id);
        Self::link_keys(&mut self.by_key, item.index_keys(), id);
        for g in grams(item.name()) {
            self.by_gram.entry(g).or_default().insert(id);
        }
        None
    }

    /// Removes and returns the item called `name`.
    pub fn remove(&mut self, name: &str) -> Option<Arc<T>> {
        let id = self.ids.remove(name)?;
        let old = self.slots.get_mut(id as usize)?.take()?;
        self.free.push(id);
        Self::unlink_keys(&mut self.by_key, old.index_keys(), id);
        for g in grams(old.name()) {
            if let Some(ids) = self.by_gram.get_mut(&g) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_gram.remove(&g);
                }
            }
        }
        Some(old)
    }

    /// True if no posting set is left (every index is empty).
    #[cfg(test)]
    pub(crate) fn indexes_empty(&self) -> bool {
        self.by_key.is_empty() && self.by_gram.is_empty()
    }

    /// Forgets every item.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    fn link_keys(by_key: &mut HashMap<String, BTreeSet<u32>>, keys: &[String], id: u32) {
        for k in keys {
            match by_key.get_mut(k.as_str()) {
                Some(ids) => {
                    ids.insert(id);
                }
                None => {
                    by_key.insert(k.clone(), BTreeSet::from([id]));
                }
            }
        }
    }

    fn unlink_keys(by_key: &mut HashMap<String, BTreeSet<u32>>, keys: &[String], id: u32) {
        for k in keys {
            if let Some(ids) = by_key.get_mut(k.as_str()) {
                ids.remove(&id);
                if ids.is_empty() {
                    by_key.remove(k.as_str());
                }
            }
        }
    }

    /// The smallest posting set that every match of `query` must be in; `Err(())` when some index
    /// proves there is no match; `Ok(None)` when no index applies.
    fn candidates(&self, query: &T) -> Result<Option<&BTreeSet<u32>>, ()> {
        let key = T::query_key(query).map(|k| self.by_key.get(k));
        let name = query.name();
        let name_grams = if name.len() >= 3 {
            grams(name)
        } else {
            Vec::new()
        };
        let sets = key
            .into_iter()
            .chain(name_grams.iter().map(|g| self.by_gram.get(g)));
        let mut best: Option<&BTreeSet<u32>> = None;
        for set in sets {
            let set = set.ok_or(())?;
            if best.is_none_or(|b| set.len() < b.len()) {
                best = Some(set);
            }
        }
        Ok(best)
    }

    /// The items matching `query` ([`MemoryItem::matches`]).
    pub fn matching(&self, query: &T) -> Vec<Arc<T>> {
        match self.candidates(query) {
            Err(()) => Vec::new(),
            Ok(Some(ids)) => ids
                .iter()
                .filter_map(|&id| self.slots.get(id as usize)?.as_ref())
                .filter(|item| T::matches(query, item))
                .cloned()
                .collect(),
            Ok(None) => self
                .iter()
                .filter(|item| T::matches(query, item))
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};

    fn nse(name: &str, services: &[&str]) -> NetworkServiceEndpoint {
        NetworkServiceEndpoint {
            name: name.into(),
            network_service_names: services.iter().map(|s| (*s).to_string()).collect(),
            ..Default::default()
        }
    }

    fn names<T: MemoryItem>(found: Vec<Arc<T>>) -> Vec<String> {
        let mut n: Vec<String> = found.iter().map(|i| i.name().to_string()).collect();
        n.sort();
        n
    }

    fn q(name: &str, services: &[&str]) -> NetworkServiceEndpoint {
        nse(name, services)
    }

    #[test]
    fn answers_equal_a_full_scan() {
        let mut idx = ItemIndex::new();
        let all = [
            nse("nse-1", &["a"]),
            nse("nse-10", &["a", "b"]),
            nse("nse-2", &["b"]),
            nse("other", &[]),
            nse("ünïcode-nse", &["a"]),
        ];
        for i in &all {
            idx.insert(Arc::new(i.clone()));
        }
        let queries = [
            q("", &[]),
            q("nse", &[]),
            q("nse-1", &[]),
            q("se-1", &["b"]),
            q("nse-1", &["a"]),
            q("ïc", &[]),
            q("ünïcode", &[]),
            q("xyz", &[]),
            q("ns", &["b"]),
            q("", &["a", "b"]),
            q("", &["c"]),
            q("nse-10", &["c"]),
        ];
        for query in &queries {
            let scan: Vec<Arc<NetworkServiceEndpoint>> = all
                .iter()
                .filter(|i| NetworkServiceEndpoint::matches(query, i))
                .cloned()
                .map(Arc::new)
                .collect();
            assert_eq!(
                names(idx.matching(query)),
                names(scan),
                "query {:?} {:?}",
                query.name,
                query.network_service_names
            );
        }
    }

    #[test]
    fn replace_and_remove_keep_every_index_consistent() {
        let mut idx = ItemIndex::new();
        idx.insert(Arc::new(nse("nse-1", &["a"])));
        idx.insert(Arc::new(nse("nse-2", &["a"])));
        let old = idx.insert(Arc::new(nse("nse-1", &["b"]))).unwrap();
        assert_eq!(old.network_service_names, ["a"]);
        assert_eq!(names(idx.matching(&q("", &["a"]))), ["nse-2"]);
        assert_eq!(names(idx.matching(&q("", &["b"]))), ["nse-1"]);
        assert!(idx.remove("nse-1").is_some());
        assert!(idx.remove("nse-1").is_none());
        assert!(idx.matching(&q("nse-1", &[])).is_empty());
        assert!(idx.matching(&q("", &["b"])).is_empty());
        // The freed slot is reused by a new name; the old name's trigrams are gone.
        idx.insert(Arc::new(nse("zzz-9", &["c"])));
        assert_eq!(names(idx.matching(&q("zz", &[]))), ["zzz-9"]);
        assert_eq!(names(idx.matching(&q("zzz", &[]))), ["zzz-9"]);
        assert!(idx.matching(&q("se-1", &[])).is_empty());
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.by_key.len(), 2, "no empty posting sets left behind");
        idx.remove("nse-2");
        idx.remove("zzz-9");
        assert!(idx.is_empty());
        assert!(idx.by_key.is_empty() && idx.by_gram.is_empty());
    }

    #[test]
    fn network_services_by_name_substring() {
        let mut idx = ItemIndex::new();
        for n in ["icmp-responder", "vl3", "icmp"] {
            idx.insert(Arc::new(NetworkService {
                name: n.into(),
                ..Default::default()
            }));
        }
        let q = |n: &str| NetworkService {
            name: n.into(),
            ..Default::default()
        };
        assert_eq!(names(idx.matching(&q("icmp"))), ["icmp", "icmp-responder"]);
        assert_eq!(names(idx.matching(&q("resp"))), ["icmp-responder"]);
        assert_eq!(names(idx.matching(&q("v"))), ["vl3"]);
        assert_eq!(idx.matching(&q("")).len(), 3);
    }
}
