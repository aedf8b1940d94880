//! The breach register (Art. 33/34): platform admins record the processor's breaches and
//! notify the affected controllers; tenant admins and dpos record their own.

use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use crm_domain::breaches::{self, Breach, NewBreach};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{QueryErrors, path_id};
use crate::auth::Caller;
use crate::input::{self, Input, text};
use crate::problem::ApiError;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct BreachUpdateOut {
    pub note: String,
    pub created_at: DateTime<Utc>,
}

/// A personal data breach with the content Art. 33(3) asks for.
#[derive(Serialize, ToSchema)]
pub struct BreachOut {
    pub id: Uuid,
    /// `platform` (the processor's, affecting the listed tenants) or `tenant` (a controller's own).
    pub scope: String,
    pub title: String,
    pub nature: String,
    pub data_categories: String,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subjects_approx: Option<i64>,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records_approx: Option<i64>,
    pub likely_consequences: String,
    pub measures: String,
    pub contact_point: String,
    /// Likely to result in a high risk to people: the data subjects are informed too (Art. 34).
    pub high_risk: bool,
    pub affected_tenants: Vec<Uuid>,
    /// Shown to the recording tenant only.
    pub affected_contacts: Vec<Uuid>,
    pub aware_at: DateTime<Utc>,
    /// `aware_at` + 72 hours.
    pub deadline_at: DateTime<Utc>,
    /// Not notified and past the deadline.
    pub overdue: bool,
    /// `open`, `notified` or `closed`.
    pub status: String,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_reason: Option<String>,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notified_at: Option<DateTime<Utc>>,
    pub updates: Vec<BreachUpdateOut>,
    pub created_at: DateTime<Utc>,
}

fn out(b: Breach, now: DateTime<Utc>) -> BreachOut {
    let overdue = b.overdue(now);
    BreachOut {
        id: b.id,
        scope: b.scope,
        title: b.title,
        nature: b.nature,
        data_categories: b.data_categories,
        subjects_approx: b.subjects_approx,
        records_approx: b.records_approx,
        likely_consequences: b.likely_consequences,
        measures: b.measures,
        contact_point: b.contact_point,
        high_risk: b.high_risk,
        affected_tenants: b.affected_tenants,
        affected_contacts: b.affected_contacts,
        aware_at: b.aware_at,
        deadline_at: b.deadline_at,
        overdue,
        status: b.status,
        late_reason: b.late_reason,
        notified_at: b.notified_at,
        updates: b
            .updates
            .into_iter()
            .map(|u| BreachUpdateOut {
                note: u.note,
                created_at: u.created_at,
            })
            .collect(),
        created_at: b.created_at,
    }
}

#[derive(Serialize, ToSchema)]
pub struct BreachList {
    pub data: Vec<BreachOut>,
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct BreachIn {
    #[schema(min_length = 1, max_length = 200)]
    title: String,
    /// Nature of the breach (Art. 33(3)(a)).
    #[schema(min_length = 1, max_length = 4000)]
    nature: String,
    #[schema(min_length = 1, max_length = 1000)]
    data_categories: String,
    #[schema(minimum = 0)]
    subjects_approx: Option<i64>,
    #[schema(minimum = 0)]
    records_approx: Option<i64>,
    #[schema(min_length = 1, max_length = 4000)]
    likely_consequences: String,
    #[schema(min_length = 1, max_length = 4000)]
    measures: String,
    /// Name and contact details of the DPO or other contact point.
    #[schema(min_length = 1, max_length = 500)]
    contact_point: String,
    /// Default false.
    high_risk: Option<bool>,
    /// When the organisation became aware (not in the future); the deadline runs from here.
    aware_at: DateTime<Utc>,
    /// Platform breaches: the affected tenants.
    #[schema(max_items = 1000)]
    affected_tenants: Option<Vec<Uuid>>,
    /// A tenant's own breach: its contacts to inform when high risk.
    #[schema(max_items = 10000)]
    affected_contacts: Option<Vec<Uuid>>,
}

fn uuids(i: &mut Input<'_>, field: &str, max: usize) -> Vec<Uuid> {
    let mut out = Vec::new();
    let Some(items) = i.array(field, false, 0, max) else {
        return out;
    };
    for (n, item) in items.iter().enumerate() {
        match item.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
            Some(u) => out.push(u),
            None => {
                let pointer = format!("{}/{n}", i.pointer(field));
                i.push_errors(vec![crm_domain::FieldError::at(
                    pointer,
                    "invalid_uuid",
                    "must be a UUID",
                )]);
            }
        }
    }
    out
}

