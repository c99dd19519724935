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
    /// Appends to one ledger on registered bookies through the ledger client.
    Ledger(LedgerArgs),
    /// The raw disk limit: sequential writes, each followed by fdatasync.
    Disk(DiskArgs),
    /// Publishes to topics through the Pulsar protocol; latency is publish to receipt.
    Produce(magnetar_cli::load::ProduceArgs),
    /// Consumes from topics; latency is publish time to receipt (millisecond clock).
    Consume(magnetar_cli::load::ConsumeArgs),
    /// Produces and consumes in one process; latency is send to receive (microseconds).
    E2e(magnetar_cli::load::E2eArgs),
}

#[derive(clap::Args)]
struct LedgerArgs {
    /// Metadata store the bookies registered in (etcd://..., rocksdb:///...).
    #[arg(long, env = "MAGNETAR_META")]
    meta: String,
    /// Ensemble size E.
    #[arg(long, short = 'e', default_value_t = 1)]
    ensemble: usize,
    /// Write quorum Qw.
    #[arg(long, default_value_t = 1)]
    write_quorum: usize,
    /// Ack quorum Qa.
    #[arg(long, default_value_t = 1)]
    ack_quorum: usize,
    /// Bytes per entry.
    #[arg(long, short = 's', default_value_t = 1024)]
    size: usize,
    /// Appends in flight.
    #[arg(long, default_value_t = 256)]
    inflight: usize,
    /// Appends per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many appends instead.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Delete the ledger at the end (the bookies reclaim its space at their next GC; a
    /// run after that one writes into reused journal files, as a bookie does once ledgers
    /// turn over).
    #[arg(long)]
    delete: bool,
}

#[derive(clap::Args)]
struct DiskArgs {
    /// Directory on the disk to measure (a scratch file is created and removed).
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    /// Bytes written before each fdatasync.
    #[arg(long, default_value_t = 65536)]
    bytes_per_sync: usize,
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Zero-fill the scratch file this far first: the raw limit of overwriting blocks that
    /// exist, as the journal does in reused files [default: 1 GiB].
    #[arg(long, default_value_t = 1 << 30)]
    file_bytes: u64,
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().cmd {
        Cmd::Meta(args) => meta(args).await,
        Cmd::Ledger(args) => ledger(args).await,
        Cmd::Disk(args) => disk(args),
        Cmd::Produce(args) => magnetar_cli::load::produce(args).await,
        Cmd::Consume(args) => magnetar_cli::load::consume(args).await,
        Cmd::E2e(args) => magnetar_cli::load::e2e(args).await,
    }
}

async fn meta(args: MetaArgs) -> Result<()> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
    let store = magnetar_meta::connect(&args.meta)
        .await
        .with_context(|| format!("open metadata store {}", magnetar_meta::redact(&args.meta)))?;
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

#[derive(serde::Serialize)]
struct Throughput {
    #[serde(flatten)]
    summary: Summary,
    bytes_per_op: usize,
    mb_per_sec: f64,
}

