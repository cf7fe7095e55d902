//! Process crashes: the order workload in one process on sled and RabbitMQ, killed with
//! SIGKILL at random moments and restarted on the same directory, must end with every order
//! terminal and every effect applied exactly once. Set `SAGA_TEST_AMQP_URL` to run it;
//! `SAGA_CRASH_ROUNDS` (default 6) and `SAGA_CRASH_ORDERS` (default 400) make it longer.
#![cfg(feature = "rabbitmq")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Builds the worker example and returns its path.
fn worker() -> std::path::PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "--example", "crash_worker", "--features", "rabbitmq"])
        .current_dir(root)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the crash worker failed");
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{root}/target"));
    std::path::Path::new(&target).join("debug/examples/crash_worker")
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_repeats_nothing() {
    if std::env::var("SAGA_TEST_AMQP_URL").is_err() {
        sagaflow::bus::conformance::say_skipped("process crash test", "SAGA_TEST_AMQP_URL");
        return;
    }
    let (rounds, orders) = (env_or("SAGA_CRASH_ROUNDS", 6), env_or("SAGA_CRASH_ORDERS", 400));
    let worker = worker();
    let dir = tempfile::tempdir().unwrap();
    let namespace = format!("crash-{}", uuid::Uuid::now_v7().simple());
    let run = || {
        Command::new(&worker)
            .args(["run", dir.path().to_str().unwrap(), &namespace, &orders.to_string()])
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    // A deterministic spread of kill moments, from right after start to well into the work.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut crashes = 0;
    for _ in 0..rounds {
        let mut child = run();
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis(150 + (seed >> 33) % 1_500));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            crashes += 1;
        }
        child.wait().unwrap();
    }
    let started = Instant::now();
    let mut last = run();
    loop {
        if let Some(status) = last.try_wait().unwrap() {
            assert!(status.success(), "the last run failed");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "the last run did not finish in 5 minutes");
        std::thread::sleep(Duration::from_millis(200));
    }
    let check =
        Command::new(&worker).args(["check", dir.path().to_str().unwrap(), &orders.to_string()]).output().unwrap();
    let problems = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "after {crashes} crashes:\n{problems}");
    eprintln!("{orders} orders, {crashes} SIGKILLs, every order terminal, books balance");
}
