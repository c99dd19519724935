//! `magnetar broker` (a cluster member with no durable state of its own: metadata in etcd,
//! data on the bookies, bundles owned through its etcd session) and `magnetar init-cluster`
//! (the records a cluster starts from).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use magnetar_bookie::ledger::LedgerClient;
use magnetar_broker::cluster::claims::ClaimedOwnership;
use magnetar_broker::cluster::keys;
use magnetar_broker::cluster::ownership::BrokerUrls;
use magnetar_broker::service::BrokerService;
use magnetar_meta::MetaStore;
use serde::Deserialize;
use tracing::info;

use crate::args::{self, BrokerArgs};

#[derive(Args, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeArgs {
    /// TOML file with any of these settings (snake_case keys).
    #[arg(long, env = "MAGNETAR_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The cluster's metadata store: `etcd://host:port[,host:port...]`.
    #[arg(long, env = "MAGNETAR_META")]
    meta: Option<String>,
    /// How long after this broker stops answering (killed, cut off) its metadata session
    /// ends and other brokers take its bundles over, in ms; etcd counts in whole seconds
    /// [default: 2000].
    #[arg(long, env = "MAGNETAR_METADATA_SESSION_TIMEOUT_MS")]
    metadata_session_timeout_ms: Option<u64>,
    /// The cluster's shared secret for the bookie protocol (as the bookies'
    /// `--bookie-auth-secret`): a file, `file:///path`, `data:;base64,...` or `env:VAR`.
    #[arg(long, env = "MAGNETAR_BOOKIE_AUTH_SECRET")]
    bookie_auth_secret: Option<PathBuf>,
    /// Reach the bookies without the shared secret (bookies started with
    /// `--bookie-auth-disabled true`): only on a network where every host is trusted.
    #[arg(long, env = "MAGNETAR_BOOKIE_AUTH_DISABLED")]
    bookie_auth_disabled: Option<bool>,
    /// Everything a broker takes (shared with `magnetar standalone`).
    #[command(flatten)]
    #[serde(skip)]
    pub broker: BrokerArgs,
}

impl NodeArgs {
    /// Fills every unset flag from the config file.
    pub fn merge_file(mut self) -> Result<NodeArgs> {
        let Some((file, broker)) = BrokerArgs::split_config::<NodeArgs>(
            self.config.as_deref(),
            NodeArgs::augment_args(clap::Command::new("broker")),
        )?
        else {
            return Ok(self);
        };
        if self.meta.is_none() {
            self.meta = file.meta;
        }
        if self.metadata_session_timeout_ms.is_none() {
            self.metadata_session_timeout_ms = file.metadata_session_timeout_ms;
        }
        if self.bookie_auth_secret.is_none() {
            self.bookie_auth_secret = file.bookie_auth_secret;
        }
        if self.bookie_auth_disabled.is_none() {
            self.bookie_auth_disabled = file.bookie_auth_disabled;
        }
        self.broker.fill_from(broker);
        Ok(self)
    }
}

/// Ensemble, write and ack quorum of a cluster broker's new ledgers: two copies of every
/// entry, both durable before a publish is acknowledged (Pulsar's broker default).
const DEFAULT_QUORUM: [usize; 3] = [2, 2, 2];

/// How long a dead broker keeps its bundles. Clients back off 0.1, 0.2, 0.4 ... s between
/// reconnections, so one that lost its broker retries at about 1.5 and 3.1 s: a bundle free
/// within 2 s is served again by the second of those (Pulsar's default of 30 s is a long
/// outage for a queue).
const DEFAULT_SESSION_TIMEOUT_MS: u64 = 2000;

async fn connect(url: &str) -> Result<MetaStore> {
    magnetar_meta::connect(url)
        .await
        .with_context(|| format!("connect to metadata store {}", magnetar_meta::redact(url)))
}

