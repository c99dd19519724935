//! The dispatch machine: each subscription type, and a seeded random schedule of consumers
//! joining, leaving, asking, acking, nacking and seeking, checked against a model after every
//! delivery.

use std::collections::{BTreeSet, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const LEASE: Duration = Duration::from_secs(30);

fn machine(t: SubType) -> Dispatch {
    Dispatch::new(
        t,
        Position::new(1, -1),
        DelayedIndex::new(None, 60_000),
        Limits {
            key_shared_lease: LEASE,
            key_shared_max_held: 1_000,
        },
    )
}

fn spec(key: u64, name: &str, priority: i32) -> ConsumerSpec {
    ConsumerSpec {
        key,
        name: name.into(),
        priority,
    }
}

fn p(e: i64) -> Position {
    Position::new(1, e)
}

fn meta(messages: u32, key_slot: u32) -> Option<EntryMeta> {
    Some(EntryMeta {
        messages,
        key_slot,
        deliver_at: None,
    })
}

/// Entries 0..n, one message each, all under slot 0.
fn plain(n: i64) -> Vec<(Position, Option<EntryMeta>)> {
    (0..n).map(|e| (p(e), meta(1, 0))).collect()
}

fn none(_: Position) -> bool {
    false
}

fn targets(d: &[Delivery]) -> Vec<(u64, i64)> {
    d.iter().map(|d| (d.consumer, d.position.entry)).collect()
}

#[test]
fn exclusive_takes_one_consumer_and_permits_overshoot_by_one_entry_at_most() {
    let mut m = machine(SubType::Exclusive);
    m.add_consumer(spec(1, "a", 0), SubType::Exclusive, None, 0)
        .unwrap();
    assert_eq!(
        m.add_consumer(spec(2, "b", 0), SubType::Exclusive, None, 0),
        Err(SubscribeError::ExclusiveBusy)
    );
    assert!(matches!(
        m.add_consumer(spec(2, "b", 0), SubType::Shared, None, 0),
        Err(SubscribeError::TypeMismatch { .. })
    ));
    m.flow(1, 2);
    let plan = m.plan(0, Position::new(1, -1), &none);
    assert_eq!((plan.budget, plan.read_after), (2, Position::new(1, -1)));
    // a batch of 5 messages goes on 2 permits; nothing more until more are asked for
    let entries = vec![(p(0), meta(5, 0)), (p(1), meta(1, 0))];
    let (d, _) = m.hand_out(&entries, plan.epoch, 0, &none).unwrap();
    assert_eq!(targets(&d), [(1, 0)]);
    assert_eq!(m.counts(1), (-3, 5));
    assert_eq!(
        m.redelivery_queue(),
        1,
        "the second entry waits, first in line"
    );
    m.flow(1, 10);
    let plan = m.plan(0, Position::new(1, -1), &none);
    assert_eq!(plan.redeliver, [p(1)]);
    let (d, _) = m
        .hand_out(&[(p(1), meta(1, 0))], plan.epoch, 0, &none)
        .unwrap();
    assert_eq!(targets(&d), [(1, 1)]);
    assert_eq!(d[0].redeliveries, 0, "held back is not redelivered");
    m.release(p(0), 0);
    assert_eq!(m.counts(1), (6, 1));
}

#[test]
fn failover_elects_by_priority_then_name_and_hands_the_backlog_over() {
    let mut m = machine(SubType::Failover);
    let ch = m
        .add_consumer(spec(1, "b", 1), SubType::Failover, None, 0)
        .unwrap();
    assert_eq!(
        ch,
        [ActiveChange {
            consumer: 1,
            active: true
        }]
    );
    let ch = m
        .add_consumer(spec(2, "a", 1), SubType::Failover, None, 0)
        .unwrap();
    assert_eq!(
        ch,
        [
            ActiveChange {
                consumer: 1,
                active: false
            },
            ActiveChange {
                consumer: 2,
                active: true
            }
        ]
    );
    // a lower priority level wins over the name
    m.add_consumer(spec(3, "z", 0), SubType::Failover, None, 0)
        .unwrap();
    for k in 1..=3 {
        m.flow(k, 10);
    }
    let plan = m.plan(0, Position::new(1, -1), &none);
    let (d, _) = m.hand_out(&plain(3), plan.epoch, 0, &none).unwrap();
    assert!(d.iter().all(|d| d.consumer == 3));
    // the active one leaves: its unacknowledged entries go to the next, in order, counted
    let (left, ch) = m.remove_consumer(3, 0);
    assert_eq!(left, 2);
    assert!(ch.contains(&ActiveChange {
        consumer: 2,
        active: true
    }));
    let plan = m.plan(0, Position::new(1, -1), &none);
    assert_eq!(plan.redeliver, [p(0), p(1), p(2)]);
    let (d, _) = m.hand_out(&plain(3), plan.epoch, 0, &none).unwrap();
    assert_eq!(targets(&d), [(2, 0), (2, 1), (2, 2)]);
    assert!(d.iter().all(|d| d.redeliveries == 1));
}

#[test]
fn shared_goes_round_robin_and_a_nack_comes_back_counted() {
    let mut m = machine(SubType::Shared);
    for k in 1..=2 {
        m.add_consumer(spec(k, &format!("c{k}"), 0), SubType::Shared, None, 0)
            .unwrap();
        m.flow(k, 2);
    }
    let plan = m.plan(0, Position::new(1, -1), &none);
    assert_eq!(plan.budget, 4);
    let (d, _) = m.hand_out(&plain(5), plan.epoch, 0, &none).unwrap();
    assert_eq!(targets(&d), [(1, 0), (2, 1), (1, 2), (2, 3)]);
    assert_eq!(m.pending_entries(), 4);
    // an entry acked meanwhile is never handed out
    assert_eq!(m.redelivery_queue(), 1);
    m.release(p(4), 0);
    assert_eq!(m.redelivery_queue(), 0);
    // consumer 2 nacks entry 3 only
    assert_eq!(m.redeliver(2, Some(&[p(3)]), 0), 1);
    m.flow(1, 5);
    let plan = m.plan(0, Position::new(1, -1), &none);
    assert_eq!(plan.redeliver, [p(3)]);
    let (d, _) = m
        .hand_out(&[(p(3), meta(1, 0))], plan.epoch, 0, &none)
        .unwrap();
    assert_eq!((d[0].consumer, d[0].redeliveries), (1, 1));
}

#[test]
fn key_shared_keeps_a_key_in_order_across_a_joining_consumer() {
    let mut m = machine(SubType::KeyShared);
    m.add_consumer(spec(1, "a", 0), SubType::KeyShared, None, 0)
        .unwrap();
    m.flow(1, 100);
    let slot = 12_345;
    let first: Vec<_> = (0..3).map(|e| (p(e), meta(1, slot))).collect();
    let plan = m.plan(0, Position::new(1, -1), &none);
    let (d, _) = m.hand_out(&first, plan.epoch, 0, &none).unwrap();
    assert_eq!(d.len(), 3);
    // a second consumer joins; whatever slot it takes, entries of this one wait for the
    // first three to be acknowledged if the slot moved
    m.add_consumer(spec(2, "b", 0), SubType::KeyShared, None, 0)
        .unwrap();
    m.flow(2, 100);
    let later: Vec<_> = (3..6).map(|e| (p(e), meta(1, slot))).collect();
    let plan = m.plan(0, Position::new(1, -1), &none);
    let (d, _) = m.hand_out(&later, plan.epoch, 0, &none).unwrap();
    let moved = d.is_empty();
    if moved {
        assert_eq!(m.redelivery_queue(), 3, "held, in order");
        for e in 0..3 {
            m.release(p(e), 0);
        }
        let plan = m.plan(0, Position::new(1, -1), &none);
        assert_eq!(plan.redeliver, [p(3), p(4), p(5)]);
        let (d, _) = m.hand_out(&later, plan.epoch, 0, &none).unwrap();
        assert_eq!(targets(&d), [(2, 3), (2, 4), (2, 5)]);
    } else {
        assert!(d.iter().all(|d| d.consumer == 1));
    }
}

#[test]
fn key_shared_moves_a_hung_consumers_slots_after_the_lease() {
    let mut m = machine(SubType::KeyShared);
    m.add_consumer(spec(1, "a", 0), SubType::KeyShared, None, 0)
        .unwrap();
    m.flow(1, 2);
    let entries: Vec<_> = (0..4).map(|e| (p(e), meta(1, 7))).collect();
    let plan = m.plan(0, Position::new(1, -1), &none);
    let (d, _) = m.hand_out(&entries, plan.epoch, 0, &none).unwrap();
    assert_eq!(d.len(), 2, "two permits");
    m.add_consumer(spec(2, "b", 0), SubType::KeyShared, None, 0)
        .unwrap();
    m.flow(2, 10);
    // within the lease nothing moves: entries 2 and 3 stay held behind consumer 1
    let plan = m.plan(1_000, Position::new(1, -1), &none);
    assert!(plan.idle_limit.is_some(), "held entries need lease ticks");
    let late = LEASE.as_millis() as u64 + 2_000;
    let plan = m.plan(late, Position::new(1, -1), &none);
    // consumer 1 acknowledged nothing for a lease: it is hung, its entries move to 2
    assert_eq!(plan.redeliver, [p(0), p(1), p(2), p(3)]);
    let (_, _, hung) = m.key_shared_stats();
    assert_eq!(hung, ["a"]);
    let (d, _) = m.hand_out(&entries, plan.epoch, late, &none).unwrap();
    assert_eq!(targets(&d), [(2, 0), (2, 1), (2, 2), (2, 3)]);
    // an ack cures it
    m.progressed(1, late);
    assert!(m.key_shared_stats().2.is_empty());
}

#[test]
fn delayed_entries_wait_for_their_time_on_shared_only() {
    let at = |t| {
        Some(EntryMeta {
            messages: 1,
            key_slot: 0,
            deliver_at: Some(t),
        })
    };
    let mut m = machine(SubType::Shared);
    m.add_consumer(spec(1, "a", 0), SubType::Shared, None, 0)
        .unwrap();
    m.flow(1, 10);
    let entries = vec![(p(0), at(5_000)), (p(1), meta(1, 0))];
    let plan = m.plan(1_000, Position::new(1, -1), &none);
    let (d, limit) = m.hand_out(&entries, plan.epoch, 1_000, &none).unwrap();
    assert_eq!(targets(&d), [(1, 1)]);
    assert_eq!(m.delayed_entries().0, 1);
    assert!(m.skips(p(0)), "reads pass over a delayed entry");
    assert_eq!(
        limit,
        Some(Duration::from_millis(1_000)),
        "look again within a second"
    );
    assert_eq!(m.tend_delayed(3_000, false).0.map(|_| ()), None);
    assert_eq!(m.plan(3_000, Position::new(1, -1), &none).redeliver, []);
    m.tend_delayed(5_000, false);
    let plan = m.plan(5_000, Position::new(1, -1), &none);
    assert_eq!(plan.redeliver, [p(0)]);
    // Exclusive delivers at once, as in Pulsar
    let mut x = machine(SubType::Exclusive);
    x.add_consumer(spec(1, "a", 0), SubType::Exclusive, None, 0)
        .unwrap();
    x.flow(1, 10);
    let plan = x.plan(1_000, Position::new(1, -1), &none);
    let (d, _) = x.hand_out(&entries, plan.epoch, 1_000, &none).unwrap();
    assert_eq!(d.len(), 2);
}

#[test]
fn a_seek_forgets_deliveries_and_throws_away_reads_that_raced_it() {
    let mut m = machine(SubType::Shared);
    m.add_consumer(spec(1, "a", 0), SubType::Shared, None, 0)
        .unwrap();
    m.flow(1, 10);
    let before = m.plan(0, Position::new(1, -1), &none);
    m.hand_out(&plain(2), before.epoch, 0, &none).unwrap();
    let stale = m.plan(0, Position::new(1, -1), &none);
    assert!(m.reset(p(5)).is_empty());
    assert_eq!((m.pending_entries(), m.counts(1).1), (0, 0));
    assert_eq!(m.hand_out(&plain(2), stale.epoch, 0, &none), None);
    assert!(!m.read_done(stale.epoch, Some(p(9))));
    let plan = m.plan(0, Position::new(1, -1), &none);
    assert_eq!(plan.read_after, p(5));
    // a cursor moved past what was read moves the reads too
    assert_eq!(m.plan(0, p(7), &none).read_after, p(7));
}

#[test]
fn a_backlogged_connection_is_sent_nothing_until_it_drains() {
    let mut m = machine(SubType::Shared);
    for k in 1..=2 {
        m.add_consumer(spec(k, &format!("c{k}"), 0), SubType::Shared, None, 0)
            .unwrap();
        m.flow(k, 10);
    }
    assert!(m.set_blocked(1, true));
    assert!(!m.set_blocked(1, true), "already blocked");
    let plan = m.plan(0, Position::new(1, -1), &none);
    assert_eq!(plan.budget, 10);
    let (d, _) = m.hand_out(&plain(3), plan.epoch, 0, &none).unwrap();
    assert!(d.iter().all(|d| d.consumer == 2));
    m.set_blocked(2, true);
    assert_eq!(m.plan(0, Position::new(1, -1), &none).budget, 0);
    m.set_blocked(1, false);
    assert_eq!(m.plan(0, Position::new(1, -1), &none).budget, 10);
}

#[test]
fn a_cumulative_ack_releases_everything_before() {
    let mut m = machine(SubType::Shared);
    m.add_consumer(spec(1, "a", 0), SubType::Shared, None, 0)
        .unwrap();
    m.flow(1, 3);
    let plan = m.plan(0, Position::new(1, -1), &none);
    m.hand_out(&plain(5), plan.epoch, 0, &none).unwrap();
    assert_eq!((m.pending_entries(), m.redelivery_queue()), (3, 2));
    m.release_through(p(3), 0);
    assert_eq!((m.pending_entries(), m.redelivery_queue()), (0, 1));
    assert_eq!(m.counts(1), (0, 0));
}

/// What the schedule believes: the log, what is acknowledged, what is out with whom.
struct Model {
    sub_type: SubType,
    log: Vec<(Position, EntryMeta)>,
    mark_delete: Position,
    acked: BTreeSet<Position>,
    outstanding: HashMap<Position, u64>,
    /// key -> (name, priority, permits as the model counts them)
    live: HashMap<u64, (String, i32, i64)>,
    next_key: u64,
    now: u64,
}

impl Model {
    fn is_acked(&self, p: Position) -> bool {
        p <= self.mark_delete || self.acked.contains(&p)
    }

    fn active(&self) -> Option<u64> {
        self.live
            .iter()
            .min_by(|a, b| (a.1.1, &a.1.0).cmp(&(b.1.1, &b.1.0)))
            .map(|(k, _)| *k)
    }

    /// Checks one delivery against the invariants, then books it.
    fn check(&mut self, d: &Delivery, seed: u64) {
        let why = |what: &str| format!("seed {seed}: {what}: {d:?}");
        let p = d.position;
        assert!(
            self.live.contains_key(&d.consumer),
            "{}",
            why("to a consumer gone")
        );
        assert!(
            !self.outstanding.contains_key(&p),
            "{}",
            why("delivered twice while out with a live consumer")
        );
        assert!(
            !self.is_acked(p),
            "{}",
            why("an acknowledged entry delivered")
        );
        let entry = self.log.iter().find(|(q, _)| *q == p).map(|(_, e)| *e);
        let entry = entry.unwrap_or_else(|| panic!("{}", why("not in the log")));
        let permits = &mut self.live.get_mut(&d.consumer).expect("live").2;
        assert!(
            *permits > 0,
            "{}",
            why("sent to a consumer without permits")
        );
        *permits -= entry.messages as i64;
        assert!(
            *permits > -(entry.messages as i64),
            "{}",
            why("permits overdrawn")
        );
        match self.sub_type {
            SubType::Exclusive | SubType::Failover => {
                assert_eq!(
                    Some(d.consumer),
                    self.active(),
                    "{}",
                    why("not the active one")
                )
            }
            SubType::KeyShared => {
                // every earlier unacknowledged entry of its key is out with the same consumer
                for (q, e) in &self.log {
                    if *q < p && e.key_slot == entry.key_slot && !self.is_acked(*q) {
                        assert_eq!(
                            self.outstanding.get(q),
                            Some(&d.consumer),
                            "{}",
                            why(&format!("overtook {q} of the same key"))
                        );
                    }
                }
            }
            _ => {}
        }
        self.outstanding.insert(p, d.consumer);
    }
}

/// One pass of the dispatcher, as the subscription runs it, with the model as storage.
fn dispatch_once(m: &mut Dispatch, model: &mut Model, seed: u64) -> usize {
    let is_acked = |p: Position| model.is_acked(p);
    let plan = m.plan(model.now, model.mark_delete, &is_acked);
    if plan.budget <= 0 {
        return 0;
    }
    let by_pos: HashMap<Position, EntryMeta> = model.log.iter().copied().collect();
    let entries: Vec<(Position, Option<EntryMeta>)> = if !plan.redeliver.is_empty() {
        plan.redeliver
            .iter()
            .map(|p| (*p, by_pos.get(p).copied()))
            .collect()
    } else if plan.may_read {
        let n = (plan.budget as usize).min(READ_BATCH);
        let mut out = Vec::new();
        let mut examined = None;
        for (p, e) in model.log.iter().filter(|(p, _)| *p > plan.read_after) {
            if out.len() >= n {
                break;
            }
            examined = Some(*p);
            if !model.is_acked(*p) && !m.skips(*p) {
                out.push((*p, Some(*e)));
            }
        }
        assert!(m.read_done(plan.epoch, examined));
        out
    } else {
        Vec::new()
    };
    if entries.is_empty() {
        return 0;
    }
    let Some((deliveries, _)) = m.hand_out(&entries, plan.epoch, model.now, &is_acked) else {
        return 0;
    };
    for d in &deliveries {
        model.check(d, seed);
    }
    for (k, c) in &model.live {
        assert_eq!(m.counts(*k).0, c.2, "seed {seed}: permits of {k} disagree");
    }
    deliveries.len()
}

fn schedule(sub_type: SubType, seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut m = machine(sub_type);
    let mut model = Model {
        sub_type,
        log: Vec::new(),
        mark_delete: Position::new(1, -1),
        acked: BTreeSet::new(),
        outstanding: HashMap::new(),
        live: HashMap::new(),
        next_key: 1,
        now: 1_000,
    };
    let join = |m: &mut Dispatch, model: &mut Model, rng: &mut StdRng| {
        let key = model.next_key;
        model.next_key += 1;
        let name = format!("c{:02}-{key}", rng.random_range(0..100));
        let priority = rng.random_range(0..2);
        let spec = ConsumerSpec {
            key,
            name: name.clone(),
            priority,
        };
        let before = model.active();
        match m.add_consumer(spec, sub_type, None, model.now) {
            Ok(_) => {
                model.live.insert(key, (name, priority, 0));
                // a new active consumer takes over what the old one had out
                let after = model.active();
                if matches!(sub_type, SubType::Exclusive | SubType::Failover)
                    && let Some(old) = before.filter(|b| Some(*b) != after)
                {
                    model.outstanding.retain(|_, c| *c != old);
                }
            }
            Err(SubscribeError::ExclusiveBusy) => {}
            Err(e) => panic!("seed {seed}: join refused: {e}"),
        }
    };
    for _ in 0..steps {
        match rng.random_range(0..100) {
            0..10 if model.live.len() < 4 => join(&mut m, &mut model, &mut rng),
            10..15 if !model.live.is_empty() => {
                let keys: Vec<u64> = model.live.keys().copied().collect();
                let k = keys[rng.random_range(0..keys.len())];
                let before = model.active();
                m.remove_consumer(k, model.now);
                model.live.remove(&k);
                model.outstanding.retain(|_, c| *c != k);
                let after = model.active();
                if matches!(sub_type, SubType::Exclusive | SubType::Failover)
                    && let Some(old) = before.filter(|b| Some(*b) != after)
                {
                    model.outstanding.retain(|_, c| *c != old);
                }
            }
            15..30 if !model.live.is_empty() => {
                let keys: Vec<u64> = model.live.keys().copied().collect();
                let k = keys[rng.random_range(0..keys.len())];
                let n = rng.random_range(1..10);
                m.flow(k, n);
                if let Some(c) = model.live.get_mut(&k) {
                    c.2 += n as i64;
                }
            }
            30..45 if !model.outstanding.is_empty() => {
                let out: Vec<(Position, u64)> =
                    model.outstanding.iter().map(|(p, c)| (*p, *c)).collect();
                let (p, c) = out[rng.random_range(0..out.len())];
                m.progressed(c, model.now);
                m.release(p, model.now);
                model.outstanding.remove(&p);
                model.acked.insert(p);
            }
            45..50 if !model.live.is_empty() => {
                let keys: Vec<u64> = model.live.keys().copied().collect();
                let k = keys[rng.random_range(0..keys.len())];
                m.redeliver(k, None, model.now);
                model.outstanding.retain(|_, c| *c != k);
            }
            50..65 => {
                let next = model.log.last().map_or(0, |(p, _)| p.entry + 1);
                for e in next..next + rng.random_range(1..6) {
                    let meta = EntryMeta {
                        messages: rng.random_range(1..4),
                        key_slot: rng.random_range(0..4) * 1_000,
                        deliver_at: None,
                    };
                    model.log.push((p(e), meta));
                }
            }
            65..67 if !model.log.is_empty() => {
                // seek: delivery restarts after a position of the log
                let i = rng.random_range(0..model.log.len());
                let md = model.log[i].0;
                m.reset(md);
                model.mark_delete = md;
                model.acked.clear();
                model.outstanding.clear();
            }
            67..70 => model.now += rng.random_range(1..500),
            _ => {
                dispatch_once(&mut m, &mut model, seed);
            }
        }
    }
    // drain: someone asks for everything and acks what it gets; nothing may be left
    if model.live.is_empty() {
        join(&mut m, &mut model, &mut rng);
    }
    for _ in 0..1_000 {
        for (k, c) in model.live.iter_mut() {
            m.flow(*k, 1_000);
            c.2 += 1_000;
        }
        dispatch_once(&mut m, &mut model, seed);
        let out: Vec<(Position, u64)> = model.outstanding.drain().collect();
        for (p, c) in out {
            m.progressed(c, model.now);
            m.release(p, model.now);
            model.acked.insert(p);
        }
        if model.log.iter().all(|(p, _)| model.is_acked(*p)) {
            return;
        }
    }
    let lost: Vec<Position> = model
        .log
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !model.is_acked(*p))
        .collect();
    panic!("seed {seed}: never delivered: {lost:?}");
}

#[test]
fn random_schedules_keep_the_invariants() {
    // MAGNETAR_DISPATCH_SEEDS=n runs more (a failure prints its seed; rerun one with
    // MAGNETAR_DISPATCH_SEED=s)
    let seeds: Vec<u64> = match std::env::var("MAGNETAR_DISPATCH_SEED") {
        Ok(s) => vec![s.parse().expect("a seed")],
        Err(_) => {
            let n = std::env::var("MAGNETAR_DISPATCH_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(150);
            (0..n).collect()
        }
    };
    for seed in seeds {
        for t in [
            SubType::Exclusive,
            SubType::Failover,
            SubType::Shared,
            SubType::KeyShared,
        ] {
            schedule(t, seed, 400);
        }
    }
}
