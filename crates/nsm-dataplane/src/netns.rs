//! Network namespace handles.
//!
//! Namespace membership is per thread, so nothing here ever calls `setns` on a tokio worker: work that
//! must *run* inside a namespace happens on a short-lived dedicated thread ([`Netns::run`]), and a netlink
//! socket is created on such a thread and then used from anywhere — a socket stays bound to the namespace
//! it was created in (reference rust-deps §3: setns → new_connection → setns back). If switching back
//! failed, the thread just ends, so no thread is ever left in a foreign namespace.
//!
//! A netlink request is executed by the kernel *inside* `sendmsg`, so the thread that sends it waits for
//! the whole operation: deleting a link takes ~20–40 ms there (the kernel's `rcu_barrier` after it
//! unregistered the device), creating one can wait for the RTNL lock. So every netlink connection of
//! [`Netns::netlink`] is driven on its own thread (the one that entered the namespace to create the
//! socket, with a single-threaded runtime), never on a tokio worker: a slow request blocks only its own
//! socket, and requests on different handles run in the kernel in parallel.
//!
//! [`NetlinkHost`] is the cheaper way for short-lived handles whose requests are all quick (the
//! executor's pod sockets: links up, addresses, routes, neighbours — never a deletion): one thread
//! makes each socket in its namespace (`setns` there and back) and drives all their connections,
//! instead of a thread and a runtime per handle.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};
use rtnetlink::Handle;

/// An open network namespace file (`/proc/<pid>/ns/net`, `/var/run/netns/<name>`, …).
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
}

impl Netns {
    /// Opens `path` and checks that it is a namespace file (on the kernel's nsfs). Whether it is a
    /// *network* namespace shows when it is entered ([`Netns::run`], [`Netns::netlink`]), which fails
    /// otherwise — checking here by entering it would cost a thread per open.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        if fstatfs(&file)?.filesystem_type() != NSFS_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a network namespace (not a namespace file)",
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Another handle on the same namespace (a duplicated fd).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            path: self.path.clone(),
            file: self.file.try_clone()?,
        })
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
                enter(&self.file)?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("namespace worker thread panicked"))?
        })
    }

    /// Runs `f` on a new, detached thread that has entered this namespace (`f` gets the error if it
    /// could not); the thread ends with `f`. For blocking work whose result is awaited elsewhere.
    pub fn spawn(
        &self,
        name: &str,
        f: impl FnOnce(io::Result<()>) + Send + 'static,
    ) -> io::Result<()> {
        let file = self.file.try_clone()?;
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let entered = enter(file);
                f(entered);
            })
            .map(drop)
    }

    /// A netlink handle bound to this namespace. Its connection runs on a thread of its own (see the
    /// module doc), which ends when the last clone of the handle is dropped.
    pub fn netlink(&self) -> io::Result<Handle> {
        self.drive("nsm-netlink", || {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            Ok((handle, conn))
        })
    }

    /// Starts a thread that enters this namespace and calls `setup` there, inside a single-threaded
    /// runtime of its own; returns what `setup` made for the caller, while the thread goes on to drive
    /// the future `setup` returned with it until that future ends. Used for netlink connections: their
    /// sockets are made in the namespace and their slow requests block only this thread.
    pub fn drive<T, F>(
        &self,
        name: &str,
        setup: impl FnOnce() -> io::Result<(T, F)> + Send + 'static,
    ) -> io::Result<T>
    where
        T: Send + 'static,
        F: Future<Output = ()> + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.spawn(name, move |entered| {
            let rt = entered.and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
            });
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let made = {
                let _enter = rt.enter();
                setup()
            };
            match made {
                Ok((value, future)) => {
                    if tx.send(Ok(value)).is_ok() {
                        rt.block_on(future);
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
        rx.recv()
            .map_err(|_| io::Error::other("netlink thread ended before it was set up"))?
    }
}

/// One thread that makes netlink sockets in given namespaces and drives their connections (see the
/// module doc). Between sockets the thread is back in the namespace it started in, so it never keeps
/// a pod's namespace alive; if it cannot get back, it ends, and [`NetlinkHost::netlink`] falls back
/// to [`Netns::netlink`]. The thread ends when the host is dropped (with the connections still open
/// on it).
#[derive(Debug)]
pub struct NetlinkHost {
    jobs: tokio::sync::mpsc::UnboundedSender<HostJob>,
}

/// A socket to make: in the namespace of the file, answered on the channel.
type HostJob = (File, tokio::sync::oneshot::Sender<io::Result<Handle>>);

impl NetlinkHost {
    /// Starts the host thread, named `name`.
    pub fn new(name: &str) -> io::Result<Self> {
        let home = File::open("/proc/thread-self/ns/net")?;
        let (jobs, mut rx) = tokio::sync::mpsc::unbounded_channel::<HostJob>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    while let Some((ns, reply)) = rx.recv().await {
                        let made = enter(ns).and_then(|()| rtnetlink::new_connection());
                        let home_again = setns(home.as_fd(), CloneFlags::CLONE_NEWNET);
                        let answer = made.map(|(conn, handle, _)| {
                            tokio::task::spawn_local(conn);
                            handle
                        });
                        let _ = reply.send(answer);
                        if let Err(e) = home_again {
                            tracing::warn!(
                                "netlink host: cannot return to its namespace ({e}); ending"
                            );
                            return;
                        }
                    }
                });
            })?;
        Ok(Self { jobs })
    }

    /// A netlink handle bound to `ns`, its connection driven by the host thread (or, if that thread
    /// has ended, by a thread of its own: [`Netns::netlink`]).
    pub async fn netlink(&self, ns: &Netns) -> io::Result<Handle> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.jobs.send((ns.file.try_clone()?, tx)).is_ok()
            && let Ok(answer) = rx.await
        {
            return answer;
        }
        ns.netlink()
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

/// Moves the calling thread into the network namespace `file` refers to (then closes `file` if it
/// was given by value).
fn enter(file: impl AsFd) -> io::Result<()> {
    setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("not a network namespace ({e})"),
        )
    })
}
