//! What the process test files share: the binary under test and the Python check scripts.
#![allow(dead_code)] // each test file uses part of it

use std::path::{Path, PathBuf};

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
