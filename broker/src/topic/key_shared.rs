//! Key_Shared routing: which consumer owns each of the 65 536 hash slots, and the per-slot
//! order locks that keep a key's messages in order while consumers join, leave or hang.
//!
//! Pure bookkeeping, no I/O: the subscription's dispatcher asks [`Selector::select`] where a
//! slot goes and keeps [`OrderLocks`] beside its pending and held entries.

use std::collections::{BTreeMap, HashMap, HashSet};

use magnetar_managed_ledger::position::Position;
use magnetar_protocol::hash::{KEY_SHARED_SLOTS, murmur3_32};
use magnetar_protocol::proto::KeySharedMeta;
use magnetar_protocol::proto::key_shared_meta::KeySharedMode;

/// Points each AUTO_SPLIT consumer places on the hash ring (Pulsar's default is also 100):
/// enough that slots spread evenly and a joining consumer takes about 1/n of them.
const POINTS_PER_CONSUMER: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    AutoSplit,
    Sticky,
}

/// What a Key_Shared consumer asked for when it subscribed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySharedSpec {
    pub mode: Mode,
    /// Inclusive slot ranges (STICKY only).
    pub ranges: Vec<(u32, u32)>,
    pub allow_out_of_order: bool,
}

impl KeySharedSpec {
    /// Validates the client's `keySharedMeta`; no meta means AUTO_SPLIT, in order.
    pub fn from_proto(meta: Option<&KeySharedMeta>) -> Result<Self, String> {
        let Some(m) = meta else {
            return Ok(KeySharedSpec {
                mode: Mode::AutoSplit,
                ranges: Vec::new(),
                allow_out_of_order: false,
            });
        };
        let mode = match KeySharedMode::try_from(m.key_shared_mode) {
            Ok(KeySharedMode::AutoSplit) => Mode::AutoSplit,
            Ok(KeySharedMode::Sticky) => Mode::Sticky,
            Err(_) => return Err(format!("unknown Key_Shared mode {}", m.key_shared_mode)),
        };
        let mut ranges = Vec::new();
        if mode == Mode::Sticky {
            for r in &m.hash_ranges {
                let ok = 0 <= r.start && r.start <= r.end && (r.end as u32) < KEY_SHARED_SLOTS;
                if !ok {
                    return Err(format!(
                        "invalid hash range [{}, {}]: ranges lie in [0, {}]",
                        r.start,
                        r.end,
                        KEY_SHARED_SLOTS - 1
                    ));
                }
                ranges.push((r.start as u32, r.end as u32));
            }
            if ranges.is_empty() {
                return Err("a STICKY Key_Shared consumer needs at least one hash range".into());
            }
            ranges.sort_unstable();
            if ranges.windows(2).any(|w| w[1].0 <= w[0].1) {
                return Err("the consumer's hash ranges overlap each other".into());
            }
        }
        Ok(KeySharedSpec {
            mode,
            ranges,
            allow_out_of_order: m.allow_out_of_order_delivery.unwrap_or(false),
        })
    }
}

/// Maps hash slots to consumers (by consumer key).
#[derive(Debug, Default)]
pub struct Selector {
    mode: Option<Mode>,
    allow_out_of_order: bool,
    members: HashSet<u64>,
    /// AUTO_SPLIT: (point, consumer) -> consumer; a slot belongs to the next point at or after it.
    ring: BTreeMap<(u32, u64), u64>,
    /// STICKY: range start -> (range end, consumer).
    sticky: BTreeMap<u32, (u32, u64)>,
}

impl Selector {
    pub fn allow_out_of_order(&self) -> bool {
        self.allow_out_of_order
    }

    /// Adds a consumer; refuses one whose mode differs from the subscription's or whose
    /// STICKY ranges overlap another consumer's.
    pub fn add(&mut self, consumer: u64, spec: &KeySharedSpec) -> Result<(), String> {
        if self.members.is_empty() {
            self.mode = Some(spec.mode);
            self.allow_out_of_order = spec.allow_out_of_order;
        } else if self.mode != Some(spec.mode) {
            return Err(format!(
                "the subscription's consumers use Key_Shared mode {:?}, not {:?}",
                self.mode.unwrap_or(Mode::AutoSplit),
                spec.mode
            ));
        }
        match spec.mode {
            Mode::AutoSplit => {
                for i in 0..POINTS_PER_CONSUMER {
                    let point =
                        murmur3_32(format!("{consumer}-{i}").as_bytes(), 0) % KEY_SHARED_SLOTS;
                    self.ring.insert((point, consumer), consumer);
                }
            }
            Mode::Sticky => {
                for &(s, e) in &spec.ranges {
                    // the range starting at or before e with the greatest start is the only
                    // one that can overlap from the left; any starting inside [s, e] overlaps
                    let clash = self
                        .sticky
                        .range(..=e)
                        .next_back()
                        .filter(|(_, (end, _))| *end >= s);
                    if let Some((os, (oe, _))) = clash {
                        return Err(format!(
                            "hash range [{s}, {e}] conflicts with a connected consumer's [{os}, {oe}]"
                        ));
                    }
                }
                for &(s, e) in &spec.ranges {
                    self.sticky.insert(s, (e, consumer));
                }
            }
        }
        self.members.insert(consumer);
        Ok(())
    }

