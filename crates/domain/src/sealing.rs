//! Seals what was written in the clear before personal values were sealed (see [`crate::vault`]):
//! contact rows, their event payloads and consent texts, request notes, queued messages and
//! uploaded import files. Runs when the service starts (and by `crm migrate`), in batches of
//! one transaction each, and is idempotent: a sealed value is never sealed twice.

use std::collections::HashMap;

use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use crate::contacts::{self, Contact, SubjectKey};
use crate::entities::{consent, contact, dsr_request, email_outbox, event, import_job};
use crate::error::DomainResult;
use crate::ids::TenantId;
use crate::tenancy::Tenant;
use crate::vault::{self, Vault};

const BATCH: u64 = 1000;

/// What [`seal_older_rows`] sealed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sealed {
    pub contacts: u64,
    pub events: u64,
    pub consents: u64,
    pub requests: u64,
    pub messages: u64,
    pub imports: u64,
}

impl Sealed {
    pub fn total(&self) -> u64 {
        self.contacts + self.events + self.consents + self.requests + self.messages + self.imports
    }
}

pub async fn seal_older_rows(db: &DatabaseConnection, vault: &Vault) -> DomainResult<Sealed> {
    let mut done = Sealed::default();
    // Contacts first: the other rows are sealed with their keys.
    let mut after = None;
    loop {
        let (n, last) = seal_contacts(db, vault, after).await?;
        done.contacts += n;
        match last {
            Some(id) => after = Some(id),
            None => break,
        }
    }
    let mut after = None;
    loop {
        let (n, last) = seal_events(db, vault, after).await?;
        done.events += n;
        match last {
            Some(id) => after = Some(id),
            None => break,
        }
    }
    loop {
        let n = seal_consents(db, vault).await?;
        done.consents += n;
        if n < BATCH {
            break;
        }
    }
    done.requests = seal_requests(db, vault).await?;
    done.messages = seal_messages(db, vault).await?;
    done.imports = seal_imports(db, vault).await?;
    Ok(done)
}

/// The read of a batch of contacts in the clear (no data key) after `after`, in id order,
/// locked so a write in between cannot be overwritten with what was read. The partial index
/// `ix_contacts_in_clear` (migration 000014) holds exactly these rows: a start reads them, not
/// the table (public for the plan check in the end-to-end tests).
pub fn contacts_in_clear(after: Option<Uuid>) -> sea_orm::Select<contact::Entity> {
    let mut q = contact::Entity::find()
        .filter(contact::Column::DataKey.is_null())
        .order_by_asc(contact::Column::Id)
        .limit(BATCH)
        .lock_exclusive();
    if let Some(after) = after {
        q = q.filter(contact::Column::Id.gt(after));
    }
    q
}

/// One batch of contacts in the clear after `after` (in id order, so each batch starts where
/// the last one ended); answers how many and the last id (`None` when there are no more).
async fn seal_contacts(
    db: &DatabaseConnection,
    vault: &Vault,
    after: Option<Uuid>,
) -> DomainResult<(u64, Option<Uuid>)> {
    let txn = crate::db::begin_write(db).await?;
    let rows = contacts_in_clear(after).all(&txn).await?;
    let n = rows.len() as u64;
    // Stops only at an empty batch: rows another node sealed meanwhile drop out of a batch
    // (PostgreSQL re-checks them after the lock wait), so a short batch is not the end.
    let last = rows.last().map(|r| r.id);
    let mut models = Vec::with_capacity(rows.len());
    for m in rows {
        let tenant = Tenant::scoped(TenantId::from_uuid(m.tenant_id));
        // A row without a key opens as clear text and gets a new key.
        let c = Contact::open(vault, &tenant, m)?;
        models.push(contacts::row(vault, &tenant, &c));
    }
    crate::db::insert_rows(&txn, models, Some(&contacts::SEAL_UPSERT)).await?;
    txn.commit().await?;
    Ok((n, last))
}

