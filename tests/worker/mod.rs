//! What the process-crash and power-loss tests share: the worker example
//! (`examples/crash_worker.rs`), built once per feature set, and a seeded generator for the
//! moments they strike at.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A number from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Builds the worker example with `features` and returns a copy of it that is the caller's own.
///
/// Builds of the same example with other features write the same path, and tests run in
/// parallel: building and copying under one lock keeps each test's worker its own.
pub fn worker(features: &str) -> (tempfile::TempDir, PathBuf) {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "--example", "crash_worker", "--features", features])
        .current_dir(root)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the crash worker failed");
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{root}/target"));
    let built = Path::new(&target).join("debug/examples/crash_worker");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let copy = dir.path().join("crash_worker");
    std::fs::copy(&built, &copy).expect("the worker can be copied");
    (dir, copy)
}

/// A deterministic pseudo-random sequence (the moments to strike at, delays, seeds).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}
