//! Service metadata: health, the JWKS, the OpenAPI document and its docs page.

use actix_web::http::header;
use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::problem::ApiError;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct HealthOut {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness and database reachability.
#[utoipa::path(
    tag = "meta",
    responses((status = 200, description = "The service and its database answer", body = HealthOut))
)]
#[get("/health")]
pub async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .db
        .ping()
        .await
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("database ping")))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(HealthOut { status: "ok" }))
}

/// One public key of the JWKS (RFC 7517, OKP/Ed25519).
#[derive(Serialize, ToSchema)]
pub struct JwkOut {
    #[schema(example = "OKP")]
    pub kty: String,
    #[schema(example = "Ed25519")]
    pub crv: String,
    pub x: String,
    pub kid: String,
    #[serde(rename = "use")]
    #[schema(example = "sig")]
    pub key_use: String,
    #[schema(example = "EdDSA")]
    pub alg: String,
}

#[derive(Serialize, ToSchema)]
pub struct JwksOut {
    pub keys: Vec<JwkOut>,
}

/// Public keys that verify this service's access tokens (current and previous).
#[utoipa::path(
    tag = "meta",
    responses((status = 200, description = "JSON Web Key Set", body = JwksOut))
)]
#[get("/.well-known/jwks.json")]
pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .json(state.keys.jwks())
}

/// The OpenAPI document, generated from the same registrations as the router.
pub async fn openapi_json(spec: web::Data<crate::startup::SpecJson>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(spec.0.clone())
}

const DOCS_HTML: &str = include_str!("../../assets/docs.html");
const DOCS_JS: &str = include_str!("../../assets/docs.js");
const DOCS_CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// A readable API reference, rendered in the browser from `/openapi.json`; no CDN.
pub async fn docs_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, DOCS_CSP))
        .body(DOCS_HTML)
}

pub async fn docs_script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, DOCS_CSP))
        .body(DOCS_JS)
}
