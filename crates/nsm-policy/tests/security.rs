//! End-to-end security over real gRPC (127.0.0.1 and unix sockets): SPIFFE mTLS, ES256 path tokens and
//! the default Rego policies on both sides.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use nsm_api::url::NsmUrl;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_chains::client::{ClientOptions, new_client_parts, new_client_parts_with_security};
use nsm_chains::endpoint::{Endpoint, EndpointOptions};
use nsm_core::token::{SharedTokenGenerator, Token, TokenGenerator};
use nsm_core::values::PeerInfo;
use nsm_core::{Chain, Clock, Ctx, NsmError};
use nsm_identity::{
    DevCa, JwtTokenGenerator, MemorySource, SharedSource, SignedDuration, TlsIdentity,
    TransportSecurity,
};
use nsm_networkservice::authorize::{AuthorizeClient, AuthorizeServer};
use nsm_networkservice::grpc::{Serving, serve_tls};
use nsm_policy::{default_client_policies, default_server_policies};
use tonic::Code;
use tonic::transport::Server;

const TD: &str = "example.org";
const HOUR: Duration = Duration::from_secs(3600);

fn identity(ca: &DevCa, path: &str) -> (Arc<MemorySource>, Arc<TlsIdentity>) {
    let src = Arc::new(MemorySource::new(ca.material(path, HOUR).unwrap()));
    let tls = TlsIdentity::new(src.clone()).unwrap();
    (src, tls)
}

fn jwt(tls: &TlsIdentity, lifetime: impl Into<SignedDuration>) -> SharedTokenGenerator {
    Arc::new(JwtTokenGenerator::new(tls.source(), lifetime))
}

/// An NSMgr-like endpoint: the endpoint chain with the default server policies, served with mTLS.
async fn start_endpoint(tls: Arc<TlsIdentity>, url: NsmUrl) -> Serving {
    let mut opts =
        EndpointOptions::new("nse", jwt(&tls, Duration::from_secs(600)), Clock::system());
    opts.authorize = Arc::new(AuthorizeServer::new(default_server_policies()));
    let ep = Endpoint::new(opts);
    serve_tls(&url, Server::builder().add_routes(ep.routes()), tls)
        .await
        .unwrap()
}

fn client(tls: Arc<TlsIdentity>, url: &NsmUrl, tokens: SharedTokenGenerator) -> Chain {
    new_client_parts_with_security(
        ClientOptions {
            url: Some(url.clone()),
            authorize: Arc::new(AuthorizeClient::new(default_client_policies())),
            dial_timeout: Duration::from_secs(2),
            ..ClientOptions::new("nsc", tokens)
        },
        TransportSecurity::Tls(tls),
    )
    .chain
}

