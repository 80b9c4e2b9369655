//! Fully qualified gRPC service names and method paths of NSM v1.1.1.

/// `networkservice.NetworkService`.
pub const NETWORK_SERVICE: &str = "networkservice.NetworkService";
/// `connection.MonitorConnection`.
pub const MONITOR_CONNECTION: &str = "connection.MonitorConnection";
/// `registry.NetworkServiceRegistry`.
pub const NETWORK_SERVICE_REGISTRY: &str = "registry.NetworkServiceRegistry";
/// `registry.NetworkServiceEndpointRegistry`.
pub const NETWORK_SERVICE_ENDPOINT_REGISTRY: &str = "registry.NetworkServiceEndpointRegistry";

/// Every NSM service name, in the order Go registers them with the health service.
pub const ALL: [&str; 4] = [
    NETWORK_SERVICE,
    MONITOR_CONNECTION,
    NETWORK_SERVICE_REGISTRY,
    NETWORK_SERVICE_ENDPOINT_REGISTRY,
];

/// Every gRPC method path NSM v1.1.1 defines, with whether the response is a stream.
pub const METHODS: [(&str, bool); 9] = [
    ("/networkservice.NetworkService/Request", false),
    ("/networkservice.NetworkService/Close", false),
    ("/connection.MonitorConnection/MonitorConnections", true),
    ("/registry.NetworkServiceRegistry/Register", false),
    ("/registry.NetworkServiceRegistry/Find", true),
    ("/registry.NetworkServiceRegistry/Unregister", false),
    ("/registry.NetworkServiceEndpointRegistry/Register", false),
    ("/registry.NetworkServiceEndpointRegistry/Find", true),
    ("/registry.NetworkServiceEndpointRegistry/Unregister", false),
];
