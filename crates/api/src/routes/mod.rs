//! HTTP handlers. Thin: extract (authorisation is in the extractor type), one domain call,
//! map to the wire type.

pub mod auth;
pub mod breaches;
pub mod clients;
pub mod companies;
pub mod consents;
pub mod contacts;
pub mod dsr;
pub mod gdpr;
pub mod meta;
pub mod orders;
pub mod sso;
pub mod sub_processors;
pub mod tenants;
pub mod users;
pub mod webauthn;
pub mod webhooks;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse};
use crm_domain::FieldError;
use crm_domain::pagination::PageRequest;
use serde::Serialize;
use uuid::Uuid;

use crate::problem::ApiError;

/// The entity tag of a stored version.
pub fn etag(version: i32) -> String {
    format!("\"{version}\"")
}

/// Reads `If-Match`: `None` when absent or `*`; a tag that is no version of ours never matches.
pub fn if_match(req: &HttpRequest) -> Result<Option<i32>, ApiError> {
    let Some(raw) = req.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let raw = raw.to_str().unwrap_or("").trim();
    if raw.is_empty() || raw == "*" {
        return Ok(None);
    }
    let tag = raw.strip_prefix("W/").unwrap_or(raw);
    match tag.trim_matches('"').parse::<i32>() {
        Ok(v) if tag.starts_with('"') && tag.ends_with('"') && tag.len() > 2 => Ok(Some(v)),
        _ => Ok(Some(-1)),
    }
}

/// A path id; a malformed one names nothing, so it is not found.
pub fn path_id(kind: &str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(kind))
}

/// A JSON response carrying the version as `ETag`.
pub fn with_etag<T: Serialize>(status: StatusCode, body: &T, version: i32) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::ETAG, etag(version)))
        .json(body)
}

pub fn created<T: Serialize>(location: String, body: &T, version: i32) -> HttpResponse {
    HttpResponse::Created()
        .insert_header((header::ETAG, etag(version)))
        .insert_header((header::LOCATION, location))
        .json(body)
}

/// Query-parameter errors collected while reading a list request.
#[derive(Default)]
pub struct QueryErrors(pub Vec<FieldError>);

impl QueryErrors {
    pub fn parse<T>(
        &mut self,
        name: &str,
        raw: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, crm_domain::InvalidValue>,
    ) -> Option<T> {
        let raw = raw?;
        match parse(raw) {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(FieldError::param(name, e.code, e.detail));
                None
            }
        }
    }

    pub fn page(&mut self, limit: Option<&str>, cursor: Option<&str>) -> PageRequest {
        let limit = self
            .parse("limit", limit, |raw| {
                let n = raw
                    .trim()
                    .parse::<i64>()
                    .or_else(|_| match raw.trim().parse::<f64>() {
                        Ok(f) if f.fract() == 0.0 && f.abs() < 1e9 => Ok(f as i64),
                        _ => Err(()),
                    })
                    .map_err(|_| {
                        crm_domain::InvalidValue::new("invalid_type", "must be an integer")
                    })?;
                PageRequest::parse_limit(Some(n))
            })
            .unwrap_or(crm_domain::pagination::DEFAULT_LIMIT);
        // An empty cursor is the first page (clients often send `cursor=` on the first call).
        let cursor = cursor.filter(|c| !c.is_empty());
        let after = self
            .parse("cursor", cursor, |raw| PageRequest::parse_cursor(Some(raw)))
            .flatten();
        PageRequest { limit, after }
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(self.0))
        }
    }
}

/// Declares a list wrapper `{ data, next_cursor }` for a wire type.
macro_rules! list_type {
    ($name:ident, $item:ty) => {
        #[derive(serde::Serialize, utoipa::ToSchema)]
        pub struct $name {
            pub data: Vec<$item>,
            /// Pass as `cursor` to get the next page; absent on the last page.
            #[serde(skip_serializing_if = "Option::is_none")]
            #[schema(nullable = false)]
            pub next_cursor: Option<String>,
        }

        impl From<crm_domain::pagination::Page<$item>> for $name {
            fn from(p: crm_domain::pagination::Page<$item>) -> Self {
                $name {
                    data: p.data,
                    next_cursor: p.next_cursor,
                }
            }
        }
    };
}
pub(crate) use list_type;
