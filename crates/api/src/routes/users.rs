//! `/v1/users`: a tenant admin manages the users of their own tenant.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use crm_domain::ids::UserId;
use crm_domain::passwords::Password;
use crm_domain::users::{self, NewUser, User, UserChanges};
use crm_domain::values::{EmailAddress, Role};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{QueryErrors, created, if_match, list_type, path_id, with_etag};
use crate::auth::TenantAdmin;
use crate::input::{Input, text};
use crate::problem::ApiError;
use crate::state::AppState;

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum TenantRole {
    Admin,
    Dpo,
    Member,
    Viewer,
}

/// A user of the tenant.
#[derive(Serialize, ToSchema)]
pub struct UserOut {
    pub id: Uuid,
    #[schema(format = Email)]
    pub email: String,
    pub display_name: Option<String>,
    #[schema(example = "member")]
    pub role: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
}

impl From<User> for UserOut {
    fn from(u: User) -> Self {
        UserOut {
            id: u.id.as_uuid(),
            email: u.email,
            display_name: u.display_name,
            role: u.role.as_str().to_owned(),
            active: u.active,
            created_at: u.created_at,
            updated_at: u.updated_at,
            version: u.version,
        }
    }
}

/// A new user with an initial password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct UserIn {
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(min_length = 1, max_length = 200)]
    display_name: Option<String>,
    role: TenantRole,
    /// At least 15 characters, not a common or easily guessed password.
    #[schema(format = Password, min_length = 15, max_length = 256)]
    password: String,
}

/// Change a user's name, role or active flag. Deactivating ends the user's sessions at once.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct UserPatch {
    #[schema(min_length = 1, max_length = 200)]
    display_name: Option<String>,
    #[schema(nullable = false)]
    role: Option<TenantRole>,
    #[schema(nullable = false)]
    active: Option<bool>,
}

list_type!(UserList, UserOut);

/// Create a user in your tenant.
#[utoipa::path(
    tag = "users",
    request_body(content = UserIn, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = UserOut,
         headers(("ETag" = String, description = "Version"), ("Location" = String))),
        (status = 409, description = "`email_taken`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[post("/users")]
pub async fn create_user(
    caller: TenantAdmin,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, &["email", "display_name", "role", "password"])?;
    let email = i.string("email", true, EmailAddress::parse);
    let display_name = i.string("display_name", false, text(1, 200));
    let role = i.string("role", true, Role::parse_tenant_role);
    let context = email
        .as_ref()
        .map(|e| e.as_str().to_owned())
        .unwrap_or_default();
    let password = i.string("password", true, |raw| Password::parse(raw, &[&context]));
    i.finish()?;
    let (Some(email), Some(role), Some(password)) = (email, role, password) else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "validated user input incomplete"
        )));
    };
    let input = NewUser {
        email,
        display_name,
        role,
        password,
    };
    let user = users::create_user(
        &state.db,
        &caller.0.tenant,
        input,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    let version = user.version;
    let out = UserOut::from(user);
    Ok(created(format!("/v1/users/{}", out.id), &out, version))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List the users of your tenant.
#[utoipa::path(
    tag = "users",
    params(UserQuery),
    responses((status = 200, description = "A page of users", body = UserList)),
    security(("bearer" = []))
)]
#[get("/users")]
pub async fn list_users(
    caller: TenantAdmin,
    state: web::Data<AppState>,
    query: web::Query<UserQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut errs = QueryErrors::default();
    let page = errs.page(query.limit.as_deref(), query.cursor.as_deref());
    errs.finish()?;
    let page = users::list_users(&state.db, &caller.0.tenant, page).await?;
    Ok(HttpResponse::Ok().json(UserList::from(page.map(UserOut::from))))
}

/// Get a user of your tenant.
#[utoipa::path(
    tag = "users",
    params(("id" = Uuid, Path, description = "User id")),
    responses((status = 200, description = "The user", body = UserOut,
               headers(("ETag" = String, description = "Version")))),
    security(("bearer" = []))
)]
#[get("/users/{id}")]
pub async fn get_user(
    caller: TenantAdmin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = UserId::from_uuid(path_id("user", &id)?);
    let user = users::get_user(&state.db, &caller.0.tenant, id).await?;
    let version = user.version;
    Ok(with_etag(StatusCode::OK, &UserOut::from(user), version))
}

/// Change a user's name, role or active flag. The tenant always keeps one active admin
/// (409 `last_admin`).
#[utoipa::path(
    tag = "users",
    params(
        ("id" = Uuid, Path, description = "User id"),
        ("If-Match" = Option<String>, Header, description = "ETag of the version being changed"),
    ),
    request_body(content = UserPatch, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The changed user", body = UserOut,
         headers(("ETag" = String, description = "New version"))),
        (status = 409, description = "`last_admin`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[patch("/users/{id}")]
pub async fn update_user(
    caller: TenantAdmin,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = UserId::from_uuid(path_id("user", &id)?);
    let expected = if_match(&req)?;
    let mut i = Input::body(&body, &["display_name", "role", "active"])?;
    let changes = UserChanges {
        display_name: i.patch_string("display_name", true, text(1, 200)),
        role: i
            .patch_string("role", false, Role::parse_tenant_role)
            .apply_to(None),
        active: if i.has("active") {
            i.boolean("active", true)
        } else {
            None
        },
    };
    i.finish()?;
    let user = users::update_user(
        &state.db,
        &caller.0.tenant,
        id,
        changes,
        expected,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    let version = user.version;
    Ok(with_etag(StatusCode::OK, &UserOut::from(user), version))
}

/// Delete a user: their account, credentials, sessions and linked SSO identities go; the
/// audit trail keeps their id. Needs a recent WebAuthn step-up; you cannot delete yourself
/// (409 `cannot_delete_self`) or the last active admin (409 `last_admin`).
#[utoipa::path(
    tag = "users",
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "`step_up_required`", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`cannot_delete_self` or `last_admin`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[delete("/users/{id}")]
pub async fn delete_user(
    caller: TenantAdmin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = UserId::from_uuid(path_id("user", &id)?);
    crate::routes::webauthn::require_step_up(&state, &caller.0)?;
    users::delete_user(&state.db, &caller.0, id, &caller.1, state.clock.now()).await?;
    Ok(HttpResponse::NoContent().finish())
}
