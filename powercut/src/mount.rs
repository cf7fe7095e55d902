//! Mounting and, above all, unmounting reliably: a test cuts the power right after killing the process that
//! used the mount, then remounts at the same path, so unmount must not return while the kernel still holds
//! the old mount or the session thread still runs.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption};

use crate::fs::PowercutFs;
use crate::lock;
use crate::model::State;

/// How long a plain unmount is retried while the kernel says the mount is busy (a killed process whose
/// files are still being released) before falling back to a lazy unmount.
const BUSY_RETRY: Duration = Duration::from_secs(1);
/// How long the session may outlive a lazy unmount (the last users letting go) before the connection is
/// aborted.
const DETACHED_LINGER: Duration = Duration::from_secs(1);
/// How long the session may take to end once the connection is aborted.
const ABORT_WAIT: Duration = Duration::from_secs(5);

const FUSECTL_DIR: &str = "/sys/fs/fuse/connections";

/// A mounted [`Disk`](crate::Disk). Dropping it unmounts too (errors are then printed, not returned).
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let disk = powercut::Disk::new();
/// let dir = std::path::Path::new("/tmp/powercut-mnt");
/// std::fs::create_dir_all(dir)?;
/// let mount = disk.mount(dir)?;
/// assert_eq!(mount.path(), dir.canonicalize()?);
/// mount.unmount()?; // returns once the kernel has let go: the path can be mounted again at once
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Mount {
    session: Option<BackgroundSession>,
    path: PathBuf,
    /// The mount's device number, to recognise it in /proc/self/mountinfo and in fusectl.
    dev: u64,
    state: Arc<Mutex<State>>,
}

pub(crate) fn mount(state: &Arc<Mutex<State>>, at: &Path) -> io::Result<Mount> {
    {
        let mut st = lock(state);
        if st.mounted {
            return Err(io::Error::new(io::ErrorKind::ResourceBusy, "this disk is already mounted"));
        }
        st.mounted = true;
        st.end_session();
    }
    let mounted = start(state, at);
    if mounted.is_err() {
        lock(state).mounted = false;
    }
    mounted
}

fn start(state: &Arc<Mutex<State>>, at: &Path) -> io::Result<Mount> {
    let path = at.canonicalize()?;
    let outer_dev = path.metadata()?.dev();
    let mut config = Config::default();
    // No AutoUnmount: it needs fusermount, which the direct (root) mount path does without.
    config.mount_options = vec![MountOption::FSName("powercut".into())];
    let session = fuser::spawn_mount(PowercutFs::new(state.clone()), &path, &config)?;
    // The handshake is done, so the session thread answers this GETATTR of the root.
    let dev = path.metadata()?.dev();
    let mut mount = Mount { session: Some(session), path, dev, state: state.clone() };
    if dev == outer_dev {
        let _ = mount.shutdown();
        return Err(io::Error::other(format!("{} did not change device after mounting", mount.path.display())));
    }
    Ok(mount)
}

impl Mount {
    /// The (canonical) mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts, and returns once the kernel has let go and the session thread has ended, so that the disk
    /// can be cut and the same path mounted again at once.
    ///
    /// A busy mount (files still open, a process still inside) is retried briefly, then detached lazily; if
    /// its users still do not let go, the FUSE connection is aborted through fusectl (mounted at
    /// `/sys/fs/fuse/connections` if need be), which makes their remaining calls fail with `ENOTCONN`.
    pub fn unmount(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else { return Ok(()) };
        let detached = self.detach();
        let mut ended = wait_for(DETACHED_LINGER, || session.guard.is_finished());
        if !ended {
            if let Err(e) = abort_connection(self.dev) {
                eprintln!("powercut: could not abort the FUSE connection of {}: {e}", self.path.display());
            }
            ended = wait_for(ABORT_WAIT, || session.guard.is_finished());
        }
        if !ended {
            // Still serving: keep the disk marked mounted, and never let fuser's own Drop unmount by path
            // (something else may be mounted there by now).
            std::mem::forget(session);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the FUSE session at {} did not end", self.path.display()),
            ));
        }
        // The connection is gone, so fuser's own unmount-on-drop sees it unmounted and does nothing.
        let joined = session.join();
        let mut st = lock(&self.state);
        st.mounted = false;
        st.end_session();
        detached.and(joined)
    }

    /// Takes the mount off its path: plainly if possible, lazily if it stays busy.
    fn detach(&self) -> io::Result<()> {
        let target = CString::new(self.path.as_os_str().as_bytes())?;
        let deadline = Instant::now() + BUSY_RETRY;
        loop {
            if !mounted_at(&self.path, self.dev)? {
                return Ok(());
            }
            // SAFETY: `target` is a valid NUL-terminated path.
            if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EBUSY) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Some(libc::EBUSY) => {
                    // SAFETY: as above.
                    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
                        return Ok(());
                    }
                    return Err(io::Error::last_os_error());
                }
                Some(libc::EINVAL) => return Ok(()), // no longer a mount point
                _ => return Err(err),
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("powercut: unmounting {} failed: {e}", self.path.display());
        }
    }
}

/// Polls `done` until it holds or `limit` passes.
fn wait_for(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Whether the mount with device `dev` is mounted at `path`, from /proc/self/mountinfo (which, unlike a
/// stat, does not ask the filesystem itself).
fn mounted_at(path: &Path, dev: u64) -> io::Result<bool> {
    let want_dev = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let want_path = path.as_os_str().as_bytes();
    let info = std::fs::read("/proc/self/mountinfo")?;
    Ok(info.split(|b| *b == b'\n').any(|line| {
        let mut fields = line.split(|b| *b == b' ');
        let dev = fields.nth(2);
        let point = fields.nth(1);
        dev == Some(want_dev.as_bytes()) && point.is_some_and(|p| unescape_mountinfo(p) == want_path)
    }))
}

/// Undoes mountinfo's octal escapes (`\040` for a space and the like).
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let digits =
            field.get(i + 1..i + 4).filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match digits {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Aborts the FUSE connection of the mount with device `dev`: the session thread's read then fails and it
/// ends, and whoever still holds files of the (detached) mount gets `ENOTCONN`.
fn abort_connection(dev: u64) -> io::Result<()> {
    // fusectl names connections by the kernel's dev_t encoding: major << 20 | minor.
    let kernel_dev = (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev));
    let abort = PathBuf::from(format!("{FUSECTL_DIR}/{kernel_dev}/abort"));
    if !abort.exists() {
        let (source, target, fstype) = (c"fusectl", CString::new(FUSECTL_DIR)?, c"fusectl");
        // SAFETY: valid NUL-terminated strings; no data argument.
        if unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBUSY) {
                return Err(err);
            }
        }
    }
    std::fs::write(&abort, "1")
}

#[cfg(test)]
mod tests {
    use super::unescape_mountinfo;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(br"/tmp/a\040b\134c"), b"/tmp/a b\\c");
        assert_eq!(unescape_mountinfo(br"/plain\04"), br"/plain\04");
    }
}
