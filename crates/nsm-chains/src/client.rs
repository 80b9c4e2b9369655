//! The client chain (NSCs, and the client half of every hop that calls a next hop).
//!
//! updatepath → begin → metadata → refresh → clienturl → heal → dial → *additional* → authorize →
//! trimpath → connect
//!
//! `refresh` and `heal` are optional (hops other than NSCs run without them, as in Go v1.1).

use std::sync::Arc;
use std::time::Duration;

use nsm_api::url::NsmUrl;
use nsm_core::Chain;
use nsm_core::chain::Element;
use nsm_core::token::SharedTokenGenerator;
use nsm_identity::TransportSecurity;
use nsm_networkservice::authorize::AuthorizeClient;
use nsm_networkservice::begin::BeginClient;
use nsm_networkservice::clienturl::ClientUrlClient;
use nsm_networkservice::connect::ConnectClient;
use nsm_networkservice::dial::DialClient;
use nsm_networkservice::heal::HealClient;
use nsm_networkservice::metadata::MetadataClient;
use nsm_networkservice::refresh::RefreshClient;
use nsm_networkservice::trimpath::TrimPathClient;
use nsm_networkservice::updatepath::UpdatePathClient;

/// Default time to establish a gRPC connection to the next hop.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_millis(100);

/// What a client chain is made of.
pub struct ClientOptions {
    /// The client's name (its path segment name).
    pub name: String,
    /// Fixed next-hop URL (NSCs: the NSMgr); `None` when an earlier element selects it.
    pub url: Option<NsmUrl>,
    /// Signs the per-RPC tokens.
    pub token_generator: SharedTokenGenerator,
    /// Refresh the connection before its token expires (NSCs and passthrough endpoints).
    pub refresh: bool,
    /// Heal when the next hop reports the connection down or its monitor stream breaks (NSCs).
    pub heal: bool,
    /// Elements between dial and authorize (mechanisms, data-plane clients…).
    pub additional: Vec<Element>,
    /// The authorize element (default: allow everything).
    pub authorize: Element,
    /// Time to establish a gRPC connection to the next hop.
    pub dial_timeout: Duration,
    /// How to dial the next hop (plaintext by default; SPIFFE mTLS in production).
    pub security: TransportSecurity,
}

impl ClientOptions {
    /// A client without refresh, heal or additional elements.
    pub fn new(name: impl Into<String>, token_generator: SharedTokenGenerator) -> Self {
        Self {
            name: name.into(),
            url: None,
            token_generator,
            refresh: false,
            heal: false,
            additional: Vec::new(),
            authorize: Arc::new(AuthorizeClient::any()),
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            security: TransportSecurity::Insecure,
        }
    }
}

/// A client chain with handles on the elements that hold per-connection state (for leak checks).
pub struct ClientParts {
    /// The chain.
    pub chain: Chain,
    /// Its begin element.
    pub begin: Arc<BeginClient>,
    /// Its metadata element.
    pub metadata: Arc<MetadataClient>,
    /// Its heal element, if enabled.
    pub heal: Option<Arc<HealClient>>,
}

/// Builds a client chain.
pub fn new_client(opts: ClientOptions) -> Chain {
    new_client_parts(opts).chain
}

/// Builds a client chain and keeps handles on its stateful elements.
pub fn new_client_parts(opts: ClientOptions) -> ClientParts {
    let security = opts.security.clone();
    new_client_parts_with_security(opts, security)
}

/// [`new_client_parts`] dialing with the given transport security (overrides `opts.security`).
pub fn new_client_parts_with_security(
    opts: ClientOptions,
    security: TransportSecurity,
) -> ClientParts {
    let begin = Arc::new(BeginClient::new());
    let metadata = Arc::new(MetadataClient::new());
    let heal = opts.heal.then(|| Arc::new(HealClient::new()));
    let mut elements: Vec<Element> = vec![
        Arc::new(UpdatePathClient::new(opts.name)),
        begin.clone(),
        metadata.clone(),
    ];
    if opts.refresh {
        elements.push(Arc::new(RefreshClient::new()));
    }
    if let Some(url) = opts.url {
        elements.push(Arc::new(ClientUrlClient::new(url)));
    }
    if let Some(h) = &heal {
        elements.push(h.clone());
    }
    elements.push(Arc::new(
        DialClient::new(opts.dial_timeout).with_security(security),
    ));
    elements.extend(opts.additional);
    elements.push(opts.authorize);
    elements.push(Arc::new(TrimPathClient::new()));
    elements.push(Arc::new(ConnectClient::new(opts.token_generator)));
    ClientParts {
        chain: Chain::new("client", elements),
        begin,
        metadata,
        heal,
    }
}
