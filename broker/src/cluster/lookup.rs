//! Where a client is told to go for a topic: one answer behind the binary protocol's LOOKUP
//! and the admin API's `GET /lookup/v2/topic/...`, so the two can never disagree.

use super::ownership::{BrokerUrls, Owner, Ownership};
use crate::error::BrokerError;
use crate::names::TopicName;

/// A lookup's answer: the broker that serves the topic, and whether that is the one asked
/// (then the client connects there: Pulsar's `Connect`; else it asks there again:
/// `Redirect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub urls: BrokerUrls,
    pub here: bool,
}

/// Finds the broker serving `topic`; `me` are this broker's own addresses; `authoritative`
/// when another broker sent the client here (see [`Ownership::owner_of`]).
pub async fn locate(
    ownership: &dyn Ownership,
    me: &BrokerUrls,
    topic: &TopicName,
    authoritative: bool,
) -> Result<Located, BrokerError> {
    Ok(match ownership.owner_of(topic, authoritative).await? {
        Owner::Me => Located {
            urls: me.clone(),
            here: true,
        },
        Owner::Broker(urls) => Located { urls, here: false },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ownership::OwnEverything;

    #[tokio::test]
    async fn a_broker_alone_serves_everything_itself() {
        let me = BrokerUrls {
            service_url: "pulsar://h:6650".into(),
            service_url_tls: None,
            web_url: "http://h:8080".into(),
            web_url_tls: None,
            listeners: Default::default(),
        };
        let t = TopicName::parse("persistent://a/b/c").unwrap();
        let found = locate(&OwnEverything, &me, &t, false).await.unwrap();
        assert_eq!(
            found,
            Located {
                urls: me,
                here: true
            }
        );
    }
}
