//! `/v1/sub-processors`: the processor's published list of sub-processors and its history.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, patch, post, web};
use chrono::{DateTime, Utc};
use crm_domain::sub_processors::{self, NewSubProcessor, SubProcessor, SubProcessorChanges};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{created, if_match, path_id, with_etag};
use crate::auth::{Caller, PlatformAdmin};
use crate::input::{self, Input, text};
use crate::problem::ApiError;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct SubProcessorOut {
    pub id: Uuid,
    pub name: String,
    pub purpose: String,
    /// Categories of personal data the sub-processor handles.
    pub data_categories: Vec<String>,
    /// Where the data is processed, e.g. `EU (Ireland)`.
    pub location: String,
    /// Safeguards for transfers outside the EEA, e.g. `Standard Contractual Clauses`.
    pub transfer_safeguards: String,
    pub since: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
    /// Engaged now (since ≤ now < until).
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
}

impl From<SubProcessor> for SubProcessorOut {
    fn from(s: SubProcessor) -> Self {
        SubProcessorOut {
            id: s.id,
            name: s.name,
            purpose: s.purpose,
            data_categories: s.data_categories,
            location: s.location,
            transfer_safeguards: s.transfer_safeguards,
            since: s.since,
            until: s.until,
            active: s.active,
            created_at: s.created_at,
            updated_at: s.updated_at,
            version: s.version,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SubProcessorIn {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    #[schema(min_length = 1, max_length = 1000)]
    purpose: String,
    #[schema(min_items = 1, max_items = 20)]
    data_categories: Vec<String>,
    #[schema(min_length = 1, max_length = 200)]
    location: String,
    #[schema(min_length = 1, max_length = 1000)]
    transfer_safeguards: String,
    /// Default: now.
    since: Option<DateTime<Utc>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SubProcessorPatch {
    #[schema(min_length = 1, max_length = 200, nullable = false)]
    name: Option<String>,
    #[schema(min_length = 1, max_length = 1000, nullable = false)]
    purpose: Option<String>,
    #[schema(min_items = 1, max_items = 20, nullable = false)]
    data_categories: Option<Vec<String>>,
    #[schema(min_length = 1, max_length = 200, nullable = false)]
    location: Option<String>,
    #[schema(min_length = 1, max_length = 1000, nullable = false)]
    transfer_safeguards: Option<String>,
    #[schema(nullable = false)]
    since: Option<DateTime<Utc>>,
    /// End of the engagement; `null` undoes it.
    until: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct SubProcessorList {
    pub data: Vec<SubProcessorOut>,
}

#[derive(Serialize, ToSchema)]
pub struct SubProcessorChangeOut {
    pub id: Uuid,
    pub sub_processor_id: Uuid,
    /// `added`, `updated` or `removed`.
    pub change: String,
    pub changed_at: DateTime<Utc>,
    /// The entry as it was after the change.
    #[schema(value_type = Object)]
    pub snapshot: Value,
}

#[derive(Serialize, ToSchema)]
pub struct SubProcessorChangeList {
    pub data: Vec<SubProcessorChangeOut>,
}

const FIELDS: &[&str] = &[
    "name",
    "purpose",
    "data_categories",
    "location",
    "transfer_safeguards",
    "since",
    "until",
];

fn categories(i: &mut Input<'_>, required: bool) -> Option<Vec<String>> {
    let items = i.array("data_categories", required, 1, 20)?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let pointer = format!("{}/{n}", i.pointer("data_categories"));
        match item.as_str().map(|s| crm_domain::values::text(s, 1, 100)) {
            Some(Ok(c)) => out.push(c),
            Some(Err(e)) => errors.push(crm_domain::FieldError::at(pointer, e.code, e.detail)),
            None => errors.push(crm_domain::FieldError::at(
                pointer,
                "invalid_type",
                "must be a string",
            )),
        }
    }
    let ok = errors.is_empty();
    i.push_errors(errors);
    ok.then_some(out)
}

/// Add a sub-processor to the register.
#[utoipa::path(
    tag = "sub-processors",
    request_body(content = SubProcessorIn, content_type = "application/json"),
    responses((status = 201, description = "Added", body = SubProcessorOut, headers(("ETag" = String), ("Location" = String)))),
    security(("bearer" = []))
)]
#[post("/sub-processors")]
pub async fn create_sub_processor(
    caller: PlatformAdmin,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, &FIELDS[..6])?;
    let name = i.string("name", true, text(1, 200));
    let purpose = i.string("purpose", true, text(1, 1000));
    let data_categories = categories(&mut i, true);
    let location = i.string("location", true, text(1, 200));
    let transfer_safeguards = i.string("transfer_safeguards", true, text(1, 1000));
    let since = i.string("since", false, input::timestamp);
    i.finish()?;
    let (
        Some(name),
        Some(purpose),
        Some(data_categories),
        Some(location),
        Some(transfer_safeguards),
    ) = (
        name,
        purpose,
        data_categories,
        location,
        transfer_safeguards,
    )
    else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "validated sub-processor incomplete"
        )));
    };
    let input = NewSubProcessor {
        name,
        purpose,
        data_categories,
        location,
        transfer_safeguards,
        since,
    };
    let sp = sub_processors::create(
        &state.db,
        input,
        Some(caller.0.user_id.as_uuid()),
        state.clock.now(),
    )
    .await?;
    let version = sp.version;
    let out = SubProcessorOut::from(sp);
    Ok(created(
        format!("/v1/sub-processors/{}", out.id),
        &out,
        version,
    ))
}

