//! Purposes and consent records with their lawful basis.

use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use crm_domain::consents::{self, ConsentRecord, NewConsent, Purpose};
use crm_domain::ids::ContactId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::path_id;
use crate::auth::{ConsentsRead, ConsentsWrite, GdprOfficer};
use crate::input::{Input, text};
use crate::problem::ApiError;
use crate::state::AppState;

/// What personal data is used for, defined by the tenant (e.g. `newsletter`).
#[derive(Serialize, ToSchema)]
pub struct PurposeOut {
    pub id: Uuid,
    #[schema(example = "newsletter")]
    pub key: String,
    pub name: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<Purpose> for PurposeOut {
    fn from(p: Purpose) -> Self {
        PurposeOut {
            id: p.id,
            key: p.key,
            name: p.name,
            description: p.description,
            created_at: p.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PurposeIn {
    #[schema(example = "newsletter", pattern = "^[a-z0-9_-]{1,64}$")]
    key: String,
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    #[schema(min_length = 1, max_length = 1000)]
    description: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PurposeList {
    pub data: Vec<PurposeOut>,
}

/// Define a purpose of processing.
#[utoipa::path(
    tag = "consent",
    request_body(content = PurposeIn, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = PurposeOut),
        (status = 409, description = "`purpose_exists`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[post("/purposes")]
pub async fn create_purpose(
    caller: GdprOfficer,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, &["key", "name", "description"])?;
    let key = i.string("key", true, consents::parse_purpose_key);
    let name = i.string("name", true, text(1, 200));
    let description = i.string("description", false, text(1, 1000));
    i.finish()?;
    let (Some(key), Some(name)) = (key, name) else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "validated purpose incomplete"
        )));
    };
    let p = consents::create_purpose(
        &state.db,
        &caller.0.tenant,
        key,
        name,
        description,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Created().json(PurposeOut::from(p)))
}

/// List the tenant's purposes.
#[utoipa::path(
    tag = "consent",
    responses((status = 200, description = "All purposes", body = PurposeList)),
    security(("bearer" = []), ("oauth2" = ["consents:read"]))
)]
#[get("/purposes")]
pub async fn list_purposes(
    caller: ConsentsRead,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let data = consents::list_purposes(&state.db, &caller.0.tenant).await?;
    Ok(HttpResponse::Ok().json(PurposeList {
        data: data.into_iter().map(PurposeOut::from).collect(),
    }))
}

/// One consent record: a grant or a withdrawal, never changed afterwards.
#[derive(Serialize, ToSchema)]
pub struct ConsentOut {
    pub id: Uuid,
    pub contact_id: Uuid,
    #[schema(example = "newsletter")]
    pub purpose: String,
    /// `granted` or `withdrawn`.
    #[schema(example = "granted")]
    pub status: String,
    /// Art. 6(1): consent, contract, legal_obligation, vital_interests, public_task,
    /// legitimate_interests.
    #[schema(example = "consent")]
    pub lawful_basis: String,
    #[schema(example = "web")]
    pub channel: String,
    pub source: Option<String>,
    pub evidence: Option<String>,
    pub recorded_by: Option<Uuid>,
    pub recorded_at: DateTime<Utc>,
}

