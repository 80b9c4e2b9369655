//! `--policy` files and directories, reloaded when they change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use nsm_networkservice::authorize::{Policy, PolicyInput, Verdict};
use parking_lot::RwLock;
use tokio::task::JoinHandle;

use crate::input::input_value;
use crate::policy::{PolicyError, PolicyRuntime, RegoPolicy};

/// The policies found at some paths (`.rego` files, or directories whose `.rego` files are loaded in
/// name order), evaluated in order as one policy: a refusal names the file that refused. The paths are
/// polled for changes; a set that no longer compiles is logged and the previous one kept.
pub struct PolicyDir {
    name: String,
    policies: Arc<RwLock<Vec<Arc<RegoPolicy>>>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PolicyDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyDir")
            .field("name", &self.name)
            .field("policies", &self.policies.read().len())
            .finish()
    }
}

fn rego_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, PolicyError> {
    let mut files = Vec::new();
    for p in paths {
        let io = |e| PolicyError::Io {
            path: p.display().to_string(),
            source: e,
        };
        if std::fs::metadata(p).map_err(io)?.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "rego") && f.is_file())
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

fn load(paths: &[PathBuf], runtime: &PolicyRuntime) -> Result<Vec<Arc<RegoPolicy>>, PolicyError> {
    rego_files(paths)?
        .iter()
        .map(|f| RegoPolicy::from_file(f, runtime).map(Arc::new))
        .collect()
}

fn stamp(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut files = rego_files(paths).unwrap_or_default();
    files.extend(paths.iter().cloned());
    files
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f).ok();
            let modified = m.as_ref().and_then(|m| m.modified().ok());
            let len = m.map_or(0, |m| m.len());
            (f, modified, len)
        })
        .collect()
}

impl PolicyDir {
    /// Loads `paths` now (failing on unreadable or invalid policies) and, with `poll`, watches them.
    pub fn load(
        paths: Vec<PathBuf>,
        runtime: PolicyRuntime,
        poll: Option<Duration>,
    ) -> Result<Self, PolicyError> {
        let name = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut last = stamp(&paths);
        let policies = Arc::new(RwLock::new(load(&paths, &runtime)?));
        let task = poll.map(|period| {
            let weak = Arc::downgrade(&policies);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(period).await;
                    let Some(current) = weak.upgrade() else { return };
                    let now = stamp(&paths);
                    if now == last {
                        continue;
                    }
                    last = now;
                    match load(&paths, &runtime) {
                        Ok(p) => {
                            tracing::info!(policies = p.len(), "policies reloaded");
                            *current.write() = p;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "policies changed but do not load; keeping the previous ones");
                        }
                    }
                }
            })
        });
        Ok(Self {
            name,
            policies,
            task,
        })
    }

    /// Loads one file or directory, polling it every two seconds.
    pub fn watch(path: &Path) -> Result<Self, PolicyError> {
        Self::load(
            vec![path.to_path_buf()],
            PolicyRuntime::shared(),
            Some(Duration::from_secs(2)),
        )
    }

    /// The names of the loaded policies (their files).
    pub fn names(&self) -> Vec<String> {
        self.policies
            .read()
            .iter()
            .map(|p| p.name().to_string())
            .collect()
    }
}

impl Drop for PolicyDir {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

#[async_trait]
impl Policy for PolicyDir {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, input: &PolicyInput) -> Result<Verdict, String> {
        let policies = self.policies.read().clone();
        let value = input_value(input);
        for p in policies {
            match p.evaluate(value.clone()) {
                Ok(true) => {}
                Ok(false) => {
                    return Ok(Verdict::Deny(format!(
                        "{}: no sufficient privileges",
                        p.name()
                    )));
                }
                Err(e) => return Err(format!("{}: {e}", p.name())),
            }
        }
        Ok(Verdict::Allow)
    }
}
