//! Real filesystem calls through a mounted [`Disk`]. Each test skips (with a message) where FUSE cannot be
//! mounted, and uses its own mount point.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use powercut::{Disk, Unsynced};
use tempfile::TempDir;

/// A fresh mount point, or `None` (after saying why) where FUSE mounts are impossible.
fn mount_point(test: &str) -> Option<(TempDir, PathBuf)> {
    if let Err(why) = powercut::available() {
        eprintln!("skipping {test}: {why}");
        return None;
    }
    let tmp = tempfile::Builder::new().prefix("powercut-test-").tempdir().unwrap();
    let at = tmp.path().join("mnt");
    fs::create_dir(&at).unwrap();
    Some((tmp, at))
}

fn write_file(path: &Path, data: &[u8]) -> File {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f
}

fn fsync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

fn flock(f: &File, op: i32) -> io::Result<()> {
    // SAFETY: a valid open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn fcntl_lock(f: &File, cmd: i32, kind: i32) -> io::Result<()> {
    // SAFETY: a zeroed flock is a valid "whole file" lock description (l_pid 0, as OFD locks require).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: the descriptor is open and `lock` outlives the call.
    if unsafe { libc::fcntl(f.as_raw_fd(), cmd, &lock) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[test]
fn std_fs_calls_keep_exactly_what_was_synced() {
    let Some((_tmp, at)) = mount_point("std_fs_calls_keep_exactly_what_was_synced") else { return };
    let disk = Disk::new();
    let mount = disk.mount(&at).unwrap();

    fs::create_dir(at.join("d")).unwrap();
    write_file(&at.join("d/all"), b"sync_all").sync_all().unwrap();
    write_file(&at.join("d/data"), b"sync_data").sync_data().unwrap();
    write_file(&at.join("d/unsynced"), b"never synced");
    let f = write_file(&at.join("appended"), b"first");
    f.sync_data().unwrap();
    (&f).write_all(b" second").unwrap();
    f.write_all_at(b"FIRST", 0).unwrap();
    drop(f);
    assert_eq!(fs::read(at.join("appended")).unwrap(), b"FIRST second");

    // Renames: durable only with a directory fsync (or an fsync of the file).
    write_file(&at.join("d/tmp1"), b"one").sync_all().unwrap();
    fs::rename(at.join("d/tmp1"), at.join("d/renamed1")).unwrap();
    write_file(&at.join("tmp2"), b"two").sync_all().unwrap();
    fs::rename(at.join("tmp2"), at.join("renamed2")).unwrap();
    fsync_dir(&at);

    // Unlinks: undone unless the directory is synced.
    write_file(&at.join("d/removed"), b"back").sync_all().unwrap();
    fs::remove_file(at.join("d/removed")).unwrap();
    write_file(&at.join("removed_synced"), b"gone").sync_all().unwrap();
    fs::remove_file(at.join("removed_synced")).unwrap();
    fsync_dir(&at);

    // Truncates.
    let f = write_file(&at.join("short"), b"0123456789");
    f.set_len(3).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let f = write_file(&at.join("long"), b"0123456789");
    f.sync_all().unwrap();
    f.set_len(3).unwrap();
    assert_eq!(fs::metadata(at.join("long")).unwrap().len(), 3);
    drop(f);

    // An empty directory created and synced, and one only created.
    fs::create_dir(at.join("kept_dir")).unwrap();
    fsync_dir(&at.join("kept_dir"));
    fs::create_dir(at.join("lost_dir")).unwrap();
    fs::remove_dir(at.join("lost_dir")).unwrap();
    fs::create_dir(at.join("lost_dir")).unwrap();

    assert_eq!(names(&at), ["appended", "d", "kept_dir", "long", "lost_dir", "renamed2", "short"]);
    assert_eq!(names(&at.join("d")), ["all", "data", "renamed1", "unsynced"]);
    let meta = fs::metadata(at.join("d/all")).unwrap();
    assert!(meta.is_file() && meta.mode() & 0o777 & !0o666 == 0, "mode {:o}", meta.mode());
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    assert!(fs::metadata(at.join("d")).unwrap().is_dir());
    let stats = disk.stats();
    assert!(stats.file_syncs >= 8 && stats.dir_syncs >= 3, "{stats:?}");

    assert_eq!(disk.cut_power(Unsynced::Dropped).unwrap_err().kind(), io::ErrorKind::ResourceBusy);
    let started = Instant::now();
    mount.unmount().unwrap();
    assert!(started.elapsed() < Duration::from_millis(500), "nothing was open, so no busy fallback");
    let report = disk.cut_power(Unsynced::Dropped).unwrap();
    assert!(report.unsynced_writes_dropped >= 3, "{report:?}");

    let mount = disk.mount(&at).unwrap();
    assert_eq!(names(&at), ["appended", "d", "kept_dir", "long", "renamed2", "short"]);
    assert_eq!(names(&at.join("d")), ["all", "data", "removed", "tmp1"]);
    assert_eq!(fs::read(at.join("d/all")).unwrap(), b"sync_all");
    assert_eq!(fs::read(at.join("d/data")).unwrap(), b"sync_data");
    assert_eq!(fs::read(at.join("d/removed")).unwrap(), b"back");
    assert_eq!(fs::read(at.join("appended")).unwrap(), b"first");
    assert_eq!(fs::read(at.join("d/tmp1")).unwrap(), b"one");
    assert_eq!(fs::read(at.join("renamed2")).unwrap(), b"two");
    assert_eq!(fs::read(at.join("short")).unwrap(), b"012");
    assert_eq!(fs::read(at.join("long")).unwrap(), b"0123456789");
    assert!(names(&at.join("kept_dir")).is_empty());
    mount.unmount().unwrap();
}

#[test]
fn flock_and_fcntl_locks_are_exclusive() {
    let Some((_tmp, at)) = mount_point("flock_and_fcntl_locks_are_exclusive") else { return };
    let disk = Disk::new();
    let _mount = disk.mount(&at).unwrap();
    let path = at.join("db");
    let a = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).unwrap();
    let b = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    // What fs2's try_lock_exclusive does, which sled uses on its db file.
    flock(&a, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    assert_eq!(errno(&flock(&b, libc::LOCK_EX | libc::LOCK_NB).unwrap_err()), Some(libc::EWOULDBLOCK));
    flock(&a, libc::LOCK_UN).unwrap();
    flock(&b, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    flock(&b, libc::LOCK_UN).unwrap();
    // POSIX record locks; open-file-description locks conflict even within one process.
    fcntl_lock(&a, libc::F_SETLK, libc::F_WRLCK).unwrap();
    fcntl_lock(&a, libc::F_SETLK, libc::F_UNLCK).unwrap();
    fcntl_lock(&a, libc::F_OFD_SETLK, libc::F_WRLCK).unwrap();
    assert_eq!(errno(&fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_WRLCK).unwrap_err()), Some(libc::EAGAIN));
    fcntl_lock(&a, libc::F_OFD_SETLK, libc::F_UNLCK).unwrap();
    fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_WRLCK).unwrap();
}

fn cstr(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap()
}

fn check(rc: i32) -> io::Result<()> {
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[test]
fn mknod_fallocate_rename_flags_statfs_and_access() {
    let Some((tmp, at)) = mount_point("mknod_fallocate_rename_flags_statfs_and_access") else { return };
    let disk = Disk::new();
    let mount = disk.mount(&at).unwrap();
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    assert_eq!(disk.mount(&other).unwrap_err().kind(), io::ErrorKind::ResourceBusy, "one mount per disk");

    let (node, fifo) = (cstr(&at.join("node")), cstr(&at.join("fifo")));
    // SAFETY (all libc calls below): valid NUL-terminated paths and open descriptors.
    check(unsafe { libc::mknod(node.as_ptr(), libc::S_IFREG | 0o600, 0) }).unwrap();
    assert!(fs::metadata(at.join("node")).unwrap().is_file());
    assert_eq!(
        errno(&check(unsafe { libc::mknod(fifo.as_ptr(), libc::S_IFIFO | 0o600, 0) }).unwrap_err()),
        Some(libc::EPERM)
    );

    let f = OpenOptions::new().write(true).open(at.join("node")).unwrap();
    check(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 8192) }).unwrap();
    assert_eq!(fs::read(at.join("node")).unwrap(), vec![0; 8192]);
    let keep_size = check(unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20) });
    assert_eq!(errno(&keep_size.unwrap_err()), Some(libc::EOPNOTSUPP));
    f.sync_all().unwrap();
    drop(f);

    write_file(&at.join("a"), b"a");
    let (a, node_path) = (cstr(&at.join("a")), cstr(&at.join("node")));
    let renameat2 = |flags| {
        check(unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, node_path.as_ptr(), flags) })
    };
    assert_eq!(errno(&renameat2(libc::RENAME_NOREPLACE).unwrap_err()), Some(libc::EEXIST));
    assert_eq!(errno(&renameat2(libc::RENAME_EXCHANGE).unwrap_err()), Some(libc::EINVAL));
    let b = cstr(&at.join("b"));
    check(unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_NOREPLACE) })
        .unwrap();
    assert_eq!(names(&at), ["b", "node"]);

    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statvfs(cstr(&at).as_ptr(), &mut vfs) }).unwrap();
    assert!(vfs.f_bavail as u64 * vfs.f_frsize as u64 >= 1 << 40, "plenty of free space");
    check(unsafe { libc::access(b.as_ptr(), libc::R_OK | libc::W_OK) }).unwrap();
    assert_eq!(
        errno(&check(unsafe { libc::access(cstr(&at.join("none")).as_ptr(), libc::F_OK) }).unwrap_err()),
        Some(libc::ENOENT)
    );

    mount.unmount().unwrap();
    let report = disk.cut_power(Unsynced::Dropped).unwrap();
    assert_eq!((report.files, report.names_dropped), (1, 1), "{report:?}");
    let mount = disk.mount(&at).unwrap();
    assert_eq!(fs::read(at.join("node")).unwrap(), vec![0; 8192], "the synced fallocate and mknod stay");
    mount.unmount().unwrap();
}

