//! `/v1/auth/*` and `/v1/me`: signing in, refreshing, signing out, and the caller's own account.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use crm_domain::passwords::Password;
use crm_domain::sessions::{self, LoginAttempt};
use crm_domain::users;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{Caller, client_addr, issue_access_token};
use crate::input::Input;
use crate::problem::ApiError;
use crate::state::AppState;

/// Credentials for a password sign-in.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct LoginIn {
    /// The tenant's slug (`platform` for platform admins).
    #[schema(example = "acme", min_length = 1, max_length = 63)]
    tenant: String,
    #[schema(format = Email, example = "ada@acme.example", min_length = 1, max_length = 254)]
    email: String,
    #[schema(format = Password, min_length = 1, max_length = 256)]
    password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RefreshIn {
    /// The refresh token from the last sign-in or refresh; it can be used once.
    #[schema(min_length = 1, max_length = 200)]
    refresh_token: String,
}

/// Tokens for a session.
#[derive(Serialize, ToSchema)]
pub struct TokenOut {
    /// EdDSA-signed JWT (`typ: at+jwt`); send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires (at most 900).
    pub expires_in: i64,
    /// Opaque, single-use; exchange at `/v1/auth/refresh` for new tokens.
    pub refresh_token: String,
}

/// 1..=max characters, anything else allowed.
fn any_text(max: usize) -> impl Fn(&str) -> Result<String, crm_domain::InvalidValue> {
    move |raw| {
        let n = raw.chars().count();
        if n == 0 || n > max {
            Err(crm_domain::InvalidValue::new(
                "invalid_length",
                format!("must be 1 to {max} characters"),
            ))
        } else {
            Ok(raw.to_owned())
        }
    }
}

/// A new access token for the same session (after a step-up).
#[derive(Serialize, ToSchema)]
pub struct AccessTokenOut {
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    pub expires_in: i64,
}

/// The first factor was right, and the tenant requires WebAuthn too.
#[derive(Serialize, ToSchema)]
pub struct MfaTicketOut {
    /// Opaque; valid for `expires_in` seconds; use it with `/v1/auth/mfa/webauthn/*`
    /// (`mfa` = `webauthn`) or, for a user without a credential, `/v1/auth/mfa/enrol/*`
    /// (`mfa` = `enrol`).
    pub mfa_ticket: String,
    #[schema(example = "webauthn")]
    pub mfa: &'static str,
    pub expires_in: i64,
}

/// What a sign-in returns: tokens, or a ticket for the second factor.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum SignInOut {
    Tokens(TokenOut),
    Mfa(MfaTicketOut),
}

fn tokens(state: &AppState, session: &sessions::IssuedSession) -> Result<HttpResponse, ApiError> {
    let (access_token, expires_in) = issue_access_token(state, session)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(TokenOut {
            access_token,
            token_type: "Bearer",
            expires_in,
            refresh_token: session.refresh_token.clone(),
        }))
}

/// The answer to a completed first (or only) factor.
pub fn signed_in(state: &AppState, result: sessions::SignIn) -> Result<HttpResponse, ApiError> {
    match result {
        sessions::SignIn::Session(session) => tokens(state, &session),
        sessions::SignIn::Ticket(ticket) => Ok(HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(MfaTicketOut {
                mfa_ticket: ticket.token,
                mfa: ticket.kind.as_str(),
                expires_in: (ticket.expires_at - state.clock.now()).num_seconds(),
            })),
    }
}

