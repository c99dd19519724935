//! Basic authentication (Pulsar's `AuthenticationProviderBasic`): user names and password
//! hashes from an htpasswd file. Hashes are `$apr1$` (`htpasswd -m`, the form Pulsar's docs
//! use) or bcrypt (`$2y$`/`$2b$`/`$2a$`, `htpasswd -B`); a plaintext or unknown hash is
//! refused when the file is read, never compared. Pure: the file's text comes in as a string;
//! it answers in plain words and leaves the mapping to errors to `auth`.

use std::collections::HashMap;

use md5::{Digest, Md5};

/// Users and their password hashes.
#[derive(Clone)]
pub struct BasicAuth {
    users: HashMap<String, String>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.len())
            .finish()
    }
}

impl BasicAuth {
    /// Reads `user:hash` lines (blank lines and `#` comments skipped). Pulsar also takes
    /// the whole file base64-encoded; so does this.
    pub fn parse(text: &str) -> Result<BasicAuth, String> {
        use base64::Engine;
        let decoded;
        let text = if !text.contains(':') {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| "neither user:hash lines nor base64 of them".to_string())?;
            decoded =
                String::from_utf8(raw).map_err(|_| "the decoded file is not UTF-8".to_string())?;
            decoded.as_str()
        } else {
            text
        };
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}", n + 1);
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| bad("expected user:hash"))?;
            if user.is_empty() {
                return Err(bad("empty user name"));
            }
            if !(hash.starts_with("$apr1$") || is_bcrypt(hash)) {
                return Err(bad(
                    "the hash must be $apr1$ (htpasswd -m) or bcrypt (htpasswd -B)",
                ));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        if users.is_empty() {
            return Err("no users in the file".into());
        }
        Ok(BasicAuth { users })
    }

    /// The role `user:password` authenticates as (the user name); None when the user is
    /// unknown or the password wrong (which of the two is not told).
    pub fn role(&self, credentials: &str) -> Option<String> {
        let (user, password) = credentials.split_once(':')?;
        let stored = self.users.get(user)?;
        let ok = if let Some(rest) = stored.strip_prefix("$apr1$") {
            let salt = rest.split('$').next().unwrap_or_default();
            same(
                apr1(password.as_bytes(), salt).as_bytes(),
                stored.as_bytes(),
            )
        } else {
            bcrypt::verify(password, stored).unwrap_or(false)
        };
        ok.then(|| user.to_string())
    }
}

fn is_bcrypt(hash: &str) -> bool {
    ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p))
}

/// Constant-time equality.
fn same(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// Apache's MD5-based crypt (`$apr1$salt$hash`), as htpasswd -m writes it.
fn apr1(password: &[u8], salt: &str) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt.as_bytes()[..salt.len().min(8)];
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(MAGIC);
    ctx.update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(fin);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(fin);
        } else {
            c.update(password);
        }
        fin = c.finalize();
    }
    const ITOA: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(37);
    out.push_str("$apr1$");
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut put = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ITOA[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let b = |i: usize| fin[i] as u32;
    put((b(0) << 16) | (b(6) << 8) | b(12), 4);
    put((b(1) << 16) | (b(7) << 8) | b(13), 4);
    put((b(2) << 16) | (b(8) << 8) | b(14), 4);
    put((b(3) << 16) | (b(9) << 8) | b(15), 4);
    put((b(4) << 16) | (b(10) << 8) | b(5), 4);
    put(b(11), 2);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn apr1_matches_openssl() {
        // `openssl passwd -apr1 -salt abcdefgh password`
        assert_eq!(
            apr1(b"password", "abcdefgh"),
            "$apr1$abcdefgh$FBwExRW4dCc8aL.OvjpIE1"
        );
    }

    #[test]
    fn users_authenticate_with_their_password_only() {
        let bcrypt = bcrypt::hash("s3cret", 4).unwrap();
        let file =
            format!("# users\nalice:$apr1$abcdefgh$FBwExRW4dCc8aL.OvjpIE1\n\nbob:{bcrypt}\n");
        let auth = BasicAuth::parse(&file).unwrap();
        assert_eq!(auth.role("alice:password").unwrap(), "alice");
        assert_eq!(auth.role("bob:s3cret").unwrap(), "bob");
        for bad in ["alice:wrong", "bob:password", "carol:password", "alice", ""] {
            assert_eq!(auth.role(bad), None, "{bad}");
        }
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&file);
        assert_eq!(
            BasicAuth::parse(&b64)
                .unwrap()
                .role("alice:password")
                .unwrap(),
            "alice"
        );
        for bad in ["alice:plaintext", "nocolon", ":$apr1$x$y", "", "%%%"] {
            assert!(BasicAuth::parse(bad).is_err(), "{bad}");
        }
    }
}
