//! Instance filters as people and URLs write them: the admin endpoint's query string and the
//! CLI's flags read through this one parser, so both accept and refuse the same things.

use std::time::Duration;

use serde::Deserialize;

use crate::message::Timestamp;
use crate::store::{InstanceCursor, InstanceQuery, StatusKind};

/// Which instances, as text: every field given must match; an empty one is not given.
///
/// ```
/// use saga_core::admin::FilterText;
/// use saga_core::message::Timestamp;
/// use saga_core::store::StatusKind;
///
/// let filter = FilterText { status: Some("failed".into()), older_than: Some("1h".into()), ..FilterText::default() };
/// let query = filter.query(Timestamp::now()).unwrap();
/// assert_eq!(query.status, Some(StatusKind::Failed));
/// assert!(query.updated_before.is_some());
/// let bad = FilterText { older_than: Some("soon".into()), ..FilterText::default() };
/// assert!(bad.query(Timestamp::now()).unwrap_err().to_string().contains("not a duration"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FilterText {
    /// The saga's name.
    pub saga: Option<String>,
    /// `running`, `compensating`, `completed`, `compensated`, `failed` or `cancelled`.
    pub status: Option<String>,
    /// Unchanged for longer than this: `90s`, `15m`, `1h 30m`, `2days`.
    pub older_than: Option<String>,
    /// The cursor a previous page ended with (`status:id`).
    pub after: Option<String>,
}

/// A filter that does not parse, saying which part and what it takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadFilter(String);

impl FilterText {
    /// Whether no filter is given (the cursor aside): a bulk action refuses to act on everything.
    pub fn is_empty(&self) -> bool {
        [&self.saga, &self.status, &self.older_than].iter().all(|f| given(f).is_none())
    }

    /// The query, with ages counted back from `now`.
    pub fn query(&self, now: Timestamp) -> Result<InstanceQuery, BadFilter> {
        let mut query = InstanceQuery::default();
        if let Some(saga) = given(&self.saga) {
            query = query.saga(saga);
        }
        if let Some(status) = given(&self.status) {
            query = query.status(status.parse::<StatusKind>().map_err(|e| BadFilter(e.to_string()))?);
        }
        if let Some(age) = given(&self.older_than) {
            let age: Duration = humantime::parse_duration(age)
                .map_err(|e| BadFilter(format!("older than {age:?} is not a duration such as 90s, 15m or 2h: {e}")))?;
            query = query.updated_before(now.minus(age));
        }
        if let Some(after) = given(&self.after) {
            query = query.after(Some(after.parse::<InstanceCursor>().map_err(|e| BadFilter(e.to_string()))?));
        }
        Ok(query)
    }
}

fn given(field: &Option<String>) -> Option<&str> {
    field.as_deref().filter(|s| !s.is_empty())
}
