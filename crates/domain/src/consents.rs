//! Consent and lawful basis: tenant-defined purposes, and per contact and purpose an
//! append-only history of records (granted or withdrawn) with the lawful basis of
//! Art. 6(1)(a)–(f), channel, source and evidence. The latest record is the current state, so
//! a withdrawal takes effect the moment it is written.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
};
use uuid::Uuid;

use crate::audit::{self, Actor, Event};
use crate::entities::{consent, purpose};
use crate::error::{DomainError, DomainResult, InvalidValue};
use crate::ids::ContactId;
use crate::tenancy::Tenant;
use crate::vault::Vault;
use crate::{conflict_on_unique, db};

/// Art. 6(1) GDPR.
pub const LAWFUL_BASES: [&str; 6] = [
    "consent",
    "contract",
    "legal_obligation",
    "vital_interests",
    "public_task",
    "legitimate_interests",
];

pub const CHANNELS: [&str; 8] = [
    "email",
    "sms",
    "phone",
    "post",
    "web",
    "in_person",
    "api",
    "other",
];

pub fn parse_lawful_basis(raw: &str) -> Result<String, InvalidValue> {
    LAWFUL_BASES
        .contains(&raw)
        .then(|| raw.to_owned())
        .ok_or_else(|| {
            InvalidValue::new(
                "invalid_lawful_basis",
                format!("must be one of {}", LAWFUL_BASES.join(", ")),
            )
        })
}

pub fn parse_channel(raw: &str) -> Result<String, InvalidValue> {
    CHANNELS
        .contains(&raw)
        .then(|| raw.to_owned())
        .ok_or_else(|| {
            InvalidValue::new(
                "invalid_channel",
                format!("must be one of {}", CHANNELS.join(", ")),
            )
        })
}

/// A purpose key: 1–64 of `a-z 0-9 _ -`.
pub fn parse_purpose_key(raw: &str) -> Result<String, InvalidValue> {
    let ok = (1..=64).contains(&raw.len())
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    ok.then(|| raw.to_owned()).ok_or_else(|| {
        InvalidValue::new(
            "invalid_key",
            "must be 1-64 characters of a-z, 0-9, _ and -",
        )
    })
}

