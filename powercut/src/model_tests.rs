//! The crash model without a mount: operations go straight to [`State`].

use std::ffi::OsStr;

use fuser::Errno;

use crate::model::{NewKind, ROOT, SetAttr, State, Unsynced};

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn state() -> State {
    State::new(0, 0)
}

fn mkfile(st: &mut State, dir: u64, name: &str) -> u64 {
    st.create(dir, os(name), NewKind::File, 0o644, 0, 0).unwrap().ino.0
}

fn mkdir(st: &mut State, dir: u64, name: &str) -> u64 {
    st.create(dir, os(name), NewKind::Dir, 0o755, 0, 0).unwrap().ino.0
}

fn read(st: &State, path: &str) -> Option<Vec<u8>> {
    st.resolve(path).map(|ino| st.content(ino))
}

#[test]
fn write_and_fsync_survive_a_cut() {
    let mut st = state();
    let f = mkfile(&mut st, ROOT, "f");
    st.write(f, 0, b"hello").unwrap();
    st.sync(f).unwrap();
    let report = st.cut(Unsynced::Dropped);
    assert_eq!(read(&st, "f").as_deref(), Some(&b"hello"[..]));
    assert_eq!(report.files, 1);
    assert_eq!(report.unsynced_writes_dropped, 0);
    assert_eq!(report.names_dropped, 0);
}

#[test]
fn unsynced_writes_are_dropped() {
    let mut st = state();
    let f = mkfile(&mut st, ROOT, "f");
    st.write(f, 0, b"kept").unwrap();
    st.sync(f).unwrap();
    st.write(f, 4, b"-lost").unwrap();
    st.write(f, 0, b"LOST").unwrap();
    assert_eq!(read(&st, "f").as_deref(), Some(&b"LOST-lost"[..]));
    let report = st.cut(Unsynced::Dropped);
    assert_eq!(read(&st, "f").as_deref(), Some(&b"kept"[..]));
    assert_eq!(report.unsynced_writes_dropped, 2);
    assert_eq!(report.unsynced_bytes_dropped, 9);
    // The cut state is the new durable state: a second cut changes nothing.
    assert_eq!(st.cut(Unsynced::Dropped).unsynced_writes_dropped, 0);
    assert_eq!(read(&st, "f").as_deref(), Some(&b"kept"[..]));
}

#[test]
fn a_new_unsynced_file_vanishes() {
    let mut st = state();
    let f = mkfile(&mut st, ROOT, "f");
    st.write(f, 0, b"x").unwrap();
    let report = st.cut(Unsynced::Dropped);
    assert_eq!(st.resolve("f"), None);
    assert_eq!(report.names_dropped, 1);
    assert_eq!(report.files, 0);
}

#[test]
fn truncates_are_ordered_with_writes() {
    let mut st = state();
    let f = mkfile(&mut st, ROOT, "f");
    st.write(f, 0, b"0123456789").unwrap();
    st.sync(f).unwrap();
    st.setattr(f, SetAttr { size: Some(4), ..SetAttr::default() }).unwrap();
    assert_eq!(read(&st, "f").as_deref(), Some(&b"0123"[..]));
    st.cut(Unsynced::Dropped);
    assert_eq!(read(&st, "f").as_deref(), Some(&b"0123456789"[..]), "an unsynced truncate is undone");

    st.setattr(f, SetAttr { size: Some(2), ..SetAttr::default() }).unwrap();
    st.setattr(f, SetAttr { size: Some(6), ..SetAttr::default() }).unwrap();
    assert_eq!(read(&st, "f").as_deref(), Some(&b"01\0\0\0\0"[..]), "shrinking then growing zero-fills");
    st.fallocate(f, 0, 8, 0).unwrap();
    assert_eq!(st.fallocate(f, 0, 8, 1), Err(Errno::EOPNOTSUPP));
    st.sync(f).unwrap();
    st.cut(Unsynced::Dropped);
    assert_eq!(read(&st, "f").as_deref(), Some(&b"01\0\0\0\0\0\0"[..]), "a synced truncate and fallocate stay");
}

