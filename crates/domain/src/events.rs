//! Events: an outbox written in the same transaction as each change, so an event exists iff
//! its change committed. It is also the partner change feed: `seq` is assigned per tenant
//! under the tenant's write lock (the audit chain's), so it grows in commit order and a
//! reader that pages by `seq` neither skips nor repeats.
//!
//! Webhook deliveries are fanned out when the event is written; a worker delivers them
//! (at least once, retried with backoff, dead-lettered after a number of tries).

use chrono::{DateTime, Duration, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit::{self, Actor, Event as AuditEvent};
use crate::contacts::SubjectKey;
use crate::entities::{event, tenant, webhook_delivery, webhook_endpoint};
use crate::error::{DomainError, DomainResult};
use crate::ids::TenantId;
use crate::tenancy::{Tenant, TenantKind};
use crate::vault::{DataKey, Vault};
use crate::{conflict_on_unique, db};

/// Event types a webhook can subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "contact.created",
    "contact.updated",
    "contact.deleted",
    "contact.erased",
    "consent.granted",
    "consent.withdrawn",
    "sub_processor.changed",
    "breach.notified",
];

/// One event to write.
#[derive(Clone)]
pub struct NewEvent {
    pub event_type: &'static str,
    pub object_type: &'static str,
    pub object_id: Option<Uuid>,
    /// The contact the payload is about (its personal data is scrubbed on erasure).
    pub subject_contact_id: Option<Uuid>,
    pub payload: Value,
}

/// Writes an event and its webhook deliveries. Call inside the transaction of the change.
pub async fn emit(
    db: &impl ConnectionTrait,
    tenant_id: TenantId,
    e: NewEvent,
    now: DateTime<Utc>,
) -> DomainResult<Uuid> {
    let ids = emit_many(db, tenant_id, vec![e], now).await?;
    ids.into_iter()
        .next()
        .ok_or_else(|| DomainError::Internal("no event written".into()))
}

/// Writes events in order with their webhook deliveries, with one read of the feed's end and
/// one insert per table (bulk writes). Call inside the transaction of the changes.
pub async fn emit_many(
    db: &impl ConnectionTrait,
    tenant_id: TenantId,
    events: Vec<NewEvent>,
    now: DateTime<Utc>,
) -> DomainResult<Vec<Uuid>> {
    let lock = audit::lock_chain(db, tenant_id).await?;
    emit_locked(db, &lock, events, now).await
}

/// The tenant's last event number, and its active webhook endpoints: fixed statements, as
/// every write runs them (building them with sea-query cost more than running them on SQLite).
const LAST_SEQ_SQL: &str = "SELECT seq FROM events WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1";
const ACTIVE_ENDPOINTS_SQL: &str = "SELECT id, tenant_id, url, event_types, description, \
    secret_enc, active, created_at, updated_at FROM webhook_endpoints \
    WHERE tenant_id = $1 AND active = $2";

/// [`emit_many`] in a transaction that holds the tenant's chain lock already (it has just
/// written the changes' audit entries).
pub(crate) async fn emit_locked(
    db: &impl ConnectionTrait,
    lock: &audit::ChainLock,
    events: Vec<NewEvent>,
    now: DateTime<Utc>,
) -> DomainResult<Vec<Uuid>> {
    let events = events.into_iter().map(|e| (e, now)).collect();
    emit_locked_each(db, lock, events).await
}

