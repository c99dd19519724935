//! The admin REST client: a small blocking client for the admin API v2 (token and TLS
//! options) and the mapping from topic and namespace names to paths. It blocks (ureq); from
//! async code use [`AdminClient::call_async`], which runs the call on the blocking pool.

use std::io::Read;
use std::sync::Arc;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The server answered with an error status; `reason` is its `{"reason"}`.
    #[error("{status}: {reason}")]
    Status { status: u16, reason: String },
    #[error("cannot reach {url}: {message}")]
    Transport { url: String, message: String },
    #[error("{0}")]
    Usage(String),
}

/// How to reach the admin API.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `http://host:8080` or `https://host:8443`.
    pub url: String,
    pub token: Option<String>,
    /// PEM file of the certificates to trust for https.
    pub trust_cert: Option<std::path::PathBuf>,
    /// Accept any server certificate (testing only).
    pub insecure: bool,
}

#[derive(Clone)]
pub struct AdminClient {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl AdminClient {
    pub fn new(c: &Connection) -> Result<AdminClient, AdminError> {
        let mut tls = ureq::tls::TlsConfig::builder().disable_verification(c.insecure);
        if let Some(path) = &c.trust_cert {
            let pem = std::fs::read(path)
                .map_err(|e| AdminError::Usage(format!("cannot read {}: {e}", path.display())))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(AdminError::Usage(format!(
                    "{} holds no PEM certificate",
                    path.display()
                )));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls.build())
            .timeout_global(Some(std::time::Duration::from_secs(60)))
            .build()
            .into();
        Ok(AdminClient {
            agent,
            base: c.url.trim_end_matches('/').to_string(),
            token: c.token.clone(),
        })
    }

    /// Sends a request; the parsed JSON answer (Null for an empty one).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AdminError> {
        let (_, bytes) = self.raw(method, path, body)?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())))
    }

    /// Sends a request; the status and body bytes of a successful answer.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Vec<u8>), AdminError> {
        let url = format!("{}{}", self.base, path);
        let transport = |e: ureq::Error| AdminError::Transport {
            url: url.clone(),
            message: e.to_string(),
        };
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let payload = body.map(|b| b.to_string().into_bytes());
        macro_rules! with_auth {
            ($req:expr) => {{
                let mut r = $req;
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r
            }};
        }
        let resp = match method {
            "GET" => with_auth!(self.agent.get(&url)).call(),
            "DELETE" => with_auth!(self.agent.delete(&url)).call(),
            "PUT" | "POST" => {
                let req = if method == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                let req = with_auth!(req).header("Content-Type", "application/json");
                match &payload {
                    Some(p) => req.send(&p[..]),
                    None => req.send_empty(),
                }
            }
            other => return Err(AdminError::Usage(format!("unsupported method {other}"))),
        }
        .map_err(transport)?;
        let status = resp.status().as_u16();
        let mut bytes = Vec::new();
        resp.into_body()
            .into_reader()
            .read_to_end(&mut bytes)
            .map_err(|e| AdminError::Transport {
                url: url.clone(),
                message: e.to_string(),
            })?;
        if status >= 400 {
            let reason = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(AdminError::Status { status, reason });
        }
        Ok((status, bytes))
    }
}