/// Record a breach. Platform admins record the processor's breaches and name the affected
/// tenants; tenant admins and dpos record their own (and may name affected contacts).
#[utoipa::path(
    tag = "breaches",
    request_body(content = BreachIn, content_type = "application/json"),
    responses((status = 201, description = "Recorded", body = BreachOut)),
    security(("bearer" = []))
)]
#[post("/breaches")]
pub async fn create_breach(
    caller: Caller,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    // Authorisation before validation: a caller who may not record learns nothing more.
    breaches::may_handle(&caller.0)?;
    let now = state.clock.now();
    let mut i = Input::body(
        &body,
        &[
            "title",
            "nature",
            "data_categories",
            "subjects_approx",
            "records_approx",
            "likely_consequences",
            "measures",
            "contact_point",
            "high_risk",
            "aware_at",
            "affected_tenants",
            "affected_contacts",
        ],
    )?;
    let title = i.string("title", true, text(1, 200));
    let nature = i.string("nature", true, text(1, 4000));
    let data_categories = i.string("data_categories", true, text(1, 1000));
    let subjects_approx = i.integer("subjects_approx", false, 0, i64::MAX / 2);
    let records_approx = i.integer("records_approx", false, 0, i64::MAX / 2);
    let likely_consequences = i.string("likely_consequences", true, text(1, 4000));
    let measures = i.string("measures", true, text(1, 4000));
    let contact_point = i.string("contact_point", true, text(1, 500));
    let high_risk = i.boolean("high_risk", false).unwrap_or(false);
    let aware_at = i.string("aware_at", true, |raw| {
        let t = input::timestamp(raw)?;
        if t > now + chrono::Duration::minutes(5) {
            Err(crm_domain::InvalidValue::new(
                "in_future",
                "must not be in the future",
            ))
        } else {
            Ok(t)
        }
    });
    let affected_tenants = uuids(&mut i, "affected_tenants", 1000);
    let affected_contacts = uuids(&mut i, "affected_contacts", 10000);
    i.finish()?;
    let (
        Some(title),
        Some(nature),
        Some(data_categories),
        Some(likely_consequences),
        Some(measures),
        Some(contact_point),
        Some(aware_at),
    ) = (
        title,
        nature,
        data_categories,
        likely_consequences,
        measures,
        contact_point,
        aware_at,
    )
    else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "validated breach incomplete"
        )));
    };
    let b = breaches::record(
        &state.db,
        &caller.0,
        NewBreach {
            title,
            nature,
            data_categories,
            subjects_approx,
            records_approx,
            likely_consequences,
            measures,
            contact_point,
            high_risk,
            aware_at,
            affected_tenants,
            affected_contacts,
        },
        &caller.1,
        now,
    )
    .await?;
    Ok(HttpResponse::Created().json(out(b, now)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BreachQuery {
    /// `open`: not closed.
    #[param(value_type = Option<String>)]
    status: Option<String>,
    /// `true`: not notified and past the 72-hour deadline.
    #[param(value_type = Option<bool>)]
    overdue: Option<String>,
}

/// Breaches the caller recorded or that affect its tenant, newest first.
#[utoipa::path(
    tag = "breaches",
    params(BreachQuery),
    responses((status = 200, description = "Breaches", body = BreachList)),
    security(("bearer" = []))
)]
#[get("/breaches")]
pub async fn list_breaches(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<BreachQuery>,
) -> Result<HttpResponse, ApiError> {
    breaches::may_handle(&caller.0)?;
    let mut errs = QueryErrors::default();
    let open = errs
        .parse("status", query.status.as_deref(), |raw| match raw {
            "open" => Ok(true),
            _ => Err(crm_domain::InvalidValue::new(
                "invalid_value",
                "must be open",
            )),
        })
        .unwrap_or(false);
    let overdue = errs
        .parse("overdue", query.overdue.as_deref(), input::boolean)
        .unwrap_or(false);
    errs.finish()?;
    let now = state.clock.now();
    let data = breaches::list(&state.db, &caller.0, open, overdue, now)
        .await?
        .into_iter()
        .map(|b| out(b, now))
        .collect();
    Ok(HttpResponse::Ok().json(BreachList { data }))
}

