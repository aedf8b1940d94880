//! `/v1/tenants`: platform admins create and manage customer tenants (controllers).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, patch, post, web};
use chrono::{DateTime, Utc};
use crm_domain::ids::TenantId;
use crm_domain::passwords::Password;
use crm_domain::tenants::{self, NewTenant, TenantChanges, TenantRecord};
use crm_domain::values::{EmailAddress, TenantSlug};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{QueryErrors, created, if_match, list_type, path_id, with_etag};
use crate::auth::PlatformAdmin;
use crate::input::{Input, text};
use crate::problem::ApiError;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct TenantOut {
    pub id: Uuid,
    /// Used to sign in (`tenant` in `/v1/auth/login`).
    pub slug: String,
    pub name: String,
    /// `customer` or `platform`.
    pub kind: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
    /// Users sign in with WebAuthn as a second factor (always true for `platform`).
    pub mfa_required: bool,
}

impl From<TenantRecord> for TenantOut {
    fn from(t: TenantRecord) -> Self {
        TenantOut {
            id: t.id.as_uuid(),
            slug: t.slug,
            name: t.name,
            kind: t.kind.as_str().to_owned(),
            active: t.active,
            created_at: t.created_at,
            updated_at: t.updated_at,
            version: t.version,
            mfa_required: t.mfa_required,
        }
    }
}

/// The first admin of a new tenant.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct TenantAdminIn {
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(min_length = 1, max_length = 200)]
    display_name: Option<String>,
    /// At least 15 characters, not a common or easily guessed password.
    #[schema(format = Password, min_length = 15, max_length = 256)]
    password: String,
}

/// A new tenant with its first admin.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct TenantIn {
    #[schema(example = "acme", pattern = "^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$")]
    slug: String,
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    admin: TenantAdminIn,
    /// Require WebAuthn as a second factor for every user (default false; the admin enrols
    /// at the first sign-in).
    mfa_required: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct TenantPatch {
    #[schema(min_length = 1, max_length = 200, nullable = false)]
    name: Option<String>,
    /// `false` stops every user of the tenant at once.
    #[schema(nullable = false)]
    active: Option<bool>,
    /// `true` ends every session without WebAuthn at once; users enrol at their next sign-in.
    #[schema(nullable = false)]
    mfa_required: Option<bool>,
}

/// A created tenant and the id of its first admin.
#[derive(Serialize, ToSchema)]
pub struct TenantCreatedOut {
    #[serde(flatten)]
    pub tenant: TenantOut,
    pub admin_user_id: Uuid,
}

list_type!(TenantList, TenantOut);

/// Create a tenant with its first admin.
#[utoipa::path(
    tag = "tenants",
    request_body(content = TenantIn, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = TenantCreatedOut,
         headers(("ETag" = String, description = "Version"), ("Location" = String))),
        (status = 409, description = "`slug_taken`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[post("/tenants")]
pub async fn create_tenant(
    caller: PlatformAdmin,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, &["slug", "name", "admin", "mfa_required"])?;
    let slug = i.string("slug", true, TenantSlug::parse);
    let mfa_required = i.boolean("mfa_required", false).unwrap_or(false);
    let name = i.string("name", true, text(1, 200));
    let mut admin = None;
    match body.get("admin") {
        None | Some(Value::Null) => i.error("admin", "required", "is required"),
        Some(value) => {
            let mut errors = Vec::new();
            if let Some(mut a) = Input::nested(
                value,
                &i.pointer("admin"),
                &["email", "display_name", "password"],
                &mut errors,
            ) {
                let email = a.string("email", true, EmailAddress::parse);
                let display_name = a.string("display_name", false, text(1, 200));
                let context = [
                    email
                        .as_ref()
                        .map(|e| e.as_str().to_owned())
                        .unwrap_or_default(),
                    slug.as_ref()
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                ];
                let password = a.string("password", true, |raw| {
                    Password::parse(raw, &[&context[0], &context[1]])
                });
                errors.extend(a.take_errors());
                if let (Some(email), Some(password)) = (email, password) {
                    admin = Some((email, display_name, password));
                }
            }
            i.push_errors(errors);
        }
    }
    i.finish()?;
    let (Some(slug), Some(name), Some((admin_email, admin_display_name, admin_password))) =
        (slug, name, admin)
    else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "validated tenant input incomplete"
        )));
    };
    let input = NewTenant {
        slug,
        name,
        admin_email,
        admin_display_name,
        admin_password,
        mfa_required,
    };
    let (tenant, admin_id) =
        tenants::create_tenant(&state.db, input, &caller.1, state.clock.now()).await?;
    let version = tenant.version;
    let out = TenantCreatedOut {
        tenant: TenantOut::from(tenant),
        admin_user_id: admin_id.as_uuid(),
    };
    Ok(created(
        format!("/v1/tenants/{}", out.tenant.id),
        &out,
        version,
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantQuery {
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List tenants.
#[utoipa::path(
    tag = "tenants",
    params(TenantQuery),
    responses((status = 200, description = "A page of tenants", body = TenantList)),
    security(("bearer" = []))
)]
#[get("/tenants")]
pub async fn list_tenants(
    _caller: PlatformAdmin,
    state: web::Data<AppState>,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut errs = QueryErrors::default();
    let page = errs.page(query.limit.as_deref(), query.cursor.as_deref());
    errs.finish()?;
    let page = tenants::list_tenants(&state.db, page).await?;
    Ok(HttpResponse::Ok().json(TenantList::from(page.map(TenantOut::from))))
}

/// Get a tenant.
#[utoipa::path(
    tag = "tenants",
    params(("id" = Uuid, Path, description = "Tenant id")),
    responses((status = 200, description = "The tenant", body = TenantOut,
               headers(("ETag" = String, description = "Version")))),
    security(("bearer" = []))
)]
#[get("/tenants/{id}")]
pub async fn get_tenant(
    _caller: PlatformAdmin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = TenantId::from_uuid(path_id("tenant", &id)?);
    let tenant = tenants::get_tenant(&state.db, id).await?;
    let version = tenant.version;
    Ok(with_etag(StatusCode::OK, &TenantOut::from(tenant), version))
}

/// Rename or (de)activate a tenant.
#[utoipa::path(
    tag = "tenants",
    params(
        ("id" = Uuid, Path, description = "Tenant id"),
        ("If-Match" = Option<String>, Header, description = "ETag of the version being changed"),
    ),
    request_body(content = TenantPatch, content_type = "application/merge-patch+json"),
    responses((status = 200, description = "The changed tenant", body = TenantOut,
               headers(("ETag" = String, description = "New version")))),
    security(("bearer" = []))
)]
#[patch("/tenants/{id}")]
pub async fn update_tenant(
    caller: PlatformAdmin,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = TenantId::from_uuid(path_id("tenant", &id)?);
    let expected = if_match(&req)?;
    let mut i = Input::body(&body, &["name", "active", "mfa_required"])?;
    let changes = TenantChanges {
        name: i.patch_string("name", false, text(1, 200)).apply_to(None),
        active: if i.has("active") {
            i.boolean("active", true)
        } else {
            None
        },
        mfa_required: if i.has("mfa_required") {
            i.boolean("mfa_required", true)
        } else {
            None
        },
    };
    i.finish()?;
    let tenant = tenants::update_tenant(
        &state.db,
        id,
        changes,
        expected,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    let version = tenant.version;
    Ok(with_etag(StatusCode::OK, &TenantOut::from(tenant), version))
}
