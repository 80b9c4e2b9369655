//! A message kept in its wire form, for per-connection state held as long as a connection lives.
//!
//! `begin` keeps the last request of every live connection and the `monitor` hub its connection, but
//! they read them only on rarer paths (Close, events, a re-request's merge, a passthrough update, a new
//! subscriber). Decoded, a connection is a ~550-byte struct plus one allocation per string and map
//! entry; encoded it is one allocation of about half the size, for one encode per store and one decode
//! per read.
//!
//! The bytes are shared ([`Arc`]): `begin` and the `monitor` after it hold the very same connection
//! on a hop, and with security on most of its bytes are the path's tokens (~300 bytes of ES256 JWT per
//! segment). `monitor` leaves what it recorded in the call's context ([`RecordedConnection`]) and
//! `begin` keeps that allocation when its own connection encodes to the same bytes
//! ([`Encoded::new_or_shared`]), so a held connection is kept once per hop, not twice.

use std::marker::PhantomData;
use std::sync::Arc;

use nsm_api::Connection;
use nsm_core::{NsmError, Result};

/// `T` encoded.
pub(crate) struct Encoded<T> {
    bytes: Arc<[u8]>,
    _kind: PhantomData<fn() -> T>,
}

impl<T> Clone for Encoded<T> {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            _kind: PhantomData,
        }
    }
}

impl<T: prost::Message + Default> Encoded<T> {
    pub(crate) fn new(msg: &T) -> Self {
        Self::from_encoding(msg.encode_to_vec())
    }

    /// `msg` encoded, sharing `candidate`'s bytes if they are exactly `msg`'s encoding.
    pub(crate) fn new_or_shared(msg: &T, candidate: Option<Self>) -> Self {
        let bytes = msg.encode_to_vec();
        match candidate {
            Some(c) if *c.bytes == *bytes => c,
            _ => Self::from_encoding(bytes),
        }
    }

    /// Wraps bytes that are an encoding of a `T` (what `decode` will read back).
    pub(crate) fn from_encoding(bytes: Vec<u8>) -> Self {
        Self {
            bytes: bytes.into(),
            _kind: PhantomData,
        }
    }

    /// The message back, or an internal error naming `element`. (Only bytes `new` produced are ever
    /// decoded, so this fails only on a bug.)
    pub(crate) fn decode(&self, element: &'static str) -> Result<T> {
        T::decode(&*self.bytes)
            .map_err(|e| NsmError::internal(element, format!("stored state does not decode: {e}")))
    }

    /// True if both hold the same allocation (tests of sharing).
    #[cfg(test)]
    pub(crate) fn shares(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.bytes, &other.bytes)
    }
}

/// What a `monitor` element recorded for the connection it just published as UPDATE, left in the
/// call's context on the way back for the `begin` before it (see the module docs).
#[derive(Clone)]
pub(crate) struct RecordedConnection(pub(crate) Encoded<Connection>);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use nsm_api::NetworkServiceRequest;
    use nsm_core::{Chain, Clock, Ctx, NetworkServiceServer, Next};

    use super::*;
    use crate::begin::BeginServer;
    use crate::grpc::testing::{FakeMetadata, FakeUpdatePath, Tail, request};
    use crate::monitor::MonitorServer;

    /// Changes the connection on its way back (between `monitor` and `begin`).
    struct Relabel;

    #[async_trait]
    impl NetworkServiceServer for Relabel {
        async fn request(
            &self,
            ctx: &mut Ctx,
            r: NetworkServiceRequest,
            next: Next,
        ) -> nsm_core::Result<Connection> {
            let mut conn = next.request(ctx, r).await?;
            conn.labels.insert("seen-by".into(), "relabel".into());
            Ok(conn)
        }
        async fn close(&self, ctx: &mut Ctx, c: Connection, next: Next) -> nsm_core::Result<()> {
            next.close(ctx, c).await
        }
        fn name(&self) -> &'static str {
            "relabel"
        }
    }

    /// `updatepath → begin → [relabel] → metadata → monitor → tail`.
    fn hop(relabel: bool) -> (Chain, Arc<BeginServer>, Arc<MonitorServer>) {
        let begin = Arc::new(BeginServer::new());
        let monitor = Arc::new(MonitorServer::new());
        let mut elements: Vec<nsm_core::chain::Element> =
            vec![Arc::new(FakeUpdatePath("nsmgr")), begin.clone()];
        if relabel {
            elements.push(Arc::new(Relabel));
        }
        elements.push(Arc::new(FakeMetadata::default()));
        elements.push(monitor.clone());
        elements.push(Arc::new(Tail::default()));
        (Chain::new("hop", elements), begin, monitor)
    }

    #[tokio::test]
    async fn begin_keeps_the_monitors_record_of_the_same_connection() {
        let (chain, begin, monitor) = hop(false);
        let conn = chain
            .run_request(&mut Ctx::new(Clock::system()), request("c1"))
            .await
            .unwrap();
        let kept = begin.stored_connection(&conn.id).unwrap();
        let recorded = monitor.recorded(&conn.id).unwrap();
        assert!(kept.shares(&recorded), "one copy of the held connection");
        assert_eq!(kept.decode("test").unwrap(), conn);
        // Close still closes the stored connection and both forget it.
        chain
            .run_close(&mut Ctx::new(Clock::system()), conn.clone())
            .await
            .unwrap();
        assert!(begin.stored_connection(&conn.id).is_none());
        assert!(monitor.recorded(&conn.id).is_none());
    }

    #[tokio::test]
    async fn begin_keeps_its_own_copy_when_the_connection_changed_after_monitor() {
        let (chain, begin, monitor) = hop(true);
        let conn = chain
            .run_request(&mut Ctx::new(Clock::system()), request("c1"))
            .await
            .unwrap();
        let kept = begin.stored_connection(&conn.id).unwrap();
        let recorded = monitor.recorded(&conn.id).unwrap();
        assert!(!kept.shares(&recorded));
        assert_eq!(kept.decode("test").unwrap(), conn);
        assert!(
            !recorded
                .decode("test")
                .unwrap()
                .labels
                .contains_key("seen-by")
        );
    }

    fn conn(id: &str) -> Connection {
        Connection {
            id: id.into(),
            network_service: "ns".into(),
            ..Default::default()
        }
    }

    #[test]
    fn shares_only_identical_bytes() {
        let recorded = Encoded::new(&conn("a"));
        let same = Encoded::new_or_shared(&conn("a"), Some(recorded.clone()));
        assert!(same.shares(&recorded));
        let other = Encoded::new_or_shared(&conn("b"), Some(recorded.clone()));
        assert!(!other.shares(&recorded));
        assert_eq!(other.decode("test").unwrap(), conn("b"));
        assert_eq!(same.decode("test").unwrap(), conn("a"));
    }
}
