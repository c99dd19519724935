//! A read-through cache of typed records below one path, kept fresh by a watch: for records
//! read on every request and rarely written (policies, ownership).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::records::decode_json;
use crate::{EventKind, MetaStore, MetadataStoreExt, Result, Version, Versioned, Watch};

#[derive(Debug, Clone)]
enum Entry<T> {
    Present(Versioned<Arc<T>>),
    /// Known absent as of this revision (0: read before any change was seen).
    Absent(Version),
}

impl<T> Entry<T> {
    fn version(&self) -> Version {
        match self {
            Entry::Present(v) => v.version,
            Entry::Absent(v) => *v,
        }
    }
}

type Entries<T> = Arc<Mutex<HashMap<String, Entry<T>>>>;

/// Caches records below `path`. A read misses at most once per key; after that, changes
/// arrive through the watch, so a read may briefly return the previous value but never goes
/// backwards in version.
#[derive(Debug)]
pub struct RecordCache<T> {
    store: MetaStore,
    path: String,
    entries: Entries<T>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> Drop for RecordCache<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> RecordCache<T> {
    /// Starts watching `path`; reads of keys outside it are not cached.
    pub async fn new(store: MetaStore, path: &str) -> Result<RecordCache<T>> {
        let watch = store.watch(path).await?;
        let entries: Entries<T> = Arc::default();
        let task = tokio::spawn(follow(
            store.clone(),
            path.to_string(),
            watch,
            Arc::clone(&entries),
        ));
        Ok(RecordCache {
            store,
            path: path.to_string(),
            entries,
            task,
        })
    }

    pub async fn get(&self, key: &str) -> Result<Option<Versioned<Arc<T>>>> {
        if !crate::key::in_subtree(&self.path, key) {
            return Ok(self
                .store
                .get_json::<T>(key)
                .await?
                .map(|v| v.map(Arc::new)));
        }
        if let Some(entry) = self.entries.lock().get(key) {
            return Ok(match entry {
                Entry::Present(v) => Some(v.clone()),
                Entry::Absent(_) => None,
            });
        }
        let loaded = self
            .store
            .get_json::<T>(key)
            .await?
            .map(|v| v.map(Arc::new));
        let entry = match &loaded {
            Some(v) => Entry::Present(v.clone()),
            None => Entry::Absent(0),
        };
        let mut entries = self.entries.lock();
        match entries.get(key) {
            // The watch got there first with something at least as new.
            Some(e) if e.version() >= entry.version() => {}
            _ => {
                entries.insert(key.to_string(), entry);
            }
        }
        Ok(loaded)
    }

    /// Drops every cached entry; the next reads go to the store.
    pub fn invalidate_all(&self) {
        self.entries.lock().clear();
    }
}

async fn follow<T: DeserializeOwned + Send + Sync + 'static>(
    store: MetaStore,
    path: String,
    mut watch: Watch,
    entries: Entries<T>,
) {
    loop {
        while let Some(item) = watch.next().await {
            match item {
                Ok(ev) => {
                    let entry = match (ev.kind, &ev.value) {
                        (EventKind::Deleted, _) | (_, None) => Entry::Absent(ev.version),
                        (_, Some(raw)) => match decode_json::<T>(&ev.key, raw) {
                            Ok(v) => Entry::Present(Versioned {
                                value: Arc::new(v),
                                version: ev.version,
                                owner: None,
                            }),
                            Err(e) => {
                                // Do not serve an old value for a record that changed: let
                                // the next read go to the store and report the corruption.
                                warn!(key = %ev.key, error = %e, "cached record does not decode");
                                entries.lock().remove(&ev.key);
                                continue;
                            }
                        },
                    };
                    let mut map = entries.lock();
                    match map.get(&ev.key) {
                        Some(e) if e.version() >= ev.version => {}
                        // Only keys somebody asked for are kept.
                        None => {}
                        Some(_) => {
                            map.insert(ev.key, entry);
                        }
                    }
                }
                Err(e) => {
                    warn!(path = %path, error = %e, "record cache watch failed; starting over");
                    break;
                }
            }
        }
        // The watch ended: anything cached may be stale. Start a new one, then forget.
        loop {
            match store.watch(&path).await {
                Ok(w) => {
                    watch = w;
                    entries.lock().clear();
                    break;
                }
                Err(e) => {
                    debug!(path = %path, error = %e, "record cache cannot watch yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
