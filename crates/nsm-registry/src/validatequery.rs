//! `validatequery`: refuses Find queries that cannot mean what the caller intended (no Go counterpart).
//!
//! protobuf cannot tell us about fields the caller set that this build does not know (prost drops
//! unknown fields while decoding), so "a Find template with an unknown field" is checked as the
//! template's *content*: a name, URL or service name still holding an unexpanded template expression
//! (`{{` … `}}`, typically a Helm/Go template that was never rendered) or a control character, a label
//! key that is empty, or an `expiration_time` that is not a valid timestamp, is refused with
//! `InvalidArgument` naming the field. Register and Unregister pass through (`validate` checks those).

use std::marker::PhantomData;

use async_trait::async_trait;
use nsm_api::registry::{NetworkService, NetworkServiceEndpoint};
use nsm_core::clock::from_timestamp;
use nsm_core::registry::{FindStream, Query, RegistryItem, RegistryNext, RegistryServer};
use nsm_core::{Ctx, NsmError, Result};

const NAME: &str = "validatequery";

/// Checks a Find template's fields.
pub trait QueryCheck: RegistryItem {
    /// `Err(reason)` if the template is refused.
    fn check_template(&self) -> std::result::Result<(), String>;
}

fn check_text(field: &str, v: &str) -> std::result::Result<(), String> {
    if v.contains("{{") || v.contains("}}") {
        return Err(format!(
            "{field} {v:?} holds an unexpanded template expression"
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("{field} {v:?} holds a control character"));
    }
    Ok(())
}

impl QueryCheck for NetworkServiceEndpoint {
    fn check_template(&self) -> std::result::Result<(), String> {
        check_text("name", &self.name)?;
        check_text("url", &self.url)?;
        for s in &self.network_service_names {
            check_text("network_service_names", s)?;
        }
        for (svc, labels) in &self.network_service_labels {
            check_text("network_service_labels service", svc)?;
            for k in labels.labels.keys() {
                if k.is_empty() {
                    return Err(format!(
                        "network_service_labels[{svc:?}] has an empty label key"
                    ));
                }
                check_text("label key", k)?;
            }
        }
        if let Some(t) = &self.expiration_time
            && from_timestamp(t).is_none()
        {
            return Err(format!("expiration_time {t:?} is not a valid timestamp"));
        }
        Ok(())
    }
}

impl QueryCheck for NetworkService {
    fn check_template(&self) -> std::result::Result<(), String> {
        check_text("name", &self.name)?;
        check_text("payload", &self.payload)
    }
}

/// Refuses malformed Find templates.
#[derive(Debug, Clone)]
pub struct ValidateQueryServer<T> {
    _kind: PhantomData<fn() -> T>,
}

impl<T> Default for ValidateQueryServer<T> {
    fn default() -> Self {
        Self { _kind: PhantomData }
    }
}

impl<T: QueryCheck> ValidateQueryServer<T> {
    /// The element.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl<T: QueryCheck> RegistryServer<T> for ValidateQueryServer<T> {
    async fn register(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<T> {
        next.register(ctx, item).await
    }
    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<T>,
        next: RegistryNext<T>,
    ) -> Result<FindStream<T>> {
        if let Err(reason) = query.template.check_template() {
            return Err(NsmError::invalid(
                NAME,
                format!("{} Find template: {reason}", T::KIND),
            ));
        }
        next.find(ctx, query).await
    }
    async fn unregister(&self, ctx: &mut Ctx, item: T, next: RegistryNext<T>) -> Result<()> {
        next.unregister(ctx, item).await
    }
    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_core::Clock;
    use nsm_core::registry::RegistryChain;
    use std::sync::Arc;

    #[tokio::test]
    async fn template_expressions_and_bad_timestamps_are_refused() {
        let chain = RegistryChain::new(
            "t",
            vec![Arc::new(ValidateQueryServer::<NetworkServiceEndpoint>::new()) as _],
        );
        let mut ctx = Ctx::new(Clock::system());
        let ok = NetworkServiceEndpoint {
            name: "nse".into(),
            ..Default::default()
        };
        assert!(chain.find_all(&mut ctx, ok).await.is_ok());
        let bad = NetworkServiceEndpoint {
            name: "{{ .Values.name }}".into(),
            ..Default::default()
        };
        let err = chain.find_all(&mut ctx, bad).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("template expression"), "{err}");
        let bad = NetworkServiceEndpoint {
            expiration_time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: -5,
            }),
            ..Default::default()
        };
        assert!(chain.find_all(&mut ctx, bad).await.is_err());
    }
}
