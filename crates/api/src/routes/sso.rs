//! Single sign-on with OpenID Connect (authorization code + PKCE + `state` + `nonce`).
//!
//! The front end asks `/v1/auth/sso/{tenant}/start` for the provider's authorization URL and
//! sends the browser there. The provider redirects the browser to the connection's
//! `redirect_uri` (a page of the front end) with `code` and `state`; the front end posts both
//! to `/v1/auth/sso/{tenant}/callback` and gets tokens (or an MFA ticket). PKCE verifier and
//! nonce stay on the server, keyed by `state`, and are spent by the first callback.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, delete, get, post, put, web};
use chrono::{DateTime, Utc};
use crm_domain::mfa::{self, ChallengeKind};
use crm_domain::sessions;
use crm_domain::sso::{self, ConnectionInput, VerifiedIdentity};
use crm_domain::values::Role;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::TenantAdmin;
use crate::input::{Input, text};
use crate::problem::ApiError;
use crate::routes::auth::signed_in;
use crate::state::AppState;

/// The tenant's OpenID Connect connection. The client secret is never returned.
#[derive(Serialize, ToSchema)]
pub struct ConnectionOut {
    #[schema(example = "https://login.example.com")]
    pub issuer: String,
    pub client_id: String,
    /// Always true: the secret is stored encrypted and never shown again.
    pub client_secret_set: bool,
    /// The front end's callback page, registered at the provider.
    pub redirect_uri: String,
    /// E-mail domains whose verified addresses may link to or create accounts.
    pub allowed_domains: Vec<String>,
    /// Create an account on the first sign-in of a verified address in an allowed domain.
    pub jit_provisioning: bool,
    #[schema(example = "member")]
    pub default_role: String,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<sso::Connection> for ConnectionOut {
    fn from(c: sso::Connection) -> Self {
        ConnectionOut {
            issuer: c.issuer,
            client_id: c.client_id,
            client_secret_set: true,
            redirect_uri: c.redirect_uri,
            allowed_domains: c.allowed_domains,
            jit_provisioning: c.jit_provisioning,
            default_role: c.default_role.as_str().to_owned(),
            enabled: c.enabled,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct ConnectionIn {
    /// The provider's issuer; its discovery document is read from
    /// `<issuer>/.well-known/openid-configuration`. `https://` (plain `http://` only where the
    /// service allows it, for development).
    #[schema(max_length = 500)]
    issuer: String,
    #[schema(min_length = 1, max_length = 200)]
    client_id: String,
    /// Required when creating; omit to keep the stored one.
    #[schema(min_length = 1, max_length = 500, format = Password)]
    client_secret: Option<String>,
    #[schema(max_length = 500)]
    redirect_uri: String,
    #[schema(max_items = 50)]
    allowed_domains: Option<Vec<String>>,
    /// Default false.
    jit_provisioning: Option<bool>,
    /// Role of provisioned accounts (`admin`, `dpo`, `member` or `viewer`; default `member`).
    default_role: Option<String>,
    /// Default true.
    enabled: Option<bool>,
}

fn url(allow_http: bool) -> impl Fn(&str) -> Result<String, crm_domain::InvalidValue> {
    move |raw| {
        let raw = raw.trim();
        let parsed = url::Url::parse(raw)
            .map_err(|_| crm_domain::InvalidValue::new("invalid_url", "must be an absolute URL"))?;
        let ok_scheme = parsed.scheme() == "https" || (allow_http && parsed.scheme() == "http");
        if !ok_scheme || parsed.host_str().is_none() || raw.len() > 500 {
            return Err(crm_domain::InvalidValue::new(
                "invalid_url",
                if allow_http {
                    "must be an http(s) URL of at most 500 characters"
                } else {
                    "must be an https URL of at most 500 characters"
                },
            ));
        }
        if parsed.fragment().is_some() || !parsed.username().is_empty() {
            return Err(crm_domain::InvalidValue::new(
                "invalid_url",
                "must not carry a fragment or credentials",
            ));
        }
        Ok(raw.trim_end_matches('/').to_owned())
    }
}

/// The tenant's SSO connection.
#[utoipa::path(
    tag = "sso",
    responses(
        (status = 200, description = "The connection", body = ConnectionOut),
        (status = 404, description = "`sso_connection_not_found`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[get("/sso/connection")]
pub async fn get_connection(
    admin: TenantAdmin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let conn = sso::get_connection(&state.db, &admin.0.tenant).await?;
    Ok(HttpResponse::Ok().json(ConnectionOut::from(conn)))
}

/// Create or replace the tenant's SSO connection.
#[utoipa::path(
    tag = "sso",
    request_body(content = ConnectionIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced", body = ConnectionOut),
        (status = 201, description = "Created", body = ConnectionOut),
    ),
    security(("bearer" = []))
)]
#[put("/sso/connection")]
pub async fn put_connection(
    admin: TenantAdmin,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let allow_http = state.settings.sso_allow_http;
    let mut i = Input::body(
        &body,
        &[
            "issuer",
            "client_id",
            "client_secret",
            "redirect_uri",
            "allowed_domains",
            "jit_provisioning",
            "default_role",
            "enabled",
        ],
    )?;
    let issuer = i.string("issuer", true, url(allow_http));
    let client_id = i.string("client_id", true, text(1, 200));
    let client_secret = i.string("client_secret", false, text(1, 500));
    let redirect_uri = i.string("redirect_uri", true, url(true));
    let mut domains = Vec::new();
    if let Some(items) = i.array("allowed_domains", false, 0, 50) {
        for (n, item) in items.iter().enumerate() {
            match item.as_str().map(crm_domain::values::domain_name) {
                Some(Ok(d)) => domains.push(d),
                _ => {
                    let pointer = format!("{}/{n}", i.pointer("allowed_domains"));
                    i.push_errors(vec![crm_domain::FieldError::at(
                        pointer,
                        "invalid_domain",
                        "must be a domain name such as example.com",
                    )]);
                }
            }
        }
    }
    let jit = i.boolean("jit_provisioning", false).unwrap_or(false);
    let role = i
        .string("default_role", false, Role::parse_tenant_role)
        .unwrap_or(Role::Member);
    let enabled = i.boolean("enabled", false).unwrap_or(true);
    i.finish()?;
    let (Some(issuer), Some(client_id), Some(redirect_uri)) = (issuer, client_id, redirect_uri)
    else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "validated connection incomplete"
        )));
    };
    // The service will call this host: it must be a public address (checked again at each
    // sign-in, by the back-channel client's resolver).
    if let Ok(parsed) = url::Url::parse(&issuer)
        && let Err(e) =
            crate::outbound::resolve_and_vet(&parsed, state.settings.webhook_allow_loopback).await
    {
        return Err(ApiError::invalid(vec![crm_domain::FieldError::at(
            "/issuer",
            "url_not_allowed",
            e.to_string(),
        )]));
    }
    let sealed = client_secret
        .map(|s| state.secret_box.seal(&s))
        .transpose()
        .map_err(ApiError::Internal)?;
    let input = ConnectionInput {
        issuer,
        client_id,
        client_secret_enc: sealed,
        redirect_uri,
        allowed_domains: domains,
        jit_provisioning: jit,
        default_role: role,
        enabled,
    };
    let (conn, created) = sso::put_connection(
        &state.db,
        &admin.0.tenant,
        input,
        &admin.1,
        state.clock.now(),
    )
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(ConnectionOut::from(conn)))
}

