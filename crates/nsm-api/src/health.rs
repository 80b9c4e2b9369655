//! The standard `grpc.health.v1.Health` service, as every Go NSM server registers it.

use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};

/// Builds a health service that reports SERVING for each of `services` and for the whole server (`""`).
///
/// Go registers the names of the NSM services a process implements (see [`crate::services`]); pass the
/// same names so health probes written for Go components keep working.
pub async fn health_service(services: &[&str]) -> HealthServer<impl Health> {
    let (reporter, server) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    for name in services {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    server
}
