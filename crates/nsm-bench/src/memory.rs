//! `memory`: how much an NSMgr grows per established connection.
//!
//! Two scopes:
//! * **process** — the whole sandbox domain in this process (client, NSMgr, forwarder, NSE and the
//!   registry). RSS and net heap growth cover *every hop*, so they are an upper bound for the NSMgr.
//! * **nsmgr** — the NSMgr alone in a child process (see [`crate::child`]); the client, forwarder and
//!   endpoint stay here. The child's RSS and net heap growth are the NSMgr's own.
//!
//! Each run warms up with Request+Close cycles, reads memory, establishes N connections (fresh ids,
//! bounded concurrency), reads memory, closes them all, lets background work settle and reads memory
//! again — the leak check.
//!
//! `secure` runs every hop as a production mesh does (see [`Security`]): SPIFFE mTLS with SVIDs from
//! one development CA, ES256 tokens and the default policies. In scope `nsmgr` the parent creates the
//! CA and hands its directory to the child, which issues the NSMgr's own SVID from it.

use std::ffi::OsString;
use std::fmt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use nsm_api::Connection;
use nsm_api::registry::{NetworkServiceEndpoint, NetworkServiceLabels};
use nsm_api::url::NsmUrl;
use nsm_chains::endpoint::{Endpoint, EndpointOptions};
use nsm_chains::forwarder::{Forwarder, ForwarderOptions, NoopDataplane, registration};
use nsm_chains::registry_client::{ns_registry_client_with, nse_registry_client_with};
use nsm_core::{Chain, Clock, Ctx};
use nsm_identity::DevCa;
use nsm_sandbox::Restartable;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio_util::sync::CancellationToken;

use crate::child::loopback;
use crate::setup::{
    CALL_TIMEOUT, DIAL_TIMEOUT, ENDPOINT, RemovedOnDrop, SERVICE, Security, domain, nsc, request,
    service,
};
use crate::stats::{kib, rss_bytes};
use crate::{BenchError, Result, alloc};

/// Where the memory is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    /// The whole domain in this process (all hops).
    Process,
    /// The NSMgr alone in a child process.
    Nsmgr,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Process => "process (client + NSMgr + forwarder + NSE + registry)",
            Scope::Nsmgr => "NSMgr alone (child process)",
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct MemoryOpts {
    /// Connections to hold at once.
    pub connections: usize,
    /// Requests (and Closes) in flight while establishing (and closing).
    pub concurrency: usize,
    /// Whether the NSC heals (one MonitorConnections stream per connection through the NSMgr).
    pub heal: bool,
    /// Full security on every hop (mTLS, ES256 tokens, default policies) instead of plaintext.
    pub secure: bool,
    /// Return malloc's free pages to the system (`malloc_trim(0)`) before every reading, to tell the
    /// memory held by connections from the free memory malloc keeps.
    pub malloc_trim: bool,
    /// Scope `nsmgr`, for heap profilers (`NSM_BENCH_CHILD_WRAPPER`): abort the NSMgr child right
    /// after the established reading, so that what it has not freed is what the held connections
    /// keep; nothing is closed and the close readings repeat the established one.
    pub abort_held: bool,
    /// Unmeasured Request+Close cycles before the baseline.
    pub warmup: usize,
    /// Give up establishing (or closing) after this long.
    pub phase_limit: Duration,
    /// Program and arguments that start [`crate::child::nsmgr_child`] (scope `nsmgr`).
    pub child_command: Vec<OsString>,
}

/// A memory reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    /// Resident set size.
    pub rss: Option<u64>,
    /// Net heap bytes (counting allocator; compare readings).
    pub heap: Option<i64>,
    /// Connections the NSMgr holds: in scope `nsmgr` its server chain's `begin` count; in scope
    /// `process` its server chain's `metadata` entries (also one per connection; the sandbox counts
    /// `begin` for the server and the onward client chain together).
    pub held: Option<usize>,
    /// glibc's bytes in use and bytes free but kept ([`alloc::malloc_view`]), where known.
    pub malloc: Option<(u64, u64)>,
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct MemoryReport {
    /// Where memory was read.
    pub scope: Scope,
    /// What ran.
    pub connections: usize,
    /// Whether the NSC healed.
    pub heal: bool,
    /// Whether every hop was secured.
    pub secure: bool,
    /// After warm-up.
    pub before: Reading,
    /// With every connection established.
    pub established: Reading,
    /// After closing them all.
    pub closed: Reading,
    /// In the isolated run: this (parent) process's heap growth — client, forwarder and NSE.
    pub parent_heap_growth: Option<i64>,
    /// Time to establish all connections.
    pub establish_time: Duration,
    /// Time to close them.
    pub close_time: Duration,
}

