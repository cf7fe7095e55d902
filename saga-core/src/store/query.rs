//! Bounded reads for operators: instances by filter a page at a time, counts, history pages.
//!
//! Every read here is bounded twice: by the `limit` the caller gives and by how much of the
//! store one call may look at ([`SCAN_BUDGET`] index entries). A filter that matches little in
//! a large store returns a short (even empty) page *with* a cursor, and the caller asks again;
//! no call walks the whole store while the engine waits behind it. Pages are ordered by status
//! and then instance id on every store, so a cursor from one page picks up exactly where it
//! left off, and an instance that changes status between two pages is seen at most twice and
//! never skipped for good (it reappears under its new status's range, if that is still ahead).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{InstanceRecord, StatusKind};
use crate::message::Timestamp;

/// How many status-index entries one [`Store::list_instances`](super::Store::list_instances)
/// call looks at, matching or not.
pub const SCAN_BUDGET: usize = 4096;

/// Which instances a listing wants; every field that is set must match.
///
/// ```
/// use saga_core::store::{InstanceQuery, StatusKind};
/// let failed = InstanceQuery::default().saga("order-fulfilment").status(StatusKind::Failed);
/// assert_eq!(failed.status, Some(StatusKind::Failed));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InstanceQuery {
    /// The saga's name.
    pub saga: Option<String>,
    /// The status.
    pub status: Option<StatusKind>,
    /// Last changed strictly before this time (for "older than").
    pub updated_before: Option<Timestamp>,
    /// Resume after this cursor (from the previous page's [`InstanceListing::next`]).
    pub after: Option<InstanceCursor>,
}

impl InstanceQuery {
    /// Only instances of the saga `name`.
    pub fn saga(mut self, name: impl Into<String>) -> Self {
        self.saga = Some(name.into());
        self
    }

    /// Only instances with this status.
    pub fn status(mut self, status: StatusKind) -> Self {
        self.status = Some(status);
        self
    }

    /// Only instances last changed before `at`.
    pub fn updated_before(mut self, at: Timestamp) -> Self {
        self.updated_before = Some(at);
        self
    }

    /// The page after `cursor`.
    pub fn after(mut self, cursor: Option<InstanceCursor>) -> Self {
        self.after = cursor;
        self
    }

    /// Whether `record` passes the filters (the cursor aside).
    pub fn matches(&self, record: &InstanceRecord) -> bool {
        self.saga.as_ref().is_none_or(|s| *s == record.saga)
            && self.status.is_none_or(|s| s == record.status.kind())
            && self.updated_before.is_none_or(|t| record.updated_at < t)
    }

    /// The statuses to walk, in index order, from the cursor's on.
    pub(crate) fn statuses(&self) -> impl Iterator<Item = StatusKind> + '_ {
        StatusKind::ALL
            .into_iter()
            .filter(|s| self.status.is_none_or(|w| w == *s))
            .filter(|s| self.after.is_none_or(|c| s.tag() >= c.status.tag()))
    }
}

/// Where a listing stopped: the status and id of the last instance it looked at.
///
/// It prints as `status:id` (`failed:0192…`) and parses back, so it can travel in a URL; it
/// serializes as that string too, so the `next` of a JSON page is what `?after=` takes.
///
/// ```
/// use saga_core::store::{InstanceCursor, StatusKind};
/// let cursor = InstanceCursor::new(StatusKind::Failed, uuid::Uuid::nil());
/// assert_eq!(cursor.to_string().parse::<InstanceCursor>().unwrap(), cursor);
/// assert_eq!(serde_json::to_string(&cursor).unwrap(), format!("\"{cursor}\""));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceCursor {
    /// The status range the listing was in.
    pub status: StatusKind,
    /// The last id looked at in that range.
    pub id: Uuid,
}

impl Serialize for InstanceCursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for InstanceCursor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl InstanceCursor {
    /// A cursor after instance `id` of status `status`.
    pub fn new(status: StatusKind, id: Uuid) -> Self {
        InstanceCursor { status, id }
    }
}

impl fmt::Display for InstanceCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.status, self.id)
    }
}

/// A cursor that does not read as `status:id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a listing cursor: {0:?} (expected `status:id`, as a page's `next` prints)")]
pub struct BadCursor(pub String);

impl FromStr for InstanceCursor {
    type Err = BadCursor;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadCursor(s.to_owned());
        let (status, id) = s.split_once(':').ok_or_else(bad)?;
        Ok(InstanceCursor { status: status.parse().map_err(|_| bad())?, id: id.parse().map_err(|_| bad())? })
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceListing {
    /// The matching instances, in status then id order.
    pub records: Vec<InstanceRecord>,
    /// Where to go on from, or `None` when the listing reached the end.
    pub next: Option<InstanceCursor>,
}

/// How many instances of a saga have a status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceCount {
    /// The saga's name.
    pub saga: String,
    /// The status.
    pub status: StatusKind,
    /// How many.
    pub count: u64,
}

/// Counts from one bounded read of [`Store::count_instances`](super::Store::count_instances).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceCounts {
    /// By saga and status, in no particular order.
    pub counts: Vec<InstanceCount>,
    /// Where to go on from, or `None` when every instance was counted.
    pub next: Option<InstanceCursor>,
}
