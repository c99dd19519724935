//! Positions in a managed ledger, and sets of acknowledged ranges of them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// `(ledger, entry)`; entry -1 means "before the first entry of that ledger".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub ledger: u64,
    pub entry: i64,
}

impl Position {
    pub const fn new(ledger: u64, entry: i64) -> Position {
        Position { ledger, entry }
    }

    /// The next entry in the same ledger.
    pub fn next_in_ledger(self) -> Position {
        Position::new(self.ledger, self.entry + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ledger, self.entry)
    }
}

/// Closed ranges `[start, end]` of positions inside single ledgers; adjacent ranges in a
/// ledger merge, so a run of acks costs one range however long it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: BTreeMap<Position, Position>,
}

impl RangeSet {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn contains(&self, p: Position) -> bool {
        self.ranges
            .range(..=p)
            .next_back()
            .is_some_and(|(_, end)| *end >= p)
    }

    pub fn insert(&mut self, p: Position) {
        self.insert_range(p, p);
    }

    /// Inserts `[start, end]` (both in one ledger).
    pub fn insert_range(&mut self, mut start: Position, mut end: Position) {
        // merge with a range ending at or right before `start`
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e.ledger == start.ledger
            && e.entry + 1 >= start.entry
        {
            if e >= end {
                return;
            }
            start = s;
            self.ranges.remove(&s);
        }
        // swallow ranges starting inside or right after
        loop {
            let next = self
                .ranges
                .range(start..)
                .next()
                .map(|(&s, &e)| (s, e))
                .filter(|(s, _)| s.ledger == end.ledger && s.entry <= end.entry + 1);
            let Some((s, e)) = next else { break };
            self.ranges.remove(&s);
            if e > end {
                end = e;
            }
        }
        self.ranges.insert(start, end);
    }

    /// Drops everything at or before `p`.
    pub fn remove_through(&mut self, p: Position) {
        let keys: Vec<Position> = self.ranges.range(..=p).map(|(s, _)| *s).collect();
        for s in keys {
            // a range straddling `p` lies in p's ledger: keep its tail
            if let Some(e) = self.ranges.remove(&s)
                && e > p
            {
                self.ranges.insert(p.next_in_ledger(), e);
            }
        }
    }

    /// The range starting exactly at `p`, if any.
    pub fn range_starting_at(&self, p: Position) -> Option<Position> {
        self.ranges.get(&p).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Position, Position)> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }

    /// Positions acknowledged in `[from, to]` within one ledger.
    pub fn count_in(&self, ledger: u64, from: i64, to: i64) -> u64 {
        let lo = Position::new(ledger, i64::MIN);
        let hi = Position::new(ledger, i64::MAX);
        self.ranges
            .range(lo..=hi)
            .map(|(s, e)| {
                let a = s.entry.max(from);
                let b = e.entry.min(to);
                if b >= a { (b - a + 1) as u64 } else { 0 }
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(l: u64, e: i64) -> Position {
        Position::new(l, e)
    }

    #[test]
    fn ranges_merge_and_trim() {
        let mut r = RangeSet::default();
        r.insert(p(1, 5));
        r.insert(p(1, 7));
        assert_eq!(r.len(), 2);
        r.insert(p(1, 6));
        assert_eq!(r.len(), 1);
        assert!(r.contains(p(1, 6)) && !r.contains(p(1, 8)) && !r.contains(p(1, 4)));
        r.insert(p(2, 0));
        assert_eq!(r.len(), 2, "ranges never span ledgers");
        r.insert_range(p(1, 1), p(1, 9));
        assert_eq!(r.iter().next(), Some((p(1, 1), p(1, 9))));
        assert_eq!(r.count_in(1, 0, 3), 3);
        r.remove_through(p(1, 4));
        assert_eq!(r.iter().next(), Some((p(1, 5), p(1, 9))));
        r.remove_through(p(1, 20));
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(p(2, 0), p(2, 0))]);
    }
}
