//! Authentication as Pulsar does it: the providers a broker enables ([`Providers`]: tokens,
//! TLS client certificates, Basic) and what a client presents ([`Credentials`]). Tokens are
//! JWTs signed with a shared secret (HS256) or an RSA key pair (RS256), the role taken from a
//! configurable claim (`sub` by default), expiry enforced when the token has one. Also the
//! helpers behind `magnetar tokens`.
//! Pure: keys come in as bytes; reading files and flags is the caller's job. The broker
//! checks CONNECT and HTTP requests with it; authorization (who may do what) is not built
//! yet.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials given")]
    Missing,
    #[error("authentication method {0:?} is not enabled on this broker")]
    Method(String),
    #[error("invalid user name or password")]
    BadCredentials,
    #[error("no trusted client certificate was presented")]
    NoClientCert,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token has no {0:?} claim naming a role")]
    NoRole(String),
    #[error("bad key: {0}")]
    Key(String),
}

/// What checks tokens.
#[derive(Clone)]
pub struct TokenAuth {
    key: DecodingKey,
    alg: Algorithm,
    role_claim: String,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("alg", &self.alg)
            .field("role_claim", &self.role_claim)
            .finish()
    }
}

/// Reads a key as Pulsar writes them: raw bytes, or `data:;base64,...`, or base64 text.
pub fn decode_secret(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim();
    let b64 = text.strip_prefix("data:;base64,").unwrap_or(text);
    if b64.is_empty() {
        return raw.to_vec(); // raw bytes that happen to be all whitespace
    }
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap_or_else(|_| raw.to_vec())
}

impl TokenAuth {
    /// HS256 with a shared secret.
    pub fn with_secret(secret: &[u8], role_claim: &str) -> TokenAuth {
        TokenAuth {
            key: DecodingKey::from_secret(secret),
            alg: Algorithm::HS256,
            role_claim: role_claim.to_string(),
        }
    }

    /// RS256 with a PEM public key.
    pub fn with_public_key(pem: &[u8], role_claim: &str) -> Result<TokenAuth, AuthError> {
        Ok(TokenAuth {
            key: DecodingKey::from_rsa_pem(pem).map_err(|e| AuthError::Key(e.to_string()))?,
            alg: Algorithm::RS256,
            role_claim: role_claim.to_string(),
        })
    }

    /// The role a token grants.
    pub fn role(&self, token: &str) -> Result<String, AuthError> {
        self.identify(token).map(|i| i.role)
    }

    /// The role a token grants and when the token expires.
    pub fn identify(&self, token: &str) -> Result<Identity, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let mut v = Validation::new(self.alg);
        // Pulsar tokens often carry no expiry; one that does is enforced
        v.required_spec_claims = HashSet::new();
        v.validate_exp = true;
        v.leeway = 0;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &v)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        // a list claim names its first string, as Pulsar reads it
        let role = match data.claims.get(&self.role_claim) {
            Some(serde_json::Value::String(r)) => Some(r.clone()),
            Some(serde_json::Value::Array(items)) => {
                items.iter().find_map(|r| r.as_str().map(str::to_string))
            }
            _ => None,
        }
        .filter(|r| !r.is_empty())
        .ok_or_else(|| AuthError::NoRole(self.role_claim.clone()))?;
        Ok(Identity {
            role,
            expires: data.claims.get("exp").and_then(serde_json::Value::as_u64),
        })
    }
}

/// The ways a client may prove who it is (Pulsar's `authenticationProviders`).
#[derive(Debug, Clone, Default)]
pub struct Providers {
    pub token: Option<TokenAuth>,
    pub basic: Option<crate::auth_basic::BasicAuth>,
    /// A client certificate verified by the TLS port names a role: its common name.
    pub tls: bool,
}

/// What a client presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// Nothing: no method, an empty one or `none`.
    None,
    Token(&'a str),
    /// `user:password`.
    Basic(&'a str),
    /// Method `tls`: the connection's client certificate.
    Tls,
    /// A method this broker does not know.
    Other(&'a str),
}

impl<'a> Credentials<'a> {
    /// From a method name and its data, as CONNECT carries them.
    pub fn from_method(method: Option<&'a str>, data: &'a str) -> Credentials<'a> {
        match method {
            None | Some("") | Some("none") => Credentials::None,
            Some("token") => Credentials::Token(data),
            Some("basic") => Credentials::Basic(data),
            Some("tls") => Credentials::Tls,
            Some(other) => Credentials::Other(other),
        }
    }
}

impl Providers {
    /// Who `credentials` name; `cert_role` is the common name of the connection's verified
    /// client certificate. Ok(None): no credentials and no certificate that speaks for the
    /// client (the caller decides about an anonymous role).
    pub fn identify(
        &self,
        credentials: Credentials<'_>,
        cert_role: Option<&str>,
    ) -> Result<Option<Identity>, AuthError> {
        let plain = |role: String| Identity {
            role,
            expires: None,
        };
        match credentials {
            Credentials::Token(t) => match &self.token {
                Some(a) => a.identify(t).map(Some),
                None => Err(AuthError::Method("token".into())),
            },
            Credentials::Basic(b) => match &self.basic {
                Some(a) => a
                    .role(b)
                    .map(|r| Some(plain(r)))
                    .ok_or(AuthError::BadCredentials),
                None => Err(AuthError::Method("basic".into())),
            },
            Credentials::Tls if !self.tls => Err(AuthError::Method("tls".into())),
            Credentials::Tls => cert_role
                .map(|r| Some(plain(r.to_string())))
                .ok_or(AuthError::NoClientCert),
            // a verified certificate speaks for a client that says nothing else (HTTPS)
            Credentials::None => Ok(cert_role.filter(|_| self.tls).map(|r| plain(r.to_string()))),
            Credentials::Other(m) => Err(AuthError::Method(m.to_string())),
        }
    }
}

/// Who a caller is, and until when (seconds since the epoch; None: no expiry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: String,
    pub expires: Option<u64>,
}

