//! Data-subject rights and the controller's GDPR tools: export, redaction, erasure, legal hold,
//! the suppression check, GDPR settings and the audit trail.

use actix_web::{HttpResponse, delete, get, post, put, web};
use chrono::{DateTime, Utc};
use crm_domain::audit::{self, AuditFilter, AuditRecord};
use crm_domain::gdpr::{self, ErasurePlan};
use crm_domain::ids::ContactId;
use crm_domain::suppression::is_suppressed;
use crm_domain::values::EmailAddress;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{QueryErrors, list_type, path_id};
use crate::auth::{GdprOfficer, SuppressionRead};
use crate::input::{self, Input, text};
use crate::problem::ApiError;
use crate::state::AppState;

/// Everything held about a person (Art. 15 and 20), with the processing information.
#[derive(Serialize, ToSchema)]
pub struct SubjectExport {
    #[schema(example = "crm-subject-export/1")]
    pub format: String,
    pub exported_at: DateTime<Utc>,
    /// The contact record.
    #[schema(value_type = Object)]
    pub subject: Value,
    /// The linked company, if any.
    #[schema(value_type = Option<Object>)]
    pub company: Value,
    /// Orders with their lines.
    #[schema(value_type = Vec<Object>)]
    pub orders: Value,
    /// Consent records, full history.
    #[schema(value_type = Vec<Object>)]
    pub consents: Value,
    /// Data-subject requests.
    #[schema(value_type = Vec<Object>)]
    pub requests: Value,
    /// Who read, exported or changed the record.
    #[schema(value_type = Vec<Object>)]
    pub audit: Value,
    /// Purposes, lawful bases, categories, retention, recipients and source.
    #[schema(value_type = Object)]
    pub processing: Value,
}

/// Export everything held about a contact as one JSON document. The export is audited.
#[utoipa::path(
    tag = "gdpr",
    params(("id" = Uuid, Path, description = "Contact id")),
    responses((status = 200, description = "The subject's data", body = SubjectExport)),
    security(("bearer" = []))
)]
#[get("/contacts/{id}/export")]
pub async fn export_contact(
    caller: GdprOfficer,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = ContactId::from_uuid(path_id("contact", &id)?);
    let export = gdpr::export_contact(
        &state.db,
        &state.vault,
        &caller.0.tenant,
        id,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"contact-{}.json\"", id.as_uuid()),
        ))
        .json(export))
}