/// [`emit_locked`] for events of several requests (grouped writes), each with its own time.
pub(crate) async fn emit_locked_each(
    db: &impl ConnectionTrait,
    lock: &audit::ChainLock,
    events: Vec<(NewEvent, DateTime<Utc>)>,
) -> DomainResult<Vec<Uuid>> {
    let tenant_id = lock.tenant;
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let last = db::fixed_one_in(db, LAST_SEQ_SQL, &[db::Param::Uuid(tenant_id.as_uuid())]).await?;
    let mut seq: i64 = match last {
        Some(row) => row.try_get_by_index(0)?,
        None => 0,
    };
    let endpoints = webhook_endpoint::Entity::find()
        .from_raw_sql(sea_orm::Statement::from_sql_and_values(
            db.get_database_backend(),
            ACTIVE_ENDPOINTS_SQL,
            [
                db::Param::Uuid(tenant_id.as_uuid()).into(),
                db::Param::Bool(true).into(),
            ],
        ))
        .all(db)
        .await?;
    let mut ids = Vec::with_capacity(events.len());
    let mut rows = Vec::new();
    let mut deliveries = Vec::new();
    for (e, now) in events {
        seq += 1;
        let id = Uuid::now_v7();
        ids.push(id);
        for ep in endpoints
            .iter()
            .filter(|ep| subscribes(&ep.event_types, e.event_type))
        {
            deliveries.push(webhook_delivery::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(tenant_id.as_uuid()),
                endpoint_id: Set(ep.id),
                event_id: Set(id),
                status: Set("pending".into()),
                attempts: Set(0),
                next_attempt_at: Set(now),
                locked_until: Set(None),
                last_attempt_at: Set(None),
                last_status: Set(None),
                last_error: Set(None),
                delivered_at: Set(None),
                created_at: Set(now),
            });
        }
        rows.push(event::ActiveModel {
            id: Set(id),
            tenant_id: Set(tenant_id.as_uuid()),
            seq: Set(seq),
            event_type: Set(e.event_type.to_owned()),
            object_type: Set(e.object_type.to_owned()),
            object_id: Set(e.object_id),
            subject_contact_id: Set(e.subject_contact_id),
            payload: Set(e.payload.to_string()),
            created_at: Set(now),
        });
    }
    // Events first: deliveries refer to them.
    db::insert_rows(db, rows, None).await?;
    db::insert_rows(db, deliveries, None).await?;
    Ok(ids)
}

/// Emits the same event to every active customer tenant (platform-wide changes).
pub async fn emit_to_all_tenants(
    db: &impl ConnectionTrait,
    make: impl Fn() -> NewEvent,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let tenants = tenant::Entity::find()
        .filter(tenant::Column::Kind.eq(TenantKind::Customer.as_str()))
        .filter(tenant::Column::Active.eq(true))
        .all(db)
        .await?;
    for t in tenants {
        emit(db, TenantId::from_uuid(t.id), make(), now).await?;
    }
    Ok(())
}

/// An event payload that names a person, sealed with their data key: stored as a JSON string
/// (`"s1:…"`); [`open_payloads`] opens it while the person's key exists.
pub(crate) fn sealed_payload(key: &DataKey, payload: &impl serde::Serialize) -> Value {
    let text = match serde_json::to_string(payload) {
        Ok(text) => text,
        // Payloads are JSON values and structs of plain fields: string keys only.
        Err(e) => unreachable!("an event payload serialises: {e}"),
    };
    Value::String(key.seal(PAYLOAD_FIELD, &text))
}

const PAYLOAD_FIELD: &str = "event.payload";

/// Opens the sealed payloads among a tenant's events with their subjects' data keys. A
/// payload whose subject has been deleted since cannot be opened any more: it shows ids only.
async fn open_payloads(
    db: &impl ConnectionTrait,
    vault: &Vault,
    tenant: TenantId,
    events: &mut [ChangeEvent],
    subjects: &[Option<Uuid>],
) -> DomainResult<()> {
    let sealed = |d: &Value| matches!(d, Value::String(s) if crate::vault::is_sealed(s));
    let wanted: Vec<Uuid> = events
        .iter()
        .zip(subjects)
        .filter(|(e, _)| sealed(&e.data))
        .filter_map(|(_, s)| *s)
        .collect::<std::collections::HashSet<_>>()
        .into_iter()
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let keys = crate::contacts::data_keys(db, vault, tenant, wanted).await?;
    for (e, subject) in events.iter_mut().zip(subjects) {
        let Value::String(text) = &e.data else {
            continue;
        };
        if !crate::vault::is_sealed(text) {
            continue;
        }
        // One payload that does not open must not stop the feed or the deliveries behind it:
        // it shows ids only, and the cause goes to the log.
        let opened = match subject.and_then(|s| keys.get(&s)) {
            Some(SubjectKey::Open(key)) => key
                .open(PAYLOAD_FIELD, text)
                .ok()
                .and_then(|plain| serde_json::from_str(&plain).ok()),
            Some(_) => None,
            None => {
                e.data = json!({"id": e.object_id, "deleted": true});
                continue;
            }
        };
        e.data = opened.unwrap_or_else(|| {
            log::error!("event {}: its payload does not open", e.id);
            json!({"id": e.object_id, "unreadable": true})
        });
    }
    Ok(())
}

