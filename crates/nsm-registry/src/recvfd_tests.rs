//! recvfd on a socketpair: the passed socket named `unix:///proc/<pid>/fd/<n>`, dialable through
//! that name, kept while the registration lives and closed on Unregister, expiry and errors.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nsm_api::url::NsmUrl;
use nsm_core::Clock;
use nsm_core::registry::{RegistryChain, RegistryElement, collect_found};
use nsm_networkservice::fdpass::testing::{FdPair, TempDir, open_fds_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tonic::Code;

use super::*;
use crate::expire::ExpireServer;
use crate::memory::MemoryServer;
use crate::testutil::Probe;

/// A listening endpoint socket; the returned path is a hard link to it (kept to count fds after the
/// socket's own name is gone).
pub(crate) fn endpoint_socket(dir: &TempDir, name: &str) -> (UnixListener, PathBuf, PathBuf) {
    let path = dir.0.join(format!("{name}.sock"));
    let listener = UnixListener::bind(&path).unwrap();
    let witness = dir.0.join(format!("{name}.witness"));
    std::fs::hard_link(&path, &witness).unwrap();
    (listener, path, witness)
}

fn nse_at(name: &str, url: &str) -> Nse {
    Nse {
        name: name.into(),
        url: url.into(),
        ..Default::default()
    }
}

struct Setup {
    chain: RegistryChain<Nse>,
    recvfd: Arc<RecvFdServer>,
    memory: Arc<MemoryServer<Nse>>,
    /// The endpoint's connection.
    fds: FdPair,
}

fn setup_with(before: Vec<RegistryElement<Nse>>, after: Vec<RegistryElement<Nse>>) -> Setup {
    let recvfd = Arc::new(RecvFdServer::new());
    let memory = Arc::new(MemoryServer::<Nse>::new());
    let mut elements = before;
    elements.push(recvfd.clone());
    elements.extend(after);
    elements.push(memory.clone());
    Setup {
        chain: RegistryChain::new("t", elements),
        recvfd,
        memory,
        fds: FdPair::new(),
    }
}

fn setup() -> Setup {
    setup_with(vec![], vec![])
}

impl Setup {
    /// Registers `nse` on the endpoint's connection, with a 2 s deadline.
    async fn register(&self, nse: Nse) -> Result<Nse> {
        let mut ctx = self.fds.ctx(Duration::from_secs(2));
        self.chain.run_register(&mut ctx, nse).await
    }
}

#[tokio::test]
async fn a_passed_socket_is_dialable_by_proc_fd_until_unregister() {
    let dir = TempDir::new();
    let (listener, path, witness) = endpoint_socket(&dir, "nse");
    let mut s = setup();
    let inode = s.fds.pass(&path).await;
    // The socket's own name is gone: only the fd leads to it now.
    std::fs::remove_file(&path).unwrap();

    let reg = s.register(nse_at("nse", &inode)).await.unwrap();
    assert_eq!(reg.url, inode, "the answer gets the inode URL back");
    let stored = s.memory.get("nse").unwrap().url;
    let prefix = format!("unix:///proc/{}/fd/", std::process::id());
    assert!(stored.starts_with(&prefix), "{stored}");
    assert_eq!(s.recvfd.held("nse"), Some((inode.clone(), stored.clone())));

    // Dialing the stored URL reaches the endpoint's socket.
    let Ok(NsmUrl::Unix(proc_path)) = NsmUrl::parse(&stored) else {
        panic!("{stored}")
    };
    let mut c = UnixStream::connect(&proc_path).await.unwrap();
    let (mut accepted, _) = listener.accept().await.unwrap();
    c.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    accepted.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"hi");

    // Find shows what the endpoint registered, not our /proc path.
    let found = collect_found(
        s.chain
            .run_find(&mut s.fds.ctx(Duration::from_secs(2)), Query::default())
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(found[0].item.url, inode);

    // A refresh brings the socket again: same name, the copy closed.
    s.fds.pass(&witness).await;
    assert_eq!(open_fds_of(&witness), 2);
    let again = s.register(reg.clone()).await.unwrap();
    assert_eq!(again.url, inode);
    assert_eq!(s.memory.get("nse").unwrap().url, stored);
    assert_eq!(s.fds.receiver.transceiver().unclaimed(), 0);
    assert_eq!(open_fds_of(&witness), 1);

    // Unregister (with the resent copy) closes everything.
    s.fds.pass(&witness).await;
    s.chain
        .run_unregister(&mut s.fds.ctx(Duration::from_secs(2)), reg)
        .await
        .unwrap();
    assert!(s.memory.get("nse").is_none());
    assert_eq!(s.recvfd.held_count(), 0);
    assert_eq!(s.fds.receiver.transceiver().unclaimed(), 0);
    assert_eq!(open_fds_of(&witness), 0, "closed on Unregister");
}

#[tokio::test(start_paused = true)]
async fn a_missing_fd_fails_at_the_deadline_naming_recvfd_and_the_url() {
    let s = setup();
    let inode = "inode://1/2";
    let e = s
        .chain
        .run_register(&mut s.fds.ctx(Duration::from_secs(3)), nse_at("nse", inode))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("recvfd") && msg.contains(inode) && msg.contains("\"nse\""),
        "{msg}"
    );
    assert!(s.memory.get("nse").is_none(), "the chain did not run");
    assert_eq!(s.recvfd.held_count(), 0);
}

