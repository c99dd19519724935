//! Ledgers on bookies, through the ledger client: quorum writes, fencing, recovery and
//! ensemble changes all happen below this seam.

use std::sync::Arc;

use bytes::Bytes;
use magnetar_bookie::ledger::{LedgerClient, LedgerError, LedgerReader, LedgerWriter};
use magnetar_bookie::placement::Affinity;

use super::{AppendFuture, Ledger, LedgerStorage, Placement, StorageError, StorageFuture};

impl From<LedgerError> for StorageError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::NoSuchLedger(id) => StorageError::NoSuchLedger(id),
            LedgerError::Fenced(id) => StorageError::Fenced(id),
            LedgerError::Closed(id) => StorageError::Closed(id),
            // bookies may come back, or be added to the group
            e @ LedgerError::NotEnoughBookies { .. } => StorageError::Unavailable(e.to_string()),
            e @ LedgerError::Overloaded { .. } => StorageError::Overloaded(e.to_string()),
            e => StorageError::Failed(e.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BookieStorage {
    client: LedgerClient,
}

impl BookieStorage {
    pub fn new(client: LedgerClient) -> BookieStorage {
        BookieStorage { client }
    }

    pub fn client(&self) -> &LedgerClient {
        &self.client
    }
}

impl LedgerStorage for BookieStorage {
    fn create(&self, p: &Placement) -> StorageFuture<'_, Arc<dyn Ledger>> {
        let p = p.clone();
        Box::pin(async move {
            let w = self
                .client
                .create_with(p.ensemble_size, p.write_quorum, p.ack_quorum, p.affinity)
                .await?;
            Ok(Arc::new(BookieLedger::Writer(w)) as Arc<dyn Ledger>)
        })
    }

    fn open(&self, id: u64) -> StorageFuture<'_, Arc<dyn Ledger>> {
        Box::pin(async move {
            let r = self.client.open_closed(id).await?;
            Ok(Arc::new(BookieLedger::Reader(r)) as Arc<dyn Ledger>)
        })
    }

    fn recover(&self, id: u64) -> StorageFuture<'_, i64> {
        Box::pin(async move { Ok(self.client.open_for_recovery(id).await?.last_entry()) })
    }

    fn delete(&self, id: u64) -> StorageFuture<'_, ()> {
        Box::pin(async move { Ok(self.client.delete(id).await?) })
    }
}

#[derive(Debug)]
enum BookieLedger {
    Writer(LedgerWriter),
    Reader(LedgerReader),
}

impl Ledger for BookieLedger {
    fn id(&self) -> u64 {
        match self {
            BookieLedger::Writer(w) => w.id(),
            BookieLedger::Reader(r) => r.id(),
        }
    }

    fn affinity(&self) -> Option<Affinity> {
        match self {
            BookieLedger::Writer(w) => w.metadata().affinity,
            BookieLedger::Reader(r) => r.metadata().affinity.clone(),
        }
    }

    fn last_entry(&self) -> i64 {
        match self {
            BookieLedger::Writer(w) => w.last_confirmed(),
            BookieLedger::Reader(r) => r.last_entry(),
        }
    }

    fn submit(&self, data: Bytes) -> Result<AppendFuture, StorageError> {
        match self {
            BookieLedger::Writer(w) => {
                let fut = w.submit(data)?;
                Ok(Box::pin(async move { Ok(fut.await?) }))
            }
            BookieLedger::Reader(r) => Err(StorageError::Closed(r.id())),
        }
    }

    fn read(&self, entry: u64) -> StorageFuture<'_, Bytes> {
        Box::pin(async move {
            Ok(match self {
                BookieLedger::Writer(w) => w.reader().read(entry).await?,
                BookieLedger::Reader(r) => r.read(entry).await?,
            })
        })
    }

    fn close(&self) -> StorageFuture<'_, i64> {
        Box::pin(async move {
            match self {
                BookieLedger::Writer(w) => Ok(w.close().await?),
                BookieLedger::Reader(r) => Ok(r.last_entry()),
            }
        })
    }
}
