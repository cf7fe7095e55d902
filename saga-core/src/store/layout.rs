//! The key layout shared by every ordered key-value engine.
//!
//! One keyspace, one leading byte per record kind, big-endian numbers so that byte order is
//! numeric order. Everything the hot path asks for is a point read or a short range read:
//!
//! | prefix | key | value |
//! | --- | --- | --- |
//! | `m` | name | metadata (`m format` = format version, u32 BE; `m finished-indexed`: empty, see `r`) |
//! | `i` | instance id | version (u64 BE) ++ record |
//! | `i` | instance id, `h`, version (u64 BE) | history entry |
//! | `i` | consumer id, `x`, message id | when it was written (u64 BE ms, wall clock; empty if written before retention existed): the inbox (a saga's consumer id is its instance id) |
//! | `s` | status tag, instance id | empty: the status index |
//! | `o` | sequence (u64 BE) | envelope: the outbox, in publication order |
//! | `p` | sequence (u64 BE) | reason, time, envelope: outbox entries the relay parked |
//! | `t` | due (u64 BE), instance id, timer id | timer: the due-time index |
//! | `e` | scope length (u16 BE), scope, key | version (u64 BE) ++ value: participant records |
//! | `q` | subscription length (u16 BE), subscription, sequence (u64 BE) | envelope: the local bus's durable queues |
//! | `d` | sequence (u64 BE) | subscription, reason, time, envelope: messages dead-lettered from those queues |
//! | `r` | saga length (u16 BE), saga, finished at (u64 BE), instance id | empty: finished instances by age, for retention |
//! | `y` | instance id | tombstone: what retention left of a deleted instance |
//! | `z` | until (u64 BE), instance id | empty: the tombstones' expiry index |
//! | `w` | sequence (u64 BE), chunk (u32 BE) | chunk count (u32 BE) ++ a chunk of a batch's encoded writes while they are applied (sled's write-ahead record) |
//!
//! An instance's record, history and inbox share the prefix `i` + id, so a transition's writes
//! land in one region of the tree instead of three random ones: with more instances than the
//! cache holds, that is one page to fetch per transition instead of three.
//!
//! Versions sit in front of instance and entity values so that the optimistic check of a
//! commit reads eight bytes and decodes nothing.

use serde::{Serialize, de::DeserializeOwned};
use uuid::Uuid;

use super::{StatusKind, StoreError, TimerKey};
use crate::message::Timestamp;

pub(crate) const META_FORMAT: &[u8] = b"mformat";
/// Present once every finished instance is in the `r` index (those that finished before the
/// index existed were added at an open).
pub(crate) const META_FINISHED_INDEXED: &[u8] = b"mfinished-indexed";
pub(crate) const INSTANCE: u8 = b'i';
pub(crate) const STATUS: u8 = b's';
const INBOX_TAG: u8 = b'x';
pub(crate) const OUTBOX: u8 = b'o';
pub(crate) const PARKED: u8 = b'p';
pub(crate) const TIMER: u8 = b't';
const HISTORY_TAG: u8 = b'h';
pub(crate) const ENTITY: u8 = b'e';
pub(crate) const WRITE_AHEAD: u8 = b'w';
pub(crate) const QUEUE: u8 = b'q';
pub(crate) const DEAD: u8 = b'd';
pub(crate) const FINISHED: u8 = b'r';
pub(crate) const TOMBSTONE: u8 = b'y';
pub(crate) const TOMBSTONE_EXPIRY: u8 = b'z';

