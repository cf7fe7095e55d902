//! The operators' reads in SQL: listings and counts filtered on the `saga`, `status` and
//! `updated_at` columns, paged on `(status, id)` (the order of the status index), and the
//! one-time fill of those columns for rows written before schema version 5.

use sqlx::Row;
use uuid::Uuid;

use super::{PostgresStore, big, db, decode, limit, status_code};
use crate::store::{
    InstanceCount, InstanceCounts, InstanceCursor, InstanceListing, InstanceQuery, InstanceRecord, StatusKind,
    StoreError,
};

/// The filters of every query here, as `$1` to `$5`: saga, status, updated before, cursor.
const FILTERS: &str = "($1::text IS NULL OR saga = $1) AND ($2::smallint IS NULL OR status = $2) \
     AND ($3::bigint IS NULL OR updated_at < $3) AND ($4::smallint IS NULL OR (status, id) > ($4, $5))";

/// Rows filled per statement by [`PostgresStore::fill_instance_columns`].
const FILL_BATCH: i64 = 500;

fn status_of(code: i16) -> Option<StatusKind> {
    StatusKind::ALL.into_iter().find(|k| status_code(*k) == code)
}

/// `query`'s filters bound to `$1`..`$5` of `sql`.
fn filtered<'q>(
    sql: &'q str,
    query: &'q InstanceQuery,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(query.saga.as_deref())
        .bind(query.status.map(status_code))
        .bind(query.updated_before.map(|t| big(t.0)))
        .bind(query.after.map(|c| status_code(c.status)))
        .bind(query.after.map(|c| c.id))
}

impl PostgresStore {
    pub(super) async fn select_instances(
        &self,
        query: &InstanceQuery,
        limit: usize,
    ) -> Result<InstanceListing, StoreError> {
        if limit == 0 {
            return Ok(InstanceListing { records: Vec::new(), next: query.after });
        }
        let sql = format!("SELECT id, status, record FROM saga_instances WHERE {FILTERS} ORDER BY status, id LIMIT $6");
        let rows = filtered(&sql, query).bind(self::limit(limit)).fetch_all(&self.pool).await.map_err(db)?;
        let next = match rows.last() {
            Some(row) if rows.len() == limit => {
                let status = status_of(row.get(1)).ok_or_else(|| corrupt_status(row.get(0), row.get(1)))?;
                Some(InstanceCursor::new(status, row.get(0)))
            }
            _ => None,
        };
        let records = rows
            .iter()
            .map(|row| decode::<InstanceRecord>("instance", row.get::<Uuid, _>(0), row.get::<&[u8], _>(2)))
            .collect::<Result<_, _>>()?;
        Ok(InstanceListing { records, next })
    }

    pub(super) async fn count_by_saga_and_status(&self, query: &InstanceQuery) -> Result<InstanceCounts, StoreError> {
        let sql = format!("SELECT saga, status, count(*) FROM saga_instances WHERE {FILTERS} GROUP BY saga, status");
        let rows = filtered(&sql, query).fetch_all(&self.pool).await.map_err(db)?;
        let counts = rows
            .iter()
            .map(|row| {
                let code: i16 = row.get(1);
                let status = status_of(code).ok_or_else(|| corrupt_status(Uuid::nil(), code))?;
                let count: i64 = row.get(2);
                Ok(InstanceCount {
                    saga: row.get::<Option<String>, _>(0).unwrap_or_default(),
                    status,
                    count: u64::try_from(count).unwrap_or(0),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(InstanceCounts { counts, next: None })
    }

    /// Fills `saga` and `updated_at` of rows written before schema version 5 from their
    /// records, a batch per statement, and indexes those that finished for retention (no
    /// commit did: the index came with version 6); a no-op once every row has them.
    pub(super) async fn fill_instance_columns(&self) -> Result<(), StoreError> {
        loop {
            let rows = sqlx::query("SELECT id, record FROM saga_instances WHERE saga IS NULL LIMIT $1")
                .bind(FILL_BATCH)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
            if rows.is_empty() {
                return Ok(());
            }
            for row in &rows {
                let id: Uuid = row.get(0);
                let record: InstanceRecord = decode("instance", id, row.get::<&[u8], _>(1))?;
                // Before the column is filled: a fill interrupted between the two is done again.
                if record.status.kind().is_prunable() {
                    sqlx::query(
                        "INSERT INTO saga_finished (saga, finished_at, id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    )
                    .bind(&record.saga)
                    .bind(big(record.updated_at.0))
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(db)?;
                }
                sqlx::query("UPDATE saga_instances SET saga = $2, updated_at = $3 WHERE id = $1 AND saga IS NULL")
                    .bind(id)
                    .bind(&record.saga)
                    .bind(big(record.updated_at.0))
                    .execute(&self.pool)
                    .await
                    .map_err(db)?;
            }
        }
    }
}

fn corrupt_status(id: Uuid, code: i16) -> StoreError {
    StoreError::Corrupt { what: "instance status", key: id.to_string(), reason: format!("unknown status code {code}") }
}
