//! Contact imports: an uploaded NDJSON or CSV file becomes a job that a worker applies in
//! chunks. Each chunk and the job's progress are written in one transaction, so after a
//! crash the job resumes where its last committed chunk ended; the file is emptied once done.

use chrono::{DateTime, Duration, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit::Actor;
use crate::contacts::{BatchItem, ItemOutcome, SuppressionGate, upsert_batch_in};
use crate::db;
use crate::entities::import_job;
use crate::error::{DomainError, DomainResult};
use crate::ids::TenantId;
use crate::tenancy::Tenant;
use crate::vault::Vault;

/// Associated data of a sealed uploaded file (it holds many people's data until imported).
pub(crate) const PAYLOAD: &str = "import_jobs.payload";

/// An uploaded file as stored until it is imported: sealed.
pub(crate) fn sealed_payload(vault: &Vault, payload: &str) -> String {
    vault.seal_system(PAYLOAD, payload)
}

/// At most this many row errors are kept on a job.
const MAX_ERRORS: usize = 1000;

#[derive(Clone, Debug)]
pub struct Job {
    pub id: Uuid,
    pub format: String,
    pub status: String,
    pub total: i64,
    pub processed: i64,
    pub created: i64,
    pub updated: i64,
    pub failed: i64,
    /// `[{"row": n, "code": "..."}]` (no values).
    pub errors: Value,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<import_job::Model> for Job {
    fn from(m: import_job::Model) -> Self {
        Job {
            id: m.id,
            format: m.format,
            status: m.status,
            total: m.total,
            processed: m.processed,
            created: m.created,
            updated: m.updated,
            failed: m.failed,
            errors: serde_json::from_str(&m.errors).unwrap_or(json!([])),
            created_at: m.created_at,
            finished_at: m.finished_at,
        }
    }
}

// The vault and actor travel with every write; grouping them would only hide that.
#[allow(clippy::too_many_arguments)]
pub async fn create_job(
    db: &DatabaseConnection,
    vault: &Vault,
    tenant: &Tenant,
    actor: &Actor,
    format: &str,
    total: i64,
    payload: String,
    now: DateTime<Utc>,
) -> DomainResult<Job> {
    let id = Uuid::now_v7();
    let txn = db::begin_write(db).await?;
    import_job::Entity::insert(import_job::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant.id().as_uuid()),
        actor_id: Set(actor.actor_id),
        format: Set(format.into()),
        status: Set(if total == 0 { "done" } else { "queued" }.into()),
        total: Set(total),
        processed: Set(0),
        created: Set(0),
        updated: Set(0),
        failed: Set(0),
        errors: Set("[]".into()),
        payload: Set(if total == 0 {
            String::new()
        } else {
            sealed_payload(vault, &payload)
        }),
        locked_until: Set(None),
        created_at: Set(now),
        finished_at: Set((total == 0).then_some(now)),
    })
    .exec_without_returning(&txn)
    .await?;
    let job = get_job(&txn, tenant, id).await?;
    txn.commit().await?;
    Ok(job)
}

pub async fn get_job(db: &impl ConnectionTrait, tenant: &Tenant, id: Uuid) -> DomainResult<Job> {
    import_job::Entity::find_by_id(id)
        .filter(import_job::Column::TenantId.eq(tenant.id().as_uuid()))
        .one(db)
        .await?
        .map(Job::from)
        .ok_or(DomainError::NotFound("import"))
}

/// A job claimed by a worker for a lease.
pub struct ClaimedJob {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub actor_id: Option<Uuid>,
    pub format: String,
    pub processed: i64,
    pub payload: String,
}

