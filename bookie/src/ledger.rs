//! The ledger client: what a broker uses to store a topic's log on bookies.
//!
//! A ledger is written by one writer to an ensemble of E bookies; entry `n` goes to the write
//! set of Qw bookies starting at `n mod E` and is acknowledged once Qa of them have it durable
//! *and* every earlier entry is acknowledged (ordered completion). The ledger's record lives
//! in meta at `/ledgers/{id}` and changes only by compare-and-set. Taking a ledger over means
//! open-for-recovery: fence it on enough bookies that the old writer can no longer reach Qa,
//! find the last entry that may have been acknowledged, re-replicate it, and close the ledger
//! at that entry; two concurrent recoveries agree because only one close can win the CAS.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use magnetar_meta::{Expected, IdGenerator, MetaError, MetaStore, MetadataStoreExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::client::{BookieClient, ClientError};
use crate::placement::{self, Affinity, Candidate, RACKS_INFO_PATH, RacksInfo};
use crate::protocol::{self, Status};
use crate::recovery;

pub const BOOKIES_PATH: &str = "/bookies/available";
const LEDGER_ID_KEY: &str = "/counters/ledger-id";

fn ledger_key(id: u64) -> String {
    format!("/ledgers/{id}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerState {
    Open,
    InRecovery,
    Closed,
}

/// Bookies that hold entries from `first_entry` on (until the next fragment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fragment {
    pub first_entry: u64,
    pub bookies: Vec<String>,
}

/// The ledger's record in meta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerMeta {
    pub ensemble_size: usize,
    pub write_quorum: usize,
    pub ack_quorum: usize,
    pub state: LedgerState,
    /// The last entry of a closed ledger (-1: empty).
    pub last_entry: i64,
    pub fragments: Vec<Fragment>,
    /// Hex key the writer presents to bookies.
    pub writer_key: String,
    /// The bookie groups its ensembles come from, kept so that ensemble changes and
    /// re-replication honour them too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

impl LedgerMeta {
    /// Checks what the arithmetic below relies on, so a damaged record is an error and never a
    /// division by zero or an underflow.
    pub fn validate(&self, id: u64) -> Result<(), LedgerError> {
        let bad = |reason: String| {
            LedgerError::Meta(MetaError::Corrupt {
                key: ledger_key(id),
                reason,
            })
        };
        let (e, qw, qa) = (self.ensemble_size, self.write_quorum, self.ack_quorum);
        if !(e >= qw && qw >= qa && qa >= 1) {
            return Err(bad(format!("impossible quorums {e}/{qw}/{qa}")));
        }
        if self.fragments.is_empty() {
            return Err(bad("no fragments".into()));
        }
        for f in &self.fragments {
            if f.bookies.len() != e {
                return Err(bad(format!(
                    "fragment at entry {} has {} bookies, not {e}",
                    f.first_entry,
                    f.bookies.len()
                )));
            }
        }
        if self
            .fragments
            .windows(2)
            .any(|w| w[0].first_entry >= w[1].first_entry)
        {
            return Err(bad("fragments out of order".into()));
        }
        Ok(())
    }

    fn fragment_for(&self, entry: u64) -> Option<&Fragment> {
        self.fragments.iter().rev().find(|f| f.first_entry <= entry)
    }

    /// The bookies that store `entry`.
    pub fn write_set(&self, entry: u64) -> Vec<String> {
        self.write_set_iter(entry).cloned().collect()
    }

    fn write_set_iter(&self, entry: u64) -> impl Iterator<Item = &String> {
        let bookies: &[String] = self.fragment_for(entry).map_or(&[], |f| &f.bookies);
        let e = bookies.len() as u64;
        let n = if e == 0 { 0 } else { self.write_quorum as u64 };
        (0..n).map(move |i| &bookies[((entry + i) % e) as usize])
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("need {need} bookies, {have} available{}", affinity.as_ref().map(|a| format!(" in {a}")).unwrap_or_default())]
    NotEnoughBookies {
        need: usize,
        have: usize,
        /// The affinity that limited the choice, if any.
        affinity: Option<Affinity>,
    },
    #[error("invalid quorum: ensemble {e}, write {qw}, ack {qa} (need e >= qw >= qa >= 1)")]
    InvalidQuorum { e: usize, qw: usize, qa: usize },
    #[error("ledger {0} does not exist")]
    NoSuchLedger(u64),
    #[error("ledger {0} was fenced: another writer took it over")]
    Fenced(u64),
    #[error("ledger {0} is closed")]
    Closed(u64),
    #[error("entry {entry} of ledger {ledger} is not readable: {reason}")]
    Unreadable {
        ledger: u64,
        entry: u64,
        reason: String,
    },
    #[error("entry {entry} of ledger {ledger} reached {acks} of {need} bookies: {errors}")]
    QuorumFailed {
        ledger: u64,
        entry: u64,
        acks: usize,
        need: usize,
        errors: String,
    },
    #[error("recovery of ledger {ledger} cannot decide entry {entry}: {reason}")]
    RecoveryStuck {
        ledger: u64,
        entry: u64,
        reason: String,
    },
    #[error("bookie address {0:?} is not host:port")]
    BadAddress(String),
    /// A bookie's queue is full: try again shortly (no entry id was spent).
    #[error("ledger {ledger}: bookie {bookie} has too many adds queued")]
    Overloaded { ledger: u64, bookie: String },
}

