//! `mechanismtranslation` (client, in forwarders): keeps the two sides of a forwarder's cross-connect
//! from seeing each other's mechanism.
//!
//! **Request**: sends the next hop a copy of the request with no mechanism preferences and, as its
//! mechanism, the one the next hop chose last time (none on the first Request); the client elements
//! after this one add their own preferences. The next hop's chosen mechanism is remembered, and the
//! connection handed back up has the incoming side's mechanism restored. **Close**: closes the next
//! hop with the remembered outgoing mechanism and forgets it.
//!
//! **State**: the outgoing mechanism in client-side metadata (missing metadata is an internal error).

use async_trait::async_trait;
use nsm_api::{Connection, Mechanism, NetworkServiceRequest};
use nsm_core::metadata::{ConnMetadata, Side};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};

const NAME: &str = "mechanismtranslation";

/// The mechanism the next hop selected, as stored in metadata.
#[derive(Debug, Clone)]
struct OutgoingMechanism(Option<Mechanism>);

/// Translates between the incoming and the outgoing mechanism of a forwarder.
#[derive(Debug, Default)]
pub struct MechanismTranslationClient;

impl MechanismTranslationClient {
    /// A new translator.
    pub fn new() -> Self {
        Self
    }
}

fn metadata(ctx: &Ctx) -> Result<std::sync::Arc<ConnMetadata>> {
    ctx.metadata()
        .cloned()
        .ok_or_else(|| NsmError::internal(NAME, "no connection metadata in context"))
}

#[async_trait]
impl NetworkServiceServer for MechanismTranslationClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let metadata = metadata(ctx)?;
        let incoming = request
            .connection
            .as_ref()
            .and_then(|c| c.mechanism.clone());
        let mut outgoing = request;
        outgoing.mechanism_preferences.clear();
        outgoing.connection.get_or_insert_default().mechanism = metadata
            .get::<OutgoingMechanism>(Side::Client)
            .and_then(|m| m.0);
        let mut conn = next.request(ctx, outgoing).await?;
        metadata.insert(Side::Client, OutgoingMechanism(conn.mechanism.clone()));
        conn.mechanism = incoming;
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, mut conn: Connection, next: Next) -> Result<()> {
        let metadata = metadata(ctx)?;
        conn.mechanism = metadata
            .remove::<OutgoingMechanism>(Side::Client)
            .and_then(|m| m.0);
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nsm_api::mechanisms::{MechanismType, vxlan};
    use tonic::Code;

    use super::*;
    use crate::discover::testing::{Probe, chain, ctx, request};

    /// Stands in for the next hop: selects VXLAN with a VNI when nothing is selected yet.
    struct SelectVxlan;

    #[async_trait]
    impl NetworkServiceServer for SelectVxlan {
        async fn request(
            &self,
            _: &mut Ctx,
            request: NetworkServiceRequest,
            _: Next,
        ) -> Result<Connection> {
            let mut conn = request.connection.unwrap_or_default();
            if conn.mechanism.is_none() {
                let mut m = MechanismType::Vxlan.mechanism();
                m.set_param(vxlan::VNI, "7");
                conn.mechanism = Some(m);
            }
            Ok(conn)
        }
        async fn close(&self, _: &mut Ctx, _: Connection, _: Next) -> Result<()> {
            Ok(())
        }
        fn name(&self) -> &'static str {
            "select-vxlan"
        }
    }

    #[tokio::test]
    async fn outgoing_side_keeps_its_own_mechanism() {
        let probe = Probe::ok();
        let c = chain(vec![
            Arc::new(MechanismTranslationClient::new()),
            probe.clone(),
            Arc::new(SelectVxlan),
        ]);
        let mut ctx = ctx();
        let mut req = request("1", "svc", &[]);
        req.connection.as_mut().unwrap().mechanism = Some(MechanismType::Kernel.mechanism());
        req.mechanism_preferences = vec![MechanismType::Kernel.mechanism()];

        let conn = c.run_request(&mut ctx, req.clone()).await.unwrap();
        let sent = probe.last().request;
        assert!(sent.mechanism_preferences.is_empty());
        assert!(
            sent.connection.unwrap().mechanism.is_none(),
            "first request"
        );
        assert_eq!(conn.mechanism.as_ref().unwrap().r#type, "KERNEL");

        // A refresh re-sends the outgoing side's previous mechanism, not the incoming one.
        c.run_request(&mut ctx, req).await.unwrap();
        let sent = probe.last().conn().mechanism.unwrap();
        assert_eq!((sent.r#type.as_str(), sent.vni()), ("VXLAN", Some(7)));

        c.run_close(&mut ctx, conn).await.unwrap();
        assert_eq!(probe.last().conn().mechanism.unwrap().r#type, "VXLAN");
    }

    #[tokio::test]
    async fn without_metadata_it_fails_clearly() {
        let c = chain(vec![Arc::new(MechanismTranslationClient::new())]);
        let mut ctx = nsm_core::Ctx::new(nsm_core::Clock::system());
        let err = c
            .run_request(&mut ctx, request("1", "svc", &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Internal);
        assert!(err.to_string().contains("mechanismtranslation"));
    }
}