#[test]
fn freeze_fails_changes_and_syncs_with_eio() {
    let Some((_tmp, at)) = mount_point("freeze_fails_changes_and_syncs_with_eio") else { return };
    let disk = Disk::new();
    let mount = disk.mount(&at).unwrap();
    let mut f = write_file(&at.join("f"), b"durable");
    f.sync_all().unwrap();
    disk.freeze();
    assert!(disk.is_frozen());
    assert_eq!(errno(&f.write_all(b" more").unwrap_err()), Some(libc::EIO));
    assert_eq!(errno(&f.sync_all().unwrap_err()), Some(libc::EIO));
    assert_eq!(errno(&f.set_len(0).unwrap_err()), Some(libc::EIO));
    assert_eq!(errno(&File::create(at.join("g")).unwrap_err()), Some(libc::EIO));
    assert_eq!(errno(&fs::create_dir(at.join("d")).unwrap_err()), Some(libc::EIO));
    assert_eq!(errno(&fs::rename(at.join("f"), at.join("h")).unwrap_err()), Some(libc::EIO));
    assert_eq!(errno(&fs::remove_file(at.join("f")).unwrap_err()), Some(libc::EIO));
    let mut read = String::new();
    File::open(at.join("f")).unwrap().read_to_string(&mut read).unwrap();
    assert_eq!(read, "durable", "reads go on");
    drop(f);
    mount.unmount().unwrap();
    disk.cut_power(Unsynced::Dropped).unwrap();
    assert!(!disk.is_frozen());
    let mount = disk.mount(&at).unwrap();
    assert_eq!(fs::read(at.join("f")).unwrap(), b"durable");
    write_file(&at.join("f"), b"writable again").sync_all().unwrap();
    mount.unmount().unwrap();
}

