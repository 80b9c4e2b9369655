//! `dnscontext` client (NSC): points the workload's DNS at a local CoreDNS configured from the
//! connections' DNS contexts.
//!
//! **Request**: after the rest of the chain succeeds, stores the returned connection's DNS configs
//! under its id and rewrites `<dir>/Corefile` (see [`render_corefile`](super::render_corefile)) and
//! `<dir>/resolv.conf` (`nameserver 127.0.0.1` first, other lines of an existing file kept).
//! **Close**: forgets the connection's configs and rewrites the Corefile, then closes downstream.
//! **State**: the configs of each connection. File errors are logged, not returned: the connection
//! itself works, only name resolution through it does not (Go behaves the same).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use nsm_api::connectioncontext::DnsConfig;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::{Ctx, NetworkServiceServer, Next, Result};
use tokio::sync::Mutex;

use super::render_corefile;

const LOCALHOST: &str = "127.0.0.1";

/// Writes a Corefile and resolv.conf into a directory from the connections' DNS configs.
pub struct DnsContextClient {
    dir: PathBuf,
    default_nameserver: Option<IpAddr>,
    /// Connection id → its configs. A tokio mutex: held across the file writes so they stay ordered.
    configs: Mutex<BTreeMap<String, Vec<DnsConfig>>>,
}

impl DnsContextClient {
    /// Writes `Corefile` and `resolv.conf` into `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            default_nameserver: None,
            configs: Mutex::new(BTreeMap::new()),
        }
    }

    /// Forwards names no connection claims (the `.` block) to `ip`.
    pub fn with_default_nameserver(mut self, ip: IpAddr) -> Self {
        self.default_nameserver = Some(ip);
        self
    }

    /// Path of the Corefile written.
    pub fn corefile_path(&self) -> PathBuf {
        self.dir.join("Corefile")
    }

    /// Path of the resolv.conf written.
    pub fn resolv_conf_path(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    async fn write(&self, configs: &BTreeMap<String, Vec<DnsConfig>>) {
        let default = DnsConfig {
            dns_server_ips: self
                .default_nameserver
                .iter()
                .map(ToString::to_string)
                .collect(),
            search_domains: vec![],
        };
        let corefile = render_corefile(std::iter::once(&default).chain(configs.values().flatten()));
        if let Err(e) = self.write_files(&corefile).await {
            tracing::warn!(dir = %self.dir.display(), error = %e, "dnscontext: cannot write DNS files");
        }
    }

    async fn write_files(&self, corefile: &str) -> std::io::Result<()> {
        tokio::fs::create_dir_all(&self.dir).await?;
        tokio::fs::write(self.corefile_path(), corefile).await?;
        let resolv = self.resolv_conf_path();
        let old = read_or_empty(&resolv).await?;
        tokio::fs::write(&resolv, with_local_nameserver(&old)).await
    }
}

async fn read_or_empty(path: &Path) -> std::io::Result<String> {
    match tokio::fs::read_to_string(path).await {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// `resolv.conf` with `nameserver 127.0.0.1` as the first nameserver, other lines kept in order.
fn with_local_nameserver(old: &str) -> String {
    let first_ns = old
        .lines()
        .find_map(|l| l.trim().strip_prefix("nameserver").map(str::trim));
    let mut out = String::new();
    if first_ns != Some(LOCALHOST) {
        out.push_str(&format!("nameserver {LOCALHOST}\n"));
    }
    for line in old.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[async_trait]
impl NetworkServiceServer for DnsContextClient {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let conn = next.request(ctx, request).await?;
        let configs = conn
            .context
            .as_ref()
            .and_then(|c| c.dns_context.as_ref())
            .map(|d| d.configs.clone())
            .unwrap_or_default();
        if !configs.is_empty() {
            let mut all = self.configs.lock().await;
            all.insert(conn.id.clone(), configs);
            self.write(&all).await;
        }
        Ok(conn)
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        {
            let mut all = self.configs.lock().await;
            if all.remove(&conn.id).is_some() {
                self.write(&all).await;
            }
        }
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        "dnscontext"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::discover::testing::{chain, ctx, request};
    use crate::dnscontext::DnsContextServer;

    fn cfg(ip: &str, domain: &str) -> DnsConfig {
        DnsConfig {
            dns_server_ips: vec![ip.into()],
            search_domains: vec![domain.into()],
        }
    }

    #[tokio::test]
    async fn writes_the_corefile_of_the_go_dns_use_case_and_cleans_up_on_close() {
        let dir = std::env::temp_dir().join(format!("nsm-dnscontext-{}", uuid::Uuid::new_v4()));
        tokio::fs::create_dir_all(&dir).await.unwrap();
        tokio::fs::write(
            dir.join("resolv.conf"),
            "nameserver 8.8.4.4\nsearch example.com\n",
        )
        .await
        .unwrap();
        let client = Arc::new(DnsContextClient::new(&dir));
        let server = Arc::new(DnsContextServer::new(vec![
            cfg("8.8.8.8", "my.domain1"),
            cfg("8.8.4.4", "my.domain1"),
        ]));
        let c = chain(vec![client.clone(), server]);
        let mut ctx = ctx();
        let conn = c
            .run_request(&mut ctx, request("a", "svc", &[]))
            .await
            .unwrap();

        let corefile = tokio::fs::read_to_string(client.corefile_path())
            .await
            .unwrap();
        assert_eq!(
            corefile,
            ". {\n\tlog\n\treload\n}\nmy.domain1 {\n\tfanout . 8.8.4.4 8.8.8.8\n\tcache\n\tlog\n}\n"
        );
        let resolv = tokio::fs::read_to_string(client.resolv_conf_path())
            .await
            .unwrap();
        assert_eq!(
            resolv,
            "nameserver 127.0.0.1\nnameserver 8.8.4.4\nsearch example.com\n"
        );

        // A refresh does not add 127.0.0.1 twice.
        let req = NetworkServiceRequest {
            connection: Some(conn.clone()),
            ..Default::default()
        };
        c.run_request(&mut ctx, req).await.unwrap();
        let resolv = tokio::fs::read_to_string(client.resolv_conf_path())
            .await
            .unwrap();
        assert_eq!(resolv.matches(LOCALHOST).count(), 1);

        c.run_close(&mut ctx, conn).await.unwrap();
        let corefile = tokio::fs::read_to_string(client.corefile_path())
            .await
            .unwrap();
        assert_eq!(corefile, ". {\n\tlog\n\treload\n}\n");
        tokio::fs::remove_dir_all(&dir).await.unwrap();
    }
}