fn delta_u(a: Option<u64>, b: Option<u64>) -> Option<f64> {
    Some(b? as f64 - a? as f64)
}

fn delta_i(a: Option<i64>, b: Option<i64>) -> Option<f64> {
    Some((b? - a?) as f64)
}

impl MemoryReport {
    /// RSS growth per established connection, bytes.
    pub fn rss_per_connection(&self) -> Option<f64> {
        delta_u(self.before.rss, self.established.rss).map(|d| d / self.connections as f64)
    }
    /// Net heap growth per established connection, bytes.
    pub fn heap_per_connection(&self) -> Option<f64> {
        delta_i(self.before.heap, self.established.heap).map(|d| d / self.connections as f64)
    }
    /// Net heap left per connection after closing everything (leak check), bytes.
    pub fn heap_left_per_connection(&self) -> Option<f64> {
        delta_i(self.before.heap, self.closed.heap).map(|d| d / self.connections as f64)
    }
    /// RSS left per connection after closing everything, bytes (the allocator may keep freed pages).
    pub fn rss_left_per_connection(&self) -> Option<f64> {
        delta_u(self.before.rss, self.closed.rss).map(|d| d / self.connections as f64)
    }
    /// Growth per established connection of malloc's bytes in use (requested bytes plus chunk
    /// headers and rounding) and of its free-but-kept bytes.
    pub fn malloc_per_connection(&self) -> Option<(f64, f64)> {
        let (b, e) = (self.before.malloc?, self.established.malloc?);
        let n = self.connections as f64;
        Some(((e.0 as f64 - b.0 as f64) / n, (e.1 as f64 - b.1 as f64) / n))
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), kib)
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "memory: {} connections, heal={}, {}, scope: {}",
            self.connections,
            self.heal,
            if self.secure {
                "secured (mTLS, ES256 tokens, default policies)"
            } else {
                "plaintext"
            },
            self.scope
        )?;
        writeln!(
            f,
            "  established in {:.2} s, closed in {:.2} s",
            self.establish_time.as_secs_f64(),
            self.close_time.as_secs_f64()
        )?;
        if let (Some(a), Some(b), Some(c)) =
            (self.before.held, self.established.held, self.closed.held)
        {
            writeln!(
                f,
                "  NSMgr connections held: before {a}, established {b}, closed {c}"
            )?;
        }
        writeln!(
            f,
            "  RSS   {} MiB -> {} MiB -> {} MiB",
            mib(self.before.rss),
            mib(self.established.rss),
            mib(self.closed.rss)
        )?;
        writeln!(
            f,
            "  per connection: RSS {}  heap {}",
            opt(self.rss_per_connection()),
            opt(self.heap_per_connection())
        )?;
        if let Some((in_use, free)) = self.malloc_per_connection() {
            writeln!(
                f,
                "  glibc malloc per connection: in use {} (requested + chunk overhead), free but kept {}",
                kib(in_use),
                kib(free)
            )?;
        }
        if self.scope == Scope::Process {
            writeln!(
                f,
                "  (all hops: client, NSMgr, forwarder, NSE; /4 hops: RSS {}  heap {})",
                opt(self.rss_per_connection().map(|b| b / 4.0)),
                opt(self.heap_per_connection().map(|b| b / 4.0))
            )?;
        }
        if let Some(p) = self.parent_heap_growth {
            writeln!(
                f,
                "  parent (client + forwarder + NSE) heap per connection {}",
                kib(p as f64 / self.connections as f64)
            )?;
        }
        write!(
            f,
            "  after close (leak check): heap {} per connection, RSS {} per connection",
            opt(self.heap_left_per_connection()),
            opt(self.rss_left_per_connection())
        )
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or_else(|| "n/a".into(), |b| format!("{:.1}", b as f64 / 1048576.0))
}

