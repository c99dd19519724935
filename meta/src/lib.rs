//! The metadata store: versioned records with compare-and-set, watches, sessions with
//! ephemeral records and atomic multi-key transactions, over three real backends (memory for
//! unit tests, embedded RocksDB for the standalone, etcd for clusters), plus what every
//! component builds on top: typed JSON records with a CAS retry loop, a cluster-wide id
//! generator and a watch-fed read-through cache; and `FaultyStore`, any store with faults
//! on demand, for the tests of everything above.
//!
//! It owns no Magnetar record layouts (brokers and bookies define their own keys) and must
//! never depend on another Magnetar crate: `bookie`, `tiering` and `broker` depend on it.

mod cache;
mod error;
mod etcd;
mod faulty;
mod idgen;
pub mod key;
mod local;
mod memory;
mod ops;
mod records;
#[cfg(feature = "rocksdb")]
mod rocks;
mod store;
mod version;

pub use cache::RecordCache;
pub use error::{MetaError, Result};
pub use etcd::{EtcdConfig, EtcdStore, EtcdTls};
pub use faulty::{FaultyStore, MetaFaults};
pub use idgen::IdGenerator;
pub use memory::MemoryStore;
pub use ops::{MAX_SESSION_TTL, MIN_SESSION_TTL};
pub use records::{MAX_CAS_ATTEMPTS, MetadataStoreExt, decode_json, encode_json};
#[cfg(feature = "rocksdb")]
pub use rocks::RocksStore;
pub use store::{
    EventKind, Expected, MetaStore, MetadataStore, Op, Session, SessionId, SessionState, Version,
    Versioned, Watch, WatchEvent,
};

use std::sync::Arc;

/// Opens the store a URL names:
/// - `memory://` — in this process only;
/// - `rocksdb:///absolute/path` or `rocksdb://relative/path` — embedded and durable;
/// - `etcd://[user:password@]host1:2379,host2:2379` — an etcd cluster, with etcd's own
///   user authentication when credentials are given (percent-encoded where they must be);
/// - `etcds://[user:password@]hosts?ca=FILE[&cert=FILE&key=FILE]` — the same over TLS: `ca`
///   is the PEM of the authority that signed etcd's certificate, `cert` and `key` this
///   client's certificate where etcd asks for one (`--client-cert-auth`).
///
/// Errors never repeat a password: they show the URL as [`redact`] does.
pub async fn connect(url: &str) -> Result<MetaStore> {
    let bad =
        |why: &str| MetaError::InvalidArgument(format!("metadata url {:?}: {why}", redact(url)));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected scheme://..., e.g. rocksdb:///var/lib/magnetar/meta"))?;
    match scheme {
        "memory" => Ok(Arc::new(MemoryStore::new()?)),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => {
            if rest.is_empty() {
                return Err(bad("no path given"));
            }
            let path = rest.to_string();
            let store = tokio::task::spawn_blocking(move || RocksStore::open(path))
                .await
                .map_err(|e| MetaError::Backend(format!("open task failed: {e}")))??;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "rocksdb"))]
        "rocksdb" => Err(bad("this build has no RocksDB backend (feature `rocksdb`)")),
        "etcd" | "etcds" => {
            let config = etcd_config(scheme == "etcds", rest).map_err(|why| bad(&why))?;
            Ok(Arc::new(EtcdStore::connect(config).await?))
        }
        other => Err(bad(&format!(
            "unknown scheme {other:?} (memory, rocksdb, etcd, etcds)"
        ))),
    }
}

/// The URL with any password replaced by `***`: what logs and errors may show.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let hosts_start = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..hosts_start].rsplit_once('@') {
        Some((userinfo, _)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let after = &rest[userinfo.len()..];
            format!("{scheme}://{user}:***{after}")
        }
        None => url.to_string(),
    }
}

/// Parses what follows `etcd://` or `etcds://`.
fn etcd_config(tls: bool, rest: &str) -> std::result::Result<EtcdConfig, String> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (user, hosts) = match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (name, password) = userinfo
                .split_once(':')
                .ok_or("credentials must be user:password@")?;
            let name = percent_decode(name)?;
            if name.is_empty() {
                return Err("empty user name".into());
            }
            (Some((name, percent_decode(password)?)), hosts)
        }
        None => (None, rest),
    };
    let endpoints: Vec<String> = hosts
        .trim_end_matches('/')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if endpoints.is_empty() {
        return Err("no etcd endpoints given".into());
    }
    let (mut ca, mut cert, mut key) = (None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = std::path::PathBuf::from(percent_decode(v)?);
        match k {
            "ca" => ca = Some(v),
            "cert" => cert = Some(v),
            "key" => key = Some(v),
            other => return Err(format!("unknown parameter {other:?} (ca, cert, key)")),
        }
    }
    let tls = match (tls, ca, cert, key) {
        (false, None, None, None) => None,
        (false, ..) => return Err("ca, cert and key are for TLS: use etcds://".into()),
        (true, None, ..) => {
            return Err(
                "etcds:// needs ?ca=FILE: the authority that signed etcd's certificate".into(),
            );
        }
        (true, Some(ca), None, None) => Some(EtcdTls { ca, client: None }),
        (true, Some(ca), Some(cert), Some(key)) => Some(EtcdTls {
            ca,
            client: Some((cert, key)),
        }),
        (true, ..) => return Err("cert and key go together".into()),
    };
    let mut config = EtcdConfig::new(endpoints);
    config.user = user;
    config.tls = tls;
    Ok(config)
}

/// `%XX` escapes to bytes (a password may hold `@`, `:` or `,`).
fn percent_decode(s: &str) -> std::result::Result<String, String> {
    if s.split('%').skip(1).any(|rest| {
        rest.get(..2)
            .is_none_or(|h| !h.bytes().all(|b| b.is_ascii_hexdigit()))
    }) {
        return Err("a % not followed by two hex digits".into());
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "percent-escapes that are not UTF-8".to_string())
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn etcd_urls_carry_credentials_and_tls() {
        let c = etcd_config(false, "root:p%40ss@h1:2379,h2:2379").unwrap();
        assert_eq!(c.endpoints, ["h1:2379", "h2:2379"]);
        assert_eq!(c.user, Some(("root".into(), "p@ss".into())));
        assert!(c.tls.is_none());
        assert!(
            !format!("{c:?}").contains("p@ss"),
            "Debug hides the password"
        );
        let c = etcd_config(true, "h:1?ca=/a.pem&cert=/c.pem&key=/k.pem").unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca, std::path::Path::new("/a.pem"));
        assert!(tls.client.is_some());
        for bad in [
            (false, "h:1?ca=/a"),
            (true, "h:1"),
            (true, "h:1?ca=/a&cert=/c"),
            (false, "nopass@h:1"),
            (false, ":pw@h:1"),
            (false, "u:%zz@h:1"),
            (false, "h:1?what=1"),
            (false, ""),
        ] {
            assert!(etcd_config(bad.0, bad.1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("etcd://root:secret@h1:2379,h2:2379"),
            "etcd://root:***@h1:2379,h2:2379"
        );
        assert_eq!(redact("etcds://h:1?ca=/x"), "etcds://h:1?ca=/x");
        assert_eq!(redact("rocksdb:///var/x"), "rocksdb:///var/x");
    }
}
