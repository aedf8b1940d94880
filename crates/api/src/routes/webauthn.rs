//! WebAuthn: registering credentials, the second factor after a password or SSO, passkey
//! sign-in, step-up, and the tenant's MFA policy.
//!
//! A ceremony is two calls: `…/start` returns `options` to hand to
//! `navigator.credentials.create()`/`get()` (the `publicKey` member) and a `ceremony_id`;
//! `…/finish` takes the browser's `PublicKeyCredential` (its `toJSON()` form) with that id.
//! Ceremony state lives in the database, expires after five minutes and is spent by the
//! first finish, whether it succeeds or not.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, delete, get, patch, post, put, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use crm_domain::ids::{TenantId, UserId};
use crm_domain::mfa::{self, ChallengeKind, NewCredential, StoredPasskey, TicketKind};
use crm_domain::sessions::{self, SignIn};
use crm_domain::{Principal, users};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, Url, Webauthn, WebauthnBuilder,
};

use crate::auth::{Caller, TenantAdmin, issue_access_token};
use crate::config::Settings;
use crate::input::{Input, text};
use crate::problem::ApiError;
use crate::routes::auth::{AccessTokenOut, signed_in};
use crate::routes::path_id;
use crate::state::AppState;

/// Builds the relying party from the settings.
pub fn relying_party(settings: &Settings) -> anyhow::Result<Webauthn> {
    let mut origins = settings.webauthn_origins.iter();
    let first = origins
        .next()
        .ok_or_else(|| anyhow::anyhow!("no WebAuthn origin configured"))?;
    let first = Url::parse(first)?;
    let mut builder = WebauthnBuilder::new(&settings.webauthn_rp_id, &first)
        .map_err(|e| anyhow::anyhow!("WebAuthn relying party: {e:?}"))?
        .rp_name("CRM");
    for o in origins {
        builder = builder.append_allowed_origin(&Url::parse(o)?);
    }
    builder
        .build()
        .map_err(|e| anyhow::anyhow!("WebAuthn relying party: {e:?}"))
}

/// Options for the browser, and the id to finish the ceremony with.
#[derive(Serialize, ToSchema)]
pub struct CeremonyOut {
    pub ceremony_id: Uuid,
    /// `CredentialCreationOptions` / `CredentialRequestOptions` as JSON: pass its `publicKey`
    /// member to `navigator.credentials.create()` / `.get()` (after decoding the base64url
    /// buffers, e.g. with `PublicKeyCredential.parseCreationOptionsFromJSON`).
    #[schema(value_type = Object)]
    pub options: Value,
    /// Seconds until the ceremony expires.
    pub expires_in: i64,
}

