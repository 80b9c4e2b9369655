//! `localbypass` (endpoints, NSMgr): local endpoints are reached through this NSMgr, not directly
//! (Go `registry/common/localbypass`).
//!
//! - Register: remembers the endpoint's real URL (the first one seen for its name; it must be a valid
//!   URL), sends the registration on with the NSMgr's public URL instead, and gives the real URL back in
//!   the response — so the local `memory` before it keeps the real URL while the upstream registry
//!   records the NSMgr's.
//! - Find: results for endpoints it knows get their real URL back; any other non-deleted result whose
//!   URL is the NSMgr's own is dropped (it is a local endpoint this NSMgr no longer knows).
//! - Unregister: for a known name, sends it on with the NSMgr's URL and forgets the name; unknown names
//!   succeed without going further.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use nsm_api::registry::NetworkServiceEndpoint;
use nsm_api::url::NsmUrl;
use nsm_core::registry::{FindStream, Query, RegistryNext, RegistryServer};
use nsm_core::{Ctx, NsmError, Result};
use parking_lot::Mutex;

const NAME: &str = "localbypass";

/// Rewrites endpoint URLs between local and upstream registries.
#[derive(Debug)]
pub struct LocalBypassServer {
    nsmgr_url: String,
    real_urls: Arc<Mutex<HashMap<String, String>>>,
}

impl LocalBypassServer {
    /// `nsmgr_public_url` is the URL other nodes reach this NSMgr at.
    pub fn new(nsmgr_public_url: String) -> Self {
        Self {
            nsmgr_url: nsmgr_public_url,
            real_urls: Arc::default(),
        }
    }

    /// The real URL remembered for `name`.
    pub fn real_url(&self, name: &str) -> Option<String> {
        self.real_urls.lock().get(name).cloned()
    }
}

#[async_trait]
impl RegistryServer<NetworkServiceEndpoint> for LocalBypassServer {
    async fn register(
        &self,
        ctx: &mut Ctx,
        mut nse: NetworkServiceEndpoint,
        next: RegistryNext<NetworkServiceEndpoint>,
    ) -> Result<NetworkServiceEndpoint> {
        let known = self.real_url(&nse.name);
        let real = match &known {
            Some(u) => u.clone(),
            None => {
                NsmUrl::parse(&nse.url).map_err(|e| {
                    NsmError::invalid(
                        NAME,
                        format!("endpoint {:?} url {:?}: {e}", nse.name, nse.url),
                    )
                })?;
                self.real_urls
                    .lock()
                    .insert(nse.name.clone(), nse.url.clone());
                nse.url.clone()
            }
        };
        let name = nse.name.clone();
        nse.url.clone_from(&self.nsmgr_url);
        match next.register(ctx, nse).await {
            Ok(mut reg) => {
                reg.url.clone_from(&real);
                self.real_urls.lock().insert(reg.name.clone(), real);
                Ok(reg)
            }
            Err(e) => {
                if known.is_none() {
                    self.real_urls.lock().remove(&name);
                }
                Err(e)
            }
        }
    }

    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<NetworkServiceEndpoint>,
        next: RegistryNext<NetworkServiceEndpoint>,
    ) -> Result<FindStream<NetworkServiceEndpoint>> {
        let real_urls = self.real_urls.clone();
        let nsmgr_url = self.nsmgr_url.clone();
        let found = next.find(ctx, query).await?;
        Ok(found
            .filter_map(move |r| {
                let r = r.map(|mut f| {
                    if let Some(u) = real_urls.lock().get(&f.item.name) {
                        f.item.url.clone_from(u);
                    }
                    f
                });
                let keep = match &r {
                    Ok(f) => f.deleted || f.item.url != nsmgr_url,
                    Err(_) => true,
                };
                futures::future::ready(keep.then_some(r))
            })
            .boxed())
    }

    async fn unregister(
        &self,
        ctx: &mut Ctx,
        mut nse: NetworkServiceEndpoint,
        next: RegistryNext<NetworkServiceEndpoint>,
    ) -> Result<()> {
        if self.real_url(&nse.name).is_none() {
            return Ok(());
        }
        let name = nse.name.clone();
        nse.url.clone_from(&self.nsmgr_url);
        let result = next.unregister(ctx, nse).await;
        self.real_urls.lock().remove(&name);
        result
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryServer;
    use nsm_core::Clock;
    use nsm_core::registry::{RegistryChain, collect_found};

    const NSMGR: &str = "tcp://nsmgr:5001";

    #[tokio::test]
    async fn local_store_keeps_real_url_and_upstream_gets_nsmgr_url() {
        let upstream = Arc::new(MemoryServer::<NetworkServiceEndpoint>::new());
        let local = Arc::new(MemoryServer::<NetworkServiceEndpoint>::new());
        let bypass = Arc::new(LocalBypassServer::new(NSMGR.into()));
        let chain = RegistryChain::new("t", vec![local.clone(), bypass, upstream.clone()]);
        let mut ctx = Ctx::new(Clock::system());
        let nse = NetworkServiceEndpoint {
            name: "nse-1".into(),
            url: "unix:///run/nse.sock".into(),
            ..Default::default()
        };
        let reg = chain.run_register(&mut ctx, nse.clone()).await.unwrap();
        assert_eq!(reg.url, "unix:///run/nse.sock");
        assert_eq!(local.get("nse-1").unwrap().url, "unix:///run/nse.sock");
        assert_eq!(upstream.get("nse-1").unwrap().url, NSMGR);

        // A Find answered upstream shows the real URL; a stranger with the NSMgr URL is dropped.
        let stranger = NetworkServiceEndpoint {
            name: "gone".into(),
            url: NSMGR.into(),
            ..Default::default()
        };
        let only_upstream = RegistryChain::new(
            "u",
            vec![
                Arc::new(LocalBypassServer::new(NSMGR.into())) as _,
                upstream.clone(),
            ],
        );
        only_upstream
            .run_register(&mut ctx, stranger)
            .await
            .unwrap();
        let found = collect_found(chain.run_find(&mut ctx, Query::default()).await.unwrap())
            .await
            .unwrap();
        let urls: Vec<_> = found.iter().map(|f| f.item.url.as_str()).collect();
        assert_eq!(
            urls,
            ["unix:///run/nse.sock", "unix:///run/nse.sock"],
            "local, then upstream rewritten"
        );

        chain.run_unregister(&mut ctx, nse).await.unwrap();
        assert!(upstream.get("nse-1").is_none());
        assert!(local.get("nse-1").is_none());
    }

    #[tokio::test]
    async fn bad_url_is_refused_naming_the_element() {
        let chain = RegistryChain::new(
            "t",
            vec![Arc::new(LocalBypassServer::new(NSMGR.into())) as _],
        );
        let mut ctx = Ctx::new(Clock::system());
        let err = chain
            .run_register(
                &mut ctx,
                NetworkServiceEndpoint {
                    name: "x".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().starts_with("localbypass:"), "{err}");
    }
}
