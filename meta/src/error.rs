use crate::version::Expected;

/// Everything a metadata operation can fail with.
///
/// `Unavailable` and `Timeout` are retriable: the backend could not be reached and the
/// operation may or may not have been applied (a put that timed out must be checked by reading
/// the key's version back before it is repeated). Every other variant is final for the call.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MetaError {
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("value of {key} is {size} bytes, more than the limit of {max}")]
    ValueTooLarge {
        key: String,
        size: usize,
        max: usize,
    },

    #[error("key {0} not found")]
    NotFound(String),

    #[error("version mismatch on {key}: expected {expected}, found {}", fmt_version(*.actual))]
    BadVersion {
        key: String,
        expected: Expected,
        actual: Option<u64>,
    },

    #[error("record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },

    #[error("session {0:#x} is lost")]
    SessionLost(i64),

    #[error("metadata store unavailable: {0}")]
    Unavailable(String),

    #[error("metadata store timed out: {0}")]
    Timeout(String),

    #[error("gave up on {key} after {attempts} compare-and-set attempts")]
    Contention { key: String, attempts: u32 },

    #[error("metadata store is closed")]
    Closed,

    #[error("metadata backend failed: {0}")]
    Backend(String),
}

fn fmt_version(v: Option<u64>) -> String {
    match v {
        Some(v) => format!("version {v}"),
        None => "no record".to_string(),
    }
}

impl MetaError {
    /// Whether repeating the call later may succeed (the backend was unreachable or slow).
    pub fn is_retriable(&self) -> bool {
        matches!(self, MetaError::Unavailable(_) | MetaError::Timeout(_))
    }
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;
