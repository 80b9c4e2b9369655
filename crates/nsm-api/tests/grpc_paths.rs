//! Our generated servers answer on exactly the gRPC method paths a Go NSM v1.1.1 peer calls.
//!
//! A real tonic server on loopback serves trivial implementations of all four NSM services plus the health
//! service. Every path is called with a raw `tonic::client::Grpc` (no generated client, so the path string
//! is the only thing that routes the call); a wrong path would come back `Unimplemented`. Each handler
//! logs its name, so a path routed to the wrong method fails too.

// clippy.toml allows unwrap/expect in tests, but clippy does not count helper functions of an
// integration-test crate as tests; panicking is how these helpers fail a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use nsm_api::connection::monitor_connection_server::{MonitorConnection, MonitorConnectionServer};
use nsm_api::connection::{
    Connection, ConnectionEvent, ConnectionEventType, MonitorScopeSelector, PathSegment,
};
use nsm_api::networkservice::NetworkServiceRequest;
use nsm_api::networkservice::network_service_server::{NetworkService, NetworkServiceServer};
use nsm_api::registry::network_service_endpoint_registry_server::{
    NetworkServiceEndpointRegistry, NetworkServiceEndpointRegistryServer,
};
use nsm_api::registry::network_service_registry_server::{
    NetworkServiceRegistry, NetworkServiceRegistryServer,
};
use nsm_api::registry::{
    NetworkService as RegistryNetworkService, NetworkServiceEndpoint, NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse, NetworkServiceQuery, NetworkServiceResponse,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The nine method paths of NSM v1.1.1, written out as in /work/shared/wire-vectors/README.md, with
/// whether the response is a stream and the handler that must answer.
const V1_1_1_METHODS: [(&str, bool, &str); 9] = [
    (
        "/networkservice.NetworkService/Request",
        false,
        "ns.request",
    ),
    ("/networkservice.NetworkService/Close", false, "ns.close"),
    (
        "/connection.MonitorConnection/MonitorConnections",
        true,
        "monitor",
    ),
    (
        "/registry.NetworkServiceRegistry/Register",
        false,
        "nsr.register",
    ),
    ("/registry.NetworkServiceRegistry/Find", true, "nsr.find"),
    (
        "/registry.NetworkServiceRegistry/Unregister",
        false,
        "nsr.unregister",
    ),
    (
        "/registry.NetworkServiceEndpointRegistry/Register",
        false,
        "nser.register",
    ),
    (
        "/registry.NetworkServiceEndpointRegistry/Find",
        true,
        "nser.find",
    ),
    (
        "/registry.NetworkServiceEndpointRegistry/Unregister",
        false,
        "nser.unregister",
    ),
];

type OneItem<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

fn one_item<T: Send + 'static>(item: T) -> OneItem<T> {
    Box::pin(tokio_stream::once(Ok(item)))
}

