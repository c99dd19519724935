//! A storage that fails or stalls on purpose, wrapped around a real one: the Nth call of a
//! kind fails or is delayed, or appends fail once so many bytes went through. A failed append
//! poisons its ledger as a real writer's failure does (every later append to it fails), so
//! the managed ledger sees what it would see from bookies and must recover the same way.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::ready;
use magnetar_bookie::placement::Affinity;
use parking_lot::Mutex;

use super::{AppendFuture, Ledger, LedgerStorage, Placement, StorageError, StorageFuture};

/// The kinds of call a fault can be aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    Create,
    Open,
    Recover,
    Delete,
    Append,
    Read,
    Close,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Fail,
    Delay(Duration),
    /// Answer `Overloaded` (appends: before numbering the entry, as a busy bookie does).
    Overload,
}

#[derive(Debug)]
struct Rule {
    call: Call,
    /// Fires at this call number of its kind (counted from 1 over the storage's life).
    at: u64,
    kind: Kind,
}

#[derive(Debug, Default)]
struct FaultState {
    calls: HashMap<Call, u64>,
    rules: Vec<Rule>,
    appended: u64,
    /// Appends fail once `appended` would pass this.
    byte_limit: Option<u64>,
}

/// The faults to inject, shared by a [`FaultyStorage`] and its ledgers; change them at any
/// time.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<FaultState>,
}

impl Faults {
    /// The `n`th call of `call` from now on (1: the next one) fails.
    pub fn fail_nth(&self, call: Call, n: u64) {
        self.add(call, n, Kind::Fail);
    }

    /// The `n`th call of `call` from now on waits `by` first.
    pub fn delay_nth(&self, call: Call, n: u64, by: Duration) {
        self.add(call, n, Kind::Delay(by));
    }

    /// The `n`th append from now on answers `Overloaded`: nothing failed, the caller should
    /// slow down and try again.
    pub fn overload_nth(&self, n: u64) {
        self.add(Call::Append, n, Kind::Overload);
    }

    /// Appends fail once `n` more bytes have been appended.
    pub fn fail_after_bytes(&self, n: u64) {
        let mut st = self.state.lock();
        st.byte_limit = Some(st.appended + n);
    }

    /// Forgets every planned fault (calls already poisoned stay so).
    pub fn heal(&self) {
        let mut st = self.state.lock();
        st.rules.clear();
        st.byte_limit = None;
    }

    /// Calls of a kind made so far.
    pub fn calls(&self, call: Call) -> u64 {
        self.state.lock().calls.get(&call).copied().unwrap_or(0)
    }

    fn add(&self, call: Call, n: u64, kind: Kind) {
        let mut st = self.state.lock();
        let at = st.calls.get(&call).copied().unwrap_or(0) + n.max(1);
        st.rules.push(Rule { call, at, kind });
    }

    /// Counts a call and says what happens to it.
    fn check(&self, call: Call, bytes: u64) -> Option<Kind> {
        let mut st = self.state.lock();
        let n = st.calls.entry(call).or_insert(0);
        *n += 1;
        let n = *n;
        if call == Call::Append {
            st.appended += bytes;
            if st.byte_limit.is_some_and(|limit| st.appended > limit) {
                return Some(Kind::Fail);
            }
        }
        let i = st.rules.iter().position(|r| r.call == call && r.at == n)?;
        Some(st.rules.swap_remove(i).kind)
    }
}

fn injected(call: Call) -> StorageError {
    StorageError::Failed(format!("injected fault: {call:?}"))
}

/// Applies what `faults` says to one call.
fn guarded<'a, T: Send + 'a>(
    faults: &Faults,
    call: Call,
    fut: StorageFuture<'a, T>,
) -> StorageFuture<'a, T> {
    match faults.check(call, 0) {
        None => fut,
        Some(Kind::Fail) => Box::pin(ready(Err(injected(call)))),
        Some(Kind::Overload) => Box::pin(ready(Err(StorageError::Overloaded(format!(
            "injected overload: {call:?}"
        ))))),
        Some(Kind::Delay(d)) => Box::pin(async move {
            tokio::time::sleep(d).await;
            fut.await
        }),
    }
}

/// Wraps a storage with [`Faults`].
#[derive(Clone)]
pub struct FaultyStorage {
    inner: Arc<dyn LedgerStorage>,
    faults: Arc<Faults>,
}

impl fmt::Debug for FaultyStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStorage")
            .field("inner", &self.inner)
            .finish()
    }
}

impl FaultyStorage {
    pub fn new(inner: Arc<dyn LedgerStorage>) -> FaultyStorage {
        FaultyStorage {
            inner,
            faults: Arc::default(),
        }
    }

    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    fn wrap(&self, l: Arc<dyn Ledger>) -> Arc<dyn Ledger> {
        Arc::new(FaultyLedger {
            inner: l,
            faults: Arc::clone(&self.faults),
            poisoned: AtomicBool::new(false),
        })
    }
}