fn request() -> NetworkServiceRequest {
    NetworkServiceRequest {
        connection: Some(Connection {
            id: uuid::Uuid::new_v4().to_string(),
            network_service: "ns".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn tcp() -> NsmUrl {
    NsmUrl::Tcp {
        host: "127.0.0.1".into(),
        port: 0,
    }
}

async fn refused(chain: &Chain) -> NsmError {
    chain
        .run_request(&mut Ctx::new(Clock::system()), request())
        .await
        .expect_err("the request must be refused")
}

#[tokio::test]
async fn mtls_tokens_and_policies_pass_on_tcp_and_unix() {
    let ca = DevCa::new(TD).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for bind in [tcp(), NsmUrl::Unix(dir.path().join("nse.sock"))] {
        let (_s, server_tls) = identity(&ca, "nse");
        let serving = start_endpoint(server_tls, bind).await;
        let (_c, tls) = identity(&ca, "nsc");
        let chain = client(
            tls.clone(),
            serving.url(),
            jwt(&tls, Duration::from_secs(600)),
        );
        let mut ctx = Ctx::new(Clock::system());
        let conn = chain.run_request(&mut ctx, request()).await.unwrap();
        let segs = &conn.path.as_ref().unwrap().path_segments;
        assert_eq!(segs.len(), 2);
        // Segment 0: the per-RPC token the client sent (sub = client, aud = [server]).
        let c0 = claims(&segs[0].token);
        assert_eq!(c0["sub"], "spiffe://example.org/nsc");
        assert_eq!(c0["aud"], serde_json::json!(["spiffe://example.org/nse"]));
        // Segment 1: the server's token for its caller.
        let c1 = claims(&segs[1].token);
        assert_eq!(c1["sub"], "spiffe://example.org/nse");
        assert_eq!(c1["aud"], serde_json::json!(["spiffe://example.org/nsc"]));
        // The client side learned the server's identity from TLS.
        let peer = ctx.get::<PeerInfo>().unwrap();
        assert_eq!(peer.spiffe_id.as_deref(), Some("spiffe://example.org/nse"));
        assert!(
            peer.certificate_pem
                .as_deref()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        // Refresh and Close pass the policies too.
        let mut refresh = request();
        refresh.connection = Some(conn.clone());
        let conn = chain
            .run_request(&mut Ctx::new(Clock::system()), refresh)
            .await
            .unwrap();
        chain
            .run_close(&mut Ctx::new(Clock::system()), conn)
            .await
            .unwrap();
        serving.stop().await.unwrap();
    }
}

#[tokio::test]
async fn expired_client_token_is_refused_naming_tokens_expired() {
    let ca = DevCa::new(TD).unwrap();
    let (_s, server_tls) = identity(&ca, "nsmgr");
    let serving = start_endpoint(server_tls, tcp()).await;
    let (_c, tls) = identity(&ca, "nsc");
    // NSM_MAX_TOKEN_LIFETIME=-1m: every token is already expired.
    let expired = SignedDuration {
        negative: true,
        magnitude: Duration::from_secs(60),
    };
    let chain = client(tls.clone(), serving.url(), jwt(&tls, expired));
    let err = refused(&chain).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("tokens_expired"), "{err}");
}

/// Wraps the client's real generator to misbehave.
struct Evil<F>(F);

impl<F> TokenGenerator for Evil<F>
where
    F: Fn(&Clock, Option<&PeerInfo>) -> Token + Send + Sync + 'static,
{
    fn generate(&self, clock: &Clock, peer: Option<&PeerInfo>) -> nsm_core::Result<Token> {
        Ok((self.0)(clock, peer))
    }
}

fn flip_signature_byte(token: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    let i = b.len() - 20;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

#[tokio::test]
async fn forged_tokens_are_refused_with_the_failing_policy() {
    let ca = DevCa::new(TD).unwrap();
    let (_s, server_tls) = identity(&ca, "nsmgr");
    let serving = start_endpoint(server_tls, tcp()).await;
    let (_c, tls) = identity(&ca, "nsc");
    let good = JwtTokenGenerator::new(tls.source(), Duration::from_secs(600));

    // One byte of the signature changed.
    let tampered = Evil(move |clock: &Clock, peer: Option<&PeerInfo>| {
        let mut t = good.generate(clock, peer).unwrap();
        t.token = flip_signature_byte(&t.token);
        t
    });
    let err = refused(&client(tls.clone(), serving.url(), Arc::new(tampered))).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("prev_token_signed"), "{err}");

    // Signed by a key that is not the TLS peer's (same SPIFFE ID, another SVID).
    let other: SharedSource = Arc::new(MemorySource::new(ca.material("nsc", HOUR).unwrap()));
    let impostor = JwtTokenGenerator::new(&other, Duration::from_secs(600));
    let err = refused(&client(tls.clone(), serving.url(), Arc::new(impostor))).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("prev_token_signed"), "{err}");

    // Audience is not the server: the chain aud(0) ∋ sub(1) breaks.
    let good = JwtTokenGenerator::new(tls.source(), Duration::from_secs(600));
    let misdirected = Evil(move |clock: &Clock, _peer: Option<&PeerInfo>| {
        let someone = PeerInfo {
            spiffe_id: Some("spiffe://example.org/someone-else".into()),
            ..Default::default()
        };
        good.generate(clock, Some(&someone)).unwrap()
    });
    let err = refused(&client(tls.clone(), serving.url(), Arc::new(misdirected))).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("tokens_chained"), "{err}");

    // Not a JWT at all.
    let garbage = Evil(|clock: &Clock, _: Option<&PeerInfo>| Token {
        token: "not-a-jwt".into(),
        expires: clock.now() + HOUR,
    });
    let err = refused(&client(tls, serving.url(), Arc::new(garbage))).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("tokens_valid"), "{err}");
}

#[tokio::test]
async fn untrusted_client_certificates_are_refused_at_tls() {
    let ca = DevCa::new(TD).unwrap();
    let (_s, server_tls) = identity(&ca, "nsmgr");
    let dir = tempfile::tempdir().unwrap();
    for bind in [tcp(), NsmUrl::Unix(dir.path().join("nsmgr.sock"))] {
        let serving = start_endpoint(server_tls.clone(), bind).await;
        // Another trust domain, and a CA of the same name that the server does not trust.
        for foreign in [DevCa::new("other.org").unwrap(), DevCa::new(TD).unwrap()] {
            let (_c, tls) = identity(&foreign, "nsc");
            let chain = client(
                tls.clone(),
                serving.url(),
                jwt(&tls, Duration::from_secs(600)),
            );
            let err = refused(&chain).await;
            assert_eq!(err.code(), Code::Unavailable, "{err}");
        }
        serving.stop().await.unwrap();
    }
}

#[tokio::test]
async fn plaintext_client_against_tls_server_is_refused() {
    let ca = DevCa::new(TD).unwrap();
    let (_s, server_tls) = identity(&ca, "nsmgr");
    let serving = start_endpoint(server_tls.clone(), tcp()).await;
    let chain = new_client_parts(ClientOptions {
        url: Some(serving.url().clone()),
        dial_timeout: Duration::from_secs(2),
        ..ClientOptions::new("nsc", jwt(&server_tls, Duration::from_secs(600)))
    })
    .chain;
    let err = refused(&chain).await;
    // hyper's plaintext HTTP/2 preface is answered with a TLS alert: the call fails at the transport.
    assert!(
        matches!(err.code(), Code::Unavailable | Code::Unknown)
            && err.to_string().contains("transport error"),
        "{err}"
    );
}

#[tokio::test]
async fn client_svid_rotation_mid_connection_keeps_refresh_working() {
    let ca = DevCa::new(TD).unwrap();
    let (_s, server_tls) = identity(&ca, "nsmgr");
    let serving = start_endpoint(server_tls, tcp()).await;
    let (src, tls) = identity(&ca, "nsc");
    let chain = client(
        tls.clone(),
        serving.url(),
        jwt(&tls, Duration::from_secs(600)),
    );
    let conn = chain
        .run_request(&mut Ctx::new(Clock::system()), request())
        .await
        .unwrap();
    let first_cert = tls.current().svid.leaf_pem().to_string();
    // Rotate: a new key and certificate for the same SPIFFE ID.
    src.set(ca.material("nsc", HOUR).unwrap());
    assert_ne!(tls.current().svid.leaf_pem(), first_cert);
    let mut refresh = request();
    refresh.connection = Some(conn);
    let conn = chain
        .run_request(&mut Ctx::new(Clock::system()), refresh)
        .await
        .expect("refresh after rotation");
    // The server accepted a token signed with the new key.
    let token = &conn.path.as_ref().unwrap().path_segments[0].token;
    let cache = nsm_policy::JwtCache::new();
    assert!(cache.verify_es256(token, tls.current().svid.leaf_pem(), Clock::system().now()));
    assert!(!cache.verify_es256(token, &first_cert, Clock::system().now()));
    chain
        .run_close(&mut Ctx::new(Clock::system()), conn)
        .await
        .unwrap();
}

/// Counts Closes that reach the end of the endpoint chain.
#[derive(Default)]
struct CloseCounter(std::sync::atomic::AtomicUsize);

#[async_trait::async_trait]
impl nsm_core::NetworkServiceServer for CloseCounter {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: nsm_core::Next,
    ) -> nsm_core::Result<Connection> {
        next.request(ctx, request).await
    }
    async fn close(
        &self,
        ctx: &mut Ctx,
        conn: Connection,
        next: nsm_core::Next,
    ) -> nsm_core::Result<()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        next.close(ctx, conn).await
    }
    fn name(&self) -> &'static str {
        "closecounter"
    }
}