impl AdminClient {
    /// [`AdminClient::call`] on tokio's blocking pool.
    pub async fn call_async(
        &self,
        method: &'static str,
        path: String,
        body: Option<Value>,
    ) -> Result<Value, AdminError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.call(method, &path, body.as_ref()))
            .await
            .map_err(|e| AdminError::Usage(format!("admin call did not finish: {e}")))?
    }

    /// Creates a tenant allowed on `clusters`.
    pub fn create_tenant(&self, tenant: &str, clusters: &[&str]) -> Result<(), AdminError> {
        let body = serde_json::json!({"allowedClusters": clusters, "adminRoles": []});
        self.call(
            "PUT",
            &format!("/admin/v2/tenants/{}", seg(tenant)),
            Some(&body),
        )
        .map(|_| ())
    }

    /// Creates `tenant/namespace`.
    pub fn create_namespace(&self, ns: &str) -> Result<(), AdminError> {
        self.call(
            "PUT",
            &format!("/admin/v2/namespaces/{}", namespace_path(ns)?),
            None,
        )
        .map(|_| ())
    }

    /// Creates a topic with `partitions` partitions (0: a topic without partitions).
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), AdminError> {
        let t = topic_path(topic)?;
        if partitions == 0 {
            self.call("PUT", &format!("/admin/v2/{t}"), None)
                .map(|_| ())
        } else {
            let body = Value::from(partitions);
            self.call("PUT", &format!("/admin/v2/{t}/partitions"), Some(&body))
                .map(|_| ())
        }
    }

    /// The topic's stats (`partitioned-stats` for a partitioned topic).
    pub fn topic_stats(&self, topic: &str, partitioned: bool) -> Result<Value, AdminError> {
        let t = topic_path(topic)?;
        let what = if partitioned {
            "partitioned-stats"
        } else {
            "stats"
        };
        self.call("GET", &format!("/admin/v2/{t}/{what}"), None)
    }
}

/// One path segment, percent-encoded.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `tenant/namespace` as a path suffix.
pub fn namespace_path(ns: &str) -> Result<String, AdminError> {
    match ns.split('/').collect::<Vec<_>>().as_slice() {
        [t, n] if !t.is_empty() && !n.is_empty() => Ok(format!("{}/{}", seg(t), seg(n))),
        _ => Err(AdminError::Usage(format!(
            "{ns:?} is not a namespace (tenant/namespace)"
        ))),
    }
}

/// A topic name (`persistent://t/ns/x`, `t/ns/x` or `x`) as the path suffix
/// `persistent/t/ns/x`.
pub fn topic_path(name: &str) -> Result<String, AdminError> {
    let (domain, rest) = match name.split_once("://") {
        Some((d @ ("persistent" | "non-persistent"), r)) => (d, r),
        Some((d, _)) => {
            return Err(AdminError::Usage(format!("unknown topic domain {d:?}")));
        }
        None => ("persistent", name),
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let (t, n, local) = match parts.as_slice() {
        [local] => ("public", "default", *local),
        [t, n, local] => (*t, *n, *local),
        _ => {
            return Err(AdminError::Usage(format!(
                "{name:?} is not a topic name (persistent://tenant/namespace/topic)"
            )));
        }
    };
    if [t, n, local].iter().any(|s| s.is_empty()) {
        return Err(AdminError::Usage(format!("{name:?} has an empty part")));
    }
    Ok(format!("{domain}/{}/{}/{}", seg(t), seg(n), seg(local)))
}

/// Parses `ledger:entry` into a message-id body.
pub fn message_id(s: &str) -> Result<Value, AdminError> {
    let bad = || AdminError::Usage(format!("{s:?} is not a message id (ledger:entry)"));
    let (l, e) = s.split_once(':').ok_or_else(bad)?;
    let l: i64 = l.trim().parse().map_err(|_| bad())?;
    let e: i64 = e.trim().parse().map_err(|_| bad())?;
    Ok(serde_json::json!({"ledgerId": l, "entryId": e}))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_become_paths() {
        assert_eq!(topic_path("x").unwrap(), "persistent/public/default/x");
        assert_eq!(topic_path("t/n/x y").unwrap(), "persistent/t/n/x%20y");
        assert_eq!(
            topic_path("non-persistent://t/n/x").unwrap(),
            "non-persistent/t/n/x"
        );
        assert!(topic_path("http://t/n/x").is_err());
        assert!(topic_path("t/n").is_err());
        assert!(topic_path("t//x").is_err());
        assert_eq!(namespace_path("t/n").unwrap(), "t/n");
        assert!(namespace_path("t").is_err());
        assert_eq!(message_id("3:7").unwrap()["entryId"], 7);
        assert!(message_id("3").is_err());
    }
}
