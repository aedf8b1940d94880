//! `/v1/contacts`: the people a tenant keeps data about.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use crm_domain::contacts::{
    self, Contact, ContactChanges, ContactFilter, NewContact, SuppressionGate,
};
use crm_domain::ids::{CompanyId, ContactId};
use crm_domain::values::{EmailAddress, phone};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{QueryErrors, created, if_match, list_type, path_id, with_etag};
use crate::auth::{ContactsRead, ContactsWrite};
use crate::input::{self, Input, text};
use crate::problem::ApiError;
use crate::state::AppState;

/// A contact as stored.
#[derive(Serialize, ToSchema)]
pub struct ContactOut {
    pub id: Uuid,
    pub company_id: Option<Uuid>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Normalised to lower case; unique within the tenant.
    #[schema(format = Email)]
    pub email: Option<String>,
    pub phone: Option<String>,
    pub job_title: Option<String>,
    #[serde(serialize_with = "crate::timestamp::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamp::rfc3339")]
    pub updated_at: DateTime<Utc>,
    /// Current version; also sent as the `ETag`.
    pub version: i32,
    /// Under legal hold: erasure and redaction are refused.
    pub legal_hold: bool,
    /// When the contact was redacted; its identifying values are placeholders since.
    #[serde(serialize_with = "crate::timestamp::rfc3339_opt")]
    pub redacted_at: Option<DateTime<Utc>>,
}

impl From<Contact> for ContactOut {
    fn from(c: Contact) -> Self {
        ContactOut {
            id: c.id.as_uuid(),
            company_id: c.company_id.map(CompanyId::as_uuid),
            first_name: c.first_name,
            last_name: c.last_name,
            email: c.email,
            phone: c.phone,
            job_title: c.job_title,
            created_at: c.created_at,
            updated_at: c.updated_at,
            version: c.version,
            legal_hold: c.legal_hold,
            redacted_at: c.redacted_at,
        }
    }
}

/// A new contact. At least one of `first_name`, `last_name` or `email` is required.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ContactIn {
    /// Store an address of an erased (suppressed) person anyway; the reason is audited.
    suppression_override_reason: Option<SuppressionOverrideReason>,
    company_id: Option<Uuid>,
    #[schema(min_length = 1, max_length = 100)]
    first_name: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    last_name: Option<String>,
    #[schema(format = Email, max_length = 254)]
    email: Option<String>,
    #[schema(
        min_length = 3,
        max_length = 32,
        pattern = r"^\+?([ ().-]*[0-9]){3}[0-9 ().-]*$",
        example = "+44 20 7946 0958"
    )]
    phone: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    job_title: Option<String>,
}

/// A JSON Merge Patch (RFC 7396) of a contact: absent fields stay, `null` clears.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ContactPatch {
    /// Store an address of an erased (suppressed) person anyway; the reason is audited.
    suppression_override_reason: Option<SuppressionOverrideReason>,
    company_id: Option<Uuid>,
    #[schema(min_length = 1, max_length = 100)]
    first_name: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    last_name: Option<String>,
    #[schema(format = Email, max_length = 254)]
    email: Option<String>,
    #[schema(
        min_length = 3,
        max_length = 32,
        pattern = r"^\+?([ ().-]*[0-9]){3}[0-9 ().-]*$"
    )]
    phone: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    job_title: Option<String>,
}

list_type!(ContactList, ContactOut);

/// Why a suppressed address may be stored again. A code, not free text: it goes into the audit
/// trail, which never holds personal values.
const OVERRIDE_REASONS: [&str; 4] = [
    "consent_renewed",
    "new_relationship",
    "data_subject_request",
    "legal_obligation",
];

fn parse_override_reason(raw: &str) -> Result<String, crm_domain::InvalidValue> {
    OVERRIDE_REASONS
        .contains(&raw)
        .then(|| raw.to_owned())
        .ok_or_else(|| {
            crm_domain::InvalidValue::new(
                "invalid_reason",
                format!("must be one of {}", OVERRIDE_REASONS.join(", ")),
            )
        })
}

#[derive(Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionOverrideReason {
    ConsentRenewed,
    NewRelationship,
    DataSubjectRequest,
    LegalObligation,
}

const FIELDS: &[&str] = &[
    "company_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "job_title",
    "suppression_override_reason",
];

