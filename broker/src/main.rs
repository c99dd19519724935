//! `magnetar`: the server binary. `magnetar standalone` runs everything in one process (RocksDB
//! meta, one bookie, the broker and its HTTP side); `magnetar bookie` runs a storage node;
//! `magnetar broker` a cluster broker over etcd and remote bookies; `magnetar init-cluster`
//! writes a new cluster's records.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use magnetar_bookie::server::{self, Bookie, BookieConfig};
use magnetar_broker::config::read_config;
use serde::Deserialize;
use tracing::{info, warn};

mod args;
mod node;
mod standalone;
use node::{InitClusterArgs, NodeArgs};
use standalone::StandaloneArgs;

#[derive(Parser)]
#[command(
    name = "magnetar",
    version,
    about = "Magnetar: a Pulsar-compatible queue-plus-stream platform in one binary.",
    long_about = "Magnetar: a Pulsar-compatible queue-plus-stream platform in one binary.\n\n\
        Every flag can also be set with an environment variable MAGNETAR_<FLAG> (e.g. \
        MAGNETAR_DATA_DIR) or in the TOML file given with --config (snake_case keys, e.g. \
        data_dir). A flag beats the environment, which beats the file."
)]
struct Cli {
    /// Log lines as text, or as one JSON object per line (for log shippers).
    #[arg(long, global = true, env = "MAGNETAR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Colour in text logs: only when writing to a terminal (auto), always, or never.
    #[arg(long, global = true, env = "MAGNETAR_LOG_COLOR", value_enum, default_value_t = LogColor::Auto)]
    log_color: LogColor,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogColor {
    Auto,
    Always,
    Never,
}

/// Logs to standard output, filtered by `RUST_LOG` (default `info`).
fn init_logs(format: LogFormat, color: LogColor) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            let ansi = match color {
                LogColor::Auto => std::io::stdout().is_terminal(),
                LogColor::Always => true,
                LogColor::Never => false,
            };
            builder.with_ansi(ansi).init()
        }
    }
}

/// Every boolean flag takes its value optionally, `--flag` alone meaning `--flag true`
/// (Pulsar's tools and most users write it so), in every subcommand, present and future.
fn optional_bool_values(mut cmd: clap::Command) -> clap::Command {
    let bools: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| {
            let values: Vec<String> = a
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_string())
                .collect();
            a.get_action().takes_values() && values == ["true", "false"]
        })
        .map(|a| a.get_id().clone())
        .collect();
    for id in bools {
        cmd = cmd.mut_arg(id, |a| a.num_args(0..=1).default_missing_value("true"));
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in subs {
        cmd = cmd.mut_subcommand(name, optional_bool_values);
    }
    cmd
}

#[derive(Subcommand)]
enum Cmd {
    /// Run everything in one process: RocksDB metadata, one bookie, the broker, HTTP.
    Standalone(Box<StandaloneArgs>),
    /// Run a storage node (bookie): journal + ledger storage behind the bookie protocol.
    Bookie(Box<BookieArgs>),
    /// Run a cluster broker: no local state; metadata in etcd, data on the bookies, topics
    /// served for the bundles it owns (others are redirected to their owner).
    Broker(Box<NodeArgs>),
    /// Write a new cluster's records (cluster, tenant `public`, namespace `public/default`)
    /// to its metadata store; idempotent.
    InitCluster(InitClusterArgs),
    /// Make keys and JWT tokens for token authentication (as `pulsar tokens` does).
    #[command(subcommand)]
    Tokens(TokensCmd),
}