#[derive(Clone, Debug)]
pub struct Purpose {
    pub id: Uuid,
    pub key: String,
    pub name: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<purpose::Model> for Purpose {
    fn from(p: purpose::Model) -> Self {
        Purpose {
            id: p.id,
            key: p.key,
            name: p.name,
            description: p.description,
            created_at: p.created_at,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ConsentRecord {
    pub id: Uuid,
    pub contact_id: Uuid,
    pub purpose: String,
    pub status: String,
    pub lawful_basis: String,
    pub channel: String,
    pub source: Option<String>,
    pub evidence: Option<String>,
    pub recorded_by: Option<Uuid>,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug)]
pub struct NewConsent {
    pub purpose_key: String,
    /// `true` grants, `false` withdraws.
    pub granted: bool,
    pub lawful_basis: String,
    pub channel: String,
    pub source: Option<String>,
    pub evidence: Option<String>,
}

pub async fn create_purpose(
    db: &DatabaseConnection,
    tenant: &Tenant,
    key: String,
    name: String,
    description: Option<String>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Purpose> {
    let txn = db::begin_write(db).await?;
    let id = Uuid::now_v7();
    purpose::Entity::insert(purpose::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant.id().as_uuid()),
        key: Set(key.clone()),
        name: Set(name.clone()),
        description: Set(description.clone()),
        created_at: Set(now),
    })
    .exec_without_returning(&txn)
    .await
    .map_err(|e| conflict_on_unique(e, "purpose_exists", "a purpose with this key exists"))?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "purpose.created",
            object_type: "purpose",
            object_id: Some(id),
            details: Some(serde_json::json!({"key": key})),
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(Purpose {
        id,
        key,
        name,
        description,
        created_at: now,
    })
}

pub async fn list_purposes(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
) -> DomainResult<Vec<Purpose>> {
    Ok(purpose::Entity::find()
        .filter(purpose::Column::TenantId.eq(tenant.id().as_uuid()))
        .order_by_asc(purpose::Column::Key)
        .all(db)
        .await?
        .into_iter()
        .map(Purpose::from)
        .collect())
}

async fn purpose_by_key(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    key: &str,
) -> DomainResult<purpose::Model> {
    purpose::Entity::find()
        .filter(purpose::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(purpose::Column::Key.eq(key))
        .one(db)
        .await?
        .ok_or(DomainError::NotFound("purpose"))
}

/// Associated data of the sealed free-text fields: where a consent came from and its
/// evidence may name the person, so both are sealed with the contact's data key.
pub(crate) const SOURCE: &str = "consents.source";
pub(crate) const EVIDENCE: &str = "consents.evidence";

/// Appends a consent record (a grant or a withdrawal) for one contact and purpose.
pub async fn record_consent(
    db: &DatabaseConnection,
    vault: &Vault,
    tenant: &Tenant,
    contact_id: ContactId,
    input: NewConsent,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<ConsentRecord> {
    let txn = db::begin_write(db).await?;
    let key = crate::contacts::subject_key(&txn, vault, tenant, contact_id, true).await?;
    let purpose = match purpose_by_key(&txn, tenant, &input.purpose_key).await {
        Err(DomainError::NotFound(_)) => {
            return Err(DomainError::invalid(
                "/purpose",
                "unknown_purpose",
                "no purpose with this key exists",
            ));
        }
        other => other?,
    };
    let id = Uuid::now_v7();
    let status = if input.granted {
        "granted"
    } else {
        "withdrawn"
    };
    consent::Entity::insert(consent::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant.id().as_uuid()),
        contact_id: Set(contact_id.as_uuid()),
        purpose_id: Set(purpose.id),
        status: Set(status.into()),
        lawful_basis: Set(input.lawful_basis.clone()),
        channel: Set(input.channel.clone()),
        source: Set(key.seal_opt(SOURCE, input.source.as_deref())),
        evidence: Set(key.seal_opt(EVIDENCE, input.evidence.as_deref())),
        recorded_by: Set(actor.actor_id),
        recorded_at: Set(now),
    })
    .exec_without_returning(&txn)
    .await?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: if input.granted { "consent.granted" } else { "consent.withdrawn" },
            object_type: "contact",
            object_id: Some(contact_id.as_uuid()),
            details: Some(serde_json::json!({"consent_id": id, "purpose": purpose.key, "lawful_basis": input.lawful_basis})),
        },
        now,
    )
    .await?;
    // Partners see a withdrawal at once (webhook and change feed); ids and codes only.
    crate::events::emit(
        &txn,
        tenant.id(),
        crate::events::NewEvent {
            event_type: if input.granted {
                "consent.granted"
            } else {
                "consent.withdrawn"
            },
            object_type: "consent",
            object_id: Some(id),
            subject_contact_id: Some(contact_id.as_uuid()),
            payload: serde_json::json!({
                "id": id,
                "contact_id": contact_id.as_uuid(),
                "purpose": purpose.key,
                "status": status,
                "lawful_basis": input.lawful_basis,
                "channel": input.channel,
                "recorded_at": now,
            }),
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(ConsentRecord {
        id,
        contact_id: contact_id.as_uuid(),
        purpose: purpose.key,
        status: status.into(),
        lawful_basis: input.lawful_basis,
        channel: input.channel,
        source: input.source,
        evidence: input.evidence,
        recorded_by: actor.actor_id,
        recorded_at: now,
    })
}

/// Withdraws consent for a purpose in one call: a withdrawal record with the basis of the
/// current record. Fails with 404 when there is no record for the purpose.
// The vault and actor travel with every write; grouping them would only hide that.
#[allow(clippy::too_many_arguments)]
pub async fn withdraw(
    db: &DatabaseConnection,
    vault: &Vault,
    tenant: &Tenant,
    contact_id: ContactId,
    purpose_key: &str,
    channel: String,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<ConsentRecord> {
    let (current, _) = history(db, vault, tenant, contact_id).await?;
    let latest = current
        .into_iter()
        .find(|c| c.purpose == purpose_key)
        .ok_or(DomainError::NotFound("consent"))?;
    record_consent(
        db,
        vault,
        tenant,
        contact_id,
        NewConsent {
            purpose_key: purpose_key.to_owned(),
            granted: false,
            lawful_basis: latest.lawful_basis,
            channel,
            source: None,
            evidence: None,
        },
        actor,
        now,
    )
    .await
}

/// The current state per purpose and the full history, oldest first.
pub async fn history(
    db: &impl ConnectionTrait,
    vault: &Vault,
    tenant: &Tenant,
    contact_id: ContactId,
) -> DomainResult<(Vec<ConsentRecord>, Vec<ConsentRecord>)> {
    let key = crate::contacts::subject_key(db, vault, tenant, contact_id, false).await?;
    let purposes: BTreeMap<Uuid, String> = purpose::Entity::find()
        .filter(purpose::Column::TenantId.eq(tenant.id().as_uuid()))
        .all(db)
        .await?
        .into_iter()
        .map(|p| (p.id, p.key))
        .collect();
    let rows = consent::Entity::find()
        .filter(consent::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(consent::Column::ContactId.eq(contact_id.as_uuid()))
        .order_by_asc(consent::Column::Id)
        .all(db)
        .await?;
    let history: Vec<ConsentRecord> = rows
        .into_iter()
        .map(|r| {
            Ok(ConsentRecord {
                id: r.id,
                contact_id: r.contact_id,
                purpose: purposes.get(&r.purpose_id).cloned().unwrap_or_default(),
                status: r.status,
                lawful_basis: r.lawful_basis,
                channel: r.channel,
                source: key.open_stored(SOURCE, r.source)?,
                evidence: key.open_stored(EVIDENCE, r.evidence)?,
                recorded_by: r.recorded_by,
                recorded_at: r.recorded_at,
            })
        })
        .collect::<DomainResult<_>>()?;
    let mut current: BTreeMap<String, ConsentRecord> = BTreeMap::new();
    for r in &history {
        current.insert(r.purpose.clone(), r.clone());
    }
    Ok((current.into_values().collect(), history))
}
