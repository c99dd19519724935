//! TLS for client-facing ports (binary protocol `pulsar+ssl://` and HTTPS): a rustls
//! server configuration from PEM files, and a listener that hands over connections only
//! once their handshake is done. Handshakes run in their own tasks, so a slow or hostile
//! client never holds up the others. Knows nothing of what runs over the connections.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate file {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("key file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Client certificates a TLS port asks for: signed by the authorities in `trust` (PEM), and
/// either required (`require`) or optional (a client without one uses other credentials).
#[derive(Debug, Clone, Copy)]
pub struct ClientCerts<'a> {
    pub trust: &'a Path,
    pub require: bool,
}

/// A server configuration from a PEM certificate chain and its PEM private key; with
/// `clients`, client certificates are asked for and verified against their authorities.
pub fn server_config(
    cert: &Path,
    key: &Path,
    clients: Option<ClientCerts<'_>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            reason: "no certificate in it".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(c.trust)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TlsError::Cert {
                    path: c.trust.display().to_string(),
                    reason: e.to_string(),
                })?;
            for ca in certs {
                roots.add(ca).map_err(|e| TlsError::Cert {
                    path: c.trust.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            if roots.is_empty() {
                return Err(TlsError::Cert {
                    path: c.trust.display().to_string(),
                    reason: "no certificate in it".into(),
                });
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if c.require {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// Who is at the other end of a TLS connection: its address, and the subject common name of
/// the client certificate it presented, if any (rustls has verified it by then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer {
    pub addr: SocketAddr,
    pub cert_role: Option<String>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for TlsPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// The subject common name of a DER certificate: the role of a client that authenticates
/// with it, as Pulsar's TLS provider takes it. None when it has none or is unreadable.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (tag, cert, _) = der_item(der)?;
    let (tbs_tag, tbs, _) = der_item(cert)?;
    if tag != 0x30 || tbs_tag != 0x30 {
        return None;
    }
    let mut rest = tbs;
    // [0] version, when present
    let (tag, _, after) = der_item(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    // serial number, signature algorithm, issuer, validity: then the subject
    for _ in 0..4 {
        rest = der_item(rest)?.2;
    }
    let (tag, mut rdns, _) = der_item(rest)?;
    if tag != 0x30 {
        return None;
    }
    while !rdns.is_empty() {
        let (tag, mut set, after) = der_item(rdns)?;
        rdns = after;
        if tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (tag, atv, after) = der_item(set)?;
            set = after;
            let (oid_tag, oid, value) = der_item(atv)?;
            // 2.5.4.3: commonName
            if tag == 0x30 && oid_tag == 0x06 && oid == [0x55, 0x04, 0x03] {
                let (_, name, _) = der_item(value)?;
                return String::from_utf8(name.to_vec()).ok();
            }
        }
    }
    None
}

/// One DER item: (tag, contents, what follows); None when it runs past the input.
fn der_item(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, b.get(header..end)?, b.get(end..)?))
}

/// Accepts TCP connections and yields them once their TLS handshake succeeded.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, TlsPeer)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(listener: TcpListener, cfg: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(cfg);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let cert_role = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| common_name(c.as_ref()));
                            let peer = TlsPeer {
                                addr: peer,
                                cert_role,
                            };
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }

    /// The next connection whose handshake is done (None once the acceptor has stopped).
    pub async fn next(&mut self) -> Option<(TlsStream<TcpStream>, TlsPeer)> {
        self.rx.recv().await
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(TlsPeer {
            addr: self.local,
            cert_role: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_common_name_is_read_from_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "acme");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "app-1");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("app-1"));
        let mut none = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        none.distinguished_name = rcgen::DistinguishedName::new();
        let cert = none.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), None);
        // truncated or garbage input is no name, never a panic
        let der = cert.der().to_vec();
        for cut in 0..der.len() {
            let _ = common_name(&der[..cut]);
        }
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