/// Reads memory somewhere.
trait Probe {
    fn read(&mut self) -> impl Future<Output = Result<Reading>>;
    /// `malloc_trim(0)` there.
    fn trim(&mut self) -> impl Future<Output = Result<()>>;
    /// Ends the measured process at once (see [`MemoryOpts::abort_held`]).
    fn abort(&mut self) -> impl Future<Output = Result<()>>;
}

/// This process.
struct SelfProbe {
    counting: bool,
    /// The domain's NSMgr, for its connections held.
    nsmgr: Arc<Restartable>,
}

impl Probe for SelfProbe {
    async fn trim(&mut self) -> Result<()> {
        alloc::malloc_trim();
        Ok(())
    }

    async fn abort(&mut self) -> Result<()> {
        // [`run`] refuses this before starting; kept so a misuse cannot end the benchmark process.
        Err(abort_needs_nsmgr())
    }

    async fn read(&mut self) -> Result<Reading> {
        Ok(Reading {
            rss: rss_bytes(None),
            heap: self.counting.then(alloc::net_bytes),
            held: self.nsmgr.state().await.map(|s| s.metadata),
            malloc: alloc::malloc_view(),
        })
    }
}

/// [`MemoryOpts::abort_held`] outside scope `nsmgr`.
fn abort_needs_nsmgr() -> Box<dyn std::error::Error + Send + Sync> {
    BenchError::boxed("--abort-held needs --scope nsmgr")
}

/// Runs one memory benchmark in `scope`.
pub async fn run(scope: Scope, opts: &MemoryOpts) -> Result<MemoryReport> {
    if opts.abort_held && scope != Scope::Nsmgr {
        return Err(abort_needs_nsmgr());
    }
    let counting = alloc::enable();
    match scope {
        Scope::Process => {
            let sb = domain(crate::setup::Mode::Local, opts.secure).await?;
            let security = match sb.identities() {
                Some(ids) => Security::secured(ids.ca().clone(), sb.clock()),
                None => Security::plaintext(sb.clock()),
            };
            let client = nsc(sb.nodes[0].nsmgr.url(), opts.heal, &security)?;
            let mut probe = SelfProbe {
                counting,
                nsmgr: sb.nodes[0].nsmgr.clone(),
            };
            let (report, _) = measure(scope, opts, &client, sb.clock(), &mut probe).await?;
            Ok(report)
        }
        Scope::Nsmgr => {
            let mut iso = Isolated::start(opts).await?;
            let client = nsc(&iso.nsmgr_url, opts.heal, &iso.security)?;
            let (mut report, parent_growth) =
                measure(scope, opts, &client, Clock::system(), &mut iso.stats).await?;
            if counting {
                report.parent_heap_growth = Some(parent_growth);
            }
            iso.finish().await;
            Ok(report)
        }
    }
}

