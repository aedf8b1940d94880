//! Integration clients (tenant admins) and the OAuth 2.0 token endpoint (client credentials).

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use crm_domain::clients::{self, Client};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::path_id;
use crate::auth::{TenantAdmin, issue_client_token};
use crate::input::{Input, text};
use crate::problem::ApiError;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct ClientOut {
    pub id: Uuid,
    /// The OAuth `client_id`.
    pub client_id: String,
    pub name: String,
    #[schema(example = json!(["contacts:read", "consents:read", "suppression:read"]))]
    pub scopes: Vec<String>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub secret_rotated_at: Option<DateTime<Utc>>,
}

impl From<Client> for ClientOut {
    fn from(c: Client) -> Self {
        ClientOut {
            id: c.id,
            client_id: c.client_id,
            name: c.name,
            scopes: c.scopes,
            active: c.active,
            created_at: c.created_at,
            updated_at: c.updated_at,
            secret_rotated_at: c.secret_rotated_at,
        }
    }
}

/// A client with its secret, shown only in this response.
#[derive(Serialize, ToSchema)]
pub struct ClientWithSecretOut {
    #[serde(flatten)]
    pub client: ClientOut,
    /// Store it now: it is not shown again.
    pub client_secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct ClientList {
    pub data: Vec<ClientOut>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ClientIn {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// contacts:read, contacts:write, companies:read, companies:write, orders:read,
    /// orders:write, consents:read, consents:write, suppression:read.
    #[schema(min_items = 1, max_items = 9)]
    scopes: Vec<String>,
}

/// Create an integration client for a partner. The secret is in this response only.
#[utoipa::path(
    tag = "clients",
    request_body(content = ClientIn, content_type = "application/json"),
    responses((status = 201, description = "Created", body = ClientWithSecretOut)),
    security(("bearer" = []))
)]
#[post("/integration-clients")]
pub async fn create_client(
    caller: TenantAdmin,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, &["name", "scopes"])?;
    let name = i.string("name", true, text(1, 200));
    let mut scopes = Vec::new();
    if let Some(items) = i.array("scopes", true, 1, clients::SCOPES.len()) {
        let mut errors = Vec::new();
        for (n, item) in items.iter().enumerate() {
            let pointer = format!("{}/{n}", i.pointer("scopes"));
            match item.as_str().map(clients::parse_scope) {
                Some(Ok(s)) if !scopes.contains(&s) => scopes.push(s),
                Some(Ok(_)) => errors.push(crm_domain::FieldError::at(
                    pointer,
                    "duplicate",
                    "is listed twice",
                )),
                Some(Err(e)) => errors.push(crm_domain::FieldError::at(pointer, e.code, e.detail)),
                None => errors.push(crm_domain::FieldError::at(
                    pointer,
                    "invalid_type",
                    "must be a string",
                )),
            }
        }
        i.push_errors(errors);
    }
    i.finish()?;
    let name = name.unwrap_or_default();
    let (client, secret) = clients::create_client(
        &state.db,
        &caller.0.tenant,
        name,
        scopes,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    let out = ClientWithSecretOut {
        client: ClientOut::from(client),
        client_secret: secret,
    };
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/v1/integration-clients/{}", out.client.id),
        ))
        .json(out))
}

/// List the tenant's integration clients (never their secrets).
#[utoipa::path(
    tag = "clients",
    responses((status = 200, description = "Clients", body = ClientList)),
    security(("bearer" = []))
)]
#[get("/integration-clients")]
pub async fn list_clients(
    caller: TenantAdmin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let data = clients::list_clients(&state.db, &caller.0.tenant).await?;
    Ok(HttpResponse::Ok().json(ClientList {
        data: data.into_iter().map(ClientOut::from).collect(),
    }))
}

/// Get an integration client.
#[utoipa::path(
    tag = "clients",
    params(("id" = Uuid, Path, description = "Client id")),
    responses((status = 200, description = "The client", body = ClientOut)),
    security(("bearer" = []))
)]
#[get("/integration-clients/{id}")]
pub async fn get_client(
    caller: TenantAdmin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("integration_client", &id)?;
    let c = clients::get_client(&state.db, &caller.0.tenant, id).await?;
    Ok(HttpResponse::Ok().json(ClientOut::from(c)))
}

