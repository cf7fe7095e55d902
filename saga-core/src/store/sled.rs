//! The embedded default: sled, with group commit.
//!
//! sled applies a transaction in memory and makes it durable at the next flush (an fsync of
//! its log). One flush per commit caps a disk at a few hundred commits per second, while the
//! disk can sync thousands of times per second and sled can apply tens of thousands of
//! transactions: so under [`Durability::Group`] commits queue up for a shared flush on a
//! dedicated thread, and each commit's [`Durable`] resolves when a flush that started after
//! it finishes. Acks wait for that, so grouping trades a little latency for throughput and
//! never safety. sled's own background flush is set to once a second as a backstop for the
//! writes that need no durability promise (outbox removal: a re-publish is deduplicated).
//!
//! A commit is **not** a sled transaction. sled 0.34 runs every transaction (and every
//! `apply_batch`) under a global write lock that stops all other reads and writes, and it
//! seals and writes its current log buffer before and after it: two buffer writes and thread
//! wake-ups per commit, which made a transaction cost about 110 µs here against a few µs for a
//! single insert. A commit is instead applied as a redo log on top of single-key writes:
//!
//! 1. under one writer lock, check the batch against the current values;
//! 2. insert the batch's writes, encoded, as a write-ahead record (`w` + sequence + chunk):
//!    chunks of at most 32 KiB, so that a record normally stays in sled's log itself;
//! 3. apply the writes in order as plain inserts and removes;
//! 4. remove the record.
//!
//! This holds because sled recovers a **prefix** of its log (it cuts recovery at the first
//! torn or missing buffer, so no write survives a crash unless everything logged before it
//! does), and the writer lock keeps each commit's steps together in the log. After a crash
//! either the record's removal survived, and with it every write before it, or the whole
//! record survived and [`KvStore`] has it replayed on open (after checking the format marker)
//! before anything reads the store; a record with chunks missing was cut before its first
//! write and is discarded. So a commit's writes survive together or not at all, and replay is
//! idempotent because the writes are puts and removes applied in their order. A batch of one
//! write needs no record.
//!
//! A commit that fails or panics after its checks may be half applied in memory: the store
//! then refuses every later write until it is reopened (which replays the record), because a
//! later commit over the half-applied one would be overwritten by that replay.
//!
//! A failed sync is fatal in the same way ("fsyncgate"): after `fsync` or `fdatasync` reports
//! an error, the kernel may already have dropped the dirty pages it could not write, so a
//! later sync that succeeds proves nothing about them. The store latches broken
//! ([`StoreError::Broken`]): the failed flush's waiters and every later commit and durability
//! request get the error, and only reopening the store (which reads what really is on disk)
//! clears it. Nothing is ever acked on the strength of a retried sync.
//!
//! Readers outside the lock may see another unit's commit half applied. The engine's own
//! reads are safe: an instance is read only by its lane, and a participant record it saves is
//! version-checked under the lock. A participant handler that loads a record it does not save
//! can see such a half state (sled transactions excluded it).
//!
//! sled's `flush` writes its log buffers with `sync_file_range`, which neither flushes the
//! disk's write cache nor the file's metadata; the flush thread therefore also syncs every blob
//! file sled wrote since the last flush (sled puts a log message larger than about 128 KiB,
//! such as a big value or a whole leaf rewritten after ten updates, in a blob file that it
//! never syncs) and then `fdatasync`s sled's log file, before it answers any waiter. Blobs go
//! first: a log message that survives a power cut must not point to a blob that did not.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt};
use tokio::sync::oneshot;

use super::kv::{Batch, KeyValue, KvStore, OrderedKv, Rejection, Write, leading_version};
use super::layout as key;
use super::{Durability, Durable, StoreError};

/// The embedded, durable store (sled), the default for a single process.
///
/// ```
/// use saga_core::store::{Durability, SledOptions, SledStore};
/// let dir = tempfile::tempdir().unwrap();
/// let store = SledStore::open_with(dir.path(), SledOptions::default().durability(Durability::Immediate)).unwrap();
/// # drop(store);
/// ```
pub type SledStore = KvStore<SledKv>;

