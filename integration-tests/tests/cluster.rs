//! Cluster mode as real processes on loopback: etcd (Debian's), `magnetar init-cluster`,
//! three `magnetar bookie`s and two `magnetar broker`s, driven by the official Python client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use magnetar_testkit::{BookieProc, BrokerProc, EtcdServer, http_get, python, wait_until};

mod common;
use common::{bin, run_py, script};

const CLUSTER: &str = "test-cluster";

struct Cluster {
    etcd: EtcdServer,
    bookies: Vec<BookieProc>,
    brokers: Vec<BrokerProc>,
}

impl Cluster {
    /// etcd, init-cluster, three bookies, two brokers (each broker flag in `broker_flags`).
    async fn start(broker_flags: &[&str]) -> Result<Cluster> {
        let etcd = EtcdServer::start().await?;
        let meta = etcd.url();
        let init = |what: &str| -> Result<String> {
            let out = std::process::Command::new(bin())
                .args(["init-cluster", "--meta", &meta, "--cluster", CLUSTER])
                .output()
                .with_context(|| format!("run init-cluster ({what})"))?;
            if !out.status.success() {
                bail!("init-cluster: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let first = init("first")?;
        assert!(first.contains("initialized"), "{first}");
        let again = init("again")?;
        assert!(again.contains("already initialized"), "{again}");
        let mut bookies = Vec::new();
        for _ in 0..3 {
            bookies.push(BookieProc::start(bin(), &["--meta", &meta]).await?);
        }
        let mut brokers = Vec::new();
        for _ in 0..2 {
            brokers.push(BrokerProc::start(bin(), &meta, CLUSTER, broker_flags).await?);
        }
        Ok(Cluster {
            etcd,
            bookies,
            brokers,
        })
    }

    /// Both brokers, as a multi-host service URL.
    fn service_url(&self) -> String {
        let hosts: Vec<String> = self.brokers.iter().map(|b| b.broker.to_string()).collect();
        format!("pulsar://{}", hosts.join(","))
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for b in &self.brokers {
            out += &format!("--- {}\n{}\n", b.broker, b.proc.log_tail(40));
        }
        out
    }
}

#[tokio::test]
async fn a_broker_refuses_to_start_in_an_uninitialized_cluster() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let out = std::process::Command::new(bin())
        .args(["broker", "--meta", &etcd.url(), "--cluster", "nowhere"])
        .args(["--broker-port", "0", "--web-port", "0"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("init-cluster"), "{err}");
    let out = std::process::Command::new(bin())
        .args(["broker", "--cluster", "c", "--broker-port", "0"])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--meta"));
    let out = std::process::Command::new(bin())
        .args(["broker", "--meta", &etcd.url(), "--cluster", "c"])
        .args(["--managed-ledger-default-ack-quorum", "3"])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ack quorum"));
    Ok(())
}

#[tokio::test]
async fn topics_spread_over_both_brokers_and_either_url_serves_them() -> Result<()> {
    let c = Cluster::start(&[]).await?;
    let (a, b) = (&c.brokers[0], &c.brokers[1]);
    let out = run_py(
        "cluster.py",
        &[
            "spread",
            &a.service_url(),
            &b.service_url(),
            &a.web_url(),
            &b.web_url(),
            "16",
        ],
    )
    .await
    .map_err(|e| e.context(c.logs()))?;
    println!("{out}");
    // both brokers are live and each says so
    let live = http_get(a.web, &format!("/admin/v2/brokers/{CLUSTER}"))?;
    assert!(
        live.contains(&b.web.to_string()) && live.contains(&a.web.to_string()),
        "{live}"
    );
    // the data went to the bookies with the cluster's default 2/2/2
    let bookies_with_data = c
        .bookies
        .iter()
        .filter(|bk| {
            magnetar_testkit::metric_value(bk.http, "bookie_adds_total").unwrap_or(0.0) > 0.0
        })
        .count();
    assert!(bookies_with_data >= 2, "2 copies of every entry");
    Ok(())
}

/// Receipts written so far: (index, unix ms).
fn receipts(p: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (i, t) = l.split_once(' ')?;
            Some((i.parse().ok()?, t.parse().ok()?))
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[tokio::test]
async fn killing_a_topics_owner_moves_it_without_losing_anything() -> Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let url = c.service_url();
    let topic = "persistent://public/default/failover";
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("receipts");
    let file_s = file.display().to_string();
    let mut producer = tokio::process::Command::new(python()?)
        .arg(script("cluster.py"))
        .args(["produce", &url, topic, &file_s, "100000000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    wait_until(Duration::from_secs(60), "2000 receipts", || {
        let n = receipts(&file).len();
        async move { n >= 2000 }
    })
    .await
    .map_err(|e| e.context(c.logs()))?;
    // a subscription that has taken and acknowledged the first 1000
    run_py("cluster.py", &["consume", &url, topic, "kept", "1000"]).await?;

    let lookup = http_get(
        c.brokers[0].web,
        "/lookup/v2/topic/persistent/public/default/failover",
    )?;
    let owner = c
        .brokers
        .iter()
        .position(|b| lookup.contains(&b.service_url()))
        .with_context(|| format!("owner of {topic}: {lookup}"))?;
    let killed_at = now_ms();
    c.brokers[owner].kill9();
    wait_until(Duration::from_secs(60), "receipts after the kill", || {
        let after = receipts(&file)
            .iter()
            .filter(|(_, t)| *t > killed_at)
            .count();
        async move { after >= 1000 }
    })
    .await
    .map_err(|e| e.context(c.logs()))?;
    producer.kill().await?;
    let all = receipts(&file);
    // receipts already on their way when the broker died may be counted a little after the
    // kill: the outage is the longest pause in receipts that ends after it
    let mut times: Vec<u64> = all.iter().map(|(_, t)| *t).collect();
    times.sort_unstable();
    let resumed = times
        .windows(2)
        .filter(|w| w[1] > killed_at)
        .max_by_key(|w| w[1] - w[0])
        .map_or(killed_at, |w| w[1]);
    println!(
        "failover: the producer resumed {} ms after kill -9 of its broker ({} receipts)",
        resumed.saturating_sub(killed_at),
        all.len()
    );

    // nothing acknowledged is lost: every receipted index is readable through the survivor
    let plain = dir.path().join("indexes");
    std::fs::write(
        &plain,
        all.iter()
            .map(|(i, _)| format!("{i}\n"))
            .collect::<String>(),
    )?;
    let survivor = c.brokers[1 - owner].service_url();
    let out = run_py(
        "durability.py",
        &["verify", &survivor, topic, &plain.display().to_string()],
    )
    .await
    .map_err(|e| e.context(c.logs()))?;
    println!("{out}");
    // and the subscription goes on where it was
    let out = run_py("cluster.py", &["next", &survivor, topic, "kept"]).await?;
    let next = out.lines().find_map(|l| l.strip_prefix("next "));
    assert_eq!(next, Some("1000"), "the subscription's position is kept");

    // the killed broker comes back and serves again
    c.brokers[owner].restart().await?;
    let _ = &c.etcd;
    Ok(())
}
