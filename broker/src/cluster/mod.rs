//! The cluster side of a broker: where every metadata key lives (`keys`), how a namespace is
//! cut into bundles (`bundles`), who owns a bundle (`ownership`) and how a client is told
//! where a topic is served (`lookup`, the one answer behind the binary protocol's LOOKUP and
//! the HTTP lookup).

pub mod bundles;
pub mod keys;
pub mod lookup;
pub mod ownership;
