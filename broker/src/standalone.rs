//! `magnetar standalone`: RocksDB meta, an in-process bookie (the real journal and ledger
//! storage, reached through the same ledger client a cluster broker uses), the broker and its
//! HTTP side, in one process.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use magnetar_bookie::ledger::{BOOKIES_PATH, LedgerClient};
use magnetar_bookie::server::{self, Bookie, BookieConfig};
use magnetar_broker::config::{BrokerConfig, read_config};
use magnetar_broker::service::BrokerService;
use magnetar_broker::topic::subscription::DispatchConfig;
use magnetar_managed_ledger::{MlConfig, Placement, Retention};
use magnetar_meta::MetaStore;
use serde::Deserialize;
use tracing::{info, warn};

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
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "MAGNETAR_BIND")]
    bind: Option<IpAddr>,
    /// Host clients are told to connect to [default: the bind address].
    #[arg(long, env = "MAGNETAR_ADVERTISED_ADDRESS")]
    advertised_address: Option<String>,
    /// Pulsar binary protocol port [default: 6650].
    #[arg(long, env = "MAGNETAR_BROKER_PORT")]
    broker_port: Option<u16>,
    /// HTTP port: admin API, health, metrics [default: 8080].
    #[arg(long, env = "MAGNETAR_WEB_PORT")]
    web_port: Option<u16>,
    /// Port of the in-process bookie; keep it stable across restarts, since the bookie's
    /// address names it in ledger metadata [default: 3181].
    #[arg(long, env = "MAGNETAR_BOOKIE_PORT")]
    bookie_port: Option<u16>,
    /// In-process bookies: each has its own journal and ledger storage (bookie N keeps them
    /// in `bookie-N` under the data dir — link that to another disk to give it its own) and
    /// listens on the bookie port + N - 1. With more than one, racks-info groups and
    /// namespace bookie affinity keep a noisy tenant's writes off the others' journals
    /// [default: 1].
    #[arg(long, env = "MAGNETAR_BOOKIES")]
    bookies: Option<u16>,
    /// Bookie groups (racks-info) for the ledgers of namespaces without a bookie affinity of
    /// their own, comma separated; unset, they use the shared pool first.
    #[arg(long, env = "MAGNETAR_BOOKKEEPER_CLIENT_ISOLATION_GROUPS")]
    bookkeeper_client_isolation_groups: Option<String>,
    /// Groups those namespaces use when the isolation groups have too few bookies.
    #[arg(long, env = "MAGNETAR_BOOKKEEPER_CLIENT_SECONDARY_ISOLATION_GROUPS")]
    bookkeeper_client_secondary_isolation_groups: Option<String>,
    /// Cluster name [default: standalone].
    #[arg(long, env = "MAGNETAR_CLUSTER")]
    cluster: Option<String>,
    /// Largest message accepted, in bytes; announced to clients [default: 5242880].
    #[arg(long, env = "MAGNETAR_MAX_MESSAGE_SIZE")]
    max_message_size: Option<usize>,
    /// Create topics on first use [default: true].
    #[arg(long, env = "MAGNETAR_ALLOW_AUTO_TOPIC_CREATION")]
    allow_auto_topic_creation: Option<bool>,
    /// Roll a topic's ledger over after this many entries [default: 50000].
    #[arg(long, env = "MAGNETAR_MANAGED_LEDGER_MAX_ENTRIES_PER_LEDGER")]
    managed_ledger_max_entries_per_ledger: Option<u64>,
    /// Roll a topic's ledger over after this many minutes [default: 240].
    #[arg(long, env = "MAGNETAR_MANAGED_LEDGER_MAX_LEDGER_ROLLOVER_TIME_MINUTES")]
    managed_ledger_max_ledger_rollover_time_minutes: Option<u64>,
    /// Roll a topic's ledger over at this size in MB [default: 2048].
    #[arg(long, env = "MAGNETAR_MANAGED_LEDGER_MAX_SIZE_PER_LEDGER_MBYTES")]
    managed_ledger_max_size_per_ledger_mbytes: Option<u64>,
    /// Entry cache of all persistent topics together, in MB (a non-persistent topic: its
    /// own) [default: 128].
    #[arg(long, env = "MAGNETAR_MANAGED_LEDGER_CACHE_SIZE_MB")]
    managed_ledger_cache_size_mb: Option<usize>,
    /// Keep consumed messages this many minutes [default: 0].
    #[arg(long, env = "MAGNETAR_DEFAULT_RETENTION_TIME_IN_MINUTES")]
    default_retention_time_in_minutes: Option<u64>,
    /// Keep consumed messages up to this many MB [default: 0].
    #[arg(long, env = "MAGNETAR_DEFAULT_RETENTION_SIZE_IN_MB")]
    default_retention_size_in_mb: Option<u64>,
    /// Deduplicate producers (by name and sequence id) in namespaces whose policy does not
    /// say otherwise [default: false].
    #[arg(long, env = "MAGNETAR_BROKER_DEDUPLICATION_ENABLED")]
    broker_deduplication_enabled: Option<bool>,
    /// Message TTL in seconds for namespaces that set none (0: none) [default: 0].
    #[arg(long, env = "MAGNETAR_TTL_DURATION_DEFAULT_IN_SECONDS")]
    ttl_duration_default_in_seconds: Option<u64>,
    /// What auto-creation makes: `non-partitioned` or `partitioned`
    /// [default: non-partitioned].
    #[arg(long, env = "MAGNETAR_ALLOW_AUTO_TOPIC_CREATION_TYPE")]
    allow_auto_topic_creation_type: Option<String>,
    /// Partitions of auto-created partitioned topics [default: 1].
    #[arg(long, env = "MAGNETAR_DEFAULT_NUM_PARTITIONS")]
    default_num_partitions: Option<u32>,
    /// Keepalive interval: PING an idle client, drop it if the next tick hears nothing
    /// [default: 30].
    #[arg(long, env = "MAGNETAR_KEEP_ALIVE_INTERVAL_SECONDS")]
    keep_alive_interval_seconds: Option<u64>,
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
    /// How often consumed ledgers are trimmed and rates computed, in seconds [default: 10].
    #[arg(long, env = "MAGNETAR_HOUSEKEEPING_INTERVAL_SECS")]
    housekeeping_interval_secs: Option<u64>,
    /// Key_Shared: move a consumer's hash slots (and its unacknowledged messages of them) to
    /// other consumers after it has acknowledged nothing for this long, in ms [default: 30000].
    #[arg(long, env = "MAGNETAR_KEY_SHARED_LEASE_MS")]
    key_shared_lease_ms: Option<u64>,
    /// Key_Shared: most entries held back for busy hash slots before read-ahead stops
    /// [default: 5000].
    #[arg(long, env = "MAGNETAR_KEY_SHARED_MAX_HELD_ENTRIES")]
    key_shared_max_held_entries: Option<usize>,
    /// Delayed delivery: messages due within this many ms wait in memory; later ones are
    /// persisted in buckets this wide [default: 60000].
    #[arg(long, env = "MAGNETAR_DELAYED_DELIVERY_BUCKET_MS")]
    delayed_delivery_bucket_ms: Option<u64>,
    /// Require a token (JWT) from every client, on the binary protocol and HTTP (health and
    /// /metrics stay open) [default: false].
    #[arg(long, env = "MAGNETAR_AUTHENTICATION_ENABLED")]
    authentication_enabled: Option<bool>,
    /// HS256 secret key: a file (raw or base64, as `magnetar tokens create-secret-key`
    /// writes it), `file:///path`, `data:;base64,...` or `env:VAR`.
    #[arg(long, env = "MAGNETAR_TOKEN_SECRET_KEY")]
    token_secret_key: Option<PathBuf>,
    /// RS256 public key (PEM, as `magnetar tokens create-key-pair` writes it): a file,
    /// `file:///path`, `data:;base64,...` or `env:VAR`.
    #[arg(long, env = "MAGNETAR_TOKEN_PUBLIC_KEY")]
    token_public_key: Option<PathBuf>,
    /// The claim naming the role [default: sub].
    #[arg(long, env = "MAGNETAR_TOKEN_AUTH_CLAIM")]
    token_auth_claim: Option<String>,
    /// Role of clients without credentials (default: they are refused).
    #[arg(long, env = "MAGNETAR_ANONYMOUS_USER_ROLE")]
    anonymous_user_role: Option<String>,
    /// Check every request against grants: super-users, tenant admins, namespace and topic
    /// permissions (needs --authentication-enabled) [default: false].
    #[arg(long, env = "MAGNETAR_AUTHORIZATION_ENABLED")]
    authorization_enabled: Option<bool>,
    /// Roles that may do everything, comma separated.
    #[arg(long, env = "MAGNETAR_SUPER_USER_ROLES", value_delimiter = ',')]
    super_user_roles: Option<Vec<String>>,
    /// PEM certificate chain: with --tls-key-file, serves `pulsar+ssl://` and HTTPS too.
    #[arg(long, env = "MAGNETAR_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, env = "MAGNETAR_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
    /// Binary protocol TLS port [default: 6651].
    #[arg(long, env = "MAGNETAR_BROKER_PORT_TLS")]
    broker_port_tls: Option<u16>,
    /// HTTPS port [default: 8443].
    #[arg(long, env = "MAGNETAR_WEB_PORT_TLS")]
    web_port_tls: Option<u16>,
    /// How often connections are checked for expired tokens; a client that can refresh
    /// is challenged, others are disconnected [default: 60].
    #[arg(long, env = "MAGNETAR_AUTHENTICATION_REFRESH_CHECK_SECONDS")]
    authentication_refresh_check_seconds: Option<u64>,
    /// /metrics keeps series per topic up to this many loaded topics, then sums them per
    /// namespace, bounding what Prometheus has to store [default: 1000].
    #[arg(long, env = "MAGNETAR_METRICS_MAX_TOPICS")]
    metrics_max_topics: Option<usize>,
}

