//! The baselines each configuration is measured against, run in the same process right after it.
//!
//! - **raw sled**: sled opened with the store's own configuration, doing the same number of
//!   commits as the configuration did, each with the same number of reads, writes and deletes
//!   of the same key and value sizes (the commit shapes are recorded from the real engine on a
//!   [`ShapeKv`]), applied atomically the way the store does it (a write-ahead record, then
//!   single-key operations, under one lock), with the same flush pattern: none, a flush per
//!   commit on one thread, or a flusher thread that groups exactly as the store's does
//!   (`max_batch` waiters or `max_delay` after the first). No engine, no bus, no encoding: the
//!   durable path's limit.
//! - **tokio channel hops**: the same number of messages as the in-memory configuration put on
//!   its bus, each one an mpsc hop between tasks, with the same number of sagas in flight: the
//!   in-memory path's limit.
//! - **raw lapin**: the same number of persistent messages, published with a confirm each (up
//!   to 512 unconfirmed, as the outbox relay does), consumed and acked one by one from durable
//!   queues (prefetch 64, as the bus does): the broker path's limit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sagaflow::store::{Batch, Durable, KeyValue, MemoryKv, OrderedKv, Rejection, StoreError, Write, leading_version};
use serde::{Deserialize, Serialize};

/// The shape of one applied batch: (key prefix, key length) of each check and delete, and
/// (prefix, key length, value length) of each put.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Shape {
    pub checks: Vec<(u8, u16)>,
    pub puts: Vec<(u8, u16, u32)>,
    pub deletes: Vec<(u8, u16)>,
}

impl Shape {
    pub fn bytes(&self) -> u64 {
        self.puts.iter().map(|&(_, k, v)| u64::from(k) + u64::from(v)).sum::<u64>()
            + self.deletes.iter().map(|&(_, k)| u64::from(k)).sum::<u64>()
    }
}

/// A [`MemoryKv`] that records the shape of every batch it applies.
#[derive(Default)]
pub struct ShapeKv {
    inner: MemoryKv,
    shapes: Arc<Mutex<Vec<Shape>>>,
}

impl ShapeKv {
    pub fn shapes(&self) -> Arc<Mutex<Vec<Shape>>> {
        self.shapes.clone()
    }
}

impl OrderedKv for ShapeKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.scan(from, to, limit)
    }
    fn last_key(&self, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.last_key(from, to)
    }
    fn apply(&self, batch: Batch) -> Result<Result<(), Rejection>, StoreError> {
        let mut shape = Shape::default();
        let _ = batch.check(|k| {
            shape.checks.push((k.first().copied().unwrap_or(0), k.len() as u16));
            self.inner.get(k).map(|v| v.map(|v| leading_version(&v)))
        })?;
        for w in batch.writes() {
            match w {
                Write::Put(k, v) => shape.puts.push((k.first().copied().unwrap_or(0), k.len() as u16, v.len() as u32)),
                Write::Delete(k) => shape.deletes.push((k.first().copied().unwrap_or(0), k.len() as u16)),
            }
        }
        let verdict = self.inner.apply(batch)?;
        // The format marker written when the store opens is not a commit.
        let marker = shape.puts.iter().any(|p| p.0 == b'm');
        if verdict.is_ok() && !marker && !(shape.puts.is_empty() && shape.deletes.is_empty()) {
            self.shapes.lock().unwrap_or_else(|e| e.into_inner()).push(shape);
        }
        Ok(verdict)
    }
    fn remove(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        self.inner.remove(keys)
    }
    fn durable(&self) -> Durable {
        self.inner.durable()
    }
    fn flush(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        self.inner.flush()
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

/// How the raw sled baseline flushes.
#[derive(Debug, Clone, Copy)]
pub enum FlushPattern {
    None,
    PerCommit,
    Group { max_delay: Duration, max_batch: usize },
}

/// Keys shaped like the store's: `prefix` then a counter (hashed for the prefixes whose keys
/// are random ids, big-endian for the ordered ones: outbox sequence, timer due time).
struct KeyMaker {
    thread: u64,
    counter: u64,
    recent: HashMap<u8, VecDeque<Vec<u8>>>,
}

impl KeyMaker {
    fn new(thread: u64, deleted: &HashSet<u8>) -> Self {
        KeyMaker { thread, counter: 0, recent: deleted.iter().map(|p| (*p, VecDeque::new())).collect() }
    }

    fn fresh(&mut self, prefix: u8, len: u16) -> Vec<u8> {
        self.counter += 1;
        let n = (self.thread << 56) | self.counter;
        let body = match prefix {
            b'o' | b't' | b'w' => n.to_be_bytes(),
            _ => n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes(),
        };
        let mut k = Vec::with_capacity(usize::from(len));
        k.push(prefix);
        k.extend_from_slice(&body);
        k.resize(usize::from(len).max(1), 0);
        k
    }

    fn put(&mut self, prefix: u8, len: u16) -> Vec<u8> {
        let k = self.fresh(prefix, len);
        if let Some(q) = self.recent.get_mut(&prefix) {
            q.push_back(k.clone());
        }
        k
    }

    /// Deletes hit a key written earlier (a status index entry, a timer), as the store's do.
    fn delete(&mut self, prefix: u8, len: u16) -> Vec<u8> {
        match self.recent.get_mut(&prefix).and_then(VecDeque::pop_front) {
            Some(k) => k,
            None => self.fresh(prefix, len),
        }
    }
}

/// The store's sled configuration (`saga-core/src/store/sled.rs`).
pub fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .cache_capacity(64 * 1024 * 1024)
        .flush_every_ms(Some(1000))
        .mode(sled::Mode::HighThroughput)
}

