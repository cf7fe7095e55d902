//! A FUSE test filesystem that simulates power loss.
//!
//! A [`Disk`] is an in-memory filesystem (directories and regular files) that remembers, besides its current
//! state, what a real disk would still hold after the power went: only what was synced. Mount it, let the
//! code under test work in it, [freeze](Disk::freeze) it at a random moment (the power goes), kill the
//! process, [unmount](Mount::unmount), [cut the power](Disk::cut_power) and mount it again: what the code
//! was told was durable must still be there.
//!
//! ```no_run
//! use powercut::{Disk, Unsynced};
//! use std::io::Write;
//!
//! # fn main() -> std::io::Result<()> {
//! powercut::available().map_err(std::io::Error::other)?;
//! let disk = Disk::new();
//! let dir = tempfile_dir();
//! let mount = disk.mount(&dir)?;
//! let mut f = std::fs::File::create(dir.join("log"))?;
//! f.write_all(b"synced")?;
//! f.sync_data()?; // durable: content and name
//! f.write_all(b" lost")?; // not synced
//! disk.freeze(); // the power goes: from now on writes and syncs fail with EIO
//! drop(f);
//! mount.unmount()?;
//! let report = disk.cut_power(Unsynced::Dropped)?;
//! assert_eq!(report.unsynced_writes_dropped, 1);
//! let mount = disk.mount(&dir)?;
//! assert_eq!(std::fs::read(dir.join("log"))?, b"synced");
//! mount.unmount()?;
//! # Ok(())
//! # }
//! # fn tempfile_dir() -> std::path::PathBuf { unimplemented!() }
//! ```
//!
//! # The durability contract
//!
//! - Every inode has a *current* content (what reads return) and a *durable* content, plus the writes and
//!   truncates (`set_len`, `O_TRUNC`, `fallocate`) applied since its last sync, in order. Every directory
//!   has current and durable entries.
//! - `fsync` or `fdatasync` of a regular file (FUSE `FSYNC`, with or without datasync) makes its current
//!   content and size durable, and its current name, and the entries of the directories leading to it from
//!   the root (ext4-like: a synced file does not vanish). A synced file that has no name any more has its
//!   unlink made durable instead.
//! - `fsync` of a directory (FUSE `FSYNCDIR`) makes all its current entries durable: creations, unlinks,
//!   renames into or out of it; and, as for files, the entries leading to it from the root.
//! - Renames are atomic across a cut: once either side of a rename is durable, both are (an inode has one
//!   durable name; making a new one durable retires the old, and retiring a durable name whose inode now
//!   lives elsewhere makes that new place durable). A replaced target disappears with it.
//! - Nothing else makes anything durable: not `close`, not `sync`/`syncfs` (FUSE does not see them), and
//!   not `sync_file_range`, which FUSE does not see either. This is the stricter model of a disk with a
//!   volatile cache: `sync_file_range` only starts writeback, it never flushes the cache nor the metadata.
//! - A new file's durable content is empty until it is synced, even if its name is durable; a new
//!   directory's durable entries are empty until it is synced.
//! - [`Disk::cut_power`] replaces the current state by the durable one: the durable namespace (what is
//!   reachable from the root through durable entries) and each reachable file's durable content. With
//!   [`Unsynced::RandomPrefix`], each file also keeps a random prefix of its own unsynced writes and
//!   truncates, applied in order, chosen per file deterministically from the seed. Namespace changes are
//!   never partially kept beyond the durable namespace. Afterwards the new current state is also the durable
//!   one. Unlinked files that were still open are gone (unless their unlink was not durable: then they are
//!   back, with their durable content).
//! - [`Disk::freeze`]: from then on every change (write, create, mknod, mkdir, unlink, rmdir, rename,
//!   setattr, fallocate) and every fsync fails with `EIO` and changes nothing; reads still work. The cut
//!   unfreezes.
//! - [`Disk::fail_syncs`]: fsyncs fail with `EIO` and make nothing durable, while writes still succeed (a
//!   disk that cannot write through its cache).
//! - Metadata other than size and names (mode, owner, times) is not crash-modelled: its current value
//!   survives a cut.
//!
//! # What is supported
//!
//! lookup, getattr, setattr (size, mode, owner, times), create, mknod (regular files), open, read, write,
//! flush, release, fsync, opendir, readdir, releasedir, fsyncdir, mkdir, unlink, rmdir, rename (plain and
//! `RENAME_NOREPLACE`; other flags give `EINVAL`), statfs (1 TiB free), access, fallocate (mode 0; others
//! give `EOPNOTSUPP`). `flock` and `fcntl` locks are handled by the kernel locally (fuser does not negotiate
//! FUSE locking), which is what sled's exclusive lock on its `db` file needs. Not supported: symlinks, hard
//! links, xattrs, special files. Files are opened without `direct_io`; the kernel writes through (no
//! writeback cache), so every `write` reaches the model before it returns.
//!
//! Mounting needs root (the direct `mount(2)` path of fuser; there is no fusermount) and `/dev/fuse`: see
//! [`available`].

