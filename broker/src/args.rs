//! Every setting a broker takes, shared by `magnetar standalone` and `magnetar broker`:
//! flags (each also `MAGNETAR_<FLAG>`), their part of a `--config` file, and what they become
//! (listeners bound, the broker's configuration, the served ports).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Command};
use magnetar_broker::config::BrokerConfig;
use magnetar_broker::offload::OffloadConfig;
use magnetar_broker::service::BrokerService;
use magnetar_broker::tls::TlsListener;
use magnetar_broker::topic::producers::PublishLimits;
use magnetar_broker::topic::subscription::DispatchConfig;
use magnetar_managed_ledger::{MlConfig, Placement, Retention};
use serde::Deserialize;
use tokio::net::TcpListener;
use tracing::warn;

#[derive(Args, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[command(next_help_heading = "Broker")]
pub struct BrokerArgs {
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "MAGNETAR_BIND")]
    pub bind: Option<IpAddr>,
    /// Host clients are told to connect to [default: the bind address].
    #[arg(long, env = "MAGNETAR_ADVERTISED_ADDRESS")]
    pub advertised_address: Option<String>,
    /// Named addresses for clients of different networks (Pulsar's advertisedListeners):
    /// `name:pulsar://host:port[,name:pulsar+ssl://host:port,...]`; a client picks one with
    /// its listener name. They are what clients are told, not more ports to listen on.
    #[arg(long, env = "MAGNETAR_ADVERTISED_LISTENERS")]
    pub advertised_listeners: Option<String>,
    /// The listener brokers use and clients that name none are given [default: internal].
    #[arg(long, env = "MAGNETAR_INTERNAL_LISTENER_NAME")]
    pub internal_listener_name: Option<String>,
    /// Pulsar binary protocol port [default: 6650].
    #[arg(long, env = "MAGNETAR_BROKER_PORT")]
    pub broker_port: Option<u16>,
    /// HTTP port: admin API, health, metrics [default: 8080].
    #[arg(long, env = "MAGNETAR_WEB_PORT")]
    pub web_port: Option<u16>,
    /// Bookie groups (racks-info) for the ledgers of namespaces without a bookie affinity of
    /// their own, comma separated; unset, they use the shared pool first.
    #[arg(long, env = "MAGNETAR_BOOKKEEPER_CLIENT_ISOLATION_GROUPS")]
    pub bookkeeper_client_isolation_groups: Option<String>,
    /// Groups those namespaces use when the isolation groups have too few bookies.
    #[arg(long, env = "MAGNETAR_BOOKKEEPER_CLIENT_SECONDARY_ISOLATION_GROUPS")]
    pub bookkeeper_client_secondary_isolation_groups: Option<String>,
    /// Bookies each new ledger is spread over [default: 1 standalone, 2 broker].
    #[arg(long, env = "MAGNETAR_MANAGED_LEDGER_DEFAULT_ENSEMBLE_SIZE")]
    pub managed_ledger_default_ensemble_size: Option<usize>,
    /// Bookies each entry is written to [default: 1 standalone, 2 broker].
    #[arg(long, env = "MAGNETAR_MANAGED_LEDGER_DEFAULT_WRITE_QUORUM")]
    pub managed_ledger_default_write_quorum: Option<usize>,
    /// Bookies that must have an entry durable before its publish is acknowledged
    /// [default: 1 standalone, 2 broker].
    #[arg(long, env = "MAGNETAR_MANAGED_LEDGER_DEFAULT_ACK_QUORUM")]
    pub managed_ledger_default_ack_quorum: Option<usize>,
    /// Cluster name [default: standalone].
    #[arg(long, env = "MAGNETAR_CLUSTER")]
    pub cluster: Option<String>,
    /// Largest message accepted, in bytes; announced to clients [default: 5242880].
    #[arg(long, env = "MAGNETAR_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<usize>,
    /// Create topics on first use [default: true].
    #[arg(long, env = "MAGNETAR_ALLOW_AUTO_TOPIC_CREATION")]
    pub allow_auto_topic_creation: Option<bool>,
    /// Roll a topic's ledger over after this many entries [default: 50000].
    #[arg(long, env = "MAGNETAR_MANAGED_LEDGER_MAX_ENTRIES_PER_LEDGER")]
    pub managed_ledger_max_entries_per_ledger: Option<u64>,
    /// Roll a topic's ledger over after this many minutes [default: 240].
    #[arg(long, env = "MAGNETAR_MANAGED_LEDGER_MAX_LEDGER_ROLLOVER_TIME_MINUTES")]
    pub managed_ledger_max_ledger_rollover_time_minutes: Option<u64>,
    /// Roll a topic's ledger over at this size in MB [default: 2048].
    #[arg(long, env = "MAGNETAR_MANAGED_LEDGER_MAX_SIZE_PER_LEDGER_MBYTES")]
    pub managed_ledger_max_size_per_ledger_mbytes: Option<u64>,
    /// Entry cache of all persistent topics together, in MB (a non-persistent topic: its
    /// own) [default: 128].
    #[arg(long, env = "MAGNETAR_MANAGED_LEDGER_CACHE_SIZE_MB")]
    pub managed_ledger_cache_size_mb: Option<usize>,
    /// Keep consumed messages this many minutes [default: 0].
    #[arg(long, env = "MAGNETAR_DEFAULT_RETENTION_TIME_IN_MINUTES")]
    pub default_retention_time_in_minutes: Option<u64>,
    /// Keep consumed messages up to this many MB [default: 0].
    #[arg(long, env = "MAGNETAR_DEFAULT_RETENTION_SIZE_IN_MB")]
    pub default_retention_size_in_mb: Option<u64>,
    /// Deduplicate producers (by name and sequence id) in namespaces whose policy does not
    /// say otherwise [default: false].
    #[arg(long, env = "MAGNETAR_BROKER_DEDUPLICATION_ENABLED")]
    pub broker_deduplication_enabled: Option<bool>,
    /// Message TTL in seconds for namespaces that set none (0: none) [default: 0].
    #[arg(long, env = "MAGNETAR_TTL_DURATION_DEFAULT_IN_SECONDS")]
    pub ttl_duration_default_in_seconds: Option<u64>,
    /// What auto-creation makes: `non-partitioned` or `partitioned`
    /// [default: non-partitioned].
    #[arg(long, env = "MAGNETAR_ALLOW_AUTO_TOPIC_CREATION_TYPE")]
    pub allow_auto_topic_creation_type: Option<String>,
    /// Partitions of auto-created partitioned topics [default: 1].
    #[arg(long, env = "MAGNETAR_DEFAULT_NUM_PARTITIONS")]
    pub default_num_partitions: Option<u32>,
    /// Keepalive interval: PING an idle client, drop it if the next tick hears nothing
    /// [default: 30].
    #[arg(long, env = "MAGNETAR_KEEP_ALIVE_INTERVAL_SECONDS")]
    pub keep_alive_interval_seconds: Option<u64>,
    /// How often consumed ledgers are trimmed and rates computed, in seconds [default: 10].
    #[arg(long, env = "MAGNETAR_HOUSEKEEPING_INTERVAL_SECS")]
    pub housekeeping_interval_secs: Option<u64>,
    /// Key_Shared: move a consumer's hash slots (and its unacknowledged messages of them) to
    /// other consumers after it has acknowledged nothing for this long, in ms [default: 30000].
    #[arg(long, env = "MAGNETAR_KEY_SHARED_LEASE_MS")]
    pub key_shared_lease_ms: Option<u64>,
    /// Key_Shared: most entries held back for busy hash slots before read-ahead stops
    /// [default: 5000].
    #[arg(long, env = "MAGNETAR_KEY_SHARED_MAX_HELD_ENTRIES")]
    pub key_shared_max_held_entries: Option<usize>,
    /// Delayed delivery: messages due within this many ms wait in memory; later ones are
    /// persisted in buckets this wide [default: 60000].
    #[arg(long, env = "MAGNETAR_DELAYED_DELIVERY_BUCKET_MS")]
    pub delayed_delivery_bucket_ms: Option<u64>,
    /// Require a token (JWT) from every client, on the binary protocol and HTTP (health and
    /// /metrics stay open) [default: false].
    #[arg(long, env = "MAGNETAR_AUTHENTICATION_ENABLED")]
    pub authentication_enabled: Option<bool>,
    /// HS256 secret key: a file (raw or base64, as `magnetar tokens create-secret-key`
    /// writes it), `file:///path`, `data:;base64,...` or `env:VAR`.
    #[arg(long, env = "MAGNETAR_TOKEN_SECRET_KEY")]
    pub token_secret_key: Option<PathBuf>,
    /// RS256 public key (PEM, as `magnetar tokens create-key-pair` writes it): a file,
    /// `file:///path`, `data:;base64,...` or `env:VAR`.
    #[arg(long, env = "MAGNETAR_TOKEN_PUBLIC_KEY")]
    pub token_public_key: Option<PathBuf>,
    /// The claim naming the role [default: sub].
    #[arg(long, env = "MAGNETAR_TOKEN_AUTH_CLAIM")]
    pub token_auth_claim: Option<String>,
    /// Role of clients without credentials (default: they are refused).
    #[arg(long, env = "MAGNETAR_ANONYMOUS_USER_ROLE")]
    pub anonymous_user_role: Option<String>,
    /// Check every request against grants: super-users, tenant admins, namespace and topic
    /// permissions (needs --authentication-enabled) [default: false].
    #[arg(long, env = "MAGNETAR_AUTHORIZATION_ENABLED")]
    pub authorization_enabled: Option<bool>,
    /// Roles that may do everything, comma separated.
    #[arg(long, env = "MAGNETAR_SUPER_USER_ROLES", value_delimiter = ',')]
    pub super_user_roles: Option<Vec<String>>,
    /// Authentication providers, comma separated: `token` (JWTs, --token-*), `tls` (the
    /// common name of a client certificate verified against --tls-trust-certs-file-path),
    /// `basic` (users of --basic-auth-conf) [default: token].
    #[arg(long, env = "MAGNETAR_AUTHENTICATION_PROVIDERS", value_delimiter = ',')]
    pub authentication_providers: Option<Vec<String>>,
    /// htpasswd file for Basic authentication (`user:$apr1$...` from `htpasswd -m`, or
    /// bcrypt from `htpasswd -B`; the whole file may be base64), as Pulsar's basicAuthConf.
    #[arg(long, env = "MAGNETAR_BASIC_AUTH_CONF")]
    pub basic_auth_conf: Option<PathBuf>,
    /// PEM certificates of the authorities client certificates must be signed by: the TLS
    /// ports then ask clients for one.
    #[arg(long, env = "MAGNETAR_TLS_TRUST_CERTS_FILE_PATH")]
    pub tls_trust_certs_file_path: Option<PathBuf>,
    /// Refuse TLS clients without a trusted certificate at the handshake [default: false].
    #[arg(long, env = "MAGNETAR_TLS_REQUIRE_TRUSTED_CLIENT_CERT_ON_CONNECT")]
    pub tls_require_trusted_client_cert_on_connect: Option<bool>,
    /// PEM certificate chain: with --tls-key-file, serves `pulsar+ssl://` and HTTPS too.
    #[arg(long, env = "MAGNETAR_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, env = "MAGNETAR_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Binary protocol TLS port [default: 6651].
    #[arg(long, env = "MAGNETAR_BROKER_PORT_TLS")]
    pub broker_port_tls: Option<u16>,
    /// HTTPS port [default: 8443].
    #[arg(long, env = "MAGNETAR_WEB_PORT_TLS")]
    pub web_port_tls: Option<u16>,
    /// How often connections are checked for expired tokens; a client that can refresh
    /// is challenged, others are disconnected [default: 60].
    #[arg(long, env = "MAGNETAR_AUTHENTICATION_REFRESH_CHECK_SECONDS")]
    pub authentication_refresh_check_seconds: Option<u64>,
    /// /metrics keeps series per topic up to this many loaded topics, then sums them per
    /// namespace, bounding what Prometheus has to store [default: 1000].
    #[arg(long, env = "MAGNETAR_METRICS_MAX_TOPICS")]
    pub metrics_max_topics: Option<usize>,
    /// SENDs a topic may have in flight (appended, not yet durable) before its producers'
    /// connections pause; they resume as receipts go out, nothing fails [default: 5000].
    #[arg(long, env = "MAGNETAR_MAX_PENDING_PUBLISH_REQUESTS_PER_TOPIC")]
    pub max_pending_publish_requests_per_topic: Option<usize>,
    /// Bytes of SENDs a topic may have in flight before its producers' connections pause,
    /// in MB [default: 64].
    #[arg(long, env = "MAGNETAR_MAX_MESSAGE_PUBLISH_BUFFER_SIZE_PER_TOPIC_IN_MB")]
    pub max_message_publish_buffer_size_per_topic_in_mb: Option<usize>,
    /// Bytes queued for one client connection past which its consumers are sent nothing
    /// more until it reads them, in MB (a consumer that stops reading cannot grow the
    /// broker's memory) [default: 16].
    #[arg(long, env = "MAGNETAR_MAX_OUTBOUND_BUFFER_SIZE_PER_CONNECTION_IN_MB")]
    pub max_outbound_buffer_size_per_connection_in_mb: Option<usize>,
    /// Where topics offload closed ledgers unless a policy names a driver: filesystem,
    /// aws-s3 (or S3, also for S3-compatible servers), google-cloud-storage, azureblob, or
    /// none [default: filesystem under the data dir (standalone); none (broker)]. Cloud
    /// credentials come from the environment (AWS_*, GOOGLE_*, AZURE_*) or the instance.
    #[arg(long, env = "MAGNETAR_MANAGED_LEDGER_OFFLOAD_DRIVER")]
    pub managed_ledger_offload_driver: Option<String>,
    /// The filesystem driver's directory [default: <data dir>/offload (standalone)].
    #[arg(long, env = "MAGNETAR_FILE_SYSTEM_OFFLOAD_ROOT")]
    pub file_system_offload_root: Option<PathBuf>,
    /// Bucket of the aws-s3 (and azureblob: container) driver.
    #[arg(long, env = "MAGNETAR_S3_MANAGED_LEDGER_OFFLOAD_BUCKET")]
    pub s3_managed_ledger_offload_bucket: Option<String>,
    #[arg(long, env = "MAGNETAR_S3_MANAGED_LEDGER_OFFLOAD_REGION")]
    pub s3_managed_ledger_offload_region: Option<String>,
    /// Endpoint of an S3-compatible server (requests are path-style; http:// allowed).
    #[arg(long, env = "MAGNETAR_S3_MANAGED_LEDGER_OFFLOAD_SERVICE_ENDPOINT")]
    pub s3_managed_ledger_offload_service_endpoint: Option<String>,
    /// Bucket of the google-cloud-storage driver.
    #[arg(long, env = "MAGNETAR_GCS_MANAGED_LEDGER_OFFLOAD_BUCKET")]
    pub gcs_managed_ledger_offload_bucket: Option<String>,
    /// Offload once a topic holds more than this many bytes in storage (0: every closed
    /// ledger; -1: off), for namespaces that set no threshold [default: -1].
    #[arg(
        long,
        env = "MAGNETAR_MANAGED_LEDGER_OFFLOAD_THRESHOLD_IN_BYTES",
        allow_negative_numbers = true
    )]
    pub managed_ledger_offload_threshold_in_bytes: Option<i64>,
    /// Offload ledgers closed more than this many seconds ago (-1: off) [default: -1].
    #[arg(
        long,
        env = "MAGNETAR_MANAGED_LEDGER_OFFLOAD_THRESHOLD_IN_SECONDS",
        allow_negative_numbers = true
    )]
    pub managed_ledger_offload_threshold_in_seconds: Option<i64>,
    /// Delete the storage copy of an offloaded ledger this many ms after the offload
    /// (negative: keep it) [default: 14400000, 4 h].
    #[arg(
        long,
        env = "MAGNETAR_MANAGED_LEDGER_OFFLOAD_DELETION_LAG_MS",
        allow_negative_numbers = true
    )]
    pub managed_ledger_offload_deletion_lag_ms: Option<i64>,
    /// Multipart upload part size of offloads; smaller ledgers go up in one PUT
    /// [default: 16777216; at least 5 MiB].
    #[arg(
        long,
        env = "MAGNETAR_S3_MANAGED_LEDGER_OFFLOAD_MAX_BLOCK_SIZE_IN_BYTES"
    )]
    pub s3_managed_ledger_offload_max_block_size_in_bytes: Option<usize>,
    /// Size of an offloaded segment's checksummed blocks, the unit of ranged reads and of
    /// the read cache [default: 1048576].
    #[arg(
        long,
        env = "MAGNETAR_S3_MANAGED_LEDGER_OFFLOAD_READ_BUFFER_SIZE_IN_BYTES"
    )]
    pub s3_managed_ledger_offload_read_buffer_size_in_bytes: Option<usize>,
    /// Memory for blocks read from the tier, over all topics, in MB [default: 64].
    #[arg(long, env = "MAGNETAR_MANAGED_LEDGER_OFFLOAD_CACHE_SIZE_MB")]
    pub managed_ledger_offload_cache_size_mb: Option<usize>,
    /// Read-ahead of a reader moving forward through offloaded data, in MB [default: 8].
    #[arg(long, env = "MAGNETAR_MANAGED_LEDGER_OFFLOAD_READ_AHEAD_MB")]
    pub managed_ledger_offload_read_ahead_mb: Option<usize>,
}

