//! `begin`: per-connection serialisation, stored state and the event handle, seen from outside.

// Helpers outside #[test] functions may panic too: this is a test crate.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nsm_api::connectioncontext::ConnectionContext;
use nsm_api::{Connection, Mechanism, NetworkServiceRequest, Path, PathSegment};
use nsm_core::values::FromEvent;
use nsm_core::{Chain, Clock, Ctx, NetworkServiceServer, Next, NsmError, Result};
use nsm_networkservice::begin::{BeginClient, BeginServer, EventFactory, RequestOptions};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Request(Connection, bool),
    Close(Connection, bool),
}

/// The rest of the chain: records calls (with "came from an event"), keeps the event handle, can
/// fail, can take time, and tracks how many calls overlap.
#[derive(Default)]
struct Downstream {
    calls: Mutex<Vec<Call>>,
    events: Mutex<Option<EventFactory>>,
    fail_requests: AtomicBool,
    fail_closes: AtomicBool,
    delay: Mutex<Duration>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl Downstream {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }

    fn events(&self) -> EventFactory {
        self.events
            .lock()
            .clone()
            .expect("begin put an event handle into the context")
    }

    async fn work(&self) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let delay = *self.delay.lock();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl NetworkServiceServer for Downstream {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        if let Some(ev) = ctx.get::<EventFactory>() {
            *self.events.lock() = Some(ev.clone());
        }
        let conn = request.connection.clone().unwrap_or_default();
        self.calls
            .lock()
            .push(Call::Request(conn, ctx.get::<FromEvent>().is_some()));
        self.work().await;
        if self.fail_requests.load(Ordering::SeqCst) {
            return Err(NsmError::unavailable("downstream", "injected"));
        }
        let mut conn = next.request(ctx, request).await?;
        conn.labels.insert("seen".into(), "yes".into());
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        self.calls
            .lock()
            .push(Call::Close(conn.clone(), ctx.get::<FromEvent>().is_some()));
        self.work().await;
        if self.fail_closes.load(Ordering::SeqCst) {
            return Err(NsmError::deadline("downstream", "injected"));
        }
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        "downstream"
    }
}

fn server() -> (Chain, Arc<BeginServer>, Arc<Downstream>) {
    let begin = Arc::new(BeginServer::new());
    let down = Arc::new(Downstream::default());
    (
        Chain::new("server", vec![begin.clone(), down.clone()]),
        begin,
        down,
    )
}

fn client() -> (Chain, Arc<BeginClient>, Arc<Downstream>) {
    let begin = Arc::new(BeginClient::new());
    let down = Arc::new(Downstream::default());
    (
        Chain::new("client", vec![begin.clone(), down.clone()]),
        begin,
        down,
    )
}

fn ctx() -> Ctx {
    Ctx::new(Clock::system()).with_timeout(Duration::from_secs(5))
}

fn conn(id: &str) -> Connection {
    Connection {
        id: id.into(),
        network_service: "icmp".into(),
        path: Some(Path {
            index: 0,
            path_segments: vec![PathSegment::new("nsc", id)],
        }),
        ..Default::default()
    }
}

fn req(c: Connection) -> NetworkServiceRequest {
    NetworkServiceRequest {
        connection: Some(c),
        ..Default::default()
    }
}

#[tokio::test]
async fn empty_connection_id_is_refused() {
    let (chain, begin, down) = server();
    let err = chain
        .run_request(&mut ctx(), NetworkServiceRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NsmError::InvalidArgument {
                element: "begin",
                ..
            }
        ),
        "{err}"
    );
    assert!(begin.is_empty());
    assert!(down.calls().is_empty());
}

#[tokio::test]
async fn failed_first_request_is_forgotten_but_failed_refresh_is_kept() {
    let (chain, begin, down) = server();
    down.fail_requests.store(true, Ordering::SeqCst);
    assert!(chain.run_request(&mut ctx(), req(conn("a"))).await.is_err());
    assert!(begin.is_empty());

    down.fail_requests.store(false, Ordering::SeqCst);
    chain.run_request(&mut ctx(), req(conn("a"))).await.unwrap();
    down.fail_requests.store(true, Ordering::SeqCst);
    assert!(chain.run_request(&mut ctx(), req(conn("a"))).await.is_err());
    assert_eq!(
        begin.len(),
        1,
        "an established connection survives a failed refresh"
    );
}