/// A registered WebAuthn credential.
#[derive(Serialize, ToSchema)]
pub struct CredentialOut {
    pub id: Uuid,
    #[schema(example = "YubiKey 5C")]
    pub name: String,
    /// The authenticator's signature counter as last seen (0 for authenticators without one).
    pub sign_count: i64,
    pub created_at: DateTime<Utc>,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<mfa::Credential> for CredentialOut {
    fn from(c: mfa::Credential) -> Self {
        CredentialOut {
            id: c.id,
            name: c.name,
            sign_count: c.sign_count,
            created_at: c.created_at,
            last_used_at: c.last_used_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CredentialList {
    pub data: Vec<CredentialOut>,
}

fn to_json<T: Serialize>(value: &T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::Internal(e.into()))
}

fn state_json<T: Serialize>(value: &T) -> Result<String, ApiError> {
    serde_json::to_string(value).map_err(|e| ApiError::Internal(e.into()))
}

fn state_from<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, ApiError> {
    serde_json::from_str(raw)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("stored ceremony state")))
}

fn invalid_ceremony() -> ApiError {
    ApiError::Unauthenticated {
        code: "invalid_ceremony",
        detail: "the ceremony is unknown, expired or already used; start again",
    }
}

fn webauthn_failed() -> ApiError {
    ApiError::Unauthenticated {
        code: "webauthn_failed",
        detail: "the authenticator's response did not verify",
    }
}

fn ceremony(id: Uuid, options: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(CeremonyOut {
            ceremony_id: id,
            options,
            expires_in: mfa::CEREMONY_TTL.num_seconds(),
        })
}

/// The fields of a finish call, read and validated before any ceremony is spent.
struct Finish<T> {
    ceremony_id: Uuid,
    credential: T,
    ticket: Option<String>,
    name: Option<String>,
}

fn read_finish<T: serde::de::DeserializeOwned>(
    body: &Value,
    with_ticket: bool,
    with_name: bool,
) -> Result<Finish<T>, ApiError> {
    let mut allowed = vec!["ceremony_id", "credential"];
    if with_ticket {
        allowed.push("mfa_ticket");
    }
    if with_name {
        allowed.push("name");
    }
    let mut i = Input::body(body, &allowed)?;
    let ceremony_id = i.string("ceremony_id", true, crate::input::uuid);
    let ticket = if with_ticket {
        i.string("mfa_ticket", true, text(1, 200))
    } else {
        None
    };
    let name = if with_name {
        i.string("name", false, text(1, 100))
    } else {
        None
    };
    let credential = match body.get("credential") {
        None | Some(Value::Null) => {
            i.error("credential", "required", "is required");
            None
        }
        Some(v) => match serde_json::from_value::<T>(v.clone()) {
            Ok(c) => Some(c),
            Err(_) => {
                i.error(
                    "credential",
                    "invalid_credential",
                    "must be the PublicKeyCredential returned by the browser, as JSON",
                );
                None
            }
        },
    };
    i.finish()?;
    match (ceremony_id, credential) {
        (Some(ceremony_id), Some(credential)) => Ok(Finish {
            ceremony_id,
            credential,
            ticket,
            name,
        }),
        _ => Err(ApiError::Internal(anyhow::anyhow!(
            "validated ceremony incomplete"
        ))),
    }
}

fn read_ticket(body: &Value) -> Result<String, ApiError> {
    let mut i = Input::body(body, &["mfa_ticket"])?;
    let ticket = i.string("mfa_ticket", true, text(1, 200));
    i.finish()?;
    ticket.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("validated ticket missing")))
}

fn credential_key(id: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(id)
}

// ---------------------------------------------------------------------------------------
// Registration

async fn start_registration(
    state: &AppState,
    tenant_id: TenantId,
    user_id: UserId,
    email: &str,
    display_name: &str,
) -> Result<HttpResponse, ApiError> {
    let existing = mfa::passkeys_of(&state.db, tenant_id, user_id).await?;
    let exclude = existing
        .iter()
        .filter_map(|p| serde_json::from_str::<Passkey>(&p.passkey).ok())
        .map(|p| p.cred_id().clone())
        .collect::<Vec<_>>();
    let (options, reg) = state
        .webauthn
        .start_passkey_registration(user_id.as_uuid(), email, display_name, Some(exclude))
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("starting registration: {e:?}")))?;
    let id = mfa::create_challenge(
        &state.db,
        tenant_id,
        Some(user_id),
        ChallengeKind::WebauthnRegister,
        state_json(&reg)?,
        state.clock.now(),
    )
    .await?;
    Ok(ceremony(id, to_json(&options)?))
}

async fn finish_registration(
    state: &AppState,
    tenant_id: TenantId,
    user_id: UserId,
    finish: Finish<RegisterPublicKeyCredential>,
    actor: &crm_domain::audit::Actor,
) -> Result<CredentialOut, ApiError> {
    let now = state.clock.now();
    let challenge = mfa::consume_challenge(
        &state.db,
        finish.ceremony_id,
        ChallengeKind::WebauthnRegister,
        now,
    )
    .await?
    .filter(|c| c.tenant_id == tenant_id && c.user_id == Some(user_id))
    .ok_or_else(invalid_ceremony)?;
    let reg: PasskeyRegistration = state_from(&challenge.state)?;
    let passkey = state
        .webauthn
        .finish_passkey_registration(&finish.credential, &reg)
        .map_err(|_| webauthn_failed())?;
    let credential = mfa::add_credential(
        &state.db,
        tenant_id,
        user_id,
        NewCredential {
            credential_id: credential_key(passkey.cred_id()),
            name: finish.name.unwrap_or_else(|| "Passkey".to_owned()),
            passkey: state_json(&passkey)?,
            sign_count: 0,
        },
        finish.ticket.as_deref(),
        actor,
        now,
    )
    .await?;
    Ok(credential.into())
}

