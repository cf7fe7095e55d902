//! The in-memory filesystem and its crash model: every inode has a current and a durable version, and a
//! power cut replaces the first by the second. Nothing here knows about FUSE beyond its attribute types and
//! error numbers, so the rules can be tested without a mount.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo};

/// The root directory's inode number (FUSE's fixed value).
pub(crate) const ROOT: u64 = 1;

/// Longest name accepted, as on ext4.
const NAME_MAX: usize = 255;

pub(crate) type Res<T> = Result<T, Errno>;

/// What a power cut does with the writes a file received since its last sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsynced {
    /// All of them are lost: each file is exactly as at its last sync.
    Dropped,
    /// Each file keeps a prefix (possibly empty, possibly all) of its unsynced writes and truncates, in the
    /// order they were made, as a disk that had written part of its queue. The length of the prefix is chosen
    /// per file from `seed` and the inode number, so the same history and seed give the same result.
    RandomPrefix {
        /// Seed of the per-file choice.
        seed: u64,
    },
}

/// What a power cut threw away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Regular files that exist after the cut.
    pub files: usize,
    /// Unsynced writes and truncates (FUSE requests) that were not kept.
    pub unsynced_writes_dropped: usize,
    /// Bytes carried by the unsynced writes that were not kept.
    pub unsynced_bytes_dropped: u64,
    /// Directory entries (name → inode) that existed before the cut and do not after it: unsynced creations
    /// and renames.
    pub names_dropped: usize,
    /// Directory entries that exist after the cut but did not just before it: unsynced unlinks and renames
    /// undone.
    pub names_restored: usize,
}

/// Counters since the disk was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Successful writes (FUSE WRITE requests; the kernel splits large writes).
    pub writes: u64,
    /// Bytes written by them.
    pub bytes_written: u64,
    /// Successful fsync/fdatasync of regular files.
    pub file_syncs: u64,
    /// Successful fsync of directories.
    pub dir_syncs: u64,
    /// Syncs refused with EIO by [`Disk::fail_syncs`](crate::Disk::fail_syncs).
    pub failed_syncs: u64,
    /// Operations refused with EIO because the disk was frozen.
    pub frozen_rejections: u64,
    /// Power cuts so far.
    pub cuts: u64,
}

/// A write or truncate not yet made durable, kept so that a cut can replay a prefix of them.
#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    Truncate(u64),
}

impl Op {
    fn apply(&self, buf: &mut Vec<u8>) {
        match self {
            Op::Write { offset, data } => write_at(buf, *offset, data),
            Op::Truncate(len) => buf.resize(to_usize(*len), 0),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Op::Write { data, .. } => data.len() as u64,
            Op::Truncate(_) => 0,
        }
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("offset fits in memory")
}

fn write_at(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = to_usize(offset);
    let end = start + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[start..end].copy_from_slice(data);
}

#[derive(Debug)]
enum Body {
    File { data: Vec<u8>, durable: Vec<u8>, pending: Vec<Op> },
    Dir { entries: BTreeMap<OsString, u64>, durable: BTreeMap<OsString, u64> },
}

/// A (directory, name) pair.
type Link = (u64, OsString);

#[derive(Debug)]
struct Inode {
    body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Its current name. There are no hard links, so at most one.
    name: Option<Link>,
    /// Its name in the durable namespace, at most one too: making a new name durable retires the old one,
    /// which is what makes a rename atomic across a cut.
    durable_name: Option<Link>,
    /// Open file or directory handles; an unlinked inode lives until they are released.
    open: u32,
}

impl Inode {
    fn new(body: Body, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = SystemTime::now();
        Inode { body, perm, uid, gid, atime: now, mtime: now, ctime: now, name: None, durable_name: None, open: 0 }
    }

    fn kind(&self) -> FileType {
        match self.body {
            Body::File { .. } => FileType::RegularFile,
            Body::Dir { .. } => FileType::Directory,
        }
    }
}

/// What a new inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NewKind {
    File,
    Dir,
}

/// The attribute changes of a SETATTR request that the model keeps (times are kept but not crash-modelled).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SetAttr {
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) size: Option<u64>,
    pub(crate) atime: Option<SystemTime>,
    pub(crate) mtime: Option<SystemTime>,
}

/// One line of a directory listing.
pub(crate) type DirEntry = (u64, FileType, OsString);

