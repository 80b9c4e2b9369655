//! Small stand-ins for other engineers' elements and helpers for gRPC tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nsm_api::url::NsmUrl;
use nsm_api::{Connection, NetworkServiceRequest, Path, PathSegment};
use nsm_core::chain::Element;
use nsm_core::metadata::ConnMetadata;
use nsm_core::token::TestTokenGenerator;
use nsm_core::{Chain, Clock, Ctx, NetworkServiceServer, Next, NsmError, Result};
use parking_lot::Mutex;
use tonic::transport::Server;

pub(crate) use crate::fdpass::testing::TempDir;

use super::{NetworkServiceGrpc, Serving, serve};
use crate::clienturl::ClientUrlClient;
use crate::connect::ConnectClient;
use crate::dial::DialClient;
use crate::monitor::MonitorServer;

/// Keeps a `ConnMetadata` per connection id, like the `metadata` element.
#[derive(Default)]
pub(crate) struct FakeMetadata(Mutex<HashMap<String, Arc<ConnMetadata>>>);

#[async_trait]
impl NetworkServiceServer for FakeMetadata {
    async fn request(
        &self,
        ctx: &mut Ctx,
        r: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let id = r
            .connection
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default();
        let (md, fresh) = {
            let mut m = self.0.lock();
            let fresh = !m.contains_key(&id);
            (m.entry(id.clone()).or_default().clone(), fresh)
        };
        ctx.set_metadata(Some(md));
        let res = next.request(ctx, r).await;
        if res.is_err() && fresh {
            self.0.lock().remove(&id);
        }
        res
    }
    async fn close(&self, ctx: &mut Ctx, c: Connection, next: Next) -> Result<()> {
        let md = self.0.lock().get(&c.id).cloned();
        ctx.set_metadata(Some(md.unwrap_or_default()));
        let id = c.id.clone();
        let res = next.close(ctx, c).await;
        self.0.lock().remove(&id);
        res
    }
    fn name(&self) -> &'static str {
        "metadata"
    }
}

/// Adds or advances to this hop's segment and restores the caller's view afterwards, like `updatepath`.
pub(crate) struct FakeUpdatePath(pub(crate) &'static str);

impl FakeUpdatePath {
    fn enter(&self, conn: &mut Connection) -> (String, u32) {
        let saved = (conn.id.clone(), conn.path_or_default().index);
        let path = conn.path.get_or_insert_with(Path::default);
        if path.path_segments.is_empty() {
            let id = if conn.id.is_empty() {
                format!("{}-id", self.0)
            } else {
                conn.id.clone()
            };
            path.path_segments.push(PathSegment::new(self.0, id));
        } else if path.current().is_none_or(|s| s.name != self.0) {
            path.index += 1;
            let i = path.index as usize;
            let id = format!("{}-{}", self.0, saved.0);
            match path.path_segments.get_mut(i) {
                Some(s) if s.name == self.0 => {}
                Some(s) => *s = PathSegment::new(self.0, id),
                None => path.path_segments.push(PathSegment::new(self.0, id)),
            }
        }
        conn.id = path.current().map(|s| s.id.clone()).unwrap_or_default();
        saved
    }
}

#[async_trait]
impl NetworkServiceServer for FakeUpdatePath {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut r: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let conn = r.connection.get_or_insert_with(Default::default);
        let (id, index) = self.enter(conn);
        let mut out = next.request(ctx, r).await?;
        out.id = id;
        if let Some(p) = out.path.as_mut() {
            p.index = index;
        }
        Ok(out)
    }
    async fn close(&self, ctx: &mut Ctx, mut c: Connection, next: Next) -> Result<()> {
        self.enter(&mut c);
        next.close(ctx, c).await
    }
    fn name(&self) -> &'static str {
        "updatepath"
    }
}

/// What a [`Tail`] saw.
#[derive(Debug, Clone)]
pub(crate) enum Seen {
    Request(Connection, Ctx),
    Close(Connection),
}