/// Start registering a WebAuthn credential (passkey or security key) for yourself.
#[utoipa::path(
    tag = "webauthn",
    responses((status = 200, description = "Creation options", body = CeremonyOut)),
    security(("bearer" = []))
)]
#[post("/me/webauthn/register/start")]
pub async fn register_start(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = caller.0;
    let user = users::get_user(&state.db, &p.tenant, p.user_id).await?;
    let display = user
        .display_name
        .clone()
        .unwrap_or_else(|| user.email.clone());
    start_registration(&state, p.tenant.id(), p.user_id, &user.email, &display).await
}

/// Body of `…/register/finish` and `/auth/mfa/enrol/finish`.
#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct RegisterFinishIn {
    ceremony_id: Uuid,
    /// A name to tell credentials apart (default `Passkey`).
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    /// The `PublicKeyCredential` from `navigator.credentials.create()`, as `toJSON()` gives it.
    #[schema(value_type = Object)]
    credential: Value,
}

/// Finish registering a credential.
#[utoipa::path(
    tag = "webauthn",
    request_body(content = RegisterFinishIn, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered", body = CredentialOut),
        (status = 401, description = "`invalid_ceremony` or `webauthn_failed`", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`credential_exists`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[post("/me/webauthn/register/finish")]
pub async fn register_finish(
    caller: Caller,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let finish = read_finish::<RegisterPublicKeyCredential>(&body, false, true)?;
    let p = caller.0;
    let out = finish_registration(&state, p.tenant.id(), p.user_id, finish, &caller.1).await?;
    Ok(HttpResponse::Created().json(out))
}

/// Your WebAuthn credentials.
#[utoipa::path(
    tag = "webauthn",
    responses((status = 200, description = "Credentials", body = CredentialList)),
    security(("bearer" = []))
)]
#[get("/me/webauthn/credentials")]
pub async fn list_credentials(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = caller.0;
    let data = mfa::list_credentials(&state.db, p.tenant.id(), p.user_id)
        .await?
        .into_iter()
        .map(CredentialOut::from)
        .collect();
    Ok(HttpResponse::Ok().json(CredentialList { data }))
}

#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct RenameIn {
    #[schema(min_length = 1, max_length = 100)]
    name: String,
}

/// Rename one of your credentials.
#[utoipa::path(
    tag = "webauthn",
    params(("id" = Uuid, Path, description = "Credential id")),
    request_body(content = RenameIn, content_type = "application/json"),
    responses((status = 200, description = "Renamed", body = CredentialOut)),
    security(("bearer" = []))
)]
#[patch("/me/webauthn/credentials/{id}")]
pub async fn rename_credential(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("credential", &path)?;
    let mut i = Input::body(&body, &["name"])?;
    let name = i.string("name", true, text(1, 100));
    i.finish()?;
    let name = name.unwrap_or_default();
    let c = mfa::rename_credential(&state.db, &caller.0, id, name).await?;
    Ok(HttpResponse::Ok().json(CredentialOut::from(c)))
}

