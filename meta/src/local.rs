//! The engine behind the in-process backends (memory and RocksDB): one writer thread that
//! checks compare-and-set conditions, assigns revisions, commits groups of transactions in one
//! durable write, keeps session ownership of ephemeral records and feeds watchers in order.
//! The backends only store records; every rule lives here, once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error};

use crate::key::{
    child_of, descendant_prefix, in_subtree, resume_after, validate_key, validate_path,
};
use crate::ops::{check_expected, validate_ops, validate_ttl};
use crate::store::SessionGuard;
use crate::{
    EventKind, MetaError, MetadataStore, Op, Result, Session, SessionId, SessionState, Version,
    Versioned, Watch, WatchEvent,
};

/// The stored form of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub version: Version,
    /// 0 for a durable record, else the owning session.
    pub session: SessionId,
    pub value: Bytes,
}

/// What a scan visitor wants next.
pub(crate) enum Seek {
    Next,
    To(String),
    Stop,
}

/// Record storage under the engine. Only the writer thread calls `commit`.
pub(crate) trait Backing: Send + Sync + 'static {
    /// Whether reads may wait on a disk, so they belong on the blocking pool.
    const READS_MAY_BLOCK: bool;
    /// The last committed revision, as found at open.
    fn revision(&self) -> Result<Version>;
    fn get(&self, key: &str) -> Result<Option<Record>>;
    /// Visits keys from `start` on, in byte order, with the owning session of each.
    fn scan(&self, start: &str, visit: &mut dyn FnMut(&str, SessionId) -> Seek) -> Result<()>;
    /// Makes `writes` (None = delete) and the new revision durable, atomically.
    fn commit(&self, revision: Version, writes: &BTreeMap<String, Option<Record>>) -> Result<()>;
}

/// Most transactions grouped into one durable commit.
const MAX_GROUP: usize = 256;

enum Request {
    Txn {
        ops: Vec<Op>,
        reply: oneshot::Sender<Result<Vec<Version>>>,
    },
    Revoke {
        id: SessionId,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    /// The store handle is gone: commit what came before, then stop.
    Shutdown,
}

struct Watcher {
    path: String,
    tx: mpsc::UnboundedSender<Result<WatchEvent>>,
}

struct LocalSession {
    keys: BTreeSet<String>,
    state: watch::Sender<SessionState>,
}

struct State {
    revision: Version,
    watchers: Vec<Watcher>,
    sessions: HashMap<SessionId, LocalSession>,
    /// Set when a commit failed: the disk can no longer be trusted, so every later write
    /// fails instead of guessing what was persisted.
    failed: Option<String>,
}

struct Shared<B> {
    backing: B,
    state: Mutex<State>,
}

pub(crate) struct LocalStore<B: Backing> {
    name: &'static str,
    shared: Arc<Shared<B>>,
    tx: std_mpsc::Sender<Request>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl<B: Backing> Drop for LocalStore<B> {
    /// Stops the writer and waits for it, so the backing (a RocksDB handle) is closed here
    /// and not torn down under a live thread at process exit.
    fn drop(&mut self) {
        let _ = self.tx.send(Request::Shutdown);
        if let Some(t) = self.writer.take() {
            let _ = t.join();
        }
    }
}

impl<B: Backing> fmt::Debug for LocalStore<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("backend", &self.name)
            .field("revision", &self.shared.state.lock().revision)
            .finish()
    }
}

impl<B: Backing> LocalStore<B> {
    /// Starts the engine over `backing`. Ephemeral records left by an earlier process are
    /// deleted first: their sessions ended with it.
    pub(crate) fn start(name: &'static str, backing: B) -> Result<LocalStore<B>> {
        let revision = backing.revision()?;
        let shared = Arc::new(Shared {
            backing,
            state: Mutex::new(State {
                revision,
                watchers: Vec::new(),
                sessions: HashMap::new(),
                failed: None,
            }),
        });
        remove_stale_ephemerals(&shared)?;
        let (tx, rx) = std_mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name(format!("meta-{name}-writer"))
            .spawn(move || writer_loop(writer_shared, rx))
            .map_err(|e| MetaError::Backend(format!("start writer thread: {e}")))?;
        Ok(LocalStore {
            name,
            shared,
            tx,
            writer: Some(writer),
        })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&B) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if B::READS_MAY_BLOCK {
            let shared = Arc::clone(&self.shared);
            tokio::task::spawn_blocking(move || f(&shared.backing))
                .await
                .map_err(|e| MetaError::Backend(format!("read task failed: {e}")))?
        } else {
            f(&self.shared.backing)
        }
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| MetaError::Closed)?;
        rx.await.map_err(|_| MetaError::Closed)?
    }
}

