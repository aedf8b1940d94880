//! Retention: per-tenant policies (contacts after an age or a period of inactivity are redacted
//! or erased), enforced by a job that respects legal holds and leaves the same trail as a
//! manual erasure (audit entry, ledger, suppression). Orders follow the tenant's order
//! retention period instead (see `gdpr::order_retention_days`).

use chrono::{DateTime, Duration, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use crate::audit::{self, Actor, Event};
use crate::db;
use crate::entities::{contact, order, retention_policy, tenant};
use crate::error::{DomainError, DomainResult, InvalidValue};
use crate::gdpr;
use crate::ids::{ContactId, TenantId};
use crate::tenancy::Tenant;
use crate::vault::Vault;

/// At most this many contacts per tenant and run, so one run stays bounded.
pub const BATCH: u64 = 500;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `contacts`.
    pub record_type: String,
    /// `age` (since creation) or `inactivity` (no change and no order).
    pub basis: String,
    pub after_days: i32,
    /// `redact` or `erase`.
    pub action: String,
}

pub fn parse_record_type(raw: &str) -> Result<String, InvalidValue> {
    (raw == "contacts")
        .then(|| raw.to_owned())
        .ok_or_else(|| InvalidValue::new("invalid_record_type", "must be contacts"))
}

pub fn parse_basis(raw: &str) -> Result<String, InvalidValue> {
    matches!(raw, "age" | "inactivity")
        .then(|| raw.to_owned())
        .ok_or_else(|| InvalidValue::new("invalid_basis", "must be age or inactivity"))
}

pub fn parse_action(raw: &str) -> Result<String, InvalidValue> {
    matches!(raw, "redact" | "erase")
        .then(|| raw.to_owned())
        .ok_or_else(|| InvalidValue::new("invalid_action", "must be redact or erase"))
}

pub async fn list_policies(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
) -> DomainResult<Vec<Policy>> {
    Ok(retention_policy::Entity::find()
        .filter(retention_policy::Column::TenantId.eq(tenant.id().as_uuid()))
        .order_by_asc(retention_policy::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(|p| Policy {
            record_type: p.record_type,
            basis: p.basis,
            after_days: p.after_days,
            action: p.action,
        })
        .collect())
}

/// Replaces the tenant's policies.
pub async fn set_policies(
    db: &DatabaseConnection,
    tenant: &Tenant,
    policies: Vec<Policy>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Vec<Policy>> {
    for (i, p) in policies.iter().enumerate() {
        if policies[..i]
            .iter()
            .any(|q| q.record_type == p.record_type && q.basis == p.basis)
        {
            return Err(DomainError::invalid(
                &format!("/policies/{i}"),
                "duplicate_policy",
                "one policy per record type and basis",
            ));
        }
    }
    let txn = db::begin_write(db).await?;
    retention_policy::Entity::delete_many()
        .filter(retention_policy::Column::TenantId.eq(tenant.id().as_uuid()))
        .exec(&txn)
        .await?;
    for p in &policies {
        retention_policy::Entity::insert(retention_policy::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(tenant.id().as_uuid()),
            record_type: Set(p.record_type.clone()),
            basis: Set(p.basis.clone()),
            after_days: Set(p.after_days),
            action: Set(p.action.clone()),
            created_at: Set(now),
        })
        .exec_without_returning(&txn)
        .await?;
    }
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "retention.policies_set",
            object_type: "tenant",
            object_id: Some(tenant.id().as_uuid()),
            details: Some(serde_json::json!({"policies": policies.len()})),
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(policies)
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunReport {
    pub tenant_id: Uuid,
    pub erased: Vec<Uuid>,
    pub redacted: Vec<Uuid>,
    /// Due, but under legal hold.
    pub held: Vec<Uuid>,
}

/// Applies one tenant's policies as of `now`.
pub async fn run_for_tenant(
    db: &DatabaseConnection,
    vault: &Vault,
    tenant: &Tenant,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<RunReport> {
    let mut report = RunReport {
        tenant_id: tenant.id().as_uuid(),
        ..Default::default()
    };
    for policy in list_policies(db, tenant).await? {
        let cutoff = now - Duration::days(i64::from(policy.after_days));
        let mut q = contact::Entity::find()
            .filter(contact::Column::TenantId.eq(tenant.id().as_uuid()))
            .order_by_asc(contact::Column::Id)
            .limit(BATCH);
        q = match policy.basis.as_str() {
            "age" => q.filter(contact::Column::CreatedAt.lt(cutoff)),
            _ => q.filter(contact::Column::UpdatedAt.lt(cutoff)),
        };
        if policy.action == "redact" {
            q = q.filter(contact::Column::RedactedAt.is_null());
        }
        for c in q.all(db).await? {
            if policy.basis == "inactivity" {
                let recent_order = order::Entity::find()
                    .filter(order::Column::TenantId.eq(tenant.id().as_uuid()))
                    .filter(order::Column::ContactId.eq(c.id))
                    .filter(order::Column::UpdatedAt.gte(cutoff))
                    .one(db)
                    .await?;
                if recent_order.is_some() {
                    continue;
                }
            }
            if c.legal_hold {
                if !report.held.contains(&c.id) {
                    report.held.push(c.id);
                }
                continue;
            }
            let id = ContactId::from_uuid(c.id);
            let done = if policy.action == "erase" {
                gdpr::erase_contact(db, vault, tenant, id, false, actor, now)
                    .await
                    .map(|_| report.erased.push(c.id))
            } else {
                gdpr::redact_contact(db, vault, tenant, id, actor, now)
                    .await
                    .map(|_| report.redacted.push(c.id))
            };
            match done {
                // Erased by an earlier policy of this run, or concurrently.
                Ok(()) | Err(DomainError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(report)
}

/// Applies every active customer tenant's policies (the scheduled job and `crm retention run`).
pub async fn run_all(
    db: &DatabaseConnection,
    vault: &Vault,
    now: DateTime<Utc>,
) -> DomainResult<Vec<RunReport>> {
    let tenants = tenant::Entity::find()
        .filter(tenant::Column::Kind.eq("customer"))
        .filter(tenant::Column::Active.eq(true))
        .all(db)
        .await?;
    let mut reports = Vec::new();
    for t in tenants {
        let tenant = Tenant::scoped(TenantId::from_uuid(t.id));
        let report = run_for_tenant(db, vault, &tenant, &Actor::system(), now).await?;
        if !(report.erased.is_empty() && report.redacted.is_empty() && report.held.is_empty()) {
            reports.push(report);
        }
    }
    Ok(reports)
}
