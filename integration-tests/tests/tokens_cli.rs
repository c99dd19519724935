//! `magnetar tokens`: keys and tokens made by the CLI are accepted by the broker's checker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use magnetar_broker::auth::{TokenAuth, decode_secret};

fn magnetar(args: &[&str]) -> String {
    let out = Command::new(magnetar_testkit::magnetar_bin().expect("the magnetar binary"))
        .args(args)
        .output()
        .expect("run magnetar");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

#[test]
fn secret_key_and_key_pair_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    magnetar(&[
        "tokens",
        "create-secret-key",
        "--base64",
        "--output",
        &p("secret"),
    ]);
    let token = magnetar(&[
        "tokens",
        "create",
        "--secret-key",
        &p("secret"),
        "--subject",
        "alice",
    ]);
    let secret = decode_secret(&std::fs::read(p("secret")).unwrap());
    assert_eq!(
        TokenAuth::with_secret(&secret, "sub").role(&token).unwrap(),
        "alice"
    );

    magnetar(&[
        "tokens",
        "create-key-pair",
        "--output-private-key",
        &p("private.pem"),
        "--output-public-key",
        &p("public.pem"),
    ]);
    let token = magnetar(&[
        "tokens",
        "create",
        "--private-key",
        &p("private.pem"),
        "--subject",
        "bob",
        "--expiry-secs",
        "600",
    ]);
    let public = std::fs::read(Path::new(&p("public.pem"))).unwrap();
    let auth = TokenAuth::with_public_key(&public, "sub").unwrap();
    assert_eq!(auth.role(&token).unwrap(), "bob");
}
