//! Cluster mode as real processes on loopback: etcd (Debian's), `magnetar init-cluster`,
//! three `magnetar bookie`s and two `magnetar broker`s, driven by the official Python client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use magnetar_bookie::client::BookieClient;
use magnetar_bookie::protocol::Status;
use magnetar_testkit::{
    BookieProc, BrokerProc, EtcdServer, http_get, http_request, python, wait_until,
};

mod common;
use common::{bin, run_py, script};

const CLUSTER: &str = "test-cluster";
/// The bookie protocol's shared secret ("cluster-secret-for-tests").
const SECRET: &str = "data:;base64,Y2x1c3Rlci1zZWNyZXQtZm9yLXRlc3Rz";

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
            let flags = ["--meta", &meta, "--bookie-auth-secret", SECRET];
            bookies.push(BookieProc::start(bin(), &flags).await?);
        }
        let mut brokers = Vec::new();
        let mut flags = vec!["--bookie-auth-secret", SECRET];
        flags.extend_from_slice(broker_flags);
        for _ in 0..2 {
            brokers.push(BrokerProc::start(bin(), &meta, CLUSTER, &flags).await?);
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
async fn cluster_members_refuse_to_start_misconfigured() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let out = std::process::Command::new(bin())
        .args(["broker", "--meta", &etcd.url(), "--cluster", "nowhere"])
        .args(["--broker-port", "0", "--web-port", "0"])
        .args(["--bookie-auth-disabled", "true"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("init-cluster"), "{err}");
    // a cluster member without the bookie secret is refused unless told the network is trusted
    let dir = tempfile::tempdir()?;
    let data = dir.path().display().to_string();
    for role in [
        &[
            "broker",
            "--cluster",
            "c",
            "--broker-port",
            "0",
            "--web-port",
            "0",
        ][..],
        &[
            "bookie",
            "--bookie-port",
            "0",
            "--http-port",
            "0",
            "--data-dir",
            &data,
        ][..],
    ] {
        let out = std::process::Command::new(bin())
            .args(role)
            .args(["--meta", &etcd.url()])
            .output()?;
        assert!(!out.status.success(), "{role:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--bookie-auth-secret"), "{role:?}: {err}");
    }
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
    // 64 bundles: with 16 topics, both brokers get some whatever their (random) names hash to
    let created = http_request(
        a.web,
        "PUT",
        "/admin/v2/namespaces/public/spread",
        r#"{"bundles": {"numBundles": 64}}"#,
    )?;
    assert!(created.starts_with("HTTP/1.0 204"), "{created}");
    // three copies of every entry, two acknowledged: set through one broker, used by both
    let persistence = "/admin/v2/namespaces/public/spread/persistence";
    let set = |body: &str| http_request(a.web, "POST", persistence, body);
    let impossible =
        set(r#"{"bookkeeperEnsemble": 4, "bookkeeperWriteQuorum": 3, "bookkeeperAckQuorum": 2}"#)?;
    assert!(
        impossible.starts_with("HTTP/1.0 412") && impossible.contains("3 bookies available"),
        "{impossible}"
    );
    let inverted =
        set(r#"{"bookkeeperEnsemble": 3, "bookkeeperWriteQuorum": 2, "bookkeeperAckQuorum": 3}"#)?;
    assert!(inverted.starts_with("HTTP/1.0 412"), "{inverted}");
    let ok =
        set(r#"{"bookkeeperEnsemble": 3, "bookkeeperWriteQuorum": 3, "bookkeeperAckQuorum": 2}"#)?;
    assert!(ok.starts_with("HTTP/1.0 204"), "{ok}");
    let shown = http_get(b.web, persistence)?;
    assert!(shown.contains(r#""bookkeeperWriteQuorum":3"#), "{shown}");
    let out = run_py(
        "cluster.py",
        &[
            "spread",
            &a.service_url(),
            &b.service_url(),
            &a.web_url(),
            &b.web_url(),
            "16",
            "public/spread",
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
    // each broker's bundles, as either broker reports them: disjoint, all four covered
    let mut all = Vec::new();
    for owner in [a, b] {
        let path = format!("/admin/v2/brokers/{CLUSTER}/{}/ownedNamespaces", owner.web);
        let body = |r: String| r.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        let seen_by_a = body(http_get(a.web, &path)?).unwrap_or_default();
        let seen_by_b = body(http_get(b.web, &path)?).unwrap_or_default();
        assert_eq!(seen_by_a, seen_by_b, "both say the same");
        let bundles: Vec<String> = seen_by_a
            .split('"')
            .filter(|k| k.starts_with("public/spread/0x"))
            .map(str::to_string)
            .collect();
        assert!(
            !bundles.is_empty(),
            "{} owns nothing: {seen_by_a}",
            owner.web
        );
        all.push(bundles);
    }
    assert!(
        all[0].iter().all(|k| !all[1].contains(k)),
        "one owner per bundle: {all:?}"
    );
    // unloading one of a's bundles: b sends the request to a; a gives the bundle up
    let range = all[0][0].rsplit('/').next().unwrap().to_string();
    let at_b = http_request(
        b.web,
        "PUT",
        &format!("/admin/v2/namespaces/public/spread/{range}/unload"),
        "",
    )?;
    assert!(
        at_b.starts_with("HTTP/1.0 307")
            && at_b.contains(&format!(
                "location: http://{}/admin/v2/namespaces/public/spread/{range}/unload",
                a.web
            )),
        "{at_b}"
    );
    let unloaded = http_request(
        a.web,
        "PUT",
        &format!("/admin/v2/namespaces/public/spread/{range}/unload"),
        "",
    )?;
    assert!(unloaded.starts_with("HTTP/1.0 204"), "{unloaded}");
    let owned = http_get(
        b.web,
        &format!("/admin/v2/brokers/{CLUSTER}/{}/ownedNamespaces", a.web),
    )?;
    assert!(!owned.contains(&all[0][0]), "{range} released: {owned}");
    // the bookie port serves nobody without the cluster's secret
    let timeout = Duration::from_secs(5);
    let stranger = BookieClient::connect(c.bookies[0].addr, timeout).await?;
    let refused = stranger
        .read(1, 0)
        .await
        .expect_err("read without the secret");
    assert_eq!(refused.status(), Some(Status::Unauthenticated), "{refused}");
    let wrong = Bytes::from_static(b"not-the-secret");
    assert!(
        BookieClient::connect_with(c.bookies[0].addr, timeout, Some(&wrong))
            .await
            .is_err()
    );
    let member = Bytes::from_static(b"cluster-secret-for-tests");
    let ok = BookieClient::connect_with(c.bookies[0].addr, timeout, Some(&member)).await?;
    ok.health().await?;
    let refusals =
        magnetar_testkit::metric_value(c.bookies[0].http, "bookie_unauthenticated_total");
    assert_eq!(refusals, Some(2.0));
    // every bookie has a copy
    for bk in &c.bookies {
        let adds = magnetar_testkit::metric_value(bk.http, "bookie_adds_total").unwrap_or(0.0);
        assert!(adds > 0.0, "bookie {} holds no entries", bk.addr);
    }
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
    let stream = Stream::start(&url, topic)?;
    stream.advance(2000, &c).await?;
    // a subscription that has taken and acknowledged the first 1000
    run_py("durability.py", &["consume", &url, topic, "kept", "1000"]).await?;

    let lookup = http_get(
        c.brokers[0].web,
        "/lookup/v2/topic/persistent/public/default/failover",
    )?;
    let owner = c
        .brokers
        .iter()
        .position(|b| lookup.contains(&b.service_url()))
        .with_context(|| format!("owner of {topic}: {lookup}"))?;
    // one leader, the same seen from both brokers
    let leader_of = |web| http_get(web, "/admin/v2/brokers/leaderBroker").unwrap_or_default();
    let leader = leader_of(c.brokers[0].web);
    assert!(leader.contains("brokerId"), "{leader}");
    assert_eq!(leader_of(c.brokers[1].web), leader);
    let killed_at = now_ms();
    c.brokers[owner].kill9();
    stream.advance(1000, &c).await?;
    let all = receipts(&stream.file);
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
    let survivor = c.brokers[1 - owner].service_url();
    let out = stream.stop_and_verify(&survivor, topic).await?;
    println!("{out}");
    // and the subscription goes on where it was
    let out = run_py("cluster.py", &["next", &survivor, topic, "kept"]).await?;
    let next = out.lines().find_map(|l| l.strip_prefix("next "));
    assert_eq!(next, Some("1000"), "the subscription's position is kept");

    // the survivor leads now (it did, or took over when the leader's session ended)
    let survivor_web = c.brokers[1 - owner].web;
    let survivor_id = format!(r#""brokerId":"{survivor_web}""#);
    wait_until(Duration::from_secs(30), "the survivor leading", || {
        let now = leader_of(survivor_web);
        let leads = now.contains(&survivor_id);
        async move { leads }
    })
    .await?;

    // the killed broker comes back and joins again
    c.brokers[owner].restart().await?;
    let other = c.brokers[1 - owner].web;
    let back = c.brokers[owner].web.to_string();
    wait_until(Duration::from_secs(30), "the restarted broker live", || {
        let live = http_get(other, &format!("/admin/v2/brokers/{CLUSTER}")).unwrap_or_default();
        let found = live.contains(&back);
        async move { found }
    })
    .await?;
    Ok(())
}

/// A producer through both brokers' URLs, writing receipts to a file of its own.
struct Stream {
    child: tokio::process::Child,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Stream {
    fn start(url: &str, topic: &str) -> Result<Stream> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("receipts");
        let child = tokio::process::Command::new(python()?)
            .arg(script("durability.py"))
            .args([
                "produce",
                url,
                topic,
                &file.display().to_string(),
                "100000000",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        Ok(Stream {
            child,
            file,
            _dir: dir,
        })
    }

    fn count(&self) -> usize {
        receipts(&self.file).len()
    }

    /// Waits until `more` receipts beyond what it had have arrived.
    async fn advance(&self, more: usize, c: &Cluster) -> Result<()> {
        let target = self.count() + more;
        wait_until(
            Duration::from_secs(60),
            &format!("{target} receipts"),
            || {
                let n = self.count();
                async move { n >= target }
            },
        )
        .await
        .map_err(|e| e.context(c.logs()))
    }

    /// Stops the producer; checks every receipted message is stored, through `url`.
    async fn stop_and_verify(mut self, url: &str, topic: &str) -> Result<String> {
        self.child.kill().await?;
        let file = self.file.display().to_string();
        run_py("durability.py", &["verify", url, topic, &file]).await
    }
}

#[tokio::test]
async fn killing_a_bookie_mid_stream_loses_nothing_at_2_2_2() -> Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let url = c.service_url();
    let topic = "persistent://public/default/bookie-loss";
    let stream = Stream::start(&url, topic)?;
    stream.advance(2000, &c).await?;
    // the busiest bookie holds a copy of the entries being written now
    let adds = |bk: &BookieProc| {
        magnetar_testkit::metric_value(bk.http, "bookie_adds_total").unwrap_or(0.0) as u64
    };
    let victim = (0..c.bookies.len())
        .max_by_key(|&i| adds(&c.bookies[i]))
        .unwrap();
    c.bookies[victim].kill9();
    stream.advance(2000, &c).await?;
    let out = stream.stop_and_verify(&url, topic).await?;
    assert!(out.contains("verified"), "{out}");
    Ok(())
}

#[tokio::test]
async fn brokers_ride_out_an_etcd_restart() -> Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let url = c.service_url();
    let topic = "persistent://public/default/etcd-restart";
    let stream = Stream::start(&url, topic)?;
    stream.advance(2000, &c).await?;
    c.etcd.kill9();
    // the fault itself (etcd down for a second), not a wait for a condition
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.etcd.restart().await?;
    stream.advance(2000, &c).await?;
    let out = stream.stop_and_verify(&url, topic).await?;
    assert!(out.contains("verified"), "{out}");
    // both brokers are members again
    let b = &c.brokers[0];
    wait_until(Duration::from_secs(30), "two live brokers", || {
        let live = http_get(b.web, &format!("/admin/v2/brokers/{CLUSTER}")).unwrap_or_default();
        async move { live.matches(':').count() >= 2 }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_cluster_script_starts_a_working_cluster() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let script_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh");
    let run = |verb: &str| -> Result<String> {
        let out = std::process::Command::new("bash")
            .arg(&script_path)
            .args(verb.split(' '))
            .env("MAGNETAR_BIN", bin())
            .env("CLUSTER_DIR", dir.path())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "cluster.sh {verb}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    };
    let up = run("up")?;
    let url = up
        .lines()
        .find_map(|l| l.strip_prefix("service URL: "))
        .with_context(|| format!("no service URL in {up}"))?
        .trim()
        .to_string();
    let checked = async {
        assert!(run("up").is_err(), "a second `up` is refused");
        let status = run("status")?;
        assert_eq!(status.matches("health: 200").count(), 2, "{status}");
        // one process down and up again, as an operator would
        run("kill broker-1")?;
        let status = run("status")?;
        assert!(status.contains("broker-1: stopped"), "{status}");
        run("start broker-1")?;
        let status = run("status")?;
        assert_eq!(status.matches("health: 200").count(), 2, "{status}");
        let receipts = dir.path().join("receipts");
        let r = receipts.display().to_string();
        let topic = "persistent://public/default/script";
        run_py("durability.py", &["produce", &url, topic, &r, "100"]).await?;
        run_py("durability.py", &["verify", &url, topic, &r]).await
    }
    .await;
    let down = run("down")?;
    let verified = checked?;
    assert!(verified.contains("verified 100"), "{verified}");
    assert!(down.contains("cluster stopped (6 processes)"), "{down}");
    Ok(())
}

#[tokio::test]
async fn deploy_files_name_real_commands_and_flags() -> Result<()> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let out = run_py(
        "deploy_check.py",
        &[&bin().display().to_string(), &deploy.display().to_string()],
    )
    .await?;
    println!("{out}");
    assert!(out.contains("command lines checked"), "{out}");
    Ok(())
}