impl Identity {
    pub fn expired(&self) -> bool {
        self.expires.is_some_and(|e| e <= now_secs())
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token for `subject`, signed with a secret (HS256) or an RSA private key in PEM (RS256),
/// expiring after `ttl_secs` if given.
pub fn create_token(
    key: TokenKey<'_>,
    subject: &str,
    ttl_secs: Option<u64>,
) -> Result<String, AuthError> {
    let mut claims = serde_json::json!({ "sub": subject });
    if let Some(ttl) = ttl_secs {
        claims["exp"] = serde_json::Value::from(now_secs() + ttl);
    }
    let (header, key) = match key {
        TokenKey::Secret(s) => (Header::new(Algorithm::HS256), EncodingKey::from_secret(s)),
        TokenKey::PrivatePem(pem) => (
            Header::new(Algorithm::RS256),
            EncodingKey::from_rsa_pem(pem).map_err(|e| AuthError::Key(e.to_string()))?,
        ),
    };
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| AuthError::Key(e.to_string()))
}

/// How a token is signed.
#[derive(Debug, Clone, Copy)]
pub enum TokenKey<'a> {
    Secret(&'a [u8]),
    PrivatePem(&'a [u8]),
}

/// A fresh 32-byte secret for HS256.
pub fn create_secret_key() -> Vec<u8> {
    use rand::RngCore;
    let mut k = vec![0u8; 32];
    rand::rng().fill_bytes(&mut k);
    k
}

/// A fresh 2048-bit RSA key pair as (private PKCS#8 PEM, public SPKI PEM).
pub fn create_key_pair() -> Result<(String, String), AuthError> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let private = rsa::RsaPrivateKey::new(&mut rand_core_06::OsRng, 2048)
        .map_err(|e| AuthError::Key(e.to_string()))?;
    let public = rsa::RsaPublicKey::from(&private);
    let priv_pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| AuthError::Key(e.to_string()))?
        .to_string();
    let pub_pem = public
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| AuthError::Key(e.to_string()))?;
    Ok((priv_pem, pub_pem))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn secret_tokens_round_trip_and_expire() {
        let secret = create_secret_key();
        let auth = TokenAuth::with_secret(&secret, "sub");
        let t = create_token(TokenKey::Secret(&secret), "alice", None).unwrap();
        assert_eq!(auth.role(&t).unwrap(), "alice");
        let soon = create_token(TokenKey::Secret(&secret), "bob", Some(3600)).unwrap();
        assert_eq!(auth.role(&soon).unwrap(), "bob");
        // expired a minute ago
        let claims = serde_json::json!({"sub": "carol", "exp": now_secs() - 60});
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert!(matches!(auth.role(&old), Err(AuthError::Invalid(_))));
        let other = TokenAuth::with_secret(b"another secret", "sub");
        assert!(matches!(other.role(&t), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.role("garbage"), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.role(""), Err(AuthError::Missing)));
        let by_role = TokenAuth::with_secret(&secret, "role");
        assert!(matches!(by_role.role(&t), Err(AuthError::NoRole(_))));
    }

    #[test]
    fn key_pair_tokens_round_trip() {
        let (private, public) = create_key_pair().unwrap();
        let t = create_token(TokenKey::PrivatePem(private.as_bytes()), "dave", Some(60)).unwrap();
        let auth = TokenAuth::with_public_key(public.as_bytes(), "sub").unwrap();
        assert_eq!(auth.role(&t).unwrap(), "dave");
        let secret_signed = create_token(TokenKey::Secret(b"s"), "dave", None).unwrap();
        assert!(auth.role(&secret_signed).is_err());
        assert!(TokenAuth::with_public_key(b"not a key", "sub").is_err());
    }

    #[test]
    fn secrets_read_as_pulsar_writes_them() {
        assert_eq!(decode_secret(b"data:;base64,AAEC"), vec![0, 1, 2]);
        assert_eq!(decode_secret(b"AAEC\n"), vec![0, 1, 2]);
        assert_eq!(decode_secret(&[0xff, 0x00]), vec![0xff, 0x00]);
        assert_eq!(decode_secret(&[9; 4]), vec![9; 4]);
    }
}
