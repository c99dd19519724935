//! A connection to one bookie: requests are pipelined over one TCP stream and matched to
//! responses by id. The ledger client builds quorum writes and recovery on top of this.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
#[cfg(feature = "server")]
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::protocol::{self, Op, Request, Response, Status};
#[cfg(feature = "server")]
use crate::server::Bookie;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("connect to bookie {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("connection to bookie {0} lost")]
    Disconnected(SocketAddr),
    #[error("bookie {0} did not answer in time")]
    Timeout(SocketAddr),
    #[error("bookie answered {status:?}: {message}")]
    Status { status: Status, message: String },
    #[error("bookie {0} sent an undecodable frame: {1}")]
    Protocol(SocketAddr, String),
    /// The connection's queue is full: the caller should slow down, nothing failed.
    #[error("bookie {0} has too many requests queued")]
    Overloaded(SocketAddr),
}

impl ClientError {
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How an answer reaches whoever asked.
enum Reply {
    /// An `async` caller waiting on a channel.
    Once(oneshot::Sender<Result<Response, ClientError>>),
    /// A function called with the answer on the connection's task: no task and no timer per
    /// request, for the ledger writer's adds.
    Call(Box<dyn FnOnce(Result<Response, ClientError>) + Send>),
}

impl Reply {
    fn send(self, r: Result<Response, ClientError>) {
        match self {
            Reply::Once(tx) => {
                let _ = tx.send(r);
            }
            Reply::Call(f) => f(r),
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reply::Once(_) => "Reply::Once",
            Reply::Call(_) => "Reply::Call",
        })
    }
}

/// The outcome of an answer: anything but Ok is an error.
fn checked(r: Result<Response, ClientError>) -> Result<Response, ClientError> {
    let resp = r?;
    match resp.outcome() {
        Status::Ok => Ok(resp),
        status => Err(ClientError::Status {
            status,
            message: resp.message,
        }),
    }
}

/// Adds that found a bookie connection's queue full (`Overloaded`), since the process began.
pub static OVERLOADED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Room for one add on one connection, taken ahead (see [`BookieClient::reserve_add`]).
#[derive(Debug)]
pub struct AddSlot {
    client: BookieClient,
    /// None for a bookie in this process, which has no queue.
    permit: Option<mpsc::OwnedPermit<(Request, Reply)>>,
}

impl AddSlot {
    /// Sends the add in the room taken; `done` gets the outcome (see
    /// [`BookieClient::add_then`]).
    pub fn send(
        self,
        add: protocol::AddEntry,
        done: impl FnOnce(Result<(), ClientError>) + Send + 'static,
    ) {
        if let Some(permit) = self.permit {
            let req = Request {
                id: 0,
                op: Some(Op::Add(add)),
            };
            let done = move |r: Result<Response, ClientError>| done(checked(r).map(|_| ()));
            permit.send((req, Reply::Call(Box::new(done))));
            return;
        }
        self.client.add_local(add, done);
    }
}

/// A cheap-to-clone handle on one connection, or on a bookie in this very process.
#[derive(Clone, Debug)]
pub struct BookieClient {
    addr: SocketAddr,
    transport: Transport,
    timeout: Duration,
}

#[derive(Clone, Debug)]
enum Transport {
    Tcp(mpsc::Sender<(Request, Reply)>),
    /// The standalone's own bookie: requests are handled by a call, without encoding them,
    /// a socket, or copying the entries.
    #[cfg(feature = "server")]
    Local(Arc<Bookie>),
}

