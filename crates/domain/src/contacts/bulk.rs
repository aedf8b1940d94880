//! The set-based path of bulk upserts: what the items refer to is read with one query per
//! kind (contacts by id or e-mail, companies, suppressed addresses), the items are applied in
//! order in memory with the same rules and the same errors as the one-by-one path, and the
//! result is written with multi-row statements (contacts, audit entries, events, webhook
//! deliveries). An item sees the effect of the items before it, as one by one.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

use super::{
    BatchItem, Contact, ItemOutcome, SuppressionGate, contact_event, email_taken, identifiable,
    redacted, row_indexed, unknown_company,
};
use crate::audit::{self, Actor, Event};
use crate::db::one_of;
use crate::entities::contact;
use crate::error::{DomainError, DomainResult};
use crate::ids::{CompanyId, ContactId};
use crate::suppression::Digester;
use crate::tenancy::Tenant;
use crate::values::{EmailAddress, Patch};

/// Changed contacts are written as upserts on their id.
const UPDATE: crate::db::Upsert = crate::db::Upsert {
    key: "id",
    update: &[
        "company_id",
        "first_name",
        "last_name",
        "email",
        "phone",
        "job_title",
        "updated_at",
        "version",
        "data_key",
        "email_index",
    ],
};

/// What the batch reads before it applies anything.
struct Known {
    contacts: HashMap<Uuid, Contact>,
    /// E-mail → contact, for every address an item names (kept current as items apply).
    by_email: HashMap<String, Uuid>,
    companies: HashSet<Uuid>,
    /// Addresses (normalised) on the tenant's suppression list.
    suppressed: HashSet<String>,
    /// Contacts this batch creates.
    created: HashSet<Uuid>,
    /// E-mail → its blind index, for every address an item names (computed once).
    email_index: HashMap<String, String>,
    /// The tenant's blind index, keyed once per call (for addresses no item names).
    digester: Digester,
}

/// Applies the items; `None` when the database refused the writes (a concurrent change): the
/// caller rolls back and applies the items one by one.
pub(super) async fn upsert(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    items: &[BatchItem],
    gate: &SuppressionGate<'_>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Option<Vec<ItemOutcome>>> {
    let mut known = read(db, tenant, items, gate).await?;
    // Contacts written, in the order items first touched them (an e-mail freed by one item
    // can be taken by a later one).
    let mut touched: Vec<Uuid> = Vec::new();
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    let mut audit_entries = Vec::new();
    for item in items {
        match apply(&mut known, tenant, item, gate, now) {
            Ok((outcome, details)) => {
                let (contact, action) = match &outcome {
                    Applied::Created(c) => (c, "contact.created"),
                    Applied::Updated(c) => (c, "contact.updated"),
                };
                let id = contact.id.as_uuid();
                if seen.insert(id) {
                    touched.push(id);
                }
                audit_entries.push(Event {
                    action,
                    object_type: "contact",
                    object_id: Some(id),
                    details,
                });
                out.push(match outcome {
                    Applied::Created(c) => ItemOutcome::Created(c),
                    Applied::Updated(c) => ItemOutcome::Updated(c),
                });
            }
            Err(e) => out.push(ItemOutcome::Failed(e)),
        }
    }
    // Changed contacts first, in the order items touched them (an address one gives up can
    // be taken by a later one or by a new contact), then the new ones with a plain insert.
    let (new, changed): (Vec<&Contact>, Vec<&Contact>) = touched
        .iter()
        .filter_map(|id| known.contacts.get(id))
        .partition(|c| known.created.contains(&c.id.as_uuid()));
    let to_rows = |contacts: Vec<&Contact>| -> Vec<contact::ActiveModel> {
        contacts
            .into_iter()
            .map(|c| {
                let index = c.email.as_ref().map(|e| match known.email_index.get(e) {
                    Some(index) => index.clone(),
                    None => known.digester.digest_normalised(e),
                });
                row_indexed(tenant, c, index)
            })
            .collect()
    };
    let (changed, new) = (to_rows(changed), to_rows(new));
    // The events (each item's contact as it left that item, sealed) are built while the
    // database writes the contacts: the same thread, in the time it would wait.
    let (written, events) = tokio::join!(write_contacts(db, changed, new), async {
        out.iter()
            .filter_map(|o| match o {
                ItemOutcome::Created(c) => Some(contact_event("contact.created", c)),
                ItemOutcome::Updated(c) => Some(contact_event("contact.updated", c)),
                ItemOutcome::Failed(_) => None,
            })
            .collect::<Vec<_>>()
    });
    if !written? {
        return Ok(None);
    }
    let lock = audit::record_many(db, tenant.id(), actor, audit_entries, now).await?;
    crate::events::emit_locked(db, &lock, events, now).await?;
    Ok(Some(out))
}

