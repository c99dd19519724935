//! The etcd v3 backend, for clusters. Versions are etcd `mod_revision`s, sessions are leases
//! kept alive in the background, watches resume from the last revision seen after a broken
//! stream, and every call is bounded by a timeout so a dead etcd gives a retriable error, not
//! a hang.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::key::{child_of, descendant_prefix, in_subtree, validate_key, validate_path};
use crate::ops::{check_expected, validate_ops, validate_ttl};
use crate::store::SessionGuard;
use crate::{
    EventKind, Expected, MetaError, MetadataStore, Op, Result, Session, SessionId, SessionState,
    Version, Versioned, Watch, WatchEvent,
};

/// Settings for reaching etcd.
#[derive(Clone)]
pub struct EtcdConfig {
    /// `host:port` or `http://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// Upper bound on any single call, connection included.
    pub op_timeout: Duration,
    pub connect_timeout: Duration,
    /// User name and password, for an etcd with authentication on.
    pub user: Option<(String, String)>,
    /// TLS to the members (their endpoints are then `https://`).
    pub tls: Option<EtcdTls>,
}

/// PEM files for TLS to etcd.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The authority that signed the members' certificates.
    pub ca: PathBuf,
    /// This client's certificate and key, for members that ask for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            op_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            user: None,
            tls: None,
        }
    }

    fn options(&self) -> Result<ConnectOptions> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.op_timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        if let Some((name, password)) = &self.user {
            // etcd's tokens expire (5 min by default); the client takes a new one when told
            options = options
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &self.tls {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| {
                    MetaError::InvalidArgument(format!("etcd TLS file {}: {e}", p.display()))
                })
            };
            let mut config =
                TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
            if let Some((cert, key)) = &tls.client {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(config);
        }
        Ok(options)
    }
}

type SessionMap = Arc<Mutex<HashMap<SessionId, watch::Sender<SessionState>>>>;

pub struct EtcdStore {
    client: Client,
    config: EtcdConfig,
    sessions: SessionMap,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.config.endpoints)
            .finish()
    }
}

fn map_err(what: &str, e: etcd_client::Error) -> MetaError {
    use etcd_client::Error as E;
    use tonic_code::*;
    match &e {
        E::GRpcStatus(s) => match s.code() as i32 {
            UNAVAILABLE | UNKNOWN | ABORTED | RESOURCE_EXHAUSTED => {
                MetaError::Unavailable(format!("{what}: {}", s.message()))
            }
            DEADLINE_EXCEEDED | CANCELLED => MetaError::Timeout(format!("{what}: {}", s.message())),
            INVALID_ARGUMENT | FAILED_PRECONDITION | OUT_OF_RANGE => {
                MetaError::InvalidArgument(format!("{what}: {}", s.message()))
            }
            _ => MetaError::Backend(format!("{what}: {e}")),
        },
        E::TransportError(_) | E::IoError(_) => MetaError::Unavailable(format!("{what}: {e}")),
        _ => MetaError::Backend(format!("{what}: {e}")),
    }
}

/// gRPC status codes by number (etcd-client does not re-export tonic's `Code`).
mod tonic_code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const ABORTED: i32 = 10;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const UNAVAILABLE: i32 = 14;
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    e.to_string().contains("lease not found")
}

async fn bounded<T>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(map_err(what, e)),
        Err(_) => Err(MetaError::Timeout(format!(
            "{what}: no answer in {timeout:?}"
        ))),
    }
}