fn read_new(body: &Value) -> Result<(NewContact, Option<String>), ApiError> {
    let mut i = Input::body(body, FIELDS)?;
    let input = NewContact {
        company_id: i
            .string("company_id", false, input::uuid)
            .map(CompanyId::from_uuid),
        first_name: i.string("first_name", false, text(1, 100)),
        last_name: i.string("last_name", false, text(1, 100)),
        email: i.string("email", false, EmailAddress::parse),
        phone: i.string("phone", false, phone),
        job_title: i.string("job_title", false, text(1, 100)),
    };
    let reason = i.string("suppression_override_reason", false, parse_override_reason);
    i.finish()?;
    Ok((input, reason))
}

fn read_patch(body: &Value) -> Result<(ContactChanges, Option<String>), ApiError> {
    let mut i = Input::body(body, FIELDS)?;
    let changes = ContactChanges {
        company_id: i
            .patch_string("company_id", true, input::uuid)
            .map(CompanyId::from_uuid),
        first_name: i.patch_string("first_name", true, text(1, 100)),
        last_name: i.patch_string("last_name", true, text(1, 100)),
        email: i.patch_string("email", true, EmailAddress::parse),
        phone: i.patch_string("phone", true, phone),
        job_title: i.patch_string("job_title", true, text(1, 100)),
    };
    let reason = i.string("suppression_override_reason", false, parse_override_reason);
    i.finish()?;
    Ok((changes, reason))
}

/// Create a contact.
#[utoipa::path(
    tag = "contacts",
    request_body(content = ContactIn, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = ContactOut,
         headers(("ETag" = String, description = "Version of the contact"), ("Location" = String))),
        (status = 409, description = "A contact with this e-mail exists (`email_taken`), the address is suppressed (`email_suppressed`) or the contact is redacted (`contact_redacted`)", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("oauth2" = ["contacts:write"]))
)]
#[post("/contacts")]
pub async fn create_contact(
    caller: ContactsWrite,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let (input, override_reason) = read_new(&body)?;
    let gate = SuppressionGate {
        vault: &state.vault,
        override_reason,
    };
    let contact = contacts::create_contact(
        &state.db,
        &caller.0.tenant,
        input,
        &gate,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    let version = contact.version;
    let out = ContactOut::from(contact);
    Ok(created(format!("/v1/contacts/{}", out.id), &out, version))
}

/// Query parameters of the contact list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContactQuery {
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Exact e-mail address (case-insensitive).
    #[param(value_type = Option<String>, format = Email)]
    email: Option<String>,
    #[param(value_type = Option<Uuid>)]
    company_id: Option<String>,
    /// Case-insensitive text in first name, last name or e-mail. Personal values are stored
    /// encrypted, so they are matched after decryption, over at most 2,000 contacts per page:
    /// a page may hold fewer than `limit` matches (even none) with a `next_cursor` to go on
    /// from; the list ends when `next_cursor` is null.
    #[param(min_length = 1, max_length = 200)]
    q: Option<String>,
    /// Only contacts changed at or after this time (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    updated_since: Option<String>,
}

/// List contacts, oldest first, with cursor pagination and filters.
#[utoipa::path(
    tag = "contacts",
    params(ContactQuery),
    responses((status = 200, description = "A page of contacts", body = ContactList)),
    security(("bearer" = []), ("oauth2" = ["contacts:read"]))
)]
#[get("/contacts")]
pub async fn list_contacts(
    caller: ContactsRead,
    state: web::Data<AppState>,
    query: web::Query<ContactQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut errs = QueryErrors::default();
    let page = errs.page(query.limit.as_deref(), query.cursor.as_deref());
    let filter = ContactFilter {
        email: errs.parse("email", query.email.as_deref(), EmailAddress::parse),
        company_id: errs
            .parse("company_id", query.company_id.as_deref(), input::uuid)
            .map(CompanyId::from_uuid),
        q: errs.parse("q", query.q.as_deref(), text(1, 200)),
        updated_since: errs.parse(
            "updated_since",
            query.updated_since.as_deref(),
            input::timestamp,
        ),
    };
    errs.finish()?;
    let page =
        contacts::list_contacts(&state.db, &state.vault, &caller.0.tenant, filter, page).await?;
    Ok(HttpResponse::Ok().json(ContactList::from(page.map(ContactOut::from))))
}

/// Get a contact.
#[utoipa::path(
    tag = "contacts",
    params(("id" = Uuid, Path, description = "Contact id")),
    responses((status = 200, description = "The contact", body = ContactOut,
               headers(("ETag" = String, description = "Version of the contact")))),
    security(("bearer" = []), ("oauth2" = ["contacts:read"]))
)]
#[get("/contacts/{id}")]
pub async fn get_contact(
    caller: ContactsRead,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = ContactId::from_uuid(path_id("contact", &id)?);
    let contact = contacts::get_contact(&state.db, &state.vault, &caller.0.tenant, id).await?;
    let version = contact.version;
    Ok(with_etag(
        StatusCode::OK,
        &ContactOut::from(contact),
        version,
    ))
}