impl LedgerStorage for FaultyStorage {
    fn create(&self, placement: &Placement) -> StorageFuture<'_, Arc<dyn Ledger>> {
        let placement = placement.clone();
        guarded(
            &self.faults,
            Call::Create,
            Box::pin(async move { Ok(self.wrap(self.inner.create(&placement).await?)) }),
        )
    }

    fn open(&self, id: u64) -> StorageFuture<'_, Arc<dyn Ledger>> {
        guarded(
            &self.faults,
            Call::Open,
            Box::pin(async move { Ok(self.wrap(self.inner.open(id).await?)) }),
        )
    }

    fn recover(&self, id: u64) -> StorageFuture<'_, i64> {
        guarded(&self.faults, Call::Recover, self.inner.recover(id))
    }

    fn delete(&self, id: u64) -> StorageFuture<'_, ()> {
        guarded(&self.faults, Call::Delete, self.inner.delete(id))
    }

    fn stored_bytes(&self, id: u64) -> StorageFuture<'_, Option<u64>> {
        self.inner.stored_bytes(id)
    }
}

#[derive(Debug)]
struct FaultyLedger {
    inner: Arc<dyn Ledger>,
    faults: Arc<Faults>,
    /// An injected append failure happened: the ledger takes nothing more.
    poisoned: AtomicBool,
}

impl Ledger for FaultyLedger {
    fn id(&self) -> u64 {
        self.inner.id()
    }

    fn affinity(&self) -> Option<Affinity> {
        self.inner.affinity()
    }

    fn last_entry(&self) -> i64 {
        self.inner.last_entry()
    }

    fn submit(&self, data: Bytes) -> Result<AppendFuture, StorageError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(injected(Call::Append));
        }
        match self.faults.check(Call::Append, data.len() as u64) {
            None => self.inner.submit(data),
            Some(Kind::Fail) => {
                self.poisoned.store(true, Ordering::Release);
                Ok(Box::pin(ready(Err(injected(Call::Append)))))
            }
            Some(Kind::Overload) => Err(StorageError::Overloaded("injected overload".into())),
            Some(Kind::Delay(d)) => {
                // numbered now, like any other append; only its completion waits
                let fut = self.inner.submit(data)?;
                Ok(Box::pin(async move {
                    tokio::time::sleep(d).await;
                    fut.await
                }))
            }
        }
    }

    fn read(&self, entry: u64) -> StorageFuture<'_, Bytes> {
        guarded(&self.faults, Call::Read, self.inner.read(entry))
    }

    fn close(&self) -> StorageFuture<'_, i64> {
        guarded(&self.faults, Call::Close, self.inner.close())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemoryStorage, conformance};

    #[tokio::test]
    async fn without_faults_it_is_the_storage_it_wraps() {
        conformance::run(&FaultyStorage::new(Arc::new(MemoryStorage::new()))).await;
    }

    #[tokio::test]
    async fn faults_hit_the_calls_they_name() {
        let s = FaultyStorage::new(Arc::new(MemoryStorage::new()));
        let f = Arc::clone(s.faults());
        f.fail_nth(Call::Create, 2);
        let l = s.create(&Placement::default()).await.unwrap();
        assert!(s.create(&Placement::default()).await.is_err());
        assert!(s.create(&Placement::default()).await.is_ok());
        assert_eq!(f.calls(Call::Create), 3);

        // the third append from now fails, and poisons the ledger
        f.fail_nth(Call::Append, 3);
        let b = || Bytes::from_static(b"x");
        assert_eq!(l.submit(b()).unwrap().await, Ok(0));
        assert_eq!(l.submit(b()).unwrap().await, Ok(1));
        assert!(l.submit(b()).unwrap().await.is_err());
        assert!(l.submit(b()).is_err(), "a failed writer takes nothing more");
        assert_eq!(s.recover(l.id()).await, Ok(1));

        // fail after bytes
        let l = s.create(&Placement::default()).await.unwrap();
        f.fail_after_bytes(2);
        assert!(l.submit(b()).unwrap().await.is_ok());
        assert!(l.submit(b()).unwrap().await.is_ok());
        assert!(l.submit(b()).unwrap().await.is_err());
        f.heal();
        let l = s.create(&Placement::default()).await.unwrap();
        assert!(l.submit(b()).unwrap().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_append_keeps_its_number() {
        let s = FaultyStorage::new(Arc::new(MemoryStorage::new()));
        s.faults()
            .delay_nth(Call::Append, 1, Duration::from_secs(5));
        let l = s.create(&Placement::default()).await.unwrap();
        let slow = l.submit(Bytes::from_static(b"a")).unwrap();
        let fast = l.submit(Bytes::from_static(b"b")).unwrap();
        assert_eq!(fast.await, Ok(1));
        let started = tokio::time::Instant::now();
        assert_eq!(slow.await, Ok(0));
        assert!(started.elapsed() >= Duration::from_secs(4));
    }
}
