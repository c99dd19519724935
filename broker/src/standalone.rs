//! `magnetar standalone`: RocksDB meta, an in-process bookie (the real journal and ledger
//! storage, reached through the same ledger client a cluster broker uses), the broker and its
//! HTTP side, in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use magnetar_bookie::ledger::{BOOKIES_PATH, LedgerClient};
use magnetar_bookie::server::{self, Bookie, BookieConfig};
use magnetar_broker::service::BrokerService;
use magnetar_meta::MetaStore;
use serde::Deserialize;
use tracing::info;

use crate::args::{self, BrokerArgs};

#[derive(Args, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StandaloneArgs {
    /// TOML file with any of these settings (snake_case keys).
    #[arg(long, env = "MAGNETAR_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Where metadata, journal and ledgers live [default: ./data/standalone].
    #[arg(long, env = "MAGNETAR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Serve the in-process bookie's protocol on this port (for tools and remote readers);
    /// without it the broker calls its bookie in-process and no port is opened. The port
    /// also names the bookie in ledger metadata, so keep it across restarts [default name:
    /// 3181, not listened on].
    #[arg(long, env = "MAGNETAR_BOOKIE_PORT")]
    bookie_port: Option<u16>,
    /// In-process bookies: each has its own journal and ledger storage (bookie N keeps them
    /// in `bookie-N` under the data dir — link that to another disk to give it its own) and
    /// listens on the bookie port + N - 1. With more than one, racks-info groups and
    /// namespace bookie affinity keep a noisy tenant's writes off the others' journals
    /// [default: 1].
    #[arg(long, env = "MAGNETAR_BOOKIES")]
    bookies: Option<u16>,
    /// Hold a small journal group open this many microseconds for more adds [default: 0].
    #[arg(long, env = "MAGNETAR_JOURNAL_MAX_GROUP_WAIT_US")]
    journal_max_group_wait_us: Option<u64>,
    /// How often the bookie reclaims the space of deleted ledgers, in seconds [default: 300].
    #[arg(long, env = "MAGNETAR_BOOKIE_GC_INTERVAL_SECS")]
    bookie_gc_interval_secs: Option<u64>,
    /// Size at which the bookie starts a new journal file, in MB; deleted ledgers' space
    /// comes back file by file [default: 256].
    #[arg(long, env = "MAGNETAR_BOOKIE_JOURNAL_MAX_SIZE_MB")]
    bookie_journal_max_size_mb: Option<u64>,
    /// Emptied journal files the bookie keeps for reuse instead of deleting [default: 2].
    #[arg(long, env = "MAGNETAR_BOOKIE_JOURNAL_SPARE_FILES")]
    bookie_journal_spare_files: Option<usize>,
    /// Everything a broker takes (shared with `magnetar broker`).
    #[command(flatten)]
    #[serde(skip)]
    pub broker: BrokerArgs,
}

impl StandaloneArgs {
    /// Fills every unset flag from the config file.
    pub fn merge_file(mut self) -> Result<StandaloneArgs> {
        let Some((file, broker)) = BrokerArgs::split_config::<StandaloneArgs>(
            self.config.as_deref(),
            StandaloneArgs::augment_args(clap::Command::new("standalone")),
        )?
        else {
            return Ok(self);
        };
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = file.$f; } )* };
        }
        fill!(
            data_dir,
            bookie_port,
            bookies,
            journal_max_group_wait_us,
            bookie_gc_interval_secs,
            bookie_journal_max_size_mb,
            bookie_journal_spare_files
        );
        self.broker.fill_from(broker);
        Ok(self)
    }
}