/// One batch of a contact event's payloads in the clear; answers the last event id looked at
/// (`None` when there are no more).
async fn seal_events(
    db: &DatabaseConnection,
    vault: &Vault,
    after: Option<Uuid>,
) -> DomainResult<(u64, Option<Uuid>)> {
    let txn = crate::db::begin_write(db).await?;
    // Payloads in the clear are JSON objects; sealed ones are JSON strings.
    let mut q = event::Entity::find()
        .filter(event::Column::Payload.like("{%"))
        .filter(event::Column::ObjectType.eq("contact"))
        .filter(event::Column::EventType.is_in(["contact.created", "contact.updated"]))
        .filter(event::Column::SubjectContactId.is_not_null())
        .order_by_asc(event::Column::Id)
        .limit(BATCH);
    if let Some(after) = after {
        q = q.filter(event::Column::Id.gt(after));
    }
    let rows = q.all(&txn).await?;
    let last = (rows.len() as u64 == BATCH)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    // Payloads already reduced to ids (erased or deleted contacts) stay as they are.
    let ids_only = |p: &str| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(p).is_ok_and(|m| {
            m.keys()
                .all(|k| ["id", "erased", "deleted"].contains(&k.as_str()))
        })
    };
    let clear: Vec<event::Model> = rows.into_iter().filter(|r| !ids_only(&r.payload)).collect();
    let keys = keys_for(
        &txn,
        vault,
        clear
            .iter()
            .filter_map(|r| r.subject_contact_id.map(|c| (r.tenant_id, c))),
    )
    .await?;
    let mut n = 0;
    for r in clear {
        let Some(subject) = r.subject_contact_id else {
            continue;
        };
        let sealed = match (
            keys.get(&subject),
            serde_json::from_str::<serde_json::Value>(&r.payload),
        ) {
            (Some(SubjectKey::Open(key)), Ok(payload)) => {
                crate::events::sealed_payload(key, &payload).to_string()
            }
            // The contact is gone: its events keep ids only.
            (None, _) => serde_json::json!({"id": r.object_id, "deleted": true}).to_string(),
            // Its row is not sealed yet (another node is sealing it, or an older version
            // wrote it): left for a later pass.
            _ => continue,
        };
        // Only if unchanged since it was read (an erasure may have scrubbed it meanwhile).
        event::Entity::update_many()
            .col_expr(event::Column::Payload, Expr::value(sealed))
            .filter(event::Column::Id.eq(r.id))
            .filter(event::Column::Payload.eq(r.payload.clone()))
            .exec(&txn)
            .await?;
        n += 1;
    }
    txn.commit().await?;
    Ok((n, last))
}

async fn keys_for(
    db: &impl ConnectionTrait,
    vault: &Vault,
    subjects: impl Iterator<Item = (Uuid, Uuid)>,
) -> DomainResult<HashMap<Uuid, SubjectKey>> {
    let mut by_tenant: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (t, c) in subjects {
        by_tenant.entry(t).or_default().push(c);
    }
    let mut keys = HashMap::new();
    for (t, ids) in by_tenant {
        keys.extend(contacts::data_keys(db, vault, TenantId::from_uuid(t), ids).await?);
    }
    Ok(keys)
}

/// The row still holds what was read: sealing never overwrites a change made meanwhile (a
/// redaction, an erasure, an edit on another node).
fn unchanged(col: impl ColumnTrait, old: &Option<String>) -> sea_orm::Condition {
    match old {
        Some(v) => sea_orm::Condition::all().add(col.eq(v.clone())),
        None => sea_orm::Condition::all().add(col.is_null()),
    }
}

/// A value that does not start with `prefix`, compared case-sensitively on both databases
/// (SQLite's `LIKE` ignores case, so a value in the clear starting with `S1:` would slip by).
fn lacks_prefix(col: impl ColumnTrait + Copy, prefix: &str) -> sea_orm::sea_query::Expr {
    use sea_orm::sea_query::{ExprTrait, Func, SimpleExpr};
    Expr::expr(SimpleExpr::from(
        Func::cust("substr")
            .arg(Expr::col(col))
            .arg(1)
            .arg(prefix.len() as i32),
    ))
    .ne(prefix)
}

fn not_sealed(col: impl ColumnTrait + Copy, prefix: &str) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(col.is_not_null())
        .add(lacks_prefix(col, prefix))
}

