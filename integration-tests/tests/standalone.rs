//! `magnetar standalone` driven by the official Python client (C++ core) and raw frames:
//! semantics, kill -9 durability of receipts and acknowledgements, malformed input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use magnetar_protocol::{commands, frame};
use magnetar_testkit::{StandaloneProc, http_get, python, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{bin, read_frame, run_py, script};

/// Starts a standalone with `flags` and runs a check script against it (service URL, web
/// port, then `checks`); on failure the standalone's log tail comes with the error.
async fn checks_against(flags: &[&str], script_name: &str, checks: &[&str]) -> Result<String> {
    let sa = StandaloneProc::start(bin(), flags).await?;
    let web_port = sa.web.port().to_string();
    let url = sa.service_url();
    let mut args = vec![url.as_str(), web_port.as_str()];
    args.extend_from_slice(checks);
    let out = run_py(script_name, &args)
        .await
        .map_err(|e| e.context(sa.proc.log_tail(150)))?;
    println!("{out}");
    Ok(out)
}

/// Flags for checks that need housekeeping to come round quickly and ledgers to roll.
const FAST_HOUSEKEEPING: [&str; 4] = [
    "--housekeeping-interval-secs",
    "1",
    "--managed-ledger-max-entries-per-ledger",
    "10",
];

/// Runs `magnetar ARGS` to completion; its standard output.
fn magnetar_cli(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(bin()).args(args).output()?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// A secret key made by `magnetar tokens create-secret-key` in a temp dir, and tokens signed
/// with it: by the CLI, or directly with a chosen expiry (past ones included).
struct Keys {
    _dir: tempfile::TempDir,
    path: String,
    secret: Vec<u8>,
}

impl Keys {
    fn new() -> Result<Keys> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secret.key").display().to_string();
        magnetar_cli(&["tokens", "create-secret-key", "--output", &path])?;
        let secret = magnetar_broker::auth::decode_secret(&std::fs::read(&path)?);
        Ok(Keys {
            _dir: dir,
            path,
            secret,
        })
    }

    /// Standalone flags requiring tokens signed with this key, followed by `more`.
    fn flags<'a>(&'a self, more: &[&'a str]) -> Vec<&'a str> {
        let mut f = vec![
            "--authentication-enabled",
            "true",
            "--token-secret-key",
            self.path.as_str(),
        ];
        f.extend_from_slice(more);
        f
    }

    /// A token without expiry, made by the CLI.
    fn token(&self, role: &str) -> Result<String> {
        magnetar_cli(&[
            "tokens",
            "create",
            "--secret-key",
            &self.path,
            "--subject",
            role,
        ])
    }

    /// A token expiring `secs` seconds from now (negative: already expired).
    fn expiring(&self, role: &str, secs: i64) -> Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        Ok(jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"sub": role, "exp": now + secs}),
            &jsonwebtoken::EncodingKey::from_secret(&self.secret),
        )?)
    }
}

#[tokio::test]
async fn token_authentication_with_python_client() -> Result<()> {
    let keys = Keys::new()?;
    let good = keys.token("app")?;
    // expired a minute ago, signed with the same key
    let expired = keys.expiring("app", -60)?;
    checks_against(&keys.flags(&[]), "auth.py", &[&good, &expired]).await?;
    Ok(())
}

#[tokio::test]
async fn publish_and_dispatch_rates_throttle() -> Result<()> {
    checks_against(&["--housekeeping-interval-secs", "1"], "rates.py", &[]).await?;
    Ok(())
}

