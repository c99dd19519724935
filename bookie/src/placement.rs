//! Where a ledger's bookies come from: racks (spread a ledger's copies over them) and bookie
//! affinity groups (keep a namespace's ledgers on bookies set aside for it, so a tenant that
//! floods its disks does not share them with the others).
//!
//! The operator's map of bookies to groups and racks is one record, `/bookies/racks-info`,
//! shaped as Pulsar's `BookiesRackConfiguration`: `{group: {"host:port": {rack, hostname}}}`.
//! A bookie is in at most one group. The group named `default` and bookies in no group form
//! the shared pool.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub const RACKS_INFO_PATH: &str = "/bookies/racks-info";

/// The group whose bookies count as shared (Pulsar's name for "no isolation").
pub const DEFAULT_GROUP: &str = "default";

/// One bookie's entry in the racks map (Pulsar's `BookieInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookieInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// group → bookie address → its rack.
pub type RacksInfo = BTreeMap<String, BTreeMap<String, BookieInfo>>;

/// The group (and entry) `bookie` is listed under, if any.
pub fn group_of<'a>(racks: &'a RacksInfo, bookie: &str) -> Option<(&'a str, &'a BookieInfo)> {
    racks
        .iter()
        .find_map(|(g, m)| m.get(bookie).map(|i| (g.as_str(), i)))
}

/// Lists `bookie` under `group` with `info`, taking it out of any other group.
pub fn set_bookie(racks: &mut RacksInfo, group: &str, bookie: &str, info: BookieInfo) {
    remove_bookie(racks, bookie);
    racks
        .entry(group.to_string())
        .or_default()
        .insert(bookie.to_string(), info);
}

/// Takes `bookie` out of the map; false if it was not in it.
pub fn remove_bookie(racks: &mut RacksInfo, bookie: &str) -> bool {
    let mut found = false;
    for m in racks.values_mut() {
        found |= m.remove(bookie).is_some();
    }
    racks.retain(|_, m| !m.is_empty());
    found
}

/// A namespace's bookie affinity: its ledgers go to bookies of the primary groups, then of
/// the secondary ones when the primary have too few, and never elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    pub primary: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secondary: Vec<String>,
}

impl Affinity {
    /// From Pulsar's `BookieAffinityGroupData` fields (each a comma-separated list of
    /// groups); None when the primary names no group.
    pub fn from_lists(primary: &str, secondary: Option<&str>) -> Option<Affinity> {
        let split = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect()
        };
        let primary = split(primary);
        if primary.is_empty() {
            return None;
        }
        Some(Affinity {
            primary,
            secondary: secondary.map(split).unwrap_or_default(),
        })
    }
}

impl std::fmt::Display for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "groups [{}]", self.primary.join(","))?;
        if !self.secondary.is_empty() {
            write!(f, " then [{}]", self.secondary.join(","))?;
        }
        Ok(())
    }
}

/// A registered bookie as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub addr: String,
    pub rack: Option<String>,
    pub group: Option<String>,
}

impl Candidate {
    /// Joins a bookie's registration with the racks map: the map's rack wins over the one
    /// the bookie registered with.
    pub fn new(addr: String, registered_rack: Option<String>, racks: &RacksInfo) -> Candidate {
        match group_of(racks, &addr) {
            Some((g, info)) => Candidate {
                rack: info.rack.clone().or(registered_rack),
                group: Some(g.to_string()),
                addr,
            },
            None => Candidate {
                addr,
                rack: registered_rack,
                group: None,
            },
        }
    }

    fn shared(&self) -> bool {
        self.group.as_deref().is_none_or(|g| g == DEFAULT_GROUP)
    }
}

/// The candidates in the order they may be used: with an affinity, its primary groups then
/// its secondary ones (others never); without, the shared pool and then everything else, so
/// namespaces without affinity stay off set-aside bookies while the shared pool suffices.
fn tiers(candidates: Vec<Candidate>, affinity: Option<&Affinity>) -> [Vec<Candidate>; 2] {
    let mut first = Vec::new();
    let mut second = Vec::new();
    for c in candidates {
        let in_groups = |groups: &[String]| {
            c.group
                .as_deref()
                .is_some_and(|g| groups.iter().any(|x| x == g))
        };
        match affinity {
            Some(a) if in_groups(&a.primary) => first.push(c),
            Some(a) if in_groups(&a.secondary) => second.push(c),
            Some(_) => {}
            None if c.shared() => first.push(c),
            None => second.push(c),
        }
    }
    [first, second]
}

