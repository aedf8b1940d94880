//! Idempotency keys: the first response to a POST with an `Idempotency-Key` is stored (sealed
//! by the caller of this module) and returned again for the same key and request. Keys are
//! scoped to tenant and caller and expire. Rows are claimed with an insert, so on any number of
//! nodes only one request runs per key.

use chrono::{DateTime, Duration, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::entities::idempotency_key;
use crate::error::DomainResult;

/// Associated data of a stored body sealed with [`crate::vault::Vault::seal_system`] (it can
/// name a person, so it must not outlive an erasure in the clear).
pub const BODY: &str = "idempotency_keys.body_enc";

/// How long a finished key is kept.
pub const RETENTION: Duration = Duration::hours(24);
/// A request still "in flight" after this long was abandoned (its node died): another request
/// with the key may take over.
pub const ABANDONED_AFTER: Duration = Duration::seconds(120);

/// Who sent the request and with which key.
#[derive(Clone, Debug)]
pub struct Scope {
    pub tenant_id: Uuid,
    /// `user:<id>` or `client:<id>`.
    pub caller: String,
    pub key: String,
}

/// A stored response.
#[derive(Clone, Debug)]
pub struct Stored {
    pub status: u16,
    /// Response headers worth replaying (content type, location, etag), as JSON pairs.
    pub headers: String,
    /// Sealed body.
    pub body_enc: String,
}

/// What to do with a request that carries a key.
#[derive(Debug)]
pub enum Begin {
    /// This request runs; finish or abandon the key afterwards.
    Proceed,
    /// The same request already ran: return its response.
    Replay(Stored),
    /// The key was used with a different request.
    Mismatch,
    /// The first request with this key is still running.
    InFlight,
}

fn filter(scope: &Scope) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(idempotency_key::Column::TenantId.eq(scope.tenant_id))
        .add(idempotency_key::Column::Caller.eq(scope.caller.clone()))
        .add(idempotency_key::Column::Key.eq(scope.key.clone()))
}

/// Claims the key for this request, or says why not.
pub async fn begin(
    db: &DatabaseConnection,
    scope: &Scope,
    fingerprint: &str,
    now: DateTime<Utc>,
) -> DomainResult<Begin> {
    let row = idempotency_key::ActiveModel {
        tenant_id: Set(scope.tenant_id),
        caller: Set(scope.caller.clone()),
        key: Set(scope.key.clone()),
        fingerprint: Set(fingerprint.to_owned()),
        state: Set("in_flight".into()),
        status: Set(None),
        headers: Set(None),
        body_enc: Set(None),
        refs: Set(String::new()),
        created_at: Set(now),
        expires_at: Set(now + RETENTION),
    };
    let turn = crate::db::write_turn(db).await?;
    let inserted = idempotency_key::Entity::insert(row)
        .exec_without_returning(db)
        .await;
    drop(turn);
    match inserted {
        Ok(_) => return Ok(Begin::Proceed),
        Err(e)
            if matches!(
                e.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            ) => {}
        Err(e) => return Err(e.into()),
    }
    let Some(existing) = idempotency_key::Entity::find()
        .filter(filter(scope))
        .one(db)
        .await?
    else {
        // Finished and pruned between the two statements: the caller may retry.
        return Ok(Begin::InFlight);
    };
    if existing.expires_at <= now {
        // Expired but not pruned yet: take it over as a new key.
        return take_over(db, scope, fingerprint, &existing, now).await;
    }
    match (existing.state.as_str(), existing.status, &existing.body_enc) {
        ("done", Some(status), Some(body_enc)) => {
            if existing.fingerprint != fingerprint {
                return Ok(Begin::Mismatch);
            }
            Ok(Begin::Replay(Stored {
                status: u16::try_from(status).unwrap_or(500),
                headers: existing.headers.clone().unwrap_or_default(),
                body_enc: body_enc.clone(),
            }))
        }
        _ if existing.created_at <= now - ABANDONED_AFTER => {
            take_over(db, scope, fingerprint, &existing, now).await
        }
        // Still running: the caller retries, whatever its body (a different body is refused
        // once the first has finished).
        _ => Ok(Begin::InFlight),
    }
}