/// Change a contact (JSON Merge Patch). Send `If-Match` with the `ETag` you read to refuse
/// overwriting someone else's change (412).
#[utoipa::path(
    tag = "contacts",
    params(
        ("id" = Uuid, Path, description = "Contact id"),
        ("If-Match" = Option<String>, Header, description = "ETag of the version being changed"),
    ),
    request_body(content = ContactPatch, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The changed contact", body = ContactOut,
         headers(("ETag" = String, description = "New version"))),
        (status = 409, description = "A contact with this e-mail exists (`email_taken`), the address is suppressed (`email_suppressed`) or the contact is redacted (`contact_redacted`)", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("oauth2" = ["contacts:write"]))
)]
#[patch("/contacts/{id}")]
pub async fn update_contact(
    caller: ContactsWrite,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = ContactId::from_uuid(path_id("contact", &id)?);
    let expected = if_match(&req)?;
    let (changes, override_reason) = read_patch(&body)?;
    let gate = SuppressionGate {
        vault: &state.vault,
        override_reason,
    };
    let contact = contacts::update_contact(
        &state.db,
        &caller.0.tenant,
        id,
        changes,
        expected,
        &gate,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    let version = contact.version;
    Ok(with_etag(
        StatusCode::OK,
        &ContactOut::from(contact),
        version,
    ))
}

/// Delete a contact. Its orders stay, without the link.
#[utoipa::path(
    tag = "contacts",
    params(
        ("id" = Uuid, Path, description = "Contact id"),
        ("If-Match" = Option<String>, Header, description = "ETag of the version being deleted"),
    ),
    responses((status = 204, description = "Deleted")),
    security(("bearer" = []), ("oauth2" = ["contacts:write"]))
)]
#[delete("/contacts/{id}")]
pub async fn delete_contact(
    caller: ContactsWrite,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = ContactId::from_uuid(path_id("contact", &id)?);
    let expected = if_match(&req)?;
    contacts::delete_contact(
        &state.db,
        &caller.0.tenant,
        id,
        expected,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// At most this many contacts per bulk call.
pub const BATCH_MAX: usize = 1000;

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct BatchContactIn {
    /// Update this contact; without it an item whose e-mail matches an existing contact
    /// updates that one, and any other item creates a contact.
    id: Option<Uuid>,
    company_id: Option<Uuid>,
    #[schema(min_length = 1, max_length = 100)]
    first_name: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    last_name: Option<String>,
    #[schema(format = Email, max_length = 254)]
    email: Option<String>,
    #[schema(min_length = 3, max_length = 32)]
    phone: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    job_title: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct BatchIn {
    #[schema(min_items = 1, max_items = 1000)]
    items: Vec<BatchContactIn>,
}

/// What became of one item.
#[derive(Serialize, ToSchema)]
pub struct BatchItemOut {
    /// Position in `items`.
    pub index: usize,
    /// `created`, `updated` or `failed`.
    #[schema(example = "created")]
    pub status: &'static str,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i32>,
    /// Why it failed: `validation_failed`, `email_suppressed`, `email_taken`,
    /// `contact_not_found`, `contact_redacted`, …
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Field errors, with pointers into the request (`/items/3/email`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<crate::problem::ProblemField>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchOut {
    pub created: usize,
    pub updated: usize,
    pub failed: usize,
    pub results: Vec<BatchItemOut>,
}

fn failed(index: usize, code: &str, errors: Vec<crm_domain::FieldError>) -> BatchItemOut {
    BatchItemOut {
        index,
        status: "failed",
        id: None,
        version: None,
        code: Some(code.to_owned()),
        errors: errors
            .into_iter()
            .map(crate::problem::ProblemField::from)
            .collect(),
    }
}

/// Reads one contact of a bulk call or an import (pointers start at `base`).
pub fn parse_item(
    value: &Value,
    base: &str,
) -> Result<contacts::BatchItem, Vec<crm_domain::FieldError>> {
    let mut errors = Vec::new();
    let mut allowed: Vec<&str> = FIELDS
        .iter()
        .copied()
        .filter(|f| *f != "suppression_override_reason")
        .collect();
    allowed.push("id");
    let Some(mut i) = Input::nested(value, base, &allowed, &mut errors) else {
        return Err(errors);
    };
    let id = i.string("id", false, input::uuid).map(ContactId::from_uuid);
    let fields = ContactChanges {
        company_id: i
            .patch_string("company_id", true, input::uuid)
            .map(CompanyId::from_uuid),
        first_name: i.patch_string("first_name", true, text(1, 100)),
        last_name: i.patch_string("last_name", true, text(1, 100)),
        email: i.patch_string("email", true, EmailAddress::parse),
        phone: i.patch_string("phone", true, phone),
        job_title: i.patch_string("job_title", true, text(1, 100)),
    };
    errors.extend(i.take_errors());
    if errors.is_empty() {
        Ok(contacts::BatchItem { id, fields })
    } else {
        Err(errors)
    }
}

/// The columns an import may have (CSV header or NDJSON keys).
pub const IMPORT_COLUMNS: &[&str] = &[
    "id",
    "company_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "job_title",
];

/// Splits an uploaded file into rows (JSON objects). NDJSON: one object per non-empty line
/// (a line that is not JSON becomes `null`, reported as an invalid row). CSV: a header row
/// naming columns, then one record per row; empty cells are absent.
pub fn import_rows(format: &str, payload: &str) -> Result<Vec<Value>, String> {
    match format {
        "ndjson" => Ok(payload
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
            .collect()),
        _ => {
            let mut reader = csv::ReaderBuilder::new()
                .flexible(false)
                .from_reader(payload.as_bytes());
            let headers: Vec<String> = reader
                .headers()
                .map_err(|e| format!("the CSV header cannot be read: {e}"))?
                .iter()
                .map(|h| h.trim().to_owned())
                .collect();
            if let Some(bad) = headers
                .iter()
                .find(|h| !IMPORT_COLUMNS.contains(&h.as_str()))
            {
                return Err(format!(
                    "unknown column {bad:?}; columns are {}",
                    IMPORT_COLUMNS.join(", ")
                ));
            }
            let mut rows = Vec::new();
            for record in reader.records() {
                let Ok(record) = record else {
                    rows.push(Value::Null);
                    continue;
                };
                let obj: serde_json::Map<String, Value> = headers
                    .iter()
                    .zip(record.iter())
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(h, v)| (h.clone(), Value::String(v.to_owned())))
                    .collect();
                rows.push(Value::Object(obj));
            }
            Ok(rows)
        }
    }
}

/// Create or update up to 1,000 contacts in one call.
///
/// The valid items are written in **one transaction**; each item runs under its own
/// savepoint, so an item that fails (invalid, suppressed address, e-mail taken, unknown id or
/// company) is reported and skipped while the others are kept. Suppressed addresses are
/// refused per item (`email_suppressed`; no override in bulk). The answer lists every item's
/// outcome in order.
#[utoipa::path(
    tag = "contacts",
    request_body(content = BatchIn, content_type = "application/json"),
    responses((status = 200, description = "Per-item results", body = BatchOut)),
    security(("bearer" = []), ("oauth2" = ["contacts:write"]))
)]
#[post("/contacts/batch")]
pub async fn batch_upsert(
    caller: ContactsWrite,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut top = Input::body(&body, &["items"])?;
    let items = top.array("items", true, 1, BATCH_MAX);
    top.finish()?;
    let items: &[Value] = items.map(Vec::as_slice).unwrap_or_default();
    let mut results: Vec<Option<BatchItemOut>> = Vec::with_capacity(items.len());
    let mut valid = Vec::new();
    let mut positions = Vec::new();
    for (index, value) in items.iter().enumerate() {
        match parse_item(value, &format!("/items/{index}")) {
            Ok(item) => {
                results.push(None);
                positions.push(index);
                valid.push(item);
            }
            Err(errors) => results.push(Some(failed(index, "validation_failed", errors))),
        }
    }
    let outcomes = contacts::upsert_batch(
        &state.db,
        &caller.0.tenant,
        valid,
        &state.vault,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    for (index, outcome) in positions.into_iter().zip(outcomes) {
        let item = match outcome {
            contacts::ItemOutcome::Created(c) => BatchItemOut {
                index,
                status: "created",
                id: Some(c.id.as_uuid()),
                version: Some(c.version),
                code: None,
                errors: Vec::new(),
            },
            contacts::ItemOutcome::Updated(c) => BatchItemOut {
                index,
                status: "updated",
                id: Some(c.id.as_uuid()),
                version: Some(c.version),
                code: None,
                errors: Vec::new(),
            },
            contacts::ItemOutcome::Failed(e) => {
                let api = ApiError::from(e);
                match api {
                    ApiError::Invalid(errors) => {
                        let errors = errors
                            .into_iter()
                            .map(|mut fe| {
                                fe.pointer = fe.pointer.map(|p| format!("/items/{index}{p}"));
                                fe
                            })
                            .collect();
                        failed(index, "validation_failed", errors)
                    }
                    ApiError::Status { code, .. } => failed(index, &code, Vec::new()),
                    other => failed(index, &other.to_string(), Vec::new()),
                }
            }
        };
        if let Some(slot) = results.get_mut(index) {
            *slot = Some(item);
        }
    }
    let results: Vec<BatchItemOut> = results.into_iter().flatten().collect();
    let count = |s: &str| results.iter().filter(|r| r.status == s).count();
    Ok(HttpResponse::Ok().json(BatchOut {
        created: count("created"),
        updated: count("updated"),
        failed: count("failed"),
        results,
    }))
}

/// Largest accepted import file.
pub const IMPORT_MAX_BYTES: usize = 32 * 1024 * 1024;

/// An import and its progress.
#[derive(Serialize, ToSchema)]
pub struct ImportOut {
    pub id: Uuid,
    /// `ndjson` or `csv`.
    pub format: String,
    /// `queued`, `running` or `done`.
    pub status: String,
    /// Rows in the file.
    pub total: i64,
    /// Rows applied so far.
    pub processed: i64,
    pub created: i64,
    pub updated: i64,
    pub failed: i64,
    /// The first 1,000 failed rows: `{"row": n (1-based data row), "code": "..."}`.
    #[schema(value_type = Vec<Object>)]
    pub errors: Value,
    pub created_at: DateTime<Utc>,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<crm_domain::imports::Job> for ImportOut {
    fn from(j: crm_domain::imports::Job) -> Self {
        ImportOut {
            id: j.id,
            format: j.format,
            status: j.status,
            total: j.total,
            processed: j.processed,
            created: j.created,
            updated: j.updated,
            failed: j.failed,
            errors: j.errors,
            created_at: j.created_at,
            finished_at: j.finished_at,
        }
    }
}

/// Import contacts from a file: `application/x-ndjson` (one JSON object per line) or
/// `text/csv` (a header row with columns `id, company_id, first_name, last_name, email,
/// phone, job_title`). Up to 32 MiB. The answer is a job (`202`, `Location`); the rows are
/// applied in the background in chunks of 1,000 with the rules of `POST /v1/contacts/batch`
/// (one transaction per chunk, together with the job's progress). Poll
/// `GET /v1/contacts/imports/{id}`.
#[utoipa::path(
    tag = "contacts",
    request_body(content = String, content_type = "text/csv", description = "The file (or `application/x-ndjson`)"),
    responses(
        (status = 202, description = "Queued", body = ImportOut,
         headers(("Location" = String, description = "The job"))),
        (status = 413, description = "`payload_too_large`", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("oauth2" = ["contacts:write"]))
)]
#[post("/contacts/imports")]
pub async fn create_import(
    caller: ContactsWrite,
    state: web::Data<AppState>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    use futures_util::StreamExt;
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let format = match content_type.as_str() {
        "application/x-ndjson" | "application/ndjson" => "ndjson",
        "text/csv" => "csv",
        _ => {
            return Err(ApiError::status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the file as application/x-ndjson or text/csv",
            ));
        }
    };
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|_| ApiError::bad_request("invalid_body", "the upload failed"))?;
        if body.len() + chunk.len() > IMPORT_MAX_BYTES {
            return Err(ApiError::status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "an import file may be at most 32 MiB",
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("invalid_encoding", "the file must be UTF-8"))?;
    let rows = import_rows(format, &text).map_err(|detail| {
        ApiError::invalid(vec![crm_domain::FieldError::at("", "invalid_file", detail)])
    })?;
    let job = crm_domain::imports::create_job(
        &state.db,
        &state.vault,
        &caller.0.tenant,
        &caller.1,
        format,
        rows.len() as i64,
        text,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Accepted()
        .insert_header((
            actix_web::http::header::LOCATION,
            format!("/v1/contacts/imports/{}", job.id),
        ))
        .json(ImportOut::from(job)))
}

/// An import's progress and failed rows.
#[utoipa::path(
    tag = "contacts",
    params(("id" = Uuid, Path, description = "Import id")),
    responses((status = 200, description = "The job", body = ImportOut)),
    security(("bearer" = []), ("oauth2" = ["contacts:write"]))
)]
#[get("/contacts/imports/{id}")]
pub async fn get_import(
    caller: ContactsWrite,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("import", &path)?;
    let job = crm_domain::imports::get_job(&state.db, &caller.0.tenant, id).await?;
    Ok(HttpResponse::Ok().json(ImportOut::from(job)))
}
