//! Periodic jobs across nodes: every node ticks, one runs. A node claims a run by moving the
//! job's `next_run_at` forward with a conditional update; the others see nothing to do.

use chrono::{DateTime, Duration, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use crate::db;
use crate::entities::job_run;
use crate::error::DomainResult;

/// True when this node should run `name` now; the next run is then due after `every`.
pub async fn claim_run(
    db: &DatabaseConnection,
    name: &str,
    every: Duration,
    now: DateTime<Utc>,
) -> DomainResult<bool> {
    let txn = db::begin_write(db).await?;
    let claimed = job_run::Entity::update_many()
        .col_expr(job_run::Column::NextRunAt, Expr::value(now + every))
        .filter(job_run::Column::Name.eq(name))
        .filter(job_run::Column::NextRunAt.lte(now))
        .exec(&txn)
        .await?
        .rows_affected
        == 1;
    if claimed {
        txn.commit().await?;
        return Ok(true);
    }
    let exists = job_run::Entity::find_by_id(name.to_owned())
        .one(&txn)
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    let inserted = job_run::Entity::insert(job_run::ActiveModel {
        name: Set(name.to_owned()),
        next_run_at: Set(now + every),
    })
    .exec_without_returning(&txn)
    .await;
    match inserted {
        Ok(_) => {
            txn.commit().await?;
            Ok(true)
        }
        // Another node created it first: that node runs.
        Err(e)
            if matches!(
                e.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}
