//! Data-subject rights on a contact: export (Art. 15/20), redaction, erasure (Art. 17) with
//! legal retention, legal hold, suppression and the erasure ledger.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit::{self, Actor, Event};
use crate::contacts::Contact;
use crate::entities::{
    company, consent, contact, dsr_request, erasure_ledger, gdpr_setting, order, order_line,
    purpose, tenant,
};
use crate::error::{DomainError, DomainResult};
use crate::ids::ContactId;
use crate::personal_data::{self, REGISTRY};
use crate::suppression;
use crate::tenancy::Tenant;
use crate::values::{EmailAddress, OrderStatus};
use crate::vault::Vault;
use crate::{db, personal_data::OnErasure};

/// Orders and invoices are kept this long by default (10 years covers the longest common
/// commercial and tax retention duties in the EU, e.g. § 147 AO in Germany).
pub const DEFAULT_ORDER_RETENTION_DAYS: i32 = 3653;

pub const REDACTED: &str = "[redacted]";

async fn load_contact(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    id: ContactId,
) -> DomainResult<contact::Model> {
    contact::Entity::find()
        .filter(contact::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(contact::Column::Id.eq(id.as_uuid()))
        .one(db)
        .await?
        .ok_or(DomainError::NotFound("contact"))
}

pub async fn order_retention_days(db: &impl ConnectionTrait, tenant: &Tenant) -> DomainResult<i32> {
    Ok(gdpr_setting::Entity::find_by_id(tenant.id().as_uuid())
        .one(db)
        .await?
        .map(|s| s.order_retention_days)
        .unwrap_or(DEFAULT_ORDER_RETENTION_DAYS))
}

pub async fn set_order_retention_days(
    db: &DatabaseConnection,
    tenant: &Tenant,
    actor: &Actor,
    days: i32,
    now: DateTime<Utc>,
) -> DomainResult<i32> {
    let txn = db::begin_write(db).await?;
    let model = gdpr_setting::ActiveModel {
        tenant_id: Set(tenant.id().as_uuid()),
        order_retention_days: Set(days),
        updated_at: Set(now),
    };
    gdpr_setting::Entity::insert(model)
        .on_conflict(
            sea_orm::sea_query::OnConflict::column(gdpr_setting::Column::TenantId)
                .update_columns([
                    gdpr_setting::Column::OrderRetentionDays,
                    gdpr_setting::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "gdpr_settings.updated",
            object_type: "tenant",
            object_id: Some(tenant.id().as_uuid()),
            details: Some(json!({"order_retention_days": days})),
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(days)
}

fn pick(value: Value, table: &str) -> Value {
    let allowed = personal_data::exported_columns(table);
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| allowed.contains(&k.as_str()))
                .collect(),
        ),
        other => other,
    }
}

fn contact_json(tenant: &Tenant, c: &Contact) -> Value {
    pick(
        json!({
            "id": c.id.as_uuid(), "tenant_id": tenant.id().as_uuid(), "company_id": c.company_id.map(crate::ids::CompanyId::as_uuid),
            "first_name": c.first_name, "last_name": c.last_name, "email": c.email, "phone": c.phone, "job_title": c.job_title,
            "created_at": c.created_at, "updated_at": c.updated_at, "version": c.version,
            "legal_hold": c.legal_hold, "redacted_at": c.redacted_at,
        }),
        "contacts",
    )
}

/// Everything held about a contact, as one machine-readable document, with the processing
/// information Art. 15 requires. The export itself is audited.
pub async fn export_contact(
    db: &DatabaseConnection,
    vault: &Vault,
    tenant: &Tenant,
    id: ContactId,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Value> {
    let txn = db::begin_write(db).await?;
    let tid = tenant.id().as_uuid();
    let c = load_contact(&txn, tenant, id).await?;
    let person = Contact::open(vault, tenant, c.clone())?;
    let key = &person.key;
    let company = match c.company_id {
        Some(cid) => company::Entity::find()
            .filter(company::Column::TenantId.eq(tid))
            .filter(company::Column::Id.eq(cid))
            .one(&txn)
            .await?
            .map(|co| json!({"id": co.id, "name": co.name, "domain": co.domain})),
        None => None,
    };
    let orders = order::Entity::find()
        .filter(order::Column::TenantId.eq(tid))
        .filter(order::Column::ContactId.eq(c.id))
        .order_by_asc(order::Column::Id)
        .all(&txn)
        .await?;
    let order_ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
    let mut lines: BTreeMap<Uuid, Vec<Value>> = BTreeMap::new();
    if !order_ids.is_empty() {
        for l in order_line::Entity::find()
            .filter(order_line::Column::TenantId.eq(tid))
            .filter(crate::db::one_of(
                txn.get_database_backend(),
                order_line::Column::OrderId,
                order_ids,
            ))
            .order_by_asc(order_line::Column::Position)
            .all(&txn)
            .await?
        {
            lines.entry(l.order_id).or_default().push(pick(
                json!({"position": l.position, "sku": l.sku, "description": l.description, "quantity": l.quantity,
                       "unit_price_minor": l.unit_price_minor, "line_total_minor": l.line_total_minor}),
                "order_lines",
            ));
        }
    }
    let orders: Vec<Value> = orders
        .into_iter()
        .map(|o| {
            let mut v = pick(
                json!({"id": o.id, "contact_id": o.contact_id, "company_id": o.company_id, "status": o.status,
                       "currency": o.currency, "total_minor": o.total_minor, "placed_at": o.placed_at,
                       "created_at": o.created_at, "updated_at": o.updated_at}),
                "orders",
            );
            v["lines"] = Value::Array(lines.remove(&o.id).unwrap_or_default());
            v
        })
        .collect();
    let purposes: BTreeMap<Uuid, purpose::Model> = purpose::Entity::find()
        .filter(purpose::Column::TenantId.eq(tid))
        .all(&txn)
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    let consent_rows = consent::Entity::find()
        .filter(consent::Column::TenantId.eq(tid))
        .filter(consent::Column::ContactId.eq(c.id))
        .order_by_asc(consent::Column::Id)
        .all(&txn)
        .await?;
    let consents: Vec<Value> = consent_rows
        .iter()
        .map(|r| {
            let source = key.open_stored(crate::consents::SOURCE, r.source.clone())?;
            let evidence = key.open_stored(crate::consents::EVIDENCE, r.evidence.clone())?;
            let mut v = pick(
                json!({"id": r.id, "contact_id": r.contact_id, "purpose_id": r.purpose_id, "status": r.status,
                       "lawful_basis": r.lawful_basis, "channel": r.channel, "source": source, "evidence": evidence,
                       "recorded_by": r.recorded_by, "recorded_at": r.recorded_at}),
                "consents",
            );
            v["purpose"] = json!(purposes.get(&r.purpose_id).map(|p| p.key.clone()));
            Ok(v)
        })
        .collect::<DomainResult<_>>()?;
    let requests: Vec<Value> = dsr_request::Entity::find()
        .filter(dsr_request::Column::TenantId.eq(tid))
        .filter(dsr_request::Column::ContactId.eq(c.id))
        .order_by_asc(dsr_request::Column::Id)
        .all(&txn)
        .await?
        .into_iter()
        .map(|r| {
            let open = |field, v: Option<String>| v.map(|v| vault.open_system(field, &v)).transpose();
            let extension_reason = open(crate::dsr::EXTENSION_REASON, r.extension_reason)?;
            let outcome = open(crate::dsr::OUTCOME, r.outcome)?;
            Ok(pick(
                json!({"id": r.id, "contact_id": r.contact_id, "kind": r.kind, "received_at": r.received_at, "due_at": r.due_at,
                       "extension_reason": extension_reason, "identity_verification": r.identity_verification,
                       "status": r.status, "outcome": outcome, "erasure_id": r.erasure_id, "closed_at": r.closed_at,
                       "created_at": r.created_at, "updated_at": r.updated_at}),
                "dsr_requests",
            ))
        })
        .collect::<DomainResult<_>>()?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "contact.exported",
            object_type: "contact",
            object_id: Some(c.id),
            details: None,
        },
        now,
    )
    .await?;
    let audit_trail: Vec<Value> = audit::for_object(&txn, tenant, c.id)
        .await?
        .into_iter()
        .map(|a| {
            pick(
                json!({"id": a.id, "occurred_at": a.occurred_at, "actor_id": a.actor_id, "actor_kind": a.actor_kind,
                       "action": a.action, "object_type": a.object_type, "object_id": a.object_id,
                       "request_id": a.request_id, "details": a.details}),
                "audit_events",
            )
        })
        .collect();
    let controller = tenant::Entity::find_by_id(tid)
        .one(&txn)
        .await?
        .map(|t| t.name);
    let retention_days = order_retention_days(&txn, tenant).await?;
    let lawful_bases: Vec<String> = {
        let mut v: Vec<String> = consent_rows
            .iter()
            .map(|r| r.lawful_basis.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let categories: Vec<&str> = {
        let mut v: Vec<&str> = REGISTRY
            .iter()
            .filter(|t| t.subject_link.is_some())
            .flat_map(|t| personal_data::personal_columns(t.name))
            .map(|(_, cat)| cat.as_str())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let clients: Vec<Value> = crate::clients::list_clients(&txn, tenant)
        .await?
        .into_iter()
        .filter(|c| {
            c.active
                && c.scopes.iter().any(|s| {
                    s.starts_with("contacts:")
                        || s.starts_with("consents:")
                        || s.starts_with("orders:")
                })
        })
        .map(|c| json!({"name": c.name, "client_id": c.client_id, "scopes": c.scopes}))
        .collect();
    let sub_processors: Vec<Value> = crate::sub_processors::list(&txn, now)
        .await?
        .into_iter()
        .filter(|sp| sp.active)
        .map(|sp| json!({"name": sp.name, "purpose": sp.purpose, "location": sp.location, "transfer_safeguards": sp.transfer_safeguards}))
        .collect();
    txn.commit().await?;

    Ok(json!({
        "format": "crm-subject-export/1",
        "exported_at": now,
        "subject": contact_json(tenant, &person),
        "company": company,
        "orders": orders,
        "consents": consents,
        "requests": requests,
        "audit": audit_trail,
        "processing": {
            "controller": controller,
            "categories": categories,
            "purposes": purposes.values().map(|p| json!({"key": p.key, "name": p.name, "description": p.description})).collect::<Vec<_>>(),
            "lawful_bases": lawful_bases,
            "retention": {
                "contact": "kept until erased on request or by the tenant's retention policies",
                "orders_days": retention_days,
                "orders": "orders that reached the books are kept for the legal retention period, detached from the person",
            },
            "recipients": {
                "processor": "the platform operating this service",
                "sub_processors": sub_processors,
                "integration_clients": clients,
            },
            "source": "entered by the controller or its integrations through the API",
            "automated_decision_making": false,
            "rights": ["access", "rectification", "erasure", "restriction", "portability", "objection", "complaint to a supervisory authority"],
        }
    }))
}

/// Keeps the contact's records but replaces every identifying value with a placeholder.
pub async fn redact_contact(
    db: &DatabaseConnection,
    vault: &Vault,
    tenant: &Tenant,
    id: ContactId,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let txn = db::begin_write(db).await?;
    let tid = tenant.id().as_uuid();
    let c = load_contact(&txn, tenant, id).await?;
    if c.legal_hold {
        return Err(legal_hold_conflict());
    }
    // A new data key: what the old one sealed (earlier row versions, event payloads) is
    // beyond reach with the old key gone.
    let key = vault.new_data_key(tenant.id(), c.id);
    contact::Entity::update_many()
        .set(contact::ActiveModel {
            first_name: Set(Some(key.seal("first_name", REDACTED))),
            last_name: Set(Some(key.seal("last_name", REDACTED))),
            email: Set(None),
            phone: Set(None),
            job_title: Set(None),
            email_index: Set(None),
            data_key: Set(Some(key.wrapped().to_vec())),
            redacted_at: Set(Some(now)),
            updated_at: Set(now),
            version: Set(c.version + 1),
            ..Default::default()
        })
        .filter(contact::Column::TenantId.eq(tid))
        .filter(contact::Column::Id.eq(c.id))
        .exec(&txn)
        .await?;
    redact_links(&txn, tid, c.id).await?;
    // Events about the person (queued deliveries, the change feed) keep ids only.
    crate::events::scrub_subject(&txn, tid, c.id).await?;
    crate::idempotency::forget_references(&txn, tid, c.id).await?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "contact.redacted",
            object_type: "contact",
            object_id: Some(c.id),
            details: None,
        },
        now,
    )
    .await?;
    txn.commit().await?;
    compact(db).await;
    Ok(())
}

/// Free text about the person in consents and requests.
async fn redact_links(db: &impl ConnectionTrait, tid: Uuid, contact_id: Uuid) -> DomainResult<()> {
    consent::Entity::update_many()
        .col_expr(consent::Column::Source, Expr::value(Option::<String>::None))
        .col_expr(consent::Column::Evidence, Expr::value(Some(REDACTED)))
        .filter(consent::Column::TenantId.eq(tid))
        .filter(consent::Column::ContactId.eq(contact_id))
        .exec(db)
        .await?;
    dsr_request::Entity::update_many()
        .col_expr(
            dsr_request::Column::Outcome,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            dsr_request::Column::ExtensionReason,
            Expr::value(Option::<String>::None),
        )
        .filter(dsr_request::Column::TenantId.eq(tid))
        .filter(dsr_request::Column::ContactId.eq(contact_id))
        .exec(db)
        .await?;
    Ok(())
}

fn legal_hold_conflict() -> DomainError {
    DomainError::Conflict {
        code: "legal_hold",
        detail: "the contact is under legal hold; release the hold first".into(),
    }
}

/// What an erasure does (or did): per table, the rows deleted and the rows kept, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ErasurePlan {
    pub contact_id: Uuid,
    pub erasure_id: Option<Uuid>,
    pub dry_run: bool,
    pub deleted: Vec<PlanItem>,
    pub kept: Vec<PlanItem>,
    pub suppressed: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PlanItem {
    pub table: &'static str,
    pub ids: Vec<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Erases a contact and everything that is theirs, in one transaction. Orders the law makes
/// us keep are detached instead (the link is their only personal value) and listed as kept.
/// With `dry_run`, returns the same plan and changes nothing.
pub async fn erase_contact(
    db: &DatabaseConnection,
    vault: &Vault,
    tenant: &Tenant,
    id: ContactId,
    dry_run: bool,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<ErasurePlan> {
    let txn = db::begin_write(db).await?;
    let tid = tenant.id().as_uuid();
    let c = load_contact(&txn, tenant, id).await?;
    if c.legal_hold {
        return Err(legal_hold_conflict());
    }
    let retention = order_retention_days(&txn, tenant).await?;
    let cutoff = now - Duration::days(i64::from(retention));
    let orders = order::Entity::find()
        .filter(order::Column::TenantId.eq(tid))
        .filter(order::Column::ContactId.eq(c.id))
        .order_by_asc(order::Column::Id)
        .all(&txn)
        .await?;
    let (mut keep, mut delete) = (Vec::new(), Vec::new());
    for o in &orders {
        let booked = OrderStatus::parse(&o.status)
            .map(|s| !s.is_deletable())
            .unwrap_or(true);
        let booked_at = o.placed_at.unwrap_or(o.created_at);
        if booked && booked_at > cutoff {
            keep.push(o.id);
        } else {
            delete.push(o.id);
        }
    }
    let consents: Vec<Uuid> = consent::Entity::find()
        .filter(consent::Column::TenantId.eq(tid))
        .filter(consent::Column::ContactId.eq(c.id))
        .all(&txn)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    let requests: Vec<Uuid> = dsr_request::Entity::find()
        .filter(dsr_request::Column::TenantId.eq(tid))
        .filter(dsr_request::Column::ContactId.eq(c.id))
        .all(&txn)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    // A contact whose key does not open (its key-encryption key is gone) is still erased:
    // only its address cannot be put on the suppression list, and the plan says so.
    let email = match Contact::open(vault, tenant, c.clone()) {
        Ok(person) => person
            .email
            .as_deref()
            .and_then(|e| EmailAddress::parse(e).ok()),
        Err(e) => {
            log::error!("erasing contact {}: {e}", c.id);
            None
        }
    };
    let erasure_id = (!dry_run).then(Uuid::now_v7);
    let mut plan = ErasurePlan {
        contact_id: c.id,
        erasure_id,
        dry_run,
        deleted: vec![
            PlanItem { table: "contacts", ids: vec![c.id], reason: None },
            PlanItem { table: "consents", ids: consents, reason: None },
            PlanItem { table: "orders", ids: delete.clone(), reason: Some("not a booked order, or past its retention period".into()) },
        ],
        kept: vec![
            PlanItem {
                table: "orders",
                ids: keep.clone(),
                reason: Some(format!(
                    "booked orders are kept for {retention} days under commercial and tax law (GDPR Art. 17(3)(b)); detached from the person"
                )),
            },
            PlanItem {
                table: "dsr_requests",
                ids: requests.clone(),
                reason: Some("the record of handling the person's requests is kept to demonstrate compliance (Art. 5(2)); detached, free text removed".into()),
            },
        ],
        suppressed: email.is_some(),
    };
    debug_assert!(
        REGISTRY
            .iter()
            .any(|t| t.name == "orders" && t.on_erasure == OnErasure::DeleteOrKeepDetached)
    );
    if dry_run {
        return Ok(plan);
    }
    apply_erasure(&txn, tid, c.id, &delete).await?;
    if let Some(email) = &email {
        let index = vault.email_index(tenant.id(), email);
        crate::breaches::forget_address(&txn, tid, &index).await?;
        suppression::suppress(&txn, vault.suppression(), tenant.id(), email, now).await?;
    }
    dsr_request::Entity::update_many()
        .col_expr(dsr_request::Column::ErasureId, Expr::value(erasure_id))
        .filter(dsr_request::Column::TenantId.eq(tid))
        .filter(dsr_request::Column::Id.is_in(requests.clone()))
        .filter(dsr_request::Column::Kind.eq("erasure"))
        .exec(&txn)
        .await?;
    erasure_ledger::Entity::insert(erasure_ledger::ActiveModel {
        id: Set(erasure_id.unwrap_or_else(Uuid::now_v7)),
        tenant_id: Set(tid),
        contact_id: Set(c.id),
        order_ids: Set(Some(json!(delete))),
        erased_at: Set(now),
    })
    .exec_without_returning(&txn)
    .await?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "contact.erased",
            object_type: "contact",
            object_id: Some(c.id),
            details: Some(json!({
                "erasure_id": erasure_id,
                "deleted": {"orders": delete.len(), "consents": plan.deleted[1].ids.len()},
                "kept": {"orders": keep.len(), "dsr_requests": requests.len()},
            })),
        },
        now,
    )
    .await?;
    crate::events::emit(
        &txn,
        tenant.id(),
        crate::events::NewEvent {
            event_type: "contact.erased",
            object_type: "contact",
            object_id: Some(c.id),
            subject_contact_id: Some(c.id),
            payload: json!({"id": c.id}),
        },
        now,
    )
    .await?;
    txn.commit().await?;
    compact(db).await;
    plan.dry_run = false;
    Ok(plan)
}

/// The destructive part of an erasure, shared with the replay after a restore.
async fn apply_erasure(
    db: &impl ConnectionTrait,
    tid: Uuid,
    contact_id: Uuid,
    delete_orders: &[Uuid],
) -> DomainResult<()> {
    redact_links(db, tid, contact_id).await?;
    dsr_request::Entity::update_many()
        .col_expr(
            dsr_request::Column::ContactId,
            Expr::value(Option::<Uuid>::None),
        )
        .filter(dsr_request::Column::TenantId.eq(tid))
        .filter(dsr_request::Column::ContactId.eq(contact_id))
        .exec(db)
        .await?;
    if !delete_orders.is_empty() {
        order::Entity::delete_many()
            .filter(order::Column::TenantId.eq(tid))
            .filter(crate::db::one_of(
                db.get_database_backend(),
                order::Column::Id,
                delete_orders.to_vec(),
            ))
            .exec(db)
            .await?;
    }
    order::Entity::update_many()
        .col_expr(order::Column::ContactId, Expr::value(Option::<Uuid>::None))
        .filter(order::Column::TenantId.eq(tid))
        .filter(order::Column::ContactId.eq(contact_id))
        .exec(db)
        .await?;
    consent::Entity::delete_many()
        .filter(consent::Column::TenantId.eq(tid))
        .filter(consent::Column::ContactId.eq(contact_id))
        .exec(db)
        .await?;
    contact::Entity::delete_many()
        .filter(contact::Column::TenantId.eq(tid))
        .filter(contact::Column::Id.eq(contact_id))
        .exec(db)
        .await?;
    crate::events::scrub_subject(db, tid, contact_id).await?;
    crate::idempotency::forget_references(db, tid, contact_id).await?;
    Ok(())
}

/// Re-applies every erasure in the ledger, e.g. after restoring an older backup. Returns how
/// many erasures removed data that had come back.
pub async fn replay_erasures(db: &DatabaseConnection) -> DomainResult<u64> {
    let entries = erasure_ledger::Entity::find()
        .order_by_asc(erasure_ledger::Column::Id)
        .all(db)
        .await?;
    let mut reapplied = 0;
    for e in entries {
        let txn = db::begin_write(db).await?;
        let present = contact::Entity::find()
            .filter(contact::Column::TenantId.eq(e.tenant_id))
            .filter(contact::Column::Id.eq(e.contact_id))
            .one(&txn)
            .await?
            .is_some();
        let orders: Vec<Uuid> = e
            .order_ids
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let orders_back = !orders.is_empty()
            && order::Entity::find()
                .filter(order::Column::TenantId.eq(e.tenant_id))
                .filter(order::Column::Id.is_in(orders.clone()))
                .one(&txn)
                .await?
                .is_some();
        if present || orders_back {
            apply_erasure(&txn, e.tenant_id, e.contact_id, &orders).await?;
            reapplied += 1;
        }
        txn.commit().await?;
    }
    if reapplied > 0 {
        compact(db).await;
    }
    Ok(reapplied)
}

/// Puts a contact under legal hold (erasure and redaction are refused) or releases it.
pub async fn set_legal_hold(
    db: &DatabaseConnection,
    tenant: &Tenant,
    id: ContactId,
    hold: bool,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let txn = db::begin_write(db).await?;
    let c = load_contact(&txn, tenant, id).await?;
    contact::Entity::update_many()
        .col_expr(contact::Column::LegalHold, Expr::value(hold))
        .col_expr(contact::Column::UpdatedAt, Expr::value(now))
        .col_expr(contact::Column::Version, Expr::value(c.version + 1))
        .filter(contact::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(contact::Column::Id.eq(c.id))
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: if hold {
                "contact.legal_hold_set"
            } else {
                "contact.legal_hold_released"
            },
            object_type: "contact",
            object_id: Some(c.id),
            details: None,
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

/// SQLite keeps deleted content in free pages and the write-ahead log until they are reused:
/// with `secure_delete` on, deleted content is zeroed, and a checkpoint that truncates the log
/// removes the old page images. (PostgreSQL keeps dead tuples until VACUUM and in its WAL;
/// run it on encrypted storage.)
async fn compact(db: &DatabaseConnection) {
    if let Err(e) = db::truncate_wal(db).await {
        log::warn!("checkpoint after erasure failed: {e}");
    }
}

/// One erasure, ids and time only: what `replay_erasures` needs to erase again.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LedgerEntry {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub contact_id: Uuid,
    pub order_ids: Vec<Uuid>,
    pub erased_at: DateTime<Utc>,
}

/// The whole erasure ledger, oldest first. Keep a copy outside the database's backups (e.g.
/// `crm gdpr export-ledger` after each backup), so erasures made after a backup can be
/// re-applied when it is restored.
pub async fn export_ledger(db: &impl ConnectionTrait) -> DomainResult<Vec<LedgerEntry>> {
    Ok(erasure_ledger::Entity::find()
        .order_by_asc(erasure_ledger::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(|e| LedgerEntry {
            id: e.id,
            tenant_id: e.tenant_id,
            contact_id: e.contact_id,
            order_ids: e
                .order_ids
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default(),
            erased_at: e.erased_at,
        })
        .collect())
}

/// Adds ledger entries that a restored database lacks (by id); returns how many were added.
pub async fn import_ledger(db: &DatabaseConnection, entries: &[LedgerEntry]) -> DomainResult<u64> {
    let txn = db::begin_write(db).await?;
    let mut added = 0;
    for e in entries {
        if erasure_ledger::Entity::find_by_id(e.id)
            .one(&txn)
            .await?
            .is_some()
        {
            continue;
        }
        let tenant_exists = tenant::Entity::find_by_id(e.tenant_id)
            .one(&txn)
            .await?
            .is_some();
        if !tenant_exists {
            continue;
        }
        erasure_ledger::Entity::insert(erasure_ledger::ActiveModel {
            id: Set(e.id),
            tenant_id: Set(e.tenant_id),
            contact_id: Set(e.contact_id),
            order_ids: Set(Some(json!(e.order_ids))),
            erased_at: Set(e.erased_at),
        })
        .exec_without_returning(&txn)
        .await?;
        added += 1;
    }
    txn.commit().await?;
    Ok(added)
}