/// Redact a contact: the records stay (for statistics) but every identifying value is
/// replaced by a placeholder. Refused under legal hold (409 `legal_hold`).
#[utoipa::path(
    tag = "gdpr",
    params(("id" = Uuid, Path, description = "Contact id")),
    responses(
        (status = 204, description = "Redacted"),
        (status = 409, description = "`legal_hold`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[post("/contacts/{id}/redact")]
pub async fn redact_contact(
    caller: GdprOfficer,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = ContactId::from_uuid(path_id("contact", &id)?);
    gdpr::redact_contact(
        &state.db,
        &state.vault,
        &caller.0.tenant,
        id,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Serialize, ToSchema)]
pub struct PlanItemOut {
    #[schema(example = "orders")]
    pub table: String,
    pub ids: Vec<Uuid>,
    /// Why these rows are deleted or kept.
    pub reason: Option<String>,
}

/// What an erasure deleted and kept, and why (or, for a dry run, would).
#[derive(Serialize, ToSchema)]
pub struct ErasureOut {
    pub contact_id: Uuid,
    /// The ledger entry of this erasure; absent for a dry run.
    pub erasure_id: Option<Uuid>,
    pub dry_run: bool,
    pub deleted: Vec<PlanItemOut>,
    pub kept: Vec<PlanItemOut>,
    /// The e-mail address was added to the suppression list (as a keyed digest).
    pub suppressed: bool,
}

impl From<ErasurePlan> for ErasureOut {
    fn from(p: ErasurePlan) -> Self {
        let items = |v: Vec<gdpr::PlanItem>| {
            v.into_iter()
                .map(|i| PlanItemOut {
                    table: i.table.to_owned(),
                    ids: i.ids,
                    reason: i.reason,
                })
                .collect()
        };
        ErasureOut {
            contact_id: p.contact_id,
            erasure_id: p.erasure_id,
            dry_run: p.dry_run,
            deleted: items(p.deleted),
            kept: items(p.kept),
            suppressed: p.suppressed,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EraseQuery {
    /// Return the plan without changing anything.
    #[param(value_type = Option<bool>)]
    dry_run: Option<String>,
}

/// Erase a contact (Art. 17) and everything that is theirs, in one transaction. Orders the
/// law makes the controller keep are detached from the person and listed as kept. The
/// e-mail goes on the suppression list. Refused under legal hold (409 `legal_hold`).
#[utoipa::path(
    tag = "gdpr",
    params(("id" = Uuid, Path, description = "Contact id"), EraseQuery),
    responses(
        (status = 200, description = "What was (or would be) deleted and kept", body = ErasureOut),
        (status = 409, description = "`legal_hold`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[post("/contacts/{id}/erase")]
pub async fn erase_contact(
    caller: GdprOfficer,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<EraseQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = ContactId::from_uuid(path_id("contact", &id)?);
    let mut errs = QueryErrors::default();
    let dry_run = errs
        .parse("dry_run", query.dry_run.as_deref(), input::boolean)
        .unwrap_or(false);
    errs.finish()?;
    if !dry_run {
        crate::routes::webauthn::require_step_up(&state, &caller.0)?;
    }
    let plan = gdpr::erase_contact(
        &state.db,
        &state.vault,
        &caller.0.tenant,
        id,
        dry_run,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(ErasureOut::from(plan)))
}

/// Put a contact under legal hold: erasure and redaction are refused until it is released.
#[utoipa::path(
    tag = "gdpr",
    params(("id" = Uuid, Path, description = "Contact id")),
    responses((status = 204, description = "Held")),
    security(("bearer" = []))
)]
#[put("/contacts/{id}/legal-hold")]
pub async fn set_legal_hold(
    caller: GdprOfficer,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = ContactId::from_uuid(path_id("contact", &id)?);
    gdpr::set_legal_hold(
        &state.db,
        &caller.0.tenant,
        id,
        true,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Release a contact's legal hold.
#[utoipa::path(
    tag = "gdpr",
    params(("id" = Uuid, Path, description = "Contact id")),
    responses((status = 204, description = "Released")),
    security(("bearer" = []))
)]
#[delete("/contacts/{id}/legal-hold")]
pub async fn release_legal_hold(
    caller: GdprOfficer,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = ContactId::from_uuid(path_id("contact", &id)?);
    gdpr::set_legal_hold(
        &state.db,
        &caller.0.tenant,
        id,
        false,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SuppressionCheckIn {
    /// 1–1000 addresses; they are compared as keyed digests and never stored.
    #[schema(min_items = 1, max_items = 1000)]
    emails: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SuppressionResult {
    pub email: String,
    /// The address belongs to an erased person: do not import it.
    pub suppressed: bool,
}

#[derive(Serialize, ToSchema)]
pub struct SuppressionCheckOut {
    pub results: Vec<SuppressionResult>,
}

/// Check addresses against the suppression list before importing them.
#[utoipa::path(
    tag = "gdpr",
    request_body(content = SuppressionCheckIn, content_type = "application/json"),
    responses((status = 200, description = "One result per address, in order", body = SuppressionCheckOut)),
    security(("bearer" = []), ("oauth2" = ["suppression:read"]))
)]
#[post("/suppression/check")]
pub async fn check_suppression(
    caller: SuppressionRead,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, &["emails"])?;
    let mut parsed = Vec::new();
    if let Some(items) = i.array("emails", true, 1, 1000) {
        for (n, item) in items.iter().enumerate() {
            let pointer = format!("{}/{n}", i.pointer("emails"));
            match item.as_str().map(EmailAddress::parse) {
                Some(Ok(e)) => parsed.push(e),
                Some(Err(e)) => {
                    i.push_errors(vec![crm_domain::FieldError::at(pointer, e.code, e.detail)])
                }
                None => i.push_errors(vec![crm_domain::FieldError::at(
                    pointer,
                    "invalid_type",
                    "must be a string",
                )]),
            }
        }
    }
    i.finish()?;
    let mut results = Vec::with_capacity(parsed.len());
    for email in parsed {
        let suppressed = is_suppressed(
            &state.db,
            state.vault.suppression(),
            &caller.0.tenant,
            &email,
        )
        .await?;
        results.push(SuppressionResult {
            email: email.to_string(),
            suppressed,
        });
    }
    Ok(HttpResponse::Ok().json(SuppressionCheckOut { results }))
}

/// The tenant's GDPR settings.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GdprSettings {
    /// How long booked orders are kept after they were placed (default 3653 days, ten
    /// years); an erasure detaches them from the person instead of deleting them.
    #[schema(minimum = 0, maximum = 36500)]
    pub order_retention_days: i32,
}

/// Read the tenant's GDPR settings.
#[utoipa::path(
    tag = "gdpr",
    responses((status = 200, description = "Settings", body = GdprSettings)),
    security(("bearer" = []))
)]
#[get("/gdpr/settings")]
pub async fn get_settings(
    caller: GdprOfficer,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let days = gdpr::order_retention_days(&state.db, &caller.0.tenant).await?;
    Ok(HttpResponse::Ok().json(GdprSettings {
        order_retention_days: days,
    }))
}

/// Change the tenant's GDPR settings.
#[utoipa::path(
    tag = "gdpr",
    request_body(content = GdprSettings, content_type = "application/json"),
    responses((status = 200, description = "Settings", body = GdprSettings)),
    security(("bearer" = []))
)]
#[put("/gdpr/settings")]
pub async fn put_settings(
    caller: GdprOfficer,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, &["order_retention_days"])?;
    let days = i.integer("order_retention_days", true, 0, 36_500);
    i.finish()?;
    let days = gdpr::set_order_retention_days(
        &state.db,
        &caller.0.tenant,
        &caller.1,
        days.unwrap_or_default() as i32,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(GdprSettings {
        order_retention_days: days,
    }))
}