#[test]
fn a_synced_file_keeps_its_name_in_unsynced_directories() {
    let mut st = state();
    let a = mkdir(&mut st, ROOT, "a");
    let b = mkdir(&mut st, a, "b");
    let f = mkfile(&mut st, b, "f");
    let g = mkfile(&mut st, b, "g");
    st.write(f, 0, b"data").unwrap();
    st.write(g, 0, b"other").unwrap();
    st.sync(f).unwrap();
    st.cut(Unsynced::Dropped);
    assert_eq!(read(&st, "a/b/f").as_deref(), Some(&b"data"[..]));
    assert_eq!(st.resolve("a/b/g"), None, "only the synced file's name was made durable");
}

#[test]
fn a_synced_directory_keeps_new_files_empty() {
    let mut st = state();
    let d = mkdir(&mut st, ROOT, "d");
    let f = mkfile(&mut st, d, "f");
    st.write(f, 0, b"unsynced").unwrap();
    st.sync(d).unwrap();
    st.cut(Unsynced::Dropped);
    assert_eq!(read(&st, "d/f").as_deref(), Some(&b""[..]), "the name is durable, the content is not");
}

#[test]
fn a_rename_needs_a_sync() {
    let mut st = state();
    let f = mkfile(&mut st, ROOT, "tmp");
    st.write(f, 0, b"v1").unwrap();
    st.sync(f).unwrap();
    st.rename(ROOT, os("tmp"), ROOT, os("final"), false).unwrap();
    let report = st.cut(Unsynced::Dropped);
    assert_eq!(read(&st, "tmp").as_deref(), Some(&b"v1"[..]), "the rename was not synced");
    assert_eq!(st.resolve("final"), None);
    assert_eq!((report.names_dropped, report.names_restored), (1, 1));

    st.rename(ROOT, os("tmp"), ROOT, os("final"), false).unwrap();
    st.sync(ROOT).unwrap();
    st.cut(Unsynced::Dropped);
    assert_eq!(read(&st, "final").as_deref(), Some(&b"v1"[..]), "fsyncdir made it durable");
    assert_eq!(st.resolve("tmp"), None);

    let f = st.resolve("final").unwrap();
    st.rename(ROOT, os("final"), ROOT, os("again"), false).unwrap();
    st.sync(f).unwrap();
    st.cut(Unsynced::Dropped);
    assert_eq!(st.resolve("again"), Some(f), "fsync of the file made its new name durable");
    assert_eq!(st.resolve("final"), None, "and retired the old one");
}

#[test]
fn a_rename_across_directories_is_atomic() {
    let mut st = state();
    let a = mkdir(&mut st, ROOT, "a");
    let b = mkdir(&mut st, ROOT, "b");
    let f = mkfile(&mut st, a, "f");
    st.sync(f).unwrap();
    st.sync(ROOT).unwrap();
    st.sync(b).unwrap();
    // Syncing only the source directory still keeps the file, at its new place.
    st.rename(a, os("f"), b, os("g"), false).unwrap();
    st.sync(a).unwrap();
    st.cut(Unsynced::Dropped);
    assert_eq!((st.resolve("a/f"), st.resolve("b/g")), (None, Some(f)));
    // Syncing only the target directory retires the source name.
    st.rename(b, os("g"), a, os("h"), false).unwrap();
    st.sync(a).unwrap();
    st.cut(Unsynced::Dropped);
    assert_eq!((st.resolve("b/g"), st.resolve("a/h")), (None, Some(f)));
}

#[test]
fn a_rename_over_a_file_replaces_it_durably_only_when_synced() {
    let mut st = state();
    let old = mkfile(&mut st, ROOT, "db");
    st.write(old, 0, b"old").unwrap();
    st.sync(old).unwrap();
    let new = mkfile(&mut st, ROOT, "db.tmp");
    st.write(new, 0, b"new").unwrap();
    st.sync(new).unwrap();
    st.rename(ROOT, os("db.tmp"), ROOT, os("db"), false).unwrap();
    st.cut(Unsynced::Dropped);
    assert_eq!(read(&st, "db").as_deref(), Some(&b"old"[..]));
    assert_eq!(read(&st, "db.tmp").as_deref(), Some(&b"new"[..]));

    st.rename(ROOT, os("db.tmp"), ROOT, os("db"), false).unwrap();
    st.sync(ROOT).unwrap();
    st.cut(Unsynced::Dropped);
    assert_eq!(read(&st, "db").as_deref(), Some(&b"new"[..]));
    assert_eq!(st.resolve("db.tmp"), None);
}

