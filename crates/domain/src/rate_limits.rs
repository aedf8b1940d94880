//! Rate-limit counters shared by every node: one row per limited key holding the current
//! window and how many requests all nodes have counted in it. Nodes count locally and add
//! their counts here in batches (see the API crate's limiter).

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use crate::error::{DomainError, DomainResult};

/// Adds `delta` to `key`'s count in the window starting at `window_start` (a newer window
/// replaces an older one) and returns the total all nodes have counted in that window.
pub async fn add(
    db: &DatabaseConnection,
    key: &str,
    window_start: DateTime<Utc>,
    delta: i64,
) -> DomainResult<i64> {
    let backend = db.get_database_backend();
    // One statement, atomic on both databases: insert, or add to the current window, or start
    // the newer window. An older window (a node behind) only reads.
    let greatest = match backend {
        sea_orm::DbBackend::Postgres => "GREATEST",
        _ => "MAX",
    };
    let sql = format!(
        "INSERT INTO rate_limits (key, window_start, count) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO UPDATE SET \
           count = CASE WHEN rate_limits.window_start = excluded.window_start \
                        THEN rate_limits.count + excluded.count \
                        WHEN rate_limits.window_start < excluded.window_start THEN excluded.count \
                        ELSE rate_limits.count END, \
           window_start = {greatest}(rate_limits.window_start, excluded.window_start) \
         RETURNING count, window_start"
    );
    let _turn = crate::db::write_turn(db).await?;
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [key.into(), window_start.into(), delta.into()],
        ))
        .await?
        .ok_or_else(|| DomainError::Internal("rate-limit upsert returned no row".into()))?;
    let count: i64 = row.try_get("", "count")?;
    let stored: DateTime<Utc> = row.try_get("", "window_start")?;
    // A node that is behind sees a newer window's count as nothing of its own window.
    Ok(if stored == window_start { count } else { 0 })
}

/// Deletes windows that ended before `before`.
pub async fn prune(db: &DatabaseConnection, before: DateTime<Utc>) -> DomainResult<u64> {
    let backend = db.get_database_backend();
    let res = db
        .execute_raw(Statement::from_sql_and_values(
            backend,
            "DELETE FROM rate_limits WHERE window_start < $1",
            [before.into()],
        ))
        .await?;
    Ok(res.rows_affected())
}
