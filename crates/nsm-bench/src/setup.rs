//! What every benchmark shares: the service, the request, the NSC chain and the domain.

use std::sync::Arc;
use std::time::Duration;

use nsm_api::mechanisms::MechanismType;
use nsm_api::registry::NetworkService;
use nsm_api::url::NsmUrl;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_chains::client::{ClientOptions, new_client};
use nsm_core::Chain;
use nsm_core::token::TestTokenGenerator;
use nsm_sandbox::{EndpointSpec, Sandbox};

use crate::Result;

/// The network service every benchmark requests.
pub const SERVICE: &str = "bench-service";
/// The endpoint serving it.
pub const ENDPOINT: &str = "bench-endpoint";
/// Deadline of one Request or Close.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to establish a gRPC connection (loopback), as in the sandbox.
pub const DIAL_TIMEOUT: Duration = Duration::from_millis(500);

/// Local (NSC → NSMgr → forwarder → NSE, 4 path segments) or remote (NSC → NSMgr → forwarder →
/// NSMgr → forwarder → NSE, 6 segments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Client and endpoint on the same node.
    Local,
    /// Endpoint on a second node.
    Remote,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Local => "local",
            Mode::Remote => "remote",
        })
    }
}

/// A Request for [`SERVICE`] with a fresh connection id and the kernel mechanism, as the Go sdk's
/// use-case tests send.
pub fn request() -> NetworkServiceRequest {
    NetworkServiceRequest {
        connection: Some(Connection {
            id: uuid::Uuid::new_v4().to_string(),
            network_service: SERVICE.into(),
            ..Default::default()
        }),
        mechanism_preferences: vec![MechanismType::Kernel.mechanism()],
    }
}

/// The NSC chain: `nsm_chains::client::new_client` without the sandbox's retry wrapper, without
/// refresh, with or without heal.
pub fn nsc(nsmgr: &NsmUrl, heal: bool) -> Arc<Chain> {
    Arc::new(new_client(ClientOptions {
        url: Some(nsmgr.clone()),
        refresh: false,
        heal,
        dial_timeout: DIAL_TIMEOUT,
        ..ClientOptions::new("nsc", Arc::new(TestTokenGenerator::default()))
    }))
}

/// The network service registration.
pub fn service() -> NetworkService {
    NetworkService {
        name: SERVICE.into(),
        payload: "IP".into(),
        ..Default::default()
    }
}

/// A sandbox domain: one node (local) or two (remote), the service registered and a plain endpoint
/// on the last node.
pub async fn domain(mode: Mode) -> Result<Sandbox> {
    let nodes = match mode {
        Mode::Local => 1,
        Mode::Remote => 2,
    };
    let sb = Sandbox::builder().nodes(nodes).build().await?;
    sb.register_ns(service()).await?;
    sb.nodes[nodes - 1]
        .new_endpoint(EndpointSpec::new(ENDPOINT, SERVICE), vec![])
        .await?;
    Ok(sb)
}