/// Applies `commits` commits shaped like `shapes` (cycled) under `pattern`; returns the
/// time until the last one is applied and, where flushed, durable.
pub fn raw_sled(dir: &Path, shapes: &[Shape], commits: u64, pattern: FlushPattern) -> Duration {
    assert!(!shapes.is_empty(), "no commit shapes were recorded");
    let db = sled_config(dir).open().expect("open the raw sled baseline's database");
    let deleted: HashSet<u8> = shapes.iter().flat_map(|s| s.deletes.iter().map(|d| d.0)).collect();
    let max_value = shapes.iter().flat_map(|s| s.puts.iter().map(|p| p.2)).max().unwrap_or(0) as usize;
    let value = vec![0x5au8; max_value];
    let record_value = vec![0x5au8; 64 * 1024];
    let lock = Mutex::new(());
    let log = std::fs::File::open(dir.join("db")).expect("open the raw sled baseline's log file");
    let appliers = match pattern {
        FlushPattern::PerCommit => 1,
        _ => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let next = AtomicU64::new(0);
    let (waiters, flusher_rx) = mpsc::channel::<()>();
    let started = Instant::now();
    std::thread::scope(|scope| {
        let flusher = match pattern {
            FlushPattern::Group { max_delay, max_batch } => {
                let db = db.clone();
                let log = &log;
                Some(scope.spawn(move || group_flusher(&db, log, &flusher_rx, max_delay, max_batch)))
            }
            _ => None,
        };
        for t in 0..appliers {
            let (db, next, deleted, value, waiters) = (&db, &next, &deleted, &value, waiters.clone());
            let (record_value, lock, log) = (&record_value, &lock, &log);
            scope.spawn(move || {
                let mut keys = KeyMaker::new(t as u64, deleted);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= commits {
                        break;
                    }
                    let shape = &shapes[(i % shapes.len() as u64) as usize];
                    let reads: Vec<Vec<u8>> = shape.checks.iter().map(|&(p, l)| keys.fresh(p, l)).collect();
                    let mut writes: Vec<(Vec<u8>, Option<usize>)> =
                        shape.deletes.iter().map(|&(p, l)| (keys.delete(p, l), None)).collect();
                    writes.extend(shape.puts.iter().map(|&(p, l, v)| (keys.put(p, l), Some(v as usize))));
                    // As the store applies a commit (`saga-core/src/store/sled.rs`): under one
                    // lock, the checks' reads, a write-ahead record holding the writes, the
                    // writes as single-key operations, the record's removal.
                    let record_len: usize = writes.iter().map(|(k, v)| k.len() + v.unwrap_or(0) + 4).sum();
                    let record = keys.fresh(b'w', 13);
                    let serial = lock.lock().unwrap_or_else(|e| e.into_inner());
                    for k in &reads {
                        db.get(k.as_slice()).expect("a raw sled read");
                    }
                    db.insert(record.as_slice(), &record_value[..record_len.min(record_value.len())])
                        .expect("a raw sled write-ahead record");
                    for (k, v) in &writes {
                        match v {
                            Some(len) => db.insert(k.as_slice(), &value[..*len]).map(drop),
                            None => db.remove(k.as_slice()).map(drop),
                        }
                        .expect("a raw sled write");
                    }
                    db.remove(record.as_slice()).expect("a raw sled removal");
                    drop(serial);
                    match pattern {
                        FlushPattern::PerCommit => sync(db, log),
                        FlushPattern::Group { .. } => {
                            let _ = waiters.send(());
                        }
                        FlushPattern::None => {}
                    }
                }
            });
        }
        drop(waiters);
        if let Some(f) = flusher {
            f.join().expect("the baseline's flusher thread");
        }
    });
    started.elapsed()
}

fn group_flusher(db: &sled::Db, log: &std::fs::File, rx: &mpsc::Receiver<()>, max_delay: Duration, max_batch: usize) {
    while rx.recv().is_ok() {
        // As the engine's flusher: what arrived during the last flush joins at once.
        let mut n = 1 + rx.try_iter().take(max_batch.saturating_sub(1)).count();
        let deadline = Instant::now() + max_delay;
        while n < max_batch {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(()) => n += 1,
                Err(_) => break,
            }
        }
        sync(db, log);
    }
}

/// A flush as the store makes one: sled's flush, then an fdatasync of its log file.
fn sync(db: &sled::Db, log: &std::fs::File) {
    db.flush().expect("a raw sled flush");
    log.sync_data().expect("a raw sled log sync");
}

