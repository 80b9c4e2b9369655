//! `excludedprefixes`: tells IPAM which address ranges are taken by the cluster.
//!
//! **Request**: appends the prefixes listed in a YAML file (`prefixes: [10.96.0.0/12, …]`, by default
//! [`DEFAULT_PATH`], typically a mounted ConfigMap) to `ip_context.excluded_prefixes`, dropping
//! duplicates and keeping the request's own entries first. The file's prefixes are normalised as the Go
//! sdk's prefix pool does: host bits cleared, overlapping and adjacent ranges merged, IPv4 before IPv6
//! in address order.
//!
//! The file is checked at most once per [`RECHECK_INTERVAL`] (measured on the context's clock): one
//! `stat`, and a re-read only when its modification time or size changed; Requests in between use the
//! last list without touching the file system. So an edit applies within a second, without a watcher
//! task. A missing file means no
//! prefixes; an unreadable or malformed file is logged and the last good list is kept.
//!
//! **Close**: passes through. **State**: the last good list. No background events.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use ipnet::IpNet;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::{Ctx, NetworkServiceServer, Next, Result};
use parking_lot::Mutex;
use tokio::time::Instant;

const ELEMENT: &str = "excludedprefixes";

/// How long a look at the file is trusted before the next Request checks it again.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Where the NSMgr reads excluded prefixes from unless told otherwise.
pub const DEFAULT_PATH: &str = "/var/lib/networkservicemesh/config/excluded_prefixes.yaml";

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

#[derive(Debug, Default)]
struct Loaded {
    /// `None` until the first look, `Some(None)` while the file is missing.
    stamp: Option<Option<Stamp>>,
    /// When the file was last looked at (on the context's clock).
    checked_at: Option<Instant>,
    prefixes: Arc<Vec<String>>,
}

#[derive(serde::Deserialize)]
struct ConfigFile {
    #[serde(default)]
    prefixes: Option<Vec<String>>,
}

/// Parses the file's text into the normalised prefix list.
fn parse(text: &str) -> std::result::Result<Vec<String>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let file: ConfigFile = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
    let nets = file
        .prefixes
        .unwrap_or_default()
        .iter()
        .map(|p| {
            p.trim()
                .parse::<IpNet>()
                .map_err(|e| format!("{p:?} is not a prefix: {e}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(IpNet::aggregate(&nets)
        .iter()
        .map(ToString::to_string)
        .collect())
}

/// `excludedprefixes` for server chains (NSMgr).
#[derive(Debug)]
pub struct ExcludedPrefixesServer {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl Default for ExcludedPrefixesServer {
    fn default() -> Self {
        Self::new()
    }
}

impl ExcludedPrefixesServer {
    /// An element reading [`DEFAULT_PATH`].
    pub fn new() -> Self {
        Self::with_config_path(DEFAULT_PATH)
    }

    /// An element reading the YAML file at `path`.
    pub fn with_config_path(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            loaded: Mutex::new(Loaded::default()),
        }
    }

    /// The prefixes of the current file version: the last list if the file was looked at less than
    /// [`RECHECK_INTERVAL`] ago, otherwise after a `stat` (and a re-read if it changed).
    async fn prefixes(&self, now: Instant) -> Arc<Vec<String>> {
        {
            let mut loaded = self.loaded.lock();
            let recent = loaded
                .checked_at
                .is_some_and(|at| now.saturating_duration_since(at) < RECHECK_INTERVAL);
            // (Until the first look has finished, every Request looks itself.)
            if recent && loaded.stamp.is_some() {
                return loaded.prefixes.clone();
            }
            // Concurrent Requests in the same second use the last list rather than stat again.
            loaded.checked_at = Some(now);
        }
        let stamp = match tokio::fs::metadata(&self.path).await {
            Ok(m) => Some(Stamp {
                modified: m.modified().ok(),
                len: m.len(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(element = ELEMENT, path = %self.path.display(), error = %e, "cannot stat the prefixes file; keeping the last list");
                return self.loaded.lock().prefixes.clone();
            }
        };
        {
            let loaded = self.loaded.lock();
            if loaded.stamp == Some(stamp) {
                return loaded.prefixes.clone();
            }
        }
        let parsed = match stamp {
            None => Ok(Vec::new()),
            Some(_) => read(&self.path).await,
        };
        let mut loaded = self.loaded.lock();
        loaded.stamp = Some(stamp);
        match parsed {
            Ok(prefixes) => {
                tracing::info!(element = ELEMENT, path = %self.path.display(), ?prefixes, "excluded prefixes loaded");
                loaded.prefixes = Arc::new(prefixes);
            }
            Err(e) => {
                tracing::warn!(element = ELEMENT, path = %self.path.display(), error = %e, "bad prefixes file; keeping the last list");
            }
        }
        loaded.prefixes.clone()
    }
}

async fn read(path: &Path) -> std::result::Result<Vec<String>, String> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| e.to_string())?;
    parse(&text)
}

#[async_trait]
impl NetworkServiceServer for ExcludedPrefixesServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        mut request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        let prefixes = self.prefixes(ctx.clock().instant()).await;
        let ip = request
            .connection
            .get_or_insert_with(Default::default)
            .ip_context_mut();
        for p in prefixes.iter() {
            if !ip.excluded_prefixes.contains(p) {
                ip.excluded_prefixes.push(p.clone());
            }
        }
        dedup_keep_first(&mut ip.excluded_prefixes);
        next.request(ctx, request).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        next.close(ctx, conn).await
    }

    fn name(&self) -> &'static str {
        ELEMENT
    }
}