pub async fn run(args: NodeArgs) -> Result<()> {
    let started = Instant::now();
    let url = args
        .meta
        .as_deref()
        .context("a broker needs --meta etcd://host:port (its cluster's metadata store)")?;
    let Some(cluster) = args.broker.cluster.clone() else {
        anyhow::bail!("a broker needs --cluster NAME (as given to `magnetar init-cluster`)");
    };
    // refuse impossible settings before reaching out to anything
    args.broker.quorum(DEFAULT_QUORUM)?;
    let secret = args::cluster_bookie_secret(
        args.bookie_auth_secret.as_deref(),
        args.bookie_auth_disabled.unwrap_or(false),
        "a broker",
    )?;
    let meta = connect(url).await?;
    if meta.get(&keys::cluster(&cluster)).await?.is_none() {
        let url = magnetar_meta::redact(url);
        anyhow::bail!(
            "cluster {cluster:?} is not initialized in {url}: run `magnetar init-cluster --meta \
             {url} --cluster {cluster}` first"
        );
    }
    let listeners = args.broker.bind().await?;
    let mut cfg = args.broker.config(&listeners, &cluster, DEFAULT_QUORUM)?;
    // a broker's disk is its own: offload goes where a driver (shared by all) says
    cfg.offload = args.broker.offload_config(None)?;
    let ttl = Duration::from_millis(
        args.metadata_session_timeout_ms
            .unwrap_or(DEFAULT_SESSION_TIMEOUT_MS)
            .max(1000),
    );
    let ownership = ClaimedOwnership::join(meta.clone(), cfg.urls(), ttl)
        .await
        .context("join the cluster")?;
    let ledgers = LedgerClient::new(meta.clone(), Duration::from_secs(10)).with_auth(secret);
    let svc = BrokerService::with_ownership(cfg, meta, ledgers, ownership.clone())
        .context("start the broker")?;
    let on_lost = Arc::downgrade(&svc);
    tokio::spawn(Arc::clone(&ownership).keep_alive(move || {
        let svc = on_lost.upgrade();
        Box::pin(async move {
            if let Some(svc) = svc {
                svc.unload_all().await;
            }
        })
    }));
    let id = ownership.id().to_string();
    args::serve(
        svc,
        listeners,
        args.broker.housekeeping_interval(),
        args::terminated(),
        |svc| {
            info!(
                broker = %id,
                cluster = %svc.cfg.cluster,
                service_url = %svc.cfg.service_url(),
                web_url = %svc.cfg.web_url(),
                ms = started.elapsed().as_millis() as u64,
                "magnetar broker ready"
            )
        },
    )
    .await;
    ownership.leave().await;
    info!("broker stopped");
    Ok(())
}

#[derive(Args)]
pub struct InitClusterArgs {
    /// The cluster's metadata store: `etcd://host:port[,host:port...]`.
    #[arg(long, env = "MAGNETAR_META")]
    meta: String,
    /// The cluster's name.
    #[arg(long, env = "MAGNETAR_CLUSTER")]
    cluster: String,
    /// The cluster's HTTP URL (what other clusters and tools reach it at)
    /// [default: http://127.0.0.1:8080].
    #[arg(long)]
    web_service_url: Option<String>,
    /// The cluster's binary protocol URL, e.g. `pulsar://h1:6650,h2:6650`
    /// [default: pulsar://127.0.0.1:6650].
    #[arg(long)]
    broker_service_url: Option<String>,
    /// The cluster's HTTPS URL.
    #[arg(long)]
    web_service_url_tls: Option<String>,
    /// The cluster's `pulsar+ssl://` URL.
    #[arg(long)]
    broker_service_url_tls: Option<String>,
}

/// Writes what is missing of the cluster record, tenant `public` and namespace
/// `public/default`; run twice, it changes nothing.
pub async fn init_cluster(args: InitClusterArgs) -> Result<()> {
    let meta = connect(&args.meta).await?;
    let urls = BrokerUrls {
        service_url: args
            .broker_service_url
            .unwrap_or_else(|| "pulsar://127.0.0.1:6650".into()),
        service_url_tls: args.broker_service_url_tls,
        web_url: args
            .web_service_url
            .unwrap_or_else(|| "http://127.0.0.1:8080".into()),
        web_url_tls: args.web_service_url_tls,
        listeners: Default::default(),
    };
    let created = magnetar_broker::cluster::init(&meta, &args.cluster, &urls)
        .await
        .context("write the cluster's records")?;
    if created.is_empty() {
        println!("cluster {} was already initialized", args.cluster);
    } else {
        println!(
            "cluster {} initialized: created {}",
            args.cluster,
            created.join(", ")
        );
    }
    Ok(())
}