/// Issue a new secret; the old one stops working at once.
#[utoipa::path(
    tag = "clients",
    params(("id" = Uuid, Path, description = "Client id")),
    responses(
        (status = 200, description = "The client with its new secret", body = ClientWithSecretOut),
        (status = 409, description = "`client_revoked`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[post("/integration-clients/{id}/rotate-secret")]
pub async fn rotate_secret(
    caller: TenantAdmin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("integration_client", &id)?;
    let (client, secret) = clients::rotate_secret(
        &state.db,
        &caller.0.tenant,
        id,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(ClientWithSecretOut {
        client: ClientOut::from(client),
        client_secret: secret,
    }))
}

/// Revoke a client: its tokens are refused from the next request on.
#[utoipa::path(
    tag = "clients",
    params(("id" = Uuid, Path, description = "Client id")),
    responses((status = 204, description = "Revoked")),
    security(("bearer" = []))
)]
#[delete("/integration-clients/{id}")]
pub async fn revoke_client(
    caller: TenantAdmin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("integration_client", &id)?;
    clients::revoke_client(
        &state.db,
        &caller.0.tenant,
        id,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `application/x-www-form-urlencoded` request of RFC 6749 §4.4.2.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct TokenRequest {
    #[schema(example = "client_credentials")]
    grant_type: String,
    /// Space-separated subset of the client's scopes (default: all of them).
    scope: Option<String>,
    /// With `client_secret`, instead of HTTP Basic authentication.
    client_id: Option<String>,
    client_secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ClientTokenOut {
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    pub expires_in: i64,
    pub scope: String,
}

/// An RFC 6749 §5.2 error.
#[derive(Serialize, ToSchema)]
pub struct OAuthError {
    /// invalid_request, invalid_client, invalid_grant, unauthorized_client,
    /// unsupported_grant_type or invalid_scope.
    pub error: String,
    pub error_description: String,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    let mut resp = HttpResponse::build(status);
    resp.insert_header((header::CACHE_CONTROL, "no-store"));
    if status == StatusCode::UNAUTHORIZED {
        resp.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"crm\""));
    }
    resp.json(json!({"error": error, "error_description": description}))
}

fn basic_credentials(req: &HttpRequest) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// Exchange client credentials for a scoped access token (RFC 6749 §4.4). Authenticate with
/// HTTP Basic or `client_id`/`client_secret` in the form. Errors follow RFC 6749 §5.2.
#[utoipa::path(
    tag = "auth",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "A scoped access token", body = ClientTokenOut),
        (status = 400, description = "invalid_request, unsupported_grant_type or invalid_scope", body = OAuthError),
        (status = 401, description = "invalid_client", body = OAuthError),
    )
)]
#[post("/oauth/token")]
pub async fn token(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send application/x-www-form-urlencoded",
        );
    }
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the form could not be parsed",
        );
    };
    for (i, (k, _)) in form.iter().enumerate() {
        if form[..i].iter().any(|(earlier, _)| earlier == k) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "a parameter is repeated",
            );
        }
    }
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (grant_type, scope, form_id, form_secret) = (
        field("grant_type"),
        field("scope"),
        field("client_id"),
        field("client_secret"),
    );
    match grant_type.as_deref() {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is supported",
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            );
        }
    }
    let credentials = match (basic_credentials(&req), form_id, form_secret) {
        (Some(basic), None, None) => basic,
        (None, Some(id), Some(secret)) => (id, secret),
        (Some(_), _, _) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "use one way of client authentication",
            );
        }
        _ => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication is required",
            );
        }
    };
    let client =
        match clients::authenticate_credentials(&state.db, &credentials.0, &credentials.1).await {
            Ok(c) => c,
            Err(crm_domain::DomainError::Unauthenticated(_)) => {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "unknown client, wrong secret or revoked",
                );
            }
            Err(e) => {
                log::error!("token endpoint: {e}");
                return oauth_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the request could not be handled",
                );
            }
        };
    let granted: Vec<String> = match scope.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => client.scopes.clone(),
        Some(requested) => {
            let requested: Vec<String> = requested
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if requested.iter().any(|s| !client.scopes.contains(s)) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "a requested scope is not granted to this client",
                );
            }
            requested
        }
    };
    match issue_client_token(&state, &client, &credentials.0, &granted) {
        Ok((access_token, expires_in)) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(ClientTokenOut {
                access_token,
                token_type: "Bearer",
                expires_in,
                scope: granted.join(" "),
            }),
        Err(e) => {
            log::error!("token endpoint: {e}");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the request could not be handled",
            )
        }
    }
}
