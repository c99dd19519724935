//! Connections to brokers and the pool that shares them.
//!
//! One connection is three parts: the handle (`Connection`) that producers, consumers and
//! lookups share; a writer task that coalesces queued frames into few writes; and a reader
//! task that routes every incoming frame: responses to the request that waits for them,
//! receipts to their producer, messages to their consumer. The reader also keeps the
//! connection alive (PING every `keepalive`, closing when the broker stays silent for two)
//! and answers AUTH_CHALLENGE with fresh credentials. When a connection ends, every waiter
//! learns it at once: pending requests fail and producers and consumers get `Closed`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use magnetar_protocol::proto::{
    self, AuthData, CommandAuthResponse, CommandMessage, CommandSendError, CommandSendReceipt,
    FeatureFlags, base_command::Type,
};
use magnetar_protocol::{BaseCommand, FRAME_PADDING, PROTOCOL_VERSION, commands, frame};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};

pub(crate) const CLIENT_VERSION: &str = concat!("magnetar-rust-", env!("CARGO_PKG_VERSION"));

/// Produces the token sent in CONNECT and in answer to AUTH_CHALLENGE.
#[derive(Clone)]
pub struct Authentication {
    token: Arc<dyn Fn() -> Result<String, String> + Send + Sync>,
}

impl std::fmt::Debug for Authentication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authentication(token)")
    }
}

impl Authentication {
    /// A fixed JWT.
    pub fn token(token: impl Into<String>) -> Authentication {
        let t: String = token.into();
        Authentication {
            token: Arc::new(move || Ok(t.clone())),
        }
    }

    /// A JWT read from a file each time one is needed, so rewriting the file refreshes it.
    pub fn token_file(path: impl Into<std::path::PathBuf>) -> Authentication {
        let p: std::path::PathBuf = path.into();
        Authentication {
            token: Arc::new(move || {
                std::fs::read_to_string(&p)
                    .map(|s| s.trim().to_string())
                    .map_err(|e| format!("cannot read token file {}: {e}", p.display()))
            }),
        }
    }

    /// A JWT from a function called each time one is needed.
    pub fn token_fn(f: impl Fn() -> Result<String, String> + Send + Sync + 'static) -> Self {
        Authentication { token: Arc::new(f) }
    }

    pub(crate) fn current(&self) -> Result<String> {
        (self.token)().map_err(Error::Auth)
    }
}

/// A broker as the client dials it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    /// The broker's own URL (`pulsar://host:port`), as lookups name it.
    pub url: String,
    /// `host:port` to dial: the broker itself, or the proxy in front of it.
    pub addr: String,
    /// Host name for TLS verification.
    pub host: String,
    pub tls: bool,
    /// Dialled through a proxy that forwards to `url`.
    pub proxied: bool,
}

impl Target {
    /// Parses one `pulsar://host[:port]` or `pulsar+ssl://host[:port]`.
    pub(crate) fn parse(url: &str) -> Result<Target> {
        let bad = |why: &str| Error::Invalid(format!("{url:?}: {why}"));
        let (tls, rest) = if let Some(r) = url.strip_prefix("pulsar+ssl://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("pulsar://") {
            (false, r)
        } else {
            return Err(bad("not a pulsar:// or pulsar+ssl:// URL"));
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(bad("expected scheme://host:port"));
        }
        let (host, addr) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                p.parse::<u16>().map_err(|_| bad("bad port"))?;
                (h.trim_matches(['[', ']']).to_string(), rest.to_string())
            }
            _ => {
                let port = if tls { 6651 } else { 6650 };
                (rest.to_string(), format!("{rest}:{port}"))
            }
        };
        Ok(Target {
            url: format!("{}{addr}", if tls { "pulsar+ssl://" } else { "pulsar://" }),
            addr,
            host,
            tls,
            proxied: false,
        })
    }

    /// A service URL: one or more hosts, comma-separated (`pulsar://a:6650,b:6650`).
    pub(crate) fn parse_service(url: &str) -> Result<Vec<Target>> {
        let (scheme, hosts) = url
            .split_once("://")
            .ok_or_else(|| Error::Invalid(format!("{url:?} is not a service URL")))?;
        hosts
            .split(',')
            .map(|h| Target::parse(&format!("{scheme}://{}", h.trim())))
            .collect()
    }
}

