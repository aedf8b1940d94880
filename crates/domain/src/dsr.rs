//! The register of data-subject requests: kind, receipt, the one-month deadline (one
//! extension of up to two further months, with a reason), identity verification, status and
//! outcome, linked to the erasure that fulfilled it.

use chrono::{DateTime, Months, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use crate::audit::{self, Actor, Event};
use crate::entities::{contact, dsr_request};
use crate::error::{DomainError, DomainResult, InvalidValue};
use crate::ids::ContactId;
use crate::pagination::{Page, PageRequest};
use crate::tenancy::Tenant;
use crate::values::Patch;
use crate::vault::Vault;
use crate::{check_version, db};

/// Associated data of the sealed free-text fields. The notes may name the person, so they
/// are stored sealed (under the key-encryption key: a request can be linked to another
/// contact later, so not under one contact's data key).
pub(crate) const EXTENSION_REASON: &str = "dsr_requests.extension_reason";
pub(crate) const OUTCOME: &str = "dsr_requests.outcome";

fn open_text(vault: &Vault, field: &str, stored: Option<String>) -> DomainResult<Option<String>> {
    stored.map(|s| vault.open_system(field, &s)).transpose()
}

pub const KINDS: [&str; 6] = [
    "access",
    "rectification",
    "erasure",
    "restriction",
    "portability",
    "objection",
];
pub const VERIFICATION: [&str; 3] = ["pending", "verified", "failed"];
pub const STATUSES: [&str; 3] = ["open", "completed", "rejected"];

fn one_of(raw: &str, allowed: &[&str], code: &'static str) -> Result<String, InvalidValue> {
    allowed
        .contains(&raw)
        .then(|| raw.to_owned())
        .ok_or_else(|| InvalidValue::new(code, format!("must be one of {}", allowed.join(", "))))
}

pub fn parse_kind(raw: &str) -> Result<String, InvalidValue> {
    one_of(raw, &KINDS, "invalid_kind")
}

pub fn parse_verification(raw: &str) -> Result<String, InvalidValue> {
    one_of(raw, &VERIFICATION, "invalid_verification")
}

pub fn parse_status(raw: &str) -> Result<String, InvalidValue> {
    one_of(raw, &STATUSES, "invalid_status")
}

#[derive(Clone, Debug)]
pub struct Request {
    pub id: Uuid,
    pub contact_id: Option<Uuid>,
    pub kind: String,
    pub received_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub extended: bool,
    pub extension_reason: Option<String>,
    pub identity_verification: String,
    pub status: String,
    pub outcome: Option<String>,
    pub erasure_id: Option<Uuid>,
    pub closed_at: Option<DateTime<Utc>>,
    pub overdue: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
}

fn to_request(vault: &Vault, m: dsr_request::Model, now: DateTime<Utc>) -> DomainResult<Request> {
    Ok(Request {
        id: m.id,
        contact_id: m.contact_id,
        kind: m.kind,
        received_at: m.received_at,
        due_at: m.due_at,
        extended: m.due_at > base_due(m.received_at),
        extension_reason: open_text(vault, EXTENSION_REASON, m.extension_reason)?,
        identity_verification: m.identity_verification,
        overdue: m.status == "open" && m.due_at < now,
        status: m.status,
        outcome: open_text(vault, OUTCOME, m.outcome)?,
        erasure_id: m.erasure_id,
        closed_at: m.closed_at,
        created_at: m.created_at,
        updated_at: m.updated_at,
        version: m.version,
    })
}

/// One month after receipt (Art. 12(3)).
fn base_due(received: DateTime<Utc>) -> DateTime<Utc> {
    received
        .checked_add_months(Months::new(1))
        .unwrap_or(received)
}

#[derive(Debug)]
pub struct NewRequest {
    pub kind: String,
    pub contact_id: Option<ContactId>,
    pub received_at: Option<DateTime<Utc>>,
    pub identity_verification: Option<String>,
}

#[derive(Debug, Default)]
pub struct RequestChanges {
    pub identity_verification: Option<String>,
    pub status: Option<String>,
    pub outcome: Patch<String>,
    /// Extend once by 1 or 2 months, with a reason.
    pub extension: Option<(u32, String)>,
    pub contact_id: Patch<ContactId>,
}

async fn check_contact(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    id: Option<ContactId>,
) -> DomainResult<()> {
    if let Some(id) = id {
        let found = contact::Entity::find()
            .filter(contact::Column::TenantId.eq(tenant.id().as_uuid()))
            .filter(contact::Column::Id.eq(id.as_uuid()))
            .one(db)
            .await?;
        if found.is_none() {
            return Err(DomainError::invalid(
                "/contact_id",
                "unknown_contact",
                "no contact with this id exists",
            ));
        }
    }
    Ok(())
}

pub async fn create_request(
    db: &DatabaseConnection,
    vault: &Vault,
    tenant: &Tenant,
    input: NewRequest,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Request> {
    let received = input.received_at.unwrap_or(now);
    if received > now {
        return Err(DomainError::invalid(
            "/received_at",
            "in_future",
            "cannot be in the future",
        ));
    }
    let txn = db::begin_write(db).await?;
    check_contact(&txn, tenant, input.contact_id).await?;
    let id = Uuid::now_v7();
    dsr_request::Entity::insert(dsr_request::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant.id().as_uuid()),
        contact_id: Set(input.contact_id.map(ContactId::as_uuid)),
        kind: Set(input.kind.clone()),
        received_at: Set(received),
        due_at: Set(base_due(received)),
        extension_reason: Set(None),
        identity_verification: Set(input
            .identity_verification
            .unwrap_or_else(|| "pending".into())),
        status: Set("open".into()),
        outcome: Set(None),
        erasure_id: Set(None),
        closed_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        version: Set(1),
    })
    .exec_without_returning(&txn)
    .await?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "dsr.created",
            object_type: "dsr_request",
            object_id: Some(id),
            details: Some(serde_json::json!({"kind": input.kind, "contact_id": input.contact_id.map(ContactId::as_uuid)})),
        },
        now,
    )
    .await?;
    let created = get_request(&txn, vault, tenant, id, now).await?;
    txn.commit().await?;
    Ok(created)
}