/// An in-process bookie: serving its port, registered, flushing in the background.
struct LocalBookie {
    bookie: Arc<Bookie>,
    name: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_bookie(
    args: &StandaloneArgs,
    dir: PathBuf,
    addr: SocketAddr,
    listen: bool,
    meta: &MetaStore,
) -> Result<LocalBookie> {
    let mut bcfg = BookieConfig::new(dir);
    if let Some(us) = args.journal_max_group_wait_us {
        bcfg.journal.max_group_wait = Duration::from_micros(us);
    }
    bcfg.min_free_disk_bytes = 256 << 20;
    if let Some(s) = args.bookie_gc_interval_secs {
        bcfg.gc_interval = Duration::from_secs(s.max(1));
    }
    if let Some(mb) = args.bookie_journal_max_size_mb {
        bcfg.journal.max_file_bytes = mb.max(1) << 20;
    }
    if let Some(n) = args.bookie_journal_spare_files {
        bcfg.journal.spare_files = n;
    }
    bcfg.max_entry_bytes =
        args.broker.max_message_size() + magnetar_protocol::FRAME_PADDING + 64 * 1024;
    let bookie_meta = meta.clone();
    let bookie = tokio::task::spawn_blocking(move || Bookie::open(bcfg, Some(bookie_meta)))
        .await
        .context("open bookie")??;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = if listen {
        let listener = server::bind(addr).await?;
        tokio::spawn(server::serve(Arc::clone(&bookie), listener, async {
            let _ = stopped.await;
        }))
    } else {
        tokio::spawn(async {
            let _ = stopped.await;
        })
    };
    tokio::spawn(Arc::clone(&bookie).run_flusher());
    let name = format!("{}:{}", addr.ip(), addr.port());
    tokio::spawn(magnetar_bookie::registration::register(
        meta.clone(),
        name.clone(),
        None,
        Duration::from_secs(10),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !meta
        .children(BOOKIES_PATH)
        .await
        .map(|c| c.contains(&name))
        .unwrap_or(false)
    {
        if Instant::now() > deadline {
            anyhow::bail!("the in-process bookie {name} did not register within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(LocalBookie {
        bookie,
        name,
        stop,
        task,
    })
}

pub async fn run(args: StandaloneArgs) -> Result<()> {
    let started = Instant::now();
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("data/standalone"));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("create data dir {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize().context("resolve data dir")?;
    let bind = args.broker.bind_address();

    // metadata
    let meta_url = format!("rocksdb://{}", data_dir.join("meta").display());
    let meta = magnetar_meta::connect(&meta_url)
        .await
        .with_context(|| format!("open metadata store {meta_url}"))?;

    // bookies
    let count = args.bookies.unwrap_or(1).max(1);
    // Without --bookie-port the bookies keep their usual names (what existing ledgers
    // reference) but open no socket, so two standalones can share a host.
    let listen = args.bookie_port.is_some();
    let first_port = args.bookie_port.unwrap_or(3181);
    let mut bookies = Vec::with_capacity(count as usize);
    for n in 1..=count {
        let dir = data_dir.join(if n == 1 {
            "bookie".to_string()
        } else {
            format!("bookie-{n}")
        });
        let port = first_port
            .checked_add(n - 1)
            .with_context(|| format!("bookie {n} would listen past port 65535"))?;
        bookies.push(start_bookie(&args, dir, SocketAddr::new(bind, port), listen, &meta).await?);
    }

    // broker
    let listeners = args.broker.bind().await?;
    let mut cfg = args.broker.config(&listeners, "standalone", [1, 1, 1])?;
    cfg.offload = args.broker.offload_config(Some(data_dir.join("offload")))?;
    // The broker reaches its own bookies by calling them, not through a loopback socket.
    let mut ledgers = LedgerClient::new(meta.clone(), Duration::from_secs(10));
    for b in &bookies {
        ledgers = ledgers.with_local_bookie(&b.name, Arc::clone(&b.bookie));
    }
    let svc = BrokerService::new(cfg, meta.clone(), ledgers).context("start the broker")?;
    let metrics_of: Vec<(String, Arc<Bookie>)> = bookies
        .iter()
        .map(|b| (b.name.clone(), Arc::clone(&b.bookie)))
        .collect();
    let _ = svc.extra_metrics.set(Box::new(move || {
        magnetar_bookie::http::render_metrics_of(&metrics_of)
    }));
    svc.init_cluster()
        .await
        .context("create cluster, tenant and namespace records")?;
    let names: Vec<String> = bookies.iter().map(|b| b.name.clone()).collect();
    args::serve(
        svc,
        listeners,
        args.broker.housekeeping_interval(),
        args::terminated(),
        |svc| {
            info!(
                service_url = %svc.cfg.service_url(),
                web_url = %svc.cfg.web_url(),
                service_url_tls = %svc.cfg.service_url_tls().unwrap_or_default(),
                web_url_tls = %svc.cfg.web_url_tls().unwrap_or_default(),
                bookies = ?names,
                data_dir = %data_dir.display(),
                ms = started.elapsed().as_millis() as u64,
                "magnetar standalone ready"
            )
        },
    )
    .await;
    for b in bookies {
        let _ = b.stop.send(());
        let _ = b.task.await;
        b.bookie.flush().await.context("final bookie flush")?;
    }
    info!("standalone stopped");
    Ok(())
}