#[tokio::test]
async fn close_uses_the_stored_connection_and_forgets_it() {
    let (chain, begin, down) = server();
    let returned = chain.run_request(&mut ctx(), req(conn("a"))).await.unwrap();
    assert_eq!(returned.labels.get("seen").map(String::as_str), Some("yes"));
    let mut stale = conn("a");
    stale.network_service = "something-else".into();
    chain.run_close(&mut ctx(), stale).await.unwrap();
    assert_eq!(down.calls().last(), Some(&Call::Close(returned, false)));
    assert!(begin.is_empty());

    // Closing again, or closing an id never seen, reaches nobody.
    chain.run_close(&mut ctx(), conn("a")).await.unwrap();
    chain.run_close(&mut ctx(), conn("zzz")).await.unwrap();
    assert_eq!(down.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn calls_of_one_connection_never_overlap_but_different_ones_do() {
    let (chain, _, down) = server();
    *down.delay.lock() = Duration::from_millis(100);
    let same: Vec<_> = (0..4)
        .map(|_| {
            let chain = chain.clone();
            tokio::spawn(async move { chain.run_request(&mut ctx(), req(conn("a"))).await })
        })
        .collect();
    for h in same {
        h.await.unwrap().unwrap();
    }
    assert_eq!(down.max_running.load(Ordering::SeqCst), 1);

    let different: Vec<_> = ["b", "c", "d"]
        .into_iter()
        .map(|id| {
            let chain = chain.clone();
            tokio::spawn(async move { chain.run_request(&mut ctx(), req(conn(id))).await })
        })
        .collect();
    for h in different {
        h.await.unwrap().unwrap();
    }
    assert_eq!(down.max_running.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn event_request_reruns_the_rest_of_the_chain_with_the_stored_request() {
    let (chain, _, down) = server();
    let returned = chain.run_request(&mut ctx(), req(conn("a"))).await.unwrap();
    let events = down.events();
    assert_eq!(events.connection_id(), "a");

    let again = events
        .request(RequestOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.id, "a");
    // The re-request carries the connection as last returned, and is marked as an event.
    assert_eq!(down.calls()[1], Call::Request(returned.clone(), true));

    let mut changed = conn("a");
    changed.network_service = "ignored".into();
    chain.run_close(&mut ctx(), changed).await.unwrap();
    assert!(matches!(down.calls()[2], Call::Close(ref c, false) if c.network_service == "icmp"));
    assert_eq!(
        events.request(RequestOptions::default()).await.unwrap(),
        None
    );
    events.close().await.unwrap();
    assert_eq!(
        down.calls().len(),
        3,
        "events on a closed connection do nothing"
    );
}

#[tokio::test]
async fn event_close_closes_and_forgets() {
    let (chain, begin, down) = server();
    chain.run_request(&mut ctx(), req(conn("a"))).await.unwrap();
    down.events().close().await.unwrap();
    assert!(matches!(down.calls()[1], Call::Close(_, true)));
    assert!(begin.is_empty());
    chain.run_close(&mut ctx(), conn("a")).await.unwrap();
    assert_eq!(down.calls().len(), 2);
}

#[tokio::test]
async fn cancelled_event_is_skipped() {
    let (chain, _, down) = server();
    chain.run_request(&mut ctx(), req(conn("a"))).await.unwrap();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let out = down
        .events()
        .request(RequestOptions {
            cancel: Some(cancel),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(out, None);
    assert_eq!(down.calls().len(), 1);
}

#[tokio::test]
async fn reselect_closes_then_requests_without_mechanism_and_endpoint() {
    let (chain, _, down) = client();
    let mut c = conn("a");
    c.mechanism = Some(Mechanism {
        r#type: "KERNEL".into(),
        ..Default::default()
    });
    c.network_service_endpoint_name = "nse-1".into();
    chain.run_request(&mut ctx(), req(c)).await.unwrap();
    down.events()
        .request(RequestOptions {
            reselect: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let calls = down.calls();
    assert!(
        matches!(&calls[1], Call::Close(c, true) if c.network_service_endpoint_name == "nse-1")
    );
    let Call::Request(re, true) = &calls[2] else {
        panic!("expected an event re-request, got {calls:?}");
    };
    assert_eq!(re.id, "a");
    assert!(re.mechanism.is_none());
    assert!(re.network_service_endpoint_name.is_empty());
    assert_eq!(re.path, conn("a").path, "same path kept");
}

#[tokio::test]
async fn client_first_request_goes_down_unchanged_and_rerequests_merge() {
    let (chain, _, down) = client();
    let mut first = conn("a");
    first.network_service_endpoint_name = "nse-1".into();
    first.context = Some(Box::new(ConnectionContext {
        extra_context: BTreeMap::from([("k".to_string(), "v".to_string())]),
        ..Default::default()
    }));
    chain
        .run_request(&mut ctx(), req(first.clone()))
        .await
        .unwrap();
    assert_eq!(
        down.calls()[0],
        Call::Request(first, false),
        "nothing lost on the way"
    );

    // An external re-request with a new endpoint name and no path: the stored path stays.
    let mut again = Connection {
        id: "a".into(),
        network_service_endpoint_name: "nse-2".into(),
        ..Default::default()
    };
    again.context = Some(Box::new(ConnectionContext {
        extra_context: BTreeMap::from([("k".to_string(), "w".to_string())]),
        ..Default::default()
    }));
    chain.run_request(&mut ctx(), req(again)).await.unwrap();
    let Call::Request(merged, false) = &down.calls()[1] else {
        panic!("expected a second request");
    };
    assert_eq!(merged.network_service_endpoint_name, "nse-2");
    assert_eq!(merged.path, conn("a").path);
    assert_eq!(merged.network_service, "icmp");
    let extra = &merged.context.as_ref().unwrap().extra_context;
    assert_eq!(extra.get("k").map(String::as_str), Some("w"));
}

#[tokio::test]
async fn begin_nested_under_another_begin_passes_through() {
    let inner_begin = Arc::new(BeginClient::new());
    let down = Arc::new(Downstream::default());
    let inner = Chain::new("client", vec![inner_begin.clone(), down.clone()]);
    let outer_begin = Arc::new(BeginServer::new());
    let outer = Chain::new("server", vec![outer_begin.clone(), Arc::new(inner)]);
    outer.run_request(&mut ctx(), req(conn("a"))).await.unwrap();
    assert_eq!(outer_begin.len(), 1);
    assert!(inner_begin.is_empty());
    down.events()
        .request(RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(down.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn event_close_completes_even_if_its_caller_is_aborted() {
    let (chain, begin, down) = server();
    chain.run_request(&mut ctx(), req(conn("a"))).await.unwrap();
    *down.delay.lock() = Duration::from_secs(1);
    let events = down.events();
    let caller = tokio::spawn(async move { events.close().await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    caller.abort();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(matches!(down.calls()[1], Call::Close(_, true)));
    assert!(begin.is_empty());
}

#[tokio::test]
async fn event_close_retries_a_close_that_failed_unless_the_id_was_reused() {
    let (chain, begin, down) = server();
    chain.run_request(&mut ctx(), req(conn("a"))).await.unwrap();
    let old_events = down.events();
    down.fail_closes.store(true, Ordering::SeqCst);
    assert!(chain.run_close(&mut ctx(), conn("a")).await.is_err());
    assert!(begin.is_empty());
    down.fail_closes.store(false, Ordering::SeqCst);
    // The connection may still exist downstream: an event Close (timeout's fallback) tries again.
    old_events.close().await.unwrap();
    assert_eq!(down.calls().len(), 3);
    old_events.close().await.unwrap();
    assert_eq!(down.calls().len(), 3, "but only until one succeeds");

    // Once a new connection took the id, the old handle must not touch it.
    chain.run_request(&mut ctx(), req(conn("b"))).await.unwrap();
    let b_events = down.events();
    down.fail_closes.store(true, Ordering::SeqCst);
    assert!(chain.run_close(&mut ctx(), conn("b")).await.is_err());
    down.fail_closes.store(false, Ordering::SeqCst);
    chain.run_request(&mut ctx(), req(conn("b"))).await.unwrap();
    let before = down.calls().len();
    b_events.close().await.unwrap();
    assert_eq!(down.calls().len(), before);
    assert_eq!(begin.len(), 1);
}

#[tokio::test]
async fn event_rerequest_keeps_the_callers_token_in_the_previous_segment() {
    use nsm_core::token::TestTokenGenerator;
    use nsm_core::values::IncomingToken;
    use nsm_networkservice::updatepath::UpdatePathServer;
    use nsm_networkservice::updatetoken::UpdateTokenServer;

    let begin = Arc::new(BeginServer::new());
    let down = Arc::new(Downstream::default());
    let chain = Chain::new(
        "server",
        vec![
            Arc::new(UpdatePathServer::new("nsmgr")),
            begin.clone(),
            Arc::new(UpdateTokenServer::new(Arc::new(
                TestTokenGenerator::default(),
            ))),
            down.clone(),
        ],
    );
    let mut call = ctx();
    let expires = call.clock().now() + Duration::from_secs(3600);
    call.insert(IncomingToken {
        token: "the-callers-token".into(),
        expires,
    });
    chain.run_request(&mut call, req(conn("a"))).await.unwrap();
    down.events()
        .request(RequestOptions::default())
        .await
        .unwrap()
        .unwrap();
    let calls = down.calls();
    let [Call::Request(first, false), Call::Request(rerun, true)] = calls.as_slice() else {
        panic!("a Request, then an event re-request: {calls:?}");
    };
    for seen in [first, rerun] {
        let nsc = &seen.path.as_ref().unwrap().path_segments[0];
        assert_eq!(nsc.token, "the-callers-token");
        assert_eq!(nsc.expires, Some(nsm_core::clock::to_timestamp(expires)));
    }
    assert_eq!(begin.len(), 1);
}