#![warn(missing_docs)]

mod fs;
mod model;
mod mount;

#[cfg(test)]
mod model_tests;

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use model::{CutReport, Stats, Unsynced};
pub use mount::Mount;

use model::State;

/// The simulated disk: the filesystem's current and durable state. Clones share it.
///
/// ```
/// let disk = powercut::Disk::new();
/// disk.fail_syncs(true); // fsyncs will fail with EIO
/// let report = disk.cut_power(powercut::Unsynced::Dropped).unwrap(); // not mounted, so it can be cut
/// assert_eq!(report.files, 0);
/// assert_eq!(disk.stats().cuts, 1);
/// ```
#[derive(Clone, Debug)]
pub struct Disk {
    state: Arc<Mutex<State>>,
}

impl Default for Disk {
    fn default() -> Disk {
        Disk::new()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in one FUSE request must not wedge the rest of the test.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Disk {
    /// An empty disk: a root directory owned by the calling user, mode 0755, nothing else.
    pub fn new() -> Disk {
        // SAFETY: getters without preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Disk { state: Arc::new(Mutex::new(State::new(uid, gid))) }
    }

    /// Mounts this disk's current state at `at`, an existing (empty) directory. A disk has at most one mount
    /// at a time (`ResourceBusy` otherwise).
    pub fn mount(&self, at: &Path) -> io::Result<Mount> {
        mount::mount(&self.state, at)
    }

    /// The power goes: from now on every change and every fsync fails with `EIO` and changes nothing. Reads
    /// still work. [`cut_power`](Disk::cut_power) unfreezes.
    pub fn freeze(&self) {
        lock(&self.state).frozen = true;
    }

    /// Whether the disk is frozen.
    pub fn is_frozen(&self) -> bool {
        lock(&self.state).frozen
    }

    /// Replaces the current state by the durable one (see the crate docs), drops what was not synced (or,
    /// with [`Unsynced::RandomPrefix`], keeps an in-order prefix of each file's unsynced writes), and
    /// unfreezes. The disk must not be mounted (`ResourceBusy` otherwise): unmount first.
    pub fn cut_power(&self, unsynced: Unsynced) -> io::Result<CutReport> {
        let mut state = lock(&self.state);
        if state.mounted {
            return Err(io::Error::new(io::ErrorKind::ResourceBusy, "unmount the disk before cutting its power"));
        }
        Ok(state.cut(unsynced))
    }

    /// While `fail` holds, fsyncs fail with `EIO` and make nothing durable; writes still succeed.
    pub fn fail_syncs(&self, fail: bool) {
        lock(&self.state).fail_syncs = fail;
    }

    /// Counters since the disk was created.
    pub fn stats(&self) -> Stats {
        lock(&self.state).stats
    }
}

/// Whether this machine can mount FUSE filesystems here: `CAP_SYS_ADMIN` (root), a usable `/dev/fuse` and
/// the `fuse` filesystem type. The error says what is missing.
pub fn available() -> Result<(), String> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or("no CapEff in /proc/self/status")?;
    const CAP_SYS_ADMIN: u32 = 21;
    if cap_eff & (1 << CAP_SYS_ADMIN) == 0 {
        return Err("no CAP_SYS_ADMIN: mounting without fusermount needs root".into());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| format!("cannot open /dev/fuse: {e}"))?;
    let filesystems =
        std::fs::read_to_string("/proc/filesystems").map_err(|e| format!("cannot read /proc/filesystems: {e}"))?;
    if !filesystems.lines().any(|l| l.split_whitespace().last() == Some("fuse")) {
        return Err("the kernel has no fuse filesystem (modprobe fuse)".into());
    }
    Ok(())
}