impl StandaloneArgs {
    /// Fills every unset flag from the config file.
    pub fn merge_file(mut self) -> Result<StandaloneArgs> {
        let Some(file) = read_config::<StandaloneArgs>(self.config.as_deref())? else {
            return Ok(self);
        };
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = file.$f; } )* };
        }
        fill!(
            data_dir,
            bind,
            advertised_address,
            broker_port,
            web_port,
            bookie_port,
            bookies,
            bookkeeper_client_isolation_groups,
            bookkeeper_client_secondary_isolation_groups,
            cluster,
            max_message_size,
            allow_auto_topic_creation,
            managed_ledger_max_entries_per_ledger,
            managed_ledger_max_ledger_rollover_time_minutes,
            managed_ledger_max_size_per_ledger_mbytes,
            managed_ledger_cache_size_mb,
            default_retention_time_in_minutes,
            default_retention_size_in_mb,
            broker_deduplication_enabled,
            ttl_duration_default_in_seconds,
            allow_auto_topic_creation_type,
            default_num_partitions,
            keep_alive_interval_seconds,
            journal_max_group_wait_us,
            bookie_gc_interval_secs,
            bookie_journal_max_size_mb,
            bookie_journal_spare_files,
            housekeeping_interval_secs,
            key_shared_lease_ms,
            key_shared_max_held_entries,
            delayed_delivery_bucket_ms,
            authentication_enabled,
            token_secret_key,
            token_public_key,
            token_auth_claim,
            anonymous_user_role,
            authorization_enabled,
            super_user_roles,
            tls_cert_file,
            tls_key_file,
            broker_port_tls,
            web_port_tls,
            authentication_refresh_check_seconds,
            metrics_max_topics
        );
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
    bcfg.max_entry_bytes = args
        .max_message_size
        .unwrap_or(magnetar_protocol::DEFAULT_MAX_MESSAGE_SIZE)
        + magnetar_protocol::FRAME_PADDING
        + 64 * 1024;
    let bookie_meta = meta.clone();
    let bookie = tokio::task::spawn_blocking(move || Bookie::open(bcfg, Some(bookie_meta)))
        .await
        .context("open bookie")??;
    let listener = server::bind(addr).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(Arc::clone(&bookie), listener, async {
        let _ = stopped.await;
    }));
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

