//! Versions and the conditions a write puts on them: what both the store and its errors speak
//! of.

use std::fmt;

/// A record's version: the store-wide revision of the change that last wrote it. Versions of
/// one key strictly increase, and a watcher sees changes in version order.
pub type Version = u64;

/// What a conditional write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Write whatever is there.
    Any,
    /// The key must not exist (create).
    Absent,
    /// The key must exist at exactly this version.
    Version(Version),
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Any => f.write_str("any version"),
            Expected::Absent => f.write_str("no record"),
            Expected::Version(v) => write!(f, "version {v}"),
        }
    }
}