/// Remove one of your credentials. While MFA is required the last one cannot be removed.
#[utoipa::path(
    tag = "webauthn",
    params(("id" = Uuid, Path, description = "Credential id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 409, description = "`last_credential`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[delete("/me/webauthn/credentials/{id}")]
pub async fn remove_credential(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("credential", &path)?;
    mfa::remove_credential(&state.db, &caller.0, id, &caller.1, state.clock.now()).await?;
    Ok(HttpResponse::NoContent().finish())
}

// ---------------------------------------------------------------------------------------
// Tickets: enrolment and second factor

#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct TicketIn {
    /// The ticket from the first factor (`/auth/login` or the SSO callback).
    #[schema(min_length = 1, max_length = 200)]
    mfa_ticket: String,
}

async fn ticket_of(
    state: &AppState,
    token: &str,
    kind: TicketKind,
) -> Result<mfa::Ticket, ApiError> {
    let ticket = mfa::find_ticket(&state.db, token, state.clock.now()).await?;
    if ticket.kind != kind {
        return Err(ApiError::status(
            StatusCode::FORBIDDEN,
            match ticket.kind {
                TicketKind::Enrol => "enrolment_required",
                TicketKind::Verify => "already_enrolled",
            },
            match ticket.kind {
                TicketKind::Enrol => "this ticket can only register a first credential",
                TicketKind::Verify => "this ticket is for authenticating with a credential",
            },
        ));
    }
    Ok(ticket)
}

/// Start registering a first credential with an enrolment ticket.
///
/// A user who must use MFA but has no credential gets an enrolment ticket at sign-in; it
/// can do nothing but register one. After that the same ticket authenticates with it at
/// `/auth/mfa/webauthn/start`.
#[utoipa::path(
    tag = "webauthn",
    request_body(content = TicketIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Creation options", body = CeremonyOut),
        (status = 401, description = "`invalid_mfa_ticket`", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`already_enrolled`", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/auth/mfa/enrol/start")]
pub async fn enrol_start(
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let token = read_ticket(&body)?;
    let ticket = ticket_of(&state, &token, TicketKind::Enrol).await?;
    let tenant = crm_domain::tenants::tenant_scope(&state.db, ticket.tenant_id).await?;
    let user = users::get_user(&state.db, &tenant, ticket.user_id).await?;
    let display = user
        .display_name
        .clone()
        .unwrap_or_else(|| user.email.clone());
    start_registration(
        &state,
        ticket.tenant_id,
        ticket.user_id,
        &user.email,
        &display,
    )
    .await
}

#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct EnrolFinishIn {
    #[schema(min_length = 1, max_length = 200)]
    mfa_ticket: String,
    ceremony_id: Uuid,
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    #[schema(value_type = Object)]
    credential: Value,
}

/// Finish enrolment; continue with `/auth/mfa/webauthn/start` and the same ticket.
#[utoipa::path(
    tag = "webauthn",
    request_body(content = EnrolFinishIn, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered", body = CredentialOut),
        (status = 401, description = "`invalid_mfa_ticket`, `invalid_ceremony` or `webauthn_failed`", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`already_enrolled`", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/auth/mfa/enrol/finish")]
pub async fn enrol_finish(
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let finish = read_finish::<RegisterPublicKeyCredential>(&body, true, true)?;
    let token = finish.ticket.clone().unwrap_or_default();
    let ticket = ticket_of(&state, &token, TicketKind::Enrol).await?;
    let actor = crm_domain::audit::Actor {
        actor_id: Some(ticket.user_id.as_uuid()),
        kind: "user",
        request_id: None,
    };
    let out = finish_registration(&state, ticket.tenant_id, ticket.user_id, finish, &actor).await?;
    Ok(HttpResponse::Created().json(out))
}

/// Verifies an assertion against the stored state and the user's own credentials; saves
/// the counter.
async fn verify_assertion(
    state: &AppState,
    kind: ChallengeKind,
    finish: &Finish<PublicKeyCredential>,
    tenant_id: TenantId,
    user_id: UserId,
) -> Result<(), ApiError> {
    let now = state.clock.now();
    let challenge = mfa::consume_challenge(&state.db, finish.ceremony_id, kind, now)
        .await?
        .filter(|c| c.tenant_id == tenant_id && c.user_id == Some(user_id))
        .ok_or_else(invalid_ceremony)?;
    let auth: PasskeyAuthentication = state_from(&challenge.state)?;
    let result = state
        .webauthn
        .finish_passkey_authentication(&finish.credential, &auth)
        .map_err(|_| webauthn_failed())?;
    let key = credential_key(result.cred_id());
    let stored = mfa::passkey_by_credential_id(&state.db, tenant_id, &key)
        .await?
        .filter(|s| s.user_id == user_id)
        .ok_or_else(webauthn_failed)?;
    save_use(state, &stored, &result, now).await
}

