//! The Pulsar binary protocol side: accepting connections (here), each connection's state
//! machine (`connection`), its outgoing queue and writer (`outbound`), and the tasks
//! that answer each producer's SENDs in order (`receipts`).

pub mod connection;
pub mod outbound;
pub mod receipts;

use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::warn;

use crate::protocol::connection::Connection;
use crate::service::BrokerService;

/// Accepts connections until `shutdown` resolves.
pub async fn serve(
    svc: Arc<BrokerService>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let svc = Arc::clone(&svc);
                    let _ = stream.set_nodelay(true);
                    let (rd, wr) = stream.into_split();
                    tokio::spawn(async move { Connection::run(svc, rd, wr, peer, None).await });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Serves `pulsar+ssl://` connections from a TLS listener until `shutdown` resolves.
pub async fn serve_tls(
    svc: Arc<BrokerService>,
    mut listener: crate::tls::TlsListener,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            next = listener.next() => match next {
                Some((stream, peer)) => {
                    let svc = Arc::clone(&svc);
                    let (rd, wr) = tokio::io::split(stream);
                    tokio::spawn(async move {
                        Connection::run(svc, rd, wr, peer.addr, peer.cert_role).await
                    });
                }
                None => return,
            }
        }
    }
}
