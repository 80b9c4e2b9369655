use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use nsm_identity::{DevCa, MemorySource, TlsIdentity};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::*;

fn temp_file(content: &[u8]) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("passed");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(content).unwrap();
    (dir, path)
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(format!("nsm-fdconn-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn pair() -> (FdUnixStream, FdUnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    (FdUnixStream::new(a), FdUnixStream::new(b))
}

fn key_of_path(p: &Path) -> InodeKey {
    let st = rustix::fs::stat(p).unwrap();
    InodeKey {
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

#[tokio::test]
async fn an_fd_rides_on_one_byte_and_the_stream_is_intact() {
    let (file_dir, path) = temp_file(b"x");
    let (mut a, mut b) = pair();
    let (url, _) = a.transceiver().send_path(&path).unwrap();
    assert_eq!(url, key_of_path(&path).url());
    let tx = a.transceiver();
    assert_eq!(tx.queued(), 1);

    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        a.write_all(&sent).await.unwrap();
        a.flush().await.unwrap();
        a
    });
    let mut got = vec![0u8; payload.len()];
    b.read_exact(&mut got).await.unwrap();
    assert_eq!(got, payload);
    let _a = writer.await.unwrap();
    assert_eq!(tx.queued(), 0, "the fd left with the first byte");

    let rx = b.transceiver();
    let fd = rx.recv(key_of_path(&path)).await.unwrap();
    assert_eq!(InodeKey::of(&fd).unwrap(), key_of_path(&path));
    assert_eq!(rx.unclaimed(), 0, "claimed once");
    drop(file_dir);
}

#[tokio::test]
async fn a_waiter_is_woken_when_its_fd_arrives_and_fails_when_the_connection_ends() {
    let (_d1, p1) = temp_file(b"1");
    let (_d2, p2) = temp_file(b"2");
    let (mut a, mut b) = pair();
    let rx = b.transceiver();
    let waiting = tokio::spawn({
        let rx = rx.clone();
        let k = key_of_path(&p2);
        async move { rx.recv(k).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished());
    // Two fds on a three-byte write: one byte each, then the last byte plainly.
    a.transceiver().send_path(&p1).unwrap();
    a.transceiver().send_path(&p2).unwrap();
    a.write_all(b"abc").await.unwrap();
    let mut got = [0u8; 3];
    b.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"abc");
    let fd = waiting.await.unwrap().unwrap();
    assert_eq!(InodeKey::of(&fd).unwrap(), key_of_path(&p2));
    assert_eq!(rx.unclaimed(), 1, "p1 is still there");
    rx.discard(key_of_path(&p1));
    assert_eq!(rx.unclaimed(), 0);

    let late = tokio::spawn({
        let rx = rx.clone();
        let k = key_of_path(&p1);
        async move { rx.recv(k).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(b);
    assert!(matches!(late.await.unwrap(), Err(FdError::Closed)));
    assert!(rx.is_closed());
}

#[tokio::test]
async fn a_withdrawn_fd_does_not_leave() {
    let (_d, p) = temp_file(b"1");
    let (mut a, mut b) = pair();
    let (_, ticket) = a.transceiver().send_path(&p).unwrap();
    assert!(a.transceiver().withdraw(ticket));
    a.write_all(b"z").await.unwrap();
    let mut got = [0u8; 1];
    b.read_exact(&mut got).await.unwrap();
    assert_eq!(b.transceiver().unclaimed(), 0);
}

#[tokio::test(start_paused = true)]
async fn unclaimed_fds_expire() {
    let (_d1, p1) = temp_file(b"1");
    let (_d2, p2) = temp_file(b"2");
    let (mut a, mut b) = pair();
    a.transceiver().send_path(&p1).unwrap();
    a.write_all(b"a").await.unwrap();
    let mut got = [0u8; 1];
    b.read_exact(&mut got).await.unwrap();
    assert_eq!(b.transceiver().unclaimed(), 1);
    tokio::time::advance(UNCLAIMED_TTL + Duration::from_secs(1)).await;
    a.transceiver().send_path(&p2).unwrap();
    a.write_all(b"b").await.unwrap();
    b.read_exact(&mut got).await.unwrap();
    assert_eq!(b.transceiver().unclaimed(), 1, "p1 expired, p2 is new");
}

/// Counts this process's open fds naming `path`'s inode.
fn open_fds_of(path: &Path) -> usize {
    let want = key_of_path(path);
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let st = rustix::fs::stat(&p).ok()?;
            (st.st_dev == want.dev && st.st_ino == want.ino).then_some(())
        })
        .count()
}

#[tokio::test]
async fn the_connection_closing_closes_unclaimed_and_queued_fds() {
    let (_d1, p1) = temp_file(b"1");
    let (_d2, p2) = temp_file(b"2");
    let (mut a, mut b) = pair();
    a.transceiver().send_path(&p1).unwrap();
    a.write_all(b"a").await.unwrap();
    let mut got = [0u8; 1];
    b.read_exact(&mut got).await.unwrap();
    a.transceiver().send_path(&p2).unwrap();
    assert_eq!(open_fds_of(&p1), 1, "received, unclaimed");
    assert_eq!(open_fds_of(&p2), 1, "queued");
    let tx = a.transceiver();
    drop((a, b));
    assert_eq!(open_fds_of(&p1), 0);
    assert_eq!(open_fds_of(&p2), 0);
    assert!(matches!(tx.send_path(&p2), Err(FdError::Closed)));
    assert_eq!(open_fds_of(&p2), 0, "a refused fd is not kept");
}

fn tls_pair() -> (Arc<TlsIdentity>, Arc<TlsIdentity>) {
    let ca = DevCa::new("example.org").unwrap();
    let id = |path: &str| {
        let src = Arc::new(MemorySource::new(
            ca.material(path, Duration::from_secs(3600)).unwrap(),
        ));
        TlsIdentity::new(src).unwrap()
    };
    (id("/server"), id("/client"))
}

#[tokio::test]
async fn fds_pass_below_tls_and_the_tls_stream_is_intact() {
    nsm_identity::install_crypto_provider();
    let (server_id, client_id) = tls_pair();
    let (_d, path) = temp_file(b"netns stand-in");
    let (a, b) = pair();
    let (client_fds, server_fds) = (a.transceiver(), b.transceiver());

    let server = tokio::spawn(async move {
        let mut tls = server_id.acceptor().accept(b).await.unwrap();
        let mut got = vec![0u8; 64 * 1024];
        tls.read_exact(&mut got).await.unwrap();
        tls.write_all(b"pong").await.unwrap();
        tls.flush().await.unwrap();
        // Kept open: its end would close the fds not claimed yet.
        (got, tls)
    });
    let name = ServerName::try_from("nsm").unwrap();
    let mut tls = client_id.connector().connect(name, a).await.unwrap();
    // Queued after the handshake: the fd rides on a TLS record byte of the application data.
    let (url, _) = client_fds.send_path(&path).unwrap();
    let payload: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 253) as u8).collect();
    tls.write_all(&payload).await.unwrap();
    tls.flush().await.unwrap();
    let mut pong = [0u8; 4];
    tls.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"pong");
    let (got, _server_tls) = server.await.unwrap();
    assert_eq!(got, payload, "the TLS byte stream is intact");

    let key = InodeKey::from_url(&url).unwrap();
    assert_eq!(key, key_of_path(&path));
    let fd = tokio::time::timeout(Duration::from_secs(2), server_fds.recv(key))
        .await
        .unwrap()
        .unwrap();
    let got = InodeKey::of(fd.as_fd()).unwrap();
    assert_eq!(got, key_of_path(&path), "right dev/ino");
}
