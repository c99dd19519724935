//! Key rules shared by every backend, so a key that works on one works on all.

use crate::{MetaError, Result};

/// Longest key accepted. etcd accepts more, but a path this long is a bug upstream.
pub const MAX_KEY_BYTES: usize = 4096;

/// Largest value accepted: 1 MiB. etcd's request limit (1.5 MiB by default) leaves room for
/// the key and the transaction around it.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Largest total of keys and values in one transaction; our etcd is started with
/// `--max-request-bytes` above it (see docs/operations.md).
pub const MAX_TXN_BYTES: usize = 8 * 1024 * 1024;

/// Most operations in one transaction (etcd's default `--max-txn-ops` is 128).
pub const MAX_TXN_OPS: usize = 128;

/// Checks a record key: absolute (`/a/b`), no empty segment, no trailing `/`, no NUL or
/// control character, at most [`MAX_KEY_BYTES`].
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |reason| {
        Err(MetaError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("key is empty");
    }
    if !key.starts_with('/') {
        return bad("key must start with '/'");
    }
    if key == "/" {
        return bad("the root is not a record");
    }
    validate_path_chars(key)
}

/// Checks a path given to `children` or `watch`: like a key, but `/` (the root) is allowed.
pub fn validate_path(path: &str) -> Result<()> {
    if path == "/" {
        return Ok(());
    }
    validate_key(path)
}

fn validate_path_chars(key: &str) -> Result<()> {
    let bad = |reason| {
        Err(MetaError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.len() > MAX_KEY_BYTES {
        return bad("key is longer than 4096 bytes");
    }
    if key.ends_with('/') {
        return bad("key must not end with '/'");
    }
    if key.contains("//") {
        return bad("key has an empty segment");
    }
    if key.chars().any(|c| c.is_control()) {
        return bad("key contains a NUL or control character");
    }
    Ok(())
}

pub fn validate_value(key: &str, len: usize) -> Result<()> {
    if len > MAX_VALUE_BYTES {
        return Err(MetaError::ValueTooLarge {
            key: key.to_string(),
            size: len,
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// The prefix that every descendant of `path` starts with.
pub fn descendant_prefix(path: &str) -> String {
    if path == "/" {
        "/".to_string()
    } else {
        format!("{path}/")
    }
}

/// Whether `key` is `prefix` itself or lies below it, for watches on a path.
pub fn in_subtree(path: &str, key: &str) -> bool {
    path == "/"
        || key == path
        || (key.len() > path.len() && key.starts_with(path) && key.as_bytes()[path.len()] == b'/')
}

/// Splits `key` (a descendant of `base`, which ends with `/`) into its child name and whether
/// the key lies deeper than that child.
pub fn child_of<'a>(base: &str, key: &'a str) -> Option<(&'a str, bool)> {
    let rest = key.strip_prefix(base)?;
    match rest.find('/') {
        Some(i) => Some((&rest[..i], true)),
        None if rest.is_empty() => None,
        None => Some((rest, false)),
    }
}

/// Where to continue a children scan after `key`, which gave child `child`: past the whole
/// subtree of a deep key, else just past the key itself. Names sorting between `child` and
/// `child/` (e.g. `child-1`) are found because keys come in byte order.
pub fn resume_after(base: &str, key: &str, child: &str, deep: bool) -> String {
    if deep {
        // '0' is the byte after '/', so this skips every key under `base/child/`.
        format!("{base}{child}0")
    } else {
        format!("{key}\0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_paths() {
        for k in ["/a", "/a/b", "/ledgers/00000042", "/x-y.z_w/Ä"] {
            validate_key(k).unwrap();
        }
        validate_path("/").unwrap();
    }

    #[test]
    fn rejects_bad_keys_with_reasons() {
        for k in ["", "a", "a/b", "/", "/a/", "//a", "/a//b", "/a\0b", "/a\nb"] {
            let err = validate_key(k).unwrap_err();
            assert!(matches!(err, MetaError::InvalidKey { .. }), "{k:?}: {err}");
        }
        let long = format!("/{}", "x".repeat(MAX_KEY_BYTES));
        assert!(validate_key(&long).is_err());
    }

    #[test]
    fn subtree_membership() {
        assert!(in_subtree("/a", "/a"));
        assert!(in_subtree("/a", "/a/b"));
        assert!(!in_subtree("/a", "/ab"));
        assert!(in_subtree("/", "/anything"));
    }

    #[test]
    fn child_split() {
        assert_eq!(child_of("/a/", "/a/b"), Some(("b", false)));
        assert_eq!(child_of("/a/", "/a/b/c"), Some(("b", true)));
        assert_eq!(child_of("/a/", "/b"), None);
    }
}