/// Returns the report and this process's net heap growth from baseline to established.
async fn measure(
    scope: Scope,
    opts: &MemoryOpts,
    client: &Arc<Chain>,
    clock: Clock,
    probe: &mut impl Probe,
) -> Result<(MemoryReport, i64)> {
    for _ in 0..opts.warmup {
        crate::control_plane::cycle(client, clock).await?;
    }
    settle().await;
    let before = read(opts, probe).await?;
    let local_before = alloc::net_bytes();

    let t0 = clock.instant();
    let establishing = futures::stream::iter(0..opts.connections)
        .map(|_| {
            let client = client.clone();
            async move {
                client
                    .run_request(&mut Ctx::new(clock).with_timeout(CALL_TIMEOUT), request())
                    .await
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect::<Vec<Connection>>();
    let conns = within(opts, "establishing", establishing).await??;
    let establish_time = clock.instant() - t0;
    settle().await;
    let local_growth = alloc::net_bytes() - local_before;
    let established = read(opts, probe).await?;
    let report = |closed, close_time| MemoryReport {
        scope,
        connections: opts.connections,
        heal: opts.heal,
        secure: opts.secure,
        before,
        established,
        closed,
        parent_heap_growth: None,
        establish_time,
        close_time,
    };
    if opts.abort_held {
        probe.abort().await?;
        return Ok((report(established, Duration::ZERO), local_growth));
    }

    let t1 = clock.instant();
    let closing = futures::stream::iter(conns)
        .map(|conn| {
            let client = client.clone();
            async move {
                client
                    .run_close(&mut Ctx::new(clock).with_timeout(CALL_TIMEOUT), conn)
                    .await
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect::<()>();
    within(opts, "closing", closing).await??;
    let close_time = clock.instant() - t1;
    settle().await;
    let closed = read(opts, probe).await?;
    Ok((report(closed, close_time), local_growth))
}

/// A reading, after `malloc_trim(0)` if asked.
async fn read(opts: &MemoryOpts, probe: &mut impl Probe) -> Result<Reading> {
    if opts.malloc_trim {
        probe.trim().await?;
    }
    probe.read().await
}

/// Bounds a phase by [`MemoryOpts::phase_limit`].
async fn within<T>(opts: &MemoryOpts, phase: &str, f: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(opts.phase_limit, f).await.map_err(|_| {
        BenchError::boxed(format!(
            "{phase} {} connections did not finish within {:?} (every Request/Close publishes a \
             monitor event to every passthrough subscriber of the hop, so this phase is O(n^2); \
             see BENCHMARKS.md)",
            opts.connections, opts.phase_limit
        ))
    })
}

/// Lets spawned work (monitor streams, begin's per-connection tasks, HTTP/2 housekeeping) finish.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The child's stdio.
struct ChildStats {
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Probe for ChildStats {
    async fn abort(&mut self) -> Result<()> {
        self.stdin.write_all(b"abort\n").await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn trim(&mut self) -> Result<()> {
        self.stdin.write_all(b"trim\n").await?;
        self.stdin.flush().await?;
        match self.line().await? {
            l if l == "TRIMMED" => Ok(()),
            l => Err(BenchError::boxed(format!("unexpected child answer {l:?}"))),
        }
    }

    async fn read(&mut self) -> Result<Reading> {
        self.stdin.write_all(b"stats\n").await?;
        self.stdin.flush().await?;
        let line = self.line().await?;
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["STATS", rss, heap, held, malloc @ ..] => Ok(Reading {
                rss: rss.parse().ok(),
                heap: heap.parse().ok(),
                held: held.parse().ok(),
                malloc: match malloc {
                    [in_use, free] => in_use.parse().ok().zip(free.parse().ok()),
                    _ => None,
                },
            }),
            _ => Err(BenchError::boxed(format!(
                "unexpected child answer {line:?}"
            ))),
        }
    }
}

impl ChildStats {
    /// The child's next protocol line (`URL …` or `STATS …`); other lines — e.g. a profiler's own
    /// output under `NSM_BENCH_CHILD_WRAPPER` — are skipped.
    async fn line(&mut self) -> Result<String> {
        loop {
            let line = self
                .stdout
                .next_line()
                .await?
                .ok_or_else(|| BenchError::boxed("the NSMgr child exited"))?;
            if line.starts_with("URL ") || line.starts_with("STATS ") || line == "TRIMMED" {
                return Ok(line);
            }
        }
    }
}

/// The isolated setup: the NSMgr in a child process, a forwarder and the endpoint here, registered
/// with it.
struct Isolated {
    child: Child,
    stats: ChildStats,
    nsmgr_url: NsmUrl,
    security: Security,
    /// Secured: the directory the child loads the CA from.
    _ca_dir: Option<RemovedOnDrop>,
    stop: CancellationToken,
    _forwarder: Restartable,
    _endpoint: Restartable,
}

/// The trust domain of the isolated run's development CA.
const TRUST_DOMAIN: &str = "bench.nsm";

impl Isolated {
    async fn start(opts: &MemoryOpts) -> Result<Self> {
        let clock = Clock::system();
        let (program, args) = opts
            .child_command
            .split_first()
            .ok_or_else(|| BenchError::boxed("no child command"))?;
        let mut command = tokio::process::Command::new(program);
        command.args(args);
        let (security, ca_dir) = if opts.secure {
            let ca = Arc::new(DevCa::new(TRUST_DOMAIN)?);
            let dir = std::env::temp_dir().join(format!(
                "nsm-bench-ca-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            let dir = RemovedOnDrop(dir);
            ca.save(&dir.0)?;
            command.arg("--ca-dir").arg(&dir.0);
            (Security::secured(ca, clock), Some(dir))
        } else {
            (Security::plaintext(clock), None)
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(BenchError::boxed("child stdio not piped"));
        };
        let mut stats = ChildStats {
            stdin,
            stdout: BufReader::new(stdout).lines(),
        };
        let first = stats.line().await?;
        let nsmgr_url = match first.strip_prefix("URL ") {
            Some(u) => NsmUrl::parse(u).map_err(|e| BenchError::boxed(e.to_string()))?,
            None => {
                return Err(BenchError::boxed(format!(
                    "unexpected child line {first:?}"
                )));
            }
        };
        let stop = CancellationToken::new();
        let ctx = || Ctx::new(clock).with_timeout(CALL_TIMEOUT);
        let admin = security.transport("bench-admin")?;
        ns_registry_client_with(nsmgr_url.clone(), DIAL_TIMEOUT, &stop, &admin)
            .run_register(&mut ctx(), service())
            .await?;

        let forwarder = Self::forwarder(&security, &nsmgr_url, &stop).await?;
        let endpoint = Self::endpoint(&security, &nsmgr_url, &stop).await?;
        Ok(Self {
            child,
            stats,
            nsmgr_url,
            security,
            _ca_dir: ca_dir,
            stop,
            _forwarder: forwarder,
            _endpoint: endpoint,
        })
    }

    /// Serves the forwarder here and registers it with the NSMgr.
    async fn forwarder(
        security: &Security,
        nsmgr_url: &NsmUrl,
        stop: &CancellationToken,
    ) -> Result<Restartable> {
        const NAME: &str = "forwarder-0";
        let clock = Clock::system();
        let transport = security.transport(NAME)?;
        let (connect_to, tokens, sec, t) = (
            nsmgr_url.clone(),
            security.tokens(&transport),
            security.clone(),
            transport.clone(),
        );
        let forwarder = Restartable::start_with(NAME, loopback(), transport.clone(), move |_url| {
            let f = Forwarder::new(
                ForwarderOptions {
                    dial_timeout: DIAL_TIMEOUT,
                    security: t.clone(),
                    authorize: sec.server_authorize(),
                    ..ForwarderOptions::new(NAME, connect_to.clone(), tokens.clone(), clock)
                },
                &NoopDataplane,
            );
            (f.routes(), Box::new(f))
        })
        .await?;
        let p2p = [("p2p".to_string(), "true".to_string())].into();
        nse_registry_client_with(nsmgr_url.clone(), DIAL_TIMEOUT, stop, &transport)
            .run_register(
                &mut Ctx::new(clock).with_timeout(CALL_TIMEOUT),
                registration(NAME, "forwarder", p2p, forwarder.url()),
            )
            .await?;
        Ok(forwarder)
    }

    /// Serves the endpoint here and registers it with the NSMgr.
    async fn endpoint(
        security: &Security,
        nsmgr_url: &NsmUrl,
        stop: &CancellationToken,
    ) -> Result<Restartable> {
        let clock = Clock::system();
        let transport = security.transport(ENDPOINT)?;
        let (tokens, sec, t) = (
            security.tokens(&transport),
            security.clone(),
            transport.clone(),
        );
        let endpoint =
            Restartable::start_with(ENDPOINT, loopback(), transport.clone(), move |_url| {
                let mut o = EndpointOptions::new(ENDPOINT, tokens.clone(), clock);
                o.security = t.clone();
                o.authorize = sec.server_authorize();
                let e = Endpoint::new(o);
                (e.routes(), Box::new(e))
            })
            .await?;
        nse_registry_client_with(nsmgr_url.clone(), DIAL_TIMEOUT, stop, &transport)
            .run_register(
                &mut Ctx::new(clock).with_timeout(CALL_TIMEOUT),
                NetworkServiceEndpoint {
                    name: ENDPOINT.into(),
                    network_service_names: vec![SERVICE.into()],
                    network_service_labels: [(SERVICE.into(), NetworkServiceLabels::default())]
                        .into(),
                    url: endpoint.url().to_string(),
                    ..Default::default()
                },
            )
            .await?;
        Ok(endpoint)
    }

    async fn finish(mut self) {
        self.stop.cancel();
        let _ = self.stats.stdin.write_all(b"quit\n").await;
        let _ = self.stats.stdin.flush().await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
