//! recvfd on a socketpair: fds claimed by inode URL, named `/proc/<pid>/fd/<n>`, closed on Close.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nsm_api::mechanisms::{MechanismType, common};
use nsm_api::{Connection, Mechanism, NetworkServiceRequest};
use nsm_core::{Chain, Clock, Ctx, NetworkServiceServer, Next, NsmError, Result};
use parking_lot::Mutex;

use super::RecvFdServer;
use crate::fdpass::testing::{FdPair, TempDir, assert_missing_fd, open_fds_of};
use crate::grpc::testing::request;
use crate::metadata::MetadataServer;

/// Records the `inodeURL` values it sees (preferences and connection mechanism) and answers with the
/// first preference selected; can fail.
#[derive(Default)]
pub(crate) struct Probe {
    pub(crate) seen: Mutex<Vec<String>>,
    pub(crate) closed: Mutex<Vec<String>>,
    pub(crate) fail: Mutex<Option<NsmError>>,
    /// Set as the answer's `inodeURL` (an endpoint naming its own namespace).
    pub(crate) answer_url: Mutex<Option<String>>,
}

#[async_trait]
impl NetworkServiceServer for Probe {
    async fn request(
        &self,
        _ctx: &mut Ctx,
        r: NetworkServiceRequest,
        _n: Next,
    ) -> Result<Connection> {
        let current = r.connection.as_ref().and_then(|c| c.mechanism.as_ref());
        for m in r.mechanism_preferences.iter().chain(current) {
            self.seen
                .lock()
                .push(m.inode_url().unwrap_or_default().to_string());
        }
        if let Some(e) = self.fail.lock().clone() {
            return Err(e);
        }
        let mut conn = r.connection.clone().unwrap_or_default();
        if conn.mechanism.is_none() {
            conn.mechanism = r.mechanism_preferences.first().cloned();
        }
        if let (Some(url), Some(m)) = (self.answer_url.lock().clone(), conn.mechanism.as_mut()) {
            m.set_param(common::INODE_URL, url);
        }
        Ok(conn)
    }
    async fn close(&self, _ctx: &mut Ctx, c: Connection, _n: Next) -> Result<()> {
        let url = c
            .mechanism
            .as_ref()
            .and_then(|m| m.inode_url())
            .unwrap_or_default();
        self.closed.lock().push(url.to_string());
        Ok(())
    }
    fn name(&self) -> &'static str {
        "probe"
    }
}

pub(crate) fn kernel_with(url: &str) -> Mechanism {
    let mut m = MechanismType::Kernel.mechanism();
    m.set_param(common::INODE_URL, url);
    m
}

pub(crate) fn temp_file(dir: &TempDir, name: &str) -> PathBuf {
    let p = dir.0.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(name.as_bytes())
        .unwrap();
    p
}

struct Setup {
    chain: Chain,
    probe: Arc<Probe>,
    metadata: Arc<MetadataServer>,
    /// The caller's connection.
    fds: FdPair,
}

fn setup() -> Setup {
    let probe = Arc::new(Probe::default());
    let metadata = Arc::new(MetadataServer::new());
    Setup {
        chain: Chain::new(
            "t",
            vec![
                metadata.clone(),
                Arc::new(RecvFdServer::new()),
                probe.clone(),
            ],
        ),
        probe,
        metadata,
        fds: FdPair::new(),
    }
}

fn req_with(id: &str, url: &str) -> NetworkServiceRequest {
    let mut r = request(id);
    r.mechanism_preferences = vec![kernel_with(url)];
    r
}

