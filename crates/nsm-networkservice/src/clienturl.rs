//! `clienturl`: fixes the next hop's URL.
//!
//! **Request** and **Close**: put [`ClientUrl`] (the URL given at construction) into the context for the
//! elements after it (`dial`, `filtermechanisms`), then continue. No state, no background events. The
//! server and client variants behave the same; both exist so chains read as in Go.

use async_trait::async_trait;
use nsm_api::url::NsmUrl;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::values::ClientUrl;
use nsm_core::{Ctx, NetworkServiceServer, Next, Result};

/// `clienturl` for server chains.
#[derive(Debug, Clone)]
pub struct ClientUrlServer {
    url: NsmUrl,
}

impl ClientUrlServer {
    /// Every call continues with `url` as the next hop.
    pub fn new(url: NsmUrl) -> Self {
        Self { url }
    }
}

/// `clienturl` for client chains.
#[derive(Debug, Clone)]
pub struct ClientUrlClient {
    url: NsmUrl,
}

impl ClientUrlClient {
    /// Every call continues with `url` as the next hop.
    pub fn new(url: NsmUrl) -> Self {
        Self { url }
    }
}

macro_rules! impl_clienturl {
    ($t:ty) => {
        #[async_trait]
        impl NetworkServiceServer for $t {
            async fn request(
                &self,
                ctx: &mut Ctx,
                request: NetworkServiceRequest,
                next: Next,
            ) -> Result<Connection> {
                ctx.insert(ClientUrl(self.url.clone()));
                next.request(ctx, request).await
            }

            async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
                ctx.insert(ClientUrl(self.url.clone()));
                next.close(ctx, conn).await
            }

            fn name(&self) -> &'static str {
                "clienturl"
            }
        }
    };
}

impl_clienturl!(ClientUrlServer);
impl_clienturl!(ClientUrlClient);

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_core::{Chain, Clock};
    use std::sync::Arc;

    struct SeeUrl(Arc<parking_lot::Mutex<Vec<Option<ClientUrl>>>>);

    #[async_trait]
    impl NetworkServiceServer for SeeUrl {
        async fn request(
            &self,
            ctx: &mut Ctx,
            r: NetworkServiceRequest,
            next: Next,
        ) -> Result<Connection> {
            self.0.lock().push(ctx.get::<ClientUrl>().cloned());
            next.request(ctx, r).await
        }
        async fn close(&self, ctx: &mut Ctx, c: Connection, next: Next) -> Result<()> {
            self.0.lock().push(ctx.get::<ClientUrl>().cloned());
            next.close(ctx, c).await
        }
        fn name(&self) -> &'static str {
            "see"
        }
    }

    #[tokio::test]
    async fn later_elements_see_the_url_on_request_and_close() {
        let url = NsmUrl::parse("tcp://10.0.0.1:5001").unwrap();
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        for first in [
            Arc::new(ClientUrlServer::new(url.clone())) as nsm_core::chain::Element,
            Arc::new(ClientUrlClient::new(url.clone())),
        ] {
            let chain = Chain::new("t", vec![first, Arc::new(SeeUrl(seen.clone()))]);
            let mut ctx = Ctx::new(Clock::system());
            let conn = chain
                .run_request(&mut ctx, NetworkServiceRequest::default())
                .await
                .unwrap();
            chain
                .run_close(&mut Ctx::new(Clock::system()), conn)
                .await
                .unwrap();
        }
        assert_eq!(*seen.lock(), vec![Some(ClientUrl(url)); 4]);
    }
}