impl KvStore<SledKv> {
    /// Opens (or creates) a store in `path` with the default options: group commit, 64 MiB cache.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SledOptions::default())
    }

    /// Opens (or creates) a store in `path`.
    pub fn open_with(path: impl AsRef<Path>, options: SledOptions) -> Result<Self, StoreError> {
        KvStore::on(SledKv::open(path.as_ref(), options)?)
    }
}

/// How a [`SledStore`] is opened.
#[derive(Debug, Clone)]
pub struct SledOptions {
    durability: Durability,
    cache_bytes: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions { durability: Durability::default(), cache_bytes: 64 * 1024 * 1024 }
    }
}

impl SledOptions {
    /// When commits count as durable (default: group commit).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// sled's page cache size in bytes (default 64 MiB; sled's own default is 1 GiB).
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }
}

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// sled as an [`OrderedKv`] engine.
pub struct SledKv {
    db: sled::Db,
    path: PathBuf,
    durability: Durability,
    group: Option<Flusher>,
    writer: Mutex<Writer>,
    log: Arc<LogFile>,
    broken: Broken,
}

/// What the writer lock guards: see the module docs.
struct Writer {
    next_record: u64,
}

/// Set once when a commit failed half applied or a sync failed: from then on nothing is
/// written or acked until a reopen (see the module docs).
#[derive(Clone, Default)]
struct Broken(Arc<OnceLock<String>>);

impl Broken {
    fn set(&self, reason: String) -> StoreError {
        let reason = self.0.get_or_init(|| reason).clone();
        StoreError::Broken { reason }
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.0.get() {
            Some(reason) => Err(StoreError::Broken { reason: reason.clone() }),
            None => Ok(()),
        }
    }
}

/// The largest chunk of a write-ahead record: well under sled's blob threshold (a quarter of
/// its 512 KiB segments), so that every chunk stays in sled's log.
const RECORD_CHUNK: usize = 32 * 1024;

struct Flusher {
    waiters: Option<mpsc::Sender<Waiter>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SledKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledKv").field("path", &self.path).field("durability", &self.durability).finish()
    }
}

/// How long opening waits for the directory lock of a store that is being closed: sled's
/// background flusher lets go of it only when it next wakes (its flush interval, one second
/// here), later on a loaded machine.
const LOCK_WAIT: Duration = Duration::from_secs(5);

fn is_lock_contention(e: &sled::Error) -> bool {
    // sled reports a held lock as an `Other` I/O error whose text carries the OS error.
    let sled::Error::Io(io) = e else { return false };
    let text = io.to_string();
    io.kind() == std::io::ErrorKind::WouldBlock
        || (text.starts_with("could not acquire lock") && text.contains("WouldBlock"))
}

/// Opens sled. It locks the directory, and a store closed a moment ago in this process may
/// still be held by sled's I/O threads finishing their last writes: wait briefly for them.
fn open_waiting_for_lock(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(e) if is_lock_contention(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            opened => return opened,
        }
    }
}

/// sled's errors as the store's: damaged data is `Corrupt` (the message that met it is
/// dead-lettered; retrying cannot help), a bug sled reports stops the store, the rest is I/O
/// that may work again.
fn io(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { at, .. } => StoreError::Corrupt {
            what: "sled page",
            key: at.map_or_else(|| "unknown".to_owned(), |at| format!("{at:?}")),
            reason: "sled found corrupted data".into(),
        },
        sled::Error::ReportableBug(bug) => StoreError::Broken { reason: format!("sled reported a bug: {bug}") },
        other => StoreError::Io(other.to_string()),
    }
}

impl SledKv {
    fn open(path: &Path, options: SledOptions) -> Result<Self, StoreError> {
        Self::open_syncing(path, options, LogFile::open)
    }

