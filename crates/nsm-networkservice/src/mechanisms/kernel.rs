//! `mechanisms/kernel`: the KERNEL mechanism's control-plane defaults (no kernel calls here).
//!
//! **Client, Request**: makes sure the request offers KERNEL: existing KERNEL preferences get this
//! process's network namespace URL and, if they have none, an interface name; without one, a
//! `LOCAL/KERNEL` preference is appended. **Server, Request**: when KERNEL is the selected mechanism,
//! checks the interface name (at most 15 bytes), fills the interface name if missing and sets the netns
//! URL to this process's namespace. **Close**: passes through. **State**: none.
//!
//! The default interface name is the network service name cut to 10 bytes, `-`, the connection id, the
//! whole cut to 15 bytes (Go `kernel.getNameFromConnection`).

use async_trait::async_trait;
use nsm_api::mechanisms::{MechanismType, kernel};
use nsm_api::{Connection, Mechanism, NetworkServiceRequest};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};

const NAME: &str = "kernel";

/// The netns of the calling thread; `sendfd` turns it into an `inode://` URL for the wire.
pub const NETNS_URL: &str = "file:///proc/thread-self/ns/net";

/// Client side: offers a KERNEL mechanism.
pub struct KernelClient {
    interface_name: Option<String>,
    netns_url: String,
}

/// Server side (endpoint): completes the selected KERNEL mechanism.
pub struct KernelServer {
    interface_name: Option<String>,
    netns_url: String,
}

impl KernelClient {
    /// Offers KERNEL with `interface_name` (cut to 15 bytes), or a name derived from the connection.
    pub fn new(interface_name: Option<String>) -> Self {
        Self {
            interface_name: interface_name.map(|n| limit_name(&n)),
            netns_url: NETNS_URL.to_string(),
        }
    }

    /// Offers `url` as the client's network namespace instead of [`NETNS_URL`] — a process without fd
    /// passing names its namespace as `file:///proc/<pid>/ns/net`, which peers in the same PID
    /// namespace can open.
    pub fn with_netns_url(mut self, url: impl Into<String>) -> Self {
        self.netns_url = url.into();
        self
    }

    fn name_for(&self, conn: &Connection) -> String {
        self.interface_name
            .clone()
            .unwrap_or_else(|| default_interface_name(conn))
    }
}

impl KernelServer {
    /// Completes KERNEL with `interface_name` (cut to 15 bytes), or keeps the requested name, or derives
    /// one from the connection.
    pub fn new(interface_name: Option<String>) -> Self {
        Self {
            interface_name: interface_name.map(|n| limit_name(&n)),
            netns_url: NETNS_URL.to_string(),
        }
    }

    /// Names `url` as the endpoint's network namespace instead of [`NETNS_URL`] (an endpoint process
    /// without fd passing sends `file:///proc/<pid>/ns/net`, like [`KernelClient::with_netns_url`]).
    pub fn with_netns_url(mut self, url: impl Into<String>) -> Self {
        self.netns_url = url.into();
        self
    }
}

/// The name Go derives from a connection: `<service, 10 bytes>-<id>`, cut to 15 bytes.
pub fn default_interface_name(conn: &Connection) -> String {
    let service = cut(&conn.network_service, kernel::LINUX_IF_MAX_LENGTH - 5);
    limit_name(&format!("{service}-{}", conn.id))
}

fn limit_name(name: &str) -> String {
    cut(name, kernel::LINUX_IF_MAX_LENGTH).to_string()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Why `name` cannot be a Linux interface name, if it cannot.
fn invalid_interface_name(name: &str) -> Option<&'static str> {
    if name.len() > kernel::LINUX_IF_MAX_LENGTH {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    }
}

