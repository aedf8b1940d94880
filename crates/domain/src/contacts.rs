//! Contacts: the people a tenant keeps data about (data subjects).

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, FromQueryResult,
    QueryFilter, QuerySelect,
};

use std::collections::HashMap;
use std::sync::Arc;

use crate::audit::{self, Actor, Event};
use crate::companies::company_exists;
use crate::entities::{contact, dsr_request, order};
use crate::error::{DomainError, DomainResult};
use crate::ids::{CompanyId, ContactId};
use crate::pagination::{Page, PageRequest};
use crate::suppression::is_digest_suppressed;
use crate::tenancy::Tenant;
use crate::values::{EmailAddress, Patch};
use crate::vault::{DataKey, Vault};
use crate::{check_version, conflict_on_unique, db};

mod bulk;
mod grouped;

#[derive(Clone, Debug)]
pub struct Contact {
    pub id: ContactId,
    pub company_id: Option<CompanyId>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub job_title: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
    pub legal_hold: bool,
    /// Set once the contact was redacted: identifying values are placeholders.
    pub redacted_at: Option<DateTime<Utc>>,
    /// The contact's own data key: every identifying value is stored sealed with it.
    pub(crate) key: Arc<DataKey>,
    /// Whether the row holds that key already (an update then leaves the stored, possibly
    /// since re-wrapped, key alone); false for a new contact or a row written in the clear.
    pub(crate) key_stored: bool,
}

/// Creating or changing a contact's e-mail to a suppressed (erased) address is refused unless
/// the caller overrides with a reason, which is recorded in the audit trail.
pub struct SuppressionGate<'a> {
    /// The keys of personal data (the suppression digest is the e-mail's blind index).
    pub vault: &'a Vault,
    pub override_reason: Option<String>,
}

impl Contact {
    /// Opens a stored row with its data key. A row written before values were sealed (its
    /// values are in the clear) gets a new key, which its next write uses.
    pub(crate) fn open(vault: &Vault, tenant: &Tenant, m: contact::Model) -> DomainResult<Self> {
        let (key, sealed) = match &m.data_key {
            Some(wrapped) => (vault.data_key(tenant.id(), m.id, wrapped)?, true),
            None => (vault.new_data_key(tenant.id(), m.id), false),
        };
        let open = |field: &str, v: Option<String>| {
            if sealed {
                key.open_opt(field, v)
            } else {
                Ok(v)
            }
        };
        Ok(Contact {
            id: ContactId::from_uuid(m.id),
            company_id: m.company_id.map(CompanyId::from_uuid),
            first_name: open("first_name", m.first_name)?,
            last_name: open("last_name", m.last_name)?,
            email: open("email", m.email)?,
            phone: open("phone", m.phone)?,
            job_title: open("job_title", m.job_title)?,
            created_at: m.created_at,
            updated_at: m.updated_at,
            version: m.version,
            legal_hold: m.legal_hold,
            redacted_at: m.redacted_at,
            key: Arc::new(key),
            key_stored: sealed,
        })
    }
}

#[derive(Debug, Default)]
pub struct NewContact {
    pub company_id: Option<CompanyId>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<EmailAddress>,
    pub phone: Option<String>,
    pub job_title: Option<String>,
}

#[derive(Debug, Default)]
pub struct ContactChanges {
    pub company_id: Patch<CompanyId>,
    pub first_name: Patch<String>,
    pub last_name: Patch<String>,
    pub email: Patch<EmailAddress>,
    pub phone: Patch<String>,
    pub job_title: Patch<String>,
}

impl ContactChanges {
    /// The contact after this patch: the next version, changed now.
    fn applied_to(&self, current: Contact, now: DateTime<Utc>) -> Contact {
        Contact {
            company_id: self.company_id.clone().apply_to(current.company_id),
            first_name: self.first_name.clone().apply_to(current.first_name),
            last_name: self.last_name.clone().apply_to(current.last_name),
            email: self
                .email
                .clone()
                .map(|e| e.as_str().to_owned())
                .apply_to(current.email),
            phone: self.phone.clone().apply_to(current.phone),
            job_title: self.job_title.clone().apply_to(current.job_title),
            updated_at: now,
            version: current.version + 1,
            ..current
        }
    }

    /// The names of the fields the patch sets or clears (for the audit trail).
    fn fields(&self) -> Vec<&'static str> {
        [
            ("company_id", self.company_id.is_absent()),
            ("first_name", self.first_name.is_absent()),
            ("last_name", self.last_name.is_absent()),
            ("email", self.email.is_absent()),
            ("phone", self.phone.is_absent()),
            ("job_title", self.job_title.is_absent()),
        ]
        .into_iter()
        .filter(|(_, absent)| !absent)
        .map(|(name, _)| name)
        .collect()
    }
}

