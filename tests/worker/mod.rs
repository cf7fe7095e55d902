//! What the process-crash and power-loss tests share: the worker example
//! (`examples/crash_worker.rs`), built once per feature set.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A number from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Builds the worker example with this test build's features (a superset of what the calling
/// test needs: each is compiled only with the features it uses) and returns a copy of it that
/// is the caller's own.
pub fn worker() -> (tempfile::TempDir, PathBuf) {
    example("crash_worker", &same_features_as_this_test())
}

/// The cargo arguments that build an example with this test build's features, so that the
/// build reuses the library the test build compiled and only compiles and links the example.
///
/// `cargo test --workspace --all-features` (as `.ci/run` runs it) unifies the features of the
/// workspace's crates: `--workspace --all-features` gives the same unification. Any other
/// feature set is named as it is (`sled` by leaving the defaults on): building each test's
/// worker with only the features that test needs would rebuild the library and the crates
/// whose features differ, up to a minute for each set.
pub fn same_features_as_this_test() -> Vec<String> {
    let features = [
        ("sled", cfg!(feature = "sled")),
        ("admin", cfg!(feature = "admin")),
        ("rabbitmq", cfg!(feature = "rabbitmq")),
        ("nats", cfg!(feature = "nats")),
        ("postgres", cfg!(feature = "postgres")),
        ("failpoints", cfg!(feature = "failpoints")),
        ("otel", cfg!(feature = "otel")),
    ];
    if features.iter().all(|(_, on)| *on) {
        return vec!["--workspace".into(), "--all-features".into()];
    }
    let mut args = vec!["--workspace".to_owned()];
    if !cfg!(feature = "sled") {
        args.push("--no-default-features".into());
    }
    let on: Vec<&str> = features.iter().filter(|(name, on)| *on && *name != "sled").map(|(name, _)| *name).collect();
    if !on.is_empty() {
        args.extend(["--features".into(), on.join(",")]);
    }
    args
}

/// Builds example `name` with `cargo build --example name <cargo_args>` and returns a copy of
/// it that is the caller's own.
///
/// Builds of the same example with other features write the same path, and tests run in
/// parallel: building and copying under one lock keeps each test's binary its own.
pub fn example(name: &str, cargo_args: &[impl AsRef<std::ffi::OsStr>]) -> (tempfile::TempDir, PathBuf) {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "--example", name])
        .args(cargo_args)
        .current_dir(root)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the {name} example failed");
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{root}/target"));
    let built = Path::new(&target).join("debug/examples").join(name);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let copy = dir.path().join(name);
    std::fs::copy(&built, &copy).expect("the example can be copied");
    (dir, copy)
}

/// Asserts that two runs' `check` outcomes agree line by line, showing the first differences.
pub fn assert_same_outcomes(clean: &str, other: &str, what: &str) {
    let differ: Vec<String> = clean
        .lines()
        .zip(other.lines())
        .filter(|(a, b)| a != b)
        .take(10)
        .map(|(a, b)| format!("  clean: {a}\n  {what}: {b}"))
        .collect();
    assert!(differ.is_empty(), "{what}: some orders ended otherwise than in the clean run:\n{}", differ.join("\n"));
    assert_eq!(clean.lines().count(), other.lines().count(), "{what}: another number of outcomes");
}