impl BookieClient {
    /// Connects, then presents `secret` when there is one (a bookie that requires it answers
    /// nothing else first).
    pub async fn connect_with(
        addr: SocketAddr,
        timeout: Duration,
        secret: Option<&Bytes>,
    ) -> Result<BookieClient, ClientError> {
        let c = Self::connect(addr, timeout).await?;
        if let Some(secret) = secret {
            c.call(Op::Auth(protocol::Auth {
                secret: secret.clone(),
            }))
            .await
            .map_err(|e| ClientError::Connect {
                addr,
                reason: format!("authenticating: {e}"),
            })?;
        }
        Ok(c)
    }

    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<BookieClient, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Connect {
                addr,
                reason: "timed out".into(),
            })?
            .map_err(|e| ClientError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(addr, stream, rx, timeout));
        Ok(BookieClient {
            addr,
            transport: Transport::Tcp(tx),
            timeout,
        })
    }

    /// A handle on `bookie`, running in this process and serving `addr` to others.
    #[cfg(feature = "server")]
    pub fn local(addr: SocketAddr, bookie: Arc<Bookie>, timeout: Duration) -> BookieClient {
        BookieClient {
            addr,
            transport: Transport::Local(bookie),
            timeout,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the connection is still up (a lost one must be replaced).
    pub fn is_connected(&self) -> bool {
        match &self.transport {
            Transport::Tcp(tx) => !tx.is_closed(),
            #[cfg(feature = "server")]
            Transport::Local(_) => true,
        }
    }

    /// Sends one operation; an answer other than Ok is an error.
    pub async fn call(&self, op: Op) -> Result<Response, ClientError> {
        let req = Request {
            id: 0,
            op: Some(op),
        };
        let resp = match &self.transport {
            Transport::Tcp(tx) => {
                let (reply, rx) = oneshot::channel();
                tx.send((req, Reply::Once(reply)))
                    .await
                    .map_err(|_| ClientError::Disconnected(self.addr))?;
                // The connection answers with a timeout itself; this one only guards
                // against a connection task that is gone without a word.
                tokio::time::timeout(self.timeout + Duration::from_secs(1), rx)
                    .await
                    .map_err(|_| ClientError::Timeout(self.addr))?
                    .map_err(|_| ClientError::Disconnected(self.addr))?
            }
            #[cfg(feature = "server")]
            Transport::Local(bookie) => tokio::time::timeout(self.timeout, bookie.handle(req))
                .await
                .map_err(|_| ClientError::Timeout(self.addr)),
        };
        checked(resp)
    }

    /// Takes room for one add on this connection, so an entry can be given its id only once
    /// its adds are sure to be queued. `Overloaded` when the queue is full: the caller slows
    /// down instead of piling work up behind the connection.
    pub fn reserve_add(&self) -> Result<AddSlot, ClientError> {
        match &self.transport {
            Transport::Tcp(tx) => match tx.clone().try_reserve_owned() {
                Ok(permit) => Ok(AddSlot {
                    client: self.clone(),
                    permit: Some(permit),
                }),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    OVERLOADED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Err(ClientError::Overloaded(self.addr))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    Err(ClientError::Disconnected(self.addr))
                }
            },
            #[cfg(feature = "server")]
            Transport::Local(_) => Ok(AddSlot {
                client: self.clone(),
                permit: None,
            }),
        }
    }

    /// Sends an add without waiting: `done` gets the outcome (on the connection's task, so it
    /// must be quick). What `add` does, without a task, channel and timer per request. A full
    /// queue answers `Overloaded` (see [`BookieClient::reserve_add`], which avoids it).
    pub fn add_then(
        &self,
        add: protocol::AddEntry,
        done: impl FnOnce(Result<(), ClientError>) + Send + 'static,
    ) {
        match self.reserve_add() {
            Ok(slot) => slot.send(add, done),
            Err(e) => done(Err(e)),
        }
    }

    /// An add to the bookie in this process: handled by a call, its outcome handed to the
    /// runtime (the journal's sync thread only spawns, and what follows an add, completing it
    /// in order or replacing a bookie, runs on the broker's threads, not ahead of the next
    /// sync).
    #[cfg(feature = "server")]
    fn add_local(
        &self,
        add: protocol::AddEntry,
        done: impl FnOnce(Result<(), ClientError>) + Send + 'static,
    ) {
        let Transport::Local(bookie) = &self.transport else {
            return done(Err(ClientError::Disconnected(self.addr)));
        };
        let runtime = tokio::runtime::Handle::current();
        let reply = move |r: crate::server::AddOutcome| {
            let r = r.map_err(|(status, message)| ClientError::Status { status, message });
            runtime.spawn(async move { done(r) });
        };
        if let Some((add, reply)) = bookie.add_now(add, reply) {
            // It has to wait (a new writer key, a full write cache): in a task, with the
            // timeout a remote bookie's connection would give.
            let (bookie, addr, timeout) = (Arc::clone(bookie), self.addr, self.timeout);
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, bookie.add(add)).await {
                    Ok(r) => reply(r),
                    Err(_) => reply(Err((Status::Internal, format!("bookie {addr}: timed out")))),
                }
            });
        }
    }

    #[cfg(not(feature = "server"))]
    fn add_local(
        &self,
        _: protocol::AddEntry,
        done: impl FnOnce(Result<(), ClientError>) + Send + 'static,
    ) {
        done(Err(ClientError::Disconnected(self.addr)));
    }

    pub async fn add(
        &self,
        ledger_id: u64,
        entry_id: u64,
        writer_key: Bytes,
        lac: i64,
        data: Bytes,
        recovery: bool,
    ) -> Result<(), ClientError> {
        self.call(Op::Add(protocol::AddEntry {
            ledger_id,
            entry_id,
            writer_key,
            lac,
            data,
            recovery,
        }))
        .await
        .map(|_| ())
    }

    pub async fn read(&self, ledger_id: u64, entry_id: u64) -> Result<Bytes, ClientError> {
        let resp = self
            .call(Op::Read(protocol::ReadEntry {
                ledger_id,
                entry_id,
            }))
            .await?;
        resp.entries
            .into_iter()
            .next()
            .map(|e| e.data)
            .ok_or(ClientError::Status {
                status: Status::NoSuchEntry,
                message: "empty answer".into(),
            })
    }

    pub async fn read_range(
        &self,
        ledger_id: u64,
        first_entry: u64,
        max_entries: u32,
        max_bytes: u64,
    ) -> Result<Vec<protocol::Entry>, ClientError> {
        let resp = self
            .call(Op::ReadRange(protocol::ReadRange {
                ledger_id,
                first_entry,
                max_entries,
                max_bytes,
            }))
            .await?;
        Ok(resp.entries)
    }

    /// (last-add-confirmed, last entry stored), -1 for none.
    pub async fn read_lac(&self, ledger_id: u64) -> Result<(i64, i64), ClientError> {
        let r = self
            .call(Op::ReadLac(protocol::ReadLac { ledger_id }))
            .await?;
        Ok((r.lac, r.last_entry))
    }

    /// Fences the ledger here; returns (last-add-confirmed, last entry stored).
    pub async fn fence(&self, ledger_id: u64) -> Result<(i64, i64), ClientError> {
        let r = self.call(Op::Fence(protocol::Fence { ledger_id })).await?;
        Ok((r.lac, r.last_entry))
    }

    pub async fn delete_ledger(&self, ledger_id: u64) -> Result<(), ClientError> {
        self.call(Op::DeleteLedger(protocol::DeleteLedger { ledger_id }))
            .await
            .map(|_| ())
    }

    pub async fn health(&self) -> Result<(), ClientError> {
        self.call(Op::Health(protocol::Health {})).await.map(|_| ())
    }
}