#[derive(Debug, Default)]
pub struct ContactFilter {
    pub email: Option<EmailAddress>,
    pub company_id: Option<CompanyId>,
    /// Case-insensitive substring of first name, last name or e-mail. The values are sealed,
    /// so this is matched after opening, over at most [`Q_SCAN_ROWS`] rows per page.
    pub q: Option<String>,
    pub updated_since: Option<DateTime<Utc>>,
}

/// The row of a contact: identifying values sealed with its data key, the e-mail's blind
/// index beside it.
pub(crate) fn row(vault: &Vault, tenant: &Tenant, c: &Contact) -> contact::ActiveModel {
    let index = c
        .email
        .as_deref()
        .map(|e| vault.email_index_normalised(tenant.id(), e));
    row_indexed(tenant, c, index)
}

/// [`row`] with the e-mail's blind index already computed.
pub(crate) fn row_indexed(
    tenant: &Tenant,
    c: &Contact,
    email_index: Option<String>,
) -> contact::ActiveModel {
    let k = &c.key;
    contact::ActiveModel {
        id: Set(c.id.as_uuid()),
        tenant_id: Set(tenant.id().as_uuid()),
        company_id: Set(c.company_id.map(CompanyId::as_uuid)),
        first_name: Set(k.seal_opt("first_name", c.first_name.as_deref())),
        last_name: Set(k.seal_opt("last_name", c.last_name.as_deref())),
        email: Set(k.seal_opt("email", c.email.as_deref())),
        phone: Set(k.seal_opt("phone", c.phone.as_deref())),
        job_title: Set(k.seal_opt("job_title", c.job_title.as_deref())),
        created_at: Set(c.created_at),
        updated_at: Set(c.updated_at),
        version: Set(c.version),
        legal_hold: Set(c.legal_hold),
        redacted_at: Set(c.redacted_at),
        data_key: Set(Some(k.wrapped().to_vec())),
        email_index: Set(email_index),
    }
}

/// Sealing a row written in the clear overwrites its personal values, its key and index.
pub(crate) const SEAL_UPSERT: db::Upsert = db::Upsert {
    key: "id",
    update: &[
        "first_name",
        "last_name",
        "email",
        "phone",
        "job_title",
        "data_key",
        "email_index",
    ],
};

/// The data keys of some of a tenant's contacts (those that exist).
pub(crate) async fn data_keys(
    db: &impl ConnectionTrait,
    vault: &Vault,
    tenant: crate::ids::TenantId,
    ids: Vec<uuid::Uuid>,
) -> DomainResult<HashMap<uuid::Uuid, SubjectKey>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(uuid::Uuid, Option<Vec<u8>>)> = contact::Entity::find()
        .select_only()
        .column(contact::Column::Id)
        .column(contact::Column::DataKey)
        .filter(contact::Column::TenantId.eq(tenant.as_uuid()))
        .filter(db::one_of(
            db.get_database_backend(),
            contact::Column::Id,
            ids,
        ))
        .into_tuple()
        .all(db)
        .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for (id, wrapped) in rows {
        let key = match wrapped {
            None => SubjectKey::NotSealed,
            Some(w) => match vault.data_key(tenant, id, &w) {
                Ok(k) => SubjectKey::Open(Box::new(k)),
                Err(e) => {
                    log::error!("contact {id}: {e}");
                    SubjectKey::Unreadable
                }
            },
        };
        out.insert(id, key);
    }
    Ok(out)
}

/// A contact's key as [`data_keys`] finds it (a contact that does not exist is not there).
pub(crate) enum SubjectKey {
    Open(Box<DataKey>),
    /// The row was written in the clear by an earlier version and is not sealed yet.
    NotSealed,
    /// Its key does not open (a key-encryption key missing from the key directory).
    Unreadable,
}

