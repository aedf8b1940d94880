//! `/v1/dsr`: the register of data-subject requests, and retention policies.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, patch, post, put, web};
use chrono::{DateTime, Utc};
use crm_domain::dsr::{self, NewRequest, Request, RequestChanges, RequestFilter};
use crm_domain::ids::ContactId;
use crm_domain::retention::{self, Policy, RunReport};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{QueryErrors, created, if_match, list_type, path_id, with_etag};
use crate::auth::GdprOfficer;
use crate::input::{self, Input, text};
use crate::problem::ApiError;
use crate::state::AppState;

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Access,
    Rectification,
    Erasure,
    Restriction,
    Portability,
    Objection,
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    Pending,
    Verified,
    Failed,
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Open,
    Completed,
    Rejected,
}

/// A data-subject request.
#[derive(Serialize, ToSchema)]
pub struct DsrOut {
    pub id: Uuid,
    pub contact_id: Option<Uuid>,
    #[schema(example = "access")]
    pub kind: String,
    pub received_at: DateTime<Utc>,
    /// One month after receipt, or later once extended.
    pub due_at: DateTime<Utc>,
    pub extended: bool,
    pub extension_reason: Option<String>,
    #[schema(example = "pending")]
    pub identity_verification: String,
    #[schema(example = "open")]
    pub status: String,
    pub outcome: Option<String>,
    /// The erasure that fulfilled an erasure request.
    pub erasure_id: Option<Uuid>,
    pub closed_at: Option<DateTime<Utc>>,
    /// Open and past its due date.
    pub overdue: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
}

impl From<Request> for DsrOut {
    fn from(r: Request) -> Self {
        DsrOut {
            id: r.id,
            contact_id: r.contact_id,
            kind: r.kind,
            received_at: r.received_at,
            due_at: r.due_at,
            extended: r.extended,
            extension_reason: r.extension_reason,
            identity_verification: r.identity_verification,
            status: r.status,
            outcome: r.outcome,
            erasure_id: r.erasure_id,
            closed_at: r.closed_at,
            overdue: r.overdue,
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct DsrIn {
    kind: RequestKind,
    /// The contact the request is about, once identified.
    contact_id: Option<Uuid>,
    /// When the request reached the controller (default: now); not in the future.
    received_at: Option<DateTime<Utc>>,
    identity_verification: Option<Verification>,
}

/// Extend the deadline once, by one or two months, with a reason (Art. 12(3)).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct DsrExtensionIn {
    #[schema(minimum = 1, maximum = 2)]
    months: i64,
    #[schema(min_length = 1, max_length = 1000)]
    reason: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct DsrPatch {
    contact_id: Option<Uuid>,
    #[schema(nullable = false)]
    identity_verification: Option<Verification>,
    #[schema(nullable = false)]
    status: Option<RequestStatus>,
    #[schema(min_length = 1, max_length = 1000)]
    outcome: Option<String>,
    #[schema(nullable = false)]
    extension: Option<DsrExtensionIn>,
}

list_type!(DsrList, DsrOut);

/// Register a data-subject request.
#[utoipa::path(
    tag = "dsr",
    request_body(content = DsrIn, content_type = "application/json"),
    responses((status = 201, description = "Registered", body = DsrOut, headers(("ETag" = String), ("Location" = String)))),
    security(("bearer" = []))
)]
#[post("/dsr")]
pub async fn create_request(
    caller: GdprOfficer,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(
        &body,
        &["kind", "contact_id", "received_at", "identity_verification"],
    )?;
    let kind = i.string("kind", true, dsr::parse_kind);
    let contact_id = i
        .string("contact_id", false, input::uuid)
        .map(ContactId::from_uuid);
    let received_at = i.string("received_at", false, input::timestamp);
    let identity_verification = i.string("identity_verification", false, dsr::parse_verification);
    i.finish()?;
    let Some(kind) = kind else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "validated request incomplete"
        )));
    };
    let input = NewRequest {
        kind,
        contact_id,
        received_at,
        identity_verification,
    };
    let r = dsr::create_request(
        &state.db,
        &state.vault,
        &caller.0.tenant,
        input,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    let version = r.version;
    let out = DsrOut::from(r);
    Ok(created(format!("/v1/dsr/{}", out.id), &out, version))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DsrQuery {
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    #[param(value_type = Option<RequestStatus>)]
    status: Option<String>,
    #[param(value_type = Option<RequestKind>)]
    kind: Option<String>,
    /// Only open requests past their due date.
    #[param(value_type = Option<bool>)]
    overdue: Option<String>,
    #[param(value_type = Option<Uuid>)]
    contact_id: Option<String>,
}

/// List data-subject requests; `status=open` and `overdue=true` show what needs doing.
#[utoipa::path(
    tag = "dsr",
    params(DsrQuery),
    responses((status = 200, description = "A page of requests", body = DsrList)),
    security(("bearer" = []))
)]
#[get("/dsr")]
pub async fn list_requests(
    caller: GdprOfficer,
    state: web::Data<AppState>,
    query: web::Query<DsrQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut errs = QueryErrors::default();
    let page = errs.page(query.limit.as_deref(), query.cursor.as_deref());
    let filter = RequestFilter {
        status: errs.parse("status", query.status.as_deref(), dsr::parse_status),
        kind: errs.parse("kind", query.kind.as_deref(), dsr::parse_kind),
        overdue: errs
            .parse("overdue", query.overdue.as_deref(), input::boolean)
            .unwrap_or(false),
        contact_id: errs
            .parse("contact_id", query.contact_id.as_deref(), input::uuid)
            .map(ContactId::from_uuid),
    };
    errs.finish()?;
    let page = dsr::list_requests(
        &state.db,
        &state.vault,
        &caller.0.tenant,
        filter,
        page,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(DsrList::from(page.map(DsrOut::from))))
}