    pub fn remove(&mut self, consumer: u64) {
        if self.members.remove(&consumer) {
            self.ring.retain(|_, c| *c != consumer);
            self.sticky.retain(|_, (_, c)| *c != consumer);
        }
    }

    /// The consumer a slot goes to, passing over consumers `skip` rejects (hung ones) while
    /// another can take the slot. STICKY slots are pinned and ignore `skip`.
    pub fn select(&self, slot: u32, skip: impl Fn(u64) -> bool) -> Option<u64> {
        match self.mode? {
            Mode::Sticky => self
                .sticky
                .range(..=slot)
                .next_back()
                .filter(|(_, (end, _))| *end >= slot)
                .map(|(_, (_, c))| *c),
            Mode::AutoSplit => {
                let mut walk = self
                    .ring
                    .range((slot, 0)..)
                    .chain(self.ring.range(..(slot, 0)))
                    .map(|(_, c)| *c);
                let first = walk.next()?;
                if !skip(first) {
                    return Some(first);
                }
                walk.find(|c| !skip(*c)).or(Some(first))
            }
        }
    }
}

/// Which consumer holds unacknowledged messages of a slot, so the slot's next messages go
/// nowhere else until those are acknowledged (or the lock is revoked).
#[derive(Debug, Clone, Copy)]
pub struct SlotLock {
    pub owner: u64,
    pub outstanding: u32,
    /// Last time (ms) the owner made progress on the slot: took it or acked part of it.
    pub since_ms: u64,
}

/// Order bookkeeping for delivered (pending) and held (waiting) entries.
#[derive(Debug, Default)]
pub struct OrderLocks {
    pub locks: HashMap<u32, SlotLock>,
    /// Slot of every pending or held entry whose slot is known.
    slot_of: HashMap<Position, u32>,
    /// Held entries per slot.
    held: HashMap<u32, u32>,
    held_total: usize,
}

impl OrderLocks {
    pub fn slot_of(&self, p: &Position) -> Option<u32> {
        self.slot_of.get(p).copied()
    }

    pub fn held_total(&self) -> usize {
        self.held_total
    }

    /// Whether entries of `slot` are waiting (an entry read later must queue behind them).
    pub fn has_held(&self, slot: u32) -> bool {
        self.held.get(&slot).is_some_and(|n| *n > 0)
    }

    /// Records an entry's slot; `held` says whether it is already in the held set.
    pub fn learn(&mut self, p: Position, slot: u32, held: bool) {
        if self.slot_of.insert(p, slot).is_none() && held {
            *self.held.entry(slot).or_insert(0) += 1;
            self.held_total += 1;
        }
    }

    pub fn delivered(&mut self, p: Position, consumer: u64, now_ms: u64) {
        let Some(slot) = self.slot_of(&p) else {
            return;
        };
        let lock = self.locks.entry(slot).or_insert(SlotLock {
            owner: consumer,
            outstanding: 0,
            since_ms: now_ms,
        });
        if lock.outstanding == 0 || lock.owner != consumer {
            // out-of-order delivery lets several consumers hold a slot: the latest owns it
            lock.owner = consumer;
            lock.since_ms = now_ms;
        }
        lock.outstanding += 1;
    }

    /// A pending entry left its consumer (acked, or taken back).
    pub fn undelivered(&mut self, p: Position, now_ms: u64) {
        let Some(slot) = self.slot_of(&p) else {
            return;
        };
        if let Some(lock) = self.locks.get_mut(&slot) {
            lock.outstanding = lock.outstanding.saturating_sub(1);
            lock.since_ms = now_ms;
            if lock.outstanding == 0 {
                self.locks.remove(&slot);
            }
        }
    }

    pub fn held(&mut self, p: Position) {
        if let Some(slot) = self.slot_of(&p) {
            *self.held.entry(slot).or_insert(0) += 1;
            self.held_total += 1;
        }
    }