impl BrokerArgs {
    /// The settings' names as a config file spells them.
    pub fn keys() -> Vec<String> {
        BrokerArgs::augment_args(Command::new("broker"))
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect()
    }

    /// Reads a `--config` file of a command that flattens these flags: the broker's keys
    /// become a `BrokerArgs`, the rest the command's own `T` (whose flags `cmd` lists);
    /// an unknown key is an error naming it.
    pub fn split_config<T: serde::de::DeserializeOwned>(
        path: Option<&Path>,
        cmd: Command,
    ) -> Result<Option<(T, BrokerArgs)>> {
        let Some(mut table) = magnetar_broker::config::read_config::<toml::Table>(path)? else {
            return Ok(None);
        };
        let name = cmd.get_name().to_string();
        let mut broker = toml::Table::new();
        for k in BrokerArgs::keys() {
            if let Some(v) = table.remove(&k) {
                broker.insert(k, v);
            }
        }
        let shown = path.unwrap_or(Path::new("")).display();
        let known: Vec<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        if let Some(k) = table.keys().find(|k| !known.contains(k)) {
            anyhow::bail!(
                "config {shown}: unknown setting `{k}` (the settings are the flags of `magnetar \
                 {name} --help`, in snake_case)"
            );
        }
        let own: T = toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("config {shown}"))?;
        let broker: BrokerArgs = toml::Value::Table(broker)
            .try_into()
            .with_context(|| format!("config {shown}"))?;
        Ok(Some((own, broker)))
    }

    /// Fills every unset flag from the config file's values.
    pub fn fill_from(&mut self, file: BrokerArgs) {
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = file.$f; } )* };
        }
        fill!(
            bind,
            advertised_address,
            advertised_listeners,
            internal_listener_name,
            broker_port,
            web_port,
            bookkeeper_client_isolation_groups,
            bookkeeper_client_secondary_isolation_groups,
            managed_ledger_default_ensemble_size,
            managed_ledger_default_write_quorum,
            managed_ledger_default_ack_quorum,
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
            authentication_providers,
            basic_auth_conf,
            tls_trust_certs_file_path,
            tls_require_trusted_client_cert_on_connect,
            broker_port_tls,
            web_port_tls,
            authentication_refresh_check_seconds,
            metrics_max_topics,
            max_pending_publish_requests_per_topic,
            max_message_publish_buffer_size_per_topic_in_mb,
            max_outbound_buffer_size_per_connection_in_mb,
            managed_ledger_offload_driver,
            file_system_offload_root,
            s3_managed_ledger_offload_bucket,
            s3_managed_ledger_offload_region,
            s3_managed_ledger_offload_service_endpoint,
            gcs_managed_ledger_offload_bucket,
            managed_ledger_offload_threshold_in_bytes,
            managed_ledger_offload_threshold_in_seconds,
            managed_ledger_offload_deletion_lag_ms,
            s3_managed_ledger_offload_max_block_size_in_bytes,
            s3_managed_ledger_offload_read_buffer_size_in_bytes,
            managed_ledger_offload_cache_size_mb,
            managed_ledger_offload_read_ahead_mb
        );
    }

    pub fn bind_address(&self) -> IpAddr {
        self.bind.unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }

    /// The internal listener's name: `--internal-listener-name`, which must then be among
    /// the advertised listeners, or Pulsar's `internal`.
    fn internal_listener(&self) -> Result<String> {
        let listeners = parse_listeners(self.advertised_listeners.as_deref().unwrap_or(""))?;
        match &self.internal_listener_name {
            Some(name) if !listeners.contains_key(name) => anyhow::bail!(
                "--internal-listener-name {name:?} is not among --advertised-listeners"
            ),
            Some(name) => Ok(name.clone()),
            // the first advertised one, as Pulsar picks it, or the implicit one
            None => Ok(self
                .advertised_listeners
                .as_deref()
                .and_then(|spec| spec.split(',').find_map(|i| i.trim().split_once(':')))
                .map_or_else(
                    || magnetar_broker::config::DEFAULT_INTERNAL_LISTENER.into(),
                    |(name, _)| name.to_string(),
                )),
        }
    }

    pub fn max_message_size(&self) -> usize {
        self.max_message_size
            .unwrap_or(magnetar_protocol::DEFAULT_MAX_MESSAGE_SIZE)
    }

    pub fn housekeeping_interval(&self) -> Duration {
        Duration::from_secs(self.housekeeping_interval_secs.unwrap_or(10).max(1))
    }

    /// Binds the broker's ports (0 picks a free one).
    pub async fn bind(&self) -> Result<Listeners> {
        let bind = self.bind_address();
        let broker_addr = SocketAddr::new(bind, self.broker_port.unwrap_or(6650));
        let web_addr = SocketAddr::new(bind, self.web_port.unwrap_or(8080));
        let broker = TcpListener::bind(broker_addr)
            .await
            .with_context(|| format!("bind broker port {broker_addr}"))?;
        let web = TcpListener::bind(web_addr)
            .await
            .with_context(|| format!("bind web port {web_addr}"))?;
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                let clients = self.tls_trust_certs_file_path.as_deref().map(|trust| {
                    magnetar_broker::tls::ClientCerts {
                        trust,
                        require: self
                            .tls_require_trusted_client_cert_on_connect
                            .unwrap_or(false),
                    }
                });
                let cfg = magnetar_broker::tls::server_config(cert, key, clients)?;
                let b = SocketAddr::new(bind, self.broker_port_tls.unwrap_or(6651));
                let w = SocketAddr::new(bind, self.web_port_tls.unwrap_or(8443));
                let b = TcpListener::bind(b)
                    .await
                    .with_context(|| format!("bind broker TLS port {b}"))?;
                let w = TcpListener::bind(w)
                    .await
                    .with_context(|| format!("bind web TLS port {w}"))?;
                Some((
                    TlsListener::new(b, Arc::clone(&cfg))?,
                    TlsListener::new(w, cfg)?,
                ))
            }
            (None, None) => None,
            _ => anyhow::bail!("TLS needs both --tls-cert-file and --tls-key-file"),
        };
        Ok(Listeners { broker, web, tls })
    }

    /// Ensemble, write quorum and ack quorum of new ledgers: the flags over `default`;
    /// refused unless ack quorum <= write quorum <= ensemble, all at least 1.
    pub fn quorum(&self, default: [usize; 3]) -> Result<[usize; 3]> {
        let q = [
            self.managed_ledger_default_ensemble_size
                .unwrap_or(default[0]),
            self.managed_ledger_default_write_quorum
                .unwrap_or(default[1]),
            self.managed_ledger_default_ack_quorum.unwrap_or(default[2]),
        ];
        magnetar_bookie::ledger::check_quorum(q[0], q[1], q[2])
            .context("--managed-ledger-default-*: ensemble size, write quorum and ack quorum")?;
        Ok(q)
    }

    /// The managed ledgers' settings the flags give, new ledgers placed on `quorum`
    /// (ensemble, write, ack).
    pub fn ml_config(&self, quorum: [usize; 3]) -> MlConfig {
        let defaults = MlConfig::default();
        MlConfig {
            max_entries_per_ledger: self
                .managed_ledger_max_entries_per_ledger
                .unwrap_or(defaults.max_entries_per_ledger)
                .max(1),
            max_ledger_age: self
                .managed_ledger_max_ledger_rollover_time_minutes
                .map_or(defaults.max_ledger_age, |m| Duration::from_secs(m * 60)),
            max_ledger_bytes: self
                .managed_ledger_max_size_per_ledger_mbytes
                .map_or(defaults.max_ledger_bytes, |m| m << 20),
            cache_bytes: self
                .managed_ledger_cache_size_mb
                .map_or(defaults.cache_bytes, |m| m << 20),
            track_producers: self.broker_deduplication_enabled.unwrap_or(false),
            placement: Placement {
                affinity: self
                    .bookkeeper_client_isolation_groups
                    .as_deref()
                    .and_then(|p| {
                        magnetar_bookie::placement::Affinity::from_lists(
                            p,
                            self.bookkeeper_client_secondary_isolation_groups.as_deref(),
                        )
                    }),
                ensemble_size: quorum[0],
                write_quorum: quorum[1],
                ack_quorum: quorum[2],
            },
            ..defaults
        }
    }

    /// The broker's configuration, for the ports `listeners` hold; `default_quorum` places
    /// new ledgers unless the flags say otherwise.
    pub fn config(
        &self,
        listeners: &Listeners,
        default_cluster: &str,
        default_quorum: [usize; 3],
    ) -> Result<BrokerConfig> {
        let quorum = self.quorum(default_quorum)?;
        let (broker_port_tls, web_port_tls) = listeners.tls_ports()?;
        let dispatch = DispatchConfig::default();
        Ok(BrokerConfig {
            cluster: self
                .cluster
                .clone()
                .unwrap_or_else(|| default_cluster.into()),
            advertised_address: self
                .advertised_address
                .clone()
                .unwrap_or_else(|| self.bind_address().to_string()),
            broker_port: listeners
                .broker
                .local_addr()
                .context("broker address")?
                .port(),
            web_port: listeners.web.local_addr().context("web address")?.port(),
            broker_port_tls,
            web_port_tls,
            max_message_size: self.max_message_size(),
            listeners: parse_listeners(self.advertised_listeners.as_deref().unwrap_or(""))?,
            internal_listener: self.internal_listener()?,
            allow_auto_topic_creation: self.allow_auto_topic_creation.unwrap_or(true),
            // Pulsar's numbers: 0 = none, negative = forever
            default_retention: Retention::from_limits(
                self.default_retention_time_in_minutes.unwrap_or(0) as i64,
                self.default_retention_size_in_mb.unwrap_or(0) as i64,
            ),
            keepalive: Duration::from_secs(self.keep_alive_interval_seconds.unwrap_or(30).max(1)),
            ml: self.ml_config(quorum),
            auth: self.auth_providers()?,
            anonymous_role: self.anonymous_user_role.clone(),
            authz: self.authorizer()?,
            metrics_max_topics: self.metrics_max_topics.unwrap_or(1000),
            publish_limits: PublishLimits {
                requests: self
                    .max_pending_publish_requests_per_topic
                    .unwrap_or(PublishLimits::default().requests)
                    .max(1),
                bytes: self
                    .max_message_publish_buffer_size_per_topic_in_mb
                    .map_or(PublishLimits::default().bytes, |mb| mb.max(1) << 20),
            },
            max_outbound_bytes_per_connection: self
                .max_outbound_buffer_size_per_connection_in_mb
                .unwrap_or(16)
                .max(1)
                << 20,
            auth_refresh_check: Duration::from_secs(
                self.authentication_refresh_check_seconds
                    .unwrap_or(60)
                    .max(1),
            ),
            default_ttl: self
                .ttl_duration_default_in_seconds
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
            default_num_partitions: match self.allow_auto_topic_creation_type.as_deref() {
                None | Some("non-partitioned") => 0,
                Some("partitioned") => self.default_num_partitions.unwrap_or(1).clamp(1, 10_000),
                Some(other) => anyhow::bail!(
                    "--allow-auto-topic-creation-type must be non-partitioned or partitioned, not {other:?}"
                ),
            },
            // set by the caller, which knows where the filesystem driver may write
            offload: OffloadConfig::default(),
            dispatch: DispatchConfig {
                key_shared_lease: self
                    .key_shared_lease_ms
                    .map_or(dispatch.key_shared_lease, |ms| {
                        Duration::from_millis(ms.max(1))
                    }),
                key_shared_max_held: self
                    .key_shared_max_held_entries
                    .unwrap_or(dispatch.key_shared_max_held)
                    .max(1),
                delayed_horizon: self
                    .delayed_delivery_bucket_ms
                    .map_or(dispatch.delayed_horizon, |ms| {
                        Duration::from_millis(ms.max(1))
                    }),
                ..dispatch
            },
        })
    }

    /// Tiered storage as the flags say; `default_root` is the filesystem driver's directory
    /// when none is given, and makes that driver the default (the standalone's data dir).
    pub fn offload_config(&self, default_root: Option<PathBuf>) -> Result<OffloadConfig> {
        use magnetar_tiering::{Driver, Location, SegmentOptions, TierConfig};
        let standalone = default_root.is_some();
        let root = self.file_system_offload_root.clone().or(default_root);
        let location = match self.managed_ledger_offload_driver.as_deref() {
            None if standalone => root.clone().map(Location::filesystem),
            None | Some("none") | Some("") => None,
            Some(name) => {
                let driver = Driver::parse(name).context("--managed-ledger-offload-driver")?;
                let l = Location {
                    driver,
                    bucket: match driver {
                        Driver::Gcs => self.gcs_managed_ledger_offload_bucket.clone(),
                        _ => self.s3_managed_ledger_offload_bucket.clone(),
                    },
                    region: self.s3_managed_ledger_offload_region.clone(),
                    endpoint: self.s3_managed_ledger_offload_service_endpoint.clone(),
                    root: (driver == Driver::Filesystem)
                        .then(|| root.clone())
                        .flatten(),
                };
                l.check().context(
                    "--managed-ledger-offload-driver needs its bucket \
                     (--s3-managed-ledger-offload-bucket, --gcs-managed-ledger-offload-bucket) \
                     or directory (--file-system-offload-root)",
                )?;
                Some(l)
            }
        };
        let d = OffloadConfig::default();
        let segment = SegmentOptions::default();
        let tier = TierConfig::default();
        Ok(OffloadConfig {
            location,
            filesystem_root: root,
            threshold_bytes: self
                .managed_ledger_offload_threshold_in_bytes
                .unwrap_or(d.threshold_bytes),
            threshold_secs: self
                .managed_ledger_offload_threshold_in_seconds
                .unwrap_or(d.threshold_secs),
            deletion_lag: match self.managed_ledger_offload_deletion_lag_ms {
                Some(ms) => u64::try_from(ms).ok().map(Duration::from_millis),
                None => d.deletion_lag,
            },
            tier: TierConfig {
                segment: SegmentOptions {
                    part_bytes: self
                        .s3_managed_ledger_offload_max_block_size_in_bytes
                        .unwrap_or(segment.part_bytes)
                        .max(5 << 20),
                    block_bytes: self
                        .s3_managed_ledger_offload_read_buffer_size_in_bytes
                        .unwrap_or(segment.block_bytes)
                        .clamp(4 << 10, 64 << 20),
                },
                cache_bytes: self
                    .managed_ledger_offload_cache_size_mb
                    .map_or(tier.cache_bytes, |mb| mb << 20),
                readahead_bytes: self
                    .managed_ledger_offload_read_ahead_mb
                    .map_or(tier.readahead_bytes, |mb| mb << 20),
            },
        })
    }

    /// Who may do what, as the flags say. Authorization without authentication would judge
    /// every caller as nobody, so that combination is refused.
    fn authorizer(&self) -> Result<magnetar_broker::authz::Authorizer> {
        let enabled = self.authorization_enabled.unwrap_or(false);
        if enabled && !self.authentication_enabled.unwrap_or(false) {
            anyhow::bail!("--authorization-enabled needs --authentication-enabled");
        }
        Ok(magnetar_broker::authz::Authorizer {
            enabled,
            super_users: self
                .super_user_roles
                .iter()
                .flatten()
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
                .collect(),
        })
    }

    /// The token checker the flags describe (None: authentication off).
    /// The authentication providers the flags enable (None: authentication off).
    fn auth_providers(&self) -> Result<Option<magnetar_broker::auth::Providers>> {
        use magnetar_broker::auth::Providers;
        if !self.authentication_enabled.unwrap_or(false) {
            return Ok(None);
        }
        let names = self
            .authentication_providers
            .clone()
            .unwrap_or_else(|| vec!["token".into()]);
        let mut p = Providers::default();
        for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            match name {
                "token" => p.token = Some(self.token_auth()?),
                "basic" => {
                    let file = self
                        .basic_auth_conf
                        .as_deref()
                        .context("the basic provider needs --basic-auth-conf (an htpasswd file)")?;
                    let text = std::fs::read_to_string(file)
                        .with_context(|| format!("read {}", file.display()))?;
                    tracing::warn!(
                        "Basic authentication: passwords travel in clear on the plain ports; \
                         give clients pulsar+ssl:// and HTTPS"
                    );
                    p.basic = Some(
                        magnetar_broker::auth_basic::BasicAuth::parse(&text).map_err(|e| {
                            anyhow::anyhow!("--basic-auth-conf {}: {e}", file.display())
                        })?,
                    );
                }
                "tls" => {
                    if self.tls_trust_certs_file_path.is_none() || self.tls_cert_file.is_none() {
                        anyhow::bail!(
                            "the tls provider needs TLS on (--tls-cert-file, --tls-key-file) and \
                             --tls-trust-certs-file-path (who signs client certificates)"
                        );
                    }
                    p.tls = true;
                }
                other => {
                    anyhow::bail!("unknown authentication provider {other:?} (token, tls, basic)")
                }
            }
        }
        Ok(Some(p))
    }

    fn token_auth(&self) -> Result<magnetar_broker::auth::TokenAuth> {
        use magnetar_broker::auth::{TokenAuth, decode_secret};
        let claim = self.token_auth_claim.as_deref().unwrap_or("sub");
        match (&self.token_secret_key, &self.token_public_key) {
            (Some(p), None) => {
                let secret = match read_key(p)? {
                    Key::Decoded(k) => k,
                    Key::Stored(raw) => decode_secret(&raw),
                };
                Ok(TokenAuth::with_secret(&secret, claim))
            }
            (None, Some(p)) => {
                let pem = match read_key(p)? {
                    Key::Decoded(k) | Key::Stored(k) => k,
                };
                Ok(TokenAuth::with_public_key(&pem, claim)?)
            }
            _ => anyhow::bail!(
                "token authentication needs exactly one of --token-secret-key and --token-public-key"
            ),
        }
    }
}

