//! Pulsar behaviours found missing when the official Python client was tried as a new user
//! would (the compatibility issue's numbered items), each against real `magnetar standalone`
//! processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result};
use magnetar_testkit::{StandaloneProc, http_get};

mod common;
use common::{bin, read_frame, run_py};

async fn check(sa: &StandaloneProc, mode: &str) -> Result<String> {
    let out = run_py("compat.py", &[mode, &sa.service_url()])
        .await
        .map_err(|e| e.context(sa.proc.log_tail(60)))?;
    println!("{out}");
    Ok(out)
}

/// Items 1 and 7: a client without credentials gets the anonymous role (it says "none"), and
/// a boolean flag alone means true.
#[tokio::test]
async fn a_client_without_credentials_gets_the_anonymous_role() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("secret.key");
    std::fs::write(&key, [7u8; 32])?;
    let key = key.display().to_string();
    let sa = StandaloneProc::start(
        bin(),
        &[
            "--authentication-enabled",
            "--token-secret-key",
            &key,
            "--anonymous-user-role",
            "anonymous",
        ],
    )
    .await?;
    check(&sa, "anonymous").await?;
    Ok(())
}

/// Item 2: where a seek lands depends on that seek alone.
#[tokio::test]
async fn seeks_by_time_and_by_id_in_any_order() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    check(&sa, "seek").await?;
    Ok(())
}

/// Item 3: no topic is created in a tenant or namespace that does not exist; lookups say so.
#[tokio::test]
async fn topics_of_missing_namespaces_are_not_found() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    check(&sa, "missing-namespace").await?;
    let lookup = http_get(sa.web, "/lookup/v2/topic/persistent/no-such-tenant/ns/t")?;
    assert!(lookup.starts_with("HTTP/1.0 404"), "{lookup}");
    assert!(lookup.contains("does not exist"), "{lookup}");
    let topics = http_get(sa.web, "/admin/v2/persistent/no-such-tenant/ns")?;
    assert!(topics.starts_with("HTTP/1.0 404"), "{topics}");
    Ok(())
}

/// Item 8: two standalones on one host (the bookie opens no port unless asked), each
/// serving its own topics.
#[tokio::test]
async fn two_standalones_share_a_host() -> Result<()> {
    let a = StandaloneProc::start(bin(), &[]).await?;
    let b = StandaloneProc::start(bin(), &[]).await?;
    for sa in [&a, &b] {
        run_py(
            "durability.py",
            &[
                "fill",
                &sa.service_url(),
                "persistent://public/default/two",
                "10",
                "100",
            ],
        )
        .await?;
    }
    Ok(())
}

/// Item 10: no colour codes in a log written to a file; `--log-format json` writes one JSON
/// object per line.
#[tokio::test]
async fn logs_to_a_file_are_plain_text_or_json() -> Result<()> {
    let text = StandaloneProc::start(bin(), &[]).await?;
    let log = text.proc.log_tail(20);
    assert!(log.contains("magnetar standalone ready"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );
    drop(text);

    let json = StandaloneProc::start(bin(), &["--log-format", "json"]).await?;
    let log = json.proc.log_tail(20);
    let ready = log
        .lines()
        .find(|l| l.contains("magnetar standalone ready"))
        .context("ready line")?;
    let v: serde_json::Value =
        serde_json::from_str(ready).with_context(|| format!("not JSON: {ready}"))?;
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["fields"]["message"], "magnetar standalone ready", "{v}");
    Ok(())
}

