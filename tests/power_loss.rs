//! Power cuts: the order workload on a sled store inside a filesystem that keeps every written
//! byte in memory until it is synced (`powercut`), cut at random moments; and a disk whose
//! syncs start failing, after which nothing more may be acked. After each cut the
//! store must open and hold every commit whose durability the worker had reported before the
//! cut (so every delivery the engine acked); at the end every order is terminal and every
//! effect was applied exactly once.
//!
//! A cut: freeze the filesystem (from that instant nothing reaches the "disk"), SIGKILL the
//! worker, unmount, drop what was not synced (all of it, or a random prefix of each file's
//! unsynced writes, alternately), mount again. `SAGA_POWER_CUTS` cuts (default 12) over epochs
//! of `SAGA_POWER_CUT_ORDERS` orders (default 400). The worker runs on the default durable
//! local bus, so its queues are on the same disk and are cut with the rest. Runs as root on
//! Linux with `/dev/fuse`; otherwise it says why it is skipped.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use powercut::{Disk, Mount, Unsynced};
use worker::{env_or, worker};

mod worker;

/// A running worker and the durability reports it printed.
struct Run {
    child: Child,
    acks: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Run {
    /// Runs the workload of `orders` orders with seed `seed` on the local bus.
    fn start(worker: &Path, dir: &Path, orders: u64, seed: u64) -> Run {
        let mut child = Command::new(worker)
            .args(["run", dir.to_str().expect("a UTF-8 path"), "local", &orders.to_string(), &seed.to_string()])
            .env("SAGA_PRINT_ACKS", "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the worker starts");
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (stdout, lines) = (child.stdout.take().expect("a piped stdout"), acks.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Run { child, acks, reader }
    }
}

/// Copies a directory tree out of the mount, to look at what failed.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn run_checker(worker: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(worker).args(args).output().expect("the checker runs");
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

#[test]
fn power_cuts_at_random_moments_lose_no_acked_commit_and_repeat_no_effect() {
    if let Err(why) = powercut::available() {
        eprintln!("skipped: power-loss test ({why})");
        return;
    }
    let (cuts, orders) = (env_or("SAGA_POWER_CUTS", 12), env_or("SAGA_POWER_CUT_ORDERS", 400));
    let (_bin, worker) = worker();
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let mountpoint = tempfile::tempdir().expect("a mount point");
    let disk = Disk::new();
    let mut mount: Option<Mount> = Some(disk.mount(mountpoint.path()).expect("the filesystem mounts"));
    let mut random = fastrand::Rng::with_seed(0x5851_F42D_4C95_7F2D);
    let (mut epoch, mut epochs, mut made, mut checked_acks) = (0u64, 1u64, 0u64, 0usize);
    let started = Instant::now();
    while made < cuts {
        let dir = mountpoint.path().join(format!("epoch-{epoch}"));
        let mut run = Run::start(&worker, &dir, orders, epoch);
        std::thread::sleep(Duration::from_millis(100 + random.u64(..1_000)));
        if let Some(status) = run.child.try_wait().expect("the worker can be waited for") {
            // The epoch's orders are all done: check it, and begin the next.
            assert!(status.success(), "the worker failed on its own");
            run.reader.join().expect("the reader");
            run_checker(&worker, &["check", dir.to_str().unwrap(), &orders.to_string(), &epoch.to_string()])
                .unwrap_or_else(|problems| panic!("epoch {epoch} after its cuts:\n{problems}"));
            epoch += 1;
            epochs += 1;
            continue;
        }
        // The power goes: nothing written from now on reaches the disk.
        disk.freeze();
        let acked = run.acks.lock().unwrap().clone();
        run.child.kill().expect("SIGKILL");
        run.child.wait().expect("the worker can be waited for");
        run.reader.join().expect("the reader");
        mount.take().expect("mounted").unmount().expect("the filesystem unmounts");
        let unsynced = if made % 2 == 0 { Unsynced::Dropped } else { Unsynced::RandomPrefix { seed: random.u64(..) } };
        disk.cut_power(unsynced).expect("the power can be cut");
        made += 1;
        mount = Some(disk.mount(mountpoint.path()).expect("the filesystem mounts again"));
        let acks = scratch.path().join(format!("acks-{made}"));
        std::fs::write(&acks, acked.join("\n")).expect("the acks can be written");
        checked_acks += acked.len();
        if let Err(problems) = run_checker(&worker, &["verify", dir.to_str().unwrap(), acks.to_str().unwrap()]) {
            let kept = std::env::temp_dir().join(format!("power-loss-failure-{}", std::process::id()));
            let _ = copy_tree(&dir, &kept);
            panic!("after cut {made} ({unsynced:?}), the store kept in {}:\n{problems}", kept.display());
        }
    }
    // The last epoch runs to its end without a cut, then everything is checked.
    let dir = mountpoint.path().join(format!("epoch-{epoch}"));
    let mut last = Run::start(&worker, &dir, orders, epoch);
    let status = last.child.wait().expect("the worker can be waited for");
    assert!(status.success(), "the last run failed");
    run_checker(&worker, &["check", dir.to_str().unwrap(), &orders.to_string(), &epoch.to_string()])
        .unwrap_or_else(|problems| panic!("epoch {epoch} after its cuts:\n{problems}"));
    let stats = disk.stats();
    eprintln!(
        "{made} power cuts over {epochs} epochs of {orders} orders in {:.0?}: {checked_acks} acked commits \
         checked after the cuts, none lost; every order terminal, books balance ({stats:?})",
        started.elapsed()
    );
    drop(mount);
}

#[test]
fn after_a_sync_fails_nothing_more_is_acked_and_what_was_acked_survives_a_cut() {
    if let Err(why) = powercut::available() {
        eprintln!("skipped: failing-sync test ({why})");
        return;
    }
    let orders = 400;
    let (_bin, worker) = worker();
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let mountpoint = tempfile::tempdir().expect("a mount point");
    let disk = Disk::new();
    let mount = disk.mount(mountpoint.path()).expect("the filesystem mounts");
    let dir = mountpoint.path().join("store");
    let epoch = 0;
    let mut run = Run::start(&worker, &dir, orders, epoch);
    let count = |run: &Run| run.acks.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&run) < 200 {
        assert!(Instant::now() < deadline, "the worker did not get going");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The disk stops writing through: every sync from now on fails.
    disk.fail_syncs(true);
    std::thread::sleep(Duration::from_secs(1));
    let settled = count(&run);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&run), settled, "commits were acked after a sync had failed");
    assert!(run.child.try_wait().expect("the worker can be waited for").is_none(), "the worker stays up, stopped");
    disk.freeze();
    let acked = run.acks.lock().unwrap().clone();
    run.child.kill().expect("SIGKILL");
    run.child.wait().expect("the worker can be waited for");
    run.reader.join().expect("the reader");
    mount.unmount().expect("the filesystem unmounts");
    disk.fail_syncs(false);
    disk.cut_power(Unsynced::Dropped).expect("the power can be cut");
    let mount = disk.mount(mountpoint.path()).expect("the filesystem mounts again");
    let acks = scratch.path().join("acks");
    std::fs::write(&acks, acked.join("\n")).expect("the acks can be written");
    run_checker(&worker, &["verify", dir.to_str().unwrap(), acks.to_str().unwrap()])
        .unwrap_or_else(|problems| panic!("after the failed syncs:\n{problems}"));
    let mut last = Run::start(&worker, &dir, orders, epoch);
    assert!(last.child.wait().expect("the worker can be waited for").success(), "the last run failed");
    run_checker(&worker, &["check", dir.to_str().unwrap(), &orders.to_string(), &epoch.to_string()])
        .unwrap_or_else(|problems| panic!("at the end:\n{problems}"));
    eprintln!("{} commits acked before the syncs failed, none after; all of them survived the cut", acked.len());
    drop(mount);
}