pub(crate) fn instance(id: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(INSTANCE);
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn finished_prefix(saga: &str) -> Vec<u8> {
    scoped_prefix(FINISHED, saga)
}

/// The first key of `saga`'s finished instances at `at` (those before it sort first).
pub(crate) fn finished_at(saga: &str, at: Timestamp) -> Vec<u8> {
    let mut k = finished_prefix(saga);
    k.extend_from_slice(&at.0.to_be_bytes());
    k
}

pub(crate) fn finished(saga: &str, at: Timestamp, id: Uuid) -> Vec<u8> {
    let mut k = finished_at(saga, at);
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn tombstone(id: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(TOMBSTONE);
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn tombstone_expiry(until: Timestamp, id: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.push(TOMBSTONE_EXPIRY);
    k.extend_from_slice(&until.0.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn status(kind: StatusKind, id: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.push(STATUS);
    k.push(kind.tag());
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn status_prefix(kind: StatusKind) -> Vec<u8> {
    vec![STATUS, kind.tag()]
}

pub(crate) fn inbox(consumer: Uuid, message_id: Uuid) -> Vec<u8> {
    let mut k = inbox_prefix(consumer);
    k.extend_from_slice(message_id.as_bytes());
    k
}

pub(crate) fn inbox_prefix(consumer: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(34);
    k.push(INSTANCE);
    k.extend_from_slice(consumer.as_bytes());
    k.push(INBOX_TAG);
    k
}

/// The first key after `key` (every key that extends it included).
pub(crate) fn just_after(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
}

pub(crate) fn outbox(seq: u64) -> Vec<u8> {
    sequenced(OUTBOX, seq)
}

pub(crate) fn parked(seq: u64) -> Vec<u8> {
    sequenced(PARKED, seq)
}

fn sequenced(prefix: u8, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(prefix);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The first key of a sequenced range after `after` (or the range's start).
pub(crate) fn sequenced_from(prefix: u8, after: Option<u64>) -> Vec<u8> {
    match after.and_then(|s| s.checked_add(1)) {
        Some(next) => sequenced(prefix, next),
        None if after.is_some() => vec![prefix + 1],
        None => vec![prefix],
    }
}

pub(crate) fn write_ahead(seq: u64, chunk: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(WRITE_AHEAD);
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

pub(crate) fn timer(key: &TimerKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(41);
    k.push(TIMER);
    k.extend_from_slice(&key.due.0.to_be_bytes());
    k.extend_from_slice(key.instance_id.as_bytes());
    k.extend_from_slice(key.timer_id.as_bytes());
    k
}

/// The first timer key strictly after every timer due at `due`.
pub(crate) fn timers_after_due(due: Timestamp) -> Vec<u8> {
    match due.0.checked_add(1) {
        Some(next) => {
            let mut k = vec![TIMER];
            k.extend_from_slice(&next.to_be_bytes());
            k
        }
        None => vec![TIMER + 1],
    }
}

pub(crate) fn history(id: Uuid, version: u64) -> Vec<u8> {
    let mut k = history_prefix(id);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

pub(crate) fn history_prefix(id: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(26);
    k.push(INSTANCE);
    k.extend_from_slice(id.as_bytes());
    k.push(HISTORY_TAG);
    k
}

pub(crate) fn entity_prefix(scope: &str) -> Vec<u8> {
    scoped_prefix(ENTITY, scope)
}

/// `tag`, the scope's length and the scope: no scope's prefix is a prefix of another's.
fn scoped_prefix(tag: u8, scope: &str) -> Vec<u8> {
    let len = u16::try_from(scope.len()).unwrap_or(u16::MAX);
    let mut k = Vec::with_capacity(3 + scope.len());
    k.push(tag);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(&scope.as_bytes()[..usize::from(len)]);
    k
}

pub(crate) fn entity(scope: &str, key: &str) -> Vec<u8> {
    let mut k = entity_prefix(scope);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(crate) fn queue_prefix(subscription: &str) -> Vec<u8> {
    scoped_prefix(QUEUE, subscription)
}

pub(crate) fn queued(subscription: &str, seq: u64) -> Vec<u8> {
    let mut k = queue_prefix(subscription);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The length of the queue prefix a queued message's key starts with.
pub(crate) fn queue_prefix_len(what: &'static str, key: &[u8]) -> Result<usize, StoreError> {
    key.get(1..3)
        .map(|b| 3 + usize::from(u16::from_be_bytes([b[0], b[1]])))
        .filter(|len| key.len() >= *len)
        .ok_or_else(|| StoreError::Corrupt { what, key: hex(key), reason: "key too short".into() })
}

pub(crate) fn dead(seq: u64) -> Vec<u8> {
    sequenced(DEAD, seq)
}

/// The smallest key greater than every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Encode { what, reason: e.to_string() })
}

pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt { what, key: hex(key), reason: e.to_string() })
}

/// Prepends the version to an encoded value.
pub(crate) fn versioned(version: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + body.len());
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Splits a versioned value.
pub(crate) fn split_versioned<'a>(
    what: &'static str,
    key: &[u8],
    value: &'a [u8],
) -> Result<(u64, &'a [u8]), StoreError> {
    match value.split_first_chunk::<8>() {
        Some((v, rest)) => Ok((u64::from_be_bytes(*v), rest)),
        None => Err(StoreError::Corrupt {
            what,
            key: hex(key),
            reason: format!("value of {} bytes has no version", value.len()),
        }),
    }
}

/// Reads a 16-byte id at `at` in a key.
pub(crate) fn uuid_at(what: &'static str, key: &[u8], at: usize) -> Result<Uuid, StoreError> {
    key.get(at..at + 16).and_then(|b| Uuid::from_slice(b).ok()).ok_or_else(|| StoreError::Corrupt {
        what,
        key: hex(key),
        reason: "key too short".into(),
    })
}

/// Reads a big-endian u64 at `at` in a key.
pub(crate) fn u64_at(what: &'static str, key: &[u8], at: usize) -> Result<u64, StoreError> {
    key.get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt { what, key: hex(key), reason: "key too short".into() })
}