/// Item 4: advertised listeners: a client naming one is sent to its address, one naming an
/// unknown listener is refused (with or without listeners configured).
#[tokio::test]
async fn clients_get_the_address_of_their_listener() -> Result<()> {
    let plain = StandaloneProc::start(bin(), &[]).await?;
    run_py(
        "compat.py",
        &["listeners", &plain.service_url(), "internal"],
    )
    .await?;

    // external clients reach this broker as "localhost" (the same port here; in a cluster,
    // typically a load balancer's address)
    drop(plain);
    let flags =
        "internal:pulsar://127.0.0.1:{broker_port},external:pulsar://localhost:{broker_port}";
    let sa = StandaloneProc::start(bin(), &["--advertised-listeners", flags]).await?;
    let port = sa.broker.port();
    let out = run_py("compat.py", &["listeners", &sa.service_url(), "external"]).await?;
    println!("{out}");
    let path = "/lookup/v2/topic/persistent/public/default/l";
    let external = http_get(sa.web, &format!("{path}?listenerName=external"))?;
    assert!(
        external.contains(&format!(r#""brokerUrl":"pulsar://localhost:{port}""#)),
        "{external}"
    );
    let default = http_get(sa.web, path)?;
    assert!(
        default.contains(&format!(r#""brokerUrl":"pulsar://127.0.0.1:{port}""#)),
        "{default}"
    );
    let unknown = http_get(sa.web, &format!("{path}?listenerName=test"))?;
    assert!(
        unknown.starts_with("HTTP/1.0 412") && unknown.contains("no listener named"),
        "{unknown}"
    );
    Ok(())
}

/// A certificate authority for the test, and certificates it signs.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Result<Pki> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "magnetar test authority");
        let ca = p.self_signed(&ca_key)?;
        let pki = Pki {
            dir: tempfile::tempdir()?,
            ca,
            ca_key,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem())?;
        Ok(pki)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Writes `name.pem` and `name.key`: a certificate for `cn`, signed by this authority
    /// (or by itself when `self_signed`).
    fn issue(&self, name: &str, cn: &str, server: bool, self_signed: bool) -> Result<()> {
        let key = rcgen::KeyPair::generate()?;
        let mut p = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = if self_signed {
            p.self_signed(&key)?
        } else {
            p.signed_by(&key, &self.ca, &self.ca_key)?
        };
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem())?;
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem())?;
        Ok(())
    }
}

/// Item 6: TLS client certificates (role = common name, authorization applied to it) and
/// Basic authentication, beside tokens, on the binary protocol and HTTP.
#[tokio::test]
async fn client_certificates_and_basic_authenticate_beside_tokens() -> Result<()> {
    let pki = Pki::new()?;
    pki.issue("server", "localhost", true, false)?;
    pki.issue("app", "app", false, false)?;
    pki.issue("nobody", "nobody", false, false)?;
    pki.issue("stranger", "app", false, true)?;
    let htpasswd = format!(
        "admin:{}\nbob:{}\n",
        bcrypt::hash("adminpw", 4)?,
        bcrypt::hash("bobpw", 4)?
    );
    std::fs::write(pki.path("htpasswd"), htpasswd)?;
    let secret = *b"a secret for the providers test.";
    std::fs::write(pki.path("secret.key"), secret)?;
    let admin_token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "admin"}),
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )?;
    let (bp, wp) = (
        magnetar_testkit::free_port()?.to_string(),
        magnetar_testkit::free_port()?.to_string(),
    );
    let (server, server_key) = (pki.path("server.pem"), pki.path("server.key"));
    let (ca, htpasswd, secret) = (
        pki.path("ca.pem"),
        pki.path("htpasswd"),
        pki.path("secret.key"),
    );
    let sa = StandaloneProc::start(
        bin(),
        &[
            "--tls-cert-file",
            &server,
            "--tls-key-file",
            &server_key,
            "--broker-port-tls",
            &bp,
            "--web-port-tls",
            &wp,
            "--tls-trust-certs-file-path",
            &ca,
            "--authentication-enabled",
            "--authentication-providers",
            "token,tls,basic",
            "--token-secret-key",
            &secret,
            "--basic-auth-conf",
            &htpasswd,
            "--authorization-enabled",
            "--super-user-roles",
            "admin",
        ],
    )
    .await?;
    let web_port = sa.web.port().to_string();
    let tls_url = format!("pulsar+ssl://127.0.0.1:{bp}");
    let out = run_py(
        "auth_providers.py",
        &[
            &sa.service_url(),
            &web_port,
            &tls_url,
            &wp,
            &ca,
            &pki.path("app.pem"),
            &pki.path("app.key"),
            &pki.path("nobody.pem"),
            &pki.path("nobody.key"),
            &pki.path("stranger.pem"),
            &pki.path("stranger.key"),
            &admin_token,
        ],
    )
    .await
    .map_err(|e| e.context(sa.proc.log_tail(60)))?;
    println!("{out}");

    // misconfigurations are refused at start, saying what is missing
    for (flags, says) in [
        (
            vec![
                "--authentication-enabled",
                "--authentication-providers",
                "basic",
            ],
            "--basic-auth-conf",
        ),
        (
            vec![
                "--authentication-enabled",
                "--authentication-providers",
                "tls",
            ],
            "--tls-trust-certs-file-path",
        ),
        (
            vec![
                "--authentication-enabled",
                "--authentication-providers",
                "kerberos",
            ],
            "unknown authentication provider",
        ),
    ] {
        let out = std::process::Command::new(bin())
            .arg("standalone")
            .args(&flags)
            .args([
                "--data-dir",
                &pki.path("refused"),
                "--broker-port",
                "0",
                "--web-port",
                "0",
            ])
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{flags:?}: {err}"
        );
    }
    Ok(())
}

