//! magnetar-perf: load generator and benchmark driver.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use magnetar_cli::parse_duration;
use magnetar_cli::report::{Recorder, Summary, new_histogram, spawn_progress};
use magnetar_meta::{Expected, MetaStore, Op};

#[derive(Parser)]
#[command(
    name = "magnetar-perf",
    version,
    about = "Load generator for Magnetar: drives a workload, prints a live line every second \
             (ops/s, p50/p99/p99.9 latency) to stderr and a JSON summary to stdout."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Metadata store operations per second (put, get, compare-and-set) on any backend.
    Meta(MetaArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MetaOp {
    /// Unconditional puts over `--keys` keys.
    Put,
    /// Reads of `--keys` keys written first.
    Get,
    /// Conditional puts: each worker updates its own key at the version it last wrote.
    Cas,
}

#[derive(clap::Args)]
struct MetaArgs {
    /// The store: memory://, rocksdb:///path or etcd://host:port[,host:port].
    #[arg(long, env = "MAGNETAR_META", default_value = "memory://")]
    meta: String,
    #[arg(long, value_enum, default_value = "put")]
    op: MetaOp,
    /// Operations in flight at once (one task each).
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// How long to run (500ms, 10s, 2m).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many operations instead (whichever comes first).
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Bytes per value written.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Distinct keys touched by put and get.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Path under which the workload's keys live.
    #[arg(long, default_value = "/perf")]
    prefix: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Meta(args) => meta(args).await,
    }
}

async fn meta(args: MetaArgs) -> Result<()> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
    let store = magnetar_meta::connect(&args.meta)
        .await
        .with_context(|| format!("open metadata store {}", args.meta))?;
    let value = Bytes::from(vec![b'x'; args.value_size]);
    let prefix = args.prefix.trim_end_matches('/').to_string();

    if matches!(args.op, MetaOp::Get) {
        eprintln!("writing {} keys to read", args.keys);
        let keys: Vec<u64> = (0..args.keys).collect();
        for chunk in keys.chunks(100) {
            let ops = chunk
                .iter()
                .map(|k| Op::put(format!("{prefix}/k{k}"), value.clone(), Expected::Any))
                .collect();
            store.txn(ops).await.context("prepare keys")?;
        }
    }

    let rec = Recorder::default();
    let label = format!("meta {:?}", args.op).to_lowercase();
    let progress = spawn_progress(label.clone(), rec.clone());
    let issued = Arc::new(AtomicU64::new(0));
    let limit = args.count.unwrap_or(u64::MAX);
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let ctx = Worker {
            store: store.clone(),
            rec: rec.clone(),
            issued: Arc::clone(&issued),
            limit,
            deadline,
            op: args.op,
            keys: args.keys,
            prefix: prefix.clone(),
            value: value.clone(),
        };
        workers.push(tokio::spawn(ctx.run(w)));
    }
    for w in workers {
        w.await.context("worker panicked")??;
    }
    let elapsed = started.elapsed();
    progress.abort();
    let (hist, errors) = rec.total();
    let summary = Summary::new(&label, &args.meta, args.concurrency, &hist, errors, elapsed);
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

struct Worker {
    store: MetaStore,
    rec: Recorder,
    issued: Arc<AtomicU64>,
    limit: u64,
    deadline: Instant,
    op: MetaOp,
    keys: u64,
    prefix: String,
    value: Bytes,
}

impl Worker {
    async fn run(self, id: usize) -> Result<()> {
        let mut local = new_histogram();
        let mut errors = 0;
        let mut last_flush = Instant::now();
        let cas_key = format!("{}/cas/{id}", self.prefix);
        let mut cas_version = match self.op {
            MetaOp::Cas => {
                self.store
                    .put(&cas_key, self.value.clone(), Expected::Any)
                    .await?
            }
            _ => 0,
        };
        loop {
            if Instant::now() >= self.deadline
                || self.issued.fetch_add(1, Ordering::Relaxed) >= self.limit
            {
                break;
            }
            let key = format!("{}/k{}", self.prefix, rand::random_range(0..self.keys));
            let t = Instant::now();
            let ok = match self.op {
                MetaOp::Put => self
                    .store
                    .put(&key, self.value.clone(), Expected::Any)
                    .await
                    .is_ok(),
                MetaOp::Get => matches!(self.store.get(&key).await, Ok(Some(_))),
                MetaOp::Cas => {
                    match self
                        .store
                        .put(&cas_key, self.value.clone(), Expected::Version(cas_version))
                        .await
                    {
                        Ok(v) => {
                            cas_version = v;
                            true
                        }
                        Err(_) => false,
                    }
                }
            };
            if ok {
                let _ = local.record(t.elapsed().as_micros().max(1) as u64);
            } else {
                errors += 1;
            }
            if last_flush.elapsed() >= Duration::from_millis(100) {
                self.rec.record_batch(&mut local, errors);
                errors = 0;
                last_flush = Instant::now();
            }
        }
        self.rec.record_batch(&mut local, errors);
        Ok(())
    }
}