pub async fn claim_job(
    db: &DatabaseConnection,
    vault: &Vault,
    now: DateTime<Utc>,
    lease: Duration,
) -> DomainResult<Option<ClaimedJob>> {
    let txn = db::begin_write(db).await?;
    let row = import_job::Entity::find()
        .filter(import_job::Column::Status.is_in(["queued", "running"]))
        .filter(
            sea_orm::Condition::any()
                .add(import_job::Column::LockedUntil.is_null())
                .add(import_job::Column::LockedUntil.lt(now)),
        )
        .order_by_asc(import_job::Column::Id)
        .limit(1)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .one(&txn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    import_job::Entity::update_many()
        .col_expr(import_job::Column::LockedUntil, Expr::value(now + lease))
        .col_expr(import_job::Column::Status, Expr::value("running"))
        .filter(import_job::Column::Id.eq(row.id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(Some(ClaimedJob {
        id: row.id,
        tenant_id: TenantId::from_uuid(row.tenant_id),
        actor_id: row.actor_id,
        format: row.format,
        processed: row.processed,
        payload: vault.open_system(PAYLOAD, &row.payload)?,
    }))
}

/// Applies one chunk: `items` (valid rows, with their row numbers) and `invalid` rows (row
/// number, code), then records the progress — all in one transaction. `lease` extends the
/// claim; `finished` completes the job and drops the file.
#[allow(clippy::too_many_arguments)]
pub async fn apply_chunk(
    db: &DatabaseConnection,
    job: &ClaimedJob,
    vault: &Vault,
    items: Vec<(i64, BatchItem)>,
    invalid: Vec<(i64, String)>,
    processed_to: i64,
    finished: bool,
    lease: Duration,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let tenant = Tenant::scoped(job.tenant_id);
    let actor = Actor {
        actor_id: job.actor_id,
        kind: "import",
        request_id: Some(format!("import:{}", job.id)),
    };
    let gate = SuppressionGate {
        vault,
        override_reason: None,
    };
    let txn = db::begin_write(db).await?;
    let current = import_job::Entity::find_by_id(job.id)
        .one(&txn)
        .await?
        .ok_or(DomainError::NotFound("import"))?;
    if current.processed != job.processed {
        // Another worker moved the job on after our lease ran out: leave it to them.
        return Err(DomainError::PreconditionFailed);
    }
    let (rows, batch): (Vec<i64>, Vec<BatchItem>) = items.into_iter().unzip();
    let outcomes = upsert_batch_in(&txn, &tenant, batch, &gate, &actor, now).await?;
    let mut errors: Vec<Value> = serde_json::from_str(&current.errors).unwrap_or_default();
    let (mut created, mut updated, mut failed) = (0i64, 0i64, invalid.len() as i64);
    for (row, code) in invalid {
        errors.push(json!({"row": row, "code": code}));
    }
    for (row, outcome) in rows.into_iter().zip(outcomes) {
        match outcome {
            ItemOutcome::Created(_) => created += 1,
            ItemOutcome::Updated(_) => updated += 1,
            ItemOutcome::Failed(e) => {
                failed += 1;
                let code = match e {
                    DomainError::Conflict { code, .. } => code.to_owned(),
                    DomainError::NotFound(kind) => format!("{kind}_not_found"),
                    DomainError::Invalid(fe) => fe
                        .first()
                        .map(|f| f.code.clone())
                        .unwrap_or_else(|| "validation_failed".into()),
                    _ => "failed".into(),
                };
                errors.push(json!({"row": row, "code": code}));
            }
        }
    }
    errors.sort_by_key(|e| e["row"].as_i64().unwrap_or(0));
    errors.truncate(MAX_ERRORS);
    let mut q = import_job::Entity::update_many()
        .col_expr(import_job::Column::Processed, Expr::value(processed_to))
        .col_expr(
            import_job::Column::Created,
            Expr::value(current.created + created),
        )
        .col_expr(
            import_job::Column::Updated,
            Expr::value(current.updated + updated),
        )
        .col_expr(
            import_job::Column::Failed,
            Expr::value(current.failed + failed),
        )
        .col_expr(
            import_job::Column::Errors,
            Expr::value(Value::Array(errors).to_string()),
        );
    q = if finished {
        q.col_expr(import_job::Column::Status, Expr::value("done"))
            .col_expr(import_job::Column::Payload, Expr::value(""))
            .col_expr(import_job::Column::FinishedAt, Expr::value(now))
            .col_expr(
                import_job::Column::LockedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
    } else {
        q.col_expr(import_job::Column::LockedUntil, Expr::value(now + lease))
    };
    q.filter(import_job::Column::Id.eq(job.id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}
