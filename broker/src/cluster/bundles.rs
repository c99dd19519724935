//! Bundles: a namespace cut into ranges of the 32-bit hash of its topics' names (Pulsar's:
//! CRC32 of the full name), kept in the namespace's policies as `bundles.boundaries`. A
//! bundle is what a broker owns; splitting one cuts its range in two.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::TopicName;

/// Bundles a namespace starts with (Pulsar's `defaultNumberOfNamespaceBundles`).
pub const DEFAULT_BUNDLES: u32 = 4;

/// The most bundles a namespace may be created with.
const MAX_BUNDLES: u64 = 1 << 16;

/// A namespace's bundles as Pulsar writes them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bundles {
    pub boundaries: Vec<String>,
    #[serde(rename = "numBundles", default)]
    pub num_bundles: u32,
}

impl Bundles {
    /// `n` equal ranges over the hash space.
    pub fn even(n: u32) -> Bundles {
        let n = n.clamp(1, MAX_BUNDLES as u32);
        let step = (1u64 << 32) / n as u64;
        let mut b: Vec<u64> = (0..n as u64).map(|i| i * step).collect();
        b.push(0xffff_ffff);
        Bundles::from_bounds(&b)
    }

    fn from_bounds(b: &[u64]) -> Bundles {
        Bundles {
            boundaries: b.iter().map(|x| format!("0x{x:08x}")).collect(),
            num_bundles: b.len().saturating_sub(1) as u32,
        }
    }

    /// The bundles a namespace-creation body asks for: the default when absent, `numBundles`
    /// equal ranges when only a count is given (as Pulsar accepts), else the boundaries
    /// given, which must be increasing hex values.
    pub fn requested(v: Option<&Value>) -> Result<Bundles, String> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(Bundles::even(DEFAULT_BUNDLES));
        };
        if v.get("boundaries").is_none() {
            return match v.get("numBundles").and_then(Value::as_u64) {
                Some(n @ 1..=MAX_BUNDLES) => Ok(Bundles::even(n as u32)),
                _ => Err(format!("numBundles must be 1..={MAX_BUNDLES}")),
            };
        }
        let b: Bundles =
            serde_json::from_value(v.clone()).map_err(|e| format!("bad bundles: {e}"))?;
        b.bounds()
            .map(|bounds| Bundles::from_bounds(&bounds))
            .ok_or_else(|| {
                "bundle boundaries must be increasing hex values up to 0xffffffff".into()
            })
    }

    /// The boundaries as numbers; None if they are not increasing hex values.
    fn bounds(&self) -> Option<Vec<u64>> {
        let b: Vec<u64> = self
            .boundaries
            .iter()
            .map(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .collect::<Option<_>>()?;
        (b.len() >= 2 && b.windows(2).all(|w| w[0] < w[1]) && b[b.len() - 1] <= 0xffff_ffff)
            .then_some(b)
    }

    /// Bundle names, `0xLOWER_0xUPPER`.
    pub fn ranges(&self) -> Vec<String> {
        self.boundaries
            .windows(2)
            .map(|w| format!("{}_{}", w[0], w[1]))
            .collect()
    }

    /// The bundle a hash falls in (the last range includes its upper bound).
    pub fn bundle_of(&self, hash: u32) -> Option<String> {
        let b = self.bounds()?;
        let h = hash as u64;
        let i = b
            .windows(2)
            .position(|w| w[0] <= h && (h < w[1] || w[1] == 0xffff_ffff))?;
        Some(format!("0x{:08x}_0x{:08x}", b[i], b[i + 1]))
    }

    /// These bundles with `name` cut in two at its midpoint.
    pub fn split(&self, name: &str) -> Result<Bundles, String> {
        let b = self
            .bounds()
            .ok_or("the stored bundle boundaries are invalid")?;
        let (lo, hi) =
            parse_range(name).ok_or_else(|| format!("{name:?} is not a bundle range"))?;
        let i = b
            .windows(2)
            .position(|w| w[0] == lo && w[1] == hi)
            .ok_or_else(|| format!("bundle {name} does not exist"))?;
        if hi - lo < 2 {
            return Err(format!("bundle {name} is too small to split"));
        }
        let mut nb = b.clone();
        nb.insert(i + 1, lo + (hi - lo) / 2);
        Ok(Bundles::from_bounds(&nb))
    }
}

fn parse_range(name: &str) -> Option<(u64, u64)> {
    let (a, b) = name.split_once('_')?;
    let p = |s: &str| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok();
    Some((p(a)?, p(b)?))
}

/// The bundle hash of a topic: CRC32 (IEEE) of its full name, as Pulsar's default.
pub fn topic_hash(t: &TopicName) -> u32 {
    crc32fast::hash(t.to_string().as_bytes())
}

/// The bundles in a namespace's policies record; one created before bundles were recorded
/// has the default.
pub fn stored_bundles(policies: &Value) -> Result<Bundles, String> {
    match policies.get("bundles") {
        None | Some(Value::Null) => Ok(Bundles::even(DEFAULT_BUNDLES)),
        Some(b) => serde_json::from_value::<Bundles>(b.clone())
            .ok()
            .filter(|b| b.bounds().is_some())
            .ok_or_else(|| "stored bundles are invalid".to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn bundles_cover_and_split() {
        let b = Bundles::even(4);
        assert_eq!(
            b.boundaries,
            [
                "0x00000000",
                "0x40000000",
                "0x80000000",
                "0xc0000000",
                "0xffffffff"
            ]
        );
        assert_eq!(b.bundle_of(0).unwrap(), "0x00000000_0x40000000");
        assert_eq!(b.bundle_of(u32::MAX).unwrap(), "0xc0000000_0xffffffff");
        assert_eq!(b.bundle_of(0x4000_0000).unwrap(), "0x40000000_0x80000000");
        let s = b.split("0x40000000_0x80000000").unwrap();
        assert_eq!(s.num_bundles, 5);
        assert_eq!(s.bundle_of(0x6000_0000).unwrap(), "0x60000000_0x80000000");
        assert!(b.split("0x40000000_0x90000000").is_err());
        assert!(b.split("junk").is_err());
        assert_eq!(Bundles::requested(None).unwrap().num_bundles, 4);
        assert_eq!(
            Bundles::requested(Some(&json!({"numBundles": 8}))).unwrap(),
            Bundles::even(8)
        );
        assert!(Bundles::requested(Some(&json!({"numBundles": 0}))).is_err());
        assert!(
            Bundles::requested(Some(
                &json!({"boundaries": ["0x10", "0x05"], "numBundles": 1})
            ))
            .is_err()
        );
        assert_eq!(
            Bundles::requested(Some(&json!({"boundaries": ["0x00000000", "0xffffffff"]})))
                .unwrap()
                .num_bundles,
            1,
            "the count follows the boundaries"
        );
        let one = Bundles::even(1);
        assert_eq!(one.ranges(), ["0x00000000_0xffffffff"]);
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926, "CRC32 IEEE");
    }
}
