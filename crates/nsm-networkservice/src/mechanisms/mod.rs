//! `mechanisms`: dispatches a Request or Close to the element that handles its mechanism type.
//!
//! **Request**: if the connection already has a mechanism (a refresh, or a peer that chose one), the
//! element registered for its type handles the call; an unknown type is an `InvalidArgument` that lists
//! the supported types. Otherwise each of `mechanism_preferences` is tried in order with a clone of the
//! request — the server variant also selects that preference as the connection's mechanism — and the
//! first success wins. When none is supported or every supported one failed, the error lists each
//! preference and why it was not used.
//!
//! **Close**: dispatches by the connection's mechanism type.
//!
//! **State**: none. The per-type elements call `next` themselves, so the rest of the chain runs inside
//! the chosen element. Submodules: [`kernel`] (KERNEL preferences and defaults), [`sendfd`] /
//! [`recvfd`] (files such as network namespaces passed as fds on unix sockets), [`vxlan`] (VXLAN
//! tunnel endpoints and VNI allocation), [`wireguard`] (WIREGUARD tunnel endpoints and keys, payload
//! `IP`) and [`mtu`] (the tunnel MTU arithmetic both remote mechanisms share).

pub mod kernel;
pub mod mtu;
pub mod recvfd;
pub mod sendfd;
pub mod vxlan;
pub mod wireguard;

use std::collections::BTreeMap;

use async_trait::async_trait;
use nsm_api::{Connection, Mechanism, NetworkServiceRequest};
use nsm_core::chain::Element;
use nsm_core::error::CandidateFailure;
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};

const NAME: &str = "mechanisms";

/// Server side: picks a mechanism from the preferences and selects it on the connection.
pub struct MechanismsServer {
    dispatch: Dispatch,
}

/// Client side: offers the preferences to the element of each type in turn (without selecting one; the
/// next hop selects).
pub struct MechanismsClient {
    dispatch: Dispatch,
}

impl MechanismsServer {
    /// Dispatches by mechanism type (`"KERNEL"`, `"VXLAN"`, …) to the element in `map`.
    pub fn new(map: BTreeMap<String, Element>) -> Self {
        Self {
            dispatch: Dispatch { map },
        }
    }
}

impl MechanismsClient {
    /// Dispatches by mechanism type (`"KERNEL"`, `"VXLAN"`, …) to the element in `map`.
    pub fn new(map: BTreeMap<String, Element>) -> Self {
        Self {
            dispatch: Dispatch { map },
        }
    }
}

#[async_trait]
impl NetworkServiceServer for MechanismsServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        self.dispatch.request(ctx, request, next, true).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        self.dispatch.close(ctx, conn, next).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[async_trait]
impl NetworkServiceServer for MechanismsClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        self.dispatch.request(ctx, request, next, false).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        self.dispatch.close(ctx, conn, next).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// The logic both variants share.
struct Dispatch {
    map: BTreeMap<String, Element>,
}

impl Dispatch {
    fn supported(&self) -> String {
        self.map.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    fn element_for(&self, mechanism: &Mechanism) -> Result<&Element> {
        self.map.get(&mechanism.r#type).ok_or_else(|| {
            NsmError::invalid(
                NAME,
                format!(
                    "mechanism {:?} not supported, supported: {}",
                    mechanism.r#type,
                    self.supported()
                ),
            )
        })
    }

    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
        select: bool,
    ) -> Result<Connection> {
        if let Some(m) = request
            .connection
            .as_ref()
            .and_then(|c| c.mechanism.as_ref())
        {
            let element = self.element_for(m)?.clone();
            return element.request(ctx, request, next).await;
        }
        if request.mechanism_preferences.is_empty() {
            return Err(NsmError::invalid(
                NAME,
                format!(
                    "no mechanism selected and no mechanism preferences offered (supported: {})",
                    self.supported()
                ),
            ));
        }
        let mut failures = Vec::new();
        for preference in &request.mechanism_preferences {
            let element = match self.element_for(preference) {
                Ok(e) => e.clone(),
                Err(e) => {
                    failures.push(failure(preference, e));
                    continue;
                }
            };
            let mut attempt = request.clone();
            if select {
                attempt.connection.get_or_insert_default().mechanism = Some(preference.clone());
            }
            match element.request(ctx, attempt, next.clone()).await {
                Ok(conn) => return Ok(conn),
                Err(e) => failures.push(failure(preference, e)),
            }
        }
        Err(NsmError::AllCandidatesFailed {
            element: NAME,
            what: "mechanism preferences".into(),
            candidates: failures,
        })
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        let Some(m) = conn.mechanism.as_ref() else {
            return Err(NsmError::invalid(
                NAME,
                format!(
                    "cannot close connection {:?}: it has no mechanism (supported: {})",
                    conn.id,
                    self.supported()
                ),
            ));
        };
        let element = self.element_for(m)?.clone();
        element.close(ctx, conn, next).await
    }
}

fn failure(preference: &Mechanism, error: NsmError) -> CandidateFailure {
    CandidateFailure {
        name: format!("{}/{}", preference.cls, preference.r#type),
        error: Box::new(error),
    }
}

#[cfg(test)]
mod tests;
