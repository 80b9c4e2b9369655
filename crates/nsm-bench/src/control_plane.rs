//! `control-plane`: sequential (or C-way concurrent) Request+Close cycles from an NSC through the
//! NSMgr and forwarder to an NSE, every hop a real gRPC server in this process: on TCP 127.0.0.1, or
//! (`--transport unix`) on unix sockets with the NSMgrs also on TCP for each other, as deployed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use nsm_api::url::NsmUrl;
use nsm_core::{Chain, Clock, Ctx};
use nsm_networkservice::grpc::client_channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::Result;
use crate::setup::{CALL_TIMEOUT, DIAL_TIMEOUT, Mode, Transport, domain_over, nsc, request};
use crate::stats::Summary;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct ControlPlaneOpts {
    /// Local or remote path.
    pub mode: Mode,
    /// TCP everywhere, or unix sockets for the local hops.
    pub transport: Transport,
    /// Measured cycles.
    pub iterations: usize,
    /// Unmeasured cycles first (dials, lazy initialisation, allocator warm-up).
    pub warmup: usize,
    /// Cycles in flight at once.
    pub concurrency: usize,
    /// Whether the NSC heals (opens a MonitorConnections stream per connection).
    pub heal: bool,
    /// Hold one other connection open for the whole run, so that every hop's `dial` keeps its
    /// channel to the next hop (as on a node that already serves a connection). Without it each
    /// sequential cycle closes the last connection to each URL, `dial` drops the channel, and the next
    /// Request dials every hop again (3 TCP + HTTP/2 handshakes locally, 5 remotely).
    pub warm_channels: bool,
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct ControlPlaneReport {
    /// What ran.
    pub opts: ControlPlaneOpts,
    /// Path segments of the established connection.
    pub segments: usize,
    /// Request alone.
    pub request: Summary,
    /// Close alone.
    pub close: Summary,
    /// Request + Close.
    pub cycle: Summary,
    /// Wall time of the measured cycles.
    pub wall: Duration,
    /// CPU time of the whole process (every thread) per measured cycle, if `/proc` could be read:
    /// what a cycle costs, apart from waiting for a CPU on a loaded machine.
    pub cpu_per_cycle: Option<Duration>,
    /// Heap allocations and bytes allocated per cycle (whole process), counted over extra cycles
    /// after the timed ones (counting costs a few atomic operations per allocation); `None` without
    /// the counting allocator.
    pub allocs_per_cycle: Option<(f64, f64)>,
    /// The floor: one unary gRPC call (grpc.health.v1 Check) to the NSMgr on an open channel.
    pub rpc_floor: Summary,
    /// One `tokio::fs::metadata` of a missing file (a blocking-pool round trip), as `excludedprefixes`
    /// does on every Request in the NSMgr.
    pub stat: Summary,
}

impl ControlPlaneReport {
    /// Completed cycles per second of wall time.
    pub fn cycles_per_sec(&self) -> f64 {
        self.cycle.count as f64 / self.wall.as_secs_f64()
    }
}

impl fmt::Display for ControlPlaneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.opts;
        writeln!(
            f,
            "control-plane {} ({} segments), transport={}, heal={}, channels={}, concurrency={}, iterations={}, warmup={}",
            o.mode,
            self.segments,
            o.transport,
            o.heal,
            if o.warm_channels { "warm" } else { "cold" },
            o.concurrency,
            o.iterations,
            o.warmup
        )?;
        writeln!(f, "  Request+Close  {}", self.cycle)?;
        writeln!(f, "  Request        {}", self.request)?;
        writeln!(f, "  Close          {}", self.close)?;
        writeln!(f, "  1 gRPC call    {}", self.rpc_floor)?;
        writeln!(f, "  1 tokio stat   {}", self.stat)?;
        if let Some(cpu) = self.cpu_per_cycle {
            writeln!(
                f,
                "  CPU per cycle  {:.3} ms (all threads)",
                cpu.as_secs_f64() * 1e3
            )?;
        }
        if let Some((n, bytes)) = self.allocs_per_cycle {
            writeln!(
                f,
                "  heap per cycle {n:.0} allocations, {:.1} KiB allocated",
                bytes / 1024.0
            )?;
        }
        write!(
            f,
            "  throughput     {:.0} cycles/s ({:.3} s wall)",
            self.cycles_per_sec(),
            self.wall.as_secs_f64()
        )
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    request: Duration,
    close: Duration,
}

/// One Request+Close with a fresh connection id; returns the timings and the path length.
pub(crate) async fn cycle(client: &Chain, clock: Clock) -> Result<(Sample, usize)> {
    let req = request();
    let t0 = clock.instant();
    let conn = client
        .run_request(&mut Ctx::new(clock).with_timeout(CALL_TIMEOUT), req)
        .await?;
    let t1 = clock.instant();
    let segments = conn.path.as_ref().map_or(0, |p| p.path_segments.len());
    client
        .run_close(&mut Ctx::new(clock).with_timeout(CALL_TIMEOUT), conn)
        .await?;
    let t2 = clock.instant();
    Ok((
        Sample {
            request: t1 - t0,
            close: t2 - t1,
        },
        segments,
    ))
}

