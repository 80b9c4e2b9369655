//! The isolated NSMgr: an NSMgr alone in a child process, so its memory can be read apart from the
//! client, forwarder and endpoint (which stay in the parent).
//!
//! Protocol on stdio, one line each: the child prints `URL <url>` once serving; then for every `stats`
//! line it reads it prints `STATS <rss bytes> <net heap bytes or -> <connections held>` followed, with
//! glibc, by malloc's bytes in use and free-but-kept bytes; `trim` makes it return malloc's free
//! pages to the system first (answer `TRIMMED`); `abort` aborts it at once (heap profiling with the
//! connections held); it exits at end of input or on `quit`.
//!
//! With `--ca-dir <dir>` (a development CA saved by the parent) the NSMgr is secured as in production:
//! its own SVID from that CA, mTLS, ES256 tokens and the default server policies.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nsm_api::url::NsmUrl;
use nsm_chains::nsmgr::{Nsmgr, NsmgrOptions};
use nsm_core::Clock;
use nsm_identity::DevCa;
use nsm_networkservice::begin::BeginServer;
use nsm_sandbox::Restartable;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::Result;
use crate::alloc;
use crate::setup::{DIAL_TIMEOUT, Security};
use crate::stats::rss_bytes;

/// The NSMgr's name in the isolated setup.
pub const NSMGR_NAME: &str = "nsmgr-bench";

/// Runs the child side: serves an NSMgr (no central registry: network services and this node's
/// endpoints are kept in its memory) on 127.0.0.1 and answers `stats` on stdin. `ca_dir`: secured
/// with an SVID from the CA saved there.
pub async fn nsmgr_child(ca_dir: Option<&Path>) -> Result<()> {
    let counting = alloc::enable();
    let clock = Clock::system();
    let security = match ca_dir {
        Some(dir) => Security::secured(Arc::new(DevCa::load(dir)?), clock),
        None => Security::plaintext(clock),
    };
    let transport = security.transport(NSMGR_NAME)?;
    let tokens = security.tokens(&transport);
    let begin: Arc<Mutex<Option<Arc<BeginServer>>>> = Arc::default();
    let slot = begin.clone();
    let t = transport.clone();
    let server = Restartable::start_with(NSMGR_NAME, loopback(), transport, move |url| {
        let mut o = NsmgrOptions::new(NSMGR_NAME, url, tokens.clone());
        o.security = t.clone();
        o.authorize = security.server_authorize();
        o.dial_timeout = DIAL_TIMEOUT;
        let n = Nsmgr::new(o);
        if let Ok(mut s) = slot.lock() {
            *s = Some(n.endpoint.begin.clone());
        }
        (n.routes(), Box::new(n))
    })
    .await?;
    say(&format!("URL {}", server.url()))?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "stats" => {
                let rss = rss_bytes(None).unwrap_or(0);
                let heap = if counting {
                    alloc::net_bytes().to_string()
                } else {
                    "-".to_string()
                };
                let held = begin
                    .lock()
                    .ok()
                    .and_then(|b| b.as_ref().map(|b| b.len()))
                    .unwrap_or(0);
                let malloc = alloc::malloc_view()
                    .map(|(in_use, free)| format!(" {in_use} {free}"))
                    .unwrap_or_default();
                say(&format!("STATS {rss} {heap} {held}{malloc}"))?;
            }
            "trim" => {
                alloc::malloc_trim();
                say("TRIMMED")?;
            }
            // For heap profilers: end with every connection still held (see `--abort-held`).
            "abort" => std::process::abort(),
            "quit" => break,
            _ => {}
        }
    }
    server.stop().await;
    Ok(())
}

fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// `127.0.0.1`, any port.
pub fn loopback() -> NsmUrl {
    NsmUrl::Tcp {
        host: "127.0.0.1".into(),
        port: 0,
    }
}