#[test]
fn failing_syncs_report_eio_and_keep_nothing() {
    let Some((_tmp, at)) = mount_point("failing_syncs_report_eio_and_keep_nothing") else { return };
    let disk = Disk::new();
    let mount = disk.mount(&at).unwrap();
    write_file(&at.join("f"), b"old").sync_all().unwrap();
    disk.fail_syncs(true);
    let f = write_file(&at.join("f"), b"new");
    assert_eq!(errno(&f.sync_data().unwrap_err()), Some(libc::EIO));
    assert_eq!(fs::read(at.join("f")).unwrap(), b"new", "writes still succeed");
    drop(f);
    mount.unmount().unwrap();
    disk.cut_power(Unsynced::Dropped).unwrap();
    disk.fail_syncs(false);
    let mount = disk.mount(&at).unwrap();
    assert_eq!(fs::read(at.join("f")).unwrap(), b"old");
    assert_eq!(disk.stats().failed_syncs, 1);
    mount.unmount().unwrap();
}

#[test]
fn unmount_works_after_sigkill_and_with_files_held_open() {
    let Some((_tmp, at)) = mount_point("unmount_works_after_sigkill_and_with_files_held_open") else { return };
    let disk = Disk::new();
    let mount = disk.mount(&at).unwrap();
    // A process inside the mount with a file open, killed mid-flight.
    let mut child = Command::new("sh")
        .args(["-c", "exec 3>>f; echo started >&3; exec sleep 1000"])
        .current_dir(&at)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while fs::read(at.join("f")).map(|d| d.is_empty()).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(10), "the child never wrote");
        thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    mount.unmount().unwrap();
    disk.cut_power(Unsynced::Dropped).unwrap();

    // A file held open by this very process: unmount detaches, then aborts the connection.
    let mount = disk.mount(&at).unwrap();
    let held = write_file(&at.join("held"), b"x");
    held.sync_all().unwrap();
    let started = Instant::now();
    mount.unmount().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(held.sync_all().is_err(), "the old connection is gone");
    let mount = disk.mount(&at).unwrap();
    assert_eq!(fs::read(at.join("held")).unwrap(), b"x", "remounting the same path at once works");
    drop(held);
    drop(mount); // Drop unmounts too
    assert_eq!(disk.stats().cuts, 1);
    let _again = disk.mount(&at).unwrap();
}

