//! `nsm bench registry`: registry figures for BENCHMARKS.md (not a timed test).
//!
//! Serves the same chains as `nsm registry` on a loopback TCP port in this process and measures over
//! gRPC: filling the store with `--nses` endpoints, Register p50/p99 (sequential), Find by service
//! name p50/p99 (sequential, `--nses / 1000` matches each), and how long `--watchers` concurrent
//! watching Finds take until every one has received one update (max latency). `--store etcd` starts a
//! throwaway etcd (needs Debian's `etcd`); `--store etcd://host:port` uses an existing one.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures::StreamExt;
use nsm_api::registry::network_service_endpoint_registry_client::NetworkServiceEndpointRegistryClient;
use nsm_api::registry::{NetworkServiceEndpoint, NetworkServiceEndpointQuery};
use nsm_api::url::NsmUrl;
use nsm_core::Clock;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::registry::{RegistryConfig, Store, build, parse_store};

#[path = "bench_mesh.rs"]
pub mod bench_mesh;

/// `nsm bench` targets.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Registry: Register/Find latency at scale and watch fan-out.
    Registry(BenchRegistryArgs),
    /// A live mesh of `nsm` processes: Request+Close cycles, CPU and RSS per component.
    Mesh(bench_mesh::BenchMeshArgs),
}

/// `nsm bench registry` options.
#[derive(Debug, Clone, Args)]
pub struct BenchRegistryArgs {
    /// `memory`, `etcd` (start a throwaway etcd) or `etcd://host:port`.
    #[arg(long, default_value = "memory")]
    pub store: String,
    /// Endpoints registered before measuring.
    #[arg(long, default_value_t = 100_000)]
    pub nses: usize,
    /// Measured Register and Find calls (each).
    #[arg(long, default_value_t = 2_000)]
    pub samples: usize,
    /// Concurrent watching Finds.
    #[arg(long, default_value_t = 1_000)]
    pub watchers: usize,
}

/// Runs `nsm bench …`.
pub fn run(cmd: &BenchCommand) -> ExitCode {
    let args = match cmd {
        BenchCommand::Registry(args) => args,
        BenchCommand::Mesh(args) => return bench_mesh::run(args),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nsm bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench_registry(args.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nsm bench registry: {e}");
            ExitCode::FAILURE
        }
    }
}

fn service_of(i: usize) -> String {
    format!("svc-{}", i % 1000)
}