#[derive(Debug)]
struct Handle {
    ino: u64,
    /// Directories are listed from a snapshot taken at opendir, so that offsets stay meaningful while the
    /// directory changes.
    listing: Option<Vec<DirEntry>>,
}

/// The whole disk: current and durable state, switches and counters.
#[derive(Debug)]
pub(crate) struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    pub(crate) frozen: bool,
    pub(crate) fail_syncs: bool,
    pub(crate) mounted: bool,
    pub(crate) stats: Stats,
}

impl State {
    pub(crate) fn new(uid: u32, gid: u32) -> State {
        let root = Inode::new(Body::Dir { entries: BTreeMap::new(), durable: BTreeMap::new() }, 0o755, uid, gid);
        State {
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
            frozen: false,
            fail_syncs: false,
            mounted: false,
            stats: Stats::default(),
        }
    }

    fn inode(&self, ino: u64) -> Res<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> Res<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn entries(&self, dir: u64) -> Res<&BTreeMap<OsString, u64>> {
        match &self.inode(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            Body::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Res<&mut BTreeMap<OsString, u64>> {
        match &mut self.inode_mut(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            Body::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn durable_entries_mut(&mut self, dir: u64) -> Option<&mut BTreeMap<OsString, u64>> {
        match &mut self.inodes.get_mut(&dir)?.body {
            Body::Dir { durable, .. } => Some(durable),
            Body::File { .. } => None,
        }
    }

    /// Refuses (and counts) a change while frozen: the power is already gone.
    fn check_writable(&mut self) -> Res<()> {
        if self.frozen {
            self.stats.frozen_rejections += 1;
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn file_data_mut(&mut self, ino: u64) -> Res<(&mut Vec<u8>, &mut Vec<Op>)> {
        match &mut self.inode_mut(ino)?.body {
            Body::File { data, pending, .. } => Ok((data, pending)),
            Body::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    // ---- reading ----

    pub(crate) fn attr(&self, ino: u64) -> Res<FileAttr> {
        let inode = self.inode(ino)?;
        let (size, nlink) = match &inode.body {
            Body::File { data, .. } => (data.len() as u64, u32::from(inode.name.is_some())),
            Body::Dir { entries, .. } => {
                let subdirs = entries
                    .values()
                    .filter(|c| matches!(self.inodes.get(c), Some(i) if i.kind() == FileType::Directory));
                (4096, 2 + subdirs.count() as u32)
            }
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
            crtime: inode.ctime,
            kind: inode.kind(),
            perm: inode.perm,
            nlink,
            uid: inode.uid,
            gid: inode.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Res<FileAttr> {
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        self.attr(ino)
    }

    pub(crate) fn read(&self, ino: u64, offset: u64, size: u32) -> Res<&[u8]> {
        match &self.inode(ino)?.body {
            Body::File { data, .. } => {
                let start = to_usize(offset).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                Ok(&data[start..end])
            }
            Body::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    // ---- handles ----

    pub(crate) fn open(&mut self, ino: u64) -> Res<u64> {
        self.inode_mut(ino)?.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { ino, listing: None });
        Ok(fh)
    }

    pub(crate) fn opendir(&mut self, ino: u64) -> Res<u64> {
        let parent = self.inode(ino)?.name.as_ref().map_or(ROOT, |(p, _)| *p);
        let mut listing = vec![(ino, FileType::Directory, ".".into()), (parent, FileType::Directory, "..".into())];
        for (name, child) in self.entries(ino)? {
            listing.push((*child, self.inode(*child)?.kind(), name.clone()));
        }
        let fh = self.open(ino)?;
        self.handles.get_mut(&fh).expect("just opened").listing = Some(listing);
        Ok(fh)
    }

    /// The listing of directory handle `fh` from position `offset` on.
    pub(crate) fn readdir(&self, fh: u64, offset: u64) -> Res<&[DirEntry]> {
        let listing = self.handles.get(&fh).and_then(|h| h.listing.as_ref()).ok_or(Errno::EBADF)?;
        Ok(listing.get(to_usize(offset)..).unwrap_or_default())
    }

    pub(crate) fn release(&mut self, fh: u64) {
        if let Some(handle) = self.handles.remove(&fh) {
            if let Some(inode) = self.inodes.get_mut(&handle.ino) {
                inode.open = inode.open.saturating_sub(1);
            }
            self.maybe_forget(handle.ino);
        }
    }

    /// Forgets the handles of a mount that went away (the kernel may not release them all) and the inodes
    /// only they kept alive.
    pub(crate) fn end_session(&mut self) {
        self.handles.clear();
        let inos: Vec<u64> = self.inodes.keys().copied().collect();
        for ino in &inos {
            if let Some(inode) = self.inodes.get_mut(ino) {
                inode.open = 0;
            }
        }
        for ino in inos {
            self.maybe_forget(ino);
        }
    }

    // ---- namespace changes ----

    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: NewKind,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Res<FileAttr> {
        self.check_writable()?;
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let body = match kind {
            NewKind::File => Body::File { data: Vec::new(), durable: Vec::new(), pending: Vec::new() },
            NewKind::Dir => Body::Dir { entries: BTreeMap::new(), durable: BTreeMap::new() },
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut inode = Inode::new(body, (mode & 0o7777) as u16, uid, gid);
        inode.name = Some((parent, name.to_os_string()));
        self.inodes.insert(ino, inode);
        self.entries_mut(parent)?.insert(name.to_os_string(), ino);
        self.touch_dir(parent);
        self.attr(ino)
    }

    fn touch_dir(&mut self, dir: u64) {
        if let Some(inode) = self.inodes.get_mut(&dir) {
            let now = SystemTime::now();
            inode.mtime = now;
            inode.ctime = now;
        }
    }

    /// Removes the current entry `name` of `dir`; the inode lives on while open or durably named.
    fn remove_entry(&mut self, dir: u64, name: &OsStr) -> Res<u64> {
        let ino = self.entries_mut(dir)?.remove(name).ok_or(Errno::ENOENT)?;
        let inode = self.inode_mut(ino)?;
        inode.name = None;
        inode.ctime = SystemTime::now();
        self.touch_dir(dir);
        Ok(ino)
    }

    pub(crate) fn unlink(&mut self, parent: u64, name: &OsStr) -> Res<()> {
        self.check_writable()?;
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        if self.inode(ino)?.kind() == FileType::Directory {
            return Err(Errno::EISDIR);
        }
        self.remove_entry(parent, name)?;
        self.maybe_forget(ino);
        Ok(())
    }

    pub(crate) fn rmdir(&mut self, parent: u64, name: &OsStr) -> Res<()> {
        self.check_writable()?;
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        if !self.entries(ino)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.remove_entry(parent, name)?;
        self.maybe_forget(ino);
        Ok(())
    }

    pub(crate) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        noreplace: bool,
    ) -> Res<()> {
        self.check_writable()?;
        if new_name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let src = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        let target = self.entries(new_parent)?.get(new_name).copied();
        if target == Some(src) {
            return if noreplace { Err(Errno::EEXIST) } else { Ok(()) };
        }
        let src_is_dir = self.inode(src)?.kind() == FileType::Directory;
        if src_is_dir {
            // A directory cannot move below itself.
            let mut at = Some(new_parent);
            while let Some(dir) = at {
                if dir == src {
                    return Err(Errno::EINVAL);
                }
                at = self.inode(dir)?.name.as_ref().map(|(p, _)| *p);
            }
        }
        if let Some(target) = target {
            if noreplace {
                return Err(Errno::EEXIST);
            }
            match (src_is_dir, self.inode(target)?.kind() == FileType::Directory) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.entries(target)?.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            self.remove_entry(new_parent, new_name)?;
        }
        self.remove_entry(parent, name)?;
        self.entries_mut(new_parent)?.insert(new_name.to_os_string(), src);
        self.inode_mut(src)?.name = Some((new_parent, new_name.to_os_string()));
        self.touch_dir(new_parent);
        if let Some(target) = target {
            self.maybe_forget(target);
        }
        Ok(())
    }

    // ---- data changes ----

    pub(crate) fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Res<u32> {
        self.check_writable()?;
        offset.checked_add(bytes.len() as u64).filter(|end| usize::try_from(*end).is_ok()).ok_or(Errno::EFBIG)?;
        let (data, pending) = self.file_data_mut(ino)?;
        write_at(data, offset, bytes);
        pending.push(Op::Write { offset, data: bytes.to_vec() });
        let inode = self.inode_mut(ino)?;
        inode.mtime = SystemTime::now();
        inode.ctime = inode.mtime;
        self.stats.writes += 1;
        self.stats.bytes_written += bytes.len() as u64;
        Ok(bytes.len() as u32)
    }

    fn resize(&mut self, ino: u64, len: u64) -> Res<()> {
        usize::try_from(len).map_err(|_| Errno::EFBIG)?;
        let (data, pending) = self.file_data_mut(ino)?;
        data.resize(to_usize(len), 0);
        pending.push(Op::Truncate(len));
        Ok(())
    }

    pub(crate) fn setattr(&mut self, ino: u64, change: SetAttr) -> Res<FileAttr> {
        self.check_writable()?;
        self.inode(ino)?;
        if let Some(size) = change.size {
            self.resize(ino, size)?;
        }
        let inode = self.inode_mut(ino)?;
        let now = SystemTime::now();
        if let Some(mode) = change.mode {
            inode.perm = (mode & 0o7777) as u16;
        }
        inode.uid = change.uid.unwrap_or(inode.uid);
        inode.gid = change.gid.unwrap_or(inode.gid);
        inode.atime = change.atime.unwrap_or(inode.atime);
        inode.mtime = change.mtime.unwrap_or(if change.size.is_some() { now } else { inode.mtime });
        inode.ctime = now;
        self.attr(ino)
    }

    /// Mode 0 only: extends the file with zeroes to `offset + length` if it is shorter.
    pub(crate) fn fallocate(&mut self, ino: u64, offset: u64, length: u64, mode: i32) -> Res<()> {
        self.check_writable()?;
        if mode != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        let (data, _) = self.file_data_mut(ino)?;
        if (data.len() as u64) < end {
            self.resize(ino, end)?;
        }
        Ok(())
    }

    // ---- durability ----

    /// FSYNC or FSYNCDIR of `ino` (either request on either kind does the right thing for the kind).
    pub(crate) fn sync(&mut self, ino: u64) -> Res<()> {
        if self.frozen {
            self.stats.frozen_rejections += 1;
            return Err(Errno::EIO);
        }
        let is_dir = self.inode(ino)?.kind() == FileType::Directory;
        if self.fail_syncs {
            self.stats.failed_syncs += 1;
            return Err(Errno::EIO);
        }
        if is_dir {
            let names: BTreeSet<OsString> = match &self.inode(ino)?.body {
                Body::Dir { entries, durable } => entries.keys().chain(durable.keys()).cloned().collect(),
                Body::File { .. } => unreachable!("checked above"),
            };
            for name in names {
                self.persist_entry(ino, &name);
            }
            self.persist_ancestors(ino);
            self.stats.dir_syncs += 1;
        } else {
            if let Body::File { data, durable, pending } = &mut self.inode_mut(ino)?.body {
                // Replaying the queue costs what was written since the last sync, not the file's size.
                for op in pending.drain(..) {
                    op.apply(durable);
                }
                debug_assert!(durable == data, "replaying the unsynced ops must give the current content");
            }
            // Its name too (ext4-like: a synced file does not vanish), or its unlink if it has none.
            let link = self.inode(ino)?.name.clone().or_else(|| self.inodes[&ino].durable_name.clone());
            if let Some((dir, name)) = link {
                self.persist_entry(dir, &name);
                self.persist_ancestors(dir);
            }
            self.stats.file_syncs += 1;
        }
        Ok(())
    }

    /// Makes the entry `name` of `dir` durable as it is now (present, absent or pointing elsewhere).
    ///
    /// Renames stay atomic: the inode it now names loses its other durable name, and the inode it durably
    /// named, if renamed elsewhere, has its new name (and the directories above it) made durable too. Each
    /// call makes one more (dir, name) pair agree, and none disagree, so the recursion ends.
    fn persist_entry(&mut self, dir: u64, name: &OsStr) {
        let (cur, old) = match self.inodes.get(&dir).map(|i| &i.body) {
            Some(Body::Dir { entries, durable }) => (entries.get(name).copied(), durable.get(name).copied()),
            _ => return,
        };
        if cur == old {
            return;
        }
        if let Some(old) = old {
            self.durable_entries_mut(dir).expect("a directory").remove(name);
            if let Some(inode) = self.inodes.get_mut(&old) {
                inode.durable_name = None;
            }
        }
        if let Some(cur) = cur {
            if let Some((odir, oname)) = self.inodes.get_mut(&cur).and_then(|i| i.durable_name.take()) {
                if let Some(durable) = self.durable_entries_mut(odir) {
                    durable.remove(&oname);
                }
            }
            self.durable_entries_mut(dir).expect("a directory").insert(name.to_os_string(), cur);
            self.inodes.get_mut(&cur).expect("a current entry names a live inode").durable_name =
                Some((dir, name.to_os_string()));
        }
        if let Some(old) = old {
            if let Some((ndir, nname)) = self.inodes.get(&old).and_then(|i| i.name.clone()) {
                self.persist_entry(ndir, &nname);
                self.persist_ancestors(ndir);
            }
            self.maybe_forget(old);
        }
    }

    /// Makes durable the entries that lead from the root to `dir`, so that it is reachable after a cut.
    fn persist_ancestors(&mut self, dir: u64) {
        let mut at = dir;
        while let Some((parent, name)) = self.inodes.get(&at).and_then(|i| i.name.clone()) {
            self.persist_entry(parent, &name);
            at = parent;
        }
    }

    /// Drops an inode nothing can reach any more: no current name, no durable name, no open handle.
    fn maybe_forget(&mut self, ino: u64) {
        let unused =
            matches!(self.inodes.get(&ino), Some(i) if i.name.is_none() && i.durable_name.is_none() && i.open == 0);
        if ino == ROOT || !unused {
            return;
        }
        if let Some(Inode { body: Body::Dir { durable, .. }, .. }) = self.inodes.remove(&ino) {
            // Its durable children were only reachable through it.
            for (name, child) in durable {
                if let Some(inode) = self.inodes.get_mut(&child) {
                    if inode.durable_name.as_ref() == Some(&(ino, name)) {
                        inode.durable_name = None;
                    }
                }
                self.maybe_forget(child);
            }
        }
    }

    fn current_links(&self) -> BTreeSet<(u64, OsString, u64)> {
        let mut links = BTreeSet::new();
        for (dir, inode) in &self.inodes {
            if let Body::Dir { entries, .. } = &inode.body {
                links.extend(entries.iter().map(|(name, child)| (*dir, name.clone(), *child)));
            }
        }
        links
    }

    /// Replaces the current state by the durable one (plus, with `RandomPrefix`, some unsynced writes),
    /// which becomes the new durable state too. Unfreezes.
    pub(crate) fn cut(&mut self, unsynced: Unsynced) -> CutReport {
        let before = self.current_links();
        let mut reachable = BTreeSet::from([ROOT]);
        let mut stack = vec![ROOT];
        while let Some(dir) = stack.pop() {
            if let Some(Inode { body: Body::Dir { durable, .. }, .. }) = self.inodes.get(&dir) {
                for child in durable.values() {
                    if reachable.insert(*child) {
                        stack.push(*child);
                    }
                }
            }
        }
        self.inodes.retain(|ino, _| reachable.contains(ino));
        let mut report = CutReport::default();
        for ino in reachable {
            let inode = self.inodes.get_mut(&ino).expect("reachable inodes are live");
            inode.open = 0;
            inode.name = inode.durable_name.clone();
            match &mut inode.body {
                Body::Dir { entries, durable } => entries.clone_from(durable),
                Body::File { data, durable, pending } => {
                    let kept = match unsynced {
                        Unsynced::Dropped => 0,
                        Unsynced::RandomPrefix { seed } => {
                            (splitmix64(seed ^ ino.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % (pending.len() as u64 + 1))
                                as usize
                        }
                    };
                    for op in &pending[..kept] {
                        op.apply(durable);
                    }
                    report.unsynced_writes_dropped += pending.len() - kept;
                    report.unsynced_bytes_dropped += pending[kept..].iter().map(Op::bytes).sum::<u64>();
                    pending.clear();
                    data.clone_from(durable);
                    report.files += 1;
                }
            }
        }
        let after = self.current_links();
        report.names_dropped = before.difference(&after).count();
        report.names_restored = after.difference(&before).count();
        self.handles.clear();
        self.frozen = false;
        self.stats.cuts += 1;
        report
    }

    /// The inode at `path` (relative to the root, `/`-separated), for tests.
    #[cfg(test)]
    pub(crate) fn resolve(&self, path: &str) -> Option<u64> {
        path.split('/')
            .filter(|c| !c.is_empty())
            .try_fold(ROOT, |dir, name| self.entries(dir).ok()?.get(OsStr::new(name)).copied())
    }

    /// The current content of file `ino`, for tests.
    #[cfg(test)]
    pub(crate) fn content(&self, ino: u64) -> Vec<u8> {
        self.read(ino, 0, u32::MAX).expect("a file").to_vec()
    }
}

/// A small, well-mixed deterministic generator step (SplitMix64), enough to pick prefix lengths.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