#[test]
fn rename_flags_and_errors() {
    let mut st = state();
    let d = mkdir(&mut st, ROOT, "d");
    mkfile(&mut st, ROOT, "f");
    mkfile(&mut st, ROOT, "g");
    mkfile(&mut st, d, "inner");
    assert_eq!(st.rename(ROOT, os("f"), ROOT, os("g"), true), Err(Errno::EEXIST));
    assert_eq!(st.rename(ROOT, os("f"), ROOT, os("d"), false), Err(Errno::EISDIR));
    assert_eq!(st.rename(ROOT, os("d"), ROOT, os("f"), false), Err(Errno::ENOTDIR));
    assert_eq!(st.rename(ROOT, os("d"), d, os("x"), false), Err(Errno::EINVAL));
    assert_eq!(st.rename(ROOT, os("nope"), ROOT, os("x"), false), Err(Errno::ENOENT));
    let e = mkdir(&mut st, ROOT, "e");
    assert_eq!(st.rename(ROOT, os("e"), ROOT, os("d"), false), Err(Errno::ENOTEMPTY));
    st.rename(ROOT, os("d"), ROOT, os("e"), false).unwrap();
    assert_eq!(st.resolve("e"), Some(d));
    assert!(st.resolve("e/inner").is_some());
    assert!(st.attr(e).is_err(), "the replaced empty directory is gone");
}

#[test]
fn an_unlink_is_undone_unless_the_directory_was_synced() {
    let mut st = state();
    let f = mkfile(&mut st, ROOT, "f");
    st.write(f, 0, b"x").unwrap();
    st.sync(f).unwrap();
    st.unlink(ROOT, os("f")).unwrap();
    let report = st.cut(Unsynced::Dropped);
    assert_eq!(read(&st, "f").as_deref(), Some(&b"x"[..]));
    assert_eq!(report.names_restored, 1);

    st.unlink(ROOT, os("f")).unwrap();
    st.sync(ROOT).unwrap();
    st.cut(Unsynced::Dropped);
    assert_eq!(st.resolve("f"), None);
    assert!(st.attr(f).is_err(), "nothing refers to it any more");
}

#[test]
fn unlinked_open_files_are_served_until_released() {
    let mut st = state();
    let f = mkfile(&mut st, ROOT, "f");
    let fh = st.open(f).unwrap();
    st.unlink(ROOT, os("f")).unwrap();
    st.write(f, 0, b"still here").unwrap();
    assert_eq!(st.content(f), b"still here");
    assert_eq!(st.attr(f).unwrap().nlink, 0);
    st.release(fh);
    assert!(st.attr(f).is_err());
}

#[test]
fn rmdir_and_directory_syncs() {
    let mut st = state();
    let d = mkdir(&mut st, ROOT, "d");
    mkfile(&mut st, d, "f");
    assert_eq!(st.rmdir(ROOT, os("d")), Err(Errno::ENOTEMPTY));
    assert_eq!(st.unlink(ROOT, os("d")), Err(Errno::EISDIR));
    st.sync(d).unwrap(); // makes d (through its ancestors) and d/f durable
    st.unlink(d, os("f")).unwrap();
    st.rmdir(ROOT, os("d")).unwrap();
    st.cut(Unsynced::Dropped);
    assert!(st.resolve("d/f").is_some(), "the unsynced rmdir and unlink are undone");
    st.unlink(d, os("f")).unwrap();
    st.rmdir(ROOT, os("d")).unwrap();
    st.sync(ROOT).unwrap();
    st.cut(Unsynced::Dropped);
    assert_eq!(st.resolve("d"), None);
}

