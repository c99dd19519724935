//! Who serves a topic: the broker that owns the bundle it falls in. A broker serves only
//! topics of bundles it owns and redirects lookups for the others to their owner. A
//! standalone broker owns everything ([`OwnEverything`]); in a cluster, ownership is an
//! ephemeral record per bundle, bound to the owner's metadata session.

use std::collections::BTreeMap;
use std::fmt;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::names::TopicName;

/// A broker's addresses, as lookups hand them to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrls {
    /// `pulsar://host:port`
    pub service_url: String,
    /// `pulsar+ssl://host:port`, when TLS is on.
    pub service_url_tls: Option<String>,
    /// `http://host:port`
    pub web_url: String,
    pub web_url_tls: Option<String>,
    /// Its advertised listeners by name: the addresses clients of each network are given
    /// (Pulsar's `advertisedListeners`; a client names one with `listenerName`).
    pub listeners: BTreeMap<String, ListenerUrls>,
}

/// One advertised listener's binary-protocol addresses (Pulsar's field names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerUrls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_service_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_service_url_tls: Option<String>,
}

impl BrokerUrls {
    /// The binary-protocol URLs (plain, TLS) for a client of `listener` (None or empty: one
    /// that names none); a name the broker does not advertise is refused, not answered with
    /// an address the client cannot reach.
    pub fn for_listener(
        &self,
        listener: Option<&str>,
    ) -> Result<(String, Option<String>), BrokerError> {
        let Some(name) = listener.filter(|l| !l.is_empty()) else {
            return Ok((self.service_url.clone(), self.service_url_tls.clone()));
        };
        match self.listeners.get(name) {
            Some(l) => Ok((
                l.broker_service_url.clone().unwrap_or_default(),
                l.broker_service_url_tls.clone(),
            )),
            None => Err(BrokerError::NotAllowed(format!(
                "no listener named {name:?} is advertised (this broker's: {})",
                self.listeners
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// The cluster's leader broker (Pulsar's `LeaderBroker`, as `brokers/leaderBroker` shows it
/// and as its record in the metadata store holds it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Leader {
    /// `host:web port`
    pub broker_id: String,
    /// Its web URL.
    pub service_url: String,
}

/// Who owns a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This broker: it serves the bundle's topics.
    Me,
    /// Another broker, where clients must go.
    Broker(BrokerUrls),
}

pub trait Ownership: Send + Sync + fmt::Debug {
    /// The owner of the bundle `topic` falls in; an implementation may take an unowned
    /// bundle for this broker here, and must when `authoritative` (a lookup another broker
    /// redirected here: Pulsar's authoritative flag).
    fn owner_of<'a>(
        &'a self,
        topic: &'a TopicName,
        authoritative: bool,
    ) -> BoxFuture<'a, Result<Owner, BrokerError>>;

    /// A count of the times this broker gave bundles up (session lost, bundles released):
    /// a topic whose load began under one count and ended under another may belong to
    /// someone else by now.
    fn generation(&self) -> u64 {
        0
    }

    /// Whether this broker owns bundle `range` (`0xLOWER_0xUPPER`) of `tenant/ns` now.
    fn owns_bundle(&self, namespace: &str, range: &str) -> bool;

    /// Gives up this broker's bundles of `namespace` (`tenant/ns`; one bundle if `range`):
    /// stops serving them as owner, runs `unload` (which closes their topics), then lets
    /// them go so the next lookup assigns them again. Alone, a broker just unloads.
    fn release<'a>(
        &'a self,
        _namespace: &'a str,
        _range: Option<&'a str>,
        unload: BoxFuture<'a, ()>,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            unload.await;
            Ok(())
        })
    }

    /// Another broker that owns bundle `range` of `namespace`, if one does (None: this
    /// broker, nobody, or a broker alone).
    fn bundle_owner_elsewhere<'a>(
        &'a self,
        _namespace: &'a str,
        _range: &'a str,
    ) -> BoxFuture<'a, Result<Option<BrokerUrls>, BrokerError>> {
        Box::pin(futures::future::ready(Ok(None)))
    }

    /// The bundles (`tenant/ns/range`) broker `id` (`host:web port`) owns, when other
    /// brokers' ownership is known here; None: only this broker's, through `owns_bundle`.
    fn bundles_of_broker<'a>(
        &'a self,
        _id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, BrokerError>> {
        Box::pin(futures::future::ready(Ok(None)))
    }

    /// The live brokers of the cluster (`host:web port`); None when this broker is alone.
    fn live_brokers(&self) -> BoxFuture<'_, Result<Option<Vec<String>>, BrokerError>> {
        Box::pin(futures::future::ready(Ok(None)))
    }

    /// The cluster's leader, electing one (this broker, if it wins) when there is none;
    /// None when this broker is alone (it leads itself).
    fn leader(&self) -> BoxFuture<'_, Result<Option<Leader>, BrokerError>> {
        Box::pin(futures::future::ready(Ok(None)))
    }
}

/// A broker on its own: every bundle of every namespace is its.
#[derive(Debug, Default, Clone, Copy)]
pub struct OwnEverything;

impl Ownership for OwnEverything {
    fn owner_of<'a>(
        &'a self,
        _: &'a TopicName,
        _: bool,
    ) -> BoxFuture<'a, Result<Owner, BrokerError>> {
        Box::pin(futures::future::ready(Ok(Owner::Me)))
    }

    fn owns_bundle(&self, _: &str, _: &str) -> bool {
        true
    }
}
