//! A gRPC server that can be stopped and restarted on the same URL.

use std::any::Any;
use std::sync::Arc;

use nsm_api::url::NsmUrl;
use nsm_core::NsmError;
use nsm_networkservice::grpc::{Serving, serve};
use tokio::sync::Mutex;
use tonic::service::Routes;

/// What a factory builds: the routes to serve and whatever must stay alive while they are served.
pub type Built = (Routes, Box<dyn Any + Send + Sync>);

type Factory = Arc<dyn Fn(NsmUrl) -> Built + Send + Sync>;

struct Running {
    serving: Serving,
    _keep: Box<dyn Any + Send + Sync>,
}

/// A restartable server.
pub struct Restartable {
    name: String,
    url: NsmUrl,
    factory: Factory,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for Restartable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.name, self.url)
    }
}

impl Restartable {
    /// Binds `bind` (port 0 allowed) and serves what `factory` builds for the final URL.
    pub async fn start(
        name: impl Into<String>,
        bind: NsmUrl,
        factory: impl Fn(NsmUrl) -> Built + Send + Sync + 'static,
    ) -> Result<Self, NsmError> {
        let factory: Factory = Arc::new(factory);
        // Bind first so the factory sees the real port (components register their own URL).
        let probe = serve(
            &bind,
            tonic::transport::Server::builder().add_routes(Routes::default()),
        )
        .await?;
        let url = probe.url().clone();
        probe.stop().await?;
        let me = Self {
            name: name.into(),
            url,
            factory,
            running: Mutex::new(None),
        };
        me.restart().await?;
        Ok(me)
    }

    /// The URL clients dial.
    pub fn url(&self) -> &NsmUrl {
        &self.url
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the server as if its process died: open connections and streams are cut, and the
    /// component is dropped (its background tasks stop).
    pub async fn stop(&self) {
        if let Some(r) = self.running.lock().await.take() {
            let _ = r.serving.stop().await;
        }
    }

    /// True while serving.
    pub async fn is_running(&self) -> bool {
        self.running.lock().await.is_some()
    }

    /// Builds a fresh component and serves it on the same URL (stopping the old one first).
    pub async fn restart(&self) -> Result<(), NsmError> {
        self.stop().await;
        let (routes, keep) = (self.factory)(self.url.clone());
        let health = nsm_api::health::health_service(&nsm_api::services::ALL).await;
        let router = tonic::transport::Server::builder()
            .add_routes(routes)
            .add_service(health);
        let serving = serve(&self.url, router).await?;
        *self.running.lock().await = Some(Running {
            serving,
            _keep: keep,
        });
        Ok(())
    }
}