    /// Opens with `log` giving the files to sync (tests give one whose syncs fail).
    fn open_syncing(
        path: &Path,
        options: SledOptions,
        log: impl FnOnce(&Path) -> Result<LogFile, StoreError>,
    ) -> Result<Self, StoreError> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_bytes)
            .flush_every_ms(Some(1000))
            .mode(sled::Mode::HighThroughput);
        let db = open_waiting_for_lock(&config).map_err(|e| {
            let reason = if is_lock_contention(&e) {
                format!("{e}: another process, or a runtime of this one that is still running, uses it")
            } else {
                e.to_string()
            };
            StoreError::Open { path: path.display().to_string(), reason }
        })?;
        // Every flush goes through one thread: sled 0.34 can deadlock when flushes run
        // concurrently (`flush_async` from many tasks), and a blocking flush must not hold a
        // runtime worker. `Immediate` is the degenerate group of one.
        let (max_delay, max_batch) = match options.durability {
            Durability::Group { max_delay, max_batch } => (max_delay, max_batch),
            Durability::Immediate => (Duration::ZERO, 1),
            Durability::None => (Duration::ZERO, usize::MAX),
        };
        let log = Arc::new(log(path)?);
        let broken = Broken::default();
        let group = Some(Flusher::start(db.clone(), log.clone(), broken.clone(), max_delay, max_batch)?);
        let writer = Mutex::new(Writer { next_record: 1 });
        Ok(SledKv { db, path: path.to_path_buf(), durability: options.durability, group, writer, log, broken })
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        // A commit panicked while it held the lock, maybe half applied: treat it as a failed
        // one (see the module docs).
        self.writer.lock().unwrap_or_else(|poisoned| {
            self.broken.set(format!("a commit panicked while it was being applied in {}", self.path.display()));
            poisoned.into_inner()
        })
    }

    /// Check passed: writes the record, the writes, and removes the record.
    fn apply_with_record(&self, seq: u64, writes: &[Write]) -> Result<(), StoreError> {
        let encoded = key::encode("write-ahead record", &writes)?;
        let chunks: Vec<&[u8]> = encoded.chunks(RECORD_CHUNK).collect();
        let count = u32::try_from(chunks.len())
            .map_err(|_| StoreError::Encode { what: "write-ahead record", reason: "too many chunks".into() })?;
        let keys: Vec<Vec<u8>> = (0..count).map(|i| key::write_ahead(seq, i)).collect();
        for (k, chunk) in keys.iter().zip(&chunks) {
            let mut value = Vec::with_capacity(4 + chunk.len());
            value.extend_from_slice(&count.to_be_bytes());
            value.extend_from_slice(chunk);
            self.db.insert(k.as_slice(), value).map_err(io)?;
        }
        let (first, rest) = writes.split_at(1);
        apply_writes(&self.db, first).map_err(io)?;
        crate::crash_points::crash_point!("sled.during_apply");
        apply_writes(&self.db, rest).map_err(io)?;
        for k in &keys {
            self.db.remove(k.as_slice()).map_err(io)?;
        }
        Ok(())
    }
}

/// sled's files, synced after each of sled's flushes (see the module docs): its log, and
/// the blob files it writes for log messages too large for the log.
struct LogFile {
    dir: PathBuf,
    log: std::fs::File,
    /// Blob files already synced (sled writes each once); pruned to what still exists.
    synced_blobs: Mutex<std::collections::HashSet<std::ffi::OsString>>,
}

fn sync_error(what: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("cannot sync {}: {e}", what.display()))
}

