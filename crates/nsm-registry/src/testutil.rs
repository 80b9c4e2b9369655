//! Test helpers: a recording fake `next` element.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nsm_api::registry::NetworkServiceEndpoint;
use nsm_api::url::NsmUrl;
use nsm_core::registry::{FindStream, Query, RegistryItem, RegistryNext, RegistryServer};
use nsm_core::values::ClientUrl;
use nsm_core::{Ctx, NsmError, Result};
use parking_lot::Mutex;

pub fn nse(name: &str) -> NetworkServiceEndpoint {
    NetworkServiceEndpoint {
        name: name.into(),
        url: format!("tcp://{name}:5001").replace('@', "-"),
        ..Default::default()
    }
}

#[derive(Default)]
struct ProbeState {
    calls: Vec<String>,
    registered: Vec<(String, Option<prost_types::Timestamp>)>,
    client_url: Option<NsmUrl>,
    in_flight: HashMap<String, usize>,
    total_in_flight: usize,
    max_per_name: usize,
    max_total: usize,
    fail_next: usize,
}

/// Records calls; optionally slow or failing.
pub struct Probe {
    delay: Duration,
    state: Mutex<ProbeState>,
}

impl Probe {
    pub fn new() -> Arc<Self> {
        Self::slow(Duration::ZERO)
    }
    pub fn slow(delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            delay,
            state: Mutex::default(),
        })
    }
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().calls.clone()
    }
    pub fn registered(&self) -> Vec<(String, Option<prost_types::Timestamp>)> {
        self.state.lock().registered.clone()
    }
    pub fn last_client_url(&self) -> Option<NsmUrl> {
        self.state.lock().client_url.clone()
    }
    pub fn max_concurrent_per_name(&self) -> usize {
        self.state.lock().max_per_name
    }
    pub fn max_concurrent(&self) -> usize {
        self.state.lock().max_total
    }
    /// Makes the next `n` Register/Unregister calls fail with Unavailable.
    pub fn fail_next(&self, n: usize) {
        self.state.lock().fail_next = n;
    }

    async fn enter(&self, ctx: &Ctx, call: String, name: &str) -> Result<()> {
        {
            let mut s = self.state.lock();
            s.calls.push(call);
            s.client_url = ctx.get::<ClientUrl>().map(|u| u.0.clone());
            let n = s.in_flight.entry(name.to_string()).or_default();
            *n += 1;
            let n = *n;
            s.total_in_flight += 1;
            s.max_per_name = s.max_per_name.max(n);
            s.max_total = s.max_total.max(s.total_in_flight);
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let mut s = self.state.lock();
        if let Some(n) = s.in_flight.get_mut(name) {
            *n -= 1;
        }
        s.total_in_flight -= 1;
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return Err(NsmError::unavailable("probe", "injected failure"));
        }
        Ok(())
    }
}

#[async_trait]
impl RegistryServer<NetworkServiceEndpoint> for Probe {
    async fn register(
        &self,
        ctx: &mut Ctx,
        item: NetworkServiceEndpoint,
        next: RegistryNext<NetworkServiceEndpoint>,
    ) -> Result<NetworkServiceEndpoint> {
        self.enter(ctx, format!("register {}", item.name), &item.name)
            .await?;
        self.state
            .lock()
            .registered
            .push((item.name.clone(), item.expiration_time));
        next.register(ctx, item).await
    }
    async fn find(
        &self,
        ctx: &mut Ctx,
        query: Query<NetworkServiceEndpoint>,
        next: RegistryNext<NetworkServiceEndpoint>,
    ) -> Result<FindStream<NetworkServiceEndpoint>> {
        self.state.lock().calls.push(format!(
            "find {}{}",
            query.template.name(),
            if query.watch { " watch" } else { "" }
        ));
        self.state.lock().client_url = ctx.get::<ClientUrl>().map(|u| u.0.clone());
        next.find(ctx, query).await
    }
    async fn unregister(
        &self,
        ctx: &mut Ctx,
        item: NetworkServiceEndpoint,
        next: RegistryNext<NetworkServiceEndpoint>,
    ) -> Result<()> {
        self.enter(ctx, format!("unregister {}", item.name), &item.name)
            .await?;
        next.unregister(ctx, item).await
    }
    fn name(&self) -> &'static str {
        "probe"
    }
}