/// The data key of one contact, to seal what is written about them (consent evidence);
/// not found when the contact does not exist in the tenant. A writer passes `for_write`: the
/// contact row stays locked until its transaction ends, so a redaction (which replaces the
/// key) cannot slip in between and leave the new value sealed with a discarded key.
pub(crate) async fn subject_key(
    db: &impl ConnectionTrait,
    vault: &Vault,
    tenant: &Tenant,
    id: ContactId,
    for_write: bool,
) -> DomainResult<DataKey> {
    let mut q = contact::Entity::find()
        .select_only()
        .column(contact::Column::DataKey)
        .filter(contact::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(contact::Column::Id.eq(id.as_uuid()));
    if for_write {
        q = q.lock_exclusive();
    }
    let wrapped: Option<Option<Vec<u8>>> = q.into_tuple().one(db).await?;
    match wrapped {
        None => Err(DomainError::NotFound("contact")),
        Some(Some(w)) => vault.data_key(tenant.id(), id.as_uuid(), &w),
        Some(None) => Err(DomainError::Internal(
            "contact row not sealed yet (run the service once to seal older rows)".into(),
        )),
    }
}

/// Refuses a suppressed address unless overridden; returns the audit details of an override.
/// Takes the address's digest (its blind index, computed once for the check and the row).
async fn check_suppressed(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    email_index: Option<&str>,
    override_reason: Option<&str>,
) -> DomainResult<Option<serde_json::Value>> {
    let Some(digest) = email_index else {
        return Ok(None);
    };
    admit(
        is_digest_suppressed(db, tenant.id(), digest).await?,
        override_reason,
    )
}

/// Lets an address through unless it is suppressed and not overridden; answers the audit
/// details of an override.
fn admit(
    suppressed: bool,
    override_reason: Option<&str>,
) -> DomainResult<Option<serde_json::Value>> {
    if !suppressed {
        return Ok(None);
    }
    match override_reason {
        Some(reason) => Ok(Some(
            serde_json::json!({"suppression_overridden": true, "reason": reason}),
        )),
        None => Err(DomainError::Conflict {
            code: "email_suppressed",
            detail: "this address belongs to an erased person and is suppressed; \
                     send suppression_override_reason to record why it may be stored again"
                .into(),
        }),
    }
}

fn email_taken() -> DomainError {
    DomainError::Conflict {
        code: "email_taken",
        detail: EMAIL_TAKEN.into(),
    }
}

fn redacted() -> DomainError {
    DomainError::Conflict {
        code: "contact_redacted",
        detail: "a redacted contact cannot be changed".into(),
    }
}

fn unknown_company() -> DomainError {
    DomainError::invalid(
        "/company_id",
        "unknown_company",
        "no company with this id exists",
    )
}

const EMAIL_TAKEN: &str = "a contact with this e-mail address exists already";

fn identifiable(
    first: &Option<String>,
    last: &Option<String>,
    email: &Option<String>,
) -> DomainResult<()> {
    if first.is_none() && last.is_none() && email.is_none() {
        return Err(DomainError::invalid(
            "",
            "empty_contact",
            "a contact needs at least one of first_name, last_name or email",
        ));
    }
    Ok(())
}

async fn check_company(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    id: Option<CompanyId>,
) -> DomainResult<()> {
    if let Some(id) = id
        && !company_exists(db, tenant, id).await?
    {
        return Err(unknown_company());
    }
    Ok(())
}

/// The contact as partners see it in events (the same fields as the API).
pub fn event_payload(c: &Contact) -> EventPayload<'_> {
    EventPayload {
        company_id: c.company_id.map(CompanyId::as_uuid),
        created_at: c.created_at,
        email: c.email.as_deref(),
        first_name: c.first_name.as_deref(),
        id: c.id.as_uuid(),
        job_title: c.job_title.as_deref(),
        last_name: c.last_name.as_deref(),
        phone: c.phone.as_deref(),
        updated_at: c.updated_at,
        version: c.version,
    }
}

/// A contact as its events carry it, serialised straight from the contact (a bulk upsert
/// writes a thousand). Fields in name order, as the JSON object they replace had them.
#[derive(serde::Serialize)]
pub struct EventPayload<'a> {
    company_id: Option<uuid::Uuid>,
    created_at: DateTime<Utc>,
    email: Option<&'a str>,
    first_name: Option<&'a str>,
    id: uuid::Uuid,
    job_title: Option<&'a str>,
    last_name: Option<&'a str>,
    phone: Option<&'a str>,
    updated_at: DateTime<Utc>,
    version: i32,
}

/// A contact's event: its payload names the person, so it is sealed with their data key
/// (readers open it while the contact exists).
fn contact_event(event_type: &'static str, c: &Contact) -> crate::events::NewEvent {
    crate::events::NewEvent {
        event_type,
        object_type: "contact",
        object_id: Some(c.id.as_uuid()),
        subject_contact_id: Some(c.id.as_uuid()),
        payload: crate::events::sealed_payload(&c.key, &event_payload(c)),
    }
}

/// Creates a contact in a transaction with its audit entry and event. On SQLite, creations
/// that arrive while another is being written are written together in the next transaction,
/// each with its own checks and answer (see `contacts::grouped`).
pub async fn create_contact(
    db: &DatabaseConnection,
    tenant: &Tenant,
    input: NewContact,
    gate: &SuppressionGate<'_>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Contact> {
    // Sealing, the blind index and the event's payload need no database: done before the
    // transaction, which on SQLite holds the one writer turn while it lasts.
    let pending = grouped::Pending {
        tenant: *tenant,
        row: NewRow::prepare(tenant, input, gate, now)?,
        override_reason: gate.override_reason.clone(),
        actor: actor.clone(),
        now,
    };
    match grouped::create(db, pending).await {
        Ok(created) => created,
        Err(pending) => pending.create_alone(db).await,
    }
}

async fn create_in(
    txn: &impl ConnectionTrait,
    tenant: &Tenant,
    input: NewContact,
    gate: &SuppressionGate<'_>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Contact> {
    NewRow::prepare(tenant, input, gate, now)?
        .insert(txn, tenant, gate.override_reason.as_deref(), actor, now)
        .await
}