#[tokio::test]
async fn a_passed_fd_is_named_by_proc_fd_and_closed_on_close() {
    let dir = TempDir::new();
    let file = temp_file(&dir, "netns");
    let mut s = setup();
    let inode = s.fds.pass(&file).await;
    assert_eq!(open_fds_of(&file), 1, "received, unclaimed");

    let mut ctx = s.fds.ctx(Duration::from_secs(2));
    let conn = s
        .chain
        .run_request(&mut ctx, req_with("c1", &inode))
        .await
        .unwrap();
    let seen = s.probe.seen.lock()[0].clone();
    let prefix = format!("file:///proc/{}/fd/", std::process::id());
    assert!(seen.starts_with(&prefix), "{seen}");
    let st = rustix::fs::stat(seen.trim_start_matches("file://")).unwrap();
    let want = rustix::fs::stat(&file).unwrap();
    assert_eq!((st.st_dev, st.st_ino), (want.st_dev, want.st_ino));
    let m = conn.mechanism.clone().unwrap();
    assert_eq!(
        m.inode_url(),
        Some(inode.as_str()),
        "the answer gets the inode URL back"
    );
    assert_eq!(s.fds.receiver.transceiver().unclaimed(), 0);

    // A refresh carries the fd again: the same name is used and the new copy is not kept.
    s.fds.pass(&file).await;
    let mut refresh = req_with("c1", &inode);
    refresh.connection = Some(conn.clone());
    let mut ctx = s.fds.ctx(Duration::from_secs(2));
    s.chain.run_request(&mut ctx, refresh).await.unwrap();
    assert!(s.probe.seen.lock().iter().skip(1).all(|u| *u == seen));
    assert_eq!(s.fds.receiver.transceiver().unclaimed(), 0);
    assert_eq!(open_fds_of(&file), 1);

    let mut ctx = s.fds.ctx(Duration::from_secs(2));
    s.chain.run_close(&mut ctx, conn).await.unwrap();
    assert_eq!(
        s.probe.closed.lock().as_slice(),
        std::slice::from_ref(&seen),
        "Close sees the file too"
    );
    assert_eq!(open_fds_of(&file), 0, "closed on Close");
    assert!(s.metadata.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_missing_fd_fails_at_the_deadline_naming_recvfd_and_the_url() {
    let s = setup();
    let mut ctx = s.fds.ctx(Duration::from_secs(3));
    let started = tokio::time::Instant::now();
    let e = s
        .chain
        .run_request(&mut ctx, req_with("c1", "inode://4/4026532"))
        .await
        .unwrap_err();
    assert_missing_fd(e, "inode://4/4026532");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(3),
        "fails at the deadline, not later"
    );
    assert!(
        s.probe.seen.lock().is_empty(),
        "the rest of the chain did not run"
    );
    assert!(s.metadata.is_empty());
}

/// Two files passed, offered as two KERNEL preferences: the files and the request.
struct TwoPreferences {
    _dir: TempDir,
    files: (PathBuf, PathBuf),
    first_url: String,
    request: NetworkServiceRequest,
}

async fn two_preferences(s: &mut Setup) -> TwoPreferences {
    let dir = TempDir::new();
    let (f1, f2) = (temp_file(&dir, "one"), temp_file(&dir, "two"));
    let (u1, u2) = (s.fds.pass(&f1).await, s.fds.pass(&f2).await);
    let mut request = req_with("c1", &u1);
    request.mechanism_preferences.push(kernel_with(&u2));
    TwoPreferences {
        _dir: dir,
        files: (f1, f2),
        first_url: u1,
        request,
    }
}

impl TwoPreferences {
    /// Fds open per file.
    fn open_fds(&self) -> (usize, usize) {
        (open_fds_of(&self.files.0), open_fds_of(&self.files.1))
    }
}

#[tokio::test]
async fn nothing_is_left_when_the_request_fails_downstream() {
    let mut s = setup();
    let two = two_preferences(&mut s).await;
    *s.probe.fail.lock() = Some(NsmError::unavailable("probe", "down"));
    let mut ctx = s.fds.ctx(Duration::from_secs(2));
    assert!(
        s.chain
            .run_request(&mut ctx, two.request.clone())
            .await
            .is_err()
    );
    assert_eq!(two.open_fds(), (0, 0));
    assert!(s.metadata.is_empty());
}

#[tokio::test]
async fn unselected_preferences_files_are_closed() {
    let mut s = setup();
    let two = two_preferences(&mut s).await;
    let mut ctx = s.fds.ctx(Duration::from_secs(2));
    let conn = s
        .chain
        .run_request(&mut ctx, two.request.clone())
        .await
        .unwrap();
    assert_eq!(
        conn.mechanism.unwrap().inode_url(),
        Some(two.first_url.as_str())
    );
    assert_eq!(two.open_fds(), (1, 0));
}

#[tokio::test]
async fn without_a_unix_connection_values_pass_unchanged() {
    let probe = Arc::new(Probe::default());
    let chain = Chain::new(
        "t",
        vec![
            Arc::new(MetadataServer::new()),
            Arc::new(RecvFdServer::new()),
            probe.clone(),
        ],
    );
    let mut ctx = Ctx::new(Clock::system());
    chain
        .run_request(&mut ctx, req_with("c1", "inode://1/2"))
        .await
        .unwrap();
    assert_eq!(probe.seen.lock().as_slice(), ["inode://1/2".to_string()]);
}

#[tokio::test]
async fn a_file_the_endpoint_replaces_is_not_kept() {
    // A forwarder passes the endpoint's own namespace back on a refresh; the endpoint names its own.
    let dir = TempDir::new();
    let (passed, own) = (temp_file(&dir, "passed-back"), temp_file(&dir, "own"));
    let mut s = setup();
    *s.probe.answer_url.lock() = Some(format!("file://{}", own.display()));
    let inode = s.fds.pass(&passed).await;
    let mut ctx = s.fds.ctx(Duration::from_secs(2));
    s.chain
        .run_request(&mut ctx, req_with("c1", &inode))
        .await
        .unwrap();
    assert_eq!(s.fds.receiver.transceiver().unclaimed(), 0, "claimed");
    assert_eq!(
        open_fds_of(&passed),
        0,
        "and closed: the answer does not name it"
    );
}
