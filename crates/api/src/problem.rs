//! RFC 9457 problem details. Every failure, the framework's own included, leaves the service
//! as `application/problem+json` with a stable machine `code`. 5xx bodies say nothing internal;
//! the cause chain is logged once.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use crm_domain::{DomainError, FieldError};
use serde::Serialize;
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem detail (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// URI reference naming the problem type.
    #[serde(rename = "type")]
    #[schema(example = "urn:crm:problem:contact_not_found")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Stable machine-readable code; clients branch on this.
    #[schema(example = "contact_not_found")]
    pub code: String,
    /// One entry per invalid value (422).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(nullable = false)]
    pub errors: Vec<ProblemField>,
}

/// Where and why one input value was refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemField {
    /// JSON pointer into the request body.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub pointer: Option<String>,
    /// Name of the query parameter.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub parameter: Option<String>,
    pub code: String,
    pub detail: String,
}

impl From<FieldError> for ProblemField {
    fn from(e: FieldError) -> Self {
        ProblemField {
            pointer: e.pointer,
            parameter: e.parameter,
            code: e.code,
            detail: e.detail,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{code}")]
    Status {
        status: StatusCode,
        code: String,
        detail: String,
    },
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("throttled")]
    Throttled { retry_after_secs: u64 },
    #[error("unauthenticated: {code}")]
    Unauthenticated {
        code: &'static str,
        detail: &'static str,
    },
    #[error("method not allowed")]
    MethodNotAllowed { allow: String },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        ApiError::Status {
            status,
            code: code.to_owned(),
            detail: detail.into(),
        }
    }

    pub fn not_found(kind: &str) -> Self {
        ApiError::status(
            StatusCode::NOT_FOUND,
            &format!("{kind}_not_found"),
            format!("no {kind} with this id exists"),
        )
    }

    pub fn forbidden(detail: &str) -> Self {
        ApiError::status(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn bad_request(code: &str, detail: impl Into<String>) -> Self {
        ApiError::status(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn invalid(errors: Vec<FieldError>) -> Self {
        ApiError::Invalid(errors)
    }

    fn parts(&self) -> (StatusCode, String, Option<String>) {
        match self {
            ApiError::Status {
                status,
                code,
                detail,
            } => (*status, code.clone(), Some(detail.clone())),
            ApiError::Invalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed".into(),
                Some("one or more values are invalid; see errors".into()),
            ),
            ApiError::Throttled { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts".into(),
                Some("too many failed attempts; retry after the time given in Retry-After".into()),
            ),
            ApiError::Unauthenticated { code, detail } => (
                StatusCode::UNAUTHORIZED,
                (*code).into(),
                Some((*detail).into()),
            ),
            ApiError::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed".into(),
                Some("this resource does not support the request method".into()),
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error".into(),
                Some("the server failed to handle the request; it has been logged".into()),
            ),
        }
    }
}

/// Builds a problem response.
pub fn problem_response(
    status: StatusCode,
    code: &str,
    detail: Option<String>,
    errors: Vec<FieldError>,
) -> HttpResponse {
    let body = Problem {
        problem_type: format!("urn:crm:problem:{code}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail,
        code: code.to_owned(),
        errors: errors.into_iter().map(ProblemField::from).collect(),
    };
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)))
        .body(serde_json::to_string(&body).unwrap_or_else(|_| "{}".to_owned()))
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code, detail) = self.parts();
        if let ApiError::Internal(cause) = self {
            log::error!("internal error: {cause:#}");
        }
        let errors = match self {
            ApiError::Invalid(errors) => errors.clone(),
            _ => Vec::new(),
        };
        let mut resp = problem_response(status, &code, detail, errors);
        match self {
            ApiError::Throttled { retry_after_secs } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            ApiError::Unauthenticated { code, .. } => {
                let challenge = if *code == "unauthenticated" {
                    "Bearer".to_owned()
                } else if *code == "step_up_required" {
                    // RFC 9470: the token is fine, the authentication behind it is too old.
                    format!(
                        "Bearer error=\"insufficient_user_authentication\", error_description=\"{code}\""
                    )
                } else {
                    format!("Bearer error=\"invalid_token\", error_description=\"{code}\"")
                };
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            ApiError::MethodNotAllowed { allow } => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    resp.headers_mut().insert(header::ALLOW, v);
                }
            }
            _ => {}
        }
        resp
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::NotFound(kind) => ApiError::not_found(kind),
            DomainError::Invalid(errors) => ApiError::Invalid(errors),
            DomainError::Conflict { code, detail } => {
                ApiError::status(StatusCode::CONFLICT, code, detail)
            }
            DomainError::PreconditionFailed => ApiError::status(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                "the resource changed since the version given in If-Match; read it again",
            ),
            DomainError::Unauthenticated(code) => ApiError::Unauthenticated {
                code,
                detail: match code {
                    "invalid_credentials" => {
                        "tenant, e-mail or password is wrong, or the account is inactive"
                    }
                    "refresh_token_reused" => {
                        "this refresh token was used before; the session has been ended"
                    }
                    "invalid_refresh_token" => "the refresh token is unknown or expired",
                    "session_ended" => "the session has ended; sign in again",
                    "mfa_required" => {
                        "this tenant requires WebAuthn; sign in again with your second factor"
                    }
                    "invalid_mfa_ticket" => {
                        "the MFA ticket is unknown, expired or used; sign in again"
                    }
                    "sso_not_linkable" => {
                        "the identity provider's account has no verified e-mail in an allowed domain, or the account is linked to someone else"
                    }
                    "sso_no_account" => "no account matches this identity and provisioning is off",
                    "account_inactive" => "the account is inactive",
                    _ => "authentication failed",
                },
            },
            DomainError::Forbidden(detail) => ApiError::forbidden(detail),
            DomainError::Throttled { retry_after_secs } => ApiError::Throttled { retry_after_secs },
            DomainError::Database(db) => {
                ApiError::Internal(anyhow::Error::new(db).context("database"))
            }
            DomainError::Internal(msg) => ApiError::Internal(anyhow::anyhow!(msg)),
        }
    }
}