/// The connection's one task: writes requests (several per send when they come together),
/// reads answers and hands each to its asker, and answers requests the bookie has not
/// answered within `timeout` with a timeout. Writes go a piece at a time inside the loop, so
/// answers are read and timeouts given even while the bookie is not reading.
async fn run(
    addr: SocketAddr,
    stream: TcpStream,
    mut rx: mpsc::Receiver<(Request, Reply)>,
    timeout: Duration,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut pending: HashMap<u64, Reply> = HashMap::new();
    // Deadlines in sending order (one timeout for all, so they are sorted); answered ones
    // are dropped from the front as the front is looked at.
    let mut deadlines: VecDeque<(tokio::time::Instant, u64)> = VecDeque::new();
    let mut next_id = 1u64;
    let mut out = BytesMut::with_capacity(64 << 10);
    let mut inbuf = BytesMut::with_capacity(64 << 10);
    let mut open = true;
    // One timer for the connection, moved to the earliest deadline.
    let sleep = tokio::time::sleep(timeout);
    tokio::pin!(sleep);
    let err = loop {
        while let Some(&(_, id)) = deadlines.front() {
            if pending.contains_key(&id) {
                break;
            }
            deadlines.pop_front();
        }
        let next_deadline = deadlines.front().map(|&(at, _)| at);
        if let Some(at) = next_deadline
            && at != sleep.deadline()
        {
            sleep.as_mut().reset(at);
        }
        let room = open && out.len() < (1 << 20);
        tokio::select! {
            req = rx.recv(), if room => {
                let Some(first) = req else {
                    open = false;
                    if out.is_empty() && pending.is_empty() {
                        break None;
                    }
                    continue;
                };
                // Let the other requests of this moment arrive: one write for all of them.
                let mut next = Some(first);
                let mut yielded = false;
                while let Some((mut req, reply)) = next.take() {
                    req.id = next_id;
                    pending.insert(next_id, reply);
                    deadlines.push_back((tokio::time::Instant::now() + timeout, next_id));
                    next_id += 1;
                    protocol::encode_frame(&req, &mut out);
                    if out.len() >= (1 << 20) {
                        break;
                    }
                    if !yielded {
                        tokio::task::yield_now().await;
                        yielded = true;
                    }
                    next = rx.try_recv().ok();
                }
            }
            written = wr.write(&out), if !out.is_empty() => {
                match written {
                    Ok(0) | Err(_) => break Some(ClientError::Disconnected(addr)),
                    Ok(n) => bytes::Buf::advance(&mut out, n),
                }
            }
            read = rd.read_buf(&mut inbuf) => {
                match read {
                    Ok(0) | Err(_) => break Some(ClientError::Disconnected(addr)),
                    Ok(_) => {}
                }
                let mut bad = None;
                loop {
                    match protocol::decode_frame::<Response>(&mut inbuf) {
                        Ok(Some(resp)) => {
                            if let Some(reply) = pending.remove(&resp.id) {
                                reply.send(Ok(resp));
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            debug!(%addr, error = %e, "bad frame from bookie");
                            bad = Some(ClientError::Protocol(addr, e.to_string()));
                            break;
                        }
                    }
                }
                if bad.is_some() {
                    break bad;
                }
                if !open && out.is_empty() && pending.is_empty() {
                    break None;
                }
            }
            () = &mut sleep, if next_deadline.is_some() => {
                let now = tokio::time::Instant::now();
                while let Some(&(at, id)) = deadlines.front() {
                    if at > now {
                        break;
                    }
                    deadlines.pop_front();
                    if let Some(reply) = pending.remove(&id) {
                        reply.send(Err(ClientError::Timeout(addr)));
                    }
                }
            }
        }
    };
    let err = err.unwrap_or(ClientError::Disconnected(addr));
    for (_, reply) in pending.drain() {
        reply.send(Err(err.clone()));
    }
}
