//! The per-connection slot map shared by the server and client variants, and the event handle.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use nsm_api::{Connection, Mechanism, NetworkServiceRequest};
use nsm_core::values::{FromEvent, IncomingToken};
use nsm_core::{Ctx, Next, NsmError, Result};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::encoded::{Encoded, RecordedConnection};

pub(super) const ELEMENT: &str = "begin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    New,
    Established,
    Closed,
}

/// The last successful request, its connection replaced by the one returned (encoded: see
/// [`Encoded`]).
pub(super) struct StoredRequest {
    /// The connection returned — the same allocation as the `monitor` hub's record of it when that
    /// encodes alike (see [`crate::encoded`]).
    connection: Encoded<Connection>,
    /// The request's mechanism preferences (a request without connection).
    preferences: Encoded<NetworkServiceRequest>,
}

impl StoredRequest {
    /// Keeps `conn` (sharing `recorded`'s bytes when they are `conn`'s) and `preferences`.
    fn new(
        conn: &Connection,
        preferences: Vec<Mechanism>,
        recorded: Option<RecordedConnection>,
    ) -> Self {
        Self {
            connection: Encoded::new_or_shared(conn, recorded.map(|r| r.0)),
            preferences: Encoded::new(&NetworkServiceRequest {
                connection: None,
                mechanism_preferences: preferences,
            }),
        }
    }

    /// The stored request, decoded.
    pub(super) fn decode(&self) -> Result<NetworkServiceRequest> {
        let mut request = self.preferences.decode(ELEMENT)?;
        request.connection = Some(self.connection.decode(ELEMENT)?);
        Ok(request)
    }

    /// The stored connection, decoded.
    pub(super) fn connection(&self) -> Result<Connection> {
        self.connection.decode(ELEMENT)
    }
}

pub(super) struct SlotState {
    pub(super) status: Status,
    /// Last successful request.
    pub(super) request: Option<StoredRequest>,
    /// The connection last returned to the caller, when an event has changed the stored one since
    /// (`None`: it is `request.connection`): what a re-request's changes are judged against. Kept
    /// apart only then, so an established connection is stored once.
    pub(super) returned: Option<Encoded<Connection>>,
    /// The rest of the chain after begin, and the context of the last call, for events.
    pub(super) next: Option<Next>,
    pub(super) ctx: Option<Ctx>,
    /// The last Close through the chain failed: the connection may still exist downstream, so an event
    /// Close (timeout's fallback) may still try to close it.
    pub(super) close_failed: bool,
}

pub(super) struct Slot {
    /// The connection id (the same allocation as the slot map's key).
    id: Arc<str>,
    pub(super) state: tokio::sync::Mutex<SlotState>,
    owner: Weak<SlotMap>,
}

impl Slot {
    /// Forgets this connection (only if the map still holds this very slot).
    pub(super) fn forget(self: &Arc<Self>) {
        if let Some(map) = self.owner.upgrade() {
            let mut m = map.slots.lock();
            if m.get(&*self.id).is_some_and(|s| Arc::ptr_eq(s, self)) {
                m.remove(&*self.id);
            }
        }
    }

    /// True if the map now holds a different slot for this id (a new connection reused the id).
    pub(super) fn is_superseded(self: &Arc<Self>) -> bool {
        self.owner.upgrade().is_some_and(|map| {
            map.slots
                .lock()
                .get(&*self.id)
                .is_some_and(|s| !Arc::ptr_eq(s, self))
        })
    }

    /// True while the map still holds this slot for its id.
    pub(super) fn is_current(self: &Arc<Self>) -> bool {
        self.owner.upgrade().is_some_and(|map| {
            map.slots
                .lock()
                .get(&*self.id)
                .is_some_and(|s| Arc::ptr_eq(s, self))
        })
    }
}

/// All live connections of one begin element.
#[derive(Default)]
pub(super) struct SlotMap {
    slots: Mutex<HashMap<Arc<str>, Arc<Slot>>>,
}

impl SlotMap {
    pub(super) fn load_or_create(self: &Arc<Self>, id: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get(id) {
            return slot.clone();
        }
        let id: Arc<str> = id.into();
        slots
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    id,
                    state: tokio::sync::Mutex::new(SlotState {
                        status: Status::New,
                        request: None,
                        returned: None,
                        next: None,
                        ctx: None,
                        close_failed: false,
                    }),
                    owner: Arc::downgrade(self),
                })
            })
            .clone()
    }

    pub(super) fn load(&self, id: &str) -> Option<Arc<Slot>> {
        self.slots.lock().get(id).cloned()
    }

    pub(super) fn len(&self) -> usize {
        self.slots.lock().len()
    }
}