async fn cycles(client: Arc<Chain>, clock: Clock, n: usize) -> Result<(Vec<Sample>, usize)> {
    let mut out = Vec::with_capacity(n);
    let mut segments = 0;
    for _ in 0..n {
        let (s, seg) = cycle(&client, clock).await?;
        segments = seg;
        out.push(s);
    }
    Ok((out, segments))
}

/// Runs `n` cycles split over `concurrency` tasks; returns the samples, the path length and the wall
/// time.
async fn run_cycles(
    client: &Arc<Chain>,
    clock: Clock,
    n: usize,
    concurrency: usize,
) -> Result<(Vec<Sample>, usize, Duration)> {
    let concurrency = concurrency.max(1);
    let start = clock.instant();
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let share = n / concurrency + usize::from(w < n % concurrency);
        tasks.push(tokio::spawn(cycles(client.clone(), clock, share)));
    }
    let mut all = Vec::with_capacity(n);
    let mut segments = 0;
    for t in tasks {
        let (s, seg) = t.await??;
        all.extend(s);
        segments = segments.max(seg);
    }
    Ok((all, segments, clock.instant() - start))
}

/// Builds a fresh domain and runs the benchmark in it.
pub async fn run(opts: ControlPlaneOpts) -> Result<ControlPlaneReport> {
    let domain = domain_over(opts.mode, false, opts.transport).await?;
    let sb = &domain.sandbox;
    let clock = sb.clock();
    let client = nsc(
        sb.nodes[0].nsmgr.url(),
        opts.heal,
        &crate::setup::Security::plaintext(clock),
    )?;
    let pinned = match opts.warm_channels {
        true => Some(
            client
                .run_request(&mut Ctx::new(clock).with_timeout(CALL_TIMEOUT), request())
                .await?,
        ),
        false => None,
    };
    run_cycles(&client, clock, opts.warmup, opts.concurrency).await?;
    let cpu_before = cpu_time();
    let (samples, segments, wall) =
        run_cycles(&client, clock, opts.iterations, opts.concurrency).await?;
    let cpu_per_cycle = match (cpu_before, cpu_time()) {
        (Some(a), Some(b)) if !samples.is_empty() => {
            Some(b.saturating_sub(a) / u32::try_from(samples.len()).unwrap_or(u32::MAX))
        }
        _ => None,
    };
    let allocs_per_cycle = count_allocations(&client, clock, opts).await?;
    if let Some(conn) = pinned {
        client
            .run_close(&mut Ctx::new(clock).with_timeout(CALL_TIMEOUT), conn)
            .await?;
    }
    let rpc_floor = rpc_floor(sb.nodes[0].nsmgr.url(), clock, opts.iterations).await?;
    let pick = |f: fn(&Sample) -> Duration| samples.iter().map(f).collect::<Vec<_>>();
    Ok(ControlPlaneReport {
        opts,
        segments,
        request: Summary::of(&pick(|s| s.request)),
        close: Summary::of(&pick(|s| s.close)),
        cycle: Summary::of(&pick(|s| s.request + s.close)),
        wall,
        cpu_per_cycle,
        allocs_per_cycle,
        rpc_floor,
        stat: stat_floor(clock, opts.iterations).await,
    })
}

/// Allocations and bytes allocated per cycle over `max(iterations / 10, 50)` more cycles, if the
/// counting allocator is installed.
async fn count_allocations(
    client: &Arc<Chain>,
    clock: Clock,
    opts: ControlPlaneOpts,
) -> Result<Option<(f64, f64)>> {
    let n = (opts.iterations / 10).max(50);
    if !crate::alloc::enable() {
        return Ok(None);
    }
    let (a0, b0) = (crate::alloc::allocations(), crate::alloc::allocated_bytes());
    let counted = run_cycles(client, clock, n, opts.concurrency).await;
    let (a1, b1) = (crate::alloc::allocations(), crate::alloc::allocated_bytes());
    crate::alloc::disable();
    counted?;
    Ok(Some((
        (a1 - a0) as f64 / n as f64,
        (b1 - b0) as f64 / n as f64,
    )))
}

/// CPU time the process's threads have run so far: the sum of `/proc/self/task/*/schedstat`
/// (nanoseconds on the CPU). Threads that exit in between take their share with them; during a run
/// only the runtime's threads (which live as long as it) do measurable work.
fn cpu_time() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// Times `n` `tokio::fs::metadata` calls on a missing file.
async fn stat_floor(clock: Clock, n: usize) -> Summary {
    let path = std::path::Path::new("/nonexistent/nsm-bench/excluded_prefixes.yaml");
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = clock.instant();
        let _ = tokio::fs::metadata(path).await;
        samples.push(clock.instant() - t0);
    }
    Summary::of(&samples)
}

/// Times `n` sequential unary health checks on one channel: what one gRPC round trip costs here.
async fn rpc_floor(url: &NsmUrl, clock: Clock, n: usize) -> Result<Summary> {
    let channel = client_channel(url, DIAL_TIMEOUT).await?;
    let mut health = HealthClient::new(channel);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t0 = clock.instant();
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        if i >= n / 10 {
            samples.push(clock.instant() - t0);
        }
    }
    Ok(Summary::of(&samples))
}
