//! `nsm up --once` (issue 8: part of the test suite) and `nsm down` after a crashed `nsm up`. As root;
//! skipped with a message otherwise (failing under CI=true).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{RootGuard, privileged};

fn nsm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nsm"))
}

/// A state directory of this test alone, so `nsm down` here never sees other runs.
fn state_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("nsm-up-test-{}-{tag}", std::process::id()))
}

fn namespaces_with(prefix: &str) -> Vec<String> {
    nsm_testbed::ip(&["netns", "list"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect()
}

/// Runs `nsm up --once <args>` in a state directory of its own (`tag`), asserts it succeeded and
/// returns its stdout and the directory (with its cleanup guard).
fn up_once(tag: &str, args: &[&str]) -> (String, std::path::PathBuf, Cleanup) {
    let dir = state_dir(tag);
    let cleanup = Cleanup {
        child: None,
        dir: dir.clone(),
    };
    let out = nsm()
        .args(["up", "--once"])
        .args(args)
        .arg("--state-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, dir, cleanup)
}

#[test]
fn up_once_verifies_connectivity_and_cleans_up() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (stdout, dir, _cleanup) = up_once("once", &[]);
    for want in [
        "\u{2713} forwarder-2",
        "6 hops",
        "mtu 1450",
        "end-to-end connectivity verified",
        "nsm ctl get connections:",
        "removed 5 namespace(s)",
    ] {
        assert!(stdout.contains(want), "missing {want:?}:\n{stdout}");
    }
    // The `nsm ctl` hint works: --once runs it, and its table (not the progress lines above it,
    // which name nsc-1 too) lists the client's connection as UP.
    let ctl = stdout
        .split("nsm ctl get connections:")
        .nth(1)
        .and_then(|s| s.split("tearing down").next())
        .unwrap();
    assert!(
        ctl.lines()
            .any(|l| l.starts_with("nsc-1-0 ") && l.contains(" UP ")),
        "nsm ctl get connections:\n{ctl}"
    );
    let pid = out_pid(&stdout);
    assert!(namespaces_with(&format!("nsmup{pid}-")).is_empty());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "run directory left"
    );
}

/// The run id's pid from `nsm up: run nsmup<pid>: …`.
fn out_pid(stdout: &str) -> String {
    stdout
        .split("run nsmup")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .unwrap()
        .to_string()
}

#[test]
fn up_once_with_ip_payload_goes_over_wireguard() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let (stdout, _dir, _cleanup) = up_once("ip", &["--payload", "IP"]);
    // Both pods get a TUN with MTU underlay (1500) - 80, and each forwarder hop names its link.
    for want in [
        "(payload IP)",
        "tun nsm-1 mtu 1420",
        "node 1: userspace WireGuard link",
        "node 2: userspace WireGuard link",
        "end-to-end connectivity verified",
        "removed 5 namespace(s)",
    ] {
        assert!(stdout.contains(want), "missing {want:?}:\n{stdout}");
    }
    assert!(
        !stdout.contains("vxlan"),
        "no VXLAN for payload IP:\n{stdout}"
    );
    let pid = out_pid(&stdout);
    assert!(namespaces_with(&format!("nsmup{pid}-")).is_empty());
}

#[test]
fn up_rejects_other_mechanisms_with_a_reason() {
    let out = nsm().args(["up", "--mechanism", "memif"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only `kernel`"));
}

#[test]
fn down_removes_what_a_killed_up_left_behind_and_only_that() {
    if !privileged() {
        return;
    }
    let _root = RootGuard::new();
    let dir = state_dir("crash");
    let mut up = nsm()
        .args(["up", "--state-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let prefix = format!("nsmup{}-", up.id());
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let mut cleanup = Cleanup {
        child: Some(up),
        dir: dir.clone(),
    };
    let mut seen = Vec::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("nsm up ended early:\n{}", seen.join("\n")))
            .unwrap();
        let done = line.contains("seq=0");
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(seen.iter().any(|l| l.contains("time=")), "{seen:?}");
    // While `nsm up` lives, `nsm down` leaves its run alone.
    let out = nsm()
        .arg("down")
        .arg("--state-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("left alone"));
    assert_eq!(namespaces_with(&prefix).len(), 5);

    // Crash it: everything stays behind.
    let mut up = cleanup.child.take().unwrap();
    up.kill().unwrap();
    up.wait().unwrap();
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(prefix.trim_end_matches('-')).join("state.json"))
            .unwrap(),
    )
    .unwrap();
    let pids: Vec<u64> = state["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["process"]["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 7, "registry, 2 nsmgrs, 2 forwarders, nse, nsc");
    assert!(
        pids.iter()
            .all(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    );
    assert_eq!(namespaces_with(&prefix).len(), 5);

    let out = nsm()
        .arg("down")
        .arg("--state-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("killed nsc-1"), "{stdout}");
    assert!(namespaces_with(&prefix).is_empty(), "{stdout}");
    for p in &pids {
        // Reaped by init once killed; give it a moment.
        let path = format!("/proc/{p}/stat");
        for _ in 0..100 {
            let zombie_or_gone = std::fs::read_to_string(&path)
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true);
            if zombie_or_gone {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let out = nsm()
        .arg("down")
        .arg("--state-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to clean up"));
}

/// Kills a still-running `nsm up`, runs `nsm down` on the test's state directory and removes it — also
/// when the test fails.
struct Cleanup {
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.dir.exists() {
            let _ = nsm().arg("down").arg("--state-dir").arg(&self.dir).output();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