#[test]
fn random_prefix_keeps_an_in_order_prefix_deterministically() {
    let build = || {
        let mut st = state();
        let mut files = Vec::new();
        for i in 0..16 {
            let f = mkfile(&mut st, ROOT, &format!("f{i}"));
            st.sync(f).unwrap();
            for w in 0u8..10 {
                // Each write appends its own number: a prefix of k writes reads 0, 1, .., k-1.
                st.write(f, u64::from(w), &[w]).unwrap();
            }
            files.push(f);
        }
        (st, files)
    };
    let contents = |seed| {
        let (mut st, files) = build();
        let report = st.cut(Unsynced::RandomPrefix { seed });
        let contents: Vec<Vec<u8>> = files.iter().map(|f| st.content(*f)).collect();
        let kept: usize = contents.iter().map(Vec::len).sum();
        assert_eq!(report.unsynced_writes_dropped, 16 * 10 - kept);
        contents
    };
    let first = contents(7);
    for c in &first {
        assert_eq!(*c, (0..c.len() as u8).collect::<Vec<u8>>(), "a prefix, in order");
    }
    assert_eq!(first, contents(7), "the same seed gives the same cut");
    let lengths: Vec<usize> = first.iter().map(Vec::len).collect();
    assert!(lengths.iter().any(|l| *l != lengths[0]), "the prefix is chosen per file: {lengths:?}");
    assert!((0..8).map(contents).any(|c| c != first), "other seeds give other cuts");
}

#[test]
fn freeze_makes_changes_fail_and_change_nothing() {
    let mut st = state();
    let f = mkfile(&mut st, ROOT, "f");
    st.write(f, 0, b"before").unwrap();
    st.frozen = true;
    assert_eq!(st.write(f, 0, b"after"), Err(Errno::EIO));
    assert_eq!(st.create(ROOT, os("g"), NewKind::File, 0o644, 0, 0).map(drop), Err(Errno::EIO));
    assert_eq!(st.create(ROOT, os("d"), NewKind::Dir, 0o755, 0, 0).map(drop), Err(Errno::EIO));
    assert_eq!(st.unlink(ROOT, os("f")), Err(Errno::EIO));
    assert_eq!(st.rename(ROOT, os("f"), ROOT, os("h"), false), Err(Errno::EIO));
    assert_eq!(st.setattr(f, SetAttr { size: Some(0), ..SetAttr::default() }).map(drop), Err(Errno::EIO));
    assert_eq!(st.fallocate(f, 0, 100, 0), Err(Errno::EIO));
    assert_eq!(st.sync(f), Err(Errno::EIO));
    assert_eq!(st.sync(ROOT), Err(Errno::EIO));
    assert_eq!(st.content(f), b"before", "reads go on");
    assert_eq!(st.stats.frozen_rejections, 9);
    st.cut(Unsynced::Dropped);
    assert!(!st.frozen, "the cut unfreezes");
    assert_eq!(st.resolve("f"), None, "the frozen fsync made nothing durable");
}

#[test]
fn failing_syncs_make_nothing_durable() {
    let mut st = state();
    let f = mkfile(&mut st, ROOT, "f");
    st.write(f, 0, b"durable").unwrap();
    st.sync(f).unwrap();
    st.fail_syncs = true;
    st.write(f, 0, b"DURABLE?").unwrap();
    let g = mkfile(&mut st, ROOT, "g");
    assert_eq!(st.sync(f), Err(Errno::EIO));
    assert_eq!(st.sync(g), Err(Errno::EIO));
    assert_eq!(st.sync(ROOT), Err(Errno::EIO));
    assert_eq!(st.stats.failed_syncs, 3);
    assert_eq!(st.stats.file_syncs, 1);
    st.cut(Unsynced::Dropped);
    assert_eq!(read(&st, "f").as_deref(), Some(&b"durable"[..]));
    assert_eq!(st.resolve("g"), None);
}

#[test]
fn readdir_lists_a_snapshot() {
    let mut st = state();
    let d = mkdir(&mut st, ROOT, "d");
    mkfile(&mut st, d, "a");
    mkfile(&mut st, d, "b");
    let fh = st.opendir(d).unwrap();
    mkfile(&mut st, d, "c");
    let names: Vec<_> = st.readdir(fh, 0).unwrap().iter().map(|e| e.2.to_string_lossy().into_owned()).collect();
    assert_eq!(names, [".", "..", "a", "b"]);
    assert_eq!(st.readdir(fh, 3).unwrap().len(), 1);
    assert_eq!(st.readdir(fh, 9).unwrap().len(), 0);
    st.release(fh);
    assert_eq!(st.readdir(fh, 0).map(drop), Err(Errno::EBADF));
    assert_eq!(st.attr(ROOT).unwrap().nlink, 3);
}