#[async_trait]
impl NetworkServiceServer for KernelClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let conn = request.connection.clone().unwrap_or_default();
        let mut offered = false;
        for m in &mut request.mechanism_preferences {
            if m.is(MechanismType::Kernel) {
                if m.interface_name().is_none() {
                    m.set_param(kernel::INTERFACE_NAME, self.name_for(&conn));
                }
                m.set_param(kernel::NETNS_URL, self.netns_url.clone());
                offered = true;
            }
        }
        if !offered {
            let mut m: Mechanism = MechanismType::Kernel.mechanism();
            m.set_param(kernel::INTERFACE_NAME, self.name_for(&conn));
            m.set_param(kernel::NETNS_URL, self.netns_url.clone());
            request.mechanism_preferences.push(m);
        }
        next.request(ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[async_trait]
impl NetworkServiceServer for KernelServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let conn = request.connection.get_or_insert_default();
        let default_name = default_interface_name(conn);
        if let Some(m) = conn
            .mechanism
            .as_mut()
            .filter(|m| m.is(MechanismType::Kernel))
        {
            let name = match (&self.interface_name, m.interface_name()) {
                (Some(configured), _) => configured.clone(),
                (None, Some(requested)) => requested.to_string(),
                (None, None) => default_name,
            };
            if let Some(reason) = invalid_interface_name(&name) {
                return Err(NsmError::invalid(
                    NAME,
                    format!("interface name {name:?}: {reason}"),
                ));
            }
            m.set_param(kernel::INTERFACE_NAME, name);
            m.set_param(kernel::NETNS_URL, self.netns_url.clone());
        }
        next.request(ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tonic::Code;

    use super::*;
    use crate::discover::testing::{Probe, chain, ctx, request};

    #[tokio::test]
    async fn client_appends_kernel_with_a_derived_name() {
        let probe = Probe::ok();
        let c = chain(vec![Arc::new(KernelClient::new(None)), probe.clone()]);
        c.run_request(&mut ctx(), request("1234567890", "my-network-service", &[]))
            .await
            .unwrap();
        let prefs = probe.last().request.mechanism_preferences;
        assert_eq!(prefs.len(), 1);
        assert_eq!(prefs[0].cls, "LOCAL");
        assert_eq!(prefs[0].r#type, "KERNEL");
        assert_eq!(
            prefs[0].interface_name(),
            Some("my-network-1234"),
            "10 + 1 + 4"
        );
        assert_eq!(prefs[0].inode_url(), Some(NETNS_URL));
    }

    #[tokio::test]
    async fn client_completes_an_existing_kernel_preference() {
        let probe = Probe::ok();
        let c = chain(vec![
            Arc::new(KernelClient::new(Some("nsm-interface-too-long".into()))),
            probe.clone(),
        ]);
        let mut req = request("1", "svc", &[]);
        req.mechanism_preferences = vec![MechanismType::Kernel.mechanism()];
        c.run_request(&mut ctx(), req).await.unwrap();
        let prefs = probe.last().request.mechanism_preferences;
        assert_eq!(prefs.len(), 1);
        assert_eq!(prefs[0].interface_name(), Some("nsm-interface-t"));
    }

    #[test]
    fn default_name_is_cut_on_character_boundaries() {
        let conn = Connection {
            id: "c".into(),
            network_service: "ééééééé".into(),
            ..Default::default()
        };
        assert_eq!(default_interface_name(&conn), "ééééé-c");
        let conn = Connection {
            id: "x".into(),
            network_service: "icmp".into(),
            ..Default::default()
        };
        assert_eq!(default_interface_name(&conn), "icmp-x");
    }

    #[tokio::test]
    async fn server_fills_defaults_and_rejects_long_names() {
        let probe = Probe::ok();
        let c = chain(vec![Arc::new(KernelServer::new(None)), probe.clone()]);
        let mut req = request("id1", "icmp", &[]);
        req.connection.as_mut().unwrap().mechanism = Some(MechanismType::Kernel.mechanism());
        let conn = c.run_request(&mut ctx(), req.clone()).await.unwrap();
        let m = conn.mechanism.unwrap();
        assert_eq!(m.interface_name(), Some("icmp-id1"));
        assert_eq!(m.inode_url(), Some(NETNS_URL));

        req.connection
            .as_mut()
            .unwrap()
            .mechanism
            .as_mut()
            .unwrap()
            .set_param(kernel::INTERFACE_NAME, "sixteen-bytes-xx");
        let err = c.run_request(&mut ctx(), req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.to_string()
                .contains("\"sixteen-bytes-xx\": longer than 15 bytes"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn server_ignores_other_mechanisms() {
        let c = chain(vec![Arc::new(KernelServer::new(None))]);
        let mut req = request("id1", "icmp", &[]);
        req.connection.as_mut().unwrap().mechanism = Some(MechanismType::Memif.mechanism());
        let conn = c.run_request(&mut ctx(), req).await.unwrap();
        assert!(conn.mechanism.unwrap().parameters.is_empty());
    }
}