#[derive(Subcommand)]
enum TokensCmd {
    /// A new random secret key for HS256 tokens.
    CreateSecretKey {
        /// Write the key here (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Write it base64-encoded rather than as raw bytes.
        #[arg(long)]
        base64: bool,
    },
    /// A new RSA key pair for RS256 tokens (PEM files).
    CreateKeyPair {
        #[arg(long)]
        output_private_key: PathBuf,
        #[arg(long)]
        output_public_key: PathBuf,
    },
    /// A token naming a role, signed with a secret key or a private key.
    Create {
        /// Secret key file (raw, base64, or `data:;base64,...`).
        #[arg(
            long,
            conflicts_with = "private_key",
            required_unless_present = "private_key"
        )]
        secret_key: Option<PathBuf>,
        /// Private key PEM file (RS256).
        #[arg(long)]
        private_key: Option<PathBuf>,
        /// The role (the `sub` claim).
        #[arg(long)]
        subject: String,
        /// Expire after this many seconds (default: never).
        #[arg(long)]
        expiry_secs: Option<u64>,
    },
}

fn run_tokens(cmd: TokensCmd) -> Result<()> {
    use magnetar_broker::auth;
    use std::io::Write;
    match cmd {
        TokensCmd::CreateSecretKey { output, base64 } => {
            let key = auth::create_secret_key();
            let bytes = if base64 {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .encode(&key)
                    .into_bytes()
            } else {
                key
            };
            match output {
                Some(p) => {
                    std::fs::write(&p, &bytes).with_context(|| format!("write {}", p.display()))?
                }
                None => std::io::stdout().write_all(&bytes)?,
            }
        }
        TokensCmd::CreateKeyPair {
            output_private_key,
            output_public_key,
        } => {
            let (private, public) = auth::create_key_pair()?;
            std::fs::write(&output_private_key, private)
                .with_context(|| format!("write {}", output_private_key.display()))?;
            std::fs::write(&output_public_key, public)
                .with_context(|| format!("write {}", output_public_key.display()))?;
        }
        TokensCmd::Create {
            secret_key,
            private_key,
            subject,
            expiry_secs,
        } => {
            let token = match (secret_key, private_key) {
                (Some(p), _) => {
                    let raw = std::fs::read(&p).with_context(|| format!("read {}", p.display()))?;
                    let secret = auth::decode_secret(&raw);
                    auth::create_token(auth::TokenKey::Secret(&secret), &subject, expiry_secs)?
                }
                (None, Some(p)) => {
                    let pem = std::fs::read(&p).with_context(|| format!("read {}", p.display()))?;
                    auth::create_token(auth::TokenKey::PrivatePem(&pem), &subject, expiry_secs)?
                }
                (None, None) => anyhow::bail!("give --secret-key or --private-key"),
            };
            println!("{token}");
        }
    }
    Ok(())
}

