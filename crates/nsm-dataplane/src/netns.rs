//! Network namespace handles.
//!
//! Namespace membership is per thread, so nothing here ever calls `setns` on a tokio worker: work that
//! must *run* inside a namespace happens on a short-lived dedicated thread ([`Netns::run`]), and a netlink
//! socket is created on such a thread and then used from anywhere — a socket stays bound to the namespace
//! it was created in (reference rust-deps §3: setns → new_connection → setns back). If switching back
//! failed, the thread just ends, so no thread is ever left in a foreign namespace.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;

/// An open network namespace file (`/proc/<pid>/ns/net`, `/var/run/netns/<name>`, …).
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
}

impl Netns {
    /// Opens `path` and checks that it is a network namespace (by entering it on a scratch thread, the
    /// only check the kernel really guarantees).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let ns = Self {
            path: path.to_path_buf(),
            file,
        };
        ns.run(|| ())?;
        Ok(ns)
    }

    /// The namespace of this process (the forwarder's node namespace).
    pub fn current() -> io::Result<Self> {
        Self::open(Path::new("/proc/self/ns/net"))
    }

    /// The file path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw fd, for `IFLA_NET_NS_FD`; valid while `self` lives.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| -> io::Result<T> {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                    io::Error::new(
                        io::Error::from(e).kind(),
                        format!("not a network namespace ({e})"),
                    )
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("namespace worker thread panicked"))?
        })
    }

    /// A netlink handle bound to this namespace. Must be called inside a tokio runtime: the connection
    /// task is spawned on it and ends when the last clone of the handle is dropped.
    pub fn netlink(&self) -> io::Result<Handle> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = self.run(move || {
            let _enter = rt.enter();
            rtnetlink::new_connection()
        })??;
        tokio::spawn(conn);
        Ok(handle)
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())
    }
}
