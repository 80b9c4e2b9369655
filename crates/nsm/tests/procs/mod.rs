//! `nsm` processes for the process tests: spawn one with its stdout lines on a channel and stderr in
//! `<dir>/<name>.log`, wait for a line, signal it, and stop them all (printing their logs if the test
//! failed).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// One running `nsm` process.
pub struct Proc {
    pub name: String,
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Waits for a stdout line satisfying `pred`, at most `within` per line; panics with the log.
    pub fn wait_line(&self, dir: &Path, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        loop {
            match self.lines.recv_timeout(within) {
                Ok(l) if pred(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!(
                    "{}: expected line not seen; log:\n{}",
                    self.name,
                    std::fs::read_to_string(dir.join(format!("{}.log", self.name)))
                        .unwrap_or_default()
                ),
            }
        }
    }
}

/// Spawns `cmd` as `name`: stdout lines to the channel, stderr to `<dir>/<name>.log`.
pub fn spawn(dir: &Path, name: &str, mut cmd: Command) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    Proc {
        name: name.into(),
        child,
        lines: rx,
    }
}

/// Sends `sig` (TERM, KILL, STOP, CONT, INT…) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

/// SIGCONT + SIGTERM to every process, SIGKILL after 5 s each; prints the logs if the test is
/// failing; removes `dir`.
pub fn stop_all(dir: &Path, procs: &mut [Proc]) {
    for p in procs.iter() {
        signal(p.child.id(), "CONT");
        signal(p.child.id(), "TERM");
    }
    for p in procs.iter_mut() {
        for _ in 0..250 {
            if p.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    if std::thread::panicking() {
        for p in procs.iter() {
            let log = std::fs::read_to_string(dir.join(format!("{}.log", p.name)));
            eprintln!("--- {} log ---\n{}", p.name, log.unwrap_or_default());
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