async fn save_use(
    state: &AppState,
    stored: &StoredPasskey,
    result: &webauthn_rs::prelude::AuthenticationResult,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let mut passkey: Passkey = state_from(&stored.passkey)?;
    passkey.update_credential(result);
    mfa::record_use(
        &state.db,
        stored,
        state_json(&passkey)?,
        i64::from(result.counter()),
        now,
    )
    .await?;
    Ok(())
}

async fn start_assertion(
    state: &AppState,
    tenant_id: TenantId,
    user_id: UserId,
    kind: ChallengeKind,
) -> Result<HttpResponse, ApiError> {
    let passkeys: Vec<Passkey> = mfa::passkeys_of(&state.db, tenant_id, user_id)
        .await?
        .iter()
        .map(|p| state_from(&p.passkey))
        .collect::<Result<_, _>>()?;
    if passkeys.is_empty() {
        return Err(ApiError::status(
            StatusCode::CONFLICT,
            "no_credential",
            "register a WebAuthn credential first (/v1/me/webauthn/register/start)",
        ));
    }
    let (options, auth) = state
        .webauthn
        .start_passkey_authentication(&passkeys)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("starting authentication: {e:?}")))?;
    let id = mfa::create_challenge(
        &state.db,
        tenant_id,
        Some(user_id),
        kind,
        state_json(&auth)?,
        state.clock.now(),
    )
    .await?;
    Ok(ceremony(id, to_json(&options)?))
}

/// Second factor: start authenticating with a credential, with the ticket from sign-in.
#[utoipa::path(
    tag = "webauthn",
    request_body(content = TicketIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Request options", body = CeremonyOut),
        (status = 401, description = "`invalid_mfa_ticket`", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`enrolment_required`", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/auth/mfa/webauthn/start")]
pub async fn mfa_start(
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let token = read_ticket(&body)?;
    let ticket = ticket_of(&state, &token, TicketKind::Verify).await?;
    start_assertion(
        &state,
        ticket.tenant_id,
        ticket.user_id,
        ChallengeKind::WebauthnAuthenticate,
    )
    .await
}

#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct MfaFinishIn {
    #[schema(min_length = 1, max_length = 200)]
    mfa_ticket: String,
    ceremony_id: Uuid,
    /// The `PublicKeyCredential` from `navigator.credentials.get()`, as `toJSON()` gives it.
    #[schema(value_type = Object)]
    credential: Value,
}

/// Second factor: finish; the ticket is spent and the session starts.
#[utoipa::path(
    tag = "webauthn",
    request_body(content = MfaFinishIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Signed in; `amr` holds the first factor, `hwk` and `mfa`", body = crate::routes::auth::TokenOut),
        (status = 401, description = "`invalid_mfa_ticket`, `invalid_ceremony` or `webauthn_failed`", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`enrolment_required`", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/auth/mfa/webauthn/finish")]
pub async fn mfa_finish(
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let finish = read_finish::<PublicKeyCredential>(&body, true, false)?;
    let token = finish.ticket.clone().unwrap_or_default();
    let ticket = ticket_of(&state, &token, TicketKind::Verify).await?;
    verify_assertion(
        &state,
        ChallengeKind::WebauthnAuthenticate,
        &finish,
        ticket.tenant_id,
        ticket.user_id,
    )
    .await?;
    if !mfa::spend_ticket(&state.db, &token).await? {
        return Err(ApiError::from(crm_domain::DomainError::Unauthenticated(
            "invalid_mfa_ticket",
        )));
    }
    let mut amr = ticket.amr.clone();
    amr.extend(["hwk".to_owned(), "mfa".to_owned()]);
    let session = sessions::start_session(
        &state.db,
        ticket.tenant_id,
        ticket.user_id,
        amr,
        true,
        &state.session_policy,
        state.clock.now(),
    )
    .await?;
    signed_in(&state, SignIn::Session(session))
}

// ---------------------------------------------------------------------------------------
// Passkey sign-in (usernameless)

