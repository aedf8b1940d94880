//! The domain's one error type. The API maps each variant to exactly one HTTP problem.

use sea_orm::DbErr;

/// One invalid input value, located by a JSON pointer into the request (or a query parameter).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// RFC 6901 JSON pointer into the request body, e.g. `/lines/0/quantity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// Name of the query parameter, for invalid query parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    /// Stable machine code, e.g. `too_long`, `invalid_email`, `required`.
    pub code: String,
    pub detail: String,
}

impl FieldError {
    pub fn at(pointer: impl Into<String>, code: &str, detail: impl Into<String>) -> Self {
        FieldError {
            pointer: Some(pointer.into()),
            parameter: None,
            code: code.to_owned(),
            detail: detail.into(),
        }
    }

    pub fn param(name: impl Into<String>, code: &str, detail: impl Into<String>) -> Self {
        FieldError {
            pointer: None,
            parameter: Some(name.into()),
            code: code.to_owned(),
            detail: detail.into(),
        }
    }
}

/// A value failed its constraints; the caller adds where it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct InvalidValue {
    pub code: &'static str,
    pub detail: String,
}

impl InvalidValue {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        InvalidValue {
            code,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The object does not exist *for this tenant* (another tenant's object is not found too).
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// `If-Match` named a version that is no longer current.
    #[error("the resource was changed since the given version")]
    PreconditionFailed,
    /// Authentication failed; the code says why in terms safe to show a client.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("too many attempts")]
    Throttled { retry_after_secs: u64 },
    #[error("database error")]
    Database(#[from] DbErr),
    #[error("internal error: {0}")]
    Internal(String),
}

impl DomainError {
    pub fn invalid(pointer: &str, code: &str, detail: impl Into<String>) -> Self {
        DomainError::Invalid(vec![FieldError::at(pointer, code, detail)])
    }
}

pub type DomainResult<T> = Result<T, DomainError>;