    pub fn unheld(&mut self, p: Position) {
        if let Some(slot) = self.slot_of(&p)
            && let Some(n) = self.held.get_mut(&slot)
        {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&slot);
            }
            self.held_total -= 1;
        }
    }

    /// The entry is neither pending nor held any more.
    pub fn forget(&mut self, p: Position) {
        self.slot_of.remove(&p);
    }

    pub fn clear(&mut self) {
        *self = OrderLocks::default();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use magnetar_protocol::proto::IntRange;

    fn auto() -> KeySharedSpec {
        KeySharedSpec::from_proto(None).unwrap()
    }

    fn sticky(ranges: &[(i32, i32)]) -> Result<KeySharedSpec, String> {
        KeySharedSpec::from_proto(Some(&KeySharedMeta {
            key_shared_mode: KeySharedMode::Sticky as i32,
            hash_ranges: ranges
                .iter()
                .map(|&(start, end)| IntRange { start, end })
                .collect(),
            allow_out_of_order_delivery: None,
        }))
    }

    #[test]
    fn auto_split_spreads_and_moves_little_on_join() {
        let mut s = Selector::default();
        for c in 1..=3 {
            s.add(c, &auto()).unwrap();
        }
        let before: Vec<u64> = (0..KEY_SHARED_SLOTS)
            .map(|x| s.select(x, |_| false).unwrap())
            .collect();
        for c in 1..=3 {
            let share = before.iter().filter(|o| **o == c).count();
            assert!(share > 10_000, "consumer {c} got only {share} slots");
        }
        s.add(4, &auto()).unwrap();
        let moved = (0..KEY_SHARED_SLOTS)
            .filter(|x| {
                let now = s.select(*x, |_| false).unwrap();
                now != before[*x as usize]
            })
            .count();
        // only slots taken by the new consumer move
        assert!(moved < 30_000, "{moved} slots moved");
        for x in 0..KEY_SHARED_SLOTS {
            let now = s.select(x, |_| false).unwrap();
            assert!(now == before[x as usize] || now == 4);
        }
        // a skipped consumer's slots go to the others, and only while another exists
        assert!((0..KEY_SHARED_SLOTS).all(|x| s.select(x, |c| c == 2) != Some(2)));
        s.remove(1);
        s.remove(3);
        s.remove(4);
        assert_eq!(s.select(7, |_| true), Some(2));
        s.remove(2);
        assert_eq!(s.select(7, |_| false), None);
    }

    #[test]
    fn sticky_ranges_conflict_and_pin() {
        let mut s = Selector::default();
        s.add(1, &sticky(&[(0, 99), (200, 299)]).unwrap()).unwrap();
        assert!(s.add(2, &sticky(&[(50, 60)]).unwrap()).is_err());
        assert!(s.add(2, &sticky(&[(150, 200)]).unwrap()).is_err());
        assert!(s.add(2, &auto()).is_err());
        s.add(2, &sticky(&[(100, 199)]).unwrap()).unwrap();
        assert_eq!(s.select(0, |_| true), Some(1));
        assert_eq!(s.select(150, |_| false), Some(2));
        assert_eq!(s.select(250, |_| false), Some(1));
        assert_eq!(s.select(300, |_| false), None);
        s.remove(1);
        assert_eq!(s.select(50, |_| false), None);
        s.add(3, &sticky(&[(0, 99)]).unwrap()).unwrap();
        assert_eq!(s.select(50, |_| false), Some(3));
    }

    #[test]
    fn spec_validation() {
        assert!(sticky(&[]).is_err());
        assert!(sticky(&[(5, 4)]).is_err());
        assert!(sticky(&[(-1, 4)]).is_err());
        assert!(sticky(&[(0, 65_536)]).is_err());
        assert!(sticky(&[(0, 10), (10, 20)]).is_err());
        assert_eq!(sticky(&[(0, 65_535)]).unwrap().ranges, vec![(0, 65_535)]);
    }

    #[test]
    fn locks_follow_delivery_and_ack() {
        let mut l = OrderLocks::default();
        let (p1, p2, p3) = (
            Position::new(1, 0),
            Position::new(1, 1),
            Position::new(1, 2),
        );
        l.learn(p1, 9, false);
        l.learn(p2, 9, false);
        l.delivered(p1, 100, 1);
        l.delivered(p2, 100, 2);
        assert_eq!(l.locks[&9].outstanding, 2);
        l.learn(p3, 9, false);
        l.held(p3);
        assert!(l.has_held(9));
        assert_eq!(l.held_total(), 1);
        l.undelivered(p1, 5);
        l.forget(p1);
        assert_eq!(l.locks[&9].since_ms, 5);
        l.undelivered(p2, 6);
        l.forget(p2);
        assert!(!l.locks.contains_key(&9));
        l.unheld(p3);
        l.delivered(p3, 200, 7);
        assert_eq!(l.locks[&9].owner, 200);
        assert_eq!(l.held_total(), 0);
        // learning the slot of an entry already held counts it once
        let p4 = Position::new(2, 0);
        l.learn(p4, 3, true);
        l.learn(p4, 3, true);
        assert_eq!(l.held_total(), 1);
    }
}
