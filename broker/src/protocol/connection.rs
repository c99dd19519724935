//! One client connection: the Pulsar protocol state machine.
//!
//! A reader loop decodes frames and handles commands in order; the writer task (`outbound`)
//! owns the socket's write half. Each producer has a receipt task (`receipts`), so publishing
//! is pipelined while receipts keep their order. A malformed frame closes this connection
//! only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use magnetar_managed_ledger::position::Position;
use magnetar_protocol::commands;
use magnetar_protocol::frame::FrameError;
use magnetar_protocol::proto::command_ack::AckType;
use magnetar_protocol::proto::command_subscribe::{InitialPosition, SubType};
use magnetar_protocol::proto::*;
use magnetar_protocol::{FRAME_PADDING, PROTOCOL_VERSION, entry as pentry, frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::auth::{AuthError, Credentials, Identity};
use crate::authz::TopicOp;
use crate::error::BrokerError;
use crate::names::TopicName;
use crate::protocol::outbound::{ConnTx, write_loop};
use crate::protocol::receipts::{ProducerJob, ReceiptJob, receipts};
use crate::schema;
use crate::service::BrokerService;
use crate::stats::Meter;
use crate::topic::entries::highest_sequence;
use crate::topic::key_shared::KeySharedSpec;
use crate::topic::link::Link;
use crate::topic::producers::{
    Grant, PRODUCER_FENCED, PRODUCER_READY, PRODUCER_WAITING, ProducerInfo, SendCheck,
};
use crate::topic::subscription::{BatchAck, ClientTraits, Consumer, SubscribeError, Subscription};
use crate::topic::{SubscribeOpts, Topic};

pub const SERVER_VERSION: &str = concat!("Magnetar ", env!("CARGO_PKG_VERSION"));

pub(crate) struct ProducerState {
    topic: Arc<Topic>,
    name: String,
    /// The name as the log records it with sequence ids (deduplication).
    seq_name: Arc<str>,
    key: u64,
    /// Waiting, ready or fenced (see `topic::PRODUCER_*`).
    state: Arc<AtomicU8>,
    jobs: mpsc::UnboundedSender<ProducerJob>,
}

pub(crate) struct ConsumerState {
    topic: Arc<Topic>,
    sub: Arc<Subscription>,
    consumer: Arc<Consumer>,
}

pub(crate) struct Connection {
    svc: Arc<BrokerService>,
    tx: ConnTx,
    /// The same queue, as topics hold it.
    link: Link,
    peer: SocketAddr,
    protocol: i32,
    client_version: String,
    /// Who the client authenticated as, and until when (None: authentication is off).
    identity: Option<Identity>,
    /// The verified client certificate's common name (TLS ports).
    cert_role: Option<String>,
    /// The client said it answers AUTH_CHALLENGE.
    refresh_ok: bool,
    /// An AUTH_CHALLENGE is out, unanswered.
    challenged: bool,
    producers: HashMap<u64, ProducerState>,
    consumers: HashMap<u64, ConsumerState>,
}

pub(crate) fn pos(id: &MessageIdData) -> Position {
    Position::new(id.ledger_id, id.entry_id as i64)
}

impl Connection {
    /// Serves one client connection; `cert_role` is the common name of the client
    /// certificate its TLS handshake verified, if any.
    pub(crate) async fn run<R, W>(
        svc: Arc<BrokerService>,
        mut rd: R,
        wr: W,
        peer: SocketAddr,
        cert_role: Option<String>,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = ConnTx::new(
            svc.cfg.max_outbound_bytes_per_connection,
            Arc::clone(&svc.stats.outbound_bytes),
        );
        let writer = tokio::spawn(write_loop(wr, rx));
        svc.stats.connections.fetch_add(1, Ordering::Relaxed);
        svc.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        let mut conn = Connection {
            svc: Arc::clone(&svc),
            link: Arc::new(tx.clone()),
            tx,
            peer,
            protocol: 0,
            client_version: String::new(),
            identity: None,
            cert_role,
            refresh_ok: false,
            challenged: false,
            producers: HashMap::new(),
            consumers: HashMap::new(),
        };
        let reason = conn.read_loop(&mut rd).await;
        debug!(%peer, reason = %reason, "connection closed");
        conn.cleanup();
        conn.tx.close();
        drop(conn);
        let _ = writer.await;
        svc.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }

    async fn read_loop(&mut self, rd: &mut (impl AsyncRead + Unpin)) -> String {
        let max_frame = self.svc.cfg.max_message_size + FRAME_PADDING;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let keepalive = self.svc.cfg.keepalive;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        let mut heard = true;
        let mut ping_out = false;
        let check = self
            .svc
            .cfg
            .auth_refresh_check
            .max(std::time::Duration::from_millis(100));
        let mut auth_tick = tokio::time::interval_at(tokio::time::Instant::now() + check, check);
        let mut connected = false;
        // bytes of an oversized SEND still to be skipped
        let mut discard = 0usize;
        loop {
            // drain complete frames first
            loop {
                if discard > 0 {
                    let n = discard.min(buf.len());
                    buf.advance(n);
                    discard -= n;
                    if discard > 0 {
                        break;
                    }
                }
                match frame::decode_frame(&mut buf, max_frame) {
                    Ok(Some(f)) => {
                        heard = true;
                        ping_out = false;
                        if !connected {
                            match f.command.connect {
                                Some(c) => {
                                    if let Err(reason) = self.handle_connect(c) {
                                        return reason;
                                    }
                                    connected = true;
                                }
                                None => {
                                    return format!(
                                        "first command was {}, not CONNECT",
                                        commands::type_name(f.command.r#type)
                                    );
                                }
                            }
                            continue;
                        }
                        if let Err(reason) = self.handle(f).await {
                            return reason;
                        }
                    }
                    Ok(None) => break,
                    // an oversized SEND is refused and skipped; the connection and the
                    // producer stay usable (Pulsar closes the connection)
                    Err(FrameError::TooLarge { size, .. }) if connected => {
                        match frame::peek_command(&buf) {
                            Ok(None) => break, // the command has not all arrived yet
                            Ok(Some(c)) if c.send.is_some() => {
                                if let Some(s) = c.send {
                                    warn!(peer = %self.peer, producer_id = s.producer_id, size, "message over the size limit refused");
                                    self.tx.send(commands::send_error(
                                        s.producer_id,
                                        s.sequence_id,
                                        ServerError::NotAllowedError,
                                        format!(
                                            "message of {size} bytes exceeds the limit of {} bytes",
                                            self.svc.cfg.max_message_size
                                        ),
                                    ));
                                }
                                discard = 4 + size;
                            }
                            Ok(Some(c)) => {
                                return format!(
                                    "{} frame of {size} bytes is over the limit",
                                    commands::type_name(c.r#type)
                                );
                            }
                            Err(e) => return format!("malformed frame: {e}"),
                        }
                    }
                    Err(e) => {
                        warn!(peer = %self.peer, error = %e, "malformed frame; closing the connection");
                        return format!("malformed frame: {e}");
                    }
                }
            }
            tokio::select! {
                r = rd.read_buf(&mut buf) => match r {
                    Ok(0) => return "peer closed".into(),
                    Ok(_) => {}
                    Err(e) => return format!("read error: {e}"),
                },
                _ = auth_tick.tick(), if self.identity.as_ref().is_some_and(|i| i.expires.is_some()) => {
                    if let Err(reason) = self.check_credentials() {
                        warn!(peer = %self.peer, role = ?self.role(), reason = %reason, "closing the connection");
                        return reason;
                    }
                }
                _ = tick.tick() => {
                    if !heard && ping_out {
                        warn!(peer = %self.peer, "no answer to keepalive ping; closing");
                        return "keepalive timeout".into();
                    }
                    if !connected {
                        return "no CONNECT within the keepalive interval".into();
                    }
                    if !heard {
                        self.tx.send(commands::ping());
                        ping_out = true;
                    }
                    heard = false;
                }
            }
        }
    }

    /// Answers CONNECT; Err (authentication failed) closes the connection after an ERROR.
    fn handle_connect(&mut self, c: CommandConnect) -> Result<(), String> {
        if self.svc.cfg.auth.is_some() {
            let id = self.authenticate(c.auth_method_name.as_deref(), c.auth_data.as_deref())?;
            self.identity = id;
            self.refresh_ok = c
                .feature_flags
                .as_ref()
                .and_then(|f| f.supports_auth_refresh)
                .unwrap_or(false);
        }
        self.protocol = c.protocol_version.unwrap_or(0).min(PROTOCOL_VERSION);
        self.client_version = c.client_version.clone();
        debug!(peer = %self.peer, client = %c.client_version, protocol = self.protocol, "connected");
        let features = FeatureFlags {
            supports_auth_refresh: Some(self.svc.cfg.auth.is_some()),
            supports_broker_entry_metadata: Some(false),
            supports_partial_producer: Some(false),
            supports_topic_watchers: Some(false),
            supports_get_partitioned_metadata_without_auto_creation: Some(true),
        };
        self.tx.send(commands::connected(
            SERVER_VERSION,
            self.protocol,
            self.svc.cfg.max_message_size as i32,
            features,
        ));
        Ok(())
    }

    /// Handles one command; Err closes the connection with that reason.
    async fn handle(&mut self, f: frame::Frame) -> Result<(), String> {
        let c = f.command;
        if let Some(send) = c.send {
            return self.handle_send(send, f.payload).await;
        }
        if let Some(ack) = c.ack {
            self.handle_ack(ack);
        } else if let Some(flow) = c.flow {
            if let Some(cs) = self.consumers.get(&flow.consumer_id) {
                cs.sub.flow(&cs.consumer, flow.message_permits);
            }
        } else if c.ping.is_some() {
            self.tx.send(commands::pong());
        } else if c.pong.is_some() {
        } else if let Some(p) = c.producer {
            self.handle_producer(p).await;
        } else if let Some(s) = c.subscribe {
            self.handle_subscribe(s).await;
        } else if let Some(l) = c.lookup_topic {
            self.handle_lookup(l).await;
        } else if let Some(p) = c.partition_metadata {
            self.handle_partitioned_metadata(p).await;
        } else if let Some(cp) = c.close_producer {
            self.close_producer(cp.producer_id, cp.request_id);
        } else if let Some(cc) = c.close_consumer {
            // answer once the acks it sent are durable: a clean close loses nothing
            let cursor = self
                .consumers
                .get(&cc.consumer_id)
                .map(|cs| Arc::clone(&cs.sub.cursor));
            self.close_consumer(cc.consumer_id);
            let tx = self.tx.clone();
            tokio::spawn(async move {
                if let Some(cursor) = cursor
                    && let Err(e) = cursor.flush().await
                {
                    warn!(cursor = %cursor.name, error = %e, "cursor flush on close failed");
                }
                tx.send(commands::success(cc.request_id));
            });
        } else if let Some(r) = c.redeliver_unacknowledged_messages {
            self.handle_redeliver(r);
        } else if let Some(u) = c.unsubscribe {
            self.handle_unsubscribe(u).await;
        } else if let Some(s) = c.seek {
            self.handle_seek(s).await;
        } else if let Some(g) = c.get_last_message_id {
            self.handle_last_message_id(g).await;
        } else if let Some(g) = c.get_topics_of_namespace {
            self.handle_topics_of_namespace(g).await;
        } else if let Some(g) = c.get_schema {
            self.handle_get_schema(g).await;
        } else if let Some(g) = c.get_or_create_schema {
            self.handle_get_or_create_schema(g).await;
        } else if let Some(s) = c.consumer_stats {
            self.handle_consumer_stats(s);
        } else if let Some(r) = c.auth_response {
            self.handle_auth_response(r)?;
        } else if c.connect.is_some() {
            return Err("second CONNECT on an established connection".into());
        } else {
            self.refuse_unsupported(&c);
        }
        Ok(())
    }

    /// GET_SCHEMA: a version of the topic's schema (the latest unless one is named).
    async fn handle_get_schema(&self, g: magnetar_protocol::proto::CommandGetSchema) {
        let found = async {
            let t = self.parse_topic(&g.topic)?;
            self.svc
                .authorize_topic(self.role(), &t, TopicOp::Lookup)
                .await?;
            let version = match g.schema_version.as_deref() {
                None | Some([]) => None,
                Some(b) => Some(schema::version_of_bytes(b).ok_or_else(|| {
                    BrokerError::InvalidSchema("a schema version is 8 bytes".into())
                })?),
            };
            Ok::<_, BrokerError>((
                t.local.clone(),
                schema::get(&self.svc.meta, &t, version).await?,
            ))
        };
        match found.await {
            Ok((name, Some(v))) => self.tx.send(commands::get_schema_ok(
                g.request_id,
                proto_schema(&name, &v.info),
                schema::version_bytes(v.version),
            )),
            Ok((_, None)) => self.tx.send(commands::schema_not_found(g.request_id)),
            Err(e) => self.tx.send(commands::get_schema_failed(
                g.request_id,
                e.code(),
                e.to_string(),
            )),
        }
    }

    /// GET_OR_CREATE_SCHEMA: the version of a schema, added if new and allowed.
    async fn handle_get_or_create_schema(
        &self,
        g: magnetar_protocol::proto::CommandGetOrCreateSchema,
    ) {
        let version = async {
            let t = self.parse_topic(&g.topic)?;
            self.svc
                .authorize_topic(self.role(), &t, TopicOp::Produce)
                .await?;
            let info = schema_info(Some(&g.schema))?;
            match info {
                Some(info) => self.svc.producer_schema(&t, Some(&info)).await,
                None => Ok(None),
            }
        };
        match version.await {
            Ok(v) => self.tx.send(commands::get_or_create_schema_ok(
                g.request_id,
                v.map(schema::version_bytes).unwrap_or_default(),
            )),
            Err(e) => self.tx.send(commands::get_or_create_schema_failed(
                g.request_id,
                e.code(),
                e.to_string(),
            )),
        }
    }

    /// Answers a command this broker does not serve with an ERROR naming it, so a client
    /// waiting on it fails at once instead of at its timeout.
    fn refuse_unsupported(&self, c: &magnetar_protocol::BaseCommand) {
        let name = commands::type_name(c.r#type);
        let txn = [
            &c.new_txn,
            &c.add_partition_to_txn,
            &c.add_subscription_to_txn,
            &c.end_txn,
            &c.end_txn_on_partition,
            &c.end_txn_on_subscription,
            &c.tc_client_connect_request,
        ];
        let watch = [&c.watch_topic_list, &c.watch_topic_list_close];
        let id_of = |cmds: &[&Option<magnetar_protocol::proto::CommandUnsupportedRequest>]| {
            cmds.iter()
                .find_map(|r| r.as_ref())
                .map(|r| r.request_id.unwrap_or(commands::NO_REQUEST))
        };
        let (request_id, error, why) = if let Some(id) = id_of(&txn) {
            (
                id,
                ServerError::NotAllowedError,
                "transactions are not supported by this broker",
            )
        } else if let Some(id) = id_of(&watch) {
            (
                id,
                ServerError::NotAllowedError,
                "topic list watchers are not supported (CONNECTED says so)",
            )
        } else {
            (
                commands::NO_REQUEST,
                ServerError::UnsupportedVersionError,
                "this broker does not know or serve this command",
            )
        };
        warn!(peer = %self.peer, command = %name, "unsupported command refused");
        self.tx
            .send(commands::error(request_id, error, format!("{name}: {why}")));
    }

    fn role(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.role.as_str())
    }

    /// Who the credentials of CONNECT or AUTH_RESPONSE name. A refusal is answered with
    /// ERROR AuthenticationError; Err is the reason to close the connection.
    fn authenticate(
        &self,
        method: Option<&str>,
        data: Option<&[u8]>,
    ) -> Result<Option<Identity>, String> {
        // no credentials (method absent, empty or "none"): the anonymous role, if any
        let data = String::from_utf8_lossy(data.unwrap_or_default());
        self.svc
            .cfg
            .authenticate(
                Credentials::from_method(method, &data),
                self.cert_role.as_deref(),
            )
            .map_err(|e| self.refuse(e))
    }

    fn refuse(&self, e: AuthError) -> String {
        warn!(peer = %self.peer, error = %e, "authentication failed");
        self.tx.send(commands::error(
            commands::NO_REQUEST,
            ServerError::AuthenticationError,
            format!("Failed to authenticate: {e}"),
        ));
        format!("authentication failed: {e}")
    }

    /// Expired credentials: challenged once if the client can refresh, else (or if the
    /// challenge went unanswered until the next check) the connection closes.
    fn check_credentials(&mut self) -> Result<(), String> {
        if !self.identity.as_ref().is_some_and(Identity::expired) {
            return Ok(());
        }
        if self.challenged {
            return Err("credentials expired and the refresh challenge went unanswered".into());
        }
        if !self.refresh_ok {
            return Err("credentials expired (the client cannot refresh them)".into());
        }
        debug!(peer = %self.peer, "credentials expired; challenging the client");
        self.challenged = true;
        self.tx
            .send(commands::auth_challenge(SERVER_VERSION, self.protocol));
        Ok(())
    }

    /// AUTH_RESPONSE: fresh credentials, which must name the same role.
    fn handle_auth_response(
        &mut self,
        r: magnetar_protocol::proto::CommandAuthResponse,
    ) -> Result<(), String> {
        if self.svc.cfg.auth.is_none() {
            return Ok(()); // nothing to refresh
        }
        let data = r.response.unwrap_or_default();
        // a refresh carries the same method; none at all is no credentials (refused)
        let method = match data.auth_method_name.as_deref() {
            None | Some("") => "token",
            Some(m) => m,
        };
        match self.authenticate(Some(method), data.auth_data.as_deref())? {
            Some(id) if Some(id.role.as_str()) == self.role() => {
                debug!(peer = %self.peer, role = %id.role, "credentials refreshed");
                self.identity = Some(id);
                self.challenged = false;
                Ok(())
            }
            other => {
                let e = AuthError::Invalid(format!(
                    "the refresh names role {:?}, the connection is {:?}",
                    other.map(|i| i.role),
                    self.role()
                ));
                Err(self.refuse(e))
            }
        }
    }

    fn error(&self, request_id: u64, e: BrokerError) {
        self.tx
            .send(commands::error(request_id, e.code(), e.to_string()));
    }

    fn parse_topic(&self, name: &str) -> Result<TopicName, BrokerError> {
        TopicName::parse(name).map_err(|e| BrokerError::InvalidTopicName(e.to_string()))
    }

    async fn handle_lookup(&self, l: CommandLookupTopic) {
        let located = async {
            let t = self.parse_topic(&l.topic)?;
            self.svc
                .authorize_topic(self.role(), &t, TopicOp::Lookup)
                .await?;
            self.svc.locate(&t, l.authoritative.unwrap_or(false)).await
        };
        // the addresses of the listener the client names (its network's)
        let listener = l.advertised_listener_name.as_deref();
        let located = located
            .await
            .and_then(|at| Ok((at.here, at.urls.for_listener(listener)?)));
        match located {
            Ok((true, (url, tls))) => {
                self.tx
                    .send(commands::lookup_connect(l.request_id, &url, tls.as_deref()))
            }
            Ok((false, (url, tls))) => self.tx.send(commands::lookup_redirect(
                l.request_id,
                &url,
                tls.as_deref(),
                true,
            )),
            Err(e) => self.tx.send(commands::lookup_failed(
                l.request_id,
                e.code(),
                e.to_string(),
            )),
        }
    }

    async fn handle_partitioned_metadata(&self, p: CommandPartitionedTopicMetadata) {
        let reply = async {
            let t = self.parse_topic(&p.topic)?;
            self.svc
                .authorize_topic(self.role(), &t, TopicOp::Lookup)
                .await?;
            if let Some(n) = self.svc.partitions(&t).await? {
                return Ok(n);
            }
            if self.svc.topic_exists(&t).await? {
                return Ok(0);
            }
            let auto = if p.metadata_auto_creation_enabled.unwrap_or(true) {
                self.svc.auto_creation(&t).await?
            } else {
                None
            };
            match auto {
                None => Err(BrokerError::TopicNotFound(format!(
                    "Topic {t} does not exist"
                ))),
                // a partition's name is never itself partitioned
                Some(n) if n > 0 && t.partition().is_none() => {
                    self.svc.create_partitioned(&t, n).await
                }
                Some(_) => Ok(0),
            }
        };
        match reply.await {
            Ok(n) => self
                .tx
                .send(commands::partitioned_metadata_ok(p.request_id, n)),
            Err(e) => self.tx.send(commands::partitioned_metadata_failed(
                p.request_id,
                e.code(),
                e.to_string(),
            )),
        }
    }

    async fn handle_topics_of_namespace(&self, g: CommandGetTopicsOfNamespace) {
        let Some((tenant, ns)) = g.namespace.split_once('/') else {
            return self.error(
                g.request_id,
                BrokerError::Metadata("namespace must be tenant/namespace".into()),
            );
        };
        if let Err(e) = self
            .svc
            .authorize_namespace_topics(self.role(), tenant, ns)
            .await
        {
            return self.error(g.request_id, e);
        }
        use magnetar_protocol::proto::command_get_topics_of_namespace::Mode;
        let mode = g
            .mode
            .and_then(|m| Mode::try_from(m).ok())
            .unwrap_or(Mode::Persistent);
        let mut topics = match mode {
            Mode::NonPersistent => Vec::new(),
            _ => match self.svc.namespace_topics(tenant, ns).await {
                Ok(t) => t,
                Err(e) => return self.error(g.request_id, e),
            },
        };
        if mode != Mode::Persistent {
            topics.extend(self.svc.namespace_non_persistent_topics(tenant, ns));
        }
        self.tx
            .send(commands::topics_of_namespace_response(g.request_id, topics));
    }

    async fn handle_producer(&mut self, p: CommandProducer) {
        if let Some(existing) = self.producers.get(&p.producer_id) {
            // idempotent re-create on the same connection
            self.tx
                .send(commands::producer_success(p.request_id, &existing.name, -1));
            return;
        }
        let topic = match self.parse_topic(&p.topic) {
            Ok(t) => t,
            Err(e) => return self.error(p.request_id, e),
        };
        let role = self.role();
        let mut allowed = self
            .svc
            .authorize_topic(role, &topic, TopicOp::Produce)
            .await;
        if allowed.is_ok()
            && let Some(sub) = p.initial_subscription_name.as_deref()
            && !sub.is_empty()
        {
            allowed = self
                .svc
                .authorize_topic(role, &topic, TopicOp::Consume(Some(sub)))
                .await;
        }
        if let Err(e) = allowed {
            warn!(peer = %self.peer, topic = %topic, error = %e, "producer refused");
            return self.error(p.request_id, e);
        }
        let create = match self.svc.may_auto_create(&topic).await {
            Ok(c) => c,
            Err(e) => return self.error(p.request_id, e),
        };
        let topic = match self.svc.topic(&topic, create).await {
            Ok(t) => t,
            Err(e) => return self.error(p.request_id, e),
        };
        // over a backlog quota (checked afresh: housekeeping may not have run yet, and a
        // quota may have been lifted since)
        if let Ok(eff) = self.svc.topic_policies(&topic.name).await {
            if let Err(e) = topic
                .check_backlog_quota(&eff)
                .await
                .map(|s| topic.set_quota(s))
            {
                warn!(topic = %topic.full, error = %e, "backlog quota check failed");
            }
            if let Some(max) = eff.max_producers
                && topic.producers.lock().by_name.len() >= max
            {
                return self.error(
                    p.request_id,
                    BrokerError::ProducerBusy(format!("Topic reached max producers limit ({max})")),
                );
            }
        }
        if let Some(e) = topic.quota_refusal() {
            return self.error(p.request_id, e);
        }
        if topic.ml.terminated().is_some() {
            return self.error(
                p.request_id,
                BrokerError::Terminated(format!("Topic {} was terminated", topic.full)),
            );
        }
        let schema_version = match schema_info(p.schema.as_ref()) {
            Ok(info) => self.svc.producer_schema(&topic.name, info.as_ref()).await,
            Err(e) => Err(e),
        };
        let schema_version = match schema_version {
            Ok(v) => v,
            Err(e) => {
                warn!(topic = %topic.full, error = %e, "producer's schema refused");
                return self.error(p.request_id, e);
            }
        };
        // dead-letter producers ask for a subscription so nothing they write is missed
        if let Some(sub) = p
            .initial_subscription_name
            .as_deref()
            .filter(|s| !s.is_empty())
        {
            let opts = SubscribeOpts {
                durable: true,
                initial_earliest: true,
                start: None,
            };
            if let Err(e) = topic.subscription(sub, SubType::Shared, &opts).await {
                return self.error(p.request_id, e.into());
            }
        }
        let name = match p.producer_name.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => self.svc.producer_name(),
        };
        let meter = Arc::new(Meter::default());
        let access_mode = p
            .producer_access_mode
            .and_then(|m| ProducerAccessMode::try_from(m).ok())
            .unwrap_or(ProducerAccessMode::Shared);
        let key = ProducerInfo::next_key();
        let state = Arc::new(AtomicU8::new(PRODUCER_WAITING));
        let info = ProducerInfo {
            key,
            name: name.clone(),
            producer_id: p.producer_id,
            conn: Arc::clone(&self.link),
            address: self.peer.to_string(),
            connected_since: magnetar_managed_ledger::clock::now_ms().to_string(),
            meter: Arc::clone(&meter),
            access_mode,
            state: Arc::clone(&state),
            schema_version: schema_version.map(schema::version_bytes),
        };
        let grant = match topic.add_producer(info, p.request_id, p.topic_epoch) {
            Ok(g) => g,
            Err(e) => return self.error(p.request_id, e),
        };
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(receipts(
            (p.producer_id, name.clone()),
            Arc::clone(&topic),
            self.tx.clone(),
            rx,
            meter,
        ));
        self.svc.stats.producers.fetch_add(1, Ordering::Relaxed);
        info!(topic = %topic.full, producer = %name, peer = %self.peer, mode = ?access_mode, grant = ?grant, "producer created");
        let (epoch, ready) = match grant {
            Grant::Ready(epoch) => (epoch, true),
            Grant::Waiting => (None, false),
        };
        let last_sequence = topic.ml.producer_sequence(&name).unwrap_or(-1);
        self.tx.send(commands::with_schema_version(
            commands::producer_success_with(p.request_id, &name, last_sequence, epoch, ready),
            schema_version.map(schema::version_bytes),
        ));
        self.producers.insert(
            p.producer_id,
            ProducerState {
                topic,
                seq_name: Arc::from(name.as_str()),
                name,
                key,
                state,
                jobs,
            },
        );
    }

    async fn handle_send(&mut self, s: CommandSend, payload: Option<Bytes>) -> Result<(), String> {
        let Some(ps) = self.producers.get(&s.producer_id) else {
            return Err(format!("SEND for unknown producer {}", s.producer_id));
        };
        let fail = |code: ServerError, msg: String| {
            self.tx.send(commands::send_error(
                s.producer_id,
                s.sequence_id,
                code,
                msg,
            ));
        };
        match ps.state.load(Ordering::Acquire) {
            PRODUCER_READY => {}
            PRODUCER_FENCED => {
                fail(
                    ServerError::ProducerFenced,
                    "producer was fenced by an exclusive producer".into(),
                );
                return Ok(());
            }
            _ => {
                fail(
                    ServerError::NotAllowedError,
                    "producer is waiting for exclusive access".into(),
                );
                return Ok(());
            }
        }
        let Some(payload) = payload else {
            fail(ServerError::UnknownError, "SEND without payload".into());
            return Ok(());
        };
        let raw = match pentry::to_stored(payload) {
            Ok(r) => r,
            Err(e) => {
                warn!(topic = %ps.topic.full, producer = %ps.name, error = %e, "rejected message");
                fail(ServerError::ChecksumError, e.to_string());
                return Ok(());
            }
        };
        // counted from the metadata, not the client's num_messages: chunks count once
        let messages = pentry::peek_counted(&raw).unwrap_or(1);
        let bytes = raw.len();
        // chunks before the last share the message's sequence id: only the last is checked
        let check = if messages == 0 {
            SendCheck::Unchecked
        } else {
            ps.topic.check_send(
                &ps.name,
                highest_sequence(s.sequence_id, s.highest_sequence_id, s.num_messages),
            )
        };
        let record = match check {
            SendCheck::Duplicate(seq) => {
                let _ = ps.jobs.send(ProducerJob::Duplicate {
                    sequence_id: s.sequence_id,
                    highest_sequence_id: s.highest_sequence_id,
                    seq,
                });
                return Ok(());
            }
            SendCheck::New(seq) => Some((Arc::clone(&ps.seq_name), seq)),
            SendCheck::Unchecked => None,
        };
        // room in the topic's in-flight budget; without it this connection waits (stops
        // reading), and its producers slow down
        let permit = ps.topic.publish.admit(bytes).await;
        let wait = match ps.topic.ml.append_start(raw, messages, record).await {
            Ok(w) => w,
            Err(e) => {
                ps.topic.reset_send_check(&ps.name);
                let e = BrokerError::from(e);
                fail(e.code(), e.to_string());
                return Ok(());
            }
        };
        let _ = ps.jobs.send(ProducerJob::Receipt(ReceiptJob {
            sequence_id: s.sequence_id,
            highest_sequence_id: s.highest_sequence_id,
            messages,
            bytes,
            wait,
            _permit: permit,
        }));
        // over the topic's publish rate: stop reading this connection for the debt (as
        // Pulsar pauses the channel), so its producers slow down instead of failing; one
        // pause is at most a second, so keepalives still get through
        if let Some(pause) = ps.topic.publish_limit.charge(messages as u64, bytes as u64) {
            tokio::time::sleep(pause.min(std::time::Duration::from_secs(1))).await;
        }
        Ok(())
    }

    fn close_producer(&mut self, producer_id: u64, request_id: u64) {
        match self.producers.remove(&producer_id) {
            Some(ps) => {
                ps.topic.remove_producer(&ps.name, ps.key);
                self.svc.stats.producers.fetch_sub(1, Ordering::Relaxed);
                // the receipt task answers after the receipts before it
                if ps.jobs.send(ProducerJob::Close(request_id)).is_err() {
                    self.tx.send(commands::success(request_id));
                }
            }
            None => self.tx.send(commands::success(request_id)),
        }
    }

    async fn handle_subscribe(&mut self, s: CommandSubscribe) {
        if let Some(cs) = self.consumers.get(&s.consumer_id) {
            if !cs.consumer.kicked.load(Ordering::Acquire) {
                self.tx.send(commands::success(s.request_id));
                return;
            }
            // closed by the broker (seek): this is the client coming back
            self.consumers.remove(&s.consumer_id);
            self.svc.stats.consumers.fetch_sub(1, Ordering::Relaxed);
        }
        let r = async {
            let t = self.parse_topic(&s.topic)?;
            if s.subscription.is_empty() {
                return Err(BrokerError::Metadata("empty subscription name".into()));
            }
            self.svc
                .authorize_topic(self.role(), &t, TopicOp::Consume(Some(&s.subscription)))
                .await?;
            let create =
                s.force_topic_creation.unwrap_or(true) && self.svc.may_auto_create(&t).await?;
            let topic = self.svc.topic(&t, create).await?;
            let sub_type = SubType::try_from(s.sub_type).map_err(|_| {
                BrokerError::NotAllowed(format!("unknown subscription type {}", s.sub_type))
            })?;
            let key_shared = if sub_type == SubType::KeyShared {
                Some(
                    KeySharedSpec::from_proto(s.key_shared_meta.as_ref())
                        .map_err(BrokerError::ConsumerAssign)?,
                )
            } else {
                None
            };
            let opts = SubscribeOpts {
                durable: s.durable.unwrap_or(true),
                initial_earliest: s.initial_position == Some(InitialPosition::Earliest as i32),
                start: s
                    .start_message_id
                    .as_ref()
                    .map(|m| (m.ledger_id, m.entry_id)),
            };
            let eff = self.svc.topic_policies(&topic.name).await?;
            if !topic.admit_subscribe(&self.peer.ip().to_string(), eff.subscribe_rate) {
                return Err(BrokerError::TooManyRequests(
                    "Too many subscribe requests from this client; try again later".into(),
                ));
            }
            if opts.durable
                && !eff.auto_subscription_creation
                && !topic.subscriptions.lock().contains_key(&s.subscription)
            {
                return Err(BrokerError::SubscriptionNotFound(format!(
                    "Subscription {} does not exist and the namespace does not create subscriptions",
                    s.subscription
                )));
            }
            // limits are checked before the subscription is made, so a refusal leaves none
            let (on_topic, on_sub) = {
                let subs = topic.subscriptions.lock();
                let on_sub = subs.get(&s.subscription).map_or(0, |x| x.consumers().len());
                (
                    subs.values().map(|x| x.consumers().len()).sum::<usize>(),
                    on_sub,
                )
            };
            if let Some(max) = eff.max_consumers
                && on_topic >= max
            {
                return Err(BrokerError::ConsumerBusy(format!(
                    "Topic reached max consumers limit ({max})"
                )));
            }
            if let Some(max) = eff.max_consumers_per_subscription
                && on_sub >= max
            {
                return Err(BrokerError::ConsumerBusy(format!(
                    "Subscription reached max consumers limit ({max})"
                )));
            }
            // a consumer's schema must be one it can read the topic's data with
            if let Some(info) = schema_info(s.schema.as_ref())?
                && info.kind != schema::SchemaType::AutoConsume
            {
                self.svc.consumer_schema(&topic.name, &info).await?;
            }
            let sub = topic.subscription(&s.subscription, sub_type, &opts).await?;
            let name = s
                .consumer_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("consumer-{}", s.consumer_id));
            let consumer = Consumer::new(
                s.consumer_id,
                name,
                s.priority_level.unwrap_or(0),
                Arc::clone(&self.link),
                ClientTraits {
                    protocol: self.protocol,
                    close_after_seek: !self.client_version.starts_with("pulsar-rs"),
                    end_of_topic: !self.client_version.starts_with("Pulsar-CPP"),
                },
                topic.partition,
                self.peer.to_string(),
            );
            let read_compacted = s.read_compacted.unwrap_or(false);
            if read_compacted && !matches!(sub_type, SubType::Exclusive | SubType::Failover) {
                return Err(BrokerError::NotAllowed(
                    "reading the compacted view needs an Exclusive or Failover subscription".into(),
                ));
            }
            sub.add_consumer(
                Arc::clone(&consumer),
                sub_type,
                key_shared.as_ref(),
                read_compacted,
            )
            .map_err(|e| match e {
                SubscribeError::Closed => BrokerError::NotReady(e.to_string()),
                SubscribeError::KeySharedAssign(m) => BrokerError::ConsumerAssign(m),
                _ => BrokerError::ConsumerBusy(e.to_string()),
            })?;
            Ok((topic, sub, consumer))
        };
        match r.await {
            Ok((topic, sub, consumer)) => {
                info!(topic = %topic.full, subscription = %sub.name, consumer = %consumer.name, "consumer subscribed");
                self.svc.stats.consumers.fetch_add(1, Ordering::Relaxed);
                self.consumers.insert(
                    s.consumer_id,
                    ConsumerState {
                        topic,
                        sub,
                        consumer,
                    },
                );
                self.tx.send(commands::success(s.request_id));
            }
            Err(e) => self.error(s.request_id, e),
        }
    }

    fn close_consumer(&mut self, consumer_id: u64) {
        let Some(cs) = self.consumers.remove(&consumer_id) else {
            return;
        };
        self.svc.stats.consumers.fetch_sub(1, Ordering::Relaxed);
        if cs.consumer.kicked.load(Ordering::Acquire) {
            return;
        }
        let left = cs.sub.remove_consumer(cs.consumer.key);
        if left == 0 && !cs.sub.cursor.is_durable() {
            let topic = cs.topic;
            let name = cs.sub.name.clone();
            tokio::spawn(async move {
                let _ = topic.remove_subscription(&name).await;
            });
        }
    }

    fn handle_ack(&mut self, a: CommandAck) {
        let Some(cs) = self.consumers.get(&a.consumer_id) else {
            return;
        };
        if cs.consumer.kicked.load(Ordering::Acquire) {
            // acks a client flushes after a seek detached it refer to the old position
            return;
        }
        let sub = Arc::clone(&cs.sub);
        cs.consumer.acks.record(a.message_id.len() as u64, 0);
        cs.sub.progressed(&cs.consumer);
        let index = |id: &MessageIdData| id.batch_index.and_then(|b| usize::try_from(b).ok());
        let seq = if a.ack_type == AckType::Cumulative as i32 {
            let Some(id) = a.message_id.first() else {
                return;
            };
            sub.ack_cumulative_at(pos(id), index(id), id.batch_size)
        } else {
            let mut whole = Vec::new();
            let mut seq = 0;
            for id in &a.message_id {
                let p = pos(id);
                if !id.ack_set.is_empty() {
                    seq = sub.ack_batch(p, id.batch_size, BatchAck::Set(&id.ack_set));
                } else if let Some(i) = index(id) {
                    seq = sub.ack_batch(p, id.batch_size, BatchAck::Index(i));
                } else {
                    whole.push(p);
                }
            }
            if !whole.is_empty() {
                seq = sub.ack_individual(&whole);
            }
            seq
        };
        if let Some(request_id) = a.request_id {
            let tx = self.tx.clone();
            let consumer_id = a.consumer_id;
            let cursor = Arc::clone(&sub.cursor);
            tokio::spawn(async move {
                match cursor.persisted(seq).await {
                    Ok(()) => tx.send(commands::ack_response(consumer_id, request_id)),
                    Err(e) => {
                        let mut r = commands::ack_response(consumer_id, request_id);
                        if let Some(ar) = r.ack_response.as_mut() {
                            ar.error = Some(ServerError::MetadataError as i32);
                            ar.message = Some(e);
                        }
                        tx.send(r);
                    }
                }
            });
        }
    }

    fn handle_redeliver(&mut self, r: CommandRedeliverUnacknowledgedMessages) {
        let Some(cs) = self.consumers.get(&r.consumer_id) else {
            return;
        };
        // Pulsar honours the ids only on Shared/Key_Shared and otherwise rewinds everything;
        // clients that name ids (the Rust crate on every type) want just those back.
        if !r.message_ids.is_empty() {
            let ps: Vec<Position> = r.message_ids.iter().map(pos).collect();
            cs.sub.redeliver(cs.consumer.key, Some(&ps));
        } else {
            cs.sub.redeliver(cs.consumer.key, None);
        }
    }

    async fn handle_unsubscribe(&mut self, u: CommandUnsubscribe) {
        let Some(cs) = self.consumers.get(&u.consumer_id) else {
            return self.error(
                u.request_id,
                BrokerError::Metadata("Consumer not found".into()),
            );
        };
        let others = cs.sub.consumers().iter().any(|c| c.key != cs.consumer.key);
        if others && !u.force.unwrap_or(false) {
            return self.error(
                u.request_id,
                BrokerError::ConsumerBusy("Subscription has other connected consumers".into()),
            );
        }
        let topic = Arc::clone(&cs.topic);
        let name = cs.sub.name.clone();
        if let Some(cs) = self.consumers.remove(&u.consumer_id) {
            cs.sub.remove_consumer(cs.consumer.key);
            self.svc.stats.consumers.fetch_sub(1, Ordering::Relaxed);
        }
        match topic.remove_subscription(&name).await {
            Ok(()) => {
                info!(topic = %topic.full, subscription = %name, "unsubscribed");
                self.tx.send(commands::success(u.request_id));
            }
            Err(e) => self.error(u.request_id, e.into()),
        }
    }

    async fn handle_seek(&mut self, s: CommandSeek) {
        let Some(cs) = self.consumers.get(&s.consumer_id) else {
            return self.error(
                s.request_id,
                BrokerError::Metadata("Consumer not found".into()),
            );
        };
        let ml = &cs.topic.ml;
        let md = if let Some(id) = &s.message_id {
            if id.ledger_id == u64::MAX || id.entry_id == u64::MAX {
                ml.before_first()
            } else if id.ledger_id >= i64::MAX as u64 {
                ml.last_confirmed()
            } else {
                ml.start_before(pos(id))
            }
        } else if let Some(ts) = s.message_publish_time {
            match ml.start_before_time(ts, 0).await {
                Ok(p) => p,
                Err(e) => {
                    return self.error(s.request_id, BrokerError::Unknown(e.to_string()));
                }
            }
        } else {
            return self.error(
                s.request_id,
                BrokerError::Metadata(
                    "Message id and message publish time were not present".into(),
                ),
            );
        };
        let detached = cs.sub.detach_consumers();
        let seq = cs.sub.reset(md);
        if let Err(e) = cs.sub.cursor.persisted(seq).await {
            return self.error(s.request_id, BrokerError::Unknown(e));
        }
        info!(topic = %cs.topic.full, subscription = %cs.sub.name, mark_delete = %md, "subscription reset");
        // As Pulsar does, the consumers are closed so they subscribe again, dropping what they
        // prefetched, and before the seek is answered: the C++ client (and Python's) takes
        // the seek's target as its start position only when the answer finds it reconnecting;
        // answered first, it kept the start of an earlier seek by id and dropped everything
        // before it. The Rust crate instead replaces its consumer itself after a seek and
        // mishandles a close arriving meanwhile, so its consumers are only detached here.
        for c in detached {
            if c.close_after_seek {
                c.conn.send(commands::close_consumer(c.consumer_id));
            }
        }
        self.tx.send(commands::success(s.request_id));
    }

    async fn handle_last_message_id(&self, g: CommandGetLastMessageId) {
        let Some(cs) = self.consumers.get(&g.consumer_id) else {
            return self.error(
                g.request_id,
                BrokerError::ConsumerNotFound("Consumer not found".into()),
            );
        };
        let ml = &cs.topic.ml;
        let last = ml.last_confirmed();
        let partition = Some(cs.topic.partition);
        let mut id = if last.entry < 0 {
            MessageIdData {
                ledger_id: u64::MAX,
                entry_id: u64::MAX,
                ..Default::default()
            }
        } else {
            commands::message_id(last.ledger, last.entry as u64)
        };
        id.partition = partition;
        if last.entry >= 0 {
            let bi = match ml.read(last).await {
                Ok(d) => pentry::peek_metadata(&d)
                    .ok()
                    .and_then(|m| m.num_messages_in_batch)
                    .map_or(-1, |n| n - 1),
                Err(_) => -1,
            };
            id.batch_index = Some(bi);
        }
        let md = cs.sub.cursor.mark_delete();
        let mut mdid = commands::message_id(md.ledger, md.entry.max(0) as u64);
        if md.entry < 0 {
            mdid.entry_id = u64::MAX;
        }
        mdid.partition = partition;
        self.tx.send(commands::last_message_id_response(
            g.request_id,
            id,
            Some(mdid),
        ));
    }

    fn handle_consumer_stats(&self, s: CommandConsumerStats) {
        let Some(cs) = self.consumers.get(&s.consumer_id) else {
            return self.tx.send(commands::consumer_stats_error(
                s.request_id,
                ServerError::ConsumerNotFound,
                "Consumer not found",
            ));
        };
        let c = &cs.consumer;
        let (permits, unacked) = cs.sub.consumer_counts(c);
        let stats = CommandConsumerStatsResponse {
            request_id: s.request_id,
            consumer_name: Some(c.name.clone()),
            available_permits: Some(permits.max(0) as u64),
            unacked_messages: Some(unacked.max(0) as u64),
            blocked_consumer_on_unacked_msgs: Some(false),
            address: Some(c.address.clone()),
            connected_since: Some(c.connected_since.clone()),
            r#type: Some(format!("{:?}", cs.sub.sub_type())),
            msg_rate_out: Some(c.out.rates().0),
            msg_throughput_out: Some(c.out.rates().1),
            msg_rate_redeliver: Some(cs.sub.redelivered.rates().0),
            msg_rate_expired: Some(0.0),
            message_ack_rate: Some(c.acks.rates().0),
            msg_backlog: Some(0),
            ..Default::default()
        };
        let (tx, sub, request_id) = (self.tx.clone(), Arc::clone(&cs.sub), s.request_id);
        tokio::spawn(async move {
            let mut stats = stats;
            stats.msg_backlog = Some(sub.backlog().await);
            tx.send(commands::consumer_stats_response(request_id, stats));
        });
    }

    fn cleanup(&mut self) {
        let ids: Vec<u64> = self.producers.keys().copied().collect();
        for id in ids {
            if let Some(ps) = self.producers.remove(&id) {
                ps.topic.remove_producer(&ps.name, ps.key);
                self.svc.stats.producers.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let ids: Vec<u64> = self.consumers.keys().copied().collect();
        for id in ids {
            self.close_consumer(id);
        }
    }
}

/// A schema as a client declared it; None for none (no schema, or type NONE: bytes).
fn schema_info(
    s: Option<&magnetar_protocol::proto::Schema>,
) -> Result<Option<schema::SchemaInfo>, BrokerError> {
    let Some(s) = s else { return Ok(None) };
    let kind = schema::SchemaType::from_proto(s.r#type)
        .ok_or_else(|| BrokerError::InvalidSchema(format!("unknown schema type {}", s.r#type)))?;
    if kind == schema::SchemaType::None {
        return Ok(None);
    }
    Ok(Some(schema::SchemaInfo {
        kind,
        data: s.schema_data.to_vec(),
        properties: s
            .properties
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
    }))
}

/// A stored schema as the protocol carries it.
fn proto_schema(name: &str, info: &schema::SchemaInfo) -> magnetar_protocol::proto::Schema {
    magnetar_protocol::proto::Schema {
        name: name.to_string(),
        schema_data: info.data.clone().into(),
        r#type: info.kind.to_proto(),
        properties: info
            .properties
            .iter()
            .map(|(k, v)| magnetar_protocol::proto::KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
    }
}