fn subscribes(types: &str, event_type: &str) -> bool {
    types.split(' ').any(|t| t == "*" || t == event_type)
}

/// Reduces every event about a contact to ids: what erasure leaves of them.
pub async fn scrub_subject(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
    contact_id: Uuid,
) -> DomainResult<()> {
    event::Entity::update_many()
        .col_expr(
            event::Column::Payload,
            Expr::value(json!({"id": contact_id, "erased": true}).to_string()),
        )
        .filter(event::Column::TenantId.eq(tenant_id))
        .filter(event::Column::SubjectContactId.eq(contact_id))
        .exec(db)
        .await?;
    Ok(())
}

/// An event as the change feed and webhooks show it.
#[derive(Clone, Debug)]
pub struct ChangeEvent {
    pub id: Uuid,
    pub seq: i64,
    pub event_type: String,
    pub object_type: String,
    pub object_id: Option<Uuid>,
    pub data: Value,
    pub occurred_at: DateTime<Utc>,
}

impl From<event::Model> for ChangeEvent {
    fn from(m: event::Model) -> Self {
        ChangeEvent {
            id: m.id,
            seq: m.seq,
            event_type: m.event_type,
            object_type: m.object_type,
            object_id: m.object_id,
            data: serde_json::from_str(&m.payload).unwrap_or(Value::Null),
            occurred_at: m.created_at,
        }
    }
}