async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Who may do what, as the flags say. Authorization without authentication would judge
/// every caller as nobody, so that combination is refused.
fn authorizer(args: &StandaloneArgs) -> Result<magnetar_broker::authz::Authorizer> {
    let enabled = args.authorization_enabled.unwrap_or(false);
    if enabled && !args.authentication_enabled.unwrap_or(false) {
        anyhow::bail!("--authorization-enabled needs --authentication-enabled");
    }
    Ok(magnetar_broker::authz::Authorizer {
        enabled,
        super_users: args
            .super_user_roles
            .iter()
            .flatten()
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .collect(),
    })
}

/// A key's bytes: decoded from a `data:` URL, or as stored in a file or variable (a secret
/// may still be base64 text there).
enum Key {
    Decoded(Vec<u8>),
    Stored(Vec<u8>),
}

/// Reads a key named as Pulsar names them: `file:///path`, `data:;base64,...`, `env:VAR`,
/// or a plain path.
fn read_key(spec: &Path) -> Result<Key> {
    use base64::Engine;
    let text = spec.to_string_lossy();
    if let Some(data) = text.strip_prefix("data:") {
        let (kind, payload) = data
            .split_once(',')
            .context("a data: key needs a comma before its payload")?;
        return Ok(Key::Decoded(if kind.ends_with(";base64") {
            base64::engine::general_purpose::STANDARD
                .decode(payload.trim())
                .context("the data: key is not base64")?
        } else {
            payload.as_bytes().to_vec()
        }));
    }
    if let Some(var) = text.strip_prefix("env:") {
        let v = std::env::var(var).with_context(|| format!("key variable {var} is not set"))?;
        return Ok(Key::Stored(v.into_bytes()));
    }
    let path = text.strip_prefix("file://").map_or(spec, Path::new);
    let raw = std::fs::read(path).with_context(|| format!("read key {}", path.display()))?;
    Ok(Key::Stored(raw))
}