#[test]
fn random_prefix_cuts_keep_an_in_order_prefix_through_the_mount() {
    let Some((_tmp, at)) = mount_point("random_prefix_cuts_keep_an_in_order_prefix_through_the_mount") else { return };
    let disk = Disk::new();
    let mount = disk.mount(&at).unwrap();
    for i in 0..8 {
        let f = write_file(&at.join(format!("f{i}")), b"");
        f.sync_all().unwrap();
        for w in 0u8..20 {
            f.write_all_at(&[w], u64::from(w)).unwrap();
        }
    }
    mount.unmount().unwrap();
    let report = disk.cut_power(Unsynced::RandomPrefix { seed: 42 }).unwrap();
    let mount = disk.mount(&at).unwrap();
    let mut kept = 0;
    for i in 0..8 {
        let data = fs::read(at.join(format!("f{i}"))).unwrap();
        assert_eq!(data, (0..data.len() as u8).collect::<Vec<u8>>());
        kept += data.len();
    }
    assert_eq!(report.unsynced_writes_dropped, 8 * 20 - kept);
    mount.unmount().unwrap();
}

fn open_sled(dir: &Path) -> sled::Db {
    // No background flusher, so that only the syncs made here happen.
    sled::Config::new().path(dir).flush_every_ms(None).open().unwrap()
}

#[test]
fn sled_runs_on_the_filesystem() {
    let Some((_tmp, at)) = mount_point("sled_runs_on_the_filesystem") else { return };
    let disk = Disk::new();
    let store = at.join("store");
    let mount = disk.mount(&at).unwrap();
    let db = open_sled(&store); // takes an exclusive flock on store/db
    db.insert("key", "value").unwrap();
    let syncs = disk.stats().file_syncs;
    db.flush().unwrap();
    assert_eq!(disk.stats().file_syncs, syncs, "sled's flush ends with sync_file_range, which FUSE never sees");
    File::open(store.join("db")).unwrap().sync_data().unwrap();
    drop(db);
    mount.unmount().unwrap();
    disk.cut_power(Unsynced::Dropped).unwrap();
    let mount = disk.mount(&at).unwrap();
    let db = open_sled(&store);
    assert_eq!(db.get("key").unwrap().as_deref(), Some(&b"value"[..]));
    drop(db);
    mount.unmount().unwrap();
}