fn remove_stale_ephemerals<B: Backing>(shared: &Shared<B>) -> Result<()> {
    let mut stale = BTreeMap::new();
    shared.backing.scan("/", &mut |key, session| {
        if session != 0 {
            stale.insert(key.to_string(), None);
        }
        Seek::Next
    })?;
    if stale.is_empty() {
        return Ok(());
    }
    let mut state = shared.state.lock();
    let revision = state.revision + 1;
    shared.backing.commit(revision, &stale)?;
    state.revision = revision;
    debug!(
        count = stale.len(),
        "removed ephemeral records of an earlier process"
    );
    Ok(())
}

#[async_trait]
impl<B: Backing> MetadataStore for LocalStore<B> {
    async fn get(&self, key: &str) -> Result<Option<Versioned<Bytes>>> {
        validate_key(key)?;
        let key = key.to_string();
        let record = self.read(move |b| b.get(&key)).await?;
        Ok(record.map(|r| Versioned {
            value: r.value,
            version: r.version,
            owner: (r.session != 0).then_some(r.session),
        }))
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<Vec<Version>> {
        validate_ops(&ops)?;
        self.request(|reply| Request::Txn { ops, reply }).await
    }

    async fn children(&self, path: &str) -> Result<Vec<String>> {
        validate_path(path)?;
        let base = descendant_prefix(path);
        self.read(move |b| {
            let mut out = BTreeSet::new();
            b.scan(&base, &mut |key, _| match child_of(&base, key) {
                Some((child, deep)) => {
                    let next = resume_after(&base, key, child, deep);
                    out.insert(child.to_string());
                    Seek::To(next)
                }
                None => Seek::Stop,
            })?;
            Ok(out.into_iter().collect())
        })
        .await
    }

    async fn watch(&self, path: &str) -> Result<Watch> {
        validate_path(path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.shared.state.lock();
        state.watchers.push(Watcher {
            path: path.to_string(),
            tx,
        });
        Ok(Watch::new(state.revision, rx, None))
    }

    async fn create_session(&self, ttl: Duration) -> Result<Session> {
        validate_ttl(ttl)?;
        let (state_tx, state_rx) = watch::channel(SessionState::Alive);
        let id = {
            let mut state = self.shared.state.lock();
            let mut id = rand::random::<i64>() & i64::MAX;
            while id == 0 || state.sessions.contains_key(&id) {
                id = rand::random::<i64>() & i64::MAX;
            }
            state.sessions.insert(
                id,
                LocalSession {
                    keys: BTreeSet::new(),
                    state: state_tx,
                },
            );
            id
        };
        // In-process, a session can only end by being revoked or dropped: there is no
        // network between owner and store for keep-alives to cross.
        let tx = self.tx.clone();
        let guard = SessionGuard::new(move || {
            let _ = tx.send(Request::Revoke { id, reply: None });
        });
        Ok(Session::new(id, ttl, state_rx, guard))
    }

    async fn revoke_session(&self, id: SessionId) -> Result<()> {
        self.request(|reply| Request::Revoke {
            id,
            reply: Some(reply),
        })
        .await
    }
}

/// Implements [`MetadataStore`] for a newtype over `LocalStore<B>` by forwarding.
macro_rules! forward_store {
    ($outer:ty) => {
        #[async_trait::async_trait]
        impl crate::MetadataStore for $outer {
            async fn get(
                &self,
                key: &str,
            ) -> crate::Result<Option<crate::Versioned<bytes::Bytes>>> {
                self.0.get(key).await
            }
            async fn txn(&self, ops: Vec<crate::Op>) -> crate::Result<Vec<crate::Version>> {
                self.0.txn(ops).await
            }
            async fn children(&self, path: &str) -> crate::Result<Vec<String>> {
                self.0.children(path).await
            }
            async fn watch(&self, path: &str) -> crate::Result<crate::Watch> {
                self.0.watch(path).await
            }
            async fn create_session(
                &self,
                ttl: std::time::Duration,
            ) -> crate::Result<crate::Session> {
                self.0.create_session(ttl).await
            }
            async fn revoke_session(&self, id: crate::SessionId) -> crate::Result<()> {
                self.0.revoke_session(id).await
            }
        }
    };
}
pub(crate) use forward_store;

fn writer_loop<B: Backing>(shared: Arc<Shared<B>>, rx: std_mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut group = Vec::new();
        let mut stop = false;
        let mut next = Some(first);
        while let Some(r) = next.take() {
            match r {
                Request::Shutdown => {
                    stop = true;
                    break;
                }
                r => group.push(r),
            }
            if group.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit_group(&shared, group);
        }
        if stop {
            // Sessions that outlive the store find the channel closed: their revokes are moot.
            let mut state = shared.state.lock();
            for (_, s) in state.sessions.drain() {
                s.state.send_replace(SessionState::Lost);
            }
            state.watchers.clear();
            return;
        }
    }
}

/// Records a deletion in the group's overlay and its event.
fn delete_in(
    overlay: &mut BTreeMap<String, Option<Record>>,
    events: &mut Vec<WatchEvent>,
    key: String,
    revision: Version,
) {
    events.push(WatchEvent {
        kind: EventKind::Deleted,
        key: key.clone(),
        value: None,
        version: revision,
    });
    overlay.insert(key, None);
}

enum Reply {
    Txn(oneshot::Sender<Result<Vec<Version>>>, Result<Vec<Version>>),
    Revoke(Option<oneshot::Sender<Result<()>>>, Result<()>),
}

/// Applies a group of requests in arrival order against one overlay, commits the overlay
/// once, then tells watchers and callers. Each successful transaction gets its own revision.
fn commit_group<B: Backing>(shared: &Shared<B>, group: Vec<Request>) {
    let mut guard = shared.state.lock();
    if let Some(why) = guard.failed.clone() {
        for req in group {
            let err = MetaError::Backend(format!("store failed earlier: {why}"));
            match req {
                Request::Txn { reply, .. } => drop(reply.send(Err(err))),
                Request::Revoke { reply, .. } => {
                    reply.map(|r| r.send(Err(err)));
                }
                Request::Shutdown => {}
            }
        }
        return;
    }
    let state = &mut *guard;
    let mut revision = state.revision;
    let mut overlay: BTreeMap<String, Option<Record>> = BTreeMap::new();
    let mut events = Vec::new();
    let mut lost = Vec::new();
    let mut replies = Vec::with_capacity(group.len());
    let current =
        |overlay: &BTreeMap<String, Option<Record>>, key: &str| -> Result<Option<Record>> {
            match overlay.get(key) {
                Some(r) => Ok(r.clone()),
                None => shared.backing.get(key),
            }
        };

    for req in group {
        match req {
            Request::Txn { ops, reply } => {
                let n_ops = ops.len();
                let result = (|| {
                    let mut found = Vec::with_capacity(ops.len());
                    for op in &ops {
                        if let Op::Put {
                            session: Some(id), ..
                        } = op
                            && !state.sessions.contains_key(id)
                        {
                            return Err(MetaError::SessionLost(*id));
                        }
                        let cur = current(&overlay, op.key())?;
                        check_expected(op, cur.as_ref().map(|r| r.version))?;
                        found.push(cur);
                    }
                    revision += 1;
                    for (op, cur) in ops.into_iter().zip(found) {
                        if let Some(old) = &cur
                            && old.session != 0
                            && let Some(s) = state.sessions.get_mut(&old.session)
                        {
                            s.keys.remove(op.key());
                        }
                        match op {
                            Op::Put {
                                key,
                                value,
                                session,
                                ..
                            } => {
                                let session = session.unwrap_or(0);
                                if let Some(s) = state.sessions.get_mut(&session) {
                                    s.keys.insert(key.clone());
                                }
                                events.push(WatchEvent {
                                    kind: if cur.is_some() {
                                        EventKind::Modified
                                    } else {
                                        EventKind::Created
                                    },
                                    key: key.clone(),
                                    value: Some(value.clone()),
                                    version: revision,
                                });
                                overlay.insert(
                                    key,
                                    Some(Record {
                                        version: revision,
                                        session,
                                        value,
                                    }),
                                );
                            }
                            Op::Delete { key, .. } => {
                                delete_in(&mut overlay, &mut events, key, revision)
                            }
                        }
                    }
                    Ok((revision, n_ops))
                })();
                replies.push(Reply::Txn(reply, result.map(|(rev, n)| vec![rev; n])));
            }
            Request::Revoke { id, reply } => {
                let result = match state.sessions.remove(&id) {
                    None => Err(MetaError::SessionLost(id)),
                    Some(session) => {
                        if !session.keys.is_empty() {
                            revision += 1;
                        }
                        for key in session.keys {
                            delete_in(&mut overlay, &mut events, key, revision);
                        }
                        lost.push(session.state);
                        Ok(())
                    }
                };
                replies.push(Reply::Revoke(reply, result));
            }
            Request::Shutdown => {}
        }
    }

    if !overlay.is_empty()
        && let Err(e) = shared.backing.commit(revision, &overlay)
    {
        error!(error = %e, "metadata commit failed; store is now read-only");
        state.failed = Some(e.to_string());
        for r in replies {
            let err = MetaError::Backend(format!("commit failed: {e}"));
            match r {
                Reply::Txn(tx, _) => drop(tx.send(Err(err))),
                Reply::Revoke(tx, _) => {
                    tx.map(|t| t.send(Err(err)));
                }
            }
        }
        return;
    }
    state.revision = revision;
    state.watchers.retain(|w| {
        events
            .iter()
            .filter(|e| in_subtree(&w.path, &e.key))
            .all(|e| w.tx.send(Ok(e.clone())).is_ok())
    });
    for s in lost {
        s.send_replace(SessionState::Lost);
    }
    for r in replies {
        match r {
            Reply::Txn(tx, res) => drop(tx.send(res)),
            Reply::Revoke(tx, res) => {
                tx.map(|t| t.send(res));
            }
        }
    }
}