fn nse(i: usize, url_gen: usize) -> NetworkServiceEndpoint {
    NetworkServiceEndpoint {
        name: format!("nse-{i}"),
        network_service_names: vec![service_of(i)],
        url: format!(
            "tcp://10.{}.{}.{}:{}",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255,
            5000 + url_gen
        ),
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

async fn bench_registry(args: BenchRegistryArgs) -> Result<(), String> {
    let mut _etcd = None;
    let store = if args.store == "etcd" {
        let p = nsm_registry_etcd::testing::EtcdProcess::start()
            .await
            .ok_or("etcd is not installed")?;
        let s = Store::Etcd(vec![p.endpoint()]);
        _etcd = Some(p);
        s
    } else {
        parse_store(&args.store)?
    };
    let cfg = RegistryConfig {
        listen: vec![],
        store: store.clone(),
        etcd_prefix: "/bench".into(),
        // Long enough that nothing expires while the store is being filled.
        expire_period: Duration::from_secs(3600),
        proxy_url: None,
        log_level: tracing::Level::WARN,
        print_chain: false,
    };
    let built = build(&cfg, Clock::system()).map_err(|e| e.to_string())?;
    let router = tonic::transport::Server::builder().add_routes(built.routes);
    let listen = NsmUrl::Tcp {
        host: "127.0.0.1".into(),
        port: 0,
    };
    let serving = nsm_networkservice::grpc::serve(&listen, router)
        .await
        .map_err(|e| e.to_string())?;
    let target = format!("http://{}", serving.url().authority().unwrap_or_default());
    let mut channels = Vec::new();
    for _ in 0..8 {
        let ch = Channel::from_shared(target.clone())
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        channels.push(ch);
    }
    let client =
        |i: usize| NetworkServiceEndpointRegistryClient::new(channels[i % channels.len()].clone());
    println!(
        "store: {store:?}; {} endpoints; {} samples; {} watchers",
        args.nses, args.samples, args.watchers
    );

    // Fill.
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut fillers = Vec::new();
    for w in 0..64 {
        let mut c = client(w);
        let (next, n) = (next.clone(), args.nses);
        fillers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), tonic::Status>(());
                }
                c.register(nse(i, 0)).await?;
            }
        }));
    }
    for f in fillers {
        f.await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    let fill = start.elapsed();
    println!(
        "fill: {} registrations in {:.2} s ({:.0}/s, 64 concurrent)",
        args.nses,
        fill.as_secs_f64(),
        args.nses as f64 / fill.as_secs_f64()
    );

    // Register latency (sequential refreshes of existing endpoints with a new URL).
    let mut c = client(0);
    let mut lat = Vec::with_capacity(args.samples);
    for s in 0..args.samples {
        let i = (s * 7919) % args.nses.max(1);
        let t = Instant::now();
        c.register(nse(i, 1 + s % 100))
            .await
            .map_err(|e| e.to_string())?;
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "Register: p50 {} p99 {} max {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap_or(&Duration::ZERO))
    );

    // Find by service name.
    let mut lat = Vec::with_capacity(args.samples);
    let mut matches = 0;
    for s in 0..args.samples {
        let q = NetworkServiceEndpointQuery {
            network_service_endpoint: Some(NetworkServiceEndpoint {
                network_service_names: vec![service_of(s * 31)],
                ..Default::default()
            }),
            watch: false,
        };
        let t = Instant::now();
        let mut stream = c.find(q).await.map_err(|e| e.to_string())?.into_inner();
        matches = 0;
        while let Some(r) = stream.next().await {
            r.map_err(|e| e.to_string())?;
            matches += 1;
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "Find by service name ({matches} matches): p50 {} p99 {} max {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap_or(&Duration::ZERO))
    );

    // Watch fan-out: every watcher follows one endpoint; one update; time until all have it.
    let watched = nse(0, 500);
    c.register(watched.clone())
        .await
        .map_err(|e| e.to_string())?;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.watchers.max(1));
    let (got_tx, mut got_rx) = tokio::sync::mpsc::channel::<Instant>(args.watchers.max(1));
    let open_start = Instant::now();
    for w in 0..args.watchers {
        let mut c = client(w);
        let (ready_tx, got_tx) = (ready_tx.clone(), got_tx.clone());
        let q = NetworkServiceEndpointQuery {
            network_service_endpoint: Some(NetworkServiceEndpoint {
                name: watched.name.clone(),
                ..Default::default()
            }),
            watch: true,
        };
        tokio::spawn(async move {
            let Ok(r) = c.find(q).await else { return };
            let mut stream = r.into_inner();
            while let Some(Ok(r)) = stream.next().await {
                let url = r
                    .network_service_endpoint
                    .map(|e| e.url)
                    .unwrap_or_default();
                if url.ends_with(":5999") {
                    let _ = got_tx.send(Instant::now()).await;
                    return;
                }
                let _ = ready_tx.send(()).await;
            }
        });
    }
    drop((ready_tx, got_tx));
    for _ in 0..args.watchers {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .map_err(|_| "watchers did not all start within 60 s")?;
    }
    println!(
        "watchers: {} open in {:.2} s",
        args.watchers,
        open_start.elapsed().as_secs_f64()
    );
    let mut update = watched;
    update.url = "tcp://10.0.0.0:5999".into();
    let t0 = Instant::now();
    c.register(update).await.map_err(|e| e.to_string())?;
    let mut last = t0;
    let mut got = 0;
    while got < args.watchers {
        match tokio::time::timeout(Duration::from_secs(30), got_rx.recv()).await {
            Ok(Some(t)) => {
                got += 1;
                last = last.max(t);
            }
            _ => break,
        }
    }
    println!(
        "watch fan-out: {got}/{} watchers received the update; max latency {}",
        args.watchers,
        ms(last.saturating_duration_since(t0))
    );
    drop(serving);
    drop(built.keep);
    Ok(())
}
