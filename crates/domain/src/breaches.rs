//! The breach register (GDPR Art. 33/34) and the e-mail outbox its notifications use.
//!
//! Platform admins record the processor's breaches, naming the affected tenants (the
//! controllers); a tenant's admin or dpo records the tenant's own. Each breach holds the
//! Art. 33(3) content, the time of awareness and the 72-hour deadline. Notifying writes, in
//! one transaction, an e-mail to every admin and dpo of every affected tenant, a
//! `breach.notified` event for each tenant's webhooks, and — for a tenant's own high-risk
//! breach — an e-mail to each affected data subject (Art. 34).

use chrono::{DateTime, Duration, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde_json::json;
use uuid::Uuid;

use crate::audit::{self, Actor, Event};
use crate::db;
use crate::entities::{breach, breach_tenant, breach_update, contact, email_outbox, tenant, user};
use crate::error::{DomainError, DomainResult};
use crate::events::{self, NewEvent};
use crate::ids::TenantId;
use crate::tenancy::{Principal, TenantKind};
use crate::values::Role;
use crate::vault::Vault;

/// Art. 33(1): without undue delay and, where feasible, not later than 72 hours.
pub const DEADLINE: Duration = Duration::hours(72);

#[derive(Clone, Debug)]
pub struct Breach {
    pub id: Uuid,
    /// `platform` (the processor's) or `tenant` (a controller's own).
    pub scope: String,
    pub title: String,
    pub nature: String,
    pub data_categories: String,
    pub subjects_approx: Option<i64>,
    pub records_approx: Option<i64>,
    pub likely_consequences: String,
    pub measures: String,
    pub contact_point: String,
    pub high_risk: bool,
    pub affected_tenants: Vec<Uuid>,
    pub affected_contacts: Vec<Uuid>,
    pub aware_at: DateTime<Utc>,
    pub deadline_at: DateTime<Utc>,
    pub status: String,
    pub late_reason: Option<String>,
    pub notified_at: Option<DateTime<Utc>>,
    pub updates: Vec<BreachUpdate>,
    pub created_at: DateTime<Utc>,
    /// Whether the caller recorded it (and may change and notify it).
    pub owned: bool,
}

impl Breach {
    /// Open and past its deadline without a notification.
    pub fn overdue(&self, now: DateTime<Utc>) -> bool {
        self.notified_at.is_none() && now > self.deadline_at
    }
}

#[derive(Clone, Debug)]
pub struct BreachUpdate {
    pub note: String,
    pub created_at: DateTime<Utc>,
}

pub struct NewBreach {
    pub title: String,
    pub nature: String,
    pub data_categories: String,
    pub subjects_approx: Option<i64>,
    pub records_approx: Option<i64>,
    pub likely_consequences: String,
    pub measures: String,
    pub contact_point: String,
    pub high_risk: bool,
    pub aware_at: DateTime<Utc>,
    /// Platform breaches: the affected tenants (required, at least one).
    pub affected_tenants: Vec<Uuid>,
    /// Tenant breaches: the tenant's contacts to inform when high risk.
    pub affected_contacts: Vec<Uuid>,
}

fn is_platform(p: &Principal) -> bool {
    p.tenant_kind == TenantKind::Platform
}

/// Who may record and see breaches: platform admins, and tenant admins and dpos.
pub fn may_handle(p: &Principal) -> DomainResult<()> {
    let ok = match p.tenant_kind {
        TenantKind::Platform => p.role == Role::PlatformAdmin,
        TenantKind::Customer => matches!(p.role, Role::Admin | Role::Dpo),
    };
    if ok {
        Ok(())
    } else {
        Err(DomainError::Forbidden(
            "the breach register is for platform admins and tenant admins and dpos",
        ))
    }
}

fn ids(raw: &str) -> Vec<Uuid> {
    raw.split(' ')
        .filter_map(|s| Uuid::parse_str(s).ok())
        .collect()
}

async fn load(
    db: &impl ConnectionTrait,
    m: breach::Model,
    caller_tenant: TenantId,
) -> DomainResult<Breach> {
    let affected_tenants = breach_tenant::Entity::find()
        .filter(breach_tenant::Column::BreachId.eq(m.id))
        .all(db)
        .await?
        .into_iter()
        .map(|t| t.tenant_id)
        .collect();
    let updates = breach_update::Entity::find()
        .filter(breach_update::Column::BreachId.eq(m.id))
        .order_by_asc(breach_update::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(|u| BreachUpdate {
            note: u.note,
            created_at: u.created_at,
        })
        .collect();
    let owned = m.tenant_id == caller_tenant.as_uuid();
    Ok(Breach {
        id: m.id,
        scope: m.scope,
        title: m.title,
        nature: m.nature,
        data_categories: m.data_categories,
        subjects_approx: m.subjects_approx,
        records_approx: m.records_approx,
        likely_consequences: m.likely_consequences,
        measures: m.measures,
        contact_point: m.contact_point,
        high_risk: m.high_risk,
        affected_tenants,
        // A controller's own subjects are not shown to anyone else.
        affected_contacts: if owned {
            ids(&m.affected_contacts)
        } else {
            Vec::new()
        },
        aware_at: m.aware_at,
        deadline_at: m.deadline_at,
        status: m.status,
        late_reason: m.late_reason,
        notified_at: m.notified_at,
        updates,
        created_at: m.created_at,
        owned,
    })
}

/// Records a breach for the caller's organisation.
pub async fn record(
    db: &DatabaseConnection,
    p: &Principal,
    input: NewBreach,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Breach> {
    may_handle(p)?;
    let tenant_id = p.tenant.id();
    let txn = db::begin_write(db).await?;
    let scope = if is_platform(p) { "platform" } else { "tenant" };
    let mut affected = input.affected_tenants.clone();
    affected.sort();
    affected.dedup();
    if is_platform(p) {
        if affected.is_empty() {
            return Err(DomainError::invalid(
                "/affected_tenants",
                "required",
                "a platform breach names at least one affected tenant",
            ));
        }
        let found = tenant::Entity::find()
            .filter(tenant::Column::Id.is_in(affected.clone()))
            .filter(tenant::Column::Kind.eq(TenantKind::Customer.as_str()))
            .all(&txn)
            .await?
            .len();
        if found != affected.len() {
            return Err(DomainError::invalid(
                "/affected_tenants",
                "unknown_tenant",
                "every affected tenant must be an existing customer tenant",
            ));
        }
        if !input.affected_contacts.is_empty() {
            return Err(DomainError::invalid(
                "/affected_contacts",
                "not_allowed",
                "the processor does not inform data subjects: the controllers do",
            ));
        }
    } else {
        if !input.affected_tenants.is_empty() {
            return Err(DomainError::invalid(
                "/affected_tenants",
                "not_allowed",
                "a tenant records breaches of its own data only",
            ));
        }
        affected = vec![tenant_id.as_uuid()];
        let found = contact::Entity::find()
            .filter(contact::Column::TenantId.eq(tenant_id.as_uuid()))
            .filter(contact::Column::Id.is_in(input.affected_contacts.clone()))
            .all(&txn)
            .await?
            .len();
        let mut wanted = input.affected_contacts.clone();
        wanted.sort();
        wanted.dedup();
        if found != wanted.len() {
            return Err(DomainError::invalid(
                "/affected_contacts",
                "unknown_contact",
                "every affected contact must be a contact of this tenant",
            ));
        }
    }
    let id = Uuid::now_v7();
    breach::Entity::insert(breach::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant_id.as_uuid()),
        scope: Set(scope.into()),
        title: Set(input.title),
        nature: Set(input.nature),
        data_categories: Set(input.data_categories),
        subjects_approx: Set(input.subjects_approx),
        records_approx: Set(input.records_approx),
        likely_consequences: Set(input.likely_consequences),
        measures: Set(input.measures),
        contact_point: Set(input.contact_point),
        high_risk: Set(input.high_risk),
        affected_contacts: Set(input
            .affected_contacts
            .iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
            .join(" ")),
        aware_at: Set(input.aware_at),
        deadline_at: Set(input.aware_at + DEADLINE),
        status: Set("open".into()),
        late_reason: Set(None),
        notified_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec_without_returning(&txn)
    .await?;
    for t in &affected {
        breach_tenant::Entity::insert(breach_tenant::ActiveModel {
            breach_id: Set(id),
            tenant_id: Set(*t),
        })
        .exec_without_returning(&txn)
        .await?;
    }
    audit::record(
        &txn,
        tenant_id,
        actor,
        Event {
            action: "breach.recorded",
            object_type: "breach",
            object_id: Some(id),
            details: Some(json!({"scope": scope, "affected_tenants": affected.len()})),
        },
        now,
    )
    .await?;
    let m = breach::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or(DomainError::NotFound("breach"))?;
    let b = load(&txn, m, tenant_id).await?;
    txn.commit().await?;
    Ok(b)
}

/// A breach the caller recorded or whose tenant it affects; anything else is not found.
pub async fn get(db: &impl ConnectionTrait, p: &Principal, id: Uuid) -> DomainResult<Breach> {
    may_handle(p)?;
    let tid = p.tenant.id().as_uuid();
    let m = breach::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(DomainError::NotFound("breach"))?;
    let visible = m.tenant_id == tid
        || breach_tenant::Entity::find()
            .filter(breach_tenant::Column::BreachId.eq(id))
            .filter(breach_tenant::Column::TenantId.eq(tid))
            .one(db)
            .await?
            .is_some();
    if !visible {
        return Err(DomainError::NotFound("breach"));
    }
    load(db, m, p.tenant.id()).await
}

/// The caller's breaches and those affecting its tenant, newest first.
pub async fn list(
    db: &impl ConnectionTrait,
    p: &Principal,
    open_only: bool,
    overdue_only: bool,
    now: DateTime<Utc>,
) -> DomainResult<Vec<Breach>> {
    may_handle(p)?;
    let tid = p.tenant.id().as_uuid();
    let affecting: Vec<Uuid> = breach_tenant::Entity::find()
        .filter(breach_tenant::Column::TenantId.eq(tid))
        .all(db)
        .await?
        .into_iter()
        .map(|t| t.breach_id)
        .collect();
    let mut q = breach::Entity::find().filter(
        sea_orm::Condition::any()
            .add(breach::Column::TenantId.eq(tid))
            .add(breach::Column::Id.is_in(affecting)),
    );
    if open_only {
        q = q.filter(breach::Column::Status.ne("closed"));
    }
    if overdue_only {
        q = q
            .filter(breach::Column::NotifiedAt.is_null())
            .filter(breach::Column::DeadlineAt.lt(now));
    }
    let rows = q
        .order_by_desc(breach::Column::Id)
        .limit(500)
        .all(db)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for m in rows {
        out.push(load(db, m, p.tenant.id()).await?);
    }
    Ok(out)
}

async fn owned_row(
    db: &impl ConnectionTrait,
    p: &Principal,
    id: Uuid,
) -> DomainResult<breach::Model> {
    may_handle(p)?;
    let m = get(db, p, id).await?;
    if !m.owned {
        return Err(DomainError::Forbidden(
            "only the organisation that recorded a breach changes or notifies it",
        ));
    }
    breach::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(DomainError::NotFound("breach"))
}

/// Adds a phased update (Art. 33(4)); `close` closes the breach.
pub async fn add_update(
    db: &DatabaseConnection,
    p: &Principal,
    id: Uuid,
    note: String,
    close: bool,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Breach> {
    let txn = db::begin_write(db).await?;
    let m = owned_row(&txn, p, id).await?;
    breach_update::Entity::insert(breach_update::ActiveModel {
        id: Set(Uuid::now_v7()),
        breach_id: Set(id),
        note: Set(note),
        actor_id: Set(actor.actor_id),
        created_at: Set(now),
    })
    .exec_without_returning(&txn)
    .await?;
    let mut q = breach::Entity::update_many().col_expr(breach::Column::UpdatedAt, Expr::value(now));
    if close {
        q = q.col_expr(breach::Column::Status, Expr::value("closed"));
    }
    q.filter(breach::Column::Id.eq(id)).exec(&txn).await?;
    audit::record(
        &txn,
        p.tenant.id(),
        actor,
        Event {
            action: if close {
                "breach.closed"
            } else {
                "breach.updated"
            },
            object_type: "breach",
            object_id: Some(m.id),
            details: None,
        },
        now,
    )
    .await?;
    let m = breach::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or(DomainError::NotFound("breach"))?;
    let b = load(&txn, m, p.tenant.id()).await?;
    txn.commit().await?;
    Ok(b)
}

/// What a notification queued.
#[derive(Clone, Debug, Default)]
pub struct NotifyReport {
    pub emails: usize,
    pub webhook_events: usize,
    pub subjects: usize,
}

/// Notifies every affected controller (e-mail to admins and dpos, a `breach.notified` event
/// for webhooks) and, for a tenant's own high-risk breach, the affected data subjects. Late
/// notification needs a reason. Everything is queued in this one transaction.
pub async fn notify(
    db: &DatabaseConnection,
    vault: &Vault,
    p: &Principal,
    id: Uuid,
    late_reason: Option<String>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<(Breach, NotifyReport)> {
    let txn = db::begin_write(db).await?;
    let m = owned_row(&txn, p, id).await?;
    if m.notified_at.is_some() {
        return Err(DomainError::Conflict {
            code: "already_notified",
            detail: "this breach was notified; add updates instead".into(),
        });
    }
    let late = now > m.deadline_at;
    if late && late_reason.is_none() {
        return Err(DomainError::invalid(
            "/late_reason",
            "late_reason_required",
            "the 72-hour deadline has passed: give the reasons for the delay (Art. 33(1))",
        ));
    }
    let affected: Vec<Uuid> = breach_tenant::Entity::find()
        .filter(breach_tenant::Column::BreachId.eq(id))
        .all(&txn)
        .await?
        .into_iter()
        .map(|t| t.tenant_id)
        .collect();
    let mut report = NotifyReport::default();
    let subject = format!("Personal data breach: {}", m.title);
    let body = format!(
        "A personal data breach affecting your organisation's data was recorded.\n\n\
         Nature: {}\nCategories of data: {}\nApproximate number of data subjects: {}\n\
         Approximate number of records: {}\nLikely consequences: {}\nMeasures taken or \
         proposed: {}\nContact point: {}\nBecame aware: {}\n{}\nReference: {}\n",
        m.nature,
        m.data_categories,
        m.subjects_approx
            .map_or("unknown".into(), |n| n.to_string()),
        m.records_approx.map_or("unknown".into(), |n| n.to_string()),
        m.likely_consequences,
        m.measures,
        m.contact_point,
        m.aware_at.to_rfc3339(),
        late_reason
            .as_ref()
            .map(|r| format!("Reasons for the delay: {r}\n"))
            .unwrap_or_default(),
        m.id,
    );
    for t in &affected {
        let recipients = user::Entity::find()
            .filter(user::Column::TenantId.eq(*t))
            .filter(user::Column::Active.eq(true))
            .filter(user::Column::Role.is_in([Role::Admin.as_str(), Role::Dpo.as_str()]))
            .all(&txn)
            .await?;
        for u in recipients {
            queue_email(
                &txn,
                vault,
                *t,
                id,
                "controller",
                &u.email,
                &subject,
                &body,
                now,
            )
            .await?;
            report.emails += 1;
        }
        events::emit(
            &txn,
            TenantId::from_uuid(*t),
            NewEvent {
                event_type: "breach.notified",
                object_type: "breach",
                object_id: Some(id),
                subject_contact_id: None,
                payload: json!({
                    "id": id,
                    "scope": m.scope,
                    "title": m.title,
                    "high_risk": m.high_risk,
                    "aware_at": m.aware_at,
                    "deadline_at": m.deadline_at,
                    "late": late,
                }),
            },
            now,
        )
        .await?;
        report.webhook_events += 1;
    }
    if m.high_risk && m.scope == "tenant" {
        let contacts = contact::Entity::find()
            .filter(contact::Column::TenantId.eq(m.tenant_id))
            .filter(contact::Column::Id.is_in(ids(&m.affected_contacts)))
            .all(&txn)
            .await?;
        let subject_body = format!(
            "We are informing you of a personal data breach that is likely to result in a high \
             risk to your rights and freedoms (GDPR Art. 34).\n\nWhat happened: {}\nLikely \
             consequences: {}\nMeasures taken or proposed: {}\nContact point: {}\n",
            m.nature, m.likely_consequences, m.measures, m.contact_point
        );
        let tenant = crate::tenancy::Tenant::scoped(TenantId::from_uuid(m.tenant_id));
        for c in contacts {
            let c = crate::contacts::Contact::open(vault, &tenant, c)?;
            if let Some(email) = c.email {
                queue_email(
                    &txn,
                    vault,
                    m.tenant_id,
                    id,
                    "data_subject",
                    &email,
                    "Important: a personal data breach concerning you",
                    &subject_body,
                    now,
                )
                .await?;
                report.subjects += 1;
            }
        }
    }
    breach::Entity::update_many()
        .col_expr(breach::Column::Status, Expr::value("notified"))
        .col_expr(breach::Column::NotifiedAt, Expr::value(now))
        .col_expr(breach::Column::LateReason, Expr::value(late_reason))
        .col_expr(breach::Column::UpdatedAt, Expr::value(now))
        .filter(breach::Column::Id.eq(id))
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        p.tenant.id(),
        actor,
        Event {
            action: "breach.notified",
            object_type: "breach",
            object_id: Some(id),
            details: Some(json!({
                "late": late,
                "emails": report.emails,
                "webhook_events": report.webhook_events,
                "data_subjects": report.subjects,
            })),
        },
        now,
    )
    .await?;
    let m = breach::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or(DomainError::NotFound("breach"))?;
    let b = load(&txn, m, p.tenant.id()).await?;
    txn.commit().await?;
    Ok((b, report))
}

// ---------------------------------------------------------------------------------------
// The e-mail outbox

/// The associated data of sealed outbox addresses.
pub(crate) const TO_ADDRESS: &str = "email_outbox.to_address";

/// A message's address as stored: sealed (a data subject's address must not outlive their
/// erasure in old row versions), and its blind index, by which an erasure finds the
/// person's messages.
pub(crate) fn sealed_address(vault: &Vault, tenant_id: Uuid, to: &str) -> (String, String) {
    (
        vault.seal_system(TO_ADDRESS, to),
        vault.email_index_normalised(TenantId::from_uuid(tenant_id), &to.to_lowercase()),
    )
}

#[allow(clippy::too_many_arguments)]
async fn queue_email(
    db: &impl ConnectionTrait,
    vault: &Vault,
    tenant_id: Uuid,
    topic_id: Uuid,
    recipient_kind: &str,
    to: &str,
    subject: &str,
    body: &str,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let (to_address, to_index) = sealed_address(vault, tenant_id, to);
    email_outbox::Entity::insert(email_outbox::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant_id),
        topic: Set("breach".into()),
        topic_id: Set(Some(topic_id)),
        recipient_kind: Set(recipient_kind.into()),
        to_address: Set(to_address),
        to_index: Set(Some(to_index)),
        subject: Set(subject.chars().take(300).collect()),
        body: Set(body.into()),
        status: Set("pending".into()),
        attempts: Set(0),
        next_attempt_at: Set(now),
        locked_until: Set(None),
        last_error: Set(None),
        sent_at: Set(None),
        created_at: Set(now),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Delivery state of one notification message (addresses are not shown).
#[derive(Clone, Debug)]
pub struct MessageState {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub recipient_kind: String,
    pub status: String,
    pub attempts: i32,
    pub sent_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// The messages a breach notification queued, as far as the caller may see them (the
/// recorder sees all; an affected tenant its own).
pub async fn messages(
    db: &impl ConnectionTrait,
    p: &Principal,
    id: Uuid,
) -> DomainResult<Vec<MessageState>> {
    let b = get(db, p, id).await?;
    let mut q = email_outbox::Entity::find()
        .filter(email_outbox::Column::Topic.eq("breach"))
        .filter(email_outbox::Column::TopicId.eq(id));
    if !b.owned {
        q = q.filter(email_outbox::Column::TenantId.eq(p.tenant.id().as_uuid()));
    }
    Ok(q.order_by_asc(email_outbox::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(|m| MessageState {
            id: m.id,
            tenant_id: m.tenant_id,
            recipient_kind: m.recipient_kind,
            status: m.status,
            attempts: m.attempts,
            sent_at: m.sent_at,
            last_error: m.last_error,
        })
        .collect())
}

/// A message claimed for sending.
#[derive(Clone, Debug)]
pub struct OutgoingEmail {
    pub id: Uuid,
    pub attempts: i32,
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// Claims due messages (`FOR UPDATE SKIP LOCKED` on PostgreSQL), as for webhooks.
pub async fn claim_emails(
    db: &DatabaseConnection,
    vault: &Vault,
    now: DateTime<Utc>,
    lease: Duration,
    limit: u64,
) -> DomainResult<Vec<OutgoingEmail>> {
    let txn = db::begin_write(db).await?;
    let due = email_outbox::Entity::find()
        .filter(email_outbox::Column::Status.eq("pending"))
        .filter(email_outbox::Column::NextAttemptAt.lte(now))
        .filter(
            sea_orm::Condition::any()
                .add(email_outbox::Column::LockedUntil.is_null())
                .add(email_outbox::Column::LockedUntil.lt(now)),
        )
        .order_by_asc(email_outbox::Column::NextAttemptAt)
        .limit(limit)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .all(&txn)
        .await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    email_outbox::Entity::update_many()
        .col_expr(email_outbox::Column::LockedUntil, Expr::value(now + lease))
        .filter(email_outbox::Column::Id.is_in(due.iter().map(|d| d.id).collect::<Vec<_>>()))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    due.into_iter()
        .map(|m| {
            Ok(OutgoingEmail {
                id: m.id,
                attempts: m.attempts,
                to: vault.open_system(TO_ADDRESS, &m.to_address)?,
                subject: m.subject,
                body: m.body,
            })
        })
        .collect()
}

/// Records a send: `Ok` sent; `Err((error, retry_at))`, dead when `retry_at` is None.
pub async fn record_email(
    db: &DatabaseConnection,
    id: Uuid,
    result: Result<(), (String, Option<DateTime<Utc>>)>,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let none: Option<DateTime<Utc>> = None;
    let mut q = email_outbox::Entity::update_many()
        .col_expr(
            email_outbox::Column::Attempts,
            Expr::col(email_outbox::Column::Attempts).add(1),
        )
        .col_expr(email_outbox::Column::LockedUntil, Expr::value(none));
    q = match result {
        Ok(()) => q
            .col_expr(email_outbox::Column::Status, Expr::value("sent"))
            .col_expr(email_outbox::Column::SentAt, Expr::value(now)),
        Err((error, retry_at)) => {
            let q = q.col_expr(
                email_outbox::Column::LastError,
                Expr::value(error.chars().take(500).collect::<String>()),
            );
            match retry_at {
                Some(at) => q.col_expr(email_outbox::Column::NextAttemptAt, Expr::value(at)),
                None => q.col_expr(email_outbox::Column::Status, Expr::value("dead")),
            }
        }
    };
    let txn = db::begin_write(db).await?;
    q.filter(email_outbox::Column::Id.eq(id)).exec(&txn).await?;
    txn.commit().await?;
    Ok(())
}

/// Erasure: messages to the person's address go with them.
pub(crate) async fn forget_address(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
    email_index: &str,
) -> DomainResult<()> {
    email_outbox::Entity::delete_many()
        .filter(email_outbox::Column::TenantId.eq(tenant_id))
        .filter(email_outbox::Column::ToIndex.eq(email_index))
        .exec(db)
        .await?;
    Ok(())
}