/// Which handlers ran, in order.
#[derive(Clone, Default)]
struct CallLog(Arc<Mutex<Vec<&'static str>>>);

impl CallLog {
    fn record(&self, handler: &'static str) {
        self.0.lock().unwrap().push(handler);
    }
    fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Echoes what it got, so the test can tell the request was decoded as the right type.
struct Echo(CallLog);

#[tonic::async_trait]
impl NetworkService for Echo {
    async fn request(
        &self,
        request: Request<NetworkServiceRequest>,
    ) -> Result<Response<Connection>, Status> {
        self.0.record("ns.request");
        let mut conn = request.into_inner().connection.unwrap_or_default();
        conn.network_service_endpoint_name = "nse-1".to_string();
        Ok(Response::new(conn))
    }

    async fn close(&self, _request: Request<Connection>) -> Result<Response<()>, Status> {
        self.0.record("ns.close");
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl MonitorConnection for Echo {
    type MonitorConnectionsStream = OneItem<ConnectionEvent>;

    async fn monitor_connections(
        &self,
        request: Request<MonitorScopeSelector>,
    ) -> Result<Response<Self::MonitorConnectionsStream>, Status> {
        self.0.record("monitor");
        let selector = request.into_inner();
        let conn = Connection {
            id: "conn-1".to_string(),
            path: Some(nsm_api::Path {
                index: 0,
                path_segments: selector.path_segments,
            }),
            ..Default::default()
        };
        Ok(Response::new(one_item(ConnectionEvent {
            r#type: ConnectionEventType::InitialStateTransfer as i32,
            connections: [("conn-1".to_string(), conn)].into(),
        })))
    }
}

#[tonic::async_trait]
impl NetworkServiceRegistry for Echo {
    type FindStream = OneItem<NetworkServiceResponse>;

    async fn register(
        &self,
        request: Request<RegistryNetworkService>,
    ) -> Result<Response<RegistryNetworkService>, Status> {
        self.0.record("nsr.register");
        Ok(Response::new(request.into_inner()))
    }

    async fn find(
        &self,
        request: Request<NetworkServiceQuery>,
    ) -> Result<Response<Self::FindStream>, Status> {
        self.0.record("nsr.find");
        Ok(Response::new(one_item(NetworkServiceResponse {
            network_service: request.into_inner().network_service,
            deleted: false,
        })))
    }

    async fn unregister(
        &self,
        _request: Request<RegistryNetworkService>,
    ) -> Result<Response<()>, Status> {
        self.0.record("nsr.unregister");
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl NetworkServiceEndpointRegistry for Echo {
    type FindStream = OneItem<NetworkServiceEndpointResponse>;

    async fn register(
        &self,
        request: Request<NetworkServiceEndpoint>,
    ) -> Result<Response<NetworkServiceEndpoint>, Status> {
        self.0.record("nser.register");
        let mut nse = request.into_inner();
        nse.url = "tcp://10.0.0.1:5001".to_string();
        Ok(Response::new(nse))
    }

    async fn find(
        &self,
        request: Request<NetworkServiceEndpointQuery>,
    ) -> Result<Response<Self::FindStream>, Status> {
        self.0.record("nser.find");
        Ok(Response::new(one_item(NetworkServiceEndpointResponse {
            network_service_endpoint: request.into_inner().network_service_endpoint,
            deleted: true,
        })))
    }

    async fn unregister(
        &self,
        _request: Request<NetworkServiceEndpoint>,
    ) -> Result<Response<()>, Status> {
        self.0.record("nser.unregister");
        Ok(Response::new(()))
    }
}

/// Starts the server on 127.0.0.1:0 and returns a channel to it plus the handler log.
async fn start_server() -> (Channel, CallLog) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = CallLog::default();
    let health = nsm_api::health::health_service(&nsm_api::services::ALL).await;
    let router = Server::builder()
        .add_service(NetworkServiceServer::new(Echo(log.clone())))
        .add_service(MonitorConnectionServer::new(Echo(log.clone())))
        .add_service(NetworkServiceRegistryServer::new(Echo(log.clone())))
        .add_service(NetworkServiceEndpointRegistryServer::new(Echo(log.clone())))
        .add_service(health);
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (channel, log)
}

async fn unary<Req, Resp>(channel: &Channel, path: &'static str, req: Req) -> Result<Resp, Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    let response = grpc.unary(Request::new(req), path, codec).await?;
    Ok(response.into_inner())
}

async fn server_streaming<Req, Resp>(
    channel: &Channel,
    path: &'static str,
    req: Req,
) -> Result<Vec<Resp>, Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    let mut stream = grpc
        .server_streaming(Request::new(req), path, codec)
        .await?
        .into_inner();
    let mut items = Vec::new();
    while let Some(item) = stream.message().await? {
        items.push(item);
    }
    Ok(items)
}

fn nse(name: &str) -> NetworkServiceEndpoint {
    NetworkServiceEndpoint {
        name: name.to_string(),
        network_service_names: vec!["icmp-responder".to_string()],
        ..Default::default()
    }
}

fn ns(name: &str) -> RegistryNetworkService {
    RegistryNetworkService {
        name: name.to_string(),
        payload: "ETHERNET".to_string(),
        matches: Vec::new(),
    }
}

/// Calls `path` with the request and response types the contract gives it and checks the echoed answer.
async fn call_and_check(channel: &Channel, path: &'static str) -> Result<(), Status> {
    let conn = Connection {
        id: "conn-1".to_string(),
        network_service: "icmp-responder".to_string(),
        ..Default::default()
    };
    match path {
        "/networkservice.NetworkService/Request" => {
            let req = NetworkServiceRequest {
                connection: Some(conn.clone()),
                mechanism_preferences: vec![nsm_api::mechanisms::MechanismType::Kernel.mechanism()],
            };
            let got: Connection = unary(channel, path, req).await?;
            assert_eq!(got.id, "conn-1", "{path}: echoed connection");
            assert_eq!(got.network_service_endpoint_name, "nse-1", "{path}");
        }
        "/networkservice.NetworkService/Close" => {
            unary::<Connection, ()>(channel, path, conn).await?;
        }
        "/connection.MonitorConnection/MonitorConnections" => {
            let selector = MonitorScopeSelector {
                path_segments: vec![PathSegment {
                    name: "nsmgr-1".to_string(),
                    ..Default::default()
                }],
            };
            let events: Vec<ConnectionEvent> = server_streaming(channel, path, selector).await?;
            assert_eq!(events.len(), 1, "{path}: one event, then end of stream");
            assert_eq!(
                events[0].r#type(),
                ConnectionEventType::InitialStateTransfer
            );
            let segments = &events[0].connections["conn-1"]
                .path
                .as_ref()
                .unwrap()
                .path_segments;
            assert_eq!(segments[0].name, "nsmgr-1", "{path}: echoed selector");
        }
        "/registry.NetworkServiceRegistry/Register" => {
            let got: RegistryNetworkService = unary(channel, path, ns("icmp-responder")).await?;
            assert_eq!(got, ns("icmp-responder"), "{path}: echoed service");
        }
        "/registry.NetworkServiceRegistry/Find" => {
            let query = NetworkServiceQuery {
                network_service: Some(ns("icmp")),
                watch: false,
            };
            let got: Vec<NetworkServiceResponse> = server_streaming(channel, path, query).await?;
            assert_eq!(got.len(), 1, "{path}: one response, then end of stream");
            assert_eq!(got[0].network_service, Some(ns("icmp")), "{path}");
        }
        "/registry.NetworkServiceRegistry/Unregister" => {
            unary::<_, ()>(channel, path, ns("icmp-responder")).await?;
        }
        "/registry.NetworkServiceEndpointRegistry/Register" => {
            let got: NetworkServiceEndpoint = unary(channel, path, nse("nse-1")).await?;
            assert_eq!(got.name, "nse-1", "{path}: echoed endpoint");
            assert_eq!(got.url, "tcp://10.0.0.1:5001", "{path}");
        }
        "/registry.NetworkServiceEndpointRegistry/Find" => {
            let query = NetworkServiceEndpointQuery {
                network_service_endpoint: Some(nse("nse-1")),
                watch: true,
            };
            let got: Vec<NetworkServiceEndpointResponse> =
                server_streaming(channel, path, query).await?;
            assert_eq!(got.len(), 1, "{path}: one response, then end of stream");
            assert_eq!(
                got[0].network_service_endpoint,
                Some(nse("nse-1")),
                "{path}"
            );
            assert!(got[0].deleted, "{path}: the deleted flag crosses the wire");
        }
        "/registry.NetworkServiceEndpointRegistry/Unregister" => {
            unary::<_, ()>(channel, path, nse("nse-1")).await?;
        }
        other => panic!("{other} is not an NSM v1.1.1 method path"),
    }
    Ok(())
}

#[test]
fn method_list_matches_the_v1_1_1_contract() {
    let ours: Vec<(&str, bool)> = nsm_api::services::METHODS.to_vec();
    let contract: Vec<(&str, bool)> = V1_1_1_METHODS.iter().map(|(p, s, _)| (*p, *s)).collect();
    assert_eq!(
        ours, contract,
        "nsm_api::services::METHODS vs the v1.1.1 paths"
    );
    for (path, _, _) in V1_1_1_METHODS {
        let service = path[1..].split('/').next().unwrap();
        assert!(
            nsm_api::services::ALL.contains(&service),
            "{service} (from {path}) is missing from services::ALL"
        );
    }
}

#[tokio::test]
async fn every_method_path_reaches_its_handler() {
    let (channel, log) = start_server().await;
    for (path, streaming) in nsm_api::services::METHODS {
        let (_, contract_streaming, handler) = V1_1_1_METHODS
            .iter()
            .find(|(p, _, _)| *p == path)
            .unwrap_or_else(|| panic!("{path} is not an NSM v1.1.1 method path"));
        assert_eq!(streaming, *contract_streaming, "{path}: streaming flag");
        if let Err(status) = call_and_check(&channel, path).await {
            panic!("{path}: call failed: {status:?}");
        }
        assert_eq!(log.take(), [*handler], "{path}: handled by");
    }
}

#[tokio::test]
async fn wrong_paths_are_unimplemented() {
    let (channel, log) = start_server().await;
    // A made-up method, a made-up service, and the classic mistake of using the Go package name
    // (`networkservice`) as the proto package of the monitor service (it is `connection`).
    for path in [
        "/networkservice.NetworkService/Bogus",
        "/networkservice.Bogus/Request",
        "/networkservice.MonitorConnection/MonitorConnections",
        "/registry.NetworkServiceEndpoint/Find",
    ] {
        let status = unary::<Connection, Connection>(&channel, path, Connection::default())
            .await
            .expect_err(path);
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
    }
    assert!(log.take().is_empty(), "no handler may run for a wrong path");
}

#[tokio::test]
async fn health_reports_every_nsm_service_serving() {
    let (channel, _log) = start_server().await;
    let mut health = HealthClient::new(channel);
    let mut names: Vec<&str> = nsm_api::services::ALL.to_vec();
    names.push(""); // the whole server
    for service in names {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap_or_else(|s| panic!("health check of {service:?}: {s:?}"))
            .into_inner();
        assert_eq!(
            response.status(),
            ServingStatus::Serving,
            "health of {service:?}"
        );
    }
    let status = health
        .check(HealthCheckRequest {
            service: "networkservice.Bogus".to_string(),
        })
        .await
        .expect_err("an unknown service has no health status");
    assert_eq!(status.code(), Code::NotFound);
}
