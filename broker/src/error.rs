//! What can go wrong for a client, as the broker's own words; the protocol's ServerError codes
//! and HTTP statuses are chosen here, and used only where a reply leaves the broker (the
//! connection and the admin API).

use magnetar_managed_ledger::{MlError, StorageError};
use magnetar_meta::MetaError;
use magnetar_protocol::ServerError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    TopicNotFound(String),
    #[error("{0}")]
    SubscriptionNotFound(String),
    #[error("{0}")]
    ConsumerNotFound(String),
    #[error("{0}")]
    InvalidTopicName(String),
    /// Refused by a rule or a limit (not by a role's rights).
    #[error("{0}")]
    NotAllowed(String),
    /// Not now: starting, stopping, being deleted, or storage short of nodes. Clients retry.
    #[error("{0}")]
    NotReady(String),
    /// The topic's bundle is owned by another broker: clients look it up again, admin
    /// requests are redirected to `web_url`.
    #[error("{topic} is served by {service_url}; look it up again")]
    ServedElsewhere {
        topic: String,
        service_url: String,
        web_url: String,
    },
    #[error("{0}")]
    ProducerBusy(String),
    #[error("{0}")]
    ProducerFenced(String),
    #[error("{0}")]
    ConsumerBusy(String),
    /// A Key_Shared consumer's hash ranges cannot be given to it.
    #[error("{0}")]
    ConsumerAssign(String),
    /// The role may not do this.
    #[error("{0}")]
    Unauthorized(String),
    /// Over a backlog quota whose producers wait (producer_request_hold).
    #[error("{0}")]
    QuotaHold(String),
    /// Over a backlog quota whose producers are refused (producer_exception).
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    Terminated(String),
    #[error("{0}")]
    TooManyRequests(String),
    /// A schema the topic's compatibility rules do not let in.
    #[error("{0}")]
    IncompatibleSchema(String),
    /// A schema that is not one: a definition that does not parse, too large, or of a type
    /// that cannot be stored.
    #[error("{0}")]
    InvalidSchema(String),
    #[error("{0}")]
    Metadata(String),
    #[error("{0}")]
    Unknown(String),
    #[error(transparent)]
    Log(#[from] MlError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl BrokerError {
    /// The protocol's code for this error.
    pub fn code(&self) -> ServerError {
        use BrokerError as E;
        match self {
            E::TopicNotFound(_) => ServerError::TopicNotFound,
            E::SubscriptionNotFound(_) => ServerError::SubscriptionNotFound,
            E::ConsumerNotFound(_) => ServerError::ConsumerNotFound,
            E::InvalidTopicName(_) => ServerError::InvalidTopicName,
            E::NotAllowed(_) => ServerError::NotAllowedError,
            E::NotReady(_) | E::ServedElsewhere { .. } => ServerError::ServiceNotReady,
            E::ProducerBusy(_) => ServerError::ProducerBusy,
            E::ProducerFenced(_) => ServerError::ProducerFenced,
            E::ConsumerBusy(_) => ServerError::ConsumerBusy,
            E::ConsumerAssign(_) => ServerError::ConsumerAssignError,
            E::Unauthorized(_) => ServerError::AuthorizationError,
            E::QuotaHold(_) => ServerError::ProducerBlockedQuotaExceededError,
            E::QuotaExceeded(_) => ServerError::ProducerBlockedQuotaExceededException,
            E::Terminated(_) => ServerError::TopicTerminatedError,
            E::TooManyRequests(_) => ServerError::TooManyRequests,
            E::IncompatibleSchema(_) | E::InvalidSchema(_) => ServerError::IncompatibleSchema,
            E::Metadata(_) | E::Meta(_) => ServerError::MetadataError,
            E::Unknown(_) => ServerError::UnknownError,
            E::Log(e) => match e {
                MlError::Fenced(_) | MlError::Closed(_) => ServerError::ServiceNotReady,
                MlError::Meta(_) => ServerError::MetadataError,
                MlError::Terminated(_) => ServerError::TopicTerminatedError,
                // bookies may come back (or be added to the group), a busy storage catch up:
                // the client retries
                MlError::Storage(StorageError::Unavailable(_) | StorageError::Overloaded(_)) => {
                    ServerError::ServiceNotReady
                }
                _ => ServerError::PersistenceError,
            },
        }
    }

    /// The HTTP status an admin request that failed so answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            BrokerError::ServedElsewhere { .. } => return 307,
            // Pulsar's answers to a schema upload: a conflict, or a definition it cannot use
            BrokerError::IncompatibleSchema(_) => return 409,
            BrokerError::InvalidSchema(_) => return 422,
            _ => {}
        }
        match self.code() {
            ServerError::TopicNotFound | ServerError::SubscriptionNotFound => 404,
            ServerError::AuthorizationError => 403,
            ServerError::AuthenticationError => 401,
            ServerError::NotAllowedError | ServerError::InvalidTopicName => 412,
            ServerError::ProducerBusy | ServerError::ConsumerBusy => 409,
            ServerError::ServiceNotReady => 503,
            _ => 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_codes_clients_retry_on() {
        let not_ready = BrokerError::Log(MlError::Storage(StorageError::Unavailable(
            "need 2 bookies, 1 available".into(),
        )));
        assert_eq!(not_ready.code(), ServerError::ServiceNotReady);
        assert_eq!(not_ready.http_status(), 503);
        assert_eq!(not_ready.to_string(), "need 2 bookies, 1 available");
        let failed = BrokerError::Log(MlError::Storage(StorageError::Failed("disk".into())));
        assert_eq!(failed.code(), ServerError::PersistenceError);
        assert_eq!(BrokerError::TopicNotFound("t".into()).http_status(), 404);
        let elsewhere = BrokerError::ServedElsewhere {
            topic: "persistent://a/b/c".into(),
            service_url: "pulsar://h:6650".into(),
            web_url: "http://h:8080".into(),
        };
        assert_eq!(
            elsewhere.code(),
            ServerError::ServiceNotReady,
            "clients look up again"
        );
        assert_eq!(elsewhere.http_status(), 307, "admin requests follow it");
        assert_eq!(BrokerError::Unauthorized("r".into()).http_status(), 403);
        assert_eq!(
            BrokerError::QuotaHold("q".into()).code(),
            ServerError::ProducerBlockedQuotaExceededError
        );
    }
}