#[derive(Args, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BookieArgs {
    /// TOML file with any of these settings (snake_case keys).
    #[arg(long, env = "MAGNETAR_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Where the journal and ledger storage live [default: ./data/bookie].
    #[arg(long, env = "MAGNETAR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "MAGNETAR_BIND")]
    bind: Option<IpAddr>,
    /// Bookie protocol port [default: 3181].
    #[arg(long, env = "MAGNETAR_BOOKIE_PORT")]
    bookie_port: Option<u16>,
    /// HTTP port for /health and /metrics [default: 8000; 0 picks a free port].
    #[arg(long, env = "MAGNETAR_HTTP_PORT")]
    http_port: Option<u16>,
    /// Host others reach this bookie at [default: the bind address].
    #[arg(long, env = "MAGNETAR_ADVERTISED_ADDRESS")]
    advertised_address: Option<String>,
    /// Metadata store to register in (rocksdb:///path, etcd://h:p,...); none: no registration.
    #[arg(long, env = "MAGNETAR_META")]
    meta: Option<String>,
    /// Rack name for rack-aware placement.
    #[arg(long, env = "MAGNETAR_RACK")]
    rack: Option<String>,
    /// Close a journal group at this many bytes [default: 524288].
    #[arg(long, env = "MAGNETAR_JOURNAL_MAX_GROUP_BYTES")]
    journal_max_group_bytes: Option<usize>,
    /// Hold a small journal group open this many microseconds for more adds [default: 0].
    #[arg(long, env = "MAGNETAR_JOURNAL_MAX_GROUP_WAIT_US")]
    journal_max_group_wait_us: Option<u64>,
    /// Start a journal sync no sooner than this many microseconds after the previous one
    /// (fewer, larger syncs under load; a lone add is synced at once) [default: 500].
    #[arg(long, env = "MAGNETAR_JOURNAL_MIN_SYNC_INTERVAL_US")]
    journal_min_sync_interval_us: Option<u64>,
    /// Start a new journal file at this size, in MB; deleted ledgers' space comes back file
    /// by file [default: 256] (BookKeeper's journalMaxSizeMB).
    #[arg(long, env = "MAGNETAR_JOURNAL_MAX_SIZE_MB")]
    journal_max_size_mb: Option<u64>,
    /// Emptied journal files kept for reuse instead of deleted (reusing one needs no
    /// zero-filling) [default: 2].
    #[arg(long, env = "MAGNETAR_JOURNAL_SPARE_FILES")]
    journal_spare_files: Option<usize>,
    /// Bytes of new entries kept in memory between index flushes; adds wait beyond it
    /// [default: 268435456].
    #[arg(long, env = "MAGNETAR_WRITE_CACHE_BYTES")]
    write_cache_bytes: Option<usize>,
    /// Read cache size in bytes [default: 67108864].
    #[arg(long, env = "MAGNETAR_READ_CACHE_BYTES")]
    read_cache_bytes: Option<usize>,
    /// Flush the index (and checkpoint the journal) every this many milliseconds
    /// [default: 1000].
    #[arg(long, env = "MAGNETAR_FLUSH_INTERVAL_MS")]
    flush_interval_ms: Option<u64>,
    /// Requests one connection may have in flight before the bookie stops reading it
    /// [default: 10000].
    #[arg(long, env = "MAGNETAR_MAX_PENDING_PER_CONNECTION")]
    max_pending_per_connection: Option<usize>,
    /// Largest entry accepted, in bytes [default: 5308416].
    #[arg(long, env = "MAGNETAR_MAX_ENTRY_BYTES")]
    max_entry_bytes: Option<usize>,
    /// Go read-only below this many free bytes on the data disk [default: 1073741824].
    #[arg(long, env = "MAGNETAR_MIN_FREE_DISK_BYTES")]
    min_free_disk_bytes: Option<u64>,
    /// Reclaim deleted ledgers' space every this many seconds [default: 300].
    #[arg(long, env = "MAGNETAR_GC_INTERVAL_SECS")]
    gc_interval_secs: Option<u64>,
    /// Registration lease: how long after this bookie dies it drops off the list [default: 10].
    #[arg(long, env = "MAGNETAR_META_SESSION_TTL_SECS")]
    meta_session_ttl_secs: Option<u64>,
    /// Also run auto-recovery: re-replicate ledgers off bookies that are gone (needs --meta).
    #[arg(long, env = "MAGNETAR_AUTORECOVERY")]
    autorecovery: Option<bool>,
    /// How long a bookie must be gone before auto-recovery copies its data [default: 60].
    #[arg(long, env = "MAGNETAR_AUTORECOVERY_GRACE_SECS")]
    autorecovery_grace_secs: Option<u64>,
    /// The cluster's shared secret for the bookie protocol: a file, `file:///path`,
    /// `data:;base64,...` or `env:VAR` (`magnetar tokens create-secret-key` makes one).
    /// Clients (brokers, auto-recovery) must present it before anything else. Required with
    /// --meta (a cluster's bookie) unless --bookie-auth-disabled true.
    #[arg(long, env = "MAGNETAR_BOOKIE_AUTH_SECRET")]
    bookie_auth_secret: Option<PathBuf>,
    /// Run a bookie of a cluster (--meta) without the shared secret: only on a network where
    /// every host that reaches the bookie port is trusted.
    #[arg(long, env = "MAGNETAR_BOOKIE_AUTH_DISABLED")]
    bookie_auth_disabled: Option<bool>,
}