/// The token checker the flags describe (None: authentication off).
fn token_auth(args: &StandaloneArgs) -> Result<Option<magnetar_broker::auth::TokenAuth>> {
    use magnetar_broker::auth::{TokenAuth, decode_secret};
    if !args.authentication_enabled.unwrap_or(false) {
        return Ok(None);
    }
    let claim = args.token_auth_claim.as_deref().unwrap_or("sub");
    match (&args.token_secret_key, &args.token_public_key) {
        (Some(p), None) => {
            let secret = match read_key(p)? {
                Key::Decoded(k) => k,
                Key::Stored(raw) => decode_secret(&raw),
            };
            Ok(Some(TokenAuth::with_secret(&secret, claim)))
        }
        (None, Some(p)) => {
            let pem = match read_key(p)? {
                Key::Decoded(k) | Key::Stored(k) => k,
            };
            Ok(Some(TokenAuth::with_public_key(&pem, claim)?))
        }
        _ => anyhow::bail!(
            "--authentication-enabled needs exactly one of --token-secret-key and --token-public-key"
        ),
    }
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
    let bind = args.bind.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let advertised = args
        .advertised_address
        .clone()
        .unwrap_or_else(|| bind.to_string());

    // metadata
    let meta_url = format!("rocksdb://{}", data_dir.join("meta").display());
    let meta = magnetar_meta::connect(&meta_url)
        .await
        .with_context(|| format!("open metadata store {meta_url}"))?;

    // bookies
    let count = args.bookies.unwrap_or(1).max(1);
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
        bookies.push(start_bookie(&args, dir, SocketAddr::new(bind, port), &meta).await?);
    }
    // broker
    let defaults = MlConfig::default();
    let ml = MlConfig {
        max_entries_per_ledger: args
            .managed_ledger_max_entries_per_ledger
            .unwrap_or(defaults.max_entries_per_ledger)
            .max(1),
        max_ledger_age: args
            .managed_ledger_max_ledger_rollover_time_minutes
            .map_or(defaults.max_ledger_age, |m| Duration::from_secs(m * 60)),
        max_ledger_bytes: args
            .managed_ledger_max_size_per_ledger_mbytes
            .map_or(defaults.max_ledger_bytes, |m| m << 20),
        cache_bytes: args
            .managed_ledger_cache_size_mb
            .map_or(defaults.cache_bytes, |m| m << 20),
        track_producers: args.broker_deduplication_enabled.unwrap_or(false),
        placement: Placement {
            affinity: args
                .bookkeeper_client_isolation_groups
                .as_deref()
                .and_then(|p| {
                    magnetar_bookie::placement::Affinity::from_lists(
                        p,
                        args.bookkeeper_client_secondary_isolation_groups.as_deref(),
                    )
                }),
            ..defaults.placement.clone()
        },
        ..defaults
    };
    let broker_addr = SocketAddr::new(bind, args.broker_port.unwrap_or(6650));
    let web_addr = SocketAddr::new(bind, args.web_port.unwrap_or(8080));
    let listener = tokio::net::TcpListener::bind(broker_addr)
        .await
        .with_context(|| format!("bind broker port {broker_addr}"))?;
    let web = tokio::net::TcpListener::bind(web_addr)
        .await
        .with_context(|| format!("bind web port {web_addr}"))?;
    let broker_addr = listener.local_addr().context("broker address")?;
    let web_addr = web.local_addr().context("web address")?;
    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => {
            let cfg = magnetar_broker::tls::server_config(cert, key)?;
            let b = SocketAddr::new(bind, args.broker_port_tls.unwrap_or(6651));
            let w = SocketAddr::new(bind, args.web_port_tls.unwrap_or(8443));
            let b = tokio::net::TcpListener::bind(b)
                .await
                .with_context(|| format!("bind broker TLS port {b}"))?;
            let w = tokio::net::TcpListener::bind(w)
                .await
                .with_context(|| format!("bind web TLS port {w}"))?;
            Some((
                magnetar_broker::tls::TlsListener::new(b, Arc::clone(&cfg))?,
                magnetar_broker::tls::TlsListener::new(w, cfg)?,
            ))
        }
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both --tls-cert-file and --tls-key-file"),
    };
    let tls_ports = match &tls {
        Some((b, w)) => {
            use axum::serve::Listener;
            (Some(b.local_addr()?.port()), Some(w.local_addr()?.port()))
        }
        None => (None, None),
    };
    let cfg = BrokerConfig {
        cluster: args.cluster.clone().unwrap_or_else(|| "standalone".into()),
        advertised_address: advertised,
        broker_port: broker_addr.port(),
        web_port: web_addr.port(),
        broker_port_tls: tls_ports.0,
        web_port_tls: tls_ports.1,
        max_message_size: args
            .max_message_size
            .unwrap_or(magnetar_protocol::DEFAULT_MAX_MESSAGE_SIZE),
        allow_auto_topic_creation: args.allow_auto_topic_creation.unwrap_or(true),
        // Pulsar's numbers: 0 = none, negative = forever
        default_retention: Retention::from_limits(
            args.default_retention_time_in_minutes.unwrap_or(0) as i64,
            args.default_retention_size_in_mb.unwrap_or(0) as i64,
        ),
        keepalive: Duration::from_secs(args.keep_alive_interval_seconds.unwrap_or(30).max(1)),
        ml,
        auth: token_auth(&args)?,
        anonymous_role: args.anonymous_user_role.clone(),
        authz: authorizer(&args)?,
        metrics_max_topics: args.metrics_max_topics.unwrap_or(1000),
        auth_refresh_check: Duration::from_secs(
            args.authentication_refresh_check_seconds
                .unwrap_or(60)
                .max(1),
        ),
        default_ttl: args
            .ttl_duration_default_in_seconds
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
        default_num_partitions: match args.allow_auto_topic_creation_type.as_deref() {
            None | Some("non-partitioned") => 0,
            Some("partitioned") => args.default_num_partitions.unwrap_or(1).clamp(1, 10_000),
            Some(other) => anyhow::bail!(
                "--allow-auto-topic-creation-type must be non-partitioned or partitioned, not {other:?}"
            ),
        },
        dispatch: DispatchConfig {
            key_shared_lease: args
                .key_shared_lease_ms
                .map_or(DispatchConfig::default().key_shared_lease, |ms| {
                    Duration::from_millis(ms.max(1))
                }),
            key_shared_max_held: args
                .key_shared_max_held_entries
                .unwrap_or(DispatchConfig::default().key_shared_max_held)
                .max(1),
            delayed_horizon: args
                .delayed_delivery_bucket_ms
                .map_or(DispatchConfig::default().delayed_horizon, |ms| {
                    Duration::from_millis(ms.max(1))
                }),
        },
    };
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
    let app = magnetar_broker::http::router(Arc::clone(&svc));
    if let Some((broker_tls, web_tls)) = tls {
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(web_tls, app).await {
                warn!(error = %e, "https server stopped");
            }
        });
        tokio::spawn(magnetar_broker::protocol::serve_tls(
            Arc::clone(&svc),
            broker_tls,
            std::future::pending(),
        ));
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(web, app).await {
            warn!(error = %e, "http server stopped");
        }
    });
    let every = Duration::from_secs(args.housekeeping_interval_secs.unwrap_or(10).max(1));
    tokio::spawn(Arc::clone(&svc).housekeeping(every));
    svc.ready.store(true, Ordering::Release);
    info!(
        service_url = %svc.cfg.service_url(),
        web_url = %svc.cfg.web_url(),
        service_url_tls = %svc.cfg.service_url_tls().unwrap_or_default(),
        web_url_tls = %svc.cfg.web_url_tls().unwrap_or_default(),
        bookies = ?bookies.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        data_dir = %data_dir.display(),
        ms = started.elapsed().as_millis() as u64,
        "magnetar standalone ready"
    );

    magnetar_broker::protocol::serve(Arc::clone(&svc), listener, terminated()).await;
    info!("shutting down: closing topics and flushing cursors");
    svc.shutdown().await;
    for b in bookies {
        let _ = b.stop.send(());
        let _ = b.task.await;
        b.bookie.flush().await.context("final bookie flush")?;
    }
    info!("standalone stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn bytes(k: Key) -> (bool, Vec<u8>) {
        match k {
            Key::Decoded(b) => (true, b),
            Key::Stored(b) => (false, b),
        }
    }

    #[test]
    fn keys_are_read_as_pulsar_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, b"stored").unwrap();
        assert_eq!(bytes(read_key(&f).unwrap()), (false, b"stored".to_vec()));
        let url = PathBuf::from(format!("file://{}", f.display()));
        assert_eq!(bytes(read_key(&url).unwrap()), (false, b"stored".to_vec()));
        let data = PathBuf::from("data:;base64,a2V5");
        assert_eq!(bytes(read_key(&data).unwrap()), (true, b"key".to_vec()));
        assert!(read_key(Path::new("data:;base64,%%%")).is_err());
        assert!(read_key(Path::new("env:MAGNETAR_TEST_SURELY_UNSET")).is_err());
        assert!(read_key(&dir.path().join("absent")).is_err());
    }
}