/// Item 5: the schema registry with the official Python client (JSON and Avro round trips,
/// schema versions on messages, incompatible producers and consumers refused, BACKWARD
/// evolution, admin CRUD and bad input).
#[tokio::test]
async fn schemas_are_registered_checked_and_served() -> Result<()> {
    let sa = StandaloneProc::start(bin(), &[]).await?;
    let web_port = sa.web.port().to_string();
    let out = run_py("schemas.py", &[&sa.service_url(), &web_port])
        .await
        .map_err(|e| e.context(sa.proc.log_tail(60)))?;
    println!("{out}");
    // magnetar-admin's schema verbs
    let admin = magnetar_testkit::cli_bin(bin(), "magnetar-admin")?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("schema.json");
    let definition =
        r#"{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"x\",\"type\":\"int\"}]}"#;
    std::fs::write(
        &file,
        format!(r#"{{"type": "AVRO", "schema": "{definition}"}}"#),
    )?;
    let file = file.display().to_string();
    let url = sa.web_url();
    let cli = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(&admin)
            .args(["--admin-url", &url, "--output", "json"])
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let topic = "public/default/by-cli";
    assert!(cli(&["schemas", "upload", topic, "-f", &file])?.contains("version"));
    assert!(cli(&["schemas", "compatibility", topic, "-f", &file])?.contains("true"));
    assert!(cli(&["schemas", "version", topic, "-f", &file])?.contains('0'));
    assert!(cli(&["schemas", "get", topic])?.contains("AVRO"));
    assert!(cli(&["schemas", "get", topic, "--version", "0"])?.contains("AVRO"));
    assert!(cli(&["schemas", "get", topic, "--all"])?.contains("getSchemaResponses"));
    cli(&["schemas", "delete", topic])?;
    assert!(cli(&["schemas", "get", topic]).is_err(), "gone");
    let ns = "public/default";
    let policy = ["namespaces", "policy"];
    let run = |rest: &[&str]| cli(&[&policy[..], rest].concat());
    run(&["set-schema-compatibility-strategy", ns, "-c", "backward"])?;
    run(&["set-is-allow-auto-update-schema", ns, "--enable", "false"])?;
    run(&["set-schema-validation-enforce", ns, "--enable", "true"])?;
    for (name, value) in [
        ("schemaCompatibilityStrategy", "BACKWARD"),
        ("isAllowAutoUpdateSchema", "false"),
        ("schemaValidationEnforced", "true"),
    ] {
        let shown = run(&["get", ns, name])?;
        assert!(shown.contains(value), "{name}: {shown}");
    }
    assert!(run(&["set-schema-compatibility-strategy", ns, "-c", "sideways"]).is_err());

    // deleting a topic deletes its schemas
    let path = "/admin/v2/schemas/public/default/gone/schema";
    let body = r#"{"type": "STRING", "schema": ""}"#;
    let up = magnetar_testkit::http_request(sa.web, "POST", path, body)?;
    assert!(up.starts_with("HTTP/1.0 200"), "{up}");
    let created = magnetar_testkit::http_request(
        sa.web,
        "PUT",
        "/admin/v2/persistent/public/default/gone",
        "",
    )?;
    assert!(created.starts_with("HTTP/1.0 204"), "{created}");
    let deleted = magnetar_testkit::http_request(
        sa.web,
        "DELETE",
        "/admin/v2/persistent/public/default/gone",
        "",
    )?;
    assert!(deleted.starts_with("HTTP/1.0 204"), "{deleted}");
    let after = http_get(sa.web, path)?;
    assert!(after.starts_with("HTTP/1.0 404"), "{after}");
    Ok(())
}

/// Schemas on the wire: an AUTO_CONSUME consumer subscribes to a topic with a schema without
/// a check and reads the schema with GET_SCHEMA (by version too); an unknown schema type is
/// refused with the reason.
#[tokio::test]
async fn auto_consume_and_get_schema_over_the_wire() -> Result<()> {
    use bytes::BytesMut;
    use magnetar_protocol::proto::{
        CommandGetSchema, CommandProducer, CommandSubscribe, Schema, ServerError,
        base_command::Type,
    };
    use magnetar_protocol::{BaseCommand, commands, frame};
    use tokio::io::AsyncWriteExt;

    let sa = StandaloneProc::start(bin(), &[]).await?;
    let mut s = tokio::net::TcpStream::connect(sa.broker).await?;
    let mut buf = BytesMut::new();
    async fn send(s: &mut tokio::net::TcpStream, c: BaseCommand) -> Result<()> {
        let mut out = BytesMut::new();
        frame::encode_command(&c, &mut out);
        s.write_all(&out).await?;
        Ok(())
    }
    send(&mut s, commands::connect("schema-wire", 20)).await?;
    read_frame(&mut s, &mut buf).await?.context("CONNECTED")?;
    let topic = "persistent://public/default/wire-schema";
    let schema = |kind: i32, data: &str| Schema {
        name: "wire".into(),
        schema_data: data.as_bytes().to_vec().into(),
        r#type: kind,
        properties: vec![],
    };
    let definition = r#"{"type":"record","name":"R","fields":[{"name":"x","type":"int"}]}"#;
    // a JSON producer registers version 0, named in its PRODUCER_SUCCESS
    send(
        &mut s,
        BaseCommand {
            r#type: Type::Producer as i32,
            producer: Some(CommandProducer {
                topic: topic.into(),
                producer_id: 1,
                request_id: 1,
                schema: Some(schema(2, definition)),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await?;
    let f = read_frame(&mut s, &mut buf)
        .await?
        .context("PRODUCER_SUCCESS")?;
    let ok = f.command.producer_success.context("PRODUCER_SUCCESS")?;
    assert_eq!(ok.schema_version.as_deref(), Some(&0u64.to_be_bytes()[..]));
    // AUTO_CONSUME (21): no check; an unknown type (99): refused, naming it
    for (kind, sub, want) in [
        (21, "auto", None),
        (99, "bogus", Some("unknown schema type 99")),
    ] {
        send(
            &mut s,
            BaseCommand {
                r#type: Type::Subscribe as i32,
                subscribe: Some(CommandSubscribe {
                    topic: topic.into(),
                    subscription: sub.into(),
                    consumer_id: kind as u64,
                    request_id: 10 + kind as u64,
                    schema: Some(schema(kind, "")),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?;
        let f = read_frame(&mut s, &mut buf).await?.context("answer")?;
        match want {
            None => assert!(f.command.success.is_some(), "{:?}", f.command),
            Some(text) => {
                let e = f.command.error.context("ERROR")?;
                assert_eq!(e.error, ServerError::IncompatibleSchema as i32);
                assert!(e.message.contains(text), "{}", e.message);
            }
        }
    }
    // GET_SCHEMA: the latest, a version by number, a version that is not there
    for (request_id, version, found) in [
        (30, None, true),
        (31, Some(0u64), true),
        (32, Some(5), false),
    ] {
        send(
            &mut s,
            BaseCommand {
                r#type: Type::GetSchema as i32,
                get_schema: Some(CommandGetSchema {
                    request_id,
                    topic: topic.into(),
                    schema_version: version.map(|v| v.to_be_bytes().to_vec().into()),
                }),
                ..Default::default()
            },
        )
        .await?;
        let f = read_frame(&mut s, &mut buf)
            .await?
            .context("GET_SCHEMA_RESPONSE")?;
        let r = f
            .command
            .get_schema_response
            .context("GET_SCHEMA_RESPONSE")?;
        assert_eq!(r.request_id, request_id);
        if found {
            let got = r.schema.context("schema")?;
            assert_eq!(
                (got.r#type, &got.schema_data[..]),
                (2, definition.as_bytes())
            );
        } else {
            assert_eq!(r.error_code, Some(ServerError::TopicNotFound as i32));
        }
    }
    Ok(())
}