/// The register of sub-processors, past and present; every signed-in user may read it.
#[utoipa::path(
    tag = "sub-processors",
    responses((status = 200, description = "All sub-processors", body = SubProcessorList)),
    security(("bearer" = []))
)]
#[get("/sub-processors")]
pub async fn list_sub_processors(
    _caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let data = sub_processors::list(&state.db, state.clock.now()).await?;
    Ok(HttpResponse::Ok().json(SubProcessorList {
        data: data.into_iter().map(SubProcessorOut::from).collect(),
    }))
}

/// Every change to the register, oldest first.
#[utoipa::path(
    tag = "sub-processors",
    responses((status = 200, description = "Change history", body = SubProcessorChangeList)),
    security(("bearer" = []))
)]
#[get("/sub-processors/changes")]
pub async fn list_sub_processor_changes(
    _caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let data = sub_processors::changes(&state.db).await?;
    Ok(HttpResponse::Ok().json(SubProcessorChangeList {
        data: data
            .into_iter()
            .map(|c| SubProcessorChangeOut {
                id: c.id,
                sub_processor_id: c.sub_processor_id,
                change: c.change,
                changed_at: c.changed_at,
                snapshot: c.snapshot,
            })
            .collect(),
    }))
}

/// Change a sub-processor's entry, or end the engagement with `until`.
#[utoipa::path(
    tag = "sub-processors",
    params(
        ("id" = Uuid, Path, description = "Sub-processor id"),
        ("If-Match" = Option<String>, Header, description = "ETag of the version being changed"),
    ),
    request_body(content = SubProcessorPatch, content_type = "application/merge-patch+json"),
    responses((status = 200, description = "The changed entry", body = SubProcessorOut, headers(("ETag" = String)))),
    security(("bearer" = []))
)]
#[patch("/sub-processors/{id}")]
pub async fn update_sub_processor(
    caller: PlatformAdmin,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("sub_processor", &id)?;
    let expected = if_match(&req)?;
    let mut i = Input::body(&body, FIELDS)?;
    let changes = SubProcessorChanges {
        name: i.patch_string("name", false, text(1, 200)).apply_to(None),
        purpose: i
            .patch_string("purpose", false, text(1, 1000))
            .apply_to(None),
        data_categories: if i.has("data_categories") {
            categories(&mut i, true)
        } else {
            None
        },
        location: i
            .patch_string("location", false, text(1, 200))
            .apply_to(None),
        transfer_safeguards: i
            .patch_string("transfer_safeguards", false, text(1, 1000))
            .apply_to(None),
        since: i
            .patch_string("since", false, input::timestamp)
            .apply_to(None),
        until: i.patch_string("until", true, input::timestamp),
    };
    i.finish()?;
    let sp = sub_processors::update(
        &state.db,
        id,
        changes,
        expected,
        Some(caller.0.user_id.as_uuid()),
        state.clock.now(),
    )
    .await?;
    let version = sp.version;
    Ok(with_etag(
        StatusCode::OK,
        &SubProcessorOut::from(sp),
        version,
    ))
}