/// Remove the tenant's SSO connection. Linked identities stay, unused, until a new
/// connection with the same issuer is made.
#[utoipa::path(
    tag = "sso",
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "`sso_connection_not_found`: no connection is configured", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[delete("/sso/connection")]
pub async fn delete_connection(
    admin: TenantAdmin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    sso::delete_connection(&state.db, &admin.0.tenant, &admin.1, state.clock.now()).await?;
    Ok(HttpResponse::NoContent().finish())
}

fn provider_error(context: &str, e: impl std::fmt::Display) -> ApiError {
    log::warn!("SSO provider: {context}: {e}");
    ApiError::status(
        StatusCode::BAD_GATEWAY,
        "sso_provider_error",
        "the identity provider could not be used; try again later or ask your admin to check the connection",
    )
}

fn refused(e: crate::outbound::Refusal) -> ApiError {
    log::warn!("SSO provider address refused: {e}");
    ApiError::status(
        StatusCode::BAD_GATEWAY,
        "sso_provider_refused",
        "the identity provider's address is not a public one; ask your admin to check the connection",
    )
}

fn sso_failed() -> ApiError {
    ApiError::Unauthenticated {
        code: "sso_failed",
        detail: "the identity provider's answer did not verify; start the sign-in again",
    }
}

/// Reads the provider's discovery document (no redirects followed) and builds the client.
async fn client_for(
    state: &AppState,
    conn: &sso::Connection,
) -> Result<
    CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
    ApiError,
