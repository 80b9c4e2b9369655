//! The state file of a run and [`down`], which removes what crashed runs left behind.
//!
//! `<base>/<id>/state.json` names the owning process (pid + start time, so a reused pid is not mistaken
//! for the owner), every namespace the run created or was about to create, and every process it
//! started (pid + start time). A run that is still alive is never touched.

use std::io;
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::ip::ip_ok;

/// What one run created.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Run id (the namespace prefix).
    pub id: String,
    /// The owning process.
    pub owner: ProcRef,
    /// Namespaces, in creation order.
    pub namespaces: Vec<String>,
    /// Processes started, in start order.
    pub processes: Vec<ProcRecord>,
}

/// A process identity that survives pid reuse: pid + start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    /// Process id.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub start_time: u64,
}

/// A started process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcRecord {
    /// Its name in the run (`nsmgr-1`, …).
    pub name: String,
    /// The namespace it runs in.
    pub namespace: String,
    /// Which process.
    pub process: ProcRef,
}

impl ProcRef {
    /// The identity of process `pid` now, if it exists.
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let start_time = rest.split_whitespace().nth(19)?.parse().ok()?;
        Some(Self { pid, start_time })
    }

    /// True if this very process still runs (and is not a zombie).
    pub fn alive(&self) -> bool {
        let Some(now) = Self::of(self.pid) else {
            return false;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st == "Z"))
            })
            .unwrap_or(false);
        now == *self && !zombie
    }
}

impl State {
    /// Writes the state atomically (temporary file + rename) to `<dir>/state.json`.
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join("state.json"))
    }

    /// Reads `<dir>/state.json`.
    pub fn load(dir: &Path) -> io::Result<Self> {
        let text = std::fs::read_to_string(dir.join("state.json"))?;
        serde_json::from_str(&text).map_err(io::Error::other)
    }
}

/// Where runs keep their state: `/run/nsm-up` for root, else `<tmp>/nsm-up`.
pub fn state_base() -> PathBuf {
    if nix::unistd::geteuid().is_root() && Path::new("/run").is_dir() {
        PathBuf::from("/run/nsm-up")
    } else {
        std::env::temp_dir().join("nsm-up")
    }
}

/// What [`down`] did.
#[derive(Debug, Default)]
pub struct DownReport {
    /// Runs cleaned up.
    pub removed_runs: Vec<String>,
    /// Processes killed (`name (pid)`).
    pub killed: Vec<String>,
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Runs left alone because their owner is alive (`id (pid)`).
    pub live_runs: Vec<String>,
    /// Problems (the run's directory is kept so a later `down` can retry).
    pub errors: Vec<String>,
}

/// Removes what crashed runs under `base` left behind (only run `only` if given): kills their recorded
/// processes (if still the same processes), deletes their recorded namespaces (if they exist), removes
/// their directories. Runs whose owner is alive are left alone.
pub fn down(base: &Path, only: Option<&str>) -> io::Result<DownReport> {
    let mut report = DownReport::default();
    let entries = match std::fs::read_dir(base) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e),
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let state = match State::load(&dir) {
            Ok(s) => s,
            Err(e) => {
                report
                    .errors
                    .push(format!("{}: unreadable state file: {e}", dir.display()));
                continue;
            }
        };
        if state.owner.alive() {
            report
                .live_runs
                .push(format!("{} (pid {})", state.id, state.owner.pid));
            continue;
        }
        let mut ok = true;
        for p in state.processes.iter().rev() {
            if p.process.alive() {
                let _ = kill(Pid::from_raw(p.process.pid as i32), Signal::SIGKILL);
                report
                    .killed
                    .push(format!("{} (pid {})", p.name, p.process.pid));
            }
        }
        // Give the killed processes a moment to die, so their namespaces can really go away.
        for _ in 0..100 {
            if state.processes.iter().all(|p| !p.process.alive()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for ns in state.namespaces.iter().rev() {
            if Path::new("/run/netns").join(ns).exists() {
                if ip_ok(&["netns", "del", ns]) {
                    report.namespaces.push(ns.clone());
                } else {
                    ok = false;
                    report.errors.push(format!("cannot delete namespace {ns}"));
                }
            }
        }
        if ok {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                report
                    .errors
                    .push(format!("cannot remove {}: {e}", dir.display()));
            }
            report.removed_runs.push(state.id.clone());
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcRef::of(std::process::id()).unwrap();
        assert!(me.alive());
        let other = ProcRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.alive(), "pid reuse must not look alive");
    }

    #[test]
    fn down_leaves_live_runs_alone_and_removes_dead_ones() {
        let base = std::env::temp_dir().join(format!("nsm-testbed-state-{}", std::process::id()));
        let live = base.join("live");
        let dead = base.join("dead");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(&dead).unwrap();
        let me = ProcRef::of(std::process::id()).unwrap();
        State {
            id: "live".into(),
            owner: me,
            ..Default::default()
        }
        .save(&live)
        .unwrap();
        State {
            id: "dead".into(),
            owner: ProcRef {
                pid: me.pid,
                start_time: me.start_time + 1,
            },
            // A name that cannot exist: down only deletes namespaces that exist.
            namespaces: vec![format!("nsm-testbed-absent-{}", me.pid)],
            ..Default::default()
        }
        .save(&dead)
        .unwrap();
        let r = down(&base, None).unwrap();
        assert_eq!(r.removed_runs, vec!["dead".to_string()]);
        assert_eq!(r.live_runs.len(), 1);
        assert!(r.namespaces.is_empty());
        assert!(live.exists() && !dead.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
