//! magnetar-perf runs end to end and prints a JSON summary (counts only, never timing).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::process::Command;

fn run(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_magnetar-perf"))
        .args(args)
        .output()
        .expect("run magnetar-perf");
    assert!(
        out.status.success(),
        "magnetar-perf {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON summary on stdout")
}

#[test]
fn meta_workload_counts_its_operations() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rocksdb://{}", dir.path().join("m").display());
    for op in ["put", "get", "cas"] {
        let s = run(&[
            "meta", "--meta", &url, "--op", op, "-n", "200", "-c", "4", "--keys", "50",
        ]);
        assert_eq!(s["ops"], 200, "{op}: {s}");
        assert_eq!(s["errors"], 0, "{op}: {s}");
    }
}

#[test]
fn disk_probe_reports_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let s = run(&[
        "disk",
        "--dir",
        &d,
        "--bytes-per-sync",
        "4096",
        "-d",
        "300ms",
        "--file-bytes",
        "1048576",
    ]);
    assert!(s["ops"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["bytes_per_op"], 4096);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "scratch file removed"
    );
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_magnetar-perf"))
        .args(["meta", "--duration", "ten"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration"));
}