impl From<ConsentRecord> for ConsentOut {
    fn from(r: ConsentRecord) -> Self {
        ConsentOut {
            id: r.id,
            contact_id: r.contact_id,
            purpose: r.purpose,
            status: r.status,
            lawful_basis: r.lawful_basis,
            channel: r.channel,
            source: r.source,
            evidence: r.evidence,
            recorded_by: r.recorded_by,
            recorded_at: r.recorded_at,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum LawfulBasis {
    Consent,
    Contract,
    LegalObligation,
    VitalInterests,
    PublicTask,
    LegitimateInterests,
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    Phone,
    Post,
    Web,
    InPerson,
    Api,
    Other,
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum ConsentStatus {
    Granted,
    Withdrawn,
}

/// A consent record to append.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ConsentIn {
    /// Key of a defined purpose.
    #[schema(example = "newsletter")]
    purpose: String,
    status: ConsentStatus,
    lawful_basis: LawfulBasis,
    channel: Channel,
    /// Where the consent was given, e.g. a form name.
    #[schema(min_length = 1, max_length = 200)]
    source: Option<String>,
    /// Proof, e.g. the wording shown and a reference to the submission.
    #[schema(min_length = 1, max_length = 1000)]
    evidence: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ConsentState {
    /// The latest record per purpose: what holds now.
    pub current: Vec<ConsentOut>,
    /// Every record, oldest first.
    pub history: Vec<ConsentOut>,
}

/// Record a grant or withdrawal of consent (or another lawful basis) for a purpose.
#[utoipa::path(
    tag = "consent",
    params(("id" = Uuid, Path, description = "Contact id")),
    request_body(content = ConsentIn, content_type = "application/json"),
    responses((status = 201, description = "Recorded", body = ConsentOut)),
    security(("bearer" = []), ("oauth2" = ["consents:write"]))
)]
#[post("/contacts/{id}/consents")]
pub async fn record_consent(
    caller: ConsentsWrite,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = ContactId::from_uuid(path_id("contact", &id)?);
    let mut i = Input::body(
        &body,
        &[
            "purpose",
            "status",
            "lawful_basis",
            "channel",
            "source",
            "evidence",
        ],
    )?;
    let purpose = i.string("purpose", true, consents::parse_purpose_key);
    let granted = i.string("status", true, |raw| match raw {
        "granted" => Ok(true),
        "withdrawn" => Ok(false),
        _ => Err(crm_domain::InvalidValue::new(
            "invalid_status",
            "must be granted or withdrawn",
        )),
    });
    let lawful_basis = i.string("lawful_basis", true, consents::parse_lawful_basis);
    let channel = i.string("channel", true, consents::parse_channel);
    let source = i.string("source", false, text(1, 200));
    let evidence = i.string("evidence", false, text(1, 1000));
    i.finish()?;
    let (Some(purpose_key), Some(granted), Some(lawful_basis), Some(channel)) =
        (purpose, granted, lawful_basis, channel)
    else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "validated consent incomplete"
        )));
    };
    let input = NewConsent {
        purpose_key,
        granted,
        lawful_basis,
        channel,
        source,
        evidence,
    };
    let r = consents::record_consent(
        &state.db,
        &state.vault,
        &caller.0.tenant,
        id,
        input,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Created().json(ConsentOut::from(r)))
}

/// A contact's consent: the current state per purpose and the full history.
#[utoipa::path(
    tag = "consent",
    params(("id" = Uuid, Path, description = "Contact id")),
    responses((status = 200, description = "Consent state", body = ConsentState)),
    security(("bearer" = []), ("oauth2" = ["consents:read"]))
)]
#[get("/contacts/{id}/consents")]
pub async fn get_consents(
    caller: ConsentsRead,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = ContactId::from_uuid(path_id("contact", &id)?);
    let (current, history) =
        consents::history(&state.db, &state.vault, &caller.0.tenant, id).await?;
    Ok(HttpResponse::Ok().json(ConsentState {
        current: current.into_iter().map(ConsentOut::from).collect(),
        history: history.into_iter().map(ConsentOut::from).collect(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct WithdrawIn {
    /// How the withdrawal reached the controller (default `api`).
    #[schema(nullable = false)]
    channel: Option<Channel>,
}

/// Withdraw consent for a purpose in one call; it takes effect at once.
#[utoipa::path(
    tag = "consent",
    params(("id" = Uuid, Path, description = "Contact id"), ("purpose" = String, Path, description = "Purpose key")),
    request_body(content = WithdrawIn, content_type = "application/json"),
    responses((status = 201, description = "The withdrawal record", body = ConsentOut)),
    security(("bearer" = []), ("oauth2" = ["consents:write"]))
)]
#[post("/contacts/{id}/consents/{purpose}/withdraw")]
pub async fn withdraw_consent(
    caller: ConsentsWrite,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let (id, purpose) = path.into_inner();
    let id = ContactId::from_uuid(path_id("contact", &id)?);
    let purpose =
        consents::parse_purpose_key(&purpose).map_err(|_| ApiError::not_found("consent"))?;
    let mut i = Input::body(&body, &["channel"])?;
    let channel = i
        .string("channel", false, consents::parse_channel)
        .unwrap_or_else(|| "api".into());
    i.finish()?;
    let r = consents::withdraw(
        &state.db,
        &state.vault,
        &caller.0.tenant,
        id,
        &purpose,
        channel,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Created().json(ConsentOut::from(r)))
}