async fn seal_consents(db: &DatabaseConnection, vault: &Vault) -> DomainResult<u64> {
    let txn = crate::db::begin_write(db).await?;
    let rows = consent::Entity::find()
        .filter(
            sea_orm::Condition::any()
                .add(not_sealed(consent::Column::Source, vault::SEALED))
                .add(not_sealed(consent::Column::Evidence, vault::SEALED)),
        )
        .order_by_asc(consent::Column::Id)
        .limit(BATCH)
        .all(&txn)
        .await?;
    // Counts what it sealed: the caller stops at a short batch, so a row that cannot be
    // sealed (no key) never makes it loop.
    let mut n = 0;
    let keys = keys_for(
        &txn,
        vault,
        rows.iter().map(|r| (r.tenant_id, r.contact_id)),
    )
    .await?;
    for r in rows {
        let Some(SubjectKey::Open(key)) = keys.get(&r.contact_id) else {
            continue;
        };
        n += 1;
        let seal = |field, v: Option<String>| match v {
            Some(v) if !vault::is_sealed(&v) => Some(key.seal(field, &v)),
            other => other,
        };
        consent::Entity::update_many()
            .set(consent::ActiveModel {
                source: Set(seal(crate::consents::SOURCE, r.source.clone())),
                evidence: Set(seal(crate::consents::EVIDENCE, r.evidence.clone())),
                ..Default::default()
            })
            .filter(consent::Column::Id.eq(r.id))
            .filter(unchanged(consent::Column::Source, &r.source))
            .filter(unchanged(consent::Column::Evidence, &r.evidence))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(n)
}

async fn seal_requests(db: &DatabaseConnection, vault: &Vault) -> DomainResult<u64> {
    let txn = crate::db::begin_write(db).await?;
    let rows = dsr_request::Entity::find()
        .filter(
            sea_orm::Condition::any()
                .add(not_sealed(
                    dsr_request::Column::ExtensionReason,
                    vault::SYSTEM,
                ))
                .add(not_sealed(dsr_request::Column::Outcome, vault::SYSTEM)),
        )
        .all(&txn)
        .await?;
    let n = rows.len() as u64;
    for r in rows {
        let seal = |field, v: Option<String>| match v {
            Some(v) if !vault::is_system_sealed(&v) => Some(vault.seal_system(field, &v)),
            other => other,
        };
        dsr_request::Entity::update_many()
            .set(dsr_request::ActiveModel {
                extension_reason: Set(seal(
                    crate::dsr::EXTENSION_REASON,
                    r.extension_reason.clone(),
                )),
                outcome: Set(seal(crate::dsr::OUTCOME, r.outcome.clone())),
                ..Default::default()
            })
            .filter(dsr_request::Column::Id.eq(r.id))
            .filter(unchanged(
                dsr_request::Column::ExtensionReason,
                &r.extension_reason,
            ))
            .filter(unchanged(dsr_request::Column::Outcome, &r.outcome))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(n)
}

async fn seal_messages(db: &DatabaseConnection, vault: &Vault) -> DomainResult<u64> {
    let txn = crate::db::begin_write(db).await?;
    let rows = email_outbox::Entity::find()
        .filter(lacks_prefix(email_outbox::Column::ToAddress, vault::SYSTEM))
        .all(&txn)
        .await?;
    let n = rows.len() as u64;
    for r in rows {
        let (to, index) = crate::breaches::sealed_address(vault, r.tenant_id, &r.to_address);
        email_outbox::Entity::update_many()
            .col_expr(email_outbox::Column::ToAddress, Expr::value(to))
            .col_expr(email_outbox::Column::ToIndex, Expr::value(index))
            .filter(email_outbox::Column::Id.eq(r.id))
            .filter(email_outbox::Column::ToAddress.eq(r.to_address.clone()))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(n)
}

async fn seal_imports(db: &DatabaseConnection, vault: &Vault) -> DomainResult<u64> {
    let txn = crate::db::begin_write(db).await?;
    let rows = import_job::Entity::find()
        .filter(import_job::Column::Payload.ne(""))
        .filter(lacks_prefix(import_job::Column::Payload, vault::SYSTEM))
        .all(&txn)
        .await?;
    let n = rows.len() as u64;
    for r in rows {
        import_job::Entity::update_many()
            .col_expr(
                import_job::Column::Payload,
                Expr::value(crate::imports::sealed_payload(vault, &r.payload)),
            )
            .filter(import_job::Column::Id.eq(r.id))
            .filter(import_job::Column::Payload.eq(r.payload.clone()))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(n)
}

/// What [`rewrap_all`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rewrapped {
    /// Contact data keys now wrapped by the current KEK.
    pub data_keys: u64,
    /// Values sealed under a KEK directly, sealed again under the current one.
    pub values: u64,
}

/// Values sealed under a KEK directly: (table, column, associated data).
const SYSTEM_SEALED: &[(&str, &str, &str)] = &[
    (
        "dsr_requests",
        "extension_reason",
        crate::dsr::EXTENSION_REASON,
    ),
    ("dsr_requests", "outcome", crate::dsr::OUTCOME),
    ("email_outbox", "to_address", crate::breaches::TO_ADDRESS),
    ("import_jobs", "payload", crate::imports::PAYLOAD),
    ("idempotency_keys", "body_enc", crate::idempotency::BODY),
];

/// A column's values sealed under a KEK directly.
async fn system_sealed_values(
    db: &impl ConnectionTrait,
    table: &str,
    column: &str,
) -> DomainResult<Vec<String>> {
    use sea_orm::Statement;
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT {column} AS v FROM {table} WHERE {column} LIKE '{}%'",
                vault::SYSTEM
            ),
        ))
        .await?;
    rows.iter()
        .map(|r| r.try_get::<String>("", "v").map_err(Into::into))
        .collect()
}