/// Writes the changed contacts (upserts on their id), then the new ones; `false` when the
/// database refused them (a concurrent change).
pub(super) async fn write_contacts(
    db: &impl ConnectionTrait,
    changed: Vec<contact::ActiveModel>,
    new: Vec<contact::ActiveModel>,
) -> DomainResult<bool> {
    for (rows, upsert) in [(changed, Some(&UPDATE)), (new, None)] {
        let n = rows.len() as u64;
        match crate::db::insert_rows(db, rows, upsert).await {
            Ok(count) if count == n => {}
            Ok(_) => return Ok(false),
            Err(e)
                if matches!(
                    e.sql_err(),
                    Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                ) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

async fn read(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    items: &[BatchItem],
    gate: &SuppressionGate<'_>,
) -> DomainResult<Known> {
    let tenant_id = tenant.id().as_uuid();
    let backend = db.get_database_backend();
    let ids: Vec<Uuid> = items
        .iter()
        .filter_map(|i| i.id.map(ContactId::as_uuid))
        .collect();
    let emails: Vec<&EmailAddress> = {
        let mut seen = HashSet::new();
        items
            .iter()
            .filter_map(|i| match &i.fields.email {
                Patch::Value(e) if seen.insert(e.as_str()) => Some(e),
                _ => None,
            })
            .collect()
    };
    let company_ids: Vec<Uuid> = items
        .iter()
        .filter_map(|i| match i.fields.company_id {
            Patch::Value(c) => Some(c.as_uuid()),
            _ => None,
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();

    // The blind index of each address is also its suppression digest.
    let digester = gate.vault.suppression().digester(tenant.id());
    let digests: HashMap<String, &EmailAddress> = emails
        .iter()
        .map(|e| (digester.digest_normalised(e.as_str()), *e))
        .collect();
    let mut contacts = HashMap::new();
    if !ids.is_empty() || !emails.is_empty() {
        let mut any = Condition::any();
        if !ids.is_empty() {
            any = any.add(one_of(backend, contact::Column::Id, ids));
        }
        if !emails.is_empty() {
            any = any.add(one_of(
                backend,
                contact::Column::EmailIndex,
                digests.keys().cloned(),
            ));
        }
        // Rows an item may change are locked (PostgreSQL; SQLite writers are serial).
        let found = contact::Entity::find()
            .filter(contact::Column::TenantId.eq(tenant_id))
            .filter(any)
            .lock_exclusive()
            .all(db)
            .await?;
        for m in found {
            contacts.insert(m.id, Contact::open(gate.vault, tenant, m)?);
        }
    }
    let by_email = contacts
        .values()
        .filter_map(|c| c.email.clone().map(|e| (e, c.id.as_uuid())))
        .collect();

    let companies = crate::companies::existing_companies(db, tenant, company_ids).await?;

    let mut suppressed = HashSet::new();
    for h in crate::suppression::suppressed_among(db, tenant.id(), digests.keys().cloned()).await? {
        if let Some(e) = digests.get(&h) {
            suppressed.insert(e.as_str().to_owned());
        }
    }
    let email_index = digests
        .into_iter()
        .map(|(index, e)| (e.as_str().to_owned(), index))
        .collect();
    Ok(Known {
        contacts,
        by_email,
        companies,
        suppressed,
        created: HashSet::new(),
        email_index,
        digester,
    })
}

enum Applied {
    Created(Contact),
    Updated(Contact),
}

/// One item, in memory, with the checks of the one-by-one path in its order. Returns the
/// outcome and the audit details.
fn apply(
    known: &mut Known,
    tenant: &Tenant,
    item: &BatchItem,
    gate: &SuppressionGate<'_>,
    now: DateTime<Utc>,
) -> DomainResult<(Applied, Option<serde_json::Value>)> {
    let f = &item.fields;
    let existing = match (item.id, &f.email) {
        (Some(id), _) => Some(id.as_uuid()),
        (None, Patch::Value(e)) => known.by_email.get(e.as_str()).copied(),
        _ => None,
    };
    let check_suppressed = |email: &EmailAddress| {
        super::admit(
            known.suppressed.contains(email.as_str()),
            gate.override_reason.as_deref(),
        )
    };
    let check_company = |company: &Patch<CompanyId>| match company {
        Patch::Value(c) if !known.companies.contains(&c.as_uuid()) => Err(unknown_company()),
        _ => Ok(()),
    };
    match existing {
        Some(id) => {
            let current = known
                .contacts
                .get(&id)
                .ok_or(DomainError::NotFound("contact"))?;
            if current.redacted_at.is_some() {
                return Err(redacted());
            }
            let overridden = match &f.email {
                Patch::Value(e) if current.email.as_deref() != Some(e.as_str()) => {
                    check_suppressed(e)?
                }
                _ => None,
            };
            check_company(&f.company_id)?;
            let next = f.applied_to(current.clone(), now);
            identifiable(&next.first_name, &next.last_name, &next.email)?;
            if let Some(e) = &next.email
                && known.by_email.get(e).is_some_and(|other| *other != id)
            {
                return Err(email_taken());
            }
            if next.email != current.email {
                if let Some(old) = &current.email {
                    known.by_email.remove(old);
                }
                if let Some(e) = &next.email {
                    known.by_email.insert(e.clone(), id);
                }
            }
            let mut details = serde_json::json!({"fields": f.fields()});
            if let Some(o) = overridden {
                details["suppression"] = o;
            }
            known.contacts.insert(id, next.clone());
            Ok((Applied::Updated(next), Some(details)))
        }
        None => {
            let email = f
                .email
                .clone()
                .apply_to(None)
                .map(|e| e.as_str().to_owned());
            let first_name = f.first_name.clone().apply_to(None);
            let last_name = f.last_name.clone().apply_to(None);
            identifiable(&first_name, &last_name, &email)?;
            check_company(&f.company_id)?;
            let overridden = match &f.email {
                Patch::Value(e) => check_suppressed(e)?,
                _ => None,
            };
            if let Some(e) = &email
                && known.by_email.contains_key(e)
            {
                return Err(email_taken());
            }
            let id = ContactId::new();
            let created = Contact {
                id,
                key: std::sync::Arc::new(gate.vault.new_data_key(tenant.id(), id.as_uuid())),
                key_stored: false,
                company_id: f.company_id.clone().apply_to(None),
                first_name,
                last_name,
                email,
                phone: f.phone.clone().apply_to(None),
                job_title: f.job_title.clone().apply_to(None),
                created_at: now,
                updated_at: now,
                version: 1,
                legal_hold: false,
                redacted_at: None,
            };
            let id = created.id.as_uuid();
            if let Some(e) = &created.email {
                known.by_email.insert(e.clone(), id);
            }
            known.contacts.insert(id, created.clone());
            known.created.insert(id);
            Ok((Applied::Created(created), overridden))
        }
    }
}