/// What a connection needs to know beyond its target.
#[derive(Clone)]
pub(crate) struct Settings {
    pub auth: Option<Authentication>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: Duration,
    pub operation_timeout: Duration,
    pub keepalive: Duration,
}

/// Builds the TLS configuration from a PEM file of certificates to trust.
pub(crate) fn tls_config(trust: &std::path::Path) -> Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let bad = |e: String| Error::Invalid(format!("trust certificates {}: {e}", trust.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(trust).map_err(|e| bad(e.to_string()))? {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

pub(crate) enum ProducerEvent {
    Receipt(CommandSendReceipt),
    Error(CommandSendError),
    /// The broker closed the producer or the connection ended: reconnect.
    Closed,
}

pub(crate) enum ConsumerEvent {
    Message(CommandMessage, Bytes),
    Active(bool),
    EndOfTopic,
    Closed,
}

enum Out {
    Cmd(BaseCommand),
    Msg(BaseCommand, Bytes),
}

struct State {
    addr: String,
    pending: Mutex<HashMap<u64, oneshot::Sender<BaseCommand>>>,
    producers: Mutex<HashMap<u64, mpsc::UnboundedSender<ProducerEvent>>>,
    consumers: Mutex<HashMap<u64, mpsc::UnboundedSender<ConsumerEvent>>>,
    /// Why the connection ended, once it has.
    closed: OnceLock<String>,
    /// The handle is gone: the reader stops.
    shutdown: Notify,
    /// The reader stopped: the writer stops.
    done: Notify,
}

impl State {
    /// Marks the connection ended, then fails everything registered on it. Registration
    /// checks the mark under the same lock this empties, so nothing registers unseen.
    fn close(&self, reason: String) {
        if self.closed.set(reason).is_err() {
            return;
        }
        self.done.notify_one();
        self.pending.lock().clear();
        for (_, p) in self.producers.lock().drain() {
            let _ = p.send(ProducerEvent::Closed);
        }
        for (_, c) in self.consumers.lock().drain() {
            let _ = c.send(ConsumerEvent::Closed);
        }
    }

    fn disconnected(&self) -> Error {
        Error::Disconnected {
            addr: self.addr.clone(),
            reason: self
                .closed
                .get()
                .cloned()
                .unwrap_or_else(|| "connection closed".into()),
        }
    }
}

/// A shared connection to one broker.
pub(crate) struct Connection {
    pub(crate) url: String,
    out: mpsc::UnboundedSender<Out>,
    state: Arc<State>,
    pub(crate) max_message_size: usize,
    operation_timeout: Duration,
    next_request: AtomicU64,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.state.shutdown.notify_one();
    }
}

impl Connection {
    /// Dials, handshakes (CONNECT, with credentials) and starts the reader and writer.
    pub(crate) async fn open(target: &Target, s: &Settings) -> Result<Arc<Connection>> {
        let fail = |message: String| Error::Connect {
            addr: target.url.clone(),
            message,
        };
        let tcp = tokio::time::timeout(s.connect_timeout, TcpStream::connect(&target.addr))
            .await
            .map_err(|_| fail(format!("no answer in {:?}", s.connect_timeout)))?
            .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if target.tls {
            let cfg = s.tls.clone().ok_or_else(|| {
                fail("pulsar+ssl needs trusted certificates (tls_trust_certs)".into())
            })?;
            let name = rustls_pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| fail(format!("bad TLS server name: {e}")))?;
            let tls = tokio::time::timeout(
                s.connect_timeout,
                tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
            )
            .await
            .map_err(|_| fail("TLS handshake timed out".into()))?
            .map_err(|e| fail(format!("TLS handshake: {e}")))?;
            Connection::handshake(tls, target, s).await
        } else {
            Connection::handshake(tcp, target, s).await
        }
    }

    async fn handshake<S>(mut stream: S, target: &Target, s: &Settings) -> Result<Arc<Connection>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let fail = |message: String| Error::Connect {
            addr: target.url.clone(),
            message,
        };
        let mut cmd = commands::connect(CLIENT_VERSION, PROTOCOL_VERSION);
        if let Some(c) = cmd.connect.as_mut() {
            c.feature_flags = Some(FeatureFlags {
                supports_auth_refresh: Some(true),
                ..Default::default()
            });
            if let Some(auth) = &s.auth {
                c.auth_method_name = Some("token".into());
                c.auth_data = Some(Bytes::from(auth.current()?.into_bytes()));
            }
            if target.proxied {
                c.proxy_to_broker_url = Some(
                    target
                        .url
                        .split_once("://")
                        .map_or(target.url.clone(), |(_, a)| a.to_string()),
                );
            }
        }
        let mut buf = BytesMut::with_capacity(64 * 1024);
        frame::encode_command(&cmd, &mut buf);
        stream
            .write_all(&buf)
            .await
            .map_err(|e| fail(e.to_string()))?;
        buf.clear();
        let deadline = Instant::now() + s.connect_timeout;
        let connected = loop {
            match frame::decode_frame(&mut buf, 1 << 20) {
                Ok(Some(f)) => {
                    if let Some(c) = f.command.connected {
                        break c;
                    }
                    if let Some(e) = f.command.error {
                        let err = Error::server(e.error, e.message);
                        return Err(match err.server_code() {
                            Some(proto::ServerError::AuthenticationError) => {
                                Error::Auth(err.to_string())
                            }
                            _ => err,
                        });
                    }
                    return Err(fail(format!(
                        "expected CONNECTED, got {}",
                        commands::type_name(f.command.r#type)
                    )));
                }
                Ok(None) => {}
                Err(e) => return Err(fail(format!("bad frame: {e}"))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.read_buf(&mut buf)).await {
                Err(_) => return Err(fail("no CONNECTED in time".into())),
                Ok(Ok(0)) => {
                    return Err(fail(
                        "the broker closed the connection (refused credentials?)".into(),
                    ));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(fail(e.to_string())),
            }
        };
        let max_message_size = connected
            .max_message_size
            .and_then(|m| usize::try_from(m).ok())
            .filter(|m| *m > 0)
            .unwrap_or(magnetar_protocol::DEFAULT_MAX_MESSAGE_SIZE);
        debug!(broker = %target.url, server = %connected.server_version, "connected");
        let state = Arc::new(State {
            addr: target.url.clone(),
            pending: Mutex::new(HashMap::new()),
            producers: Mutex::new(HashMap::new()),
            consumers: Mutex::new(HashMap::new()),
            closed: OnceLock::new(),
            shutdown: Notify::new(),
            done: Notify::new(),
        });
        let (out, rx) = mpsc::unbounded_channel();
        let (rd, wr) = tokio::io::split(stream);
        tokio::spawn(write_loop(wr, rx, Arc::clone(&state)));
        tokio::spawn(read_loop(
            rd,
            buf,
            Arc::clone(&state),
            out.clone(),
            s.auth.clone(),
            s.keepalive,
            max_message_size + FRAME_PADDING,
        ));
        Ok(Arc::new(Connection {
            url: target.url.clone(),
            out,
            state,
            max_message_size,
            operation_timeout: s.operation_timeout,
            next_request: AtomicU64::new(1),
        }))
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.closed.get().is_some()
    }

    pub(crate) fn request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn send(&self, cmd: BaseCommand) -> Result<()> {
        if self.is_closed() {
            return Err(self.state.disconnected());
        }
        self.out
            .send(Out::Cmd(cmd))
            .map_err(|_| self.state.disconnected())
    }

    pub(crate) fn send_payload(&self, cmd: BaseCommand, entry: Bytes) -> Result<()> {
        if self.is_closed() {
            return Err(self.state.disconnected());
        }
        self.out
            .send(Out::Msg(cmd, entry))
            .map_err(|_| self.state.disconnected())
    }

    /// Sends a request and waits for its answer (an ERROR answer becomes `Err`).
    pub(crate) async fn request(&self, request_id: u64, cmd: BaseCommand) -> Result<BaseCommand> {
        let rx = self.expect(request_id)?;
        self.send(cmd)?;
        self.answer(request_id, rx, Some(self.operation_timeout))
            .await
    }

    /// Registers interest in the answer to `request_id` (before the request goes out).
    pub(crate) fn expect(&self, request_id: u64) -> Result<oneshot::Receiver<BaseCommand>> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.state.pending.lock();
        if self.is_closed() {
            return Err(self.state.disconnected());
        }
        pending.insert(request_id, tx);
        Ok(rx)
    }

    pub(crate) async fn answer(
        &self,
        request_id: u64,
        rx: oneshot::Receiver<BaseCommand>,
        limit: Option<Duration>,
    ) -> Result<BaseCommand> {
        let got = match limit {
            Some(d) => match tokio::time::timeout(d, rx).await {
                Ok(r) => r,
                Err(_) => {
                    self.state.pending.lock().remove(&request_id);
                    return Err(Error::Timeout {
                        operation: "request",
                        after: d,
                    });
                }
            },
            None => rx.await,
        };
        match got {
            Ok(cmd) => refused(cmd),
            Err(_) => Err(self.state.disconnected()),
        }
    }

    pub(crate) fn register_producer(&self, id: u64, tx: mpsc::UnboundedSender<ProducerEvent>) {
        let mut producers = self.state.producers.lock();
        if self.is_closed() {
            let _ = tx.send(ProducerEvent::Closed);
            return;
        }
        producers.insert(id, tx);
    }

    pub(crate) fn register_consumer(&self, id: u64, tx: mpsc::UnboundedSender<ConsumerEvent>) {
        let mut consumers = self.state.consumers.lock();
        if self.is_closed() {
            let _ = tx.send(ConsumerEvent::Closed);
            return;
        }
        consumers.insert(id, tx);
    }

    pub(crate) fn forget_producer(&self, id: u64) {
        self.state.producers.lock().remove(&id);
    }

    pub(crate) fn forget_consumer(&self, id: u64) {
        self.state.consumers.lock().remove(&id);
    }
}

/// Turns the broker's refusals into errors.
fn refused(cmd: BaseCommand) -> Result<BaseCommand> {
    if let Some(e) = &cmd.error {
        return Err(Error::server(e.error, e.message.clone()));
    }
    if let Some(r) = &cmd.partition_metadata_response
        && r.response
            == Some(proto::command_partitioned_topic_metadata_response::LookupType::Failed as i32)
    {
        return Err(Error::server(
            r.error.unwrap_or(0),
            r.message.clone().unwrap_or_default(),
        ));
    }
    if let Some(r) = &cmd.lookup_topic_response
        && r.response == Some(proto::command_lookup_topic_response::LookupType::Failed as i32)
    {
        return Err(Error::server(
            r.error.unwrap_or(0),
            r.message.clone().unwrap_or_default(),
        ));
    }
    if let Some(r) = &cmd.ack_response
        && let Some(code) = r.error
    {
        return Err(Error::server(code, r.message.clone().unwrap_or_default()));
    }
    if let Some(r) = &cmd.get_schema_response
        && let Some(code) = r.error_code
    {
        return Err(Error::server(
            code,
            r.error_message.clone().unwrap_or_default(),
        ));
    }
    Ok(cmd)
}

/// The request id a response answers.
fn answers(c: &BaseCommand) -> Option<u64> {
    c.success
        .as_ref()
        .map(|r| r.request_id)
        .or_else(|| c.error.as_ref().map(|r| r.request_id))
        .or_else(|| c.producer_success.as_ref().map(|r| r.request_id))
        .or_else(|| c.lookup_topic_response.as_ref().map(|r| r.request_id))
        .or_else(|| c.partition_metadata_response.as_ref().map(|r| r.request_id))
        .or_else(|| {
            c.get_last_message_id_response
                .as_ref()
                .map(|r| r.request_id)
        })
        .or_else(|| {
            c.get_topics_of_namespace_response
                .as_ref()
                .map(|r| r.request_id)
        })
        .or_else(|| c.ack_response.as_ref().and_then(|r| r.request_id))
        .or_else(|| c.consumer_stats_response.as_ref().map(|r| r.request_id))
        .or_else(|| c.get_schema_response.as_ref().map(|r| r.request_id))
        .or_else(|| {
            c.get_or_create_schema_response
                .as_ref()
                .map(|r| r.request_id)
        })
}

async fn write_loop(
    mut wr: impl AsyncWrite + Unpin,
    mut rx: mpsc::UnboundedReceiver<Out>,
    state: Arc<State>,
) {
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let encode = |o: Out, buf: &mut BytesMut| match o {
        Out::Cmd(c) => frame::encode_command(&c, buf),
        Out::Msg(c, e) => frame::encode_message(&c, &e, buf),
    };
    loop {
        let first = tokio::select! {
            o = rx.recv() => match o {
                Some(o) => o,
                None => break,
            },
            _ = state.done.notified() => break,
        };
        buf.clear();
        encode(first, &mut buf);
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(o) => encode(o, &mut buf),
                Err(_) => break,
            }
        }
        if wr.write_all(&buf).await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    mut rd: impl AsyncRead + Unpin,
    mut buf: BytesMut,
    state: Arc<State>,
    out: mpsc::UnboundedSender<Out>,
    auth: Option<Authentication>,
    keepalive: Duration,
    max_frame: usize,
) {
    let mut last_heard = Instant::now();
    let mut tick = tokio::time::interval(keepalive);
    tick.tick().await;
    let reason = 'conn: loop {
        loop {
            match frame::decode_frame(&mut buf, max_frame) {
                Ok(Some(f)) => route(f, &state, &out, &auth),
                Ok(None) => break,
                Err(e) => break 'conn format!("bad frame from the broker: {e}"),
            }
        }
        tokio::select! {
            _ = state.shutdown.notified() => break "closed by the client".to_string(),
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => break "closed by the broker".to_string(),
                Ok(_) => last_heard = Instant::now(),
                Err(e) => break format!("read error: {e}"),
            },
            _ = tick.tick() => {
                if last_heard.elapsed() > keepalive * 2 {
                    break format!("the broker was silent for {:?}", last_heard.elapsed());
                }
                let _ = out.send(Out::Cmd(commands::ping()));
            }
        }
    };
    if reason == "closed by the client" {
        debug!(broker = %state.addr, "connection closed");
    } else {
        info!(broker = %state.addr, %reason, "connection lost");
    }
    state.close(reason);
}

