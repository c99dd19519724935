use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use tokio::sync::{mpsc, watch};

use crate::Result;
pub use crate::version::{Expected, Version};

/// Identifies a session (an etcd lease id in the etcd backend).
pub type SessionId = i64;

/// A value together with the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: Version,
    /// Set when the record is ephemeral: the session that owns it.
    pub owner: Option<SessionId>,
}

impl<T> Versioned<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Versioned<U> {
        Versioned {
            value: f(self.value),
            version: self.version,
            owner: self.owner,
        }
    }
}

/// One operation of an atomic transaction.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: String,
        value: Bytes,
        expected: Expected,
        /// Bind the record to this session: it is deleted when the session ends.
        session: Option<SessionId>,
    },
    Delete {
        key: String,
        expected: Expected,
    },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>, expected: Expected) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            expected,
            session: None,
        }
    }

    pub fn delete(key: impl Into<String>, expected: Expected) -> Op {
        Op::Delete {
            key: key.into(),
            expected,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }

    pub fn expected(&self) -> Expected {
        match self {
            Op::Put { expected, .. } | Op::Delete { expected, .. } => *expected,
        }
    }
}

/// What changed, as a watcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Modified,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub key: String,
    /// The new value; `None` for a deletion.
    pub value: Option<Bytes>,
    /// The revision of the change (for a deletion, the revision that deleted it).
    pub version: Version,
}

/// A stream of changes below a path, in revision order, starting just after
/// [`Watch::start_revision`].
///
/// An `Err` item means the watch could not continue without a gap (for etcd: the history it
/// needed was compacted away, or the store was closed); the stream ends after it and the
/// watcher must re-read what it cares about and watch again.
pub struct Watch {
    start_revision: Version,
    rx: mpsc::UnboundedReceiver<Result<WatchEvent>>,
    // Dropping the watch stops the backend's side of it.
    _guard: Option<Box<dyn Send + Sync>>,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("start_revision", &self.start_revision)
            .finish()
    }
}

impl Watch {
    pub(crate) fn new(
        start_revision: Version,
        rx: mpsc::UnboundedReceiver<Result<WatchEvent>>,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Watch {
        Watch {
            start_revision,
            rx,
            _guard: guard,
        }
    }

    /// Every change with a revision above this one is delivered.
    pub fn start_revision(&self) -> Version {
        self.start_revision
    }

    /// The next event; `None` once the store side has ended the watch.
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        self.rx.recv().await
    }
}

impl Stream for Watch {
    type Item = Result<WatchEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// The life of a session, as its owner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Keep-alives are answered; its ephemeral records exist.
    Alive,
    /// The store cannot be reached; the lease may still be alive on the server, so records
    /// stay and the owner should stop acting on them until the state returns to `Alive`.
    Suspended,
    /// The session has ended (revoked, expired or closed): its ephemeral records are gone or
    /// going, and it never comes back. The owner must start a new session.
    Lost,
}

/// A lease that ephemeral records are bound to. Cloning shares it; when the last clone is
/// dropped the session is closed and its records are deleted.
#[derive(Clone)]
pub struct Session {
    id: SessionId,
    ttl: Duration,
    state: watch::Receiver<SessionState>,
    _guard: Arc<SessionGuard>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &format_args!("{:#x}", self.id))
            .field("ttl", &self.ttl)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

pub(crate) struct SessionGuard(Option<Box<dyn FnOnce() + Send + Sync>>);

impl SessionGuard {
    pub(crate) fn new(on_drop: impl FnOnce() + Send + Sync + 'static) -> SessionGuard {
        SessionGuard(Some(Box::new(on_drop)))
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl Session {
    pub(crate) fn new(
        id: SessionId,
        ttl: Duration,
        state: watch::Receiver<SessionState>,
        guard: SessionGuard,
    ) -> Session {
        Session {
            id,
            ttl,
            state,
            _guard: Arc::new(guard),
        }
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn state(&self) -> SessionState {
        *self.state.borrow()
    }

    /// A receiver that sees every state change, for owners that react to suspension.
    pub fn subscribe(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    /// Resolves once the session is lost.
    pub async fn lost(&self) {
        let mut rx = self.state.clone();
        // An Err means the store side is gone, which is a loss too.
        let _ = rx.wait_for(|s| *s == SessionState::Lost).await;
    }
}

/// A versioned, watchable key-value store of cluster metadata.
///
/// Keys are absolute paths (`/tenants/public`); a parent need not exist for its children to.
/// Every write can be conditional on the version found, which is how every read-modify-write
/// in Magnetar is made safe (see [`crate::MetadataStoreExt::update_json`]).
#[async_trait]
pub trait MetadataStore: Send + Sync + fmt::Debug + 'static {
    /// The value at `key` and its version, or `None`.
    async fn get(&self, key: &str) -> Result<Option<Versioned<Bytes>>>;

    /// Applies every operation or none: all expectations are checked first, against the
    /// same snapshot. Returns per operation the new version (puts) or the deleted version.
    async fn txn(&self, ops: Vec<Op>) -> Result<Vec<Version>>;

    /// The names (not paths) of the direct children of `path`, sorted bytewise. A child
    /// counts when any key lies below it.
    async fn children(&self, path: &str) -> Result<Vec<String>>;

    /// Watches `path` and everything below it. No change committed after the watch is
    /// returned is missed.
    async fn watch(&self, path: &str) -> Result<Watch>;

    /// Starts a session whose lease is kept alive in the background. If it cannot be kept
    /// alive for `ttl`, the store ends it and deletes its records.
    async fn create_session(&self, ttl: Duration) -> Result<Session>;

    /// Ends a session from anywhere (its owner or an operator): its records are deleted and
    /// its owner sees [`SessionState::Lost`].
    async fn revoke_session(&self, id: SessionId) -> Result<()>;

    /// Conditional put; returns the new version.
    async fn put(&self, key: &str, value: Bytes, expected: Expected) -> Result<Version> {
        one(self.txn(vec![Op::put(key, value, expected)]).await?)
    }

    /// Conditional put of a record that lives only as long as `session`.
    async fn put_ephemeral(
        &self,
        session: &Session,
        key: &str,
        value: Bytes,
        expected: Expected,
    ) -> Result<Version> {
        one(self
            .txn(vec![Op::Put {
                key: key.to_string(),
                value,
                expected,
                session: Some(session.id()),
            }])
            .await?)
    }

    /// Conditional delete. Deleting a missing key is `NotFound`.
    async fn delete(&self, key: &str, expected: Expected) -> Result<()> {
        self.txn(vec![Op::delete(key, expected)]).await.map(|_| ())
    }
}

fn one(mut versions: Vec<Version>) -> Result<Version> {
    versions
        .pop()
        .ok_or_else(|| crate::MetaError::Backend("transaction returned no result".into()))
}

/// The shared handle every component holds.
pub type MetaStore = Arc<dyn MetadataStore>;
