//! A connection to one bookie: requests are pipelined over one TCP stream and matched to
//! responses by id. The ledger client builds quorum writes and recovery on top of this.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::protocol::{self, Op, Request, Response, Status};
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
}

impl ClientError {
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

type Reply = oneshot::Sender<Result<Response, ClientError>>;

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
    Local(Arc<Bookie>),
}

impl BookieClient {
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
        tokio::spawn(run(addr, stream, rx));
        Ok(BookieClient {
            addr,
            transport: Transport::Tcp(tx),
            timeout,
        })
    }

    /// A handle on `bookie`, running in this process and serving `addr` to others.
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
                tx.send((req, reply))
                    .await
                    .map_err(|_| ClientError::Disconnected(self.addr))?;
                tokio::time::timeout(self.timeout, rx)
                    .await
                    .map_err(|_| ClientError::Timeout(self.addr))?
                    .map_err(|_| ClientError::Disconnected(self.addr))??
            }
            Transport::Local(bookie) => tokio::time::timeout(self.timeout, bookie.handle(req))
                .await
                .map_err(|_| ClientError::Timeout(self.addr))?,
        };
        match resp.outcome() {
            Status::Ok => Ok(resp),
            status => Err(ClientError::Status {
                status,
                message: resp.message,
            }),
        }
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

async fn run(addr: SocketAddr, stream: TcpStream, mut rx: mpsc::Receiver<(Request, Reply)>) {
    let (mut rd, mut wr) = stream.into_split();
    let mut pending: HashMap<u64, Reply> = HashMap::new();
    let mut next_id = 1u64;
    let mut out = BytesMut::with_capacity(64 << 10);
    let mut inbuf = BytesMut::with_capacity(64 << 10);
    let err = loop {
        tokio::select! {
            req = rx.recv() => {
                let Some((mut req, reply)) = req else { break None };
                req.id = next_id;
                pending.insert(next_id, reply);
                next_id += 1;
                protocol::encode_frame(&req, &mut out);
                // Let the other requests of this moment arrive: one write for all of them.
                tokio::task::yield_now().await;
                while out.len() < (1 << 20) {
                    match rx.try_recv() {
                        Ok((mut req, reply)) => {
                            req.id = next_id;
                            pending.insert(next_id, reply);
                            next_id += 1;
                            protocol::encode_frame(&req, &mut out);
                        }
                        Err(_) => break,
                    }
                }
                if wr.write_all(&out).await.is_err() {
                    break Some(ClientError::Disconnected(addr));
                }
                out.clear();
            }
            read = rd.read_buf(&mut inbuf) => {
                match read {
                    Ok(0) | Err(_) => break Some(ClientError::Disconnected(addr)),
                    Ok(_) => {}
                }
                loop {
                    match protocol::decode_frame::<Response>(&mut inbuf) {
                        Ok(Some(resp)) => {
                            if let Some(reply) = pending.remove(&resp.id) {
                                let _ = reply.send(Ok(resp));
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            debug!(%addr, error = %e, "bad frame from bookie");
                            for (_, reply) in pending.drain() {
                                let _ = reply.send(Err(ClientError::Protocol(addr, e.to_string())));
                            }
                            return;
                        }
                    }
                }
            }
        }
    };
    let err = err.unwrap_or(ClientError::Disconnected(addr));
    for (_, reply) in pending.drain() {
        let _ = reply.send(Err(err.clone()));
    }
}
