//! What every benchmark shares: the service, the request, the NSC chain and the domain.

use std::sync::Arc;
use std::time::Duration;

use nsm_api::mechanisms::MechanismType;
use nsm_api::registry::NetworkService;
use nsm_api::url::NsmUrl;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_chains::client::{ClientOptions, new_client};
use nsm_core::chain::Element;
use nsm_core::token::{SharedTokenGenerator, TestTokenGenerator};
use nsm_core::{Chain, Clock};
use nsm_identity::{DevCa, JwtTokenGenerator, TlsIdentity, TransportSecurity};
use nsm_networkservice::authorize::{AuthorizeClient, AuthorizeServer};
use nsm_policy::{PolicyRuntime, default_client_policies_with, default_server_policies_with};
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

/// How long the tokens of a secured benchmark live: longer than any run, so no connection expires
/// (and none is refreshed) while it is measured.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// How the benchmark's components and clients are secured: plaintext with test tokens and no policies,
/// or as a production mesh — every component and client its own X.509-SVID from one development CA,
/// SPIFFE mTLS on every hop, ES256 tokens ([`TOKEN_LIFETIME`]) and the default policies (as
/// `Sandbox::builder().secure()` and `nsm bench mesh` run).
#[derive(Clone)]
pub struct Security {
    ca: Option<Arc<DevCa>>,
    clock: Clock,
}

impl Security {
    /// Plaintext gRPC, test tokens, allow-all.
    pub fn plaintext(clock: Clock) -> Self {
        Self { ca: None, clock }
    }

    /// Everything secured with SVIDs issued by `ca`.
    pub fn secured(ca: Arc<DevCa>, clock: Clock) -> Self {
        nsm_identity::install_crypto_provider();
        Self {
            ca: Some(ca),
            clock,
        }
    }

    /// The CA, when secured.
    pub fn ca(&self) -> Option<&Arc<DevCa>> {
        self.ca.as_ref()
    }

    /// How component `name` serves and dials: mTLS with an SVID of its own (issued now), or plaintext.
    pub fn transport(&self, name: &str) -> Result<TransportSecurity> {
        Ok(match &self.ca {
            Some(ca) => {
                TransportSecurity::Tls(TlsIdentity::new(ca.source(name, 2 * TOKEN_LIFETIME)?)?)
            }
            None => TransportSecurity::Insecure,
        })
    }

    /// The token generator of a component served with `transport`: ES256 tokens signed with its SVID
    /// under TLS, test tokens in plaintext.
    pub fn tokens(&self, transport: &TransportSecurity) -> SharedTokenGenerator {
        match transport.tls() {
            Some(tls) => Arc::new(JwtTokenGenerator::new(tls.source(), TOKEN_LIFETIME)),
            None => Arc::new(TestTokenGenerator::default()),
        }
    }

    /// The server authorize element: the default policies when secured, else allow-all.
    pub fn server_authorize(&self) -> Element {
        match self.ca {
            Some(_) => Arc::new(AuthorizeServer::new(default_server_policies_with(
                &PolicyRuntime::new(self.clock),
            ))),
            None => Arc::new(AuthorizeServer::any()),
        }
    }

    /// The client authorize element: the default policies when secured, else allow-all.
    pub fn client_authorize(&self) -> Element {
        match self.ca {
            Some(_) => Arc::new(AuthorizeClient::new(default_client_policies_with(
                &PolicyRuntime::new(self.clock),
            ))),
            None => Arc::new(AuthorizeClient::any()),
        }
    }
}

/// The NSC chain: `nsm_chains::client::new_client` without the sandbox's retry wrapper, without
/// refresh, with or without heal, secured as `security` says.
pub fn nsc(nsmgr: &NsmUrl, heal: bool, security: &Security) -> Result<Arc<Chain>> {
    let transport = security.transport("nsc")?;
    Ok(Arc::new(new_client(ClientOptions {
        url: Some(nsmgr.clone()),
        refresh: false,
        heal,
        dial_timeout: DIAL_TIMEOUT,
        authorize: security.client_authorize(),
        security: transport.clone(),
        ..ClientOptions::new("nsc", security.tokens(&transport))
    })))
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
/// on the last node; `secure`: as [`Sandbox::builder`]`().secure()` (tokens living
/// [`TOKEN_LIFETIME`]).
pub async fn domain(mode: Mode, secure: bool) -> Result<Sandbox> {
    Ok(domain_over(mode, secure, Transport::Tcp).await?.sandbox)
}

/// How the hops of a benchmark domain are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Every hop on TCP 127.0.0.1 (the shape the Go sdk's in-process harness measures).
    Tcp,
    /// As deployed: NSC → NSMgr → forwarder → NSE on unix sockets, NSMgr to NSMgr over TCP
    /// 127.0.0.1 (each NSMgr also listens on TCP and publishes that URL).
    Unix,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
        })
    }
}

/// A benchmark domain and the directory holding its unix sockets, removed once the sandbox (declared
/// first, so dropped first) has stopped serving.
pub struct Domain {
    /// The domain.
    pub sandbox: Sandbox,
    _socket_dir: Option<RemovedOnDrop>,
}

/// A directory removed (with its contents) when dropped.
pub(crate) struct RemovedOnDrop(pub(crate) std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// [`domain`] served over `transport`: with [`Transport::Unix`] the NSMgrs, forwarders and endpoint
/// listen on unix sockets in a fresh directory (the NSMgrs also on TCP, for the other node), the
/// registry on TCP.
pub async fn domain_over(mode: Mode, secure: bool, transport: Transport) -> Result<Domain> {
    let nodes = match mode {
        Mode::Local => 1,
        Mode::Remote => 2,
    };
    let mut builder = Sandbox::builder().nodes(nodes);
    if secure {
        builder = builder.secure().max_token_lifetime(TOKEN_LIFETIME);
    }
    let socket_dir = match transport {
        Transport::Tcp => None,
        Transport::Unix => {
            let dir = std::env::temp_dir().join(format!("nsm-bench-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir)?;
            builder = builder.unix_sockets(&dir).nsmgr_tcp(true);
            Some(RemovedOnDrop(dir))
        }
    };
    let sandbox = builder.build().await?;
    sandbox.register_ns(service()).await?;
    sandbox.nodes[nodes - 1]
        .new_endpoint(EndpointSpec::new(ENDPOINT, SERVICE), vec![])
        .await?;
    Ok(Domain {
        sandbox,
        _socket_dir: socket_dir,
    })
}