fn route(
    f: frame::Frame,
    state: &Arc<State>,
    out: &mpsc::UnboundedSender<Out>,
    auth: &Option<Authentication>,
) {
    let cmd = f.command;
    if cmd.ping.is_some() {
        let _ = out.send(Out::Cmd(commands::pong()));
        return;
    }
    if cmd.pong.is_some() {
        return;
    }
    if let Some(r) = cmd.send_receipt {
        if let Some(p) = state.producers.lock().get(&r.producer_id) {
            let _ = p.send(ProducerEvent::Receipt(r));
        }
        return;
    }
    if let Some(e) = cmd.send_error {
        if let Some(p) = state.producers.lock().get(&e.producer_id) {
            let _ = p.send(ProducerEvent::Error(e));
        }
        return;
    }
    if let Some(m) = cmd.message {
        let payload = f.payload.unwrap_or_default();
        if let Some(c) = state.consumers.lock().get(&m.consumer_id) {
            let _ = c.send(ConsumerEvent::Message(m, payload));
        }
        return;
    }
    if let Some(c) = cmd.close_producer {
        if let Some(p) = state.producers.lock().remove(&c.producer_id) {
            let _ = p.send(ProducerEvent::Closed);
        }
        return;
    }
    if let Some(c) = cmd.close_consumer {
        if let Some(p) = state.consumers.lock().remove(&c.consumer_id) {
            let _ = p.send(ConsumerEvent::Closed);
        }
        return;
    }
    if let Some(a) = cmd.active_consumer_change {
        if let Some(c) = state.consumers.lock().get(&a.consumer_id) {
            let _ = c.send(ConsumerEvent::Active(a.is_active.unwrap_or(false)));
        }
        return;
    }
    if let Some(e) = cmd.reached_end_of_topic {
        if let Some(c) = state.consumers.lock().get(&e.consumer_id) {
            let _ = c.send(ConsumerEvent::EndOfTopic);
        }
        return;
    }
    if cmd.auth_challenge.is_some() {
        let answer = match auth {
            Some(a) => a.current(),
            None => Err(Error::Auth("challenged without credentials".into())),
        };
        match answer {
            Ok(token) => {
                let _ = out.send(Out::Cmd(BaseCommand {
                    r#type: Type::AuthResponse as i32,
                    auth_response: Some(CommandAuthResponse {
                        client_version: Some(CLIENT_VERSION.into()),
                        response: Some(AuthData {
                            auth_method_name: Some("token".into()),
                            auth_data: Some(Bytes::from(token.into_bytes())),
                        }),
                        protocol_version: Some(PROTOCOL_VERSION),
                    }),
                    ..Default::default()
                }));
            }
            Err(e) => warn!(broker = %state.addr, error = %e, "cannot answer the auth challenge"),
        }
        return;
    }
    match answers(&cmd) {
        Some(id) => {
            if let Some(tx) = state.pending.lock().remove(&id) {
                let _ = tx.send(cmd);
            }
        }
        None => debug!(
            broker = %state.addr,
            command = %commands::type_name(cmd.r#type),
            "ignored an unexpected command"
        ),
    }
}

/// One broker's connection; its async lock makes concurrent users wait for one dial.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

/// Connections shared by everything one client does, one per broker.
pub(crate) struct Pool {
    pub(crate) settings: Settings,
    slots: Mutex<HashMap<Target, Slot>>,
}

impl Pool {
    pub(crate) fn new(settings: Settings) -> Pool {
        Pool {
            settings,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The open connection to `target`, dialling it if there is none.
    pub(crate) async fn get(&self, target: &Target) -> Result<Arc<Connection>> {
        let slot = Arc::clone(self.slots.lock().entry(target.clone()).or_default());
        let mut held = slot.lock().await;
        if let Some(c) = held.as_ref()
            && !c.is_closed()
        {
            return Ok(Arc::clone(c));
        }
        let c = Connection::open(target, &self.settings).await?;
        *held = Some(Arc::clone(&c));
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("pulsar://localhost:6650").unwrap();
        assert_eq!((t.addr.as_str(), t.tls), ("localhost:6650", false));
        let t = Target::parse("pulsar+ssl://h").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.host.as_str(), t.tls),
            ("h:6651", "h", true)
        );
        assert_eq!(t.url, "pulsar+ssl://h:6651");
        assert!(Target::parse("http://h:1").is_err());
        assert!(Target::parse("pulsar://h:x").is_err());
        assert!(Target::parse("pulsar://").is_err());
        let v = Target::parse_service("pulsar://a:1,b:2").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].addr, "b:2");
    }
}
