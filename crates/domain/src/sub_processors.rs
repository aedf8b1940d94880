//! The processor's published register of sub-processors (name, purpose, data categories,
//! location, transfer safeguards, since/until) and its change history. Platform admins keep
//! it; every tenant reads it, and exports list the active ones as recipients.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
};
use serde_json::json;
use uuid::Uuid;

use crate::entities::{sub_processor, sub_processor_change};
use crate::error::{DomainError, DomainResult};
use crate::values::Patch;
use crate::{check_version, db};

#[derive(Clone, Debug, serde::Serialize)]
pub struct SubProcessor {
    pub id: Uuid,
    pub name: String,
    pub purpose: String,
    pub data_categories: Vec<String>,
    pub location: String,
    pub transfer_safeguards: String,
    pub since: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
}

fn to_record(m: sub_processor::Model, now: DateTime<Utc>) -> SubProcessor {
    SubProcessor {
        active: m.since <= now && m.until.is_none_or(|u| u > now),
        id: m.id,
        name: m.name,
        purpose: m.purpose,
        data_categories: serde_json::from_str(&m.data_categories).unwrap_or_default(),
        location: m.location,
        transfer_safeguards: m.transfer_safeguards,
        since: m.since,
        until: m.until,
        created_at: m.created_at,
        updated_at: m.updated_at,
        version: m.version,
    }
}

#[derive(Debug)]
pub struct NewSubProcessor {
    pub name: String,
    pub purpose: String,
    pub data_categories: Vec<String>,
    pub location: String,
    pub transfer_safeguards: String,
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
pub struct SubProcessorChanges {
    pub name: Option<String>,
    pub purpose: Option<String>,
    pub data_categories: Option<Vec<String>>,
    pub location: Option<String>,
    pub transfer_safeguards: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Set to end the engagement; `null` to undo.
    pub until: Patch<DateTime<Utc>>,
}

#[derive(Clone, Debug)]
pub struct Change {
    pub id: Uuid,
    pub sub_processor_id: Uuid,
    /// `added`, `updated` or `removed`.
    pub change: String,
    pub changed_at: DateTime<Utc>,
    pub snapshot: serde_json::Value,
}

async fn record_change(
    db: &impl ConnectionTrait,
    sp: &SubProcessor,
    change: &str,
    actor_id: Option<Uuid>,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    sub_processor_change::Entity::insert(sub_processor_change::ActiveModel {
        id: Set(Uuid::now_v7()),
        sub_processor_id: Set(sp.id),
        change: Set(change.to_owned()),
        actor_id: Set(actor_id),
        snapshot: Set(json!(sp)),
        changed_at: Set(now),
    })
    .exec_without_returning(db)
    .await?;
    crate::events::sub_processor_changed(db, sp.id, change, &json!(sp), now).await
}

pub async fn create(
    db: &DatabaseConnection,
    input: NewSubProcessor,
    actor_id: Option<Uuid>,
    now: DateTime<Utc>,
) -> DomainResult<SubProcessor> {
    let txn = db::begin_write(db).await?;
    let id = Uuid::now_v7();
    sub_processor::Entity::insert(sub_processor::ActiveModel {
        id: Set(id),
        name: Set(input.name),
        purpose: Set(input.purpose),
        data_categories: Set(json!(input.data_categories).to_string()),
        location: Set(input.location),
        transfer_safeguards: Set(input.transfer_safeguards),
        since: Set(input.since.unwrap_or(now)),
        until: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        version: Set(1),
    })
    .exec_without_returning(&txn)
    .await?;
    let sp = get(&txn, id, now).await?;
    record_change(&txn, &sp, "added", actor_id, now).await?;
    txn.commit().await?;
    Ok(sp)
}

pub async fn get(
    db: &impl ConnectionTrait,
    id: Uuid,
    now: DateTime<Utc>,
) -> DomainResult<SubProcessor> {
    sub_processor::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(|m| to_record(m, now))
        .ok_or(DomainError::NotFound("sub_processor"))
}

pub async fn list(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
) -> DomainResult<Vec<SubProcessor>> {
    Ok(sub_processor::Entity::find()
        .order_by_asc(sub_processor::Column::Name)
        .order_by_asc(sub_processor::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(|m| to_record(m, now))
        .collect())
}

pub async fn update(
    db: &DatabaseConnection,
    id: Uuid,
    changes: SubProcessorChanges,
    if_match: Option<i32>,
    actor_id: Option<Uuid>,
    now: DateTime<Utc>,
) -> DomainResult<SubProcessor> {
    let txn = db::begin_write(db).await?;
    let current = get(&txn, id, now).await?;
    check_version(if_match, current.version)?;
    let ending = matches!(changes.until, Patch::Value(_)) && current.until.is_none();
    let result = sub_processor::Entity::update_many()
        .set(sub_processor::ActiveModel {
            name: Set(changes.name.unwrap_or(current.name.clone())),
            purpose: Set(changes.purpose.unwrap_or(current.purpose.clone())),
            data_categories: Set(json!(
                changes
                    .data_categories
                    .unwrap_or(current.data_categories.clone())
            )
            .to_string()),
            location: Set(changes.location.unwrap_or(current.location.clone())),
            transfer_safeguards: Set(changes
                .transfer_safeguards
                .unwrap_or(current.transfer_safeguards.clone())),
            since: Set(changes.since.unwrap_or(current.since)),
            until: Set(changes.until.apply_to(current.until)),
            updated_at: Set(now),
            version: Set(current.version + 1),
            ..Default::default()
        })
        .filter(sub_processor::Column::Id.eq(id))
        .filter(sub_processor::Column::Version.eq(current.version))
        .exec(&txn)
        .await?;
    crate::expect_one_row(result.rows_affected)?;
    let sp = get(&txn, id, now).await?;
    if let (Some(since), Some(until)) = (Some(sp.since), sp.until)
        && until <= since
    {
        return Err(DomainError::invalid(
            "/until",
            "before_since",
            "must be after since",
        ));
    }
    record_change(
        &txn,
        &sp,
        if ending { "removed" } else { "updated" },
        actor_id,
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(sp)
}

pub async fn changes(db: &impl ConnectionTrait) -> DomainResult<Vec<Change>> {
    Ok(sub_processor_change::Entity::find()
        .order_by_asc(sub_processor_change::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(|c| Change {
            id: c.id,
            sub_processor_id: c.sub_processor_id,
            change: c.change,
            changed_at: c.changed_at,
            snapshot: c.snapshot,
        })
        .collect())
}