/// One audit entry: who did what to which object, when, in which request. Never personal
/// values.
#[derive(Serialize, ToSchema)]
pub struct AuditEventOut {
    pub id: Uuid,
    pub seq: i64,
    #[serde(serialize_with = "crate::timestamp::rfc3339")]
    pub occurred_at: DateTime<Utc>,
    pub actor_id: Option<Uuid>,
    #[schema(example = "user")]
    pub actor_kind: String,
    #[schema(example = "contact.erased")]
    pub action: String,
    #[schema(example = "contact")]
    pub object_type: String,
    pub object_id: Option<Uuid>,
    pub request_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
    /// SHA-256 over the previous entry's hash and this entry.
    pub hash: String,
}

impl From<AuditRecord> for AuditEventOut {
    fn from(a: AuditRecord) -> Self {
        AuditEventOut {
            id: a.id,
            seq: a.seq,
            occurred_at: a.occurred_at,
            actor_id: a.actor_id,
            actor_kind: a.actor_kind,
            action: a.action,
            object_type: a.object_type,
            object_id: a.object_id,
            request_id: a.request_id,
            details: a.details,
            hash: a.hash,
        }
    }
}

list_type!(AuditEventList, AuditEventOut);

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only entries about this object.
    #[param(value_type = Option<Uuid>)]
    object_id: Option<String>,
    /// Only this action, e.g. `contact.erased`.
    #[param(min_length = 1, max_length = 64)]
    action: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    since: Option<String>,
}

/// List the tenant's audit trail in chain order (`seq`), oldest first.
#[utoipa::path(
    tag = "gdpr",
    params(AuditQuery),
    responses((status = 200, description = "A page of audit entries", body = AuditEventList)),
    security(("bearer" = []))
)]
#[get("/audit-events")]
pub async fn list_audit_events(
    caller: GdprOfficer,
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut errs = QueryErrors::default();
    let page = errs.page(query.limit.as_deref(), query.cursor.as_deref());
    let filter = AuditFilter {
        object_id: errs.parse("object_id", query.object_id.as_deref(), input::uuid),
        action: errs.parse("action", query.action.as_deref(), text(1, 64)),
        since: errs.parse("since", query.since.as_deref(), input::timestamp),
    };
    errs.finish()?;
    let page = audit::list(&state.db, &caller.0.tenant, filter, page).await?;
    Ok(HttpResponse::Ok().json(AuditEventList::from(page.map(AuditEventOut::from))))
}