impl LogFile {
    fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("db");
        let open_error = |e: std::io::Error| StoreError::Open {
            path: dir.display().to_string(),
            reason: format!("cannot open sled's log file {} to sync it: {e}", path.display()),
        };
        let log = std::fs::File::open(&path).map_err(open_error)?;
        // sled writes its `conf` file once, when it creates the store, and never syncs it: a
        // power cut could leave it named but torn (its checksum missing), and sled then refuses
        // to open. Sync it, then the directory entries of a new store (the log file, `conf`, the
        // blob folder), so that they survive too.
        std::fs::File::open(dir.join("conf")).and_then(|conf| conf.sync_data()).map_err(open_error)?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(open_error)?;
        Ok(LogFile { dir: dir.to_path_buf(), log, synced_blobs: Mutex::new(Default::default()) })
    }

    /// sled's flush, then a real sync of what it wrote: the blobs first, so that no synced log
    /// message points to a blob that is not.
    fn flush(&self, db: &sled::Db) -> Result<(), StoreError> {
        db.flush().map_err(io)?;
        self.sync_new_blobs()?;
        self.log.sync_data().map_err(|e| sync_error(&self.dir.join("db"), e))
    }

    /// sled writes a log message larger than a quarter of a segment (a big value, or a whole
    /// leaf rewritten after ten updates) to a blob file and never syncs it; the message in the
    /// log only points to it.
    fn sync_new_blobs(&self) -> Result<(), StoreError> {
        let blobs = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(sync_error(&blobs, e)),
        };
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|e| e.into_inner());
        let mut present = std::collections::HashSet::new();
        let mut new_files = false;
        for entry in entries {
            let name = entry.map_err(|e| sync_error(&blobs, e))?.file_name();
            if !synced.contains(&name) {
                let path = blobs.join(&name);
                match std::fs::File::open(&path).and_then(|f| f.sync_data()) {
                    Ok(()) => new_files = true,
                    // sled removed it meanwhile: it was no longer needed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(sync_error(&path, e)),
                }
            }
            present.insert(name);
        }
        if new_files {
            std::fs::File::open(&blobs).and_then(|d| d.sync_all()).map_err(|e| sync_error(&blobs, e))?;
        }
        *synced = present;
        Ok(())
    }
}

/// Applies writes in order as single-key operations.
fn apply_writes(db: &sled::Db, writes: &[Write]) -> sled::Result<()> {
    for write in writes {
        match write {
            Write::Put(k, v) => db.insert(k.as_slice(), v.as_slice())?,
            Write::Delete(k) => db.remove(k.as_slice())?,
        };
    }
    Ok(())
}

/// Re-applies the commits a crash left with their write-ahead record (see the module docs),
/// oldest first, discards records cut before their first write, and makes that durable.
fn replay_write_ahead(db: &sled::Db, log: &LogFile) -> Result<(), StoreError> {
    let prefix = [key::WRITE_AHEAD];
    let mut records: Vec<(u64, Vec<KeyValue>)> = Vec::new();
    for entry in db.range(prefix.to_vec()..key::prefix_end(&prefix)) {
        let (k, v) = entry.map_err(io)?;
        let seq = key::u64_at("write-ahead record", &k, 1)?;
        match records.last_mut() {
            Some((last, chunks)) if *last == seq => chunks.push((k.to_vec(), v.to_vec())),
            _ => records.push((seq, vec![(k.to_vec(), v.to_vec())])),
        }
    }
    let (mut replayed, mut discarded) = (0usize, 0usize);
    for (_, chunks) in &records {
        match reassemble(chunks)? {
            Some(writes) => {
                apply_writes(db, &writes).map_err(io)?;
                replayed += 1;
            }
            None => discarded += 1,
        }
        for (k, _) in chunks {
            db.remove(k.as_slice()).map_err(io)?;
        }
    }
    if !records.is_empty() {
        log.flush(db)?;
        tracing::info!(replayed, discarded, "finished the commits that a crash interrupted");
    }
    Ok(())
}

