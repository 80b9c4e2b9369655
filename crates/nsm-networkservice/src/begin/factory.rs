//! The per-connection slot map shared by the server and client variants, and the event handle.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use nsm_api::{Connection, Mechanism, NetworkServiceRequest};
use nsm_core::values::FromEvent;
use nsm_core::{Ctx, Next, NsmError, Result};
use parking_lot::Mutex;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::encoded::Encoded;

pub(super) const ELEMENT: &str = "begin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    New,
    Established,
    Closed,
}

pub(super) struct SlotState {
    pub(super) status: Status,
    /// Last successful request, its connection replaced by the one returned (encoded: see
    /// [`Encoded`]).
    pub(super) request: Option<Encoded<NetworkServiceRequest>>,
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
    id: String,
    pub(super) state: tokio::sync::Mutex<SlotState>,
    owner: Weak<SlotMap>,
}

impl Slot {
    /// Forgets this connection (only if the map still holds this very slot).
    pub(super) fn forget(self: &Arc<Self>) {
        if let Some(map) = self.owner.upgrade() {
            let mut m = map.slots.lock();
            if m.get(&self.id).is_some_and(|s| Arc::ptr_eq(s, self)) {
                m.remove(&self.id);
            }
        }
    }

    /// True if the map now holds a different slot for this id (a new connection reused the id).
    pub(super) fn is_superseded(self: &Arc<Self>) -> bool {
        self.owner.upgrade().is_some_and(|map| {
            map.slots
                .lock()
                .get(&self.id)
                .is_some_and(|s| !Arc::ptr_eq(s, self))
        })
    }

    /// True while the map still holds this slot for its id.
    pub(super) fn is_current(self: &Arc<Self>) -> bool {
        self.owner.upgrade().is_some_and(|map| {
            map.slots
                .lock()
                .get(&self.id)
                .is_some_and(|s| Arc::ptr_eq(s, self))
        })
    }
}

/// All live connections of one begin element.
#[derive(Default)]
pub(super) struct SlotMap {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl SlotMap {
    pub(super) fn load_or_create(self: &Arc<Self>, id: &str) -> Arc<Slot> {
        self.slots
            .lock()
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(Slot {
                    id: id.to_string(),
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
            let mut request = stored.decode(ELEMENT)?;
            let before = request.connection.clone();
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
            let conn = next.request(&mut ctx, request).await?;
            st.request = Some(stored_request(&conn, preferences));
            // The caller still holds what it was returned last: keep that apart from now on.
            if st.returned.is_none() {
                st.returned = before.as_ref().map(Encoded::new);
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
            let request = stored.decode(ELEMENT)?;
            // After a Close that failed, the connection may still exist downstream: let the event retry
            // it (Go's timeout relies on this), unless the id now belongs to a new connection.
            let retry_failed_close =
                st.status == Status::Closed && st.close_failed && !this.slot.is_superseded();
            if st.status != Status::Established && !retry_failed_close {
                return Ok(());
            }
            let mut ctx = this.event_ctx(&stored_ctx);
            let r = next
                .close(&mut ctx, request.connection.unwrap_or_default())
                .await;
            st.status = Status::Closed;
            st.close_failed = r.is_err();
            this.slot.forget();
            r
        };
        run_detached(work).await
    }
}

/// The request to keep: `preferences` with `conn` as its connection, encoded without copying `conn`.
fn stored_request(
    conn: &Connection,
    preferences: Vec<Mechanism>,
) -> Encoded<NetworkServiceRequest> {
    let mut bytes = NetworkServiceRequest {
        connection: None,
        mechanism_preferences: preferences,
    }
    .encode_to_vec();
    // Field 1 of NetworkServiceRequest is `connection`; fields may come in any order on the wire.
    prost::encoding::message::encode(1, conn, &mut bytes);
    Encoded::from_encoding(bytes)
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
                let stored = stored.decode(ELEMENT)?.connection;
                let returned = st
                    .returned
                    .as_ref()
                    .map(|r| r.decode(ELEMENT))
                    .transpose()?;
                request.connection = Some(super::merge::merge_connection(
                    returned.as_ref().or(stored.as_ref()),
                    stored.as_ref(),
                    requested,
                ));
            }
            let stored_ctx = ctx.clone();
            ctx.insert(EventFactory { slot: slot.clone() });
            // Only the preferences are kept from the request: its connection is replaced by the
            // answer, so the (large) connection is not copied on the way down.
            let preferences = request.mechanism_preferences.clone();
            let result = next.clone().request(ctx, request).await;
            ctx.remove::<EventFactory>();
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
                    st.request = Some(stored_request(conn, preferences));
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
            .and_then(|r| r.decode(ELEMENT).ok())
            .and_then(|r| r.connection)
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