/// Set in the child process that [`sled_worker`] runs in: the sled directory, then the round.
const WORKER_DIR: &str = "POWERCUT_SLED_WORKER_DIR";
const WORKER_ROUND: &str = "POWERCUT_SLED_WORKER_ROUND";
const KEYS: u32 = 100;

fn key(round: u32, kind: &str, i: u32) -> String {
    format!("r{round}-{kind}-{i:04}")
}

/// Not a test on its own: the sled worker process of [`sled_survives_sigkill_and_power_cuts`], which runs
/// this test binary again with [`WORKER_DIR`] set. It makes some keys durable, writes more without a
/// sync the filesystem can see, says so on stdout and waits to be killed.
#[test]
fn sled_worker() {
    let Ok(dir) = std::env::var(WORKER_DIR) else { return };
    let round: u32 = std::env::var(WORKER_ROUND).unwrap().parse().unwrap();
    let db = open_sled(Path::new(&dir));
    for i in 0..KEYS {
        db.insert(key(round, "synced", i), vec![round as u8; 100]).unwrap();
    }
    db.flush().unwrap();
    File::open(Path::new(&dir).join("db")).unwrap().sync_data().unwrap();
    println!("POWERCUT synced");
    for i in 0..KEYS {
        db.insert(key(round, "unsynced", i), vec![round as u8; 100]).unwrap();
        if i % 25 == 24 {
            db.flush().unwrap();
        }
    }
    println!("POWERCUT flushed");
    io::stdout().flush().unwrap();
    thread::sleep(Duration::from_secs(600));
}

#[test]
fn sled_survives_sigkill_and_power_cuts() {
    let Some((_tmp, at)) = mount_point("sled_survives_sigkill_and_power_cuts") else { return };
    let disk = Disk::new();
    let store = at.join("store");
    let cuts = [
        Unsynced::Dropped,
        Unsynced::RandomPrefix { seed: 1 },
        Unsynced::RandomPrefix { seed: 2 },
        Unsynced::RandomPrefix { seed: 3 },
    ];
    for (round, cut) in (0u32..).zip(cuts) {
        let mount = disk.mount(&at).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "sled_worker", "--nocapture", "--test-threads=1"])
            .env(WORKER_DIR, &store)
            .env(WORKER_ROUND, round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while line.trim() != "POWERCUT flushed" {
            line.clear();
            assert!(io::BufRead::read_line(&mut out, &mut line).unwrap() > 0, "the worker died: {:?}", child.wait());
        }
        disk.freeze();
        child.kill().unwrap();
        child.wait().unwrap();
        mount.unmount().unwrap();
        let report = disk.cut_power(cut).unwrap();
        eprintln!("round {round}, {cut:?}: {report:?}");

        let mount = disk.mount(&at).unwrap();
        let db = open_sled(&store);
        for r in 0..=round {
            for i in 0..KEYS {
                assert_eq!(
                    db.get(key(r, "synced", i)).unwrap().as_deref(),
                    Some(&[r as u8; 100][..]),
                    "round {r} key {i}"
                );
            }
        }
        // What survives of the unsynced keys is a prefix of them, and nothing with Dropped.
        let kept = (0..KEYS).take_while(|i| db.get(key(round, "unsynced", *i)).unwrap().is_some()).count() as u32;
        assert!(
            (kept..KEYS).all(|i| db.get(key(round, "unsynced", i)).unwrap().is_none()),
            "round {round}: a gap after {kept}"
        );
        if cut == Unsynced::Dropped {
            assert_eq!(kept, 0);
        }
        eprintln!("round {round}: {kept} unsynced keys kept");
        drop(db);
        mount.unmount().unwrap();
    }
}