/// One breach.
#[utoipa::path(
    tag = "breaches",
    params(("id" = Uuid, Path, description = "Breach id")),
    responses((status = 200, description = "The breach", body = BreachOut)),
    security(("bearer" = []))
)]
#[get("/breaches/{id}")]
pub async fn get_breach(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    breaches::may_handle(&caller.0)?;
    let id = path_id("breach", &path)?;
    let b = breaches::get(&state.db, &caller.0, id).await?;
    Ok(HttpResponse::Ok().json(out(b, state.clock.now())))
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct BreachUpdateIn {
    #[schema(min_length = 1, max_length = 4000)]
    note: String,
    /// Close the breach with this update (default false).
    close: Option<bool>,
}

/// Add a phased update (Art. 33(4)), optionally closing the breach. Recorder only.
#[utoipa::path(
    tag = "breaches",
    params(("id" = Uuid, Path, description = "Breach id")),
    request_body(content = BreachUpdateIn, content_type = "application/json"),
    responses((status = 200, description = "The breach", body = BreachOut)),
    security(("bearer" = []))
)]
#[post("/breaches/{id}/updates")]
pub async fn add_update(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    breaches::may_handle(&caller.0)?;
    let id = path_id("breach", &path)?;
    let mut i = Input::body(&body, &["note", "close"])?;
    let note = i.string("note", true, text(1, 4000));
    let close = i.boolean("close", false).unwrap_or(false);
    i.finish()?;
    let now = state.clock.now();
    let b = breaches::add_update(
        &state.db,
        &caller.0,
        id,
        note.unwrap_or_default(),
        close,
        &caller.1,
        now,
    )
    .await?;
    Ok(HttpResponse::Ok().json(out(b, now)))
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct NotifyIn {
    /// Required after the 72-hour deadline: the reasons for the delay.
    #[schema(min_length = 1, max_length = 2000)]
    late_reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct NotifyOut {
    pub breach: BreachOut,
    /// E-mails queued to the affected tenants' admins and dpos.
    pub controller_emails: usize,
    /// `breach.notified` events queued for the affected tenants' webhooks.
    pub webhook_events: usize,
    /// E-mails queued to affected data subjects (high-risk breaches of a tenant's own).
    pub data_subject_emails: usize,
}

/// Notify: every affected controller by e-mail (admins and dpos) and webhook
/// (`breach.notified`), and for a tenant's own high-risk breach the affected data subjects.
/// Needs a recent WebAuthn step-up; after the deadline a `late_reason` (422
/// `late_reason_required`). Delivery state: `GET /v1/breaches/{id}/notifications`.
#[utoipa::path(
    tag = "breaches",
    params(("id" = Uuid, Path, description = "Breach id")),
    request_body(content = NotifyIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Queued", body = NotifyOut),
        (status = 401, description = "`step_up_required`", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`already_notified`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[post("/breaches/{id}/notify")]
pub async fn notify(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    breaches::may_handle(&caller.0)?;
    let id = path_id("breach", &path)?;
    let mut i = Input::body(&body, &["late_reason"])?;
    let late_reason = i.string("late_reason", false, text(1, 2000));
    i.finish()?;
    crate::routes::webauthn::require_step_up(&state, &caller.0)?;
    let now = state.clock.now();
    let (b, report) = breaches::notify(
        &state.db,
        &state.vault,
        &caller.0,
        id,
        late_reason,
        &caller.1,
        now,
    )
    .await?;
    Ok(HttpResponse::Ok().json(NotifyOut {
        breach: out(b, now),
        controller_emails: report.emails,
        webhook_events: report.webhook_events,
        data_subject_emails: report.subjects,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct MessageOut {
    pub id: Uuid,
    /// The tenant the message went to (or on behalf of).
    pub tenant_id: Uuid,
    /// `controller` (an admin or dpo) or `data_subject`.
    pub recipient_kind: String,
    /// `pending`, `sent` or `dead`.
    pub status: String,
    pub attempts: i32,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MessageList {
    pub data: Vec<MessageOut>,
}

/// The e-mails a notification queued and their delivery state (webhook deliveries are under
/// `/v1/webhooks/{id}/deliveries`).
#[utoipa::path(
    tag = "breaches",
    params(("id" = Uuid, Path, description = "Breach id")),
    responses((status = 200, description = "Messages", body = MessageList)),
    security(("bearer" = []))
)]
#[get("/breaches/{id}/notifications")]
pub async fn notifications(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    breaches::may_handle(&caller.0)?;
    let id = path_id("breach", &path)?;
    let data = breaches::messages(&state.db, &caller.0, id)
        .await?
        .into_iter()
        .map(|m| MessageOut {
            id: m.id,
            tenant_id: m.tenant_id,
            recipient_kind: m.recipient_kind,
            status: m.status,
            attempts: m.attempts,
            sent_at: m.sent_at,
            last_error: m.last_error,
        })
        .collect();
    Ok(HttpResponse::Ok().json(MessageList { data }))
}
