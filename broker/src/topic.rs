//! A persistent topic: its managed ledger, producers and subscriptions.

use std::collections::HashMap;
use std::sync::Arc;

use magnetar_meta::MetaStore;
use magnetar_protocol::proto::command_subscribe::SubType;
use parking_lot::Mutex;
use tracing::{info, warn};

use crate::connection::ConnTx;
use crate::cursor::Cursor;
use crate::managed_ledger::{ManagedLedger, MlError};
use crate::names::TopicName;
use crate::position::Position;
use crate::stats::Meter;
use crate::subscription::{DispatchConfig, Subscription};

#[derive(Debug, Clone)]
pub struct ProducerInfo {
    pub name: String,
    pub producer_id: u64,
    pub conn: ConnTx,
    pub address: String,
    pub connected_since: String,
    pub meter: Arc<Meter>,
}

pub struct Topic {
    pub name: TopicName,
    pub full: String,
    pub ml: ManagedLedger,
    meta: MetaStore,
    /// Producers by name (a name is connected at most once).
    pub producers: Mutex<HashMap<String, ProducerInfo>>,
    pub subscriptions: Mutex<HashMap<String, Arc<Subscription>>>,
    /// Serialises subscription creation, which awaits meta.
    sub_lock: tokio::sync::Mutex<()>,
    /// Messages and bytes published.
    pub input: Meter,
    pub partition: i32,
    dispatch: DispatchConfig,
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic").field("name", &self.full).finish()
    }
}

pub struct SubscribeOpts {
    pub durable: bool,
    pub initial_earliest: bool,
    /// For non-durable subscriptions: start delivering at this entry (inclusive).
    pub start: Option<(u64, u64)>,
}

impl Topic {
    /// Loads the topic's durable subscriptions along with it.
    pub async fn load(
        name: TopicName,
        ml: ManagedLedger,
        meta: MetaStore,
        dispatch: DispatchConfig,
    ) -> Result<Arc<Topic>, MlError> {
        let partition = name.partition().map_or(-1, |p| p as i32);
        let t = Arc::new(Topic {
            full: name.to_string(),
            name,
            ml,
            meta,
            producers: Mutex::default(),
            subscriptions: Mutex::default(),
            sub_lock: tokio::sync::Mutex::new(()),
            input: Meter::default(),
            partition,
            dispatch,
        });
        let path = t.name.path();
        let names = t
            .meta
            .children(&format!("/cursors/{path}"))
            .await
            .map_err(MlError::from)?;
        for sub in names {
            let cursor = Cursor::open_durable(
                t.ml.clone(),
                t.meta.clone(),
                &path,
                &sub,
                t.ml.last_confirmed(),
            )
            .await
            .map_err(MlError::from)?;
            let s = Subscription::new(
                &sub,
                SubType::Exclusive,
                cursor,
                t.ml.clone(),
                t.dispatch.clone(),
            );
            t.subscriptions.lock().insert(sub, s);
        }
        Ok(t)
    }

    /// Finds or creates the subscription a SUBSCRIBE names.
    pub async fn subscription(
        &self,
        name: &str,
        sub_type: SubType,
        opts: &SubscribeOpts,
    ) -> Result<Arc<Subscription>, MlError> {
        let _serial = self.sub_lock.lock().await;
        if let Some(s) = self.subscriptions.lock().get(name).cloned()
            && !s.is_closed()
        {
            return Ok(s);
        }
        let initial = if opts.initial_earliest {
            self.ml.before_first()
        } else {
            self.ml.last_confirmed()
        };
        let cursor = if opts.durable {
            Cursor::open_durable(
                self.ml.clone(),
                self.meta.clone(),
                &self.name.path(),
                name,
                initial,
            )
            .await?
        } else {
            let md = match opts.start {
                // earliest
                Some((l, e)) if l == u64::MAX || e == u64::MAX => self.ml.before_first(),
                // latest
                Some((l, e)) if l >= i64::MAX as u64 || e >= i64::MAX as u64 => {
                    self.ml.last_confirmed()
                }
                // deliver from (l, e) inclusive
                Some((l, e)) => self
                    .ml
                    .at_or_after(Position::new(l, e as i64))
                    .map(|p| self.ml.previous_position(p))
                    .unwrap_or_else(|| self.ml.last_confirmed()),
                None => initial,
            };
            Cursor::non_durable(self.ml.clone(), self.meta.clone(), name, md)
        };
        let s = Subscription::new(
            name,
            sub_type,
            cursor,
            self.ml.clone(),
            self.dispatch.clone(),
        );
        self.subscriptions
            .lock()
            .insert(name.to_string(), Arc::clone(&s));
        info!(topic = %self.full, subscription = name, durable = opts.durable, "subscription created");
        Ok(s)
    }

    /// Drops a subscription (and its durable cursor).
    pub async fn remove_subscription(&self, name: &str) -> Result<(), MlError> {
        let s = self.subscriptions.lock().remove(name);
        if let Some(s) = s {
            s.close();
            s.cursor.delete().await.map_err(MlError::from)?;
        }
        Ok(())
    }

    /// The lowest mark-delete position of the durable subscriptions.
    pub fn slowest_cursor(&self) -> Option<Position> {
        self.subscriptions
            .lock()
            .values()
            .filter(|s| s.cursor.is_durable())
            .map(|s| s.cursor.mark_delete())
            .min()
    }

    pub fn record_publish(&self, messages: u32, bytes: usize) {
        self.input.record(messages as u64, bytes as u64);
    }

    /// Recomputes every rate of this topic, its producers, subscriptions and consumers.
    pub fn update_rates(&self) {
        let now = std::time::Instant::now();
        self.input.tick(now);
        for p in self.producers.lock().values() {
            p.meter.tick(now);
        }
        for s in self.subscriptions.lock().values() {
            s.tick(now);
        }
    }

    /// (msg/s in, bytes/s in, msg/s out, bytes/s out) over the last interval.
    pub fn rates(&self) -> (f64, f64, f64, f64) {
        let (mi, bi) = self.input.rates();
        let (mut mo, mut bo) = (0.0, 0.0);
        for s in self.subscriptions.lock().values() {
            let (m, b) = s.out.rates();
            mo += m;
            bo += b;
        }
        (mi, bi, mo, bo)
    }

    /// (messages, bytes) delivered over all subscriptions.
    pub fn out_totals(&self) -> (u64, u64) {
        self.subscriptions
            .lock()
            .values()
            .map(|s| s.out.totals())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Flushes cursors and seals the log (clean shutdown or unload).
    pub async fn close(&self) {
        let subs: Vec<Arc<Subscription>> = self.subscriptions.lock().values().cloned().collect();
        for s in subs {
            for c in s.consumers() {
                c.conn
                    .send(magnetar_protocol::commands::close_consumer(c.consumer_id));
            }
            if let Err(e) = s.cursor.flush().await {
                warn!(topic = %self.full, subscription = %s.name, error = %e, "cursor flush failed");
            }
            s.close();
        }
        for p in self.producers.lock().values() {
            p.conn
                .send(magnetar_protocol::commands::close_producer(p.producer_id));
        }
        if let Err(e) = self.ml.close().await {
            warn!(topic = %self.full, error = %e, "closing the log failed");
        }
    }
}