/// A record's writes from its chunks (in key order), or `None` if chunks are missing.
fn reassemble(chunks: &[KeyValue]) -> Result<Option<Vec<Write>>, StoreError> {
    let corrupt = |k: &[u8], reason: &str| StoreError::Corrupt {
        what: "write-ahead record",
        key: key::hex(k),
        reason: reason.to_owned(),
    };
    let mut bytes = Vec::new();
    for (i, (k, v)) in chunks.iter().enumerate() {
        let index = match k.get(9..).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
            Some(b) => u32::from_be_bytes(b),
            None => return Err(corrupt(k, "a key that is not sequence and chunk")),
        };
        let (count, body) = match v.split_first_chunk::<4>() {
            Some((count, body)) => (u32::from_be_bytes(*count), body),
            None => return Err(corrupt(k, "a chunk without its count")),
        };
        if u32::try_from(i).ok() != Some(index) || count as usize != chunks.len() {
            // The crash came while the chunks were being written: nothing was applied yet.
            return Ok(None);
        }
        bytes.extend_from_slice(body);
    }
    let Some((first, _)) = chunks.first() else { return Ok(None) };
    match postcard::take_from_bytes::<Vec<Write>>(&bytes) {
        Ok((writes, [])) => Ok(Some(writes)),
        Ok(_) => Err(corrupt(first, "bytes left over after the writes")),
        Err(e) => Err(corrupt(first, &e.to_string())),
    }
}

impl Flusher {
    fn start(
        db: sled::Db,
        log: Arc<LogFile>,
        broken: Broken,
        max_delay: Duration,
        max_batch: usize,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let thread = std::thread::Builder::new()
            .name("sagaflow-flush".into())
            .spawn(move || group_commit_loop(&db, &log, &broken, &rx, max_delay, max_batch.max(1)))
            .map_err(|e| StoreError::Io(format!("cannot start the flush thread: {e}")))?;
        Ok(Flusher { waiters: Some(tx), thread: Some(thread) })
    }
}

/// Takes the waiters that queued up during the last flush, collects more until `max_batch` or
/// `max_delay` after the first, flushes once, and answers them all. Every waiter was registered
/// after its commit was applied, so the flush (which starts after the waiter was received)
/// covers that commit. A failed flush latches the store broken, and no later flush runs.
fn group_commit_loop(
    db: &sled::Db,
    log: &LogFile,
    broken: &Broken,
    rx: &mpsc::Receiver<Waiter>,
    max_delay: Duration,
    max_batch: usize,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        // The commits that arrived during the previous flush join at once.
        batch.extend(rx.try_iter().take(max_batch.saturating_sub(1)));
        let deadline = Instant::now() + max_delay;
        while batch.len() < max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let result = broken.check().and_then(|()| {
            log.flush(db).map_err(|e| {
                tracing::error!(error = %e, "a flush of the sled store failed; the store stops accepting writes until it is reopened");
                broken.set(format!("a flush failed ({e})"))
            })
        });
        crate::engine::metrics::commit_batch(batch.len());
        for w in batch {
            // The committer may have gone away (its runtime was dropped): nothing to tell.
            let _ = w.send(result.clone());
        }
    }
}

impl Drop for SledKv {
    fn drop(&mut self) {
        if let Some(group) = &mut self.group {
            group.waiters.take();
            if let Some(t) = group.thread.take() {
                // The thread ends once its channel is closed and its last flush is answered;
                // joining releases its handle on the database before the directory is reopened.
                let _ = t.join();
            }
        }
    }
}

