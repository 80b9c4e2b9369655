//! Fixtures for fd-passing tests, shared by this crate's `sendfd` / `recvfd` tests and nsm-registry's
//! (feature `testing`): a temporary directory, a socketpair standing in for a caller's unix
//! connection, the count of this process's fds naming a file, and a pair of dev-CA mTLS identities.

// Test support: a fixture that cannot be built fails the test that asked for it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nsm_api::url::NsmUrl;
use nsm_core::{Clock, Ctx, NsmError};
use nsm_identity::{DevCa, MemorySource, TlsIdentity, TransportSecurity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::grpc::fdconn::{FdUnixStream, IncomingFds};

/// A fresh directory (for unix sockets and files to pass), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates it under the system's temporary directory.
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("nsm-rs-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    /// `unix://<dir>/<name>`.
    pub fn socket(&self, name: &str) -> NsmUrl {
        NsmUrl::Unix(self.0.join(name))
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// This process's open fds naming `path`'s inode.
pub fn open_fds_of(path: &Path) -> usize {
    let want = rustix::fs::stat(path).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let st = rustix::fs::stat(e.ok()?.path()).ok()?;
            (st.st_dev == want.st_dev && st.st_ino == want.st_ino).then_some(())
        })
        .count()
}

/// Both ends of a unix connection carrying fds: `sender` plays the peer's `sendfd`, `receiver` the
/// connection a `recvfd` under test is served on.
pub struct FdPair {
    /// The peer's end.
    pub sender: FdUnixStream,
    /// Our end.
    pub receiver: FdUnixStream,
}

impl FdPair {
    /// A socketpair.
    pub fn new() -> Self {
        let (a, b) = UnixStream::pair().unwrap();
        Self {
            sender: FdUnixStream::new(a),
            receiver: FdUnixStream::new(b),
        }
    }

    /// A call served on `receiver` ([`IncomingFds`]) with `timeout` as its deadline.
    pub fn ctx(&self, timeout: Duration) -> Ctx {
        let mut ctx = Ctx::new(Clock::system()).with_timeout(timeout);
        ctx.insert(IncomingFds(self.receiver.transceiver()));
        ctx
    }

    /// Passes `path` as the peer's `sendfd` would (the fd rides on one byte, which `receiver` reads);
    /// returns its inode URL.
    pub async fn pass(&mut self, path: &Path) -> String {
        let (url, _) = self.sender.transceiver().send_path(path).unwrap();
        self.sender.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        self.receiver.read_exact(&mut b).await.unwrap();
        url.to_string()
    }
}

impl Default for FdPair {
    fn default() -> Self {
        Self::new()
    }
}

/// mTLS identities for a server and a client (SPIFFE paths `server` and `client`) from one dev CA.
pub fn tls_pair(server: &str, client: &str) -> (TransportSecurity, TransportSecurity) {
    nsm_identity::install_crypto_provider();
    let ca = DevCa::new("example.org").unwrap();
    let id = |path: &str| {
        let m = ca.material(path, Duration::from_secs(3600)).unwrap();
        TransportSecurity::Tls(TlsIdentity::new(Arc::new(MemorySource::new(m))).unwrap())
    };
    (id(server), id(client))
}

/// Asserts that `e` is recvfd's failure for a file that never arrived: `DeadlineExceeded`, with a
/// message that names recvfd and `url`.
pub fn assert_missing_fd(e: NsmError, url: &str) {
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
    let msg = tonic::Status::from(e).message().to_string();
    assert!(msg.starts_with("recvfd") && msg.contains(url), "{msg}");
}