/// The end of a server chain: records calls, names the endpoint, and fails or stalls on demand.
#[derive(Default)]
pub(crate) struct Tail {
    pub(crate) seen: Mutex<Vec<Seen>>,
    pub(crate) fail: Mutex<Option<NsmError>>,
    pub(crate) stall: Mutex<Option<Duration>>,
}

impl Tail {
    pub(crate) fn requests(&self) -> Vec<Connection> {
        self.seen
            .lock()
            .iter()
            .filter_map(|s| match s {
                Seen::Request(c, _) => Some(c.clone()),
                Seen::Close(_) => None,
            })
            .collect()
    }
    pub(crate) fn closed(&self) -> Vec<Connection> {
        self.seen
            .lock()
            .iter()
            .filter_map(|s| match s {
                Seen::Close(c) => Some(c.clone()),
                Seen::Request(..) => None,
            })
            .collect()
    }
    pub(crate) fn closes(&self) -> usize {
        self.closed().len()
    }
    pub(crate) fn last_ctx(&self) -> Option<Ctx> {
        self.seen.lock().iter().rev().find_map(|s| match s {
            Seen::Request(_, ctx) => Some(ctx.clone()),
            Seen::Close(_) => None,
        })
    }
}

#[async_trait]
impl NetworkServiceServer for Tail {
    async fn request(
        &self,
        ctx: &mut Ctx,
        r: NetworkServiceRequest,
        _next: Next,
    ) -> Result<Connection> {
        let mut conn = r.connection.unwrap_or_default();
        self.seen
            .lock()
            .push(Seen::Request(conn.clone(), ctx.clone()));
        let stall = *self.stall.lock();
        if let Some(d) = stall {
            tokio::time::sleep(d).await;
        }
        if let Some(e) = self.fail.lock().clone() {
            return Err(e);
        }
        conn.network_service_endpoint_name = "nse-1".into();
        conn.mechanism = Some(nsm_api::Mechanism {
            cls: "LOCAL".into(),
            r#type: "KERNEL".into(),
            ..Default::default()
        });
        Ok(conn)
    }
    async fn close(&self, _ctx: &mut Ctx, c: Connection, _next: Next) -> Result<()> {
        self.seen.lock().push(Seen::Close(c));
        Ok(())
    }
    fn name(&self) -> &'static str {
        "tail"
    }
}

/// Serves `chain` (and `monitor`'s MonitorConnection service, if given) on `url`.
pub(crate) async fn serve_chain(
    url: &NsmUrl,
    chain: Chain,
    monitor: Option<&MonitorServer>,
) -> Serving {
    let mut server = Server::builder();
    let router = match monitor {
        Some(m) => server
            .add_service(NetworkServiceGrpc::new(chain, Clock::system()).into_service())
            .add_service(m.monitor_connection().into_service()),
        None => server.add_service(NetworkServiceGrpc::new(chain, Clock::system()).into_service()),
    };
    serve(url, router).await.unwrap()
}

/// `127.0.0.1:0`.
pub(crate) fn any_local_port() -> NsmUrl {
    NsmUrl::parse("tcp://127.0.0.1:0").unwrap()
}

/// `clienturl(url) → dial → connect` with the test token, after `before`.
pub(crate) fn dialing_chain(
    name: &'static str,
    url: NsmUrl,
    dial: Arc<DialClient>,
    before: Vec<Element>,
) -> Chain {
    let mut elements = before;
    elements.push(Arc::new(ClientUrlClient::new(url)));
    elements.push(dial);
    elements.push(Arc::new(ConnectClient::new(Arc::new(
        TestTokenGenerator::default(),
    ))));
    Chain::new(name, elements)
}

/// A request for connection `id` with no path yet.
pub(crate) fn request(id: &str) -> NetworkServiceRequest {
    NetworkServiceRequest {
        connection: Some(Connection {
            id: id.into(),
            network_service: "svc".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Polls `cond` every 10 ms for up to 5 s.
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}