/// Connections to bookies, made on first use and replaced when lost.
#[derive(Debug)]
struct Pool {
    conns: Mutex<HashMap<String, BookieClient>>,
    timeout: Duration,
    /// The cluster's shared secret, presented on every new connection.
    secret: Option<Bytes>,
}

impl Pool {
    /// The live connection to `addr`, connecting if there is none. The map's lock is never
    /// held while connecting: a dead bookie's connect timeout must not stall traffic to the
    /// healthy ones. Two callers racing to connect both succeed; the later one's connection
    /// replaces the earlier in the map and the earlier closes when its last user drops it.
    /// The live connection to `addr`, if there is one now.
    fn live(&self, addr: &str) -> Option<BookieClient> {
        self.conns
            .lock()
            .get(addr)
            .filter(|c| c.is_connected())
            .cloned()
    }

    async fn get(&self, addr: &str) -> Result<BookieClient, ClientError> {
        if let Some(c) = self.live(addr) {
            return Ok(c);
        }
        let sock: SocketAddr = addr.parse().map_err(|_| ClientError::Connect {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            reason: format!("bad bookie address {addr:?}"),
        })?;
        let c = BookieClient::connect_with(sock, self.timeout, self.secret.as_ref()).await?;
        self.conns.lock().insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

#[derive(Debug, Clone, Deserialize)]
struct BookieRecord {
    #[serde(default)]
    rack: Option<String>,
}

/// Creates, opens, recovers and deletes ledgers.
#[derive(Debug, Clone)]
pub struct LedgerClient {
    meta: MetaStore,
    ids: IdGenerator,
    pool: Arc<Pool>,
}

impl LedgerClient {
    pub fn new(meta: MetaStore, timeout: Duration) -> LedgerClient {
        LedgerClient {
            ids: IdGenerator::new(meta.clone(), LEDGER_ID_KEY),
            meta,
            pool: Arc::new(Pool {
                conns: Mutex::default(),
                timeout,
                secret: None,
            }),
        }
    }

    /// Presents the cluster's shared secret to every bookie it connects to. Call it first:
    /// it starts a new connection pool.
    pub fn with_auth(mut self, secret: Option<Bytes>) -> LedgerClient {
        self.pool = Arc::new(Pool {
            conns: Mutex::default(),
            timeout: self.pool.timeout,
            secret,
        });
        self
    }

    /// Reaches the bookie registered as `addr` (`host:port`) by calling `bookie` in this
    /// process instead of connecting to it (the standalone's own bookie).
    #[cfg(feature = "server")]
    pub fn with_local_bookie(self, addr: &str, bookie: Arc<crate::server::Bookie>) -> LedgerClient {
        if let Ok(sock) = addr.parse::<SocketAddr>() {
            let c = BookieClient::local(sock, bookie, self.pool.timeout);
            self.pool.conns.lock().insert(addr.to_string(), c);
        }
        self
    }

    pub fn meta_store(&self) -> &MetaStore {
        &self.meta
    }

    /// Reads one entry from one bookie.
    pub async fn read_from(&self, bookie: &str, id: u64, entry: u64) -> Result<Bytes, LedgerError> {
        let c = self
            .pool
            .get(bookie)
            .await
            .map_err(|e| LedgerError::Unreadable {
                ledger: id,
                entry,
                reason: e.to_string(),
            })?;
        c.read(id, entry)
            .await
            .map_err(|e| LedgerError::Unreadable {
                ledger: id,
                entry,
                reason: e.to_string(),
            })
    }

    /// Writes one entry to one bookie as a recovery write (allowed on fenced ledgers).
    pub async fn write_to(
        &self,
        bookie: &str,
        id: u64,
        entry: u64,
        key: &Bytes,
        data: Bytes,
    ) -> Result<(), LedgerError> {
        let err = |e: ClientError| LedgerError::QuorumFailed {
            ledger: id,
            entry,
            acks: 0,
            need: 1,
            errors: format!("{bookie}: {e}"),
        };
        let c = self.pool.get(bookie).await.map_err(err)?;
        c.add(id, entry, key.clone(), entry as i64 - 1, data, true)
            .await
            .map_err(err)
    }

    /// Registered bookies with their racks and groups (from the racks map, when it has them).
    pub async fn available_bookies(&self) -> Result<Vec<Candidate>, LedgerError> {
        let racks = self.racks_info().await?;
        let mut out = Vec::new();
        for name in self.meta.children(BOOKIES_PATH).await? {
            let key = format!("{BOOKIES_PATH}/{name}");
            let rack = match self.meta.get_json::<BookieRecord>(&key).await {
                Ok(Some(r)) => r.value.rack,
                Ok(None) => continue,
                Err(e) => {
                    warn!(bookie = %name, error = %e, "unreadable bookie record");
                    None
                }
            };
            out.push(Candidate::new(name, rack, &racks));
        }
        Ok(out)
    }

    /// The operator's map of bookies to groups and racks; an unreadable one is reported and
    /// treated as empty, so a bad edit cannot stop every topic from rolling its ledger.
    pub async fn racks_info(&self) -> Result<RacksInfo, LedgerError> {
        match self.meta.get_json::<RacksInfo>(RACKS_INFO_PATH).await {
            Ok(v) => Ok(v.map(|v| v.value).unwrap_or_default()),
            Err(MetaError::Corrupt { reason, .. }) => {
                warn!(key = RACKS_INFO_PATH, %reason, "unreadable racks map; placing without it");
                Ok(RacksInfo::new())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Picks `n` bookies among `candidates` as `affinity` allows, or says how many it had.
    fn place(
        candidates: Vec<Candidate>,
        n: usize,
        affinity: Option<&Affinity>,
    ) -> Result<Vec<String>, LedgerError> {
        let chosen = placement::place(candidates, n, affinity);
        if chosen.len() < n {
            return Err(LedgerError::NotEnoughBookies {
                need: n,
                have: chosen.len(),
                affinity: affinity.cloned(),
            });
        }
        Ok(chosen)
    }

    /// A ledger on bookies of any group (see [`LedgerClient::create_with`]).
    pub async fn create(
        &self,
        e: usize,
        qw: usize,
        qa: usize,
    ) -> Result<LedgerWriter, LedgerError> {
        self.create_with(e, qw, qa, None).await
    }

    /// A new ledger whose ensemble comes from the bookies `affinity` allows (none: the shared
    /// pool first).
    pub async fn create_with(
        &self,
        e: usize,
        qw: usize,
        qa: usize,
        affinity: Option<Affinity>,
    ) -> Result<LedgerWriter, LedgerError> {
        check_quorum(e, qw, qa)?;
        let available = self.available_bookies().await?;
        let bookies = Self::place(available, e, affinity.as_ref())?;
        let id = self.ids.next_id().await?;
        let key_bytes: [u8; 16] = rand::random();
        let writer_key: String = key_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let meta = LedgerMeta {
            ensemble_size: e,
            write_quorum: qw,
            ack_quorum: qa,
            state: LedgerState::Open,
            last_entry: -1,
            fragments: vec![Fragment {
                first_entry: 0,
                bookies,
            }],
            writer_key,
            affinity,
        };
        let version = self
            .meta
            .put_json(&ledger_key(id), &meta, Expected::Absent)
            .await?;
        info!(ledger_id = id, ensemble = ?meta.fragments[0].bookies, affinity = ?meta.affinity, "ledger created");
        Ok(LedgerWriter::new(self.clone(), id, meta, version))
    }

    async fn load(&self, id: u64) -> Result<(LedgerMeta, u64), LedgerError> {
        let v = self
            .meta
            .get_json::<LedgerMeta>(&ledger_key(id))
            .await?
            .ok_or(LedgerError::NoSuchLedger(id))?;
        v.value.validate(id)?;
        Ok((v.value, v.version))
    }

    /// A ledger's record as stored (checked).
    pub async fn metadata(&self, id: u64) -> Result<LedgerMeta, LedgerError> {
        Ok(self.load(id).await?.0)
    }

    /// Opens a closed ledger for reading.
    pub async fn open_closed(&self, id: u64) -> Result<LedgerReader, LedgerError> {
        let (meta, _) = self.load(id).await?;
        if meta.state != LedgerState::Closed {
            return Err(LedgerError::Unreadable {
                ledger: id,
                entry: 0,
                reason: "ledger is not closed; open it for recovery".into(),
            });
        }
        Ok(self.reader(id, meta))
    }

    fn reader(&self, id: u64, meta: LedgerMeta) -> LedgerReader {
        LedgerReader {
            id,
            meta,
            client: self.clone(),
        }
    }

    /// Takes the ledger from its writer (alive or dead), closes it at the last entry that may
    /// have been acknowledged, and returns it for reading.
    pub async fn open_for_recovery(&self, id: u64) -> Result<LedgerReader, LedgerError> {
        loop {
            let (mut meta, version) = self.load(id).await?;
            if meta.state == LedgerState::Closed {
                return Ok(self.reader(id, meta));
            }
            let version = if meta.state == LedgerState::Open {
                meta.state = LedgerState::InRecovery;
                match self
                    .meta
                    .put_json(&ledger_key(id), &meta, Expected::Version(version))
                    .await
                {
                    Ok(v) => v,
                    Err(MetaError::BadVersion { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            } else {
                version
            };
            let last = self.recover(id, &meta).await?;
            meta.state = LedgerState::Closed;
            meta.last_entry = last;
            match self
                .meta
                .put_json(&ledger_key(id), &meta, Expected::Version(version))
                .await
            {
                Ok(_) => {
                    info!(
                        ledger_id = id,
                        last_entry = last,
                        "ledger recovered and closed"
                    );
                    return Ok(self.reader(id, meta));
                }
                // Somebody else closed it first (or changed it): their answer stands.
                Err(MetaError::BadVersion { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn recover(&self, id: u64, meta: &LedgerMeta) -> Result<i64, LedgerError> {
        let Some(frag) = meta.fragments.last() else {
            return Ok(-1);
        };
        let need = recovery::fencing_quorum(frag.bookies.len(), meta.ack_quorum);
        let mut fences: FuturesUnordered<_> = frag
            .bookies
            .iter()
            .map(|b| {
                let pool = Arc::clone(&self.pool);
                let b = b.clone();
                async move {
                    let c = pool.get(&b).await?;
                    c.fence(id).await
                }
            })
            .collect();
        let mut lacs = Vec::new();
        let mut errors = Vec::new();
        while let Some(r) = fences.next().await {
            match r {
                Ok((lac, _)) => lacs.push(lac),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let fenced = lacs.len();
        if fenced < need {
            return Err(LedgerError::RecoveryStuck {
                ledger: id,
                entry: 0,
                reason: format!(
                    "fenced {fenced} of {need} bookies needed: {}",
                    errors.join("; ")
                ),
            });
        }
        let mut entry = recovery::first_unconfirmed(lacs);
        debug!(
            ledger_id = id,
            from = entry,
            "fenced; reading past the last confirmed entry"
        );
        let key = Bytes::from(meta.writer_key.clone().into_bytes());
        loop {
            let set = meta.write_set(entry);
            let mut found = None;
            let mut missing = 0;
            let mut errors = Vec::new();
            for b in &set {
                match self.pool.get(b).await {
                    Ok(c) => match c.read(id, entry).await {
                        Ok(d) => {
                            found = Some(d);
                            break;
                        }
                        Err(e)
                            if matches!(
                                e.status(),
                                Some(Status::NoSuchEntry | Status::NoSuchLedger)
                            ) =>
                        {
                            missing += 1
                        }
                        Err(e) => errors.push(e.to_string()),
                    },
                    Err(e) => errors.push(e.to_string()),
                }
            }
            let verdict =
                recovery::verdict(found.is_some(), missing, meta.write_quorum, meta.ack_quorum);
            let Some(data) = found else {
                if verdict == recovery::Verdict::End {
                    return Ok(entry as i64 - 1);
                }
                return Err(LedgerError::RecoveryStuck {
                    ledger: id,
                    entry,
                    reason: format!(
                        "{missing} replicas lack it, others failed: {}",
                        errors.join("; ")
                    ),
                });
            };
            let acks = self
                .write_to_set(
                    id,
                    entry,
                    &set,
                    &key,
                    entry as i64 - 1,
                    &data,
                    true,
                    meta.ack_quorum,
                )
                .await?;
            debug!(
                ledger_id = id,
                entry, acks, "entry re-replicated during recovery"
            );
            entry += 1;
        }
    }

    /// Sends one entry to its write set; resolves at `need` acks (the rest finish in the
    /// background).
    #[allow(clippy::too_many_arguments)]
    async fn write_to_set(
        &self,
        id: u64,
        entry: u64,
        set: &[String],
        key: &Bytes,
        lac: i64,
        data: &Bytes,
        recovery: bool,
        need: usize,
    ) -> Result<usize, LedgerError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for b in set {
            let pool = Arc::clone(&self.pool);
            let (b, key, data, tx) = (b.clone(), key.clone(), data.clone(), tx.clone());
            // Spawned so replicas beyond the ack quorum still get the entry.
            tokio::spawn(async move {
                let r = match pool.get(&b).await {
                    Ok(c) => c.add(id, entry, key, lac, data, recovery).await,
                    Err(e) => Err(e),
                };
                let _ = tx.send((b, r));
            });
        }
        drop(tx);
        let mut acks = 0;
        let mut errors = Vec::new();
        let mut fenced = false;
        while let Some((b, r)) = rx.recv().await {
            match r {
                Ok(()) => {
                    acks += 1;
                    if acks >= need {
                        return Ok(acks);
                    }
                }
                Err(e) => {
                    fenced |= e.status() == Some(Status::Fenced);
                    errors.push(format!("{b}: {e}"));
                }
            }
        }
        if fenced {
            return Err(LedgerError::Fenced(id));
        }
        Err(LedgerError::QuorumFailed {
            ledger: id,
            entry,
            acks,
            need,
            errors: errors.join("; "),
        })
    }

    /// Deletes the ledger from its bookies (best effort) and from meta.
    pub async fn delete(&self, id: u64) -> Result<(), LedgerError> {
        let (meta, version) = self.load(id).await?;
        let bookies: BTreeSet<&String> = meta.fragments.iter().flat_map(|f| &f.bookies).collect();
        for b in bookies {
            match self.pool.get(b).await {
                Ok(c) => {
                    if let Err(e) = c.delete_ledger(id).await {
                        warn!(ledger_id = id, bookie = %b, error = %e, "delete on bookie failed; its GC will not reclaim it until retried");
                    }
                }
                Err(e) => {
                    warn!(ledger_id = id, bookie = %b, error = %e, "bookie unreachable for delete")
                }
            }
        }
        self.meta
            .delete(&ledger_key(id), Expected::Version(version))
            .await?;
        Ok(())
    }
}

/// Whether ledgers can be made with ensemble `e`, write quorum `qw` and ack quorum `qa`.
pub fn check_quorum(e: usize, qw: usize, qa: usize) -> Result<(), LedgerError> {
    if e >= qw && qw >= qa && qa >= 1 {
        Ok(())
    } else {
        Err(LedgerError::InvalidQuorum { e, qw, qa })
    }
}

/// An entry sent but not yet acknowledged by its ack quorum.
#[derive(Debug)]
struct PendingAdd {
    data: Bytes,
    /// Bookies of the entry's current write set that have it durable.
    acked: BTreeSet<String>,
}

type Waiter = oneshot::Sender<Result<u64, LedgerError>>;

#[derive(Debug)]
struct WriterState {
    meta: LedgerMeta,
    version: u64,
    next: u64,
    /// Set once; every later submit and every waiter gets it.
    failed: Option<LedgerError>,
    pending: std::collections::BTreeMap<u64, PendingAdd>,
    /// Who waits for which entry (appends, and a close for the last one issued), in entry
    /// order. Each is told once, when the last confirmed entry reaches it or the writer
    /// fails: one wake-up per waiter.
    waiters: VecDeque<(u64, Waiter)>,
    /// Entries acknowledged by their quorum but waiting on an earlier one.
    done: BTreeSet<u64>,
    /// Bookies that failed this writer; never picked again as replacements.
    bad: BTreeSet<String>,
}

#[derive(Debug)]
struct WriterInner {
    id: u64,
    key: Bytes,
    state: Mutex<WriterState>,
    /// The last confirmed entry, with every one before it; changed under `state`, read
    /// without it.
    lac: AtomicI64,
    /// Serialises ensemble changes.
    change: tokio::sync::Mutex<()>,
    client: LedgerClient,
}

/// The one writer of an open ledger. Clone to append from several tasks; entries complete in
/// id order whatever order their quorums answer in. When a bookie fails, the writer replaces
/// it (a new fragment from the first unconfirmed entry, recorded by CAS) and re-sends every
/// pending entry to the replacement, so callers see no error while enough bookies remain.
#[derive(Debug, Clone)]
pub struct LedgerWriter {
    inner: Arc<WriterInner>,
}

impl LedgerWriter {
    fn new(client: LedgerClient, id: u64, meta: LedgerMeta, version: u64) -> LedgerWriter {
        LedgerWriter {
            inner: Arc::new(WriterInner {
                id,
                key: Bytes::from(meta.writer_key.clone().into_bytes()),
                state: Mutex::new(WriterState {
                    meta,
                    version,
                    next: 0,
                    failed: None,
                    pending: std::collections::BTreeMap::new(),
                    waiters: VecDeque::new(),
                    done: BTreeSet::new(),
                    bad: BTreeSet::new(),
                }),
                lac: AtomicI64::new(-1),
                change: tokio::sync::Mutex::new(()),
                client,
            }),
        }
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The last entry acknowledged, with every entry before it (-1: none).
    pub fn last_confirmed(&self) -> i64 {
        self.inner.lac.load(Ordering::Acquire)
    }

    /// The ledger's record as this writer last wrote it.
    pub fn metadata(&self) -> LedgerMeta {
        self.inner.state.lock().meta.clone()
    }

    /// Writes the ledger's record if it is still at `version`.
    async fn put_meta(&self, meta: &LedgerMeta, version: u64) -> Result<u64, MetaError> {
        self.inner
            .client
            .meta
            .put_json(&ledger_key(self.inner.id), meta, Expected::Version(version))
            .await
    }

    fn fail(&self, e: LedgerError) {
        let mut st = self.inner.state.lock();
        let e = st.failed.get_or_insert(e).clone();
        for (_, w) in st.waiters.drain(..) {
            let _ = w.send(Err(e.clone()));
        }
    }

    /// Appends an entry; returns its id once it and every earlier entry are acknowledged.
    pub async fn append(&self, data: Bytes) -> Result<u64, LedgerError> {
        self.submit(data)?.await
    }

    /// Assigns the entry its id and sends it now; the returned future completes once it and
    /// every earlier entry are acknowledged. Entries get ids in the order of `submit` calls,
    /// which is what lets a caller pipeline appends without losing their order.
    pub fn submit(
        &self,
        data: Bytes,
    ) -> Result<impl Future<Output = Result<u64, LedgerError>> + Send + 'static, LedgerError> {
        let inner = &self.inner;
        let (tx, rx) = oneshot::channel();
        let (entry, sends) = {
            let mut st = inner.state.lock();
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.meta.state != LedgerState::Open {
                return Err(LedgerError::Closed(inner.id));
            }
            let entry = st.next;
            // room on every live connection of the write set first: a full queue means
            // slow down, and no id is spent on an entry that could not be sent
            let mut sends = Vec::with_capacity(st.meta.write_quorum);
            for b in st.meta.write_set_iter(entry) {
                let slot = match inner.client.pool.live(b).map(|c| c.reserve_add()) {
                    Some(Ok(slot)) => Some(slot),
                    Some(Err(ClientError::Overloaded(_))) => {
                        return Err(LedgerError::Overloaded {
                            ledger: inner.id,
                            bookie: b.clone(),
                        });
                    }
                    // not connected (or just lost): sent once connected, as a replacement is
                    Some(Err(_)) | None => None,
                };
                sends.push((b.clone(), slot));
            }
            st.next += 1;
            st.pending.insert(
                entry,
                PendingAdd {
                    data: data.clone(),
                    acked: BTreeSet::new(),
                },
            );
            st.waiters.push_back((entry, tx));
            (entry, sends)
        };
        for (b, slot) in sends {
            match slot {
                Some(slot) => {
                    let me = self.clone();
                    slot.send(self.add_request(entry, data.clone()), move |r| {
                        me.add_done(entry, b, r)
                    });
                }
                None => self.send(entry, b, data.clone()),
            }
        }
        let id = inner.id;
        Ok(async move { rx.await.unwrap_or(Err(LedgerError::Closed(id))) })
    }

    /// A reader of the entries acknowledged so far (the ledger stays open for writing).
    pub fn reader(&self) -> LedgerReader {
        let mut meta = self.metadata();
        meta.last_entry = self.last_confirmed();
        self.inner.client.reader(self.inner.id, meta)
    }

    fn add_request(&self, entry: u64, data: Bytes) -> protocol::AddEntry {
        protocol::AddEntry {
            ledger_id: self.inner.id,
            entry_id: entry,
            writer_key: self.inner.key.clone(),
            lac: self.last_confirmed(),
            data,
            recovery: false,
        }
    }

    /// Sends the entry to one bookie; its answer comes back to `add_done`. With a live
    /// connection this is a call, not a task: no task, channel or timer per entry.
    fn send(&self, entry: u64, bookie: String, data: Bytes) {
        let add = self.add_request(entry, data);
        if let Some(c) = self.inner.client.pool.live(&bookie) {
            let me = self.clone();
            c.add_then(add, move |r| me.add_done(entry, bookie, r));
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            match me.inner.client.pool.get(&bookie).await {
                Ok(c) => {
                    let me2 = me.clone();
                    c.add_then(add, move |r| me2.add_done(entry, bookie, r));
                }
                Err(e) => me.add_done(entry, bookie, Err(e)),
            }
        });
    }

    fn add_done(&self, entry: u64, bookie: String, r: Result<(), ClientError>) {
        match r {
            Ok(()) => self.acked(entry, &bookie),
            Err(e) if e.status() == Some(Status::Fenced) => {
                self.fail(LedgerError::Fenced(self.inner.id))
            }
            // a resend (to a replacement, after a reconnect) found the queue full: the bookie
            // is busy, not gone; send again shortly
            Err(ClientError::Overloaded(_)) => {
                let me = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let data = me
                        .inner
                        .state
                        .lock()
                        .pending
                        .get(&entry)
                        .map(|p| p.data.clone());
                    if let Some(data) = data {
                        me.send(entry, bookie, data);
                    }
                });
            }
            Err(e) => {
                warn!(ledger_id = self.inner.id, entry, bookie = %bookie, error = %e, "add failed; replacing bookie");
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(err) = me.replace(&bookie).await {
                        me.fail(err);
                    }
                });
            }
        }
    }

    fn acked(&self, entry: u64, bookie: &str) {
        let inner = &self.inner;
        let mut st = inner.state.lock();
        let in_set = st.meta.write_set_iter(entry).any(|b| b == bookie);
        let qa = st.meta.ack_quorum;
        let Some(p) = st.pending.get_mut(&entry) else {
            return;
        };
        if !in_set {
            return; // an ack from a bookie replaced since: does not count
        }
        p.acked.insert(bookie.to_string());
        if p.acked.len() < qa {
            return;
        }
        st.pending.remove(&entry);
        st.done.insert(entry);
        let WriterState { done, waiters, .. } = &mut *st;
        let mut lac = inner.lac.load(Ordering::Acquire);
        while done.remove(&((lac + 1) as u64)) {
            lac += 1;
        }
        inner.lac.store(lac, Ordering::Release);
        while let Some((e, _)) = waiters.front()
            && *e as i64 <= lac
        {
            if let Some((e, w)) = waiters.pop_front() {
                let _ = w.send(Ok(e));
            }
        }
    }

    /// Replaces a failed bookie in the current fragment, from the first unconfirmed entry on,
    /// and re-sends every pending entry whose write set now holds the replacement.
    async fn replace(&self, failed: &str) -> Result<(), LedgerError> {
        let inner = &self.inner;
        let _serial = inner.change.lock().await;
        let current: Vec<String> = {
            let st = inner.state.lock();
            match st.meta.fragments.last() {
                Some(f) if f.bookies.iter().any(|b| b == failed) => f.bookies.clone(),
                _ => return Ok(()), // already replaced by an earlier failure
            }
        };
        let available = inner.client.available_bookies().await?;
        let (candidates, affinity) = {
            let mut st = inner.state.lock();
            st.bad.insert(failed.to_string());
            let bad = &st.bad;
            let c: Vec<Candidate> = available
                .into_iter()
                .filter(|c| !current.contains(&c.addr) && !bad.contains(&c.addr))
                .collect();
            (c, st.meta.affinity.clone())
        };
        let Some(replacement) = placement::place(candidates, 1, affinity.as_ref()).pop() else {
            let bad = inner.state.lock().bad.clone();
            return Err(LedgerError::NotEnoughBookies {
                need: current.len(),
                have: current.len() - bad.iter().filter(|b| current.contains(b)).count(),
                affinity,
            });
        };
        loop {
            let (meta, version, first) = {
                let st = inner.state.lock();
                let mut meta = st.meta.clone();
                let first = (self.last_confirmed() + 1) as u64;
                let mut bookies = current.clone();
                for b in bookies.iter_mut() {
                    if b == failed {
                        *b = replacement.clone();
                    }
                }
                match meta.fragments.last_mut() {
                    Some(f) if f.first_entry >= first => f.bookies = bookies,
                    _ => meta.fragments.push(Fragment {
                        first_entry: first,
                        bookies,
                    }),
                }
                (meta, st.version, first)
            };
            match self.put_meta(&meta, version).await {
                Ok(v) => {
                    info!(ledger_id = inner.id, failed, replacement = %replacement, first_entry = first, "ensemble changed");
                    let resend: Vec<(u64, Bytes)> = {
                        let mut st = inner.state.lock();
                        st.meta = meta;
                        st.version = v;
                        let mut out = Vec::new();
                        let WriterState { meta, pending, .. } = &mut *st;
                        for (&e, p) in pending.range_mut(first..) {
                            // The failed bookie's acks no longer count (BookKeeper does the same).
                            p.acked.remove(failed);
                            if meta.write_set(e).contains(&replacement)
                                && !p.acked.contains(&replacement)
                            {
                                out.push((e, p.data.clone()));
                            }
                        }
                        out
                    };
                    for (e, data) in resend {
                        self.send(e, replacement.clone(), data);
                    }
                    return Ok(());
                }
                Err(MetaError::BadVersion { .. }) => {
                    let (fresh, v) = inner.client.load(inner.id).await?;
                    if fresh.state != LedgerState::Open {
                        return Err(LedgerError::Fenced(inner.id));
                    }
                    let mut st = inner.state.lock();
                    st.meta = fresh;
                    st.version = v;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits for pending appends, then seals the ledger at its last acknowledged entry.
    pub async fn close(&self) -> Result<i64, LedgerError> {
        let inner = &self.inner;
        let pending = {
            let mut st = inner.state.lock();
            let issued = st.next as i64 - 1;
            (st.failed.is_none() && self.last_confirmed() < issued).then(|| {
                // `issued` is at least every waiter's entry so far: the queue stays in order.
                let (tx, rx) = oneshot::channel();
                st.waiters.push_back((issued as u64, tx));
                rx
            })
        };
        if let Some(rx) = pending {
            let _ = rx.await;
        }
        let _serial = inner.change.lock().await;
        let last = self.last_confirmed();
        let (mut meta, version) = {
            let st = inner.state.lock();
            (st.meta.clone(), st.version)
        };
        meta.state = LedgerState::Closed;
        meta.last_entry = last;
        match self.put_meta(&meta, version).await {
            Ok(v) => {
                let mut st = inner.state.lock();
                st.meta = meta;
                st.version = v;
                Ok(last)
            }
            // Someone recovered the ledger under us: it is theirs now.
            Err(MetaError::BadVersion { .. }) => Err(LedgerError::Fenced(inner.id)),
            Err(e) => Err(e.into()),
        }
    }
}

/// Reads a closed ledger.
#[derive(Debug, Clone)]
pub struct LedgerReader {
    id: u64,
    meta: LedgerMeta,
    client: LedgerClient,
}

impl LedgerReader {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn last_entry(&self) -> i64 {
        self.meta.last_entry
    }

    pub fn metadata(&self) -> &LedgerMeta {
        &self.meta
    }

    /// Reads one entry from the first replica that has it, trying the others on any error
    /// (a checksum error on one replica is answered by another).
    pub async fn read(&self, entry: u64) -> Result<Bytes, LedgerError> {
        if entry as i64 > self.meta.last_entry {
            return Err(LedgerError::Unreadable {
                ledger: self.id,
                entry,
                reason: format!("past the last entry {}", self.meta.last_entry),
            });
        }
        let mut errors = Vec::new();
        for b in self.meta.write_set(entry) {
            match self.client.pool.get(&b).await {
                Ok(c) => match c.read(self.id, entry).await {
                    Ok(d) => return Ok(d),
                    Err(e) => errors.push(format!("{b}: {e}")),
                },
                Err(e) => errors.push(format!("{b}: {e}")),
            }
        }
        Err(LedgerError::Unreadable {
            ledger: self.id,
            entry,
            reason: errors.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_records_are_refused() {
        let good = LedgerMeta {
            ensemble_size: 2,
            write_quorum: 2,
            ack_quorum: 1,
            state: LedgerState::Open,
            last_entry: -1,
            fragments: vec![Fragment {
                first_entry: 0,
                bookies: vec!["a".into(), "b".into()],
            }],
            writer_key: String::new(),
            affinity: None,
        };
        good.validate(1).unwrap();
        let mut m = good.clone();
        m.ack_quorum = 3;
        assert!(m.validate(1).is_err());
        let mut m = good.clone();
        m.fragments[0].bookies.clear();
        assert!(m.validate(1).is_err());
        assert!(m.write_set(0).is_empty(), "no division by zero");
        let mut m = good;
        m.fragments.clear();
        assert!(m.validate(1).is_err());
    }

    #[test]
    fn write_sets_stripe_over_the_fragment() {
        let meta = LedgerMeta {
            ensemble_size: 3,
            write_quorum: 2,
            ack_quorum: 2,
            state: LedgerState::Open,
            last_entry: -1,
            fragments: vec![
                Fragment {
                    first_entry: 0,
                    bookies: vec!["a".into(), "b".into(), "c".into()],
                },
                Fragment {
                    first_entry: 10,
                    bookies: vec!["a".into(), "d".into(), "c".into()],
                },
            ],
            writer_key: String::new(),
            affinity: None,
        };
        assert_eq!(meta.write_set(0), vec!["a", "b"]);
        assert_eq!(meta.write_set(1), vec!["b", "c"]);
        assert_eq!(meta.write_set(2), vec!["c", "a"]);
        assert_eq!(meta.write_set(10), vec!["d", "c"]);
        assert_eq!(meta.write_set(12), vec!["a", "d"]);
    }
}