#[tokio::test]
async fn a_client_that_stops_refreshing_is_closed_when_its_token_expires() {
    let ca = DevCa::new(TD).unwrap();
    let (_s, server_tls) = identity(&ca, "nsmgr");
    let closes = Arc::new(CloseCounter::default());
    let mut opts = EndpointOptions::new(
        "nse",
        jwt(&server_tls, Duration::from_secs(600)),
        Clock::system(),
    );
    opts.authorize = Arc::new(AuthorizeServer::new(default_server_policies()));
    opts.additional = vec![closes.clone()];
    let ep = Endpoint::new(opts);
    let serving = serve_tls(
        &tcp(),
        Server::builder().add_routes(ep.routes()),
        server_tls,
    )
    .await
    .unwrap();
    // The client's tokens live 1 s (NSM_MAX_TOKEN_LIFETIME=1s) and it never refreshes.
    let (_c, tls) = identity(&ca, "nsc");
    let chain = client(
        tls.clone(),
        serving.url(),
        jwt(&tls, Duration::from_secs(1)),
    );
    let conn = chain
        .run_request(&mut Ctx::new(Clock::system()), request())
        .await
        .unwrap();
    let expires = conn.path.as_ref().unwrap().path_segments[0]
        .expires
        .unwrap();
    let left = Clock::system().until_timestamp(&expires);
    assert!(left <= Duration::from_secs(1), "{left:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(closes.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while closes.0.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not closed by timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    serving.stop().await.unwrap();
}
