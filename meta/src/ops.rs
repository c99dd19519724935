//! Validation and condition checks shared by every backend.

use std::collections::HashSet;
use std::time::Duration;

use crate::key::{MAX_TXN_BYTES, MAX_TXN_OPS, validate_key, validate_value};
use crate::{Expected, MetaError, Op, Result, Version};

pub const MIN_SESSION_TTL: Duration = Duration::from_secs(1);
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(3600);

/// Rejects a transaction that no backend should see: bad keys, oversized values, a key named
/// twice, `Absent` on a delete, too many operations or bytes.
pub(crate) fn validate_ops(ops: &[Op]) -> Result<()> {
    if ops.is_empty() {
        return Err(MetaError::InvalidArgument("empty transaction".into()));
    }
    if ops.len() > MAX_TXN_OPS {
        return Err(MetaError::InvalidArgument(format!(
            "transaction has {} operations, more than {MAX_TXN_OPS}",
            ops.len()
        )));
    }
    let mut seen = HashSet::with_capacity(ops.len());
    let mut bytes = 0usize;
    for op in ops {
        let key = op.key();
        validate_key(key)?;
        if !seen.insert(key) {
            return Err(MetaError::InvalidArgument(format!(
                "key {key} appears twice in one transaction"
            )));
        }
        bytes += key.len();
        match op {
            Op::Put { value, session, .. } => {
                validate_value(key, value.len())?;
                bytes += value.len();
                if let Some(id) = session
                    && *id <= 0
                {
                    return Err(MetaError::InvalidArgument(format!(
                        "invalid session id {id}"
                    )));
                }
            }
            Op::Delete { expected, .. } => {
                if *expected == Expected::Absent {
                    return Err(MetaError::InvalidArgument(format!(
                        "delete of {key} cannot expect the key to be absent"
                    )));
                }
            }
        }
    }
    if bytes > MAX_TXN_BYTES {
        return Err(MetaError::InvalidArgument(format!(
            "transaction carries {bytes} bytes, more than {MAX_TXN_BYTES}"
        )));
    }
    Ok(())
}

/// Checks one operation's expectation against the version found (None = no record).
pub(crate) fn check_expected(op: &Op, found: Option<Version>) -> Result<()> {
    let key = op.key();
    let expected = op.expected();
    let mismatch = || MetaError::BadVersion {
        key: key.to_string(),
        expected,
        actual: found,
    };
    match (op, expected, found) {
        (Op::Delete { .. }, _, None) => Err(MetaError::NotFound(key.to_string())),
        (_, Expected::Any, _) => Ok(()),
        (_, Expected::Absent, None) => Ok(()),
        (_, Expected::Absent, Some(_)) => Err(mismatch()),
        (_, Expected::Version(v), Some(f)) if v == f => Ok(()),
        (_, Expected::Version(_), _) => Err(mismatch()),
    }
}

pub(crate) fn validate_ttl(ttl: Duration) -> Result<()> {
    if ttl < MIN_SESSION_TTL || ttl > MAX_SESSION_TTL {
        return Err(MetaError::InvalidArgument(format!(
            "session ttl {ttl:?} is outside {MIN_SESSION_TTL:?}..={MAX_SESSION_TTL:?}"
        )));
    }
    Ok(())
}