/// A new contact ready to be written: its row sealed with a new data key, its blind index
/// and its event.
#[derive(Clone)]
struct NewRow {
    contact: Contact,
    row: contact::ActiveModel,
    /// The blind index of its address (also the suppression digest).
    index: Option<String>,
    event: crate::events::NewEvent,
}

impl NewRow {
    fn prepare(
        tenant: &Tenant,
        input: NewContact,
        gate: &SuppressionGate<'_>,
        now: DateTime<Utc>,
    ) -> DomainResult<Self> {
        let email = input.email.as_ref().map(|e| e.as_str().to_owned());
        identifiable(&input.first_name, &input.last_name, &email)?;
        let index = input
            .email
            .as_ref()
            .map(|e| gate.vault.email_index(tenant.id(), e));
        let id = ContactId::new();
        let key = Arc::new(gate.vault.new_data_key(tenant.id(), id.as_uuid()));
        // What the row holds: the values written (timestamps come truncated to what the
        // databases store).
        let contact = Contact {
            id,
            company_id: input.company_id,
            first_name: input.first_name,
            last_name: input.last_name,
            email,
            phone: input.phone,
            job_title: input.job_title,
            created_at: now,
            updated_at: now,
            version: 1,
            legal_hold: false,
            redacted_at: None,
            key,
            key_stored: false,
        };
        Ok(NewRow {
            row: row_indexed(tenant, &contact, index.clone()),
            event: contact_event("contact.created", &contact),
            contact,
            index,
        })
    }