/// Restarts an expired or abandoned key for this request (`Proceed`), or answers `InFlight`
/// when another request did so first.
async fn take_over(
    db: &DatabaseConnection,
    scope: &Scope,
    fingerprint: &str,
    seen: &idempotency_key::Model,
    now: DateTime<Utc>,
) -> DomainResult<Begin> {
    let _turn = crate::db::write_turn(db).await?;
    let res = idempotency_key::Entity::update_many()
        .col_expr(
            idempotency_key::Column::Fingerprint,
            Expr::value(fingerprint),
        )
        .col_expr(idempotency_key::Column::State, Expr::value("in_flight"))
        .col_expr(
            idempotency_key::Column::Status,
            Expr::value(Option::<i32>::None),
        )
        .col_expr(
            idempotency_key::Column::Headers,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            idempotency_key::Column::BodyEnc,
            Expr::value(Option::<String>::None),
        )
        .col_expr(idempotency_key::Column::Refs, Expr::value(""))
        .col_expr(idempotency_key::Column::CreatedAt, Expr::value(now))
        .col_expr(
            idempotency_key::Column::ExpiresAt,
            Expr::value(now + RETENTION),
        )
        .filter(filter(scope))
        .filter(idempotency_key::Column::CreatedAt.eq(seen.created_at))
        .filter(idempotency_key::Column::State.eq(seen.state.clone()))
        .exec(db)
        .await?;
    Ok(if res.rows_affected == 1 {
        Begin::Proceed
    } else {
        Begin::InFlight
    })
}

/// Stores the response of the request that claimed the key. `refs` are the ids the response
/// names (an erasure deletes the stored responses that name the erased person).
pub async fn finish(
    db: &DatabaseConnection,
    scope: &Scope,
    stored: Stored,
    refs: &[Uuid],
) -> DomainResult<()> {
    let refs: Vec<String> = refs.iter().map(Uuid::to_string).collect();
    let _turn = crate::db::write_turn(db).await?;
    idempotency_key::Entity::update_many()
        .col_expr(idempotency_key::Column::State, Expr::value("done"))
        .col_expr(
            idempotency_key::Column::Status,
            Expr::value(i32::from(stored.status)),
        )
        .col_expr(
            idempotency_key::Column::Headers,
            Expr::value(stored.headers),
        )
        .col_expr(
            idempotency_key::Column::BodyEnc,
            Expr::value(stored.body_enc),
        )
        .col_expr(idempotency_key::Column::Refs, Expr::value(refs.join(" ")))
        .filter(filter(scope))
        .filter(idempotency_key::Column::State.eq("in_flight"))
        .exec(db)
        .await?;
    Ok(())
}

/// Releases the key without a stored response (the request failed in a way worth retrying).
pub async fn abandon(db: &DatabaseConnection, scope: &Scope) -> DomainResult<()> {
    let _turn = crate::db::write_turn(db).await?;
    idempotency_key::Entity::delete_many()
        .filter(filter(scope))
        .filter(idempotency_key::Column::State.eq("in_flight"))
        .exec(db)
        .await?;
    Ok(())
}

/// Deletes the stored responses that name `id` (part of an erasure).
pub async fn forget_references(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
    id: Uuid,
) -> DomainResult<u64> {
    Ok(idempotency_key::Entity::delete_many()
        .filter(idempotency_key::Column::TenantId.eq(tenant_id))
        .filter(idempotency_key::Column::Refs.contains(id.to_string()))
        .exec(db)
        .await?
        .rows_affected)
}

/// Deletes expired keys.
pub async fn prune(db: &DatabaseConnection, now: DateTime<Utc>) -> DomainResult<u64> {
    let _turn = crate::db::write_turn(db).await?;
    Ok(idempotency_key::Entity::delete_many()
        .filter(idempotency_key::Column::ExpiresAt.lte(now))
        .exec(db)
        .await?
        .rows_affected)
}