/// A broker's bound ports.
pub struct Listeners {
    pub broker: TcpListener,
    pub web: TcpListener,
    /// `pulsar+ssl://` and HTTPS, when TLS is on.
    pub tls: Option<(TlsListener, TlsListener)>,
}

impl Listeners {
    fn tls_ports(&self) -> Result<(Option<u16>, Option<u16>)> {
        use axum::serve::Listener;
        Ok(match &self.tls {
            Some((b, w)) => (
                Some(b.local_addr()?.addr.port()),
                Some(w.local_addr()?.addr.port()),
            ),
            None => (None, None),
        })
    }
}

/// Serves a broker on its listeners until `shutdown`: HTTP (and HTTPS), housekeeping, and the
/// binary protocol; then closes its topics, flushing their cursors. `ready` is called once
/// the broker answers healthy, before the binary protocol is served (what it logs tells
/// operators and tests they may connect).
pub async fn serve(
    svc: Arc<BrokerService>,
    listeners: Listeners,
    housekeeping: Duration,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(&BrokerService),
) {
    let app = magnetar_broker::http::router(Arc::clone(&svc));
    if let Some((broker_tls, web_tls)) = listeners.tls {
        let app = app.clone();
        tokio::spawn(async move {
            // the handshake's client certificate reaches the authentication gate
            let app = app.into_make_service_with_connect_info::<magnetar_broker::tls::TlsPeer>();
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
    let web = listeners.web;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(web, app).await {
            warn!(error = %e, "http server stopped");
        }
    });
    tokio::spawn(Arc::clone(&svc).housekeeping(housekeeping));
    svc.ready.store(true, Ordering::Release);
    ready(&svc);
    magnetar_broker::protocol::serve(Arc::clone(&svc), listeners.broker, shutdown).await;
    tracing::info!("shutting down: closing topics and flushing cursors");
    svc.shutdown().await;
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn terminated() {
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

/// `name:pulsar://host:port,name:pulsar+ssl://host:port,...`: each name at most one URL of
/// each scheme.
pub fn parse_listeners(
    spec: &str,
) -> Result<std::collections::BTreeMap<String, magnetar_broker::cluster::ownership::ListenerUrls>> {
    let mut out: std::collections::BTreeMap<
        String,
        magnetar_broker::cluster::ownership::ListenerUrls,
    > = Default::default();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = |why: &str| anyhow::anyhow!("--advertised-listeners {item:?}: {why}");
        let (name, url) = item
            .split_once(':')
            .ok_or_else(|| bad("expected name:pulsar://host:port"))?;
        if !magnetar_broker::names::valid_segment(name) {
            return Err(bad("invalid listener name"));
        }
        let l = out.entry(name.to_string()).or_default();
        let (slot, rest) = if let Some(rest) = url.strip_prefix("pulsar://") {
            (&mut l.broker_service_url, rest)
        } else if let Some(rest) = url.strip_prefix("pulsar+ssl://") {
            (&mut l.broker_service_url_tls, rest)
        } else {
            return Err(bad("the URL must be pulsar:// or pulsar+ssl://"));
        };
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(bad("the URL must name host:port")),
        }
        if slot.replace(url.to_string()).is_some() {
            return Err(bad("a second URL of the same scheme for this listener"));
        }
    }
    Ok(out)
}

/// The bookie protocol's shared secret named by `--bookie-auth-secret` (None: none given);
/// an empty one is refused.
pub fn bookie_secret(spec: Option<&Path>) -> Result<Option<bytes::Bytes>> {
    let Some(spec) = spec else { return Ok(None) };
    let raw = match read_key(spec)? {
        Key::Decoded(k) => k,
        Key::Stored(raw) => magnetar_broker::auth::decode_secret(&raw),
    };
    if raw.is_empty() {
        anyhow::bail!("the bookie secret {} is empty", spec.display());
    }
    Ok(Some(bytes::Bytes::from(raw)))
}

/// The bookie protocol's secret of a cluster member (`who`: "a bookie", "a broker"): one is
/// required, since anyone reaching an open bookie port can read, write and delete ledgers,
/// unless `disabled` (`--bookie-auth-disabled true`) says the network is trusted.
pub fn cluster_bookie_secret(
    spec: Option<&Path>,
    disabled: bool,
    who: &str,
) -> Result<Option<bytes::Bytes>> {
    let secret = bookie_secret(spec)?;
    match (secret, disabled) {
        (Some(_), true) => {
            anyhow::bail!(
                "--bookie-auth-secret and --bookie-auth-disabled true contradict each other"
            )
        }
        (None, false) => anyhow::bail!(
            "{who} in a cluster needs the cluster's bookie secret: --bookie-auth-secret \
             FILE|data:...|env:VAR (`magnetar tokens create-secret-key --output FILE` makes one), \
             or --bookie-auth-disabled true to leave the bookie protocol open"
        ),
        (None, true) => {
            tracing::warn!(
                "--bookie-auth-disabled: anyone who reaches a bookie port can read, write and delete ledgers"
            );
            Ok(None)
        }
        (secret, false) => Ok(secret),
    }
}

/// A key's bytes: decoded from a `data:` URL, or as stored in a file or variable (a secret
/// may still be base64 text there).
pub enum Key {
    Decoded(Vec<u8>),
    Stored(Vec<u8>),
}

/// Reads a key named as Pulsar names them: `file:///path`, `data:;base64,...`, `env:VAR`,
/// or a plain path.
pub fn read_key(spec: &Path) -> Result<Key> {
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

#[cfg(test)]
mod listener_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn listeners_parse_and_name_the_internal_one() {
        let spec = "ext:pulsar://pub:6650,int:pulsar://10.0.0.1:6650,ext:pulsar+ssl://pub:6651";
        let l = parse_listeners(spec).unwrap();
        assert_eq!(
            l["ext"].broker_service_url.as_deref(),
            Some("pulsar://pub:6650")
        );
        assert_eq!(
            l["ext"].broker_service_url_tls.as_deref(),
            Some("pulsar+ssl://pub:6651")
        );
        let args = |spec: &str, internal: Option<&str>| BrokerArgs {
            advertised_listeners: Some(spec.into()),
            internal_listener_name: internal.map(String::from),
            ..Default::default()
        };
        // the first listed, as in Pulsar, unless named
        assert_eq!(args(spec, None).internal_listener().unwrap(), "ext");
        assert_eq!(args(spec, Some("int")).internal_listener().unwrap(), "int");
        assert!(args(spec, Some("nope")).internal_listener().is_err());
        assert_eq!(
            BrokerArgs::default().internal_listener().unwrap(),
            "internal"
        );
        for bad in [
            "noscheme",
            "a:http://h:1",
            "a:pulsar://h",
            "a:pulsar://h:1,a:pulsar://h:2",
            "bad name:pulsar://h:1",
        ] {
            assert!(parse_listeners(bad).is_err(), "{bad}");
        }
    }
}
