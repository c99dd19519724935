//! etcd with its own security on, reached through the URLs brokers and bookies take:
//! user authentication (`etcd://user:password@...`) and TLS with client certificates
//! (`etcds://...?ca=&cert=&key=`). Real etcd (Debian's), on free loopback ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use magnetar_meta::Expected;
use magnetar_testkit::{EtcdServer, EtcdTlsFiles};

/// What any store of a cluster must do: a CAS write, a read, a session with a record.
async fn works(url: &str) -> Result<()> {
    let store = magnetar_meta::connect(url).await?;
    store
        .put("/secure/a", Bytes::from_static(b"1"), Expected::Absent)
        .await?;
    assert_eq!(store.get("/secure/a").await?.unwrap().value, "1");
    let session = store.create_session(Duration::from_secs(2)).await?;
    store
        .put_ephemeral(&session, "/secure/e", Bytes::new(), Expected::Absent)
        .await?;
    store.revoke_session(session.id()).await?;
    assert!(store.get("/secure/e").await?.is_none());
    store.delete("/secure/a", Expected::Any).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_with_authentication_takes_credentials_and_only_them() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    // what an operator does with etcdctl: a root user, then authentication on
    let mut admin = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    admin.user_add("root", "s3cr@t,pw", None).await?;
    admin.user_grant_role("root", "root").await?;
    admin.auth_enable().await?;

    works(&format!("etcd://root:s3cr%40t%2Cpw@{}", etcd.endpoint())).await?;

    let anonymous = magnetar_meta::connect(&etcd.url())
        .await
        .unwrap_err()
        .to_string();
    assert!(anonymous.contains("etcd://user:password@"), "{anonymous}");
    let wrong = format!("etcd://root:not-the-password@{}", etcd.endpoint());
    let refused = magnetar_meta::connect(&wrong)
        .await
        .unwrap_err()
        .to_string();
    println!("wrong password: {refused}");
    assert!(refused.contains("authentication failed"), "{refused}");
    assert!(!refused.contains("not-the-password"), "{refused}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_over_tls_takes_a_client_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // one self-signed certificate serves as authority, server and client certificate
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    let files = EtcdTlsFiles {
        ca: cert.clone(),
        cert: cert.clone(),
        key: key.clone(),
    };
    let etcd = EtcdServer::start_tls(&files).await?;
    let (c, k) = (cert.display(), key.display());
    works(&format!(
        "etcds://{}?ca={c}&cert={c}&key={k}",
        etcd.endpoint()
    ))
    .await?;

    // plain text, or TLS without a certificate, is refused
    assert!(magnetar_meta::connect(&etcd.url()).await.is_err());
    let no_cert = format!("etcds://{}?ca={c}", etcd.endpoint());
    assert!(magnetar_meta::connect(&no_cert).await.is_err());
    let missing = format!("etcds://{}?ca=/nonexistent.pem", etcd.endpoint());
    let err = magnetar_meta::connect(&missing)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent.pem"), "{err}");
    Ok(())
}