impl OrderedKv for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        self.db.range(from..to).take(limit).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io)).collect()
    }

    fn last_key(&self, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.db.range(from..to).next_back() {
            Some(r) => Ok(Some(r.map_err(io)?.0.to_vec())),
            None => Ok(None),
        }
    }

    fn apply(&self, batch: Batch) -> Result<Result<(), Rejection>, StoreError> {
        let mut writer = self.writer();
        self.broken.check()?;
        let verdict = batch.check(|k| self.db.get(k).map(|v| v.map(|v| leading_version(&v)))).map_err(io)?;
        if let Err(rejection) = verdict {
            return Ok(Err(rejection));
        }
        let writes = batch.into_writes();
        if writes.len() <= 1 {
            // A single insert or remove is atomic on its own.
            apply_writes(&self.db, &writes).map_err(io)?;
            return Ok(Ok(()));
        }
        let seq = writer.next_record;
        writer.next_record += 1;
        if let Err(e) = self.apply_with_record(seq, &writes) {
            return Err(self.broken.set(format!("a commit failed half applied in {}: {e}", self.path.display())));
        }
        Ok(Ok(()))
    }

    fn recover(&self) -> Result<(), StoreError> {
        replay_write_ahead(&self.db, &self.log)
    }

    fn remove(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        // Not atomic, as the trait allows: single removes avoid sled's global batch lock. They
        // go on while the store is broken: a replay may put removed outbox entries back, and
        // they are published again and deduplicated.
        for k in keys {
            self.db.remove(k.as_slice()).map_err(io)?;
        }
        Ok(())
    }

    fn durable(&self) -> Durable {
        match self.durability {
            Durability::None => futures::future::ready(self.broken.check()).boxed(),
            Durability::Immediate | Durability::Group { .. } => self.flush(),
        }
    }

    fn flush(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        if let Err(e) = self.broken.check() {
            return futures::future::ready(Err(e)).boxed();
        }
        let stopped = || StoreError::Io("the flush thread has stopped".into());
        let (tx, rx) = oneshot::channel();
        let sent = self.group.as_ref().and_then(|g| g.waiters.as_ref()).is_some_and(|w| w.send(tx).is_ok());
        if !sent {
            return futures::future::ready(Err(stopped())).boxed();
        }
        async move { rx.await.unwrap_or_else(|_| Err(stopped())) }.boxed()
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn is_persistent(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(writes: &[(&[u8], &[u8])]) -> Batch {
        let mut batch = Batch::default();
        for (k, v) in writes {
            batch.put(k.to_vec(), v.to_vec());
        }
        batch
    }

    /// Writes a write-ahead record's chunks straight into sled, as `apply` would.
    fn write_record(db: &sled::Db, seq: u64, writes: &[Write], chunk_len: usize, keep_chunks: usize) {
        let encoded = key::encode("write-ahead record", &writes).unwrap();
        let chunks: Vec<&[u8]> = encoded.chunks(chunk_len).collect();
        for (i, chunk) in chunks.iter().enumerate().take(keep_chunks) {
            let mut value = (chunks.len() as u32).to_be_bytes().to_vec();
            value.extend_from_slice(chunk);
            db.insert(key::write_ahead(seq, i as u32), value).unwrap();
        }
    }

    /// sled itself on a store's directory, once the store dropped just before lets go of it.
    fn open_raw(path: &Path) -> sled::Db {
        open_waiting_for_lock(&sled::Config::new().path(path)).unwrap()
    }

    fn records(store: &SledStore) -> Vec<KeyValue> {
        store.engine().scan(&[key::WRITE_AHEAD], &[key::WRITE_AHEAD + 1], 100).unwrap()
    }

    /// What a crash in the middle of a commit leaves: the write-ahead record and only some of
    /// its writes.
    #[test]
    fn opening_completes_a_commit_that_a_crash_left_half_applied() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        let writes = vec![
            Write::Put(b"xa".to_vec(), b"1".to_vec()),
            Write::Delete(b"xb".to_vec()),
            Write::Put(b"xc".to_vec(), b"3".to_vec()),
        ];
        {
            let db = open_raw(dir.path());
            db.insert(b"xb", b"old").unwrap();
            write_record(&db, 7, &writes, 8, usize::MAX);
            apply_writes(&db, &writes[..1]).unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.engine().get(b"xa").unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.engine().get(b"xb").unwrap(), None);
        assert_eq!(store.engine().get(b"xc").unwrap(), Some(b"3".to_vec()));
        assert!(records(&store).is_empty(), "the replayed record is removed");
    }

    #[test]
    fn a_record_cut_before_its_first_write_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        let writes = vec![Write::Put(b"xa".to_vec(), b"1".to_vec()), Write::Put(b"xb".to_vec(), b"2".to_vec())];
        {
            let db = open_raw(dir.path());
            write_record(&db, 3, &writes, 4, 1);
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.engine().get(b"xa").unwrap(), None);
        assert!(records(&store).is_empty());
    }

    #[test]
    fn a_commit_larger_than_a_chunk_applies_and_leaves_no_record_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let big = vec![7u8; 3 * RECORD_CHUNK];
        store.engine().apply(batch(&[(b"xa", b"1"), (b"xb", &big)])).unwrap().unwrap();
        assert_eq!(store.engine().get(b"xb").unwrap(), Some(big));
        assert!(records(&store).is_empty());
    }

    #[test]
    fn after_a_commit_panicked_the_store_refuses_writes_until_it_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let kv = store.engine();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = kv.writer.lock();
            panic!("a commit panics half applied");
        }));
        let err = kv.apply(batch(&[(b"xa", b"1"), (b"xb", b"2")])).unwrap_err();
        assert!(matches!(err, StoreError::Broken { .. }), "{err}");
        assert!(err.to_string().contains("reopening the store"), "{err}");
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        store.engine().apply(batch(&[(b"xa", b"1"), (b"xb", b"2")])).unwrap().unwrap();
    }

    #[test]
    fn foreign_data_with_a_record_like_key_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_raw(dir.path());
            db.insert(b"wcount", &5u64.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a sagaflow store"), "{err}");
        let db = open_raw(dir.path());
        assert!(db.get(b"wcount").unwrap().is_some());
    }

    #[tokio::test]
    async fn a_value_over_sleds_blob_threshold_is_synced_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![9u8; 300 * 1024];
        {
            let store =
                SledStore::open_with(dir.path(), SledOptions::default().durability(Durability::Immediate)).unwrap();
            store.engine().apply(batch(&[(b"xa", b"1"), (b"xb", &big)])).unwrap().unwrap();
            store.engine().durable().await.unwrap();
            let synced = store.engine().log.synced_blobs.lock().unwrap().len();
            assert!(synced > 0, "sled wrote the value to a blob file, and the flush synced it");
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.engine().get(b"xb").unwrap(), Some(big));
    }

    /// A log file whose syncs fail (fdatasync on /dev/null is EINVAL), as a failing disk's would.
    fn failing_log(dir: &Path) -> Result<LogFile, StoreError> {
        let log = std::fs::File::open("/dev/null").map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(LogFile { dir: dir.to_path_buf(), log, synced_blobs: Mutex::new(Default::default()) })
    }

    #[tokio::test]
    async fn a_failed_sync_latches_the_store_broken_until_it_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        let options = SledOptions::default().durability(Durability::Immediate);
        let kv = SledKv::open_syncing(dir.path(), options.clone(), failing_log).unwrap();
        kv.apply(batch(&[(b"xa", b"1")])).unwrap().unwrap();
        let failed = kv.durable().await.unwrap_err();
        assert!(matches!(failed, StoreError::Broken { .. }), "{failed}");
        // Never success after a retry: later syncs, writes and barriers all refuse.
        assert!(matches!(kv.durable().await, Err(StoreError::Broken { .. })));
        assert!(matches!(kv.apply(batch(&[(b"xb", b"2")])), Err(StoreError::Broken { .. })));
        drop(kv);
        let reopened = SledStore::open_with(dir.path(), options).unwrap();
        reopened.engine().apply(batch(&[(b"xc", b"3")])).unwrap().unwrap();
        reopened.engine().durable().await.unwrap();
    }

    #[test]
    fn a_record_key_of_the_wrong_shape_is_corrupt() {
        let err = reassemble(&[(vec![key::WRITE_AHEAD, 0, 0, 0, 0, 0, 0, 0, 1], vec![0, 0, 0, 1])]).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_record_with_bytes_left_over_is_corrupt() {
        let writes = vec![Write::Put(b"xa".to_vec(), b"1".to_vec())];
        let mut value = 1u32.to_be_bytes().to_vec();
        value.extend_from_slice(&key::encode("write-ahead record", &writes).unwrap());
        value.push(0);
        let err = reassemble(&[(key::write_ahead(1, 0), value)]).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }
}