/// Removes later duplicates, keeping order.
fn dedup_keep_first(list: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    list.retain(|p| seen.insert(p.clone()));
}

#[cfg(test)]
mod tests {
    use nsm_core::{Chain, Clock};

    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir =
                std::env::temp_dir().join(format!("nsm-excludedprefixes-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
        fn file(&self) -> PathBuf {
            self.0.join("excluded_prefixes.yaml")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn yaml(prefixes: &[&str]) -> String {
        let mut s = "prefixes:\n".to_string();
        for p in prefixes {
            s.push_str(&format!("- {p}\n"));
        }
        s
    }

    async fn excluded(chain: &Chain, given: &[&str]) -> Vec<String> {
        let mut req = NetworkServiceRequest::default();
        req.connection
            .get_or_insert_with(Default::default)
            .ip_context_mut()
            .excluded_prefixes = given.iter().map(|s| s.to_string()).collect();
        let conn = chain
            .run_request(&mut Ctx::new(Clock::system()), req)
            .await
            .unwrap();
        conn.context
            .and_then(|c| c.ip_context)
            .map(|ip| ip.excluded_prefixes)
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn file_prefixes_are_appended_without_duplicates() {
        // Go's TestUniqueRequestPrefixes.
        let dir = TempDir::new();
        let file = [
            "172.16.1.0/24",
            "10.32.0.0/12",
            "10.96.0.0/12",
            "10.20.128.0/17",
            "10.20.64.0/18",
            "10.20.8.0/21",
            "10.20.4.0/22",
        ];
        std::fs::write(dir.file(), yaml(&file)).unwrap();
        let chain = Chain::new(
            "t",
            vec![Arc::new(ExcludedPrefixesServer::with_config_path(
                dir.file(),
            ))],
        );
        let given = [
            "100.1.1.0/13",
            "10.32.0.0/12",
            "10.96.0.0/12",
            "10.20.0.0/24",
            "10.20.128.0/17",
            "10.20.64.0/18",
            "10.20.16.0/20",
            "10.20.2.0/23",
        ];
        let want = [
            "100.1.1.0/13",
            "10.32.0.0/12",
            "10.96.0.0/12",
            "10.20.0.0/24",
            "10.20.128.0/17",
            "10.20.64.0/18",
            "10.20.16.0/20",
            "10.20.2.0/23",
            "10.20.4.0/22",
            "10.20.8.0/21",
            "172.16.1.0/24",
        ];
        assert_eq!(excluded(&chain, &given).await, want);
    }

    /// Lets the next Request look at the file again.
    async fn after_recheck_interval() {
        tokio::time::advance(RECHECK_INTERVAL).await;
    }

    #[tokio::test(start_paused = true)]
    async fn file_appearing_changing_breaking_and_vanishing() {
        let dir = TempDir::new();
        let chain = Chain::new(
            "t",
            vec![Arc::new(ExcludedPrefixesServer::with_config_path(
                dir.file(),
            ))],
        );
        assert!(excluded(&chain, &[]).await.is_empty(), "no file yet");

        after_recheck_interval().await;
        std::fs::write(dir.file(), yaml(&["10.80.0.0/12", "172.16.1.0/24"])).unwrap();
        assert_eq!(
            excluded(&chain, &[]).await,
            ["10.80.0.0/12", "172.16.1.0/24"]
        );

        after_recheck_interval().await;
        std::fs::write(dir.file(), "prefixes: [10.96.0.0/12, fd00::/8]\n").unwrap();
        assert_eq!(excluded(&chain, &[]).await, ["10.96.0.0/12", "fd00::/8"]);

        after_recheck_interval().await;
        std::fs::write(
            dir.file(),
            "prefixes: [not-a-prefix, also bad, 1.2.3.4/40]\n",
        )
        .unwrap();
        assert_eq!(
            excluded(&chain, &[]).await,
            ["10.96.0.0/12", "fd00::/8"],
            "bad file keeps the last list"
        );

        after_recheck_interval().await;
        std::fs::remove_file(dir.file()).unwrap();
        assert!(
            excluded(&chain, &[]).await.is_empty(),
            "removed file means no prefixes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_file_is_looked_at_at_most_once_per_interval() {
        let dir = TempDir::new();
        let chain = Chain::new(
            "t",
            vec![Arc::new(ExcludedPrefixesServer::with_config_path(
                dir.file(),
            ))],
        );
        std::fs::write(dir.file(), yaml(&["10.80.0.0/12"])).unwrap();
        assert_eq!(excluded(&chain, &[]).await, ["10.80.0.0/12"]);
        std::fs::write(dir.file(), yaml(&["10.96.0.0/12", "10.200.0.0/16"])).unwrap();
        tokio::time::advance(RECHECK_INTERVAL / 2).await;
        assert_eq!(
            excluded(&chain, &[]).await,
            ["10.80.0.0/12"],
            "within the interval the last list is used"
        );
        tokio::time::advance(RECHECK_INTERVAL / 2).await;
        assert_eq!(
            excluded(&chain, &[]).await,
            ["10.96.0.0/12", "10.200.0.0/16"],
            "the edit applies once the interval has passed"
        );
    }

    #[test]
    fn parsing_normalises_like_the_go_prefix_pool() {
        assert_eq!(parse("").unwrap(), Vec::<String>::new());
        assert_eq!(parse("prefixes:\n").unwrap(), Vec::<String>::new());
        assert_eq!(
            parse("prefixes: [10.0.0.5/24, 10.0.1.0/24, \"::1/128\", 10.0.0.0/25]").unwrap(),
            ["10.0.0.0/23", "::1/128"]
        );
        assert!(parse("prefixes: {a: b}").is_err());
    }
}