#[tokio::test]
async fn a_failed_registration_keeps_no_fd() {
    let dir = TempDir::new();
    let (_listener, path, witness) = endpoint_socket(&dir, "nse");
    let probe = Probe::new();
    probe.fail_next(1);
    let mut s = setup_with(vec![], vec![probe]);
    let inode = s.fds.pass(&path).await;
    let e = s.register(nse_at("nse", &inode)).await.unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    assert_eq!(s.recvfd.held_count(), 0);
    assert_eq!(s.fds.receiver.transceiver().unclaimed(), 0);
    assert_eq!(open_fds_of(&witness), 0, "nothing left after the error");
}

#[tokio::test]
async fn another_socket_for_the_name_replaces_the_held_one() {
    let dir = TempDir::new();
    let (_l1, p1, w1) = endpoint_socket(&dir, "old");
    let (_l2, p2, w2) = endpoint_socket(&dir, "new");
    let mut s = setup();
    let first = s.fds.pass(&p1).await;
    s.register(nse_at("nse", &first)).await.unwrap();
    let name = s.recvfd.held("nse").unwrap().1;
    let second = s.fds.pass(&p2).await;
    let reg = s.register(nse_at("nse", &second)).await.unwrap();
    assert_eq!(reg.url, second);
    assert_eq!(
        s.recvfd.held("nse"),
        Some((second.clone(), name.clone())),
        "the same /proc name, now naming the new socket"
    );
    assert_eq!(s.memory.get("nse").unwrap().url, name);
    let want = rustix::fs::stat(&w2).unwrap();
    let got = rustix::fs::stat(name.trim_start_matches("unix://")).unwrap();
    assert_eq!((got.st_dev, got.st_ino), (want.st_dev, want.st_ino));
    assert_eq!((open_fds_of(&w1), open_fds_of(&w2)), (0, 1));

    // A registration that stops passing a socket lets the held one go.
    s.register(nse_at("nse", "tcp://127.0.0.1:5001"))
        .await
        .unwrap();
    assert_eq!((s.recvfd.held_count(), open_fds_of(&w2)), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn expiry_closes_the_fd() {
    let dir = TempDir::new();
    let (_listener, path, witness) = endpoint_socket(&dir, "nse");
    let period = Duration::from_secs(60);
    let expire: RegistryElement<Nse> = Arc::new(ExpireServer::new(period));
    let mut s = setup_with(vec![expire], vec![]);
    let inode = s.fds.pass(&path).await;
    s.register(nse_at("nse", &inode)).await.unwrap();
    assert_eq!(open_fds_of(&witness), 1);
    tokio::time::advance(period + Duration::from_secs(1)).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(s.memory.get("nse").is_none(), "expired");
    assert_eq!(s.recvfd.held_count(), 0);
    assert_eq!(open_fds_of(&witness), 0, "closed on expiry");
}

#[tokio::test]
async fn without_an_fd_side_channel_urls_pass_unchanged() {
    let s = setup();
    let mut ctx = Ctx::new(Clock::system());
    let reg = s
        .chain
        .run_register(&mut ctx, nse_at("nse", "inode://1/2"))
        .await
        .unwrap();
    assert_eq!(reg.url, "inode://1/2");
    assert_eq!(s.memory.get("nse").unwrap().url, "inode://1/2");
    let plain = s
        .chain
        .run_register(&mut ctx, nse_at("other", "unix:///run/nse.sock"))
        .await
        .unwrap();
    assert_eq!(plain.url, "unix:///run/nse.sock");
    assert_eq!(s.recvfd.held_count(), 0);
}