/// Moves `sagas × hops` messages through tokio mpsc channels between two tasks (the saga and
/// its participants), `in_flight` sagas at a time; returns the elapsed time.
pub async fn channel_hops(sagas: u64, hops: u64, in_flight: usize) -> Duration {
    struct Token {
        left: u64,
    }
    let (to_saga, mut saga_rx) = tokio::sync::mpsc::unbounded_channel::<Token>();
    let (to_participant, mut participant_rx) = tokio::sync::mpsc::unbounded_channel::<Token>();
    let (to_driver, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Token>();
    let back_to_saga = to_saga.clone();
    let saga = tokio::spawn(async move {
        while let Some(mut t) = saga_rx.recv().await {
            if t.left == 0 {
                let _ = to_driver.send(t);
            } else {
                t.left -= 1;
                let _ = to_participant.send(t);
            }
        }
    });
    let participant = tokio::spawn(async move {
        while let Some(mut t) = participant_rx.recv().await {
            t.left = t.left.saturating_sub(1);
            let _ = back_to_saga.send(t);
        }
    });
    let started = Instant::now();
    let mut injected = 0;
    // The hop from the driver to the saga is the first message (the start event).
    while injected < sagas && injected < in_flight as u64 {
        let _ = to_saga.send(Token { left: hops.saturating_sub(1) });
        injected += 1;
    }
    let mut done = 0;
    while done < sagas {
        if done_rx.recv().await.is_none() {
            break;
        }
        done += 1;
        if injected < sagas {
            let _ = to_saga.send(Token { left: hops.saturating_sub(1) });
            injected += 1;
        }
    }
    let elapsed = started.elapsed();
    drop(to_saga);
    saga.abort();
    participant.abort();
    elapsed
}

/// Publishes `messages` persistent messages of `payload` bytes with a confirm each (at most 512
/// unconfirmed) spread over `queues` durable queues, and consumes and acks them all; returns
/// the time until the last ack.
#[cfg(feature = "rabbitmq")]
pub async fn lapin_round_trips(url: &str, messages: u64, payload: usize, queues: usize) -> Duration {
    use futures::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

    let ns = format!("sagaflow-bench-raw-{}", std::process::id());
    let connection = Connection::connect(url, ConnectionProperties::default()).await.expect("connect to RabbitMQ");
    let publisher = connection.create_channel().await.expect("a RabbitMQ channel");
    publisher.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm mode");
    publisher
        .exchange_declare(
            ns.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
            FieldTable::default(),
        )
        .await
        .expect("declare the baseline's exchange");
    let names: Vec<String> = (0..queues).map(|q| format!("{ns}.q{q}")).collect();
    let acked = Arc::new(AtomicU64::new(0));
    let all_acked = Arc::new(tokio::sync::Notify::new());
    let mut consumers = Vec::new();
    for name in &names {
        publisher
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .expect("declare a baseline queue");
        publisher
            .queue_bind(
                name.as_str().into(),
                ns.as_str().into(),
                name.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind a baseline queue");
        let channel = connection.create_channel().await.expect("a RabbitMQ channel");
        channel.basic_qos(64, BasicQosOptions::default()).await.expect("prefetch");
        let mut consumer = channel
            .basic_consume(name.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .expect("consume a baseline queue");
        let (acked, all_acked) = (acked.clone(), all_acked.clone());
        consumers.push(tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
                if acked.fetch_add(1, Ordering::SeqCst) + 1 == messages {
                    all_acked.notify_one();
                }
            }
        }));
    }
    let body = vec![b'x'; payload];
    let started = Instant::now();
    futures::stream::iter(0..messages)
        .for_each_concurrent(512, |i| {
            let (publisher, body, ns, names) = (&publisher, &body, &ns, &names);
            async move {
                // Properties like the bus's: persistent, an id, a type and a few headers.
                let mut headers = FieldTable::default();
                headers.insert("sagaflow-name".into(), AMQPValue::LongString("catalog.reserve-stock".into()));
                headers.insert("sagaflow-attempt".into(), AMQPValue::LongLongInt(1));
                headers.insert("sagaflow-created-at".into(), AMQPValue::LongLongInt(i as i64));
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(uuid::Uuid::from_u128(u128::from(i)).to_string().into())
                    .with_content_type("application/json".into())
                    .with_headers(headers);
                let key = &names[(i % names.len() as u64) as usize];
                let confirm = publisher
                    .basic_publish(
                        ns.as_str().into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        body,
                        properties,
                    )
                    .await
                    .expect("publish")
                    .await
                    .expect("publisher confirm");
                assert!(confirm.is_ack(), "the broker refused a baseline message");
            }
        })
        .await;
    let notified = all_acked.notified();
    if acked.load(Ordering::SeqCst) < messages {
        notified.await;
    }
    let elapsed = started.elapsed();
    for c in consumers {
        c.abort();
    }
    for name in &names {
        let _ = publisher.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await;
    }
    let _ = publisher.exchange_delete(ns.as_str().into(), ExchangeDeleteOptions::default()).await;
    let _ = connection.close(200, "baseline done".into()).await;
    elapsed
}
