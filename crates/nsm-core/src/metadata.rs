//! Per-connection state of chain elements.
//!
//! The `metadata` element creates one [`ConnMetadata`] per connection id on the first Request and drops
//! it on Close (or when the first Request fails). It holds two typed stores: one for server-side
//! elements, one for client-side elements — a client chain nested in a server chain (`connect`) shares the
//! server's [`ConnMetadata`], as in Go. Elements keep their state under their own private types.

use parking_lot::Mutex;

/// Which store an element uses (also the side of a forwarder's cross-connect an element serves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// Server-side elements (timeout, monitor, discoverforwarder…).
    Server,
    /// Client-side elements (refresh, heal, dial…).
    Client,
}

/// The typed state of one connection.
#[derive(Debug, Default)]
pub struct ConnMetadata {
    server: Mutex<http::Extensions>,
    client: Mutex<http::Extensions>,
}

impl ConnMetadata {
    fn store(&self, side: Side) -> &Mutex<http::Extensions> {
        match side {
            Side::Server => &self.server,
            Side::Client => &self.client,
        }
    }

    /// A clone of the value of type `T` on `side`.
    pub fn get<T: Clone + Send + Sync + 'static>(&self, side: Side) -> Option<T> {
        self.store(side).lock().get::<T>().cloned()
    }

    /// Stores a value, returning the previous one.
    pub fn insert<T: Clone + Send + Sync + 'static>(&self, side: Side, value: T) -> Option<T> {
        self.store(side).lock().insert(value)
    }

    /// Removes and returns a value.
    pub fn remove<T: Clone + Send + Sync + 'static>(&self, side: Side) -> Option<T> {
        self.store(side).lock().remove::<T>()
    }

    /// Runs `f` on the value of type `T` (inserting `T::default()` first if absent).
    pub fn with<T: Clone + Default + Send + Sync + 'static, R>(
        &self,
        side: Side,
        f: impl FnOnce(&mut T) -> R,
    ) -> R {
        let mut store = self.store(side).lock();
        if store.get::<T>().is_none() {
            store.insert(T::default());
        }
        match store.get_mut::<T>() {
            Some(v) => f(v),
            // Inserted just above under the same lock.
            None => f(&mut T::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_are_separate() {
        #[derive(Clone, Default, Debug, PartialEq)]
        struct Vni(u32);
        let m = ConnMetadata::default();
        m.insert(Side::Server, Vni(7));
        assert_eq!(m.get::<Vni>(Side::Server), Some(Vni(7)));
        assert_eq!(m.get::<Vni>(Side::Client), None);
        m.with(Side::Client, |v: &mut Vni| v.0 += 1);
        assert_eq!(m.get::<Vni>(Side::Client), Some(Vni(1)));
        assert_eq!(m.remove::<Vni>(Side::Server), Some(Vni(7)));
    }
}