pub async fn get_request(
    db: &impl ConnectionTrait,
    vault: &Vault,
    tenant: &Tenant,
    id: Uuid,
    now: DateTime<Utc>,
) -> DomainResult<Request> {
    dsr_request::Entity::find()
        .filter(dsr_request::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(dsr_request::Column::Id.eq(id))
        .one(db)
        .await?
        .map(|m| to_request(vault, m, now))
        .ok_or(DomainError::NotFound("dsr_request"))?
}

#[derive(Debug, Default)]
pub struct RequestFilter {
    pub status: Option<String>,
    pub kind: Option<String>,
    pub overdue: bool,
    pub contact_id: Option<ContactId>,
}

pub async fn list_requests(
    db: &impl ConnectionTrait,
    vault: &Vault,
    tenant: &Tenant,
    filter: RequestFilter,
    page: PageRequest,
    now: DateTime<Utc>,
) -> DomainResult<Page<Request>> {
    let mut q = dsr_request::Entity::find()
        .filter(dsr_request::Column::TenantId.eq(tenant.id().as_uuid()))
        .order_by_asc(dsr_request::Column::Id);
    if let Some(after) = page.after {
        q = q.filter(dsr_request::Column::Id.gt(after));
    }
    if let Some(status) = filter.status {
        q = q.filter(dsr_request::Column::Status.eq(status));
    }
    if let Some(kind) = filter.kind {
        q = q.filter(dsr_request::Column::Kind.eq(kind));
    }
    if let Some(c) = filter.contact_id {
        q = q.filter(dsr_request::Column::ContactId.eq(c.as_uuid()));
    }
    if filter.overdue {
        q = q
            .filter(dsr_request::Column::Status.eq("open"))
            .filter(dsr_request::Column::DueAt.lt(now));
    }
    let rows = q
        .limit(page.limit + 1)
        .all(db)
        .await?
        .into_iter()
        .map(|m| to_request(vault, m, now))
        .collect::<DomainResult<Vec<_>>>()?;
    Ok(Page::from_rows(rows, page.limit, |r| r.id))
}

// The vault and actor travel with every write; grouping them would only hide that.
#[allow(clippy::too_many_arguments)]
pub async fn update_request(
    db: &DatabaseConnection,
    vault: &Vault,
    tenant: &Tenant,
    id: Uuid,
    changes: RequestChanges,
    if_match: Option<i32>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Request> {
    let txn = db::begin_write(db).await?;
    let current = get_request(&txn, vault, tenant, id, now).await?;
    check_version(if_match, current.version)?;
    if let Patch::Value(c) = &changes.contact_id {
        check_contact(&txn, tenant, Some(*c)).await?;
    }
    let closing = matches!(changes.status.as_deref(), Some("completed" | "rejected"));
    if current.status != "open"
        && changes
            .status
            .as_deref()
            .is_some_and(|s| s != current.status)
    {
        return Err(DomainError::Conflict {
            code: "request_closed",
            detail: "a closed request cannot change status".into(),
        });
    }
    let (due_at, extension_reason) = match changes.extension {
        Some(_) if current.extended => {
            return Err(DomainError::Conflict {
                code: "already_extended",
                detail: "a request can be extended once".into(),
            });
        }
        Some((months, reason)) => (
            base_due(current.received_at)
                .checked_add_months(Months::new(months))
                .unwrap_or(current.due_at),
            Some(reason),
        ),
        None => (current.due_at, current.extension_reason.clone()),
    };
    let status = changes.status.clone().unwrap_or(current.status.clone());
    let result =
        dsr_request::Entity::update_many()
            .set(dsr_request::ActiveModel {
                contact_id: Set(changes
                    .contact_id
                    .map(ContactId::as_uuid)
                    .apply_to(current.contact_id)),
                identity_verification: Set(changes
                    .identity_verification
                    .clone()
                    .unwrap_or(current.identity_verification.clone())),
                status: Set(status.clone()),
                outcome: Set(changes
                    .outcome
                    .apply_to(current.outcome.clone())
                    .map(|o| vault.seal_system(OUTCOME, &o))),
                due_at: Set(due_at),
                extension_reason: Set(
                    extension_reason.map(|r| vault.seal_system(EXTENSION_REASON, &r))
                ),
                closed_at: Set(if closing && current.closed_at.is_none() {
                    Some(now)
                } else {
                    current.closed_at
                }),
                updated_at: Set(now),
                version: Set(current.version + 1),
                ..Default::default()
            })
            .filter(dsr_request::Column::TenantId.eq(tenant.id().as_uuid()))
            .filter(dsr_request::Column::Id.eq(id))
            .filter(dsr_request::Column::Version.eq(current.version))
            .exec(&txn)
            .await?;
    crate::expect_one_row(result.rows_affected)?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "dsr.updated",
            object_type: "dsr_request",
            object_id: Some(id),
            details: Some(
                serde_json::json!({"status": status, "extended": due_at != current.due_at}),
            ),
        },
        now,
    )
    .await?;
    let updated = get_request(&txn, vault, tenant, id, now).await?;
    txn.commit().await?;
    Ok(updated)
}