    /// Checks its company and the suppression list, then writes it, its audit entry and its
    /// event.
    async fn insert(
        self,
        txn: &impl ConnectionTrait,
        tenant: &Tenant,
        override_reason: Option<&str>,
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> DomainResult<Contact> {
        let NewRow {
            contact,
            row,
            index,
            event,
        } = self;
        check_company(txn, tenant, contact.company_id).await?;
        let overridden = check_suppressed(txn, tenant, index.as_deref(), override_reason).await?;
        contact::Entity::insert(row)
            .exec_without_returning(txn)
            .await
            .map_err(|e| conflict_on_unique(e, "email_taken", EMAIL_TAKEN))?;
        let lock = audit::record(
            txn,
            tenant.id(),
            actor,
            Event {
                action: "contact.created",
                object_type: "contact",
                object_id: Some(contact.id.as_uuid()),
                details: overridden,
            },
            now,
        )
        .await?;
        crate::events::emit_locked(txn, &lock, vec![event], now).await?;
        Ok(contact)
    }
}

pub async fn get_contact(
    db: &DatabaseConnection,
    vault: &Vault,
    tenant: &Tenant,
    id: ContactId,
) -> DomainResult<Contact> {
    // The hottest read: a fixed statement straight on the pool.
    let row = db::fixed_one(db, GET_CONTACT_SQL, &get_contact_params(tenant, id)).await?;
    open_contact(vault, tenant, row)
}

/// [`get_contact`] inside a transaction.
async fn get_contact_in(
    txn: &impl ConnectionTrait,
    vault: &Vault,
    tenant: &Tenant,
    id: ContactId,
) -> DomainResult<Contact> {
    let row = db::fixed_one_in(txn, GET_CONTACT_SQL, &get_contact_params(tenant, id)).await?;
    open_contact(vault, tenant, row)
}

fn get_contact_params(tenant: &Tenant, id: ContactId) -> [db::Param<'static>; 2] {
    [
        db::Param::Uuid(tenant.id().as_uuid()),
        db::Param::Uuid(id.as_uuid()),
    ]
}

fn open_contact(
    vault: &Vault,
    tenant: &Tenant,
    row: Option<sea_orm::QueryResult>,
) -> DomainResult<Contact> {
    use sea_orm::FromQueryResult;
    let row = row.ok_or(DomainError::NotFound("contact"))?;
    Contact::open(vault, tenant, ByPosition::from_query_result(&row, "")?.0)
}

/// A contact row decoded by column position — the entity's column order, which is what
/// `contact::Entity::find()` and [`GET_CONTACT_SQL`] select — instead of looking every value's
/// column up by name (a visible share of a list page's CPU). The positions are the entity's
/// own (`Column` follows the model's field order); the unit test below checks the fixed
/// statement selects in that order.
struct ByPosition(contact::Model);

/// A contact row decoded by position straight from sqlx's row: sea-orm's decoding formats
/// an error message for every NULL value before it turns it into `None` (a contact's NULL
/// columns, per row of a page).
macro_rules! by_position {
    ($row:expr) => {{
        use contact::Column as C;
        use sea_orm::sqlx::Row as _;
        let r = $row;
        let f = db::sqlx_failed;
        contact::Model {
            id: r.try_get(C::Id as usize).map_err(f)?,
            tenant_id: r.try_get(C::TenantId as usize).map_err(f)?,
            company_id: r.try_get(C::CompanyId as usize).map_err(f)?,
            first_name: r.try_get(C::FirstName as usize).map_err(f)?,
            last_name: r.try_get(C::LastName as usize).map_err(f)?,
            email: r.try_get(C::Email as usize).map_err(f)?,
            phone: r.try_get(C::Phone as usize).map_err(f)?,
            job_title: r.try_get(C::JobTitle as usize).map_err(f)?,
            created_at: r.try_get(C::CreatedAt as usize).map_err(f)?,
            updated_at: r.try_get(C::UpdatedAt as usize).map_err(f)?,
            version: r.try_get(C::Version as usize).map_err(f)?,
            legal_hold: r.try_get(C::LegalHold as usize).map_err(f)?,
            redacted_at: r.try_get(C::RedactedAt as usize).map_err(f)?,
            data_key: r.try_get(C::DataKey as usize).map_err(f)?,
            email_index: r.try_get(C::EmailIndex as usize).map_err(f)?,
        }
    }};
}

impl sea_orm::FromQueryResult for ByPosition {
    fn from_query_result(res: &sea_orm::QueryResult, _pre: &str) -> Result<Self, sea_orm::DbErr> {
        if let Some(row) = res.try_as_pg_row() {
            return Ok(ByPosition(by_position!(row)));
        }
        if let Some(row) = res.try_as_sqlite_row() {
            return Ok(ByPosition(by_position!(row)));
        }
        use contact::Column as C;
        Ok(ByPosition(contact::Model {
            id: res.try_get_by_index(C::Id as usize)?,
            tenant_id: res.try_get_by_index(C::TenantId as usize)?,
            company_id: res.try_get_by_index(C::CompanyId as usize)?,
            first_name: res.try_get_by_index(C::FirstName as usize)?,
            last_name: res.try_get_by_index(C::LastName as usize)?,
            email: res.try_get_by_index(C::Email as usize)?,
            phone: res.try_get_by_index(C::Phone as usize)?,
            job_title: res.try_get_by_index(C::JobTitle as usize)?,
            created_at: res.try_get_by_index(C::CreatedAt as usize)?,
            updated_at: res.try_get_by_index(C::UpdatedAt as usize)?,
            version: res.try_get_by_index(C::Version as usize)?,
            legal_hold: res.try_get_by_index(C::LegalHold as usize)?,
            redacted_at: res.try_get_by_index(C::RedactedAt as usize)?,
            data_key: res.try_get_by_index(C::DataKey as usize)?,
            email_index: res.try_get_by_index(C::EmailIndex as usize)?,
        }))
    }
}

/// A contact's columns in the entity's order (what [`ByPosition`] decodes), as a literal for
/// `concat!`.
macro_rules! select_contacts {
    () => {
        "SELECT id, tenant_id, company_id, first_name, last_name, email, phone, job_title, \
         created_at, updated_at, version, legal_hold, redacted_at, data_key, email_index \
         FROM contacts"
    };
}

const CONTACT_COLUMNS_SQL: &str = select_contacts!();

const GET_CONTACT_SQL: &str = concat!(
    select_contacts!(),
    " WHERE tenant_id = $1 AND id = $2 LIMIT 1"
);

pub(crate) async fn contact_exists(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    id: ContactId,
) -> DomainResult<bool> {
    Ok(contact::Entity::find()
        .select_only()
        .column(contact::Column::Id)
        .filter(contact::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(contact::Column::Id.eq(id.as_uuid()))
        .into_tuple::<uuid::Uuid>()
        .one(db)
        .await?
        .is_some())
}

/// The statement of a page of contacts: the tenant's, after the cursor, with the filters
/// given, in id order. Written out here rather than with sea-query (a list's statement was
/// built on every request): fixed text and placeholders only, the values bound. The limit is
/// bound on PostgreSQL (one prepared statement for any page size) and written into the text
/// on SQLite, which plans a bound `LIMIT ?` with the value of the time and so prepares such a
/// statement again at every execution.
fn list_statement<'a>(
    backend: DbBackend,
    tenant: &Tenant,
    filter: &ContactFilter,
    email_index: Option<&'a str>,
    after: Option<uuid::Uuid>,
    limit: u64,
) -> (String, Vec<db::Param<'a>>) {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(320);
    sql.push_str(CONTACT_COLUMNS_SQL);
    sql.push_str(" WHERE tenant_id = $1");
    let mut params = vec![db::Param::Uuid(tenant.id().as_uuid())];
    let mut and = |sql: &mut String, condition: &str, p: db::Param<'a>| {
        params.push(p);
        // Writing to a String cannot fail.
        let _ = write!(sql, " AND {condition} ${}", params.len());
    };
    if let Some(after) = after {
        and(&mut sql, "id >", db::Param::Uuid(after));
    }
    if let Some(index) = email_index {
        and(&mut sql, "email_index =", db::Param::Text(index));
    }
    if let Some(company) = filter.company_id {
        and(&mut sql, "company_id =", db::Param::Uuid(company.as_uuid()));
    }
    if let Some(since) = filter.updated_since {
        and(&mut sql, "updated_at >=", db::Param::Time(since));
    }
    sql.push_str(" ORDER BY id ASC LIMIT ");
    if backend == DbBackend::Sqlite {
        let _ = write!(sql, "{limit}");
    } else {
        params.push(db::Param::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        let _ = write!(sql, "${}", params.len());
    }
    (sql, params)
}

/// A page filtered with `q` examines at most this many contacts; when it stops there, it
/// holds the matches found so far (maybe none) and a cursor to go on from.
pub const Q_SCAN_ROWS: u64 = 2_000;

pub async fn list_contacts(
    db: &DatabaseConnection,
    vault: &Vault,
    tenant: &Tenant,
    filter: ContactFilter,
    page: PageRequest,
) -> DomainResult<Page<Contact>> {
    let email_index = filter
        .email
        .as_ref()
        .map(|e| vault.email_index(tenant.id(), e));
    let (filter, email_index) = (&filter, email_index.as_deref());
    let select = move |after: Option<uuid::Uuid>, limit: u64| async move {
        let backend = db.get_database_backend();
        let (sql, params) = list_statement(backend, tenant, filter, email_index, after, limit);
        let rows = db::fixed_all(db, sql, &params).await?;
        rows.iter()
            .map(|r| Ok(ByPosition::from_query_result(r, "")?.0))
            .collect::<DomainResult<Vec<_>>>()
    };
    let Some(text) = filter.q.as_deref() else {
        let rows = select(page.after, page.limit + 1)
            .await?
            .into_iter()
            .map(|m| Contact::open(vault, tenant, m))
            .collect::<DomainResult<Vec<_>>>()?;
        return Ok(Page::from_rows(rows, page.limit, |c| c.id.as_uuid()));
    };
    // Sealed values cannot be matched in SQL: open and match here, batch by batch.
    let needle = text.to_lowercase();
    let matches = |v: &Option<String>| {
        v.as_deref()
            .is_some_and(|v| v.to_lowercase().contains(&needle))
    };
    let mut found = Vec::new();
    let mut after = page.after;
    let mut scanned = 0;
    loop {
        let batch = std::cmp::min(Q_SCAN_ROWS - scanned, 500);
        let rows = select(after, batch).await?;
        let exhausted = (rows.len() as u64) < batch;
        for m in rows {
            scanned += 1;
            after = Some(m.id);
            let c = Contact::open(vault, tenant, m)?;
            if matches(&c.first_name) || matches(&c.last_name) || matches(&c.email) {
                found.push(c);
                if found.len() as u64 > page.limit {
                    return Ok(Page::from_rows(found, page.limit, |c| c.id.as_uuid()));
                }
            }
        }
        if exhausted {
            return Ok(Page {
                data: found,
                next_cursor: None,
            });
        }
        if scanned >= Q_SCAN_ROWS {
            return Ok(Page {
                data: found,
                next_cursor: after.map(crate::pagination::encode_cursor),
            });
        }
    }
}

// The gate and actor travel with every write; grouping them would only hide that.
#[allow(clippy::too_many_arguments)]
pub async fn update_contact(
    db: &DatabaseConnection,
    tenant: &Tenant,
    id: ContactId,
    changes: ContactChanges,
    if_match: Option<i32>,
    gate: &SuppressionGate<'_>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Contact> {
    let txn = db::begin_write(db).await?;
    let updated = update_in(&txn, tenant, id, changes, if_match, gate, actor, now).await?;
    txn.commit().await?;
    Ok(updated)
}

#[allow(clippy::too_many_arguments)]
async fn update_in(
    txn: &impl ConnectionTrait,
    tenant: &Tenant,
    id: ContactId,
    changes: ContactChanges,
    if_match: Option<i32>,
    gate: &SuppressionGate<'_>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Contact> {
    let current = get_contact_in(txn, gate.vault, tenant, id).await?;
    check_version(if_match, current.version)?;
    if current.redacted_at.is_some() {
        return Err(redacted());
    }
    let changed = changes.fields();
    let new_email = match &changes.email {
        Patch::Value(e) if current.email.as_deref() != Some(e.as_str()) => Some(e.clone()),
        _ => None,
    };
    let new_index = new_email
        .as_ref()
        .map(|e| gate.vault.email_index(tenant.id(), e));
    let overridden = check_suppressed(
        txn,
        tenant,
        new_index.as_deref(),
        gate.override_reason.as_deref(),
    )
    .await?;
    if let Patch::Value(company) = &changes.company_id {
        check_company(txn, tenant, Some(*company)).await?;
    }
    let version = current.version;
    let updated = changes.applied_to(current, now);
    identifiable(&updated.first_name, &updated.last_name, &updated.email)?;
    // A new address's index is the one just checked; an unchanged one's is computed again.
    let index = new_index.or_else(|| {
        updated
            .email
            .as_deref()
            .map(|e| gate.vault.email_index_normalised(tenant.id(), e))
    });
    let mut set = row_indexed(tenant, &updated, index);
    set.id = sea_orm::ActiveValue::NotSet;
    set.tenant_id = sea_orm::ActiveValue::NotSet;
    set.created_at = sea_orm::ActiveValue::NotSet;
    set.legal_hold = sea_orm::ActiveValue::NotSet;
    set.redacted_at = sea_orm::ActiveValue::NotSet;
    if updated.key_stored {
        // Key rotation may have re-wrapped it since it was read: never write back the old wrap.
        set.data_key = sea_orm::ActiveValue::NotSet;
    }
    let result = contact::Entity::update_many()
        .set(set)
        .filter(contact::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(contact::Column::Id.eq(id.as_uuid()))
        .filter(contact::Column::Version.eq(version))
        .exec(txn)
        .await
        .map_err(|e| conflict_on_unique(e, "email_taken", EMAIL_TAKEN))?;
    crate::expect_one_row(result.rows_affected)?;
    let mut details = serde_json::json!({"fields": changed});
    if let Some(o) = overridden {
        details["suppression"] = o;
    }
    let lock = audit::record(
        txn,
        tenant.id(),
        actor,
        Event {
            action: "contact.updated",
            object_type: "contact",
            object_id: Some(id.as_uuid()),
            details: Some(details),
        },
        now,
    )
    .await?;
    let event = contact_event("contact.updated", &updated);
    crate::events::emit_locked(txn, &lock, vec![event], now).await?;
    Ok(updated)
}

/// Deletes a contact. Orders are business records and stay, without the link to the person.
pub async fn delete_contact(
    db: &DatabaseConnection,
    tenant: &Tenant,
    id: ContactId,
    if_match: Option<i32>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let txn = db::begin_write(db).await?;
    let tid = tenant.id().as_uuid();
    let version: i32 = contact::Entity::find()
        .select_only()
        .column(contact::Column::Version)
        .filter(contact::Column::TenantId.eq(tid))
        .filter(contact::Column::Id.eq(id.as_uuid()))
        .into_tuple()
        .one(&txn)
        .await?
        .ok_or(DomainError::NotFound("contact"))?;
    check_version(if_match, version)?;
    // The register of requests is kept (the controller's record of compliance), detached.
    dsr_request::Entity::update_many()
        .col_expr(
            dsr_request::Column::ContactId,
            Expr::value(Option::<uuid::Uuid>::None),
        )
        .filter(dsr_request::Column::TenantId.eq(tid))
        .filter(dsr_request::Column::ContactId.eq(id.as_uuid()))
        .exec(&txn)
        .await?;
    order::Entity::update_many()
        .col_expr(
            order::Column::ContactId,
            Expr::value(Option::<uuid::Uuid>::None),
        )
        .col_expr(order::Column::UpdatedAt, Expr::value(now))
        .col_expr(
            order::Column::Version,
            Expr::col(order::Column::Version).add(1),
        )
        .filter(order::Column::TenantId.eq(tid))
        .filter(order::Column::ContactId.eq(id.as_uuid()))
        .exec(&txn)
        .await?;
    let deleted = contact::Entity::delete_many()
        .filter(contact::Column::TenantId.eq(tid))
        .filter(contact::Column::Id.eq(id.as_uuid()))
        .filter(contact::Column::Version.eq(version))
        .exec(&txn)
        .await?;
    crate::expect_one_row(deleted.rows_affected)?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "contact.deleted",
            object_type: "contact",
            object_id: Some(id.as_uuid()),
            details: None,
        },
        now,
    )
    .await?;
    // A tombstone: ids only.
    crate::events::emit(
        &txn,
        tenant.id(),
        crate::events::NewEvent {
            event_type: "contact.deleted",
            object_type: "contact",
            object_id: Some(id.as_uuid()),
            subject_contact_id: Some(id.as_uuid()),
            payload: serde_json::json!({"id": id.as_uuid()}),
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

/// One item of a bulk upsert: the contact's fields as a merge patch, and optionally its id.
#[derive(Debug, Default)]
pub struct BatchItem {
    pub id: Option<ContactId>,
    pub fields: ContactChanges,
}

/// What became of one item.
#[derive(Debug)]
pub enum ItemOutcome {
    Created(Contact),
    Updated(Contact),
    Failed(DomainError),
}

/// Upserts many contacts in **one transaction**, each item under its own savepoint: an item
/// that fails (invalid, unknown company, suppressed address, taken e-mail, unknown id) is
/// rolled back alone and reported; the others are committed together. An item with `id`
/// updates that contact; one whose e-mail matches an existing contact updates it; any other
/// creates a contact. Suppressed addresses are refused per item (no override in bulk).
pub async fn upsert_batch(
    db: &DatabaseConnection,
    tenant: &Tenant,
    items: Vec<BatchItem>,
    vault: &Vault,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Vec<ItemOutcome>> {
    let gate = SuppressionGate {
        vault,
        override_reason: None,
    };
    let txn = db::begin_write(db).await?;
    let out = upsert_batch_in(&txn, tenant, items, &gate, actor, now).await?;
    txn.commit().await?;
    Ok(out)
}

/// [`upsert_batch`] inside a transaction the caller commits (imports record their progress
/// in the same transaction).
pub(crate) async fn upsert_batch_in(
    txn: &crate::db::WriteTxn,
    tenant: &Tenant,
    items: Vec<BatchItem>,
    gate: &SuppressionGate<'_>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Vec<ItemOutcome>> {
    // The set-based path answers almost every call; when the database disagrees with what it
    // read (a row written concurrently, an e-mail handed between contacts in an order it
    // cannot replay), it is rolled back and the items are applied one by one.
    let sp = txn.savepoint().await?;
    match bulk::upsert(&sp, tenant, &items, gate, actor, now).await? {
        Some(out) => {
            sp.commit().await?;
            return Ok(out);
        }
        None => {
            log::info!("bulk upsert: the database refused the set-based writes; one by one");
            sp.rollback().await?;
        }
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let sp = txn.savepoint().await?;
        let result = upsert_one(&sp, tenant, item, gate, actor, now).await;
        match result {
            Ok(outcome) => {
                sp.commit().await?;
                out.push(outcome);
            }
            Err(
                e @ (DomainError::Invalid(_)
                | DomainError::Conflict { .. }
                | DomainError::NotFound(_)
                | DomainError::PreconditionFailed),
            ) => {
                sp.rollback().await?;
                out.push(ItemOutcome::Failed(e));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

async fn upsert_one(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    item: BatchItem,
    gate: &SuppressionGate<'_>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<ItemOutcome> {
    let existing = match (item.id, &item.fields.email) {
        (Some(id), _) => Some(id),
        (None, Patch::Value(email)) => contact::Entity::find()
            .select_only()
            .column(contact::Column::Id)
            .filter(contact::Column::TenantId.eq(tenant.id().as_uuid()))
            .filter(contact::Column::EmailIndex.eq(gate.vault.email_index(tenant.id(), email)))
            .into_tuple::<uuid::Uuid>()
            .one(db)
            .await?
            .map(ContactId::from_uuid),
        _ => None,
    };
    match existing {
        Some(id) => update_in(db, tenant, id, item.fields, None, gate, actor, now)
            .await
            .map(ItemOutcome::Updated),
        None => {
            let f = item.fields;
            let input = NewContact {
                company_id: f.company_id.apply_to(None),
                first_name: f.first_name.apply_to(None),
                last_name: f.last_name.apply_to(None),
                email: f.email.apply_to(None),
                phone: f.phone.apply_to(None),
                job_title: f.job_title.apply_to(None),
            };
            create_in(db, tenant, input, gate, actor, now)
                .await
                .map(ItemOutcome::Created)
        }
    }
}

#[cfg(test)]
mod position_tests {
    use sea_orm::{IdenStatic, Iterable};

    use crate::entities::contact;

    #[test]
    fn rows_read_by_position_follow_the_entity_and_the_fixed_statement() {
        // A column's position is its place in the entity, as selects list them.
        for (k, c) in contact::Column::iter().enumerate() {
            assert_eq!(c as usize, k, "{}", c.as_str());
        }
        let entity: Vec<&str> = contact::Column::iter().map(|c| c.as_str()).collect();
        for sql in [super::GET_CONTACT_SQL, super::CONTACT_COLUMNS_SQL] {
            let selected = sql
                .split(" FROM ")
                .next()
                .and_then(|s| s.strip_prefix("SELECT "))
                .map(|s| s.split(", ").map(str::trim).collect::<Vec<_>>());
            assert_eq!(selected, Some(entity.clone()), "{sql}");
        }
    }

    #[test]
    fn a_list_statement_binds_every_value_and_numbers_its_placeholders() {
        use super::*;
        let tenant = Tenant::scoped(crate::ids::TenantId::from_uuid(uuid::Uuid::nil()));
        let filter = ContactFilter {
            company_id: Some(CompanyId::from_uuid(uuid::Uuid::nil())),
            updated_since: Some(Utc::now()),
            ..Default::default()
        };
        let after = Some(uuid::Uuid::max());
        let (sql, params) = list_statement(
            DbBackend::Postgres,
            &tenant,
            &filter,
            Some("idx"),
            after,
            51,
        );
        assert!(
            sql.ends_with(
                " WHERE tenant_id = $1 AND id > $2 AND email_index = $3 AND company_id = $4 \
             AND updated_at >= $5 ORDER BY id ASC LIMIT $6"
            ),
            "{sql}"
        );
        assert_eq!(params.len(), 6);
        assert!(matches!(params[2], db::Param::Text("idx")));
        assert!(matches!(params[5], db::Param::Int(51)));
        let (sql, params) = list_statement(
            DbBackend::Sqlite,
            &tenant,
            &ContactFilter::default(),
            None,
            None,
            51,
        );
        assert!(
            sql.ends_with(" WHERE tenant_id = $1 ORDER BY id ASC LIMIT 51"),
            "{sql}"
        );
        assert_eq!(params.len(), 1);
    }
}