/// Sign in with a password.
///
/// Wrong tenant, e-mail, password or an inactive account all answer 401 `invalid_credentials`
/// after the same work. Repeated failures per account and per client address are throttled
/// (429 with `Retry-After`). When the tenant requires MFA (platform admins always do), the
/// answer is an `mfa_ticket` instead of tokens.
#[utoipa::path(
    tag = "auth",
    request_body(content = LoginIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Signed in (`TokenOut`), or a ticket for the second factor (`MfaTicketOut`)", body = SignInOut),
        (status = 401, description = "`invalid_credentials`", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_attempts`; see `Retry-After`", body = crate::problem::Problem, content_type = "application/problem+json",
         headers(("Retry-After" = i64, description = "Seconds to wait"))),
    )
)]
#[post("/auth/login")]
pub async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, &["tenant", "email", "password"])?;
    // Any string is a possible identifier here: a wrong one is a failed sign-in (401), not
    // invalid input, so nothing about the accounts leaks through validation.
    let tenant = i.string("tenant", true, any_text(63));
    let email = i.string("email", true, any_text(254));
    let password = i.string("password", true, |raw| {
        if raw.is_empty() || raw.chars().count() > crm_domain::passwords::MAX_LENGTH {
            Err(crm_domain::InvalidValue::new(
                "invalid_length",
                "must be 1 to 256 characters",
            ))
        } else {
            Ok(raw.to_owned())
        }
    });
    i.finish()?;
    let (Some(tenant), Some(email), Some(password)) = (tenant, email, password) else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "validated login incomplete"
        )));
    };
    let addr = client_addr(&req, state.settings.trust_forwarded_for);
    let attempt = LoginAttempt {
        tenant_slug: &tenant,
        email: &email,
        password: Password::unchecked(&password),
        client_addr: &addr,
    };
    let result =
        sessions::login(&state.db, attempt, &state.session_policy, state.clock.now()).await?;
    signed_in(&state, result)
}

/// Exchange a refresh token for new tokens. The token is spent; presenting it again ends the
/// whole session (`refresh_token_reused`).
#[utoipa::path(
    tag = "auth",
    request_body(content = RefreshIn, content_type = "application/json"),
    responses(
        (status = 200, description = "New tokens", body = TokenOut),
        (status = 401, description = "`invalid_refresh_token`, `refresh_token_reused` or `session_ended`", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/auth/refresh")]
pub async fn refresh(
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, &["refresh_token"])?;
    let token = i.string("refresh_token", true, any_text(200));
    i.finish()?;
    let token = token.unwrap_or_default();
    let session = sessions::refresh(&state.db, &token, state.clock.now()).await?;
    tokens(&state, &session)
}

/// End the current session at once: its access and refresh tokens stop working.
#[utoipa::path(
    tag = "auth",
    responses((status = 204, description = "Signed out")),
    security(("bearer" = []))
)]
#[post("/auth/logout")]
pub async fn logout(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    sessions::logout(&state.db, &caller.0, state.clock.now()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The signed-in caller.
#[derive(Serialize, ToSchema)]
pub struct MeOut {
    pub user_id: Uuid,
    pub tenant_id: Uuid,
    pub session_id: Uuid,
    #[schema(example = "admin")]
    pub role: String,
    pub email: String,
    pub display_name: Option<String>,
}

/// Who am I?
#[utoipa::path(
    tag = "auth",
    responses((status = 200, description = "The caller", body = MeOut)),
    security(("bearer" = []))
)]
#[get("/me")]
pub async fn me(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let p = caller.0;
    let user = users::get_user(&state.db, &p.tenant, p.user_id).await?;
    Ok(HttpResponse::Ok().json(MeOut {
        user_id: p.user_id.as_uuid(),
        tenant_id: p.tenant.id().as_uuid(),
        session_id: p.session_id.as_uuid(),
        role: p.role.as_str().to_owned(),
        email: user.email,
        display_name: user.display_name,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PasswordChangeIn {
    #[schema(format = Password, min_length = 1, max_length = 256)]
    current_password: String,
    /// At least 15 characters, not a common or easily guessed password.
    #[schema(format = Password, min_length = 15, max_length = 256)]
    new_password: String,
}

/// Change your own password. Every other session of yours ends.
#[utoipa::path(
    tag = "auth",
    request_body(content = PasswordChangeIn, content_type = "application/json"),
    responses((status = 204, description = "Changed")),
    security(("bearer" = []))
)]
#[post("/me/password")]
pub async fn change_password(
    caller: Caller,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let p = caller.0;
    let user = users::get_user(&state.db, &p.tenant, p.user_id).await?;
    let mut i = Input::body(&body, &["current_password", "new_password"])?;
    let current = i.string("current_password", true, |raw| Ok(Password::unchecked(raw)));
    let new = i.string("new_password", true, |raw| {
        Password::parse(raw, &[&user.email])
    });
    i.finish()?;
    let (Some(current), Some(new)) = (current, new) else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "validated password change incomplete"
        )));
    };
    users::change_own_password(&state.db, &p, &current, &new, state.clock.now()).await?;
    Ok(HttpResponse::NoContent().finish())
}