#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct PasskeyStartIn {
    /// The tenant's slug.
    #[schema(min_length = 1, max_length = 63)]
    tenant: String,
}

/// Passkey sign-in: start. No user name: the authenticator offers the passkeys it holds for
/// this site (discoverable credentials).
#[utoipa::path(
    tag = "webauthn",
    request_body(content = PasskeyStartIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Request options", body = CeremonyOut),
        (status = 404, description = "`tenant_not_found`", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/auth/passkey/start")]
pub async fn passkey_start(
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, &["tenant"])?;
    let slug = i.string("tenant", true, text(1, 63));
    i.finish()?;
    let tenant_id =
        crm_domain::tenants::active_tenant_by_slug(&state.db, &slug.unwrap_or_default()).await?;
    let (options, auth) = state
        .webauthn
        .start_discoverable_authentication()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("starting authentication: {e:?}")))?;
    let id = mfa::create_challenge(
        &state.db,
        tenant_id,
        None,
        ChallengeKind::PasskeyLogin,
        state_json(&auth)?,
        state.clock.now(),
    )
    .await?;
    Ok(ceremony(id, to_json(&options)?))
}

#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct AssertionIn {
    ceremony_id: Uuid,
    /// The `PublicKeyCredential` from `navigator.credentials.get()`, as `toJSON()` gives it.
    #[schema(value_type = Object)]
    credential: Value,
}

