//! `/v1/companies`: organisations a tenant does business with.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use crm_domain::companies::{self, Company, CompanyChanges, CompanyFilter, NewCompany};
use crm_domain::ids::CompanyId;
use crm_domain::values::{domain_name, phone};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{QueryErrors, created, if_match, list_type, path_id, with_etag};
use crate::auth::{CompaniesRead, CompaniesWrite};
use crate::input::{Input, text};
use crate::problem::ApiError;
use crate::state::AppState;

/// A company as stored.
#[derive(Serialize, ToSchema)]
pub struct CompanyOut {
    pub id: Uuid,
    pub name: String,
    /// Web domain, e.g. `example.com`.
    pub domain: Option<String>,
    pub phone: Option<String>,
    pub industry: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
}

impl From<Company> for CompanyOut {
    fn from(c: Company) -> Self {
        CompanyOut {
            id: c.id.as_uuid(),
            name: c.name,
            domain: c.domain,
            phone: c.phone,
            industry: c.industry,
            created_at: c.created_at,
            updated_at: c.updated_at,
            version: c.version,
        }
    }
}

/// A new company.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct CompanyIn {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    #[schema(max_length = 253, example = "example.com")]
    domain: Option<String>,
    #[schema(
        min_length = 3,
        max_length = 32,
        pattern = r"^\+?([ ().-]*[0-9]){3}[0-9 ().-]*$"
    )]
    phone: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    industry: Option<String>,
}

/// A JSON Merge Patch of a company: absent fields stay, `null` clears (not `name`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct CompanyPatch {
    #[schema(min_length = 1, max_length = 200, nullable = false)]
    name: Option<String>,
    #[schema(max_length = 253)]
    domain: Option<String>,
    #[schema(
        min_length = 3,
        max_length = 32,
        pattern = r"^\+?([ ().-]*[0-9]){3}[0-9 ().-]*$"
    )]
    phone: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    industry: Option<String>,
}

list_type!(CompanyList, CompanyOut);

const FIELDS: &[&str] = &["name", "domain", "phone", "industry"];

/// Create a company.
#[utoipa::path(
    tag = "companies",
    request_body(content = CompanyIn, content_type = "application/json"),
    responses((status = 201, description = "Created", body = CompanyOut,
               headers(("ETag" = String, description = "Version"), ("Location" = String)))),
    security(("bearer" = []), ("oauth2" = ["companies:write"]))
)]
#[post("/companies")]
pub async fn create_company(
    caller: CompaniesWrite,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, FIELDS)?;
    let name = i.string("name", true, text(1, 200));
    let domain = i.string("domain", false, domain_name);
    let phone = i.string("phone", false, phone);
    let industry = i.string("industry", false, text(1, 100));
    i.finish()?;
    let input = NewCompany {
        name: name.unwrap_or_default(),
        domain,
        phone,
        industry,
    };
    let company = companies::create_company(
        &state.db,
        &caller.0.tenant,
        input,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    let version = company.version;
    let out = CompanyOut::from(company);
    Ok(created(format!("/v1/companies/{}", out.id), &out, version))
}

/// Query parameters of the company list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CompanyQuery {
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Case-insensitive text in the name or domain.
    #[param(min_length = 1, max_length = 200)]
    q: Option<String>,
}

/// List companies, oldest first.
#[utoipa::path(
    tag = "companies",
    params(CompanyQuery),
    responses((status = 200, description = "A page of companies", body = CompanyList)),
    security(("bearer" = []), ("oauth2" = ["companies:read"]))
)]
#[get("/companies")]
pub async fn list_companies(
    caller: CompaniesRead,
    state: web::Data<AppState>,
    query: web::Query<CompanyQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut errs = QueryErrors::default();
    let page = errs.page(query.limit.as_deref(), query.cursor.as_deref());
    let filter = CompanyFilter {
        q: errs.parse("q", query.q.as_deref(), text(1, 200)),
    };
    errs.finish()?;
    let page = companies::list_companies(&state.db, &caller.0.tenant, filter, page).await?;
    Ok(HttpResponse::Ok().json(CompanyList::from(page.map(CompanyOut::from))))
}

/// Get a company.
#[utoipa::path(
    tag = "companies",
    params(("id" = Uuid, Path, description = "Company id")),
    responses((status = 200, description = "The company", body = CompanyOut,
               headers(("ETag" = String, description = "Version")))),
    security(("bearer" = []), ("oauth2" = ["companies:read"]))
)]
#[get("/companies/{id}")]
pub async fn get_company(
    caller: CompaniesRead,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = CompanyId::from_uuid(path_id("company", &id)?);
    let company = companies::get_company(&state.db, &caller.0.tenant, id).await?;
    let version = company.version;
    Ok(with_etag(
        StatusCode::OK,
        &CompanyOut::from(company),
        version,
    ))
}

/// Change a company (JSON Merge Patch).
#[utoipa::path(
    tag = "companies",
    params(
        ("id" = Uuid, Path, description = "Company id"),
        ("If-Match" = Option<String>, Header, description = "ETag of the version being changed"),
    ),
    request_body(content = CompanyPatch, content_type = "application/merge-patch+json"),
    responses((status = 200, description = "The changed company", body = CompanyOut,
               headers(("ETag" = String, description = "New version")))),
    security(("bearer" = []), ("oauth2" = ["companies:write"]))
)]
#[patch("/companies/{id}")]
pub async fn update_company(
    caller: CompaniesWrite,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = CompanyId::from_uuid(path_id("company", &id)?);
    let expected = if_match(&req)?;
    let mut i = Input::body(&body, FIELDS)?;
    let changes = CompanyChanges {
        name: i.patch_string("name", false, text(1, 200)).apply_to(None),
        domain: i.patch_string("domain", true, domain_name),
        phone: i.patch_string("phone", true, phone),
        industry: i.patch_string("industry", true, text(1, 100)),
    };
    i.finish()?;
    let company = companies::update_company(
        &state.db,
        &caller.0.tenant,
        id,
        changes,
        expected,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    let version = company.version;
    Ok(with_etag(
        StatusCode::OK,
        &CompanyOut::from(company),
        version,
    ))
}

/// Delete a company. Its contacts and orders stay, without the link.
#[utoipa::path(
    tag = "companies",
    params(
        ("id" = Uuid, Path, description = "Company id"),
        ("If-Match" = Option<String>, Header, description = "ETag of the version being deleted"),
    ),
    responses((status = 204, description = "Deleted")),
    security(("bearer" = []), ("oauth2" = ["companies:write"]))
)]
#[delete("/companies/{id}")]
pub async fn delete_company(
    caller: CompaniesWrite,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = CompanyId::from_uuid(path_id("company", &id)?);
    let expected = if_match(&req)?;
    companies::delete_company(
        &state.db,
        &caller.0.tenant,
        id,
        expected,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