/// The tenant's events after `since`, in commit order.
pub async fn changes(
    db: &impl ConnectionTrait,
    vault: &Vault,
    tenant: &Tenant,
    since: i64,
    limit: u64,
) -> DomainResult<Vec<ChangeEvent>> {
    let rows = event::Entity::find()
        .filter(event::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(event::Column::Seq.gt(since))
        .order_by_asc(event::Column::Seq)
        .limit(limit)
        .all(db)
        .await?;
    let subjects: Vec<Option<Uuid>> = rows.iter().map(|r| r.subject_contact_id).collect();
    let mut events: Vec<ChangeEvent> = rows.into_iter().map(ChangeEvent::from).collect();
    open_payloads(db, vault, tenant.id(), &mut events, &subjects).await?;
    Ok(events)
}

// ---------------------------------------------------------------------------------------
// Webhook endpoints

#[derive(Clone, Debug)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: Option<String>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

impl From<webhook_endpoint::Model> for Endpoint {
    fn from(m: webhook_endpoint::Model) -> Self {
        Endpoint {
            id: m.id,
            url: m.url,
            event_types: m.event_types.split(' ').map(str::to_owned).collect(),
            description: m.description,
            active: m.active,
            created_at: m.created_at,
        }
    }
}

pub struct NewEndpoint {
    pub url: String,
    pub event_types: Vec<String>,
    pub description: Option<String>,
    /// The signing secret, encrypted by the API's key.
    pub secret_enc: String,
}

pub async fn create_endpoint(
    db: &DatabaseConnection,
    tenant: &Tenant,
    input: NewEndpoint,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Endpoint> {
    let txn = db::begin_write(db).await?;
    let id = Uuid::now_v7();
    webhook_endpoint::Entity::insert(webhook_endpoint::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant.id().as_uuid()),
        url: Set(input.url),
        event_types: Set(input.event_types.join(" ")),
        description: Set(input.description),
        secret_enc: Set(input.secret_enc),
        active: Set(true),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec_without_returning(&txn)
    .await
    .map_err(|e| conflict_on_unique(e, "webhook_exists", "this webhook exists"))?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        AuditEvent {
            action: "webhook.created",
            object_type: "webhook",
            object_id: Some(id),
            details: None,
        },
        now,
    )
    .await?;
    let ep = get_endpoint(&txn, tenant, id).await?;
    txn.commit().await?;
    Ok(ep)
}

pub async fn get_endpoint(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    id: Uuid,
) -> DomainResult<Endpoint> {
    webhook_endpoint::Entity::find_by_id(id)
        .filter(webhook_endpoint::Column::TenantId.eq(tenant.id().as_uuid()))
        .one(db)
        .await?
        .map(Endpoint::from)
        .ok_or(DomainError::NotFound("webhook"))
}

pub async fn list_endpoints(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
) -> DomainResult<Vec<Endpoint>> {
    Ok(webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::TenantId.eq(tenant.id().as_uuid()))
        .order_by_asc(webhook_endpoint::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(Endpoint::from)
        .collect())
}

/// Removes an endpoint with its pending deliveries.
pub async fn delete_endpoint(
    db: &DatabaseConnection,
    tenant: &Tenant,
    id: Uuid,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let txn = db::begin_write(db).await?;
    let deleted = webhook_endpoint::Entity::delete_many()
        .filter(webhook_endpoint::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(webhook_endpoint::Column::Id.eq(id))
        .exec(&txn)
        .await?
        .rows_affected;
    if deleted != 1 {
        return Err(DomainError::NotFound("webhook"));
    }
    audit::record(
        &txn,
        tenant.id(),
        actor,
        AuditEvent {
            action: "webhook.deleted",
            object_type: "webhook",
            object_id: Some(id),
            details: None,
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl From<webhook_delivery::Model> for Delivery {
    fn from(m: webhook_delivery::Model) -> Self {
        Delivery {
            id: m.id,
            endpoint_id: m.endpoint_id,
            event_id: m.event_id,
            status: m.status,
            attempts: m.attempts,
            next_attempt_at: m.next_attempt_at,
            last_attempt_at: m.last_attempt_at,
            last_status: m.last_status,
            last_error: m.last_error,
            delivered_at: m.delivered_at,
        }
    }
}

/// An endpoint's deliveries, newest first (at most `limit`).
pub async fn list_deliveries(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    endpoint_id: Uuid,
    limit: u64,
) -> DomainResult<Vec<Delivery>> {
    get_endpoint(db, tenant, endpoint_id).await?;
    Ok(webhook_delivery::Entity::find()
        .filter(webhook_delivery::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(webhook_delivery::Column::EndpointId.eq(endpoint_id))
        .order_by_desc(webhook_delivery::Column::Id)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(Delivery::from)
        .collect())
}

/// Queues a delivery again (e.g. a dead one after the receiver was fixed).
pub async fn redeliver(
    db: &DatabaseConnection,
    tenant: &Tenant,
    id: Uuid,
    now: DateTime<Utc>,
) -> DomainResult<Delivery> {
    let txn = db::begin_write(db).await?;
    let updated = webhook_delivery::Entity::update_many()
        .col_expr(webhook_delivery::Column::Status, Expr::value("pending"))
        .col_expr(webhook_delivery::Column::Attempts, Expr::value(0))
        .col_expr(webhook_delivery::Column::NextAttemptAt, Expr::value(now))
        .col_expr(
            webhook_delivery::Column::LockedUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(webhook_delivery::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(webhook_delivery::Column::Id.eq(id))
        .exec(&txn)
        .await?
        .rows_affected;
    if updated != 1 {
        return Err(DomainError::NotFound("delivery"));
    }
    let row = webhook_delivery::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or(DomainError::NotFound("delivery"))?;
    txn.commit().await?;
    Ok(row.into())
}

// ---------------------------------------------------------------------------------------
// The worker's side

/// A delivery claimed by a worker for `lease`: what it needs to send it.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: Uuid,
    pub attempts: i32,
    pub url: String,
    pub secret_enc: String,
    pub event: ChangeEvent,
}

/// Claims up to `limit` due deliveries. On PostgreSQL rows are locked with
/// `FOR UPDATE SKIP LOCKED` while the lease is written, so concurrent workers never claim the
/// same row; SQLite write transactions are serial.
pub async fn claim_due(
    db: &DatabaseConnection,
    vault: &Vault,
    now: DateTime<Utc>,
    lease: Duration,
    limit: u64,
) -> DomainResult<Vec<Claimed>> {
    let txn = db::begin_write(db).await?;
    let due = webhook_delivery::Entity::find()
        .filter(webhook_delivery::Column::Status.eq("pending"))
        .filter(webhook_delivery::Column::NextAttemptAt.lte(now))
        .filter(
            sea_orm::Condition::any()
                .add(webhook_delivery::Column::LockedUntil.is_null())
                .add(webhook_delivery::Column::LockedUntil.lt(now)),
        )
        .order_by_asc(webhook_delivery::Column::NextAttemptAt)
        .limit(limit)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .all(&txn)
        .await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = due.iter().map(|d| d.id).collect();
    webhook_delivery::Entity::update_many()
        .col_expr(
            webhook_delivery::Column::LockedUntil,
            Expr::value(now + lease),
        )
        .filter(db::one_of(
            txn.get_database_backend(),
            webhook_delivery::Column::Id,
            ids,
        ))
        .exec(&txn)
        .await?;
    let mut rows = Vec::with_capacity(due.len());
    for d in due {
        let ep = webhook_endpoint::Entity::find_by_id(d.endpoint_id)
            .one(&txn)
            .await?;
        let ev = event::Entity::find_by_id(d.event_id).one(&txn).await?;
        if let (Some(ep), Some(ev)) = (ep, ev) {
            rows.push((d, ep, ev));
        }
    }
    txn.commit().await?;
    // Payloads are opened after the claim is committed (the write lock of SQLite is not held
    // for it), with one key lookup per tenant in the batch.
    let mut by_tenant: std::collections::BTreeMap<Uuid, Vec<usize>> = Default::default();
    for (k, (_, _, ev)) in rows.iter().enumerate() {
        by_tenant.entry(ev.tenant_id).or_default().push(k);
    }
    let subjects: Vec<Option<Uuid>> = rows
        .iter()
        .map(|(_, _, ev)| ev.subject_contact_id)
        .collect();
    let mut claimed: Vec<Claimed> = rows
        .into_iter()
        .map(|(d, ep, ev)| Claimed {
            id: d.id,
            attempts: d.attempts,
            url: ep.url,
            secret_enc: ep.secret_enc,
            event: ev.into(),
        })
        .collect();
    for (tenant, positions) in by_tenant {
        let mut events: Vec<ChangeEvent> = positions
            .iter()
            .map(|&k| claimed[k].event.clone())
            .collect();
        let subjects: Vec<Option<Uuid>> = positions.iter().map(|&k| subjects[k]).collect();
        open_payloads(
            db,
            vault,
            TenantId::from_uuid(tenant),
            &mut events,
            &subjects,
        )
        .await?;
        for (k, event) in positions.into_iter().zip(events) {
            claimed[k].event = event;
        }
    }
    Ok(claimed)
}

/// What one attempt came to.
pub enum Outcome {
    Delivered {
        status: i32,
    },
    /// Failed; `retry_at` None means no more tries (dead letter).
    Failed {
        status: Option<i32>,
        error: String,
        retry_at: Option<DateTime<Utc>>,
    },
}

pub async fn record_attempt(
    db: &DatabaseConnection,
    id: Uuid,
    outcome: Outcome,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let none: Option<DateTime<Utc>> = None;
    let mut q = webhook_delivery::Entity::update_many()
        .col_expr(
            webhook_delivery::Column::Attempts,
            Expr::col(webhook_delivery::Column::Attempts).add(1),
        )
        .col_expr(webhook_delivery::Column::LastAttemptAt, Expr::value(now))
        .col_expr(webhook_delivery::Column::LockedUntil, Expr::value(none));
    q = match outcome {
        Outcome::Delivered { status } => q
            .col_expr(webhook_delivery::Column::Status, Expr::value("delivered"))
            .col_expr(webhook_delivery::Column::LastStatus, Expr::value(status))
            .col_expr(
                webhook_delivery::Column::LastError,
                Expr::value(Option::<String>::None),
            )
            .col_expr(webhook_delivery::Column::DeliveredAt, Expr::value(now)),
        Outcome::Failed {
            status,
            error,
            retry_at,
        } => {
            let error: String = error.chars().take(500).collect();
            let q = q
                .col_expr(webhook_delivery::Column::LastStatus, Expr::value(status))
                .col_expr(webhook_delivery::Column::LastError, Expr::value(error));
            match retry_at {
                Some(at) => q.col_expr(webhook_delivery::Column::NextAttemptAt, Expr::value(at)),
                None => q.col_expr(webhook_delivery::Column::Status, Expr::value("dead")),
            }
        }
    };
    let txn = db::begin_write(db).await?;
    q.filter(webhook_delivery::Column::Id.eq(id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

/// Records a change of the sub-processor register as an event of every tenant.
pub async fn sub_processor_changed(
    db: &impl ConnectionTrait,
    sub_processor_id: Uuid,
    change: &str,
    snapshot: &Value,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    emit_to_all_tenants(
        db,
        || NewEvent {
            event_type: "sub_processor.changed",
            object_type: "sub_processor",
            object_id: Some(sub_processor_id),
            subject_contact_id: None,
            payload: json!({"change": change, "sub_processor": snapshot}),
        },
        now,
    )
    .await
}
