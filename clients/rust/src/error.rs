//! The client's one error type. It is `Clone` because one failure (a lost connection, a
//! refused batch) completes many waiting futures at once.

use std::time::Duration;

use magnetar_protocol::ServerError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("connection to {addr} lost: {reason}")]
    Disconnected { addr: String, reason: String },
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        operation: &'static str,
        after: Duration,
    },
    #[error("{code:?}: {message}")]
    Server { code: ServerError, message: String },
    #[error("protocol violation by the broker: {0}")]
    Protocol(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("message of {size} bytes exceeds the broker's maximum of {max} (enable chunking)")]
    TooLarge { size: usize, max: usize },
    #[error("the producer's pending queue is full")]
    QueueFull,
    #[error("corrupt message from {topic}: {reason}")]
    Corrupt { topic: String, reason: String },
    #[error("closed")]
    Closed,
}

impl Error {
    /// Worth trying again after a backoff: the broker was busy, moving, or unreachable.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Disconnected { .. } | Error::Timeout { .. } => true,
            Error::Server { code, .. } => matches!(
                code,
                ServerError::ServiceNotReady
                    | ServerError::TooManyRequests
                    | ServerError::MetadataError
                    | ServerError::PersistenceError
                    | ServerError::UnknownError
            ),
            _ => false,
        }
    }

    pub(crate) fn server(code: i32, message: impl Into<String>) -> Error {
        Error::Server {
            code: ServerError::try_from(code).unwrap_or(ServerError::UnknownError),
            message: message.into(),
        }
    }

    /// The server error code, if the broker refused.
    pub fn server_code(&self) -> Option<ServerError> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
