use std::path::PathBuf;

/// What a bookie operation can fail with. Mapped to wire status codes at the protocol edge.
#[derive(Debug, thiserror::Error)]
pub enum BookieError {
    // The cause is in the message, not also a `source()`: printed with its chain (anyhow's
    // `{:#}`), it would say the same thing twice.
    #[error("{context} ({path}): {cause}")]
    Io {
        context: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },

    /// Data on disk failed its checksum or framing: it is reported, never served.
    #[error("corrupt data in {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error("record of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },

    /// The journal failed to write or sync earlier; nothing more is accepted, because what
    /// reached the disk can no longer be known.
    #[error("journal failed earlier and accepts no more writes: {0}")]
    JournalFailed(String),

    #[error("bookie is shutting down")]
    Closed,
}

impl BookieError {
    #[cfg(feature = "server")]
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        BookieError::Io {
            context,
            path: path.into(),
            cause: source,
        }
    }
}

pub type Result<T, E = BookieError> = std::result::Result<T, E>;
