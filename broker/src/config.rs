//! The broker's settings, shared by every way of running one (`standalone`, and the coming
//! `broker` of a cluster): what clients are told, limits, defaults for namespaces that set
//! none, authentication and authorization, and the managed ledgers' configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use magnetar_managed_ledger::{MlConfig, Retention};

use crate::authz::Authorizer;
use crate::cluster::ownership::{BrokerUrls, ListenerUrls};
use crate::offload::OffloadConfig;
use crate::policies::PolicyDefaults;
use crate::topic::producers::PublishLimits;
use crate::topic::subscription::DispatchConfig;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub cluster: String,
    /// Host clients are told to connect to.
    pub advertised_address: String,
    pub broker_port: u16,
    pub web_port: u16,
    /// `pulsar+ssl://` and HTTPS ports, when TLS is on.
    pub broker_port_tls: Option<u16>,
    pub web_port_tls: Option<u16>,
    pub max_message_size: usize,
    pub allow_auto_topic_creation: bool,
    /// Retention for namespaces that set none.
    pub default_retention: Retention,
    pub keepalive: Duration,
    pub ml: MlConfig,
    pub dispatch: DispatchConfig,
    /// Message TTL for namespaces that set none.
    pub default_ttl: Option<Duration>,
    /// Partitions of auto-created topics (0: non-partitioned).
    pub default_num_partitions: u32,
    /// Authentication providers (None: authentication off).
    pub auth: Option<crate::auth::Providers>,
    /// The role of clients that present no credentials when authentication is on (None:
    /// they are refused).
    pub anonymous_role: Option<String>,
    /// Who may do what (off unless authorization is enabled).
    pub authz: Authorizer,
    /// How often connections are checked for expired credentials (Pulsar's
    /// authenticationRefreshCheckSeconds).
    pub auth_refresh_check: Duration,
    /// Up to this many loaded topics, /metrics has series per topic; beyond, per namespace.
    pub metrics_max_topics: usize,
    /// What a topic's producers may have in flight before their connections pause.
    pub publish_limits: PublishLimits,
    /// Bytes queued for one connection past which its consumers are sent nothing more until
    /// it drains.
    pub max_outbound_bytes_per_connection: usize,
    /// Advertised listeners by name (`--advertised-listeners`); the internal one, if
    /// listed, also gives this broker's own service URLs.
    pub listeners: BTreeMap<String, ListenerUrls>,
    /// The listener brokers and clients that name none use (`--internal-listener-name`).
    pub internal_listener: String,
    /// Tiered storage: where offloads go by default, thresholds, deletion lag, read cache.
    pub offload: OffloadConfig,
}

/// The internal listener's name when none is configured (Pulsar's).
pub const DEFAULT_INTERNAL_LISTENER: &str = "internal";

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            cluster: "standalone".into(),
            advertised_address: "127.0.0.1".into(),
            broker_port: 6650,
            web_port: 8080,
            broker_port_tls: None,
            web_port_tls: None,
            max_message_size: magnetar_protocol::DEFAULT_MAX_MESSAGE_SIZE,
            allow_auto_topic_creation: true,
            default_retention: Retention::from_limits(0, 0),
            keepalive: Duration::from_secs(30),
            ml: MlConfig::default(),
            dispatch: DispatchConfig::default(),
            default_ttl: None,
            default_num_partitions: 0,
            auth: None,
            anonymous_role: None,
            authz: Authorizer::default(),
            auth_refresh_check: Duration::from_secs(60),
            metrics_max_topics: 1000,
            publish_limits: PublishLimits::default(),
            max_outbound_bytes_per_connection: 16 << 20,
            listeners: BTreeMap::new(),
            internal_listener: DEFAULT_INTERNAL_LISTENER.into(),
            offload: OffloadConfig::default(),
        }
    }
}

impl BrokerConfig {
    /// The same clock for every decision the broker makes by time: the logs' rollover and
    /// retention, dispatch (delivery times, Key_Shared leases), TTL and backlog ages.
    pub fn with_clock(mut self, clock: magnetar_managed_ledger::clock::SharedClock) -> Self {
        self.ml.clock = std::sync::Arc::clone(&clock);
        self.dispatch.clock = clock;
        self
    }

    /// The role behind what a client presented (`cert_role`: its verified certificate's
    /// common name, on a TLS port), when authentication is on; no credentials give the
    /// anonymous role, if there is one.
    pub fn authenticate(
        &self,
        credentials: crate::auth::Credentials<'_>,
        cert_role: Option<&str>,
    ) -> Result<Option<crate::auth::Identity>, crate::auth::AuthError> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        if let Some(id) = auth.identify(credentials, cert_role)? {
            return Ok(Some(id));
        }
        self.anonymous_role
            .clone()
            .map(|role| {
                Some(crate::auth::Identity {
                    role,
                    expires: None,
                })
            })
            .ok_or(crate::auth::AuthError::Missing)
    }

    /// This broker's addresses, as lookups give them; its listeners always include the
    /// internal one.
    pub fn urls(&self) -> BrokerUrls {
        let mut listeners = self.listeners.clone();
        listeners
            .entry(self.internal_listener.clone())
            .or_insert_with(|| ListenerUrls {
                broker_service_url: Some(self.service_url()),
                broker_service_url_tls: self.service_url_tls(),
            });
        BrokerUrls {
            service_url: self.service_url(),
            service_url_tls: self.service_url_tls(),
            web_url: self.web_url(),
            web_url_tls: self.web_url_tls(),
            listeners,
        }
    }

    fn internal(&self) -> Option<&ListenerUrls> {
        self.listeners.get(&self.internal_listener)
    }

    pub fn service_url(&self) -> String {
        if let Some(url) = self.internal().and_then(|l| l.broker_service_url.clone()) {
            return url;
        }
        format!("pulsar://{}:{}", self.advertised_address, self.broker_port)
    }

    pub fn web_url(&self) -> String {
        format!("http://{}:{}", self.advertised_address, self.web_port)
    }

    pub fn service_url_tls(&self) -> Option<String> {
        if let Some(url) = self
            .internal()
            .and_then(|l| l.broker_service_url_tls.clone())
        {
            return Some(url);
        }
        self.broker_port_tls
            .map(|p| format!("pulsar+ssl://{}:{p}", self.advertised_address))
    }

    pub fn web_url_tls(&self) -> Option<String> {
        self.web_port_tls
            .map(|p| format!("https://{}:{p}", self.advertised_address))
    }

    pub fn policy_defaults(&self) -> PolicyDefaults {
        PolicyDefaults {
            retention: self.default_retention,
            ttl: self.default_ttl,
            deduplication: self.ml.track_producers,
            auto_topic_creation: self.allow_auto_topic_creation,
            auto_topic_partitions: self.default_num_partitions,
            cluster: self.cluster.clone(),
            affinity: self.ml.placement.affinity.clone(),
            offload: self.offload.clone(),
        }
    }
}

/// A `--config` file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("config {path}: {reason}")]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

/// Reads a `--config` TOML file (None: no file given); an unknown key is an error where the
/// settings type denies unknown fields.
pub fn read_config<T: serde::de::DeserializeOwned>(
    path: Option<&std::path::Path>,
) -> Result<Option<T>, ConfigError> {
    let Some(path) = path else { return Ok(None) };
    let fail = |reason: String| ConfigError {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| fail(e.to_string()))
}
