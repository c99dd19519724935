//! What the process test files share: the binary under test and the Python check scripts.
#![allow(dead_code)] // each test file uses part of it

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The `magnetar` binary (see `magnetar_testkit::magnetar_bin`).
pub fn bin() -> &'static Path {
    magnetar_testkit::magnetar_bin().expect("the magnetar binary")
}

/// A script of `integration-tests/python/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// Runs a Python script to completion; fails with its output if it fails.
pub async fn run_py(name: &str, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(magnetar_testkit::python()?)
        .arg(script(name))
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("run python")?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.contains(" INFO ")).collect();
        anyhow::bail!(
            "{name} {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            tail[tail.len().saturating_sub(40)..].join("\n")
        );
    }
    Ok(stdout)
}

/// The next whole frame of a raw protocol connection (None: it closed); waits at most 5 s.
pub async fn read_frame(
    s: &mut tokio::net::TcpStream,
    buf: &mut bytes::BytesMut,
) -> Result<Option<magnetar_protocol::frame::Frame>> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(f) = magnetar_protocol::frame::decode_frame(buf, 1 << 24)? {
            return Ok(Some(f));
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_buf(buf)).await??;
        if n == 0 {
            return Ok(None);
        }
    }
}