async fn ledger(args: LedgerArgs) -> Result<()> {
    use futures::StreamExt;
    use magnetar_bookie::ledger::LedgerClient;

    let store = magnetar_meta::connect(&args.meta)
        .await
        .with_context(|| format!("open metadata store {}", magnetar_meta::redact(&args.meta)))?;
    let client = LedgerClient::new(store, Duration::from_secs(30));
    let writer = client
        .create(args.ensemble, args.write_quorum, args.ack_quorum)
        .await
        .context("create ledger")?;
    let data = Bytes::from(vec![b'm'; args.size]);
    let rec = Recorder::default();
    let label = format!(
        "ledger {}/{}/{} {}B",
        args.ensemble, args.write_quorum, args.ack_quorum, args.size
    );
    let progress = spawn_progress(label.clone(), rec.clone());
    let limit = args.count.unwrap_or(u64::MAX);
    let started = Instant::now();
    let deadline = started + args.duration;
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    let mut inflight = futures::stream::FuturesUnordered::new();
    let mut local = new_histogram();
    let mut errors = 0u64;
    let mut issued = 0u64;
    let mut last_flush = Instant::now();
    loop {
        let may_issue =
            issued < limit && Instant::now() < deadline && inflight.len() < args.inflight;
        if may_issue {
            // With a rate, each append is due at a fixed time; latency counts from then, so a
            // stalled writer shows up as latency rather than as a lower rate (no coordinated
            // omission).
            let due = interval.map_or_else(Instant::now, |i| started + i * issued as u32);
            let now = Instant::now();
            if due > now {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    Some(r) = inflight.next(), if !inflight.is_empty() => {
                        record(&mut local, &mut errors, r);
                    }
                }
                continue;
            }
            let w = writer.clone();
            let d = data.clone();
            inflight.push(async move { (due, w.append(d).await.map(|_| ())) });
            issued += 1;
        } else {
            match inflight.next().await {
                Some(r) => record(&mut local, &mut errors, r),
                None => break,
            }
        }
        if last_flush.elapsed() >= Duration::from_millis(100) {
            rec.record_batch(&mut local, errors);
            errors = 0;
            last_flush = Instant::now();
        }
    }
    rec.record_batch(&mut local, errors);
    let elapsed = started.elapsed();
    progress.abort();
    let _ = writer.close().await;
    if args.delete {
        client
            .delete(writer.id())
            .await
            .context("delete the ledger")?;
    }
    let (hist, errors) = rec.total();
    let summary = Summary::new(&label, &args.meta, args.inflight, &hist, errors, elapsed);
    print_throughput(summary, args.size)
}

fn print_throughput(summary: Summary, bytes_per_op: usize) -> Result<()> {
    let mb_per_sec = summary.ops_per_sec * bytes_per_op as f64 / 1e6;
    let out = Throughput {
        summary,
        bytes_per_op,
        mb_per_sec,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn record(
    local: &mut hdrhistogram::Histogram<u64>,
    errors: &mut u64,
    (due, r): (Instant, Result<(), magnetar_bookie::ledger::LedgerError>),
) {
    match r {
        Ok(()) => {
            let _ = local.record(due.elapsed().as_micros().max(1) as u64);
        }
        Err(_) => *errors += 1,
    }
}

fn disk(args: DiskArgs) -> Result<()> {
    use std::os::unix::fs::FileExt;
    anyhow::ensure!(args.bytes_per_sync > 0, "--bytes-per-sync must be positive");
    let path = args
        .dir
        .join(format!("magnetar-disk-probe-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(path.clone());
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < args.file_bytes {
        let n = (args.file_bytes - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()?;
    let buf = vec![b'd'; args.bytes_per_sync];
    let mut hist = new_histogram();
    let started = Instant::now();
    let mut pos = 0u64;
    let mut last = Instant::now();
    let mut window = new_histogram();
    while started.elapsed() < args.duration {
        if pos + buf.len() as u64 > args.file_bytes {
            pos = 0;
        }
        let t = Instant::now();
        file.write_all_at(&buf, pos)?;
        file.sync_data()?;
        let us = t.elapsed().as_micros().max(1) as u64;
        let _ = hist.record(us);
        let _ = window.record(us);
        pos += buf.len() as u64;
        if last.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "disk {}B/sync: {:>7.1} MB/s  sync p50 {:.3} ms  p99 {:.3} ms",
                args.bytes_per_sync,
                window.len() as f64 * buf.len() as f64 / 1e6 / last.elapsed().as_secs_f64(),
                window.value_at_quantile(0.5) as f64 / 1000.0,
                window.value_at_quantile(0.99) as f64 / 1000.0
            );
            window.reset();
            last = Instant::now();
        }
    }
    let elapsed = started.elapsed();
    let summary = Summary::new(
        &format!("disk {}B/sync", args.bytes_per_sync),
        &args.dir.display().to_string(),
        1,
        &hist,
        0,
        elapsed,
    );
    print_throughput(summary, args.bytes_per_sync)
}