impl BookieArgs {
    /// Fills every unset flag from the config file.
    fn merge_file(mut self) -> Result<BookieArgs> {
        let Some(file) = read_config::<BookieArgs>(self.config.as_deref())? else {
            return Ok(self);
        };
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = file.$f; } )* };
        }
        fill!(
            data_dir,
            bind,
            bookie_port,
            http_port,
            advertised_address,
            meta,
            rack,
            journal_max_group_bytes,
            journal_max_group_wait_us,
            journal_min_sync_interval_us,
            journal_max_size_mb,
            journal_spare_files,
            write_cache_bytes,
            read_cache_bytes,
            flush_interval_ms,
            max_pending_per_connection,
            max_entry_bytes,
            min_free_disk_bytes,
            gc_interval_secs,
            meta_session_ttl_secs,
            autorecovery,
            autorecovery_grace_secs,
            bookie_auth_secret,
            bookie_auth_disabled
        );
        Ok(self)
    }
}

/// `magnetar bookie`'s write cache: at 64 KiB entries and ~450 MB/s, 256 MiB instead of
/// 64 MiB took flushes from 149 to 52 in 8 s and add p99.9 from 331 to 120 ms.
const BOOKIE_WRITE_CACHE_BYTES: usize = 256 << 20;

fn main() -> std::process::ExitCode {
    let matches = optional_bool_values(Cli::command()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logs(cli.log_format, cli.log_color);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line: what an operator (or a test reading the
            // log's tail) needs, where `main -> Result` would print a backtrace first.
            eprintln!("magnetar: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let rt = tokio::runtime::Runtime::new().context("start runtime")?;
    match cli.cmd {
        Cmd::Bookie(args) => rt.block_on(run_bookie(args.merge_file()?)),
        Cmd::Standalone(args) => rt.block_on(standalone::run((*args).merge_file()?)),
        Cmd::Broker(args) => rt.block_on(node::run((*args).merge_file()?)),
        Cmd::InitCluster(args) => rt.block_on(node::init_cluster(args)),
        Cmd::Tokens(cmd) => run_tokens(cmd),
    }
}

async fn run_bookie(args: BookieArgs) -> Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from("data/bookie"));
    let mut config = BookieConfig::new(&data_dir);
    if let Some(v) = args.journal_max_group_bytes {
        config.journal.max_group_bytes = v;
    }
    if let Some(v) = args.journal_max_group_wait_us {
        config.journal.max_group_wait = Duration::from_micros(v);
    }
    if let Some(v) = args.journal_min_sync_interval_us {
        config.journal.min_sync_interval = Duration::from_micros(v);
    }
    if let Some(mb) = args.journal_max_size_mb {
        config.journal.max_file_bytes = mb.max(1) << 20;
    }
    if let Some(n) = args.journal_spare_files {
        config.journal.spare_files = n;
    }
    // A storage node can spare more than the in-process bookie of a standalone: fewer, larger
    // index flushes at high write rates, and fewer adds held up by a flush that runs long.
    config.storage.write_cache_bytes = args.write_cache_bytes.unwrap_or(BOOKIE_WRITE_CACHE_BYTES);
    if let Some(v) = args.read_cache_bytes {
        config.storage.read_cache_bytes = v;
    }
    if let Some(v) = args.flush_interval_ms {
        config.flush_interval = Duration::from_millis(v.max(1));
    }
    if let Some(v) = args.gc_interval_secs {
        config.gc_interval = Duration::from_secs(v.max(1));
    }
    if let Some(v) = args.max_pending_per_connection {
        config.max_pending_per_connection = v.max(1);
    }
    if let Some(v) = args.max_entry_bytes {
        config.max_entry_bytes = v;
    }
    if let Some(v) = args.min_free_disk_bytes {
        config.min_free_disk_bytes = v;
    }
    let secret = match &args.meta {
        Some(_) => args::cluster_bookie_secret(
            args.bookie_auth_secret.as_deref(),
            args.bookie_auth_disabled.unwrap_or(false),
            "a bookie",
        )?,
        // a lone bookie (benchmarks, tests): open unless given a secret
        None => args::bookie_secret(args.bookie_auth_secret.as_deref())?,
    };
    config.auth_secret = secret.clone();
    let bind = args.bind.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let addr = SocketAddr::new(bind, args.bookie_port.unwrap_or(3181));
    let advertised = format!(
        "{}:{}",
        args.advertised_address.unwrap_or_else(|| bind.to_string()),
        addr.port()
    );

    let started = std::time::Instant::now();
    let store = match &args.meta {
        Some(url) => Some(magnetar_meta::connect(url).await.with_context(|| {
            format!("connect to metadata store {}", magnetar_meta::redact(url))
        })?),
        None if args.autorecovery.unwrap_or(false) => anyhow::bail!("--autorecovery needs --meta"),
        None => None,
    };
    let bookie_meta = store.clone();
    let bookie = tokio::task::spawn_blocking(move || Bookie::open(config, bookie_meta))
        .await
        .context("open bookie")??;
    let listener = server::bind(addr).await?;
    let http_addr = SocketAddr::new(bind, args.http_port.unwrap_or(8000));
    let http = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("bind http port {http_addr}"))?;
    let http_addr = http.local_addr().context("http address")?;
    let app = magnetar_bookie::http::router(Arc::clone(&bookie));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(http, app).await {
            warn!(error = %e, "http server stopped");
        }
    });
    tokio::spawn(Arc::clone(&bookie).run_flusher());
    if let Some(store) = store {
        let ttl = Duration::from_secs(args.meta_session_ttl_secs.unwrap_or(10).max(1));
        tokio::spawn(magnetar_bookie::registration::register(
            store.clone(),
            advertised.clone(),
            args.rack.clone(),
            ttl,
        ));
        if args.autorecovery.unwrap_or(false) {
            let grace = Duration::from_secs(args.autorecovery_grace_secs.unwrap_or(60));
            let client = magnetar_bookie::ledger::LedgerClient::new(store, Duration::from_secs(10))
                .with_auth(secret.clone());
            let auto = magnetar_bookie::autorecovery::AutoRecovery::new(client, grace);
            tokio::spawn(auto.run(Duration::from_secs(5)));
            info!(grace_secs = grace.as_secs(), "auto-recovery running");
        }
    }
    info!(%addr, %http_addr, %advertised, data_dir = %data_dir.display(), authenticated = secret.is_some(), ms = started.elapsed().as_millis() as u64, "bookie ready");

    let shutdown = args::terminated();
    server::serve(Arc::clone(&bookie), listener, shutdown).await;
    info!("shutting down: flushing");
    bookie.flush().await.context("final flush")?;
    info!("bookie stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let m = optional_bool_values(Cli::command()).try_get_matches_from(args)?;
        Cli::from_arg_matches(&m)
    }

    #[test]
    fn boolean_flags_take_their_value_optionally() {
        for args in [
            &["magnetar", "standalone", "--authentication-enabled"][..],
            &[
                "magnetar",
                "standalone",
                "--authentication-enabled",
                "--broker-port",
                "1",
            ],
            &["magnetar", "standalone", "--authentication-enabled", "true"],
            &["magnetar", "bookie", "--autorecovery"],
            &["magnetar", "broker", "--bookie-auth-disabled"],
        ] {
            assert!(parse(args).is_ok(), "{args:?}: {:?}", parse(args).err());
        }
        assert!(
            parse(&[
                "magnetar",
                "standalone",
                "--authentication-enabled",
                "maybe"
            ])
            .is_err()
        );
        // and every one of them, in every subcommand
        fn check(cmd: &clap::Command) {
            for a in cmd.get_arguments() {
                let values: Vec<String> = a
                    .get_possible_values()
                    .iter()
                    .map(|v| v.get_name().to_string())
                    .collect();
                if a.get_action().takes_values() && values == ["true", "false"] {
                    let n = a
                        .get_num_args()
                        .unwrap_or_else(|| panic!("{} --{}", cmd.get_name(), a.get_id()));
                    assert_eq!(
                        (n.min_values(), n.max_values()),
                        (0, 1),
                        "{} --{}",
                        cmd.get_name(),
                        a.get_id()
                    );
                }
            }
            cmd.get_subcommands().for_each(check);
        }
        check(&optional_bool_values(Cli::command()));
    }
}