> {
    let issuer =
        IssuerUrl::new(conn.issuer.clone()).map_err(|e| provider_error("issuer URL", e))?;
    // Host names are vetted by the client's resolver; IP literals here.
    let allow_loopback = state.settings.webhook_allow_loopback;
    crate::outbound::vet_literal(issuer.url(), allow_loopback).map_err(refused)?;
    let metadata = CoreProviderMetadata::discover_async(issuer, &state.oidc_http)
        .await
        .map_err(|e| provider_error("discovery", e))?;
    for endpoint in [
        metadata.token_endpoint().map(|u| u.url()),
        Some(metadata.jwks_uri().url()),
    ]
    .into_iter()
    .flatten()
    {
        crate::outbound::vet_literal(endpoint, allow_loopback).map_err(refused)?;
    }
    let secret = state
        .secret_box
        .open(&conn.client_secret_enc)
        .map_err(ApiError::Internal)?;
    let redirect =
        RedirectUrl::new(conn.redirect_uri.clone()).map_err(|e| provider_error("redirect", e))?;
    Ok(CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(conn.client_id.clone()),
        Some(ClientSecret::new(secret)),
    )
    .set_redirect_uri(redirect))
}

/// What stays on the server between start and callback.
#[derive(Serialize, Deserialize)]
struct FlowState {
    pkce_verifier: String,
    nonce: String,
    issuer: String,
}

#[derive(Serialize, ToSchema)]
pub struct SsoStartOut {
    /// Send the browser here.
    pub authorization_url: String,
    /// Seconds the sign-in may take before the callback is refused.
    pub expires_in: i64,
}