/// Options of an event re-request.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// Close the old connection first and clear the mechanism and endpoint name, so every hop selects
    /// again (heal).
    pub reselect: bool,
    /// Skip the event if this token is cancelled by the time it would run.
    pub cancel: Option<CancellationToken>,
}

/// Re-runs Request or Close of one connection from `begin`'s position in the chain.
///
/// Each call runs on its own task, serialised with every other call for the connection, and is not
/// cancelled if the caller stops waiting — so an element may call it from a timer task that the very
/// Close it triggers will abort.
#[derive(Clone)]
pub struct EventFactory {
    pub(super) slot: Arc<Slot>,
}

impl std::fmt::Debug for EventFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventFactory({})", self.slot.id)
    }
}

impl EventFactory {
    /// The connection id this handle acts on.
    pub fn connection_id(&self) -> &str {
        &self.slot.id
    }

    fn event_ctx(&self, stored: &Ctx) -> Ctx {
        let mut ctx = stored.postpone();
        ctx.insert(self.clone());
        ctx.insert(FromEvent);
        ctx
    }

    /// Re-requests the stored connection. Does nothing if the connection is not established.
    pub async fn request(&self, opts: RequestOptions) -> Result<Option<Connection>> {
        let this = self.clone();
        let work = async move {
            let mut st = this.slot.state.lock().await;
            if st.status != Status::Established
                || opts.cancel.as_ref().is_some_and(|c| c.is_cancelled())
            {
                return Ok(None);
            }
            let (Some(stored), Some(next), Some(stored_ctx)) =
                (st.request.as_ref(), st.next.clone(), st.ctx.clone())
            else {
                return Ok(None);
            };
            let mut request = stored.decode()?;
            let before = stored.connection.clone();
            if opts.reselect {
                let mut ctx = this.event_ctx(&stored_ctx);
                let old = request.connection.clone().unwrap_or_default();
                if let Err(e) = next.clone().close(&mut ctx, old).await {
                    tracing::debug!(id = %this.slot.id, error = %e, "reselect: closing the old connection failed");
                }
                if let Some(c) = request.connection.as_mut() {
                    c.mechanism = None;
                    c.network_service_endpoint_name.clear();
                }
            }
            let mut ctx = this.event_ctx(&stored_ctx);
            let preferences = request.mechanism_preferences.clone();
            let result = next.request(&mut ctx, request).await;
            let recorded = ctx.remove::<RecordedConnection>();
            let conn = result?;
            st.request = Some(StoredRequest::new(&conn, preferences, recorded));
            // The caller still holds what it was returned last: keep that apart from now on.
            if st.returned.is_none() {
                st.returned = Some(before);
            }
            Ok(Some(conn))
        };
        run_detached(work).await
    }

    /// Closes the stored connection through the rest of the chain and forgets it.
    pub async fn close(&self) -> Result<()> {
        let this = self.clone();
        let work = async move {
            let mut st = this.slot.state.lock().await;
            let (Some(stored), Some(next), Some(stored_ctx)) =
                (st.request.as_ref(), st.next.clone(), st.ctx.clone())
            else {
                return Ok(());
            };
            let connection = stored.connection()?;
            // After a Close that failed, the connection may still exist downstream: let the event retry
            // it (Go's timeout relies on this), unless the id now belongs to a new connection.
            let retry_failed_close =
                st.status == Status::Closed && st.close_failed && !this.slot.is_superseded();
            if st.status != Status::Established && !retry_failed_close {
                return Ok(());
            }
            let mut ctx = this.event_ctx(&stored_ctx);
            let r = next.close(&mut ctx, connection).await;
            st.status = Status::Closed;
            st.close_failed = r.is_err();
            this.slot.forget();
            r
        };
        run_detached(work).await
    }
}

async fn run_detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| NsmError::internal(ELEMENT, format!("event task failed: {e}")))?
}

/// The shared Request/Close logic of both variants; `merge` selects the client's merge rule.
pub(super) struct Begin {
    pub(super) slots: Arc<SlotMap>,
    pub(super) merge: bool,
}

