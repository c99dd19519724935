//! A persistent topic: its managed ledger, producers and subscriptions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use magnetar_meta::MetaStore;
use magnetar_protocol::proto::command_subscribe::SubType;
use parking_lot::Mutex;
use tracing::{info, warn};

use crate::connection::ConnTx;
use crate::cursor::Cursor;
use crate::managed_ledger::{ManagedLedger, MlError};
use crate::names::TopicName;
use crate::position::Position;
use crate::subscription::Subscription;

#[derive(Debug, Clone)]
pub struct ProducerInfo {
    pub name: String,
    pub producer_id: u64,
    pub conn: ConnTx,
    pub address: String,
    pub connected_since: String,
    pub msg_in: Arc<AtomicU64>,
    pub bytes_in: Arc<AtomicU64>,
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
    pub msg_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub partition: i32,
    rates: Mutex<Rates>,
}

/// Counters at the last rate update, and the rates derived from them.
#[derive(Default)]
struct Rates {
    at: Option<std::time::Instant>,
    counters: [u64; 4],
    rates: [f64; 4],
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
            msg_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            partition,
            rates: Mutex::default(),
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
            let s = Subscription::new(&sub, SubType::Exclusive, cursor, t.ml.clone());
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
        let s = Subscription::new(name, sub_type, cursor, self.ml.clone());
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
        self.msg_in.fetch_add(messages as u64, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn counters(&self) -> [u64; 4] {
        let (mut mo, mut bo) = (0, 0);
        for s in self.subscriptions.lock().values() {
            mo += s.msg_out.load(Ordering::Relaxed);
            bo += s.bytes_out.load(Ordering::Relaxed);
        }
        [
            self.msg_in.load(Ordering::Relaxed),
            self.bytes_in.load(Ordering::Relaxed),
            mo,
            bo,
        ]
    }

    /// Recomputes the rates from the counters (called periodically).
    pub fn update_rates(&self) {
        let now = std::time::Instant::now();
        let c = self.counters();
        let mut r = self.rates.lock();
        if let Some(at) = r.at {
            let secs = now.duration_since(at).as_secs_f64().max(0.001);
            let prev = r.counters;
            for (rate, (now, before)) in r.rates.iter_mut().zip(c.iter().zip(prev)) {
                *rate = now.saturating_sub(before) as f64 / secs;
            }
        }
        r.at = Some(now);
        r.counters = c;
    }

    /// (msg/s in, bytes/s in, msg/s out, bytes/s out) over the last interval.
    pub fn rates(&self) -> (f64, f64, f64, f64) {
        let r = self.rates.lock().rates;
        (r[0], r[1], r[2], r[3])
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