/// Start signing in with the tenant's identity provider.
#[utoipa::path(
    tag = "sso",
    params(("tenant" = String, Path, description = "The tenant's slug")),
    responses(
        (status = 200, description = "Where to send the browser", body = SsoStartOut),
        (status = 404, description = "`sso_connection_not_found`", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 502, description = "`sso_provider_error` or `sso_provider_refused`", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[get("/auth/sso/{tenant}/start")]
pub async fn start(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conn = sso::connection_for_slug(&state.db, &path).await?;
    let client = client_for(&state, &conn).await?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let nonce = Nonce::new_random();
    let flow = FlowState {
        pkce_verifier: verifier.secret().clone(),
        nonce: nonce.secret().clone(),
        issuer: conn.issuer.clone(),
    };
    let flow = serde_json::to_string(&flow).map_err(|e| ApiError::Internal(e.into()))?;
    let csrf = mfa::create_secret_challenge(
        &state.db,
        conn.tenant_id,
        ChallengeKind::OidcLogin,
        flow,
        state.clock.now(),
    )
    .await?;
    let (url, _, _) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(csrf),
            move || nonce,
        )
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(SsoStartOut {
            authorization_url: url.to_string(),
            expires_in: mfa::CEREMONY_TTL.num_seconds(),
        }))
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct CallbackIn {
    /// `code` from the provider's redirect.
    #[schema(min_length = 1, max_length = 2048)]
    code: String,
    /// `state` from the provider's redirect.
    #[schema(min_length = 1, max_length = 200)]
    state: String,
    /// `iss` from the provider's redirect (RFC 9207), when it sends one.
    #[schema(max_length = 500)]
    iss: Option<String>,
}

/// Finish signing in: exchange the code, verify the ID token, find the account.
///
/// The ID token's signature (provider JWKS), `iss`, `aud`, `exp` and `nonce` are checked.
/// A known (issuer, subject) signs its user in; otherwise only a verified e-mail in an
/// allowed domain links to an existing account (or, with provisioning on, creates one).
#[utoipa::path(
    tag = "sso",
    params(("tenant" = String, Path, description = "The tenant's slug")),
    request_body(content = CallbackIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Signed in (`TokenOut`), or a ticket for the second factor (`MfaTicketOut`)", body = crate::routes::auth::SignInOut),
        (status = 401, description = "`invalid_sso_state`, `sso_failed`, `sso_not_linkable`, `sso_no_account` or `account_inactive`", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sso_connection_not_found`", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 502, description = "`sso_provider_error`", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/auth/sso/{tenant}/callback")]
pub async fn callback(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, &["code", "state", "iss"])?;
    let code = i.string("code", true, text(1, 2048));
    let csrf = i.string("state", true, text(1, 200));
    let iss = i.string("iss", false, text(1, 500));
    i.finish()?;
    let (Some(code), Some(csrf)) = (code, csrf) else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "validated callback incomplete"
        )));
    };
    let conn = sso::connection_for_slug(&state.db, &path).await?;
    let now = state.clock.now();
    let invalid_state = ApiError::Unauthenticated {
        code: "invalid_sso_state",
        detail: "the sign-in is unknown, expired or already finished; start again",
    };
    let Some(challenge) =
        mfa::consume_secret_challenge(&state.db, &csrf, ChallengeKind::OidcLogin, now).await?
    else {
        return Err(invalid_state);
    };
    if challenge.tenant_id != conn.tenant_id {
        return Err(invalid_state);
    }
    let flow: FlowState = serde_json::from_str(&challenge.state)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("stored SSO state")))?;
    // The connection changed under the sign-in, or the redirect names another issuer
    // (RFC 9207 mix-up defence).
    if flow.issuer != conn.issuer || iss.is_some_and(|i| i.trim_end_matches('/') != conn.issuer) {
        return Err(sso_failed());
    }
    let client = client_for(&state, &conn).await?;
    let request = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| provider_error("token endpoint", e))?
        .set_pkce_verifier(PkceCodeVerifier::new(flow.pkce_verifier));
    let token = request.request_async(&state.oidc_http).await.map_err(|e| {
        log::info!("SSO code exchange refused: {e}");
        sso_failed()
    })?;
    let id_token = token.id_token().ok_or_else(sso_failed)?;
    let nonce = Nonce::new(flow.nonce);
    let claims = id_token
        .claims(&client.id_token_verifier(), &nonce)
        .map_err(|e| {
            log::info!("SSO ID token refused: {e}");
            sso_failed()
        })?;
    let identity = VerifiedIdentity {
        issuer: conn.issuer.clone(),
        subject: claims.subject().as_str().to_owned(),
        email: claims.email().map(|e| e.as_str().to_owned()),
        email_verified: claims.email_verified() == Some(true),
        name: claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned()),
    };
    let user_id = sso::resolve_user(&state.db, &conn, &identity, now).await?;
    let result = sessions::first_factor_done(
        &state.db,
        conn.tenant_id,
        user_id,
        vec!["sso".to_owned()],
        &state.session_policy,
        now,
    )
    .await?;
    signed_in(&state, result)
}