/// schemathesis (PyPI) generates requests from the OpenAPI document: none may get a 5xx.
#[tokio::test]
async fn schemathesis_finds_no_server_errors() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let st = python()?.with_file_name("schemathesis");
    let out = tokio::process::Command::new(&st)
        .arg("run")
        .arg(format!("{}/admin/v2/openapi.json", sa.web_url()))
        .args(["--checks", "not_a_server_error"])
        .args([
            "--hypothesis-max-examples",
            "30",
            "--hypothesis-derandomize",
        ])
        .args(["--base-url", &sa.web_url()])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        // hypothesis makes a .hypothesis directory where it runs: not in the source tree
        .current_dir(sa.data_dir().parent().unwrap_or(Path::new("/tmp")))
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("run {}", st.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tail: Vec<&str> = stdout.lines().collect();
    let summary = tail[tail.len().saturating_sub(25)..].join("\n");
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{summary}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sa.proc.log_tail(40)
    );
    println!("{summary}");
    Ok(())
}

/// /metrics: series per topic with Pulsar's labels, summed per namespace past the bound.
#[tokio::test]
async fn metrics_cardinality_is_bounded() -> Result<()> {
    for (bound, per_topic) in [("10", true), ("2", false)] {
        let sa = StandaloneProc::start(bin(), &["--metrics-max-topics", bound]).await?;
        for t in ["a", "b", "c"] {
            let r = magnetar_testkit::http_request(
                sa.web,
                "PUT",
                &format!("/admin/v2/persistent/public/default/{t}"),
                "",
            )?;
            assert!(r.contains(" 204 "), "{r}");
        }
        let m = http_get(sa.web, "/metrics")?;
        // the in-process bookie's series come along
        assert!(m.contains("\nbookie_journal_groups_total "), "{m}");
        for counter in [
            "magnetar_entry_cache_hits_total",
            "magnetar_entry_cache_misses_total",
        ] {
            assert!(
                m.contains(&format!("\n# TYPE {counter} counter\n{counter} ")),
                "{m}"
            );
        }
        let series: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("pulsar_storage_size{"))
            .collect();
        if per_topic {
            assert_eq!(series.len(), 3, "{m}");
            assert!(series.iter().all(|l| l.contains(
                "cluster=\"standalone\",namespace=\"public/default\",topic=\"persistent://public/default/"
            )), "{series:?}");
        } else {
            assert_eq!(
                series,
                ["pulsar_storage_size{cluster=\"standalone\",namespace=\"public/default\"} 0"],
                "{m}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn admin_rest_conformance() -> Result<()> {
    checks_against(&[], "admin.py", &[]).await?;
    Ok(())
}

/// Every role of the matrix gets a token signed with the broker's key; `expired` is the
/// writer's, a minute past its expiry.
#[tokio::test]
async fn authorization_matrix() -> Result<()> {
    let keys = Keys::new()?;
    let mut tokens = serde_json::Map::new();
    for role in [
        "root",
        "boss",
        "writer",
        "reader",
        "other",
        "topicwriter",
        "stranger",
    ] {
        tokens.insert(role.into(), keys.token(role)?.into());
    }
    tokens.insert("expired".into(), keys.expiring("writer", -60)?.into());
    let tokens = serde_json::Value::Object(tokens).to_string();
    checks_against(
        &keys.flags(&[
            "--authorization-enabled",
            "true",
            "--super-user-roles",
            "root",
        ]),
        "authz.py",
        &[&tokens],
    )
    .await?;
    Ok(())
}

/// The `magnetar-admin` binary (package magnetar-cli), built on demand when this test runs
/// without the rest of the workspace.
fn admin_bin() -> Result<PathBuf> {
    magnetar_testkit::cli_bin(bin(), "magnetar-admin")
}

#[tokio::test]
async fn magnetar_admin_cli() -> Result<()> {
    let admin = admin_bin()?;
    let keys = Keys::new()?;
    let dir = tempfile::tempdir()?;
    let root = keys.token("root")?;
    let token_file = dir.path().join("root.token");
    std::fs::write(&token_file, &root)?;
    let sa = StandaloneProc::start(
        bin(),
        &keys.flags(&[
            "--authorization-enabled",
            "true",
            "--super-user-roles",
            "root",
        ]),
    )
    .await?;
    let url = format!("http://{}", sa.web);
    let run = |args: &[&str], token: bool| -> Result<(i32, String, String)> {
        let mut c = std::process::Command::new(&admin);
        c.arg("--admin-url").arg(&url);
        if token {
            c.arg("--token-file").arg(&token_file);
        }
        let out = c.args(args).output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    };
    let ok = |args: &[&str]| -> Result<String> {
        let (code, out, err) = run(args, true)?;
        if code != 0 {
            bail!("magnetar-admin {args:?}: exit {code}: {err}");
        }
        Ok(out)
    };
    ok(&["tenants", "create", "acme", "--admin-roles", "boss"])?;
    assert!(ok(&["tenants", "list"])?.lines().any(|l| l == "acme"));
    ok(&["namespaces", "create", "acme/ns", "--bundles", "2"])?;
    let bundles: serde_json::Value =
        serde_json::from_str(&ok(&["-o", "json", "namespaces", "bundles", "acme/ns"])?)?;
    assert_eq!(bundles["numBundles"], 2, "{bundles}");
    ok(&[
        "namespaces",
        "grant-permission",
        "acme/ns",
        "--role",
        "app",
        "--actions",
        "produce,consume",
    ])?;
    let perms: serde_json::Value = serde_json::from_str(&ok(&[
        "-o",
        "json",
        "namespaces",
        "permissions",
        "acme/ns",
    ])?)?;
    assert_eq!(perms["app"], serde_json::json!(["consume", "produce"]));
    // the one bookie into a group, the namespace onto it
    let bookies: serde_json::Value =
        serde_json::from_str(&ok(&["-o", "json", "bookies", "list-bookies"])?)?;
    let bookie = bookies["bookies"][0]["bookieId"]
        .as_str()
        .context("a bookie")?
        .to_string();
    ok(&[
        "bookies",
        "set-bookie-rack",
        "--bookie",
        &bookie,
        "--group",
        "acme-disks",
        "--rack",
        "/r1",
    ])?;
    let racks: serde_json::Value =
        serde_json::from_str(&ok(&["-o", "json", "bookies", "racks-placement"])?)?;
    assert_eq!(racks["acme-disks"][&bookie]["rack"], "/r1", "{racks}");
    ok(&[
        "namespaces",
        "set-bookie-affinity-group",
        "acme/ns",
        "--primary-group",
        "acme-disks",
    ])?;
    assert!(ok(&["namespaces", "get-bookie-affinity-group", "acme/ns"])?.contains("acme-disks"));
    ok(&["topics", "create", "acme/ns/t"])?;
    let internal: serde_json::Value = serde_json::from_str(&ok(&[
        "-o",
        "json",
        "topics",
        "stats-internal",
        "acme/ns/t",
        "--metadata",
    ])?)?;
    let meta = internal["ledgers"][0]["metadata"]
        .as_str()
        .context("ledger metadata")?;
    assert!(
        meta.contains(&bookie) && meta.contains("acme-disks"),
        "{meta}"
    );
    ok(&["namespaces", "delete-bookie-affinity-group", "acme/ns"])?;
    ok(&["bookies", "delete-bookie-rack", "--bookie", &bookie])?;
    ok(&[
        "subscriptions",
        "create",
        "acme/ns/t",
        "-s",
        "s1",
        "-m",
        "earliest",
    ])?;
    assert_eq!(ok(&["subscriptions", "list", "acme/ns/t"])?, "s1");
    let stats: serde_json::Value =
        serde_json::from_str(&ok(&["-o", "json", "topics", "stats", "acme/ns/t"])?)?;
    assert_eq!(stats["subscriptions"]["s1"]["msgBacklog"], 0, "{stats}");
    ok(&[
        "namespaces",
        "policy",
        "set-retention",
        "acme/ns",
        "--time-minutes",
        "-1",
        "--size-mb",
        "10",
    ])?;
    assert!(ok(&["namespaces", "policy", "get", "acme/ns", "retention"])?.contains("10"));
    // refusals: the server's reason, exit 1; no token is a 401
    let (code, _, err) = run(&["tenants", "list"], false)?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = run(&["topics", "delete", "acme/ns/absent"], true)?;
    assert_eq!((code, err.contains("404")), (1, true), "{err}");
    // bad usage: exit 2
    let (code, _, err) = run(&["topics", "stats", "bad://x/y/z"], true)?;
    assert_eq!(code, 2, "{err}");
    ok(&["topics", "delete", "acme/ns/t", "--force"])?;
    ok(&["namespaces", "delete", "acme/ns"])?;
    ok(&["tenants", "delete", "acme"])?;
    // every verb is documented
    for group in [
        "clusters",
        "tenants",
        "namespaces",
        "topics",
        "subscriptions",
        "brokers",
        "bookies",
    ] {
        let (code, help, _) = run(&[group, "--help"], false)?;
        assert_eq!(code, 0);
        assert!(help.contains("Commands:"), "{help}");
    }
    Ok(())
}

/// TLS on both client ports, with a certificate made for the test.
#[tokio::test]
async fn tls_with_python_client_and_admin_cli() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    let (bp, wp) = (
        magnetar_testkit::free_port()?.to_string(),
        magnetar_testkit::free_port()?.to_string(),
    );
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let sa = StandaloneProc::start(
        bin(),
        &[
            "--tls-cert-file",
            &cert_s,
            "--tls-key-file",
            &key_s,
            "--broker-port-tls",
            &bp,
            "--web-port-tls",
            &wp,
        ],
    )
    .await?;
    let tls_url = format!("pulsar+ssl://127.0.0.1:{bp}");
    let web_port = sa.web.port().to_string();
    let out = run_py(
        "tls.py",
        &[&sa.service_url(), &web_port, &tls_url, &wp, &cert_s],
    )
    .await
    .map_err(|e| e.context(sa.proc.log_tail(80)))?;
    println!("{out}");
    // the admin CLI over HTTPS, trusting the same certificate
    let out = std::process::Command::new(admin_bin()?)
        .args(["--admin-url", &format!("https://localhost:{wp}")])
        .args(["--tls-trust-cert", &cert_s, "tenants", "list"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("public"));
    Ok(())
}

#[tokio::test]
async fn python_client_semantics() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let health = http_get(sa.web, "/admin/v2/brokers/health")?;
    assert!(
        health.contains("200 OK") && health.ends_with("ok"),
        "{health}"
    );
    let web_port = sa.web.port().to_string();
    let out = run_py("semantics.py", &[&sa.service_url(), &web_port])
        .await
        .map_err(|e| e.context(sa.proc.log_tail(150)))?;
    println!("{out}");
    let stats = http_get(sa.web, "/metrics")?;
    assert!(stats.contains("pulsar_broker_topics_count"), "{stats}");
    Ok(())
}

#[tokio::test]
async fn key_shared_keeps_key_order_through_churn() -> Result<()> {
    checks_against(&["--key-shared-lease-ms", "1000"], "key_shared.py", &[]).await?;
    // the default lease, far longer than the check: only out-of-order delivery passes it
    checks_against(&[], "key_shared.py", &["out_of_order_allowed"]).await?;
    Ok(())
}

#[tokio::test]
async fn queue_semantics_with_python_client() -> Result<()> {
    checks_against(&["--max-message-size", "102400"], "queues.py", &[]).await?;
    Ok(())
}

#[tokio::test]
async fn namespace_policies_are_enforced() -> Result<()> {
    checks_against(&FAST_HOUSEKEEPING, "policies.py", &[]).await?;
    Ok(())
}

#[tokio::test]
async fn consumed_ledgers_are_trimmed() -> Result<()> {
    checks_against(
        &FAST_HOUSEKEEPING,
        "semantics.py",
        &["trimming", "idle_cache"],
    )
    .await?;
    Ok(())
}

/// Starts a durability.py phase in the background (output kept for the caller).
fn spawn_phase(args: &[&str]) -> Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(python()?)
        .arg(script("durability.py"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?)
}

/// Receipts a producing phase has written to its file so far.
fn receipts_in(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

async fn wait_for_receipts(p: &Path, n: usize, within: Duration) -> Result<()> {
    wait_until(within, &format!("{n} receipts"), || {
        let got = receipts_in(p);
        async move { got >= n }
    })
    .await
}

#[tokio::test]
async fn acknowledged_messages_survive_kill9_mid_stream() -> Result<()> {
    let mut sa = StandaloneProc::start(bin(), &[]).await?;
    let dir = tempfile::tempdir()?;
    let receipts = dir.path().join("receipts");
    let receipts_s = receipts.display().to_string();
    let url = sa.service_url();
    let topic = "persistent://public/default/durable-stream";
    let mut producer = spawn_phase(&["produce", &url, topic, &receipts_s, "1000000"])?;
    wait_for_receipts(&receipts, 2000, Duration::from_secs(30)).await?;
    sa.kill9();
    // the producer may still be writing receipts: stop it and wait for it to be gone
    producer.kill().await?;
    let acked = receipts_in(&receipts);
    sa.restart().await?;
    let out = run_py("durability.py", &["verify", &url, topic, &receipts_s]).await?;
    println!("{acked} receipts before kill -9; {out}");
    Ok(())
}

#[tokio::test]
async fn deduplication_gives_exactly_once_across_kill9() -> Result<()> {
    let mut sa = StandaloneProc::start(bin(), &["--broker-deduplication-enabled", "true"]).await?;
    let dir = tempfile::tempdir()?;
    let receipts = dir.path().join("receipts");
    let receipts_s = receipts.display().to_string();
    let url = sa.service_url();
    let topic = "persistent://public/default/exactly-once";
    let producer = spawn_phase(&["exactly-once", &url, topic, &receipts_s, "20000"])?;
    wait_for_receipts(&receipts, 1000, Duration::from_secs(60)).await?;
    sa.kill9();
    let before = receipts_in(&receipts);
    sa.restart().await?;
    // the client reconnects by itself and resends what was not acknowledged
    let out = tokio::time::timeout(Duration::from_secs(180), producer.wait_with_output())
        .await
        .context("producer did not finish")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        tail[tail.len().saturating_sub(30)..].join("\n")
    );
    println!(
        "{before} receipts before kill -9; {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[tokio::test]
async fn delayed_index_survives_kill9() -> Result<()> {
    let mut sa = StandaloneProc::start(bin(), &["--delayed-delivery-bucket-ms", "1000"]).await?;
    let url = sa.service_url();
    let topic = "persistent://public/default/delayed-restart";
    let delay = "12000";
    let web_url = sa.web_url();
    run_py(
        "durability.py",
        &["delayed-produce", &url, topic, "200", delay, &web_url],
    )
    .await?;
    let stats_path = "/admin/v2/persistent/public/default/delayed-restart/stats";
    // a field of subscription s in the topic's stats (0 while unreadable)
    let stat = |web, field: &'static str| {
        let page = http_get(web, stats_path).unwrap_or_default();
        let body = page.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["subscriptions"]["s"][field].as_u64())
            .unwrap_or(0)
    };
    // the far entries are persisted in segments within a second or so
    let web = sa.web;
    wait_until(
        Duration::from_secs(10),
        "200 delayed, persisted",
        || async move { stat(web, "msgDelayed") == 200 && stat(web, "delayedIndexSegments") > 0 },
    )
    .await?;
    sa.kill9();
    sa.restart().await?;
    // with no consumer the dispatcher reads nothing from the log: the count can only come
    // from the restored index
    let web = sa.web;
    wait_until(Duration::from_secs(8), "index restored", || async move {
        stat(web, "msgDelayed") == 200
    })
    .await?;
    let out = run_py(
        "durability.py",
        &["delayed-consume", &url, topic, "200", delay],
    )
    .await?;
    println!("{out}");
    Ok(())
}

/// Bytes in the files under `dir`.
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += disk_usage(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[tokio::test]
async fn retention_reclaims_disk_space() -> Result<()> {
    let sa = StandaloneProc::start(
        bin(),
        &[
            "--managed-ledger-max-entries-per-ledger",
            "100",
            "--housekeeping-interval-secs",
            "1",
            "--bookie-gc-interval-secs",
            "1",
            "--bookie-journal-max-size-mb",
            "2",
            // emptied journal files leave the disk instead of waiting for reuse
            "--bookie-journal-spare-files",
            "0",
        ],
    )
    .await?;
    let url = sa.service_url();
    let topic = "persistent://public/default/reclaimed";
    run_py("durability.py", &["fill", &url, topic, "1000", "20000"]).await?;
    // the bookie's journal (where entries stay) and index
    let ledgers = sa.data_dir().join("bookie");
    let dir = ledgers.clone();
    wait_until(
        Duration::from_secs(30),
        "entries in the bookie's journal",
        || {
            let now = disk_usage(&dir);
            async move { now > 15 << 20 }
        },
    )
    .await?;
    let full = disk_usage(&ledgers);
    // consuming everything lets retention (0/0 here) drop the ledgers, and the bookie's
    // garbage collection give their space back
    run_py("durability.py", &["consume", &url, topic, "s", "1000"]).await?;
    let dir = ledgers.clone();
    wait_until(Duration::from_secs(60), "disk usage to fall", || {
        let now = disk_usage(&dir);
        async move { now < full / 4 }
    })
    .await
    .map_err(|e| e.context(format!("still {} of {full} bytes", disk_usage(&ledgers))))?;
    println!(
        "{full} bytes before consuming, {} after",
        disk_usage(&ledgers)
    );
    Ok(())
}

#[tokio::test]
async fn acknowledgements_survive_kill9() -> Result<()> {
    let mut sa = StandaloneProc::start(bin(), &[]).await?;
    let dir = tempfile::tempdir()?;
    let receipts = dir.path().join("receipts").display().to_string();
    let url = sa.service_url();
    let topic = "persistent://public/default/durable-acks";
    // the subscription must exist before the messages: create it by consuming nothing
    run_py("durability.py", &["consume", &url, topic, "sub", "0"]).await?;
    run_py("durability.py", &["produce", &url, topic, &receipts, "100"]).await?;
    run_py("durability.py", &["consume", &url, topic, "sub", "40"]).await?;
    sa.kill9();
    sa.restart().await?;
    run_py("durability.py", &["rest", &url, topic, "sub", "40", "99"]).await?;
    // and after a clean restart (SIGTERM) too
    run_py("durability.py", &["produce", &url, topic, &receipts, "10"]).await?;
    assert!(
        sa.proc.terminate(Duration::from_secs(20)),
        "SIGTERM did not stop it"
    );
    sa.restart().await?;
    run_py("durability.py", &["rest", &url, topic, "sub", "0", "9"]).await?;
    Ok(())
}

/// A raw connection authenticated with `token`; CONNECTED already read.
async fn raw_authenticated(
    sa: &StandaloneProc,
    token: &str,
    refresh: bool,
) -> Result<(TcpStream, BytesMut)> {
    let mut s = TcpStream::connect(sa.broker).await?;
    let mut connect = commands::connect("raw-test", 20);
    if let Some(c) = connect.connect.as_mut() {
        c.auth_method_name = Some("token".into());
        c.auth_data = Some(bytes::Bytes::copy_from_slice(token.as_bytes()));
        c.feature_flags = Some(magnetar_protocol::proto::FeatureFlags {
            supports_auth_refresh: Some(refresh),
            ..Default::default()
        });
    }
    let mut out = BytesMut::new();
    frame::encode_command(&connect, &mut out);
    s.write_all(&out).await?;
    let mut buf = BytesMut::new();
    let f = read_frame(&mut s, &mut buf)
        .await?
        .context("no answer to CONNECT")?;
    assert!(f.command.connected.is_some(), "{:?}", f.command);
    Ok((s, buf))
}

/// The frames a connection gets until it closes (None if still open at `deadline`).
async fn frames_until_closed(
    s: &mut TcpStream,
    buf: &mut BytesMut,
    within: Duration,
) -> Result<Option<Vec<String>>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        if let Some(f) = frame::decode_frame(buf, 1 << 24)? {
            seen.push(commands::type_name(f.command.r#type).to_string());
            continue;
        }
        match tokio::time::timeout_at(deadline, s.read_buf(buf)).await {
            Err(_) => return Ok(None),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(Some(seen)),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn expired_tokens_are_refreshed_or_disconnected() -> Result<()> {
    let keys = Keys::new()?;
    let sign = |role: &str, ttl: i64| keys.expiring(role, ttl);
    let sa = StandaloneProc::start(
        bin(),
        &keys.flags(&["--authentication-refresh-check-seconds", "1"]),
    )
    .await?;
    let within = Duration::from_secs(15);
    // a client that cannot refresh is disconnected once its token expires
    let (mut s, mut buf) = raw_authenticated(&sa, &sign("app", 2)?, false).await?;
    let seen = frames_until_closed(&mut s, &mut buf, within).await?;
    assert_eq!(seen, Some(vec![]), "closed without a challenge");
    // one that can but never answers: challenged, then disconnected
    let (mut s, mut buf) = raw_authenticated(&sa, &sign("app", 2)?, true).await?;
    let seen = frames_until_closed(&mut s, &mut buf, within).await?;
    assert_eq!(seen, Some(vec!["AUTH_CHALLENGE".to_string()]));
    // one that answers with another role: refused
    let (mut s, mut buf) = raw_authenticated(&sa, &sign("app", 2)?, true).await?;
    let f = read_frame(&mut s, &mut buf).await?.context("closed")?;
    let challenge = f.command.auth_challenge.context("AUTH_CHALLENGE")?;
    assert_eq!(
        challenge.challenge.and_then(|c| c.auth_data).as_deref(),
        Some(&b"PulsarAuthRefresh"[..])
    );
    let mut out = BytesMut::new();
    let other = sign("intruder", 3600)?;
    frame::encode_command(
        &commands::auth_response("token", other.as_bytes()),
        &mut out,
    );
    s.write_all(&out).await?;
    let seen = frames_until_closed(&mut s, &mut buf, within).await?;
    assert_eq!(seen, Some(vec!["ERROR".to_string()]));
    // one that answers with a fresh token for the same role stays
    let (mut s, mut buf) = raw_authenticated(&sa, &sign("app", 2)?, true).await?;
    let f = read_frame(&mut s, &mut buf).await?.context("closed")?;
    assert!(f.command.auth_challenge.is_some());
    out.clear();
    let fresh = sign("app", 3600)?;
    frame::encode_command(
        &commands::auth_response("token", fresh.as_bytes()),
        &mut out,
    );
    s.write_all(&out).await?;
    let seen = frames_until_closed(&mut s, &mut buf, Duration::from_secs(4)).await?;
    assert_eq!(seen, None, "refreshed connection closed");
    // the Python client answers challenges from its token supplier
    let web_port = sa.web.port().to_string();
    let out = run_py(
        "refresh.py",
        &[
            &sa.service_url(),
            &web_port,
            &sign("app", 2)?,
            &sign("app", 3600)?,
        ],
    )
    .await
    .map_err(|e| e.context(sa.proc.log_tail(60)))?;
    println!("{out}");
    Ok(())
}

#[tokio::test]
async fn garbage_closes_only_that_connection() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    // a well-behaved connection
    let mut good = TcpStream::connect(sa.broker).await?;
    let mut out = BytesMut::new();
    frame::encode_command(&commands::connect("raw-test", 20), &mut out);
    good.write_all(&out).await?;
    let mut gbuf = BytesMut::new();
    let f = read_frame(&mut good, &mut gbuf).await?.expect("CONNECTED");
    let connected = f.command.connected.expect("CONNECTED");
    assert_eq!(connected.protocol_version, Some(20));
    assert_eq!(connected.max_message_size, Some(5 * 1024 * 1024));

    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3][..],
        &[0, 0, 0, 12, 0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4][..],
    ] {
        let mut bad = TcpStream::connect(sa.broker).await?;
        bad.write_all(garbage).await?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut buf))
            .await
            .context("garbage connection not closed")?
            .unwrap_or(0);
        assert_eq!(n, 0, "expected the connection to close");
    }
    // a command other than CONNECT first
    let mut early = TcpStream::connect(sa.broker).await?;
    let mut out = BytesMut::new();
    frame::encode_command(&commands::ping(), &mut out);
    early.write_all(&out).await?;
    let mut ebuf = BytesMut::new();
    assert!(read_frame(&mut early, &mut ebuf).await?.is_none());

    // the good connection still works
    let mut out = BytesMut::new();
    frame::encode_command(&commands::ping(), &mut out);
    good.write_all(&out).await?;
    let f = read_frame(&mut good, &mut gbuf).await?.expect("PONG");
    assert!(f.command.pong.is_some());

    // commands it does not serve are answered at once, naming them
    use magnetar_protocol::proto::{CommandUnsupportedRequest, ServerError};
    let new_txn = magnetar_protocol::BaseCommand {
        r#type: 50, // NEW_TXN
        new_txn: Some(CommandUnsupportedRequest {
            request_id: Some(77),
        }),
        ..Default::default()
    };
    let unknown = magnetar_protocol::BaseCommand {
        r#type: 99,
        ..Default::default()
    };
    for (cmd, id, code, name) in [
        (new_txn, 77, ServerError::NotAllowedError, "NEW_TXN"),
        (
            unknown,
            u64::MAX,
            ServerError::UnsupportedVersionError,
            "unknown(99)",
        ),
    ] {
        let mut out = BytesMut::new();
        frame::encode_command(&cmd, &mut out);
        good.write_all(&out).await?;
        let f = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut good, &mut gbuf))
            .await
            .context("no answer to an unsupported command")??
            .expect("ERROR");
        let e = f.command.error.expect("ERROR");
        assert_eq!((e.request_id, e.error), (id, code as i32), "{}", e.message);
        assert!(e.message.contains(name), "{}", e.message);
    }

    // a SEND over the size limit is refused; the connection and the producer stay usable
    use magnetar_protocol::proto::{CommandProducer, base_command::Type};
    let producer = magnetar_protocol::BaseCommand {
        r#type: Type::Producer as i32,
        producer: Some(CommandProducer {
            topic: "persistent://public/default/raw-oversize".into(),
            producer_id: 1,
            request_id: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut out = BytesMut::new();
    frame::encode_command(&producer, &mut out);
    good.write_all(&out).await?;
    let f = read_frame(&mut good, &mut gbuf)
        .await?
        .expect("PRODUCER_SUCCESS");
    assert!(f.command.producer_success.is_some(), "{:?}", f.command);
    let meta = |seq: u64| magnetar_protocol::MessageMetadata {
        producer_name: "raw".into(),
        sequence_id: seq,
        publish_time: 1,
        ..Default::default()
    };
    for (seq, size) in [(0u64, 6 << 20), (1, 10)] {
        let entry = magnetar_protocol::entry::encode_entry(&meta(seq), &vec![7u8; size]);
        let mut out = BytesMut::new();
        frame::encode_message(&commands::send(1, seq, 1), &entry, &mut out);
        good.write_all(&out).await?;
    }
    let f = read_frame(&mut good, &mut gbuf).await?.expect("SEND_ERROR");
    let e = f
        .command
        .send_error
        .expect("SEND_ERROR for the oversized message");
    assert_eq!(e.sequence_id, 0);
    assert!(e.message.contains("exceeds the limit"), "{}", e.message);
    let f = read_frame(&mut good, &mut gbuf)
        .await?
        .expect("SEND_RECEIPT");
    let r = f
        .command
        .send_receipt
        .expect("receipt for the next message");
    assert_eq!(r.sequence_id, 1);
    Ok(())
}