/// Picks up to `n` distinct bookies: tier by tier, and within a tier one per rack before a
/// second from any rack. Fewer than `n` means the allowed bookies ran out.
pub fn place(candidates: Vec<Candidate>, n: usize, affinity: Option<&Affinity>) -> Vec<String> {
    use rand::seq::SliceRandom;
    let mut rng = rand::rng();
    let mut chosen: Vec<String> = Vec::with_capacity(n);
    let mut racks_used = BTreeSet::new();
    for mut tier in tiers(candidates, affinity) {
        tier.shuffle(&mut rng);
        for c in &tier {
            if chosen.len() == n {
                return chosen;
            }
            if racks_used.insert(c.rack.clone()) {
                chosen.push(c.addr.clone());
            }
        }
        for c in &tier {
            if chosen.len() == n {
                return chosen;
            }
            if !chosen.contains(&c.addr) {
                chosen.push(c.addr.clone());
            }
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(i: usize, rack: usize, group: Option<&str>) -> Candidate {
        Candidate {
            addr: format!("10.0.0.{i}:3181"),
            rack: Some(format!("rack-{rack}")),
            group: group.map(str::to_string),
        }
    }

    #[test]
    fn spreads_over_racks_first() {
        let bookies: Vec<Candidate> = (0..6).map(|i| cand(i, i % 3, None)).collect();
        for _ in 0..50 {
            let chosen = place(bookies.clone(), 3, None);
            let racks: BTreeSet<_> = chosen
                .iter()
                .map(|a| {
                    bookies
                        .iter()
                        .find(|b| &b.addr == a)
                        .map(|b| b.rack.clone())
                })
                .collect();
            assert_eq!(chosen.len(), 3);
            assert_eq!(racks.len(), 3, "one bookie per rack: {chosen:?}");
        }
        // more bookies than racks: still distinct bookies
        let chosen = place(bookies.clone(), 5, None);
        let distinct: BTreeSet<_> = chosen.iter().collect();
        assert_eq!(distinct.len(), 5);
    }

    #[test]
    fn affinity_keeps_to_its_groups() {
        let bookies = vec![
            cand(0, 0, Some("noisy")),
            cand(1, 1, Some("noisy")),
            cand(2, 0, Some("spare")),
            cand(3, 1, None),
            cand(4, 2, Some(DEFAULT_GROUP)),
            cand(5, 2, Some("other")),
        ];
        let noisy = Affinity::from_lists("noisy", None).unwrap();
        for _ in 0..50 {
            let mut c = place(bookies.clone(), 2, Some(&noisy));
            c.sort();
            assert_eq!(c, ["10.0.0.0:3181", "10.0.0.1:3181"]);
        }
        // too few: only what the groups allow, never a shared or foreign bookie
        assert_eq!(place(bookies.clone(), 3, Some(&noisy)).len(), 2);
        // the secondary fills in after the primary
        let with_spare = Affinity::from_lists("noisy", Some("spare, ")).unwrap();
        for _ in 0..50 {
            let c = place(bookies.clone(), 3, Some(&with_spare));
            assert_eq!(c.len(), 3);
            assert_eq!(c[2], "10.0.0.2:3181", "secondary last: {c:?}");
        }
        // no affinity: the shared pool first, the groups only when it runs out
        for _ in 0..50 {
            let mut c = place(bookies.clone(), 2, None);
            c.sort();
            assert_eq!(c, ["10.0.0.3:3181", "10.0.0.4:3181"]);
        }
        assert_eq!(place(bookies.clone(), 6, None).len(), 6);
        assert_eq!(Affinity::from_lists(" , ", Some("x")), None);
    }

    #[test]
    fn a_bookie_is_in_one_group() {
        let mut racks = RacksInfo::new();
        let info = |r: &str| BookieInfo {
            rack: Some(r.into()),
            hostname: None,
        };
        set_bookie(&mut racks, "a", "b1:3181", info("/r1"));
        set_bookie(&mut racks, "b", "b1:3181", info("/r2"));
        assert_eq!(group_of(&racks, "b1:3181"), Some(("b", &info("/r2"))));
        assert!(!racks.contains_key("a"), "emptied groups go: {racks:?}");
        let c = Candidate::new("b1:3181".into(), Some("reg".into()), &racks);
        assert_eq!(c.rack.as_deref(), Some("/r2"));
        assert_eq!(c.group.as_deref(), Some("b"));
        assert!(remove_bookie(&mut racks, "b1:3181"));
        assert!(!remove_bookie(&mut racks, "b1:3181"));
        assert!(racks.is_empty());
        let c = Candidate::new("b1:3181".into(), Some("reg".into()), &racks);
        assert_eq!((c.rack.as_deref(), c.group), (Some("reg"), None));
    }
}