impl Begin {
    pub(super) fn new(merge: bool) -> Self {
        Self {
            slots: Arc::new(SlotMap::default()),
            merge,
        }
    }

    pub(super) async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        if ctx.get::<EventFactory>().is_some() {
            return next.request(ctx, request).await;
        }
        let id = request
            .connection
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default();
        if id.is_empty() {
            return Err(NsmError::invalid(
                ELEMENT,
                "connection id is empty (updatepath must run first)",
            ));
        }
        loop {
            let slot = self.slots.load_or_create(&id);
            let mut st = slot.state.lock().await;
            if !slot.is_current() {
                // Closed and forgotten while we waited: start over with a fresh slot.
                continue;
            }
            // Only take the requested connection out when there is a stored one to merge it with:
            // a first Request must go down the chain as it came.
            if self.merge
                && let Some(stored) = st.request.as_ref()
                && let Some(requested) = request.connection.take()
            {
                let stored = stored.connection()?;
                let returned = st
                    .returned
                    .as_ref()
                    .map(|r| r.decode(ELEMENT))
                    .transpose()?;
                request.connection = Some(super::merge::merge_connection(
                    Some(returned.as_ref().unwrap_or(&stored)),
                    Some(&stored),
                    requested,
                ));
            }
            let mut stored_ctx = ctx.clone();
            // The caller's per-RPC token belongs to its call. `updatetoken` writes it into the
            // previous segment of the connection kept below, which is all an event re-run needs of
            // it (without one, updatetoken leaves that segment as it is); a ~300-byte JWT less per
            // held connection.
            stored_ctx.remove::<IncomingToken>();
            ctx.insert(EventFactory { slot: slot.clone() });
            // Only the preferences are kept from the request: its connection is replaced by the
            // answer, so the (large) connection is not copied on the way down.
            let preferences = request.mechanism_preferences.clone();
            let result = next.clone().request(ctx, request).await;
            ctx.remove::<EventFactory>();
            let recorded = ctx.remove::<RecordedConnection>();
            if let Ok(conn) = &result
                && st.status != Status::Established
                && ctx.expired()
            {
                // The caller's deadline passed while the rest of the chain worked: nobody receives
                // this new connection (or will close it), so undo it now rather than keep it until
                // its timeout.
                let mut close_ctx = stored_ctx.postpone();
                close_ctx.insert(EventFactory { slot: slot.clone() });
                if let Err(e) = next.close(&mut close_ctx, conn.clone()).await {
                    tracing::debug!(id = %id, error = %e, "begin: closing a connection made too late failed");
                }
                st.status = Status::Closed;
                slot.forget();
                return Err(NsmError::deadline(
                    ELEMENT,
                    format!("connection {id} was made after the deadline passed; closed it again"),
                ));
            }
            match &result {
                Ok(conn) => {
                    st.request = Some(StoredRequest::new(conn, preferences, recorded));
                    st.returned = None;
                    st.next = Some(next);
                    st.ctx = Some(stored_ctx);
                    st.status = Status::Established;
                }
                Err(_) if st.status != Status::Established => {
                    st.status = Status::Closed;
                    slot.forget();
                }
                Err(_) => {}
            }
            return result;
        }
    }

    /// The stored connection of `id`, if established and not busy (tests of sharing).
    #[cfg(test)]
    pub(super) fn stored_connection(&self, id: &str) -> Option<Encoded<Connection>> {
        let slot = self.slots.load(id)?;
        let st = slot.state.try_lock().ok()?;
        st.request.as_ref().map(|r| r.connection.clone())
    }

    pub(super) async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        if ctx.get::<EventFactory>().is_some() {
            return next.close(ctx, conn).await;
        }
        let Some(slot) = self.slots.load(&conn.id) else {
            return Ok(());
        };
        let mut st = slot.state.lock().await;
        if st.status != Status::Established || !slot.is_current() {
            return Ok(());
        }
        let stored = st
            .request
            .as_ref()
            .and_then(|r| r.connection().ok())
            .unwrap_or(conn);
        ctx.insert(EventFactory { slot: slot.clone() });
        let result = next.close(ctx, stored).await;
        ctx.remove::<EventFactory>();
        st.status = Status::Closed;
        st.close_failed = result.is_err();
        slot.forget();
        result
    }
}