/// Get a data-subject request.
#[utoipa::path(
    tag = "dsr",
    params(("id" = Uuid, Path, description = "Request id")),
    responses((status = 200, description = "The request", body = DsrOut, headers(("ETag" = String)))),
    security(("bearer" = []))
)]
#[get("/dsr/{id}")]
pub async fn get_request(
    caller: GdprOfficer,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("dsr_request", &id)?;
    let r = dsr::get_request(
        &state.db,
        &state.vault,
        &caller.0.tenant,
        id,
        state.clock.now(),
    )
    .await?;
    let version = r.version;
    Ok(with_etag(StatusCode::OK, &DsrOut::from(r), version))
}

/// Update a request: identity verification, status and outcome, or a one-time extension.
#[utoipa::path(
    tag = "dsr",
    params(
        ("id" = Uuid, Path, description = "Request id"),
        ("If-Match" = Option<String>, Header, description = "ETag of the version being changed"),
    ),
    request_body(content = DsrPatch, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The changed request", body = DsrOut, headers(("ETag" = String))),
        (status = 409, description = "`already_extended` or `request_closed`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[patch("/dsr/{id}")]
pub async fn update_request(
    caller: GdprOfficer,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("dsr_request", &id)?;
    let expected = if_match(&req)?;
    let mut i = Input::body(
        &body,
        &[
            "contact_id",
            "identity_verification",
            "status",
            "outcome",
            "extension",
        ],
    )?;
    let contact_id = i
        .patch_string("contact_id", true, input::uuid)
        .map(ContactId::from_uuid);
    let identity_verification = i
        .patch_string("identity_verification", false, dsr::parse_verification)
        .apply_to(None);
    let status = i
        .patch_string("status", false, dsr::parse_status)
        .apply_to(None);
    let outcome = i.patch_string("outcome", true, text(1, 1000));
    let mut extension = None;
    if let Some(value) = body.get("extension") {
        let mut errors = Vec::new();
        if let Some(mut e) = Input::nested(
            value,
            &i.pointer("extension"),
            &["months", "reason"],
            &mut errors,
        ) {
            let months = e.integer("months", true, 1, 2);
            let reason = e.string("reason", true, text(1, 1000));
            errors.extend(e.take_errors());
            if let (Some(m), Some(r)) = (months, reason) {
                extension = Some((m as u32, r));
            }
        }
        i.push_errors(errors);
    }
    i.finish()?;
    let changes = RequestChanges {
        identity_verification,
        status,
        outcome,
        extension,
        contact_id,
    };
    let r = dsr::update_request(
        &state.db,
        &state.vault,
        &caller.0.tenant,
        id,
        changes,
        expected,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    let version = r.version;
    Ok(with_etag(StatusCode::OK, &DsrOut::from(r), version))
}

/// A retention policy: contacts past an age or a period of inactivity are redacted or erased.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicyDto {
    /// `contacts`.
    #[schema(example = "contacts")]
    pub record_type: String,
    /// `age` (since creation) or `inactivity` (no change and no order).
    #[schema(example = "inactivity")]
    pub basis: String,
    #[schema(minimum = 1, maximum = 36500)]
    pub after_days: i32,
    /// `redact` or `erase`.
    #[schema(example = "erase")]
    pub action: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicies {
    #[schema(max_items = 10)]
    pub policies: Vec<RetentionPolicyDto>,
}

fn to_dto(p: Policy) -> RetentionPolicyDto {
    RetentionPolicyDto {
        record_type: p.record_type,
        basis: p.basis,
        after_days: p.after_days,
        action: p.action,
    }
}

/// The tenant's retention policies.
#[utoipa::path(
    tag = "dsr",
    responses((status = 200, description = "Policies", body = RetentionPolicies)),
    security(("bearer" = []))
)]
#[get("/retention-policies")]
pub async fn get_policies(
    caller: GdprOfficer,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let policies = retention::list_policies(&state.db, &caller.0.tenant).await?;
    Ok(HttpResponse::Ok().json(RetentionPolicies {
        policies: policies.into_iter().map(to_dto).collect(),
    }))
}

/// Replace the tenant's retention policies. The retention job applies them (hourly, and on
/// `POST /v1/retention/run`), skipping contacts under legal hold.
#[utoipa::path(
    tag = "dsr",
    request_body(content = RetentionPolicies, content_type = "application/json"),
    responses((status = 200, description = "Policies", body = RetentionPolicies)),
    security(("bearer" = []))
)]
#[put("/retention-policies")]
pub async fn put_policies(
    caller: GdprOfficer,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, &["policies"])?;
    let mut policies = Vec::new();
    if let Some(items) = i.array("policies", true, 0, 10) {
        let mut errors = Vec::new();
        for (n, item) in items.iter().enumerate() {
            let base = format!("{}/{n}", i.pointer("policies"));
            if let Some(mut p) = Input::nested(
                item,
                &base,
                &["record_type", "basis", "after_days", "action"],
                &mut errors,
            ) {
                let parsed = (
                    p.string("record_type", true, retention::parse_record_type),
                    p.string("basis", true, retention::parse_basis),
                    p.integer("after_days", true, 1, 36_500),
                    p.string("action", true, retention::parse_action),
                );
                errors.extend(p.take_errors());
                if let (Some(record_type), Some(basis), Some(days), Some(action)) = parsed {
                    policies.push(Policy {
                        record_type,
                        basis,
                        after_days: days as i32,
                        action,
                    });
                }
            }
        }
        i.push_errors(errors);
    }
    i.finish()?;
    let policies = retention::set_policies(
        &state.db,
        &caller.0.tenant,
        policies,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(RetentionPolicies {
        policies: policies.into_iter().map(to_dto).collect(),
    }))
}

/// What a retention run did.
#[derive(Serialize, ToSchema)]
pub struct RetentionRunOut {
    pub erased: Vec<Uuid>,
    pub redacted: Vec<Uuid>,
    /// Due, but under legal hold: left alone.
    pub held: Vec<Uuid>,
}

impl From<RunReport> for RetentionRunOut {
    fn from(r: RunReport) -> Self {
        RetentionRunOut {
            erased: r.erased,
            redacted: r.redacted,
            held: r.held,
        }
    }
}

/// Apply the tenant's retention policies now, as the scheduled job does.
#[utoipa::path(
    tag = "dsr",
    responses((status = 200, description = "What was erased, redacted and held", body = RetentionRunOut)),
    security(("bearer" = []))
)]
#[post("/retention/run")]
pub async fn run_retention(
    caller: GdprOfficer,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let report = retention::run_for_tenant(
        &state.db,
        &state.vault,
        &caller.0.tenant,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(RetentionRunOut::from(report)))
}