/// Passkey sign-in: finish. A passkey verifies the user (PIN or biometrics) as well as the
/// device, so it satisfies MFA (`amr`: `hwk`, `mfa`).
#[utoipa::path(
    tag = "webauthn",
    request_body(content = AssertionIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Signed in", body = crate::routes::auth::TokenOut),
        (status = 401, description = "`invalid_ceremony` or `webauthn_failed`", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/auth/passkey/finish")]
pub async fn passkey_finish(
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let finish = read_finish::<PublicKeyCredential>(&body, false, false)?;
    let now = state.clock.now();
    let challenge = mfa::consume_challenge(
        &state.db,
        finish.ceremony_id,
        ChallengeKind::PasskeyLogin,
        now,
    )
    .await?
    .ok_or_else(invalid_ceremony)?;
    let auth: DiscoverableAuthentication = state_from(&challenge.state)?;
    let (user_handle, cred_id) = state
        .webauthn
        .identify_discoverable_authentication(&finish.credential)
        .map_err(|_| webauthn_failed())?;
    let stored =
        mfa::passkey_by_credential_id(&state.db, challenge.tenant_id, &credential_key(cred_id))
            .await?
            .filter(|s| s.user_id.as_uuid() == user_handle)
            .ok_or_else(webauthn_failed)?;
    let passkey: Passkey = state_from(&stored.passkey)?;
    let result = state
        .webauthn
        .finish_discoverable_authentication_v2(&finish.credential, auth, &passkey)
        .map_err(|_| webauthn_failed())?;
    save_use(&state, &stored, &result, now).await?;
    let session = sessions::start_session(
        &state.db,
        stored.tenant_id,
        stored.user_id,
        vec!["hwk".to_owned(), "mfa".to_owned()],
        true,
        &state.session_policy,
        now,
    )
    .await?;
    signed_in(&state, SignIn::Session(session))
}

// ---------------------------------------------------------------------------------------
// Step-up

/// Step-up: start a WebAuthn verification within your session.
///
/// Destructive operations (erasing a contact, resetting another user's MFA) need a WebAuthn
/// verification younger than `CRM_STEP_UP_MAX_AGE_SECS`; they answer 401
/// `step_up_required` otherwise.
#[utoipa::path(
    tag = "webauthn",
    responses(
        (status = 200, description = "Request options", body = CeremonyOut),
        (status = 409, description = "`no_credential`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[post("/auth/step-up/start")]
pub async fn step_up_start(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let p = caller.0;
    start_assertion(&state, p.tenant.id(), p.user_id, ChallengeKind::StepUp).await
}

/// Step-up: finish. The session's `auth_time` moves to now; a new access token says so.
#[utoipa::path(
    tag = "webauthn",
    request_body(content = AssertionIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Verified", body = AccessTokenOut),
        (status = 401, description = "`invalid_ceremony` or `webauthn_failed`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[post("/auth/step-up/finish")]
pub async fn step_up_finish(
    caller: Caller,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let finish = read_finish::<PublicKeyCredential>(&body, false, false)?;
    let p = caller.0;
    verify_assertion(
        &state,
        ChallengeKind::StepUp,
        &finish,
        p.tenant.id(),
        p.user_id,
    )
    .await?;
    let now = state.clock.now();
    let amr = mfa::record_step_up(&state.db, p.tenant.id(), p.session_id, now).await?;
    let session = sessions::IssuedSession {
        principal: p,
        auth_time: now,
        amr,
        refresh_token: String::new(),
        session_expires_at: now,
    };
    let (access_token, expires_in) = issue_access_token(&state, &session)?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(AccessTokenOut {
            access_token,
            token_type: "Bearer",
            expires_in,
        }))
}

/// Refuses unless the caller's session verified WebAuthn within the configured time.
pub fn require_step_up(state: &AppState, p: &Principal) -> Result<(), ApiError> {
    let fresh = p
        .webauthn_at
        .is_some_and(|at| state.clock.now() - at <= state.settings.step_up_max_age);
    if fresh {
        Ok(())
    } else {
        Err(ApiError::Unauthenticated {
            code: "step_up_required",
            detail: "this operation needs a recent WebAuthn verification: POST /v1/auth/step-up/start, then /finish, and retry",
        })
    }
}

// ---------------------------------------------------------------------------------------
// Administration

#[derive(Serialize, ToSchema)]
pub struct MfaResetOut {
    /// How many credentials were removed.
    pub removed: u64,
}

/// Reset another user's MFA: remove all their credentials and end their sessions. They
/// enrol again at the next sign-in. Needs a step-up.
#[utoipa::path(
    tag = "users",
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "Reset", body = MfaResetOut),
        (status = 401, description = "`step_up_required`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[delete("/users/{id}/webauthn")]
pub async fn reset_user_mfa(
    admin: TenantAdmin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = UserId::from_uuid(path_id("user", &path)?);
    require_step_up(&state, &admin.0)?;
    let removed =
        mfa::reset_user_mfa(&state.db, &admin.0.tenant, id, &admin.1, state.clock.now()).await?;
    Ok(HttpResponse::Ok().json(MfaResetOut { removed }))
}

#[derive(Serialize, serde::Deserialize, ToSchema)]
pub struct SecuritySettings {
    /// Every user of the tenant must sign in with WebAuthn as well (users without a
    /// credential enrol at their next sign-in; sessions without it end).
    pub mfa_required: bool,
}

/// The tenant's sign-in policy.
#[utoipa::path(
    tag = "tenants",
    responses((status = 200, description = "Policy", body = SecuritySettings)),
    security(("bearer" = []))
)]
#[get("/tenant/security")]
pub async fn get_security(
    admin: TenantAdmin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let required = mfa::mfa_required(&state.db, admin.0.tenant.id()).await?;
    Ok(HttpResponse::Ok().json(SecuritySettings {
        mfa_required: required,
    }))
}

/// Set the tenant's sign-in policy. Requiring MFA needs a credential of your own first
/// (409 `enrol_first`), so you do not lock yourself out.
#[utoipa::path(
    tag = "tenants",
    request_body(content = SecuritySettings, content_type = "application/json"),
    responses(
        (status = 200, description = "Policy", body = SecuritySettings),
        (status = 409, description = "`enrol_first`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[put("/tenant/security")]
pub async fn put_security(
    admin: TenantAdmin,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, &["mfa_required"])?;
    let required = i.boolean("mfa_required", true);
    i.finish()?;
    let required = required.unwrap_or_default();
    let p = &admin.0;
    let record =
        crm_domain::tenants::set_mfa_required(&state.db, p, required, &admin.1, state.clock.now())
            .await?;
    Ok(HttpResponse::Ok().json(SecuritySettings {
        mfa_required: record,
    }))
}