/// Key rotation: wraps every contact's data key with the vault's current (newest) KEK and
/// seals again what is sealed under an older KEK directly. Afterwards the older KEKs open
/// nothing the database holds live — only copies of erased people's keys in old row
/// versions, WAL and backups — and can be destroyed once no backup that needs them is kept.
pub async fn rewrap_all(db: &DatabaseConnection, vault: &Vault) -> DomainResult<Rewrapped> {
    let mut done = Rewrapped::default();
    let mut after: Option<Uuid> = None;
    loop {
        let txn = crate::db::begin_write(db).await?;
        let mut q = contact::Entity::find()
            .select_only()
            .column(contact::Column::Id)
            .column(contact::Column::TenantId)
            .column(contact::Column::DataKey)
            .filter(contact::Column::DataKey.is_not_null())
            .order_by_asc(contact::Column::Id)
            .limit(BATCH);
        if let Some(after) = after {
            q = q.filter(contact::Column::Id.gt(after));
        }
        let rows: Vec<(Uuid, Uuid, Option<Vec<u8>>)> = q.into_tuple().all(&txn).await?;
        let Some(last) = rows.last().map(|r| r.0) else {
            break;
        };
        for (id, tenant, wrapped) in rows {
            let Some(wrapped) = wrapped else { continue };
            if let Some(new) = vault.rewrap(TenantId::from_uuid(tenant), id, &wrapped)? {
                contact::Entity::update_many()
                    .col_expr(contact::Column::DataKey, Expr::value(new))
                    .filter(contact::Column::Id.eq(id))
                    .filter(contact::Column::DataKey.eq(wrapped))
                    .exec(&txn)
                    .await?;
                done.data_keys += 1;
            }
        }
        txn.commit().await?;
        after = Some(last);
    }
    for (table, column, purpose) in SYSTEM_SEALED {
        done.values += reseal_column(db, vault, table, column, purpose).await?;
    }
    Ok(done)
}

/// Seals a column's KEK-sealed values again under the current KEK, row by row (keyed by the
/// sealed value itself, so a row changed meanwhile is left to the next run).
async fn reseal_column(
    db: &DatabaseConnection,
    vault: &Vault,
    table: &str,
    column: &str,
    purpose: &str,
) -> DomainResult<u64> {
    use sea_orm::Statement;
    let backend = db.get_database_backend();
    let txn = crate::db::begin_write(db).await?;
    let mut n = 0;
    for old in system_sealed_values(&txn, table, column).await? {
        if let Some(new) = vault.reseal_system(purpose, &old)? {
            let placeholders = match backend {
                sea_orm::DbBackend::Postgres => ("$1", "$2"),
                _ => ("?", "?"),
            };
            txn.execute_raw(Statement::from_sql_and_values(
                backend,
                format!(
                    "UPDATE {table} SET {column} = {} WHERE {column} = {}",
                    placeholders.0, placeholders.1
                ),
                [new.into(), old.into()],
            ))
            .await?;
            n += 1;
        }
    }
    txn.commit().await?;
    Ok(n)
}

/// How many stored keys and values are still under KEK `id` (before deleting it, this must
/// be none).
pub async fn count_under(db: &DatabaseConnection, id: u16) -> DomainResult<u64> {
    let mut n = 0;
    let mut after: Option<Uuid> = None;
    loop {
        let mut q = contact::Entity::find()
            .select_only()
            .column(contact::Column::Id)
            .column(contact::Column::DataKey)
            .filter(contact::Column::DataKey.is_not_null())
            .order_by_asc(contact::Column::Id)
            .limit(10 * BATCH);
        if let Some(after) = after {
            q = q.filter(contact::Column::Id.gt(after));
        }
        let rows: Vec<(Uuid, Option<Vec<u8>>)> = q.into_tuple().all(db).await?;
        let Some(last) = rows.last().map(|r| r.0) else {
            break;
        };
        n += rows
            .iter()
            .filter(|(_, w)| w.as_deref().and_then(vault::kek_of_wrapped) == Some(id))
            .count() as u64;
        after = Some(last);
    }
    for (table, column, _) in SYSTEM_SEALED {
        n += system_sealed_values(db, table, column)
            .await?
            .iter()
            .filter(|v| vault::kek_of_system(v) == Some(id))
            .count() as u64;
    }
    Ok(n)
}
