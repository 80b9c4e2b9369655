//! One timer for all the connections of a `timeout` element: their deadlines in one ordered queue,
//! served by one task.
//!
//! A task per connection costs a few hundred bytes for as long as the connection lives (the task, its
//! future, its timer entry); here an armed connection is one queue entry (its deadline and event
//! handle). The task runs only while something is armed: the first arm starts it and it ends when the
//! queue is empty, so nothing is left running once the last deadline has fired or been disarmed —
//! as with a task per connection, a timer still fires after the chain that armed it was dropped.
//!
//! When a deadline passes, its connection is closed through `begin`'s event handle on a task of its
//! own, so one slow Close does not hold back the others.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use nsm_core::Clock;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::ELEMENT;
use crate::begin::EventFactory;

/// One armed deadline: when, and a sequence number that tells apart equal instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    at: Instant,
    seq: u64,
}

#[derive(Default)]
struct State {
    armed: BTreeMap<Key, EventFactory>,
    next_seq: u64,
    /// Whether the task serving the queue is running.
    running: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// An earlier deadline than the task is waiting for was armed.
    earlier: Notify,
}

/// The deadlines of one `timeout` element.
#[derive(Clone, Default)]
pub(super) struct Queue(Arc<Shared>);

impl Queue {
    /// Closes `events`' connection at `at` (on `clock`) unless the returned handle disarms it first.
    pub(super) fn arm(&self, clock: Clock, at: Instant, events: EventFactory) -> Armed {
        let mut st = self.0.state.lock();
        let key = Key {
            at,
            seq: st.next_seq,
        };
        st.next_seq += 1;
        let earliest = st.armed.first_key_value().is_none_or(|(k, _)| key < *k);
        st.armed.insert(key, events);
        if !st.running {
            st.running = true;
            tokio::spawn(serve(self.0.clone(), clock));
        } else if earliest {
            self.0.earlier.notify_one();
        }
        Armed {
            queue: Arc::downgrade(&self.0),
            key,
        }
    }

    /// Number of armed deadlines.
    pub(super) fn len(&self) -> usize {
        self.0.state.lock().armed.len()
    }
}

/// An armed deadline, kept in the connection's metadata.
#[derive(Clone)]
pub(super) struct Armed {
    queue: Weak<Shared>,
    key: Key,
}

impl std::fmt::Debug for Armed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Armed").field("at", &self.key.at).finish()
    }
}

impl Armed {
    /// Removes the deadline (nothing happens if it has fired already: the Close it started runs on).
    pub(super) fn disarm(&self) {
        if let Some(shared) = self.queue.upgrade() {
            shared.state.lock().armed.remove(&self.key);
        }
    }
}

/// Fires every passed deadline, then sleeps until the next one (or an earlier one is armed); ends
/// when nothing is armed.
async fn serve(shared: Arc<Shared>, clock: Clock) {
    loop {
        let next = {
            let mut st = shared.state.lock();
            let now = clock.instant();
            while let Some(entry) = st.armed.first_entry() {
                if entry.key().at > now {
                    break;
                }
                tokio::spawn(expire(entry.remove()));
            }
            match st.armed.first_key_value() {
                Some((k, _)) => k.at,
                None => {
                    st.running = false;
                    return;
                }
            }
        };
        tokio::select! {
            () = clock.sleep_until(next) => {}
            () = shared.earlier.notified() => {}
        }
    }
}

async fn expire(events: EventFactory) {
    let id = events.connection_id();
    tracing::debug!(element = ELEMENT, id = %id, "connection expired; closing");
    if let Err(e) = events.close().await {
        tracing::warn!(element = ELEMENT, id = %id, error = %e, "closing the expired connection failed");
    }
}
