//! The in-memory backend: for unit tests and single-process tools. Nothing survives the
//! process.

use std::collections::BTreeMap;

use parking_lot::RwLock;

use crate::Result;
use crate::local::{Backing, LocalStore, Record, Seek};
use crate::{SessionId, Version};

#[derive(Default)]
pub(crate) struct MemBacking {
    records: RwLock<BTreeMap<String, Record>>,
}

impl Backing for MemBacking {
    const READS_MAY_BLOCK: bool = false;

    fn revision(&self) -> Result<Version> {
        Ok(0)
    }

    fn get(&self, key: &str) -> Result<Option<Record>> {
        Ok(self.records.read().get(key).cloned())
    }

    fn scan(&self, start: &str, visit: &mut dyn FnMut(&str, SessionId) -> Seek) -> Result<()> {
        let records = self.records.read();
        let mut cursor = start.to_string();
        let mut iter = records.range(cursor.clone()..);
        loop {
            let Some((key, record)) = iter.next() else {
                return Ok(());
            };
            match visit(key, record.session) {
                Seek::Next => {}
                Seek::Stop => return Ok(()),
                Seek::To(next) => {
                    cursor = next;
                    iter = records.range(cursor.clone()..);
                }
            }
        }
    }

    fn commit(&self, _revision: Version, writes: &BTreeMap<String, Option<Record>>) -> Result<()> {
        let mut records = self.records.write();
        for (key, record) in writes {
            match record {
                Some(r) => records.insert(key.clone(), r.clone()),
                None => records.remove(key),
            };
        }
        Ok(())
    }
}

/// A metadata store held in this process's memory.
#[derive(Debug)]
pub struct MemoryStore(LocalStore<MemBacking>);

impl MemoryStore {
    pub fn new() -> Result<MemoryStore> {
        LocalStore::start("memory", MemBacking::default()).map(MemoryStore)
    }
}

crate::local::forward_store!(MemoryStore);
