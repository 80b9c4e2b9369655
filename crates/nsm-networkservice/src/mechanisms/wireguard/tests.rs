use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use nsm_api::mechanisms::{MechanismType, TunnelEnd, wireguard};
use nsm_api::{Connection, Mechanism, NetworkServiceRequest, payload};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};
use parking_lot::Mutex;
use tonic::Code;

use super::*;
use crate::discover::testing::{Probe, chain, ctx, request};

/// A [`LocalEnds`] in memory: ports from 40001 up, key bytes = the port's low byte.
#[derive(Default)]
struct FakeEnds {
    table: Mutex<HashMap<(String, Side), LocalEnd>>,
    last_port: AtomicU16,
    fail: AtomicBool,
}

impl FakeEnds {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            last_port: AtomicU16::new(40000),
            ..Default::default()
        })
    }

    fn len(&self) -> usize {
        self.table.lock().len()
    }

    /// How many ends were ever reserved.
    fn reservations(&self) -> u16 {
        self.last_port.load(Ordering::SeqCst) - 40000
    }
}

impl LocalEnds for FakeEnds {
    fn reserve(&self, connection_id: &str, side: Side) -> Result<Reserved, LocalEndsError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(LocalEndsError::Failed("bind: address not available".into()));
        }
        let mut table = self.table.lock();
        if let Some(end) = table.get(&(connection_id.to_string(), side)) {
            return Ok(Reserved {
                end: end.clone(),
                new: false,
            });
        }
        let port = self.last_port.fetch_add(1, Ordering::SeqCst) + 1;
        let end = LocalEnd {
            port,
            public_key: STANDARD.encode([port as u8; 32]),
        };
        table.insert((connection_id.to_string(), side), end.clone());
        Ok(Reserved { end, new: true })
    }

    fn release(&self, connection_id: &str, side: Side) {
        self.table.lock().remove(&(connection_id.to_string(), side));
    }
}

/// Plays the next hop's `mechanisms` server: selects the first preference of its type (a bare one of
/// that type if none was offered), unless a mechanism is already selected.
struct Select(MechanismType);

#[async_trait::async_trait]
impl NetworkServiceServer for Select {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let chosen = request
            .mechanism_preferences
            .iter()
            .find(|m| m.is(self.0))
            .cloned()
            .unwrap_or_else(|| self.0.mechanism());
        let conn = request.connection.get_or_insert_default();
        conn.mechanism.get_or_insert(chosen);
        next.request(ctx, request).await
    }
    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }
    fn name(&self) -> &'static str {
        "select"
    }
}

type TamperFn = Box<dyn Fn(&mut Mechanism) + Send + Sync>;

/// Rewrites the answer's mechanism on its way back (a misbehaving far forwarder).
struct Tamper(TamperFn);

#[async_trait::async_trait]
impl NetworkServiceServer for Tamper {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let mut conn = next.request(ctx, request).await?;
        if let Some(m) = conn.mechanism.as_mut() {
            (self.0)(m);
        }
        Ok(conn)
    }
    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }
    fn name(&self) -> &'static str {
        "tamper"
    }
}

fn tamper(f: impl Fn(&mut Mechanism) + Send + Sync + 'static) -> Arc<Tamper> {
    Arc::new(Tamper(Box::new(f)))
}

const CLIENT_IP: &str = "169.254.10.1";
const SERVER_IP: &str = "169.254.10.2";

fn client(ends: &Arc<FakeEnds>) -> Arc<WireguardClient> {
    Arc::new(WireguardClient::new(
        CLIENT_IP.parse().unwrap(),
        1500,
        ends.clone(),
    ))
}

fn server(ends: &Arc<FakeEnds>) -> Arc<WireguardServer> {
    Arc::new(WireguardServer::new(
        SERVER_IP.parse().unwrap(),
        1400,
        ends.clone(),
    ))
}

fn with_payload(id: &str, p: &str) -> NetworkServiceRequest {
    let mut req = request(id, "svc", &[]);
    req.connection.as_mut().unwrap().payload = p.into();
    req
}

/// A key in NSM's text form made of `byte`.
fn key(byte: u8) -> String {
    STANDARD.encode([byte; 32])
}

/// A request as the server side receives it: WIREGUARD selected with a valid client end.
fn offered(id: &str) -> NetworkServiceRequest {
    let mut req = with_payload(id, payload::IP);
    let mut m = MechanismType::Wireguard.mechanism();
    m.set_param("src_ip", CLIENT_IP);
    m.set_param("src_port", "51820");
    m.set_param("src_public_key", key(7));
    m.set_param("MTU", "1420");
    req.connection.as_mut().unwrap().mechanism = Some(m);
    req
}

fn params(m: &Mechanism) -> BTreeMap<&str, &str> {
    m.parameters
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn assert_invalid_naming(err: &NsmError, parameter: &str) {
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("WIREGUARD parameter {parameter} ")),
        "{err} does not name {parameter}"
    );
}

mod bad_input;
mod client;
mod round_trip;
mod server;