/// Whether the request never reached a server (so even a write may be sent again).
fn never_sent(e: &etcd_client::Error) -> bool {
    let s = e.to_string();
    s.contains("tcp connect error") || s.contains("Connection refused")
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Result<Version> {
    header
        .map(|h| h.revision() as Version)
        .ok_or_else(|| MetaError::Backend("etcd response without a header".into()))
}

impl EtcdStore {
    /// Connects to the given members. Fails with `Unavailable` when none answers.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore> {
        if config.endpoints.is_empty() {
            return Err(MetaError::InvalidArgument("no etcd endpoints given".into()));
        }
        let options = config.options()?;
        let client = bounded(
            config.connect_timeout + config.op_timeout,
            "connect to etcd",
            Client::connect(&config.endpoints, Some(options)),
        )
        .await?;
        let store = EtcdStore {
            client,
            config,
            sessions: Arc::default(),
        };
        // Touch the cluster once so a wrong address fails here, not at first use.
        match store.current_revision().await {
            Err(MetaError::InvalidArgument(m)) if m.contains("user name is empty") => {
                return Err(MetaError::InvalidArgument(format!(
                    "{m}: etcd has authentication on; give credentials as \
                     etcd://user:password@host:port"
                )));
            }
            r => r?,
        };
        info!(endpoints = ?store.config.endpoints, "connected to etcd");
        Ok(store)
    }

    /// Runs one etcd call within the operation timeout, sending it again when another member
    /// may answer: reads on any retriable error, writes only when the request never left
    /// (re-sending an applied conditional write would report a false version mismatch).
    /// etcd-client's balancer keeps picking a dead member now and then, so without this a
    /// healthy cluster that lost one member would fail calls at random.
    async fn call<T, F, Fut>(&self, what: &str, idempotent: bool, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.config.op_timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match tokio::time::timeout(left, f()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => {
                    return Err(MetaError::Timeout(format!(
                        "{what}: no answer in {:?}",
                        self.config.op_timeout
                    )));
                }
            };
            let unsent = never_sent(&err);
            let mapped = map_err(what, err);
            let retry = unsent || (idempotent && mapped.is_retriable());
            if !retry || Instant::now() + pause >= deadline {
                return Err(mapped);
            }
            debug!(what, error = %mapped, "etcd call failed; trying again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    async fn current_revision(&self) -> Result<Version> {
        let resp = self
            .call("read revision", true, || {
                let mut kv = self.client.kv_client();
                async move { kv.get("/", Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        revision_of(resp.header())
    }

    fn txn_request(ops: &[Op]) -> Txn {
        let mut compares = Vec::new();
        let mut then = Vec::with_capacity(ops.len());
        let mut diagnose = Vec::with_capacity(ops.len());
        for op in ops {
            let key = op.key();
            match (op, op.expected()) {
                (Op::Put { .. }, Expected::Any) => {}
                (Op::Delete { .. }, Expected::Any) => {
                    compares.push(Compare::create_revision(key, CompareOp::Greater, 0))
                }
                (_, Expected::Absent) => {
                    compares.push(Compare::create_revision(key, CompareOp::Equal, 0))
                }
                (_, Expected::Version(v)) => {
                    compares.push(Compare::mod_revision(key, CompareOp::Equal, v as i64))
                }
            }
            then.push(match op {
                Op::Put { value, session, .. } => {
                    let opts = session.map(|id| PutOptions::new().with_lease(id));
                    TxnOp::put(key, value.to_vec(), opts)
                }
                Op::Delete { .. } => TxnOp::delete(key, None),
            });
            diagnose.push(TxnOp::get(key, Some(GetOptions::new().with_keys_only())));
        }
        Txn::new().when(compares).and_then(then).or_else(diagnose)
    }
}

#[async_trait]
impl MetadataStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned<Bytes>>> {
        validate_key(key)?;
        let resp = self
            .call("get", true, || {
                let mut kv = self.client.kv_client();
                let key = key.to_string();
                async move { kv.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(|kv| Versioned {
            value: Bytes::copy_from_slice(kv.value()),
            version: kv.mod_revision() as Version,
            owner: (kv.lease() != 0).then_some(kv.lease()),
        }))
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<Vec<Version>> {
        validate_ops(&ops)?;
        let request = Self::txn_request(&ops);
        let resp = match self
            .call("txn", false, || {
                let mut kv = self.client.kv_client();
                let request = request.clone();
                async move { kv.txn(request).await }
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                // A put bound to a lease etcd no longer has fails as a whole; say which.
                if let Some(id) = ops.iter().find_map(|op| match op {
                    Op::Put {
                        session: Some(id), ..
                    } => Some(*id),
                    _ => None,
                }) && e.to_string().contains("lease not found")
                {
                    return Err(MetaError::SessionLost(id));
                }
                return Err(e);
            }
        };
        if resp.succeeded() {
            let rev = revision_of(resp.header())?;
            return Ok(vec![rev; ops.len()]);
        }
        for (op, r) in ops.iter().zip(resp.op_responses()) {
            let found = match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision() as Version),
                _ => None,
            };
            check_expected(op, found)?;
        }
        Err(MetaError::Backend(
            "etcd refused the transaction but every condition holds".into(),
        ))
    }

    async fn children(&self, path: &str) -> Result<Vec<String>> {
        validate_path(path)?;
        let base = descendant_prefix(path);
        let resp = self
            .call("list children", true, || {
                let mut kv = self.client.kv_client();
                let base = base.clone();
                async move {
                    kv.get(base, Some(GetOptions::new().with_prefix().with_keys_only()))
                        .await
                }
            })
            .await?;
        let mut out = BTreeSet::new();
        for kv in resp.kvs() {
            let key = kv
                .key_str()
                .map_err(|e| MetaError::Backend(format!("non UTF-8 key under {path}: {e}")))?;
            if let Some((child, _)) = child_of(&base, key)
                && !out.contains(child)
            {
                out.insert(child.to_string());
            }
        }
        Ok(out.into_iter().collect())
    }

    async fn watch(&self, path: &str) -> Result<Watch> {
        validate_path(path)?;
        // The created response is sent once the server has registered the watch: every
        // revision after its header's is ours to deliver.
        let (stream, created) = self
            .call("watch", true, || {
                let mut wc = self.client.watch_client();
                let path = path.to_string();
                async move {
                    let opts = WatchOptions::new().with_prefix().with_progress_notify();
                    let mut stream = wc.watch(path, Some(opts)).await?;
                    match stream.message().await? {
                        Some(created) => Ok((stream, created)),
                        None => Err(etcd_client::Error::WatchError(
                            "watch stream closed at once".into(),
                        )),
                    }
                }
            })
            .await?;
        let start = revision_of(created.header())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let pump = WatchPump {
            client: self.client.clone(),
            path: path.to_string(),
            tx,
            last: start,
            op_timeout: self.config.op_timeout,
        };
        let task = tokio::spawn(pump.run(stream));
        Ok(Watch::new(start, rx, Some(Box::new(AbortOnDrop(task)))))
    }

    async fn create_session(&self, ttl: Duration) -> Result<Session> {
        validate_ttl(ttl)?;
        let secs = ttl.as_secs_f64().ceil() as i64;
        let grant = self
            .call("grant lease", false, || {
                let mut lc = self.client.lease_client();
                async move { lc.grant(secs, None).await }
            })
            .await?;
        let id = grant.id();
        let granted = Duration::from_secs(grant.ttl().max(1) as u64);
        let (state_tx, state_rx) = watch::channel(SessionState::Alive);
        self.sessions.lock().insert(id, state_tx.clone());
        let (close_tx, close_rx) = oneshot::channel();
        let keeper = Keeper {
            client: self.client.clone(),
            id,
            ttl: granted,
            state: state_tx,
            sessions: Arc::clone(&self.sessions),
            op_timeout: self.config.op_timeout,
        };
        tokio::spawn(keeper.run(close_rx));
        debug!(session = format_args!("{id:#x}"), ttl = ?granted, "session started");
        let guard = SessionGuard::new(move || {
            let _ = close_tx.send(());
        });
        Ok(Session::new(id, granted, state_rx, guard))
    }

    async fn revoke_session(&self, id: SessionId) -> Result<()> {
        let res = self
            .call("revoke lease", true, || {
                let mut lc = self.client.lease_client();
                async move { lc.revoke(id).await }
            })
            .await;
        if let Some(state) = self.sessions.lock().remove(&id) {
            state.send_replace(SessionState::Lost);
        }
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("lease not found") => Err(MetaError::SessionLost(id)),
            Err(e) => Err(e),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Moves events from etcd to one watcher, reopening the etcd watch from the next revision
/// whenever the stream breaks (etcd restarted, connection reset).
struct WatchPump {
    client: Client,
    path: String,
    tx: mpsc::UnboundedSender<Result<WatchEvent>>,
    /// Every revision up to this one has been delivered.
    last: Version,
    op_timeout: Duration,
}

impl WatchPump {
    async fn run(mut self, mut stream: etcd_client::WatchStream) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.pump(&mut stream).await {
                Ok(()) => return,
                Err(e) if !e.is_retriable() => {
                    let _ = self.tx.send(Err(e));
                    return;
                }
                Err(e) => debug!(path = %self.path, error = %e, "watch broken; resuming"),
            }
            loop {
                if self.tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                let mut wc = self.client.watch_client();
                let opts = WatchOptions::new()
                    .with_prefix()
                    .with_progress_notify()
                    .with_start_revision(self.last as i64 + 1);
                match bounded(
                    self.op_timeout,
                    "resume watch",
                    wc.watch(self.path.as_str(), Some(opts)),
                )
                .await
                {
                    Ok(s) => {
                        stream = s;
                        backoff = Duration::from_millis(50);
                        break;
                    }
                    Err(e) => debug!(path = %self.path, error = %e, "watch resume failed"),
                }
            }
        }
    }

    /// Delivers events until the stream breaks (Err, retriable), history is gone
    /// (Err, final) or the watcher went away (Ok).
    async fn pump(&mut self, stream: &mut etcd_client::WatchStream) -> Result<()> {
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = self.tx.closed() => return Ok(()),
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return Err(MetaError::Unavailable("watch stream ended".into())),
                Err(e) => return Err(map_err("watch", e)),
            };
            if resp.compact_revision() > 0 {
                return Err(MetaError::Backend(format!(
                    "watch of {} cannot resume: history before revision {} was compacted",
                    self.path,
                    resp.compact_revision()
                )));
            }
            if resp.canceled() {
                return Err(MetaError::Unavailable(format!(
                    "watch canceled by etcd: {}",
                    resp.cancel_reason()
                )));
            }
            if resp.events().is_empty() && !resp.created() {
                // A progress notification: every change up to its revision has been sent.
                if let Some(h) = resp.header() {
                    self.last = self.last.max(h.revision() as Version);
                }
                continue;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                let version = kv.mod_revision() as Version;
                if version <= self.last && version != 0 {
                    // Already delivered before the stream broke.
                    continue;
                }
                if !in_subtree(&self.path, key) {
                    continue;
                }
                let event = match ev.event_type() {
                    EventType::Put => WatchEvent {
                        kind: if kv.version() == 1 {
                            EventKind::Created
                        } else {
                            EventKind::Modified
                        },
                        key: key.to_string(),
                        value: Some(Bytes::copy_from_slice(kv.value())),
                        version,
                    },
                    EventType::Delete => WatchEvent {
                        kind: EventKind::Deleted,
                        key: key.to_string(),
                        value: None,
                        version,
                    },
                };
                if self.tx.send(Ok(event)).is_err() {
                    return Ok(());
                }
            }
            if let Some(last) = resp.events().last().and_then(|e| e.kv()) {
                self.last = self.last.max(last.mod_revision() as Version);
            }
        }
    }
}

/// Keeps one lease alive and reports its state to the owner.
struct Keeper {
    client: Client,
    id: SessionId,
    ttl: Duration,
    state: watch::Sender<SessionState>,
    sessions: SessionMap,
    op_timeout: Duration,
}

impl Keeper {
    async fn run(self, mut close: oneshot::Receiver<()>) {
        let interval = (self.ttl / 3).max(Duration::from_millis(300));
        let mut last_ok = Instant::now();
        let mut keeper = None;
        loop {
            tokio::select! {
                _ = &mut close => {
                    self.end("closed by owner").await;
                    return;
                }
                _ = tokio::time::sleep(interval) => {}
            }
            if *self.state.borrow() == SessionState::Lost {
                // Revoked through the store handle.
                return;
            }
            match tokio::time::timeout(interval, self.refresh(&mut keeper)).await {
                Ok(Ok(ttl)) if ttl > 0 => {
                    last_ok = Instant::now();
                    self.state.send_if_modified(|s| {
                        let changed = *s == SessionState::Suspended;
                        if changed {
                            *s = SessionState::Alive;
                        }
                        changed
                    });
                }
                Ok(Ok(_)) => {
                    self.lost("lease expired or revoked");
                    return;
                }
                Ok(Err(e)) if is_lease_not_found(&e) => {
                    self.lost("lease expired or revoked");
                    return;
                }
                res => {
                    keeper = None;
                    let why = match res {
                        Ok(Err(e)) => e.to_string(),
                        _ => "keep-alive timed out".to_string(),
                    };
                    if last_ok.elapsed() >= self.ttl {
                        // etcd may still hold the lease (it extends leases after a restart),
                        // but the owner can no longer rely on it: end it for good.
                        self.lost(&why);
                        self.end("unreachable past its ttl").await;
                        return;
                    }
                    if self.state.send_replace(SessionState::Suspended) == SessionState::Alive {
                        warn!(session = format_args!("{:#x}", self.id), error = %why, "session suspended");
                    }
                }
            }
        }
    }

    async fn refresh(
        &self,
        keeper: &mut Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    ) -> std::result::Result<i64, etcd_client::Error> {
        if keeper.is_none() {
            // keep_alive sends a first request and waits for its answer.
            let mut lc = self.client.lease_client();
            *keeper = Some(lc.keep_alive(self.id).await?);
            return Ok(self.ttl.as_secs() as i64);
        }
        let Some((k, stream)) = keeper.as_mut() else {
            return Err(etcd_client::Error::LeaseKeepAliveError("no keeper".into()));
        };
        k.keep_alive().await?;
        match stream.message().await? {
            Some(resp) => Ok(resp.ttl()),
            None => Err(etcd_client::Error::LeaseKeepAliveError(
                "keep-alive stream ended".into(),
            )),
        }
    }

    fn lost(&self, why: &str) {
        self.sessions.lock().remove(&self.id);
        if self.state.send_replace(SessionState::Lost) != SessionState::Lost {
            warn!(
                session = format_args!("{:#x}", self.id),
                reason = why,
                "session lost"
            );
        }
    }

    /// Revokes the lease so its records go now rather than at expiry; retried for a while
    /// when etcd is unreachable.
    async fn end(&self, why: &str) {
        self.lost(why);
        let deadline = Instant::now() + self.ttl * 2;
        let mut lc = self.client.lease_client();
        while Instant::now() < deadline {
            match bounded(self.op_timeout, "revoke lease", lc.revoke(self.id)).await {
                Ok(_) => return,
                Err(e) if e.to_string().contains("lease not found") => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}
