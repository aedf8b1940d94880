//! Domain of the GDPR-first CRM: tenants, identity, companies, contacts and orders.
//!
//! No HTTP here. Entities are private; every public function that touches tenant data takes
//! the caller's [`Tenant`], so another tenant's row is simply not found.

#![forbid(unsafe_code)]

pub mod audit;
pub mod breaches;
pub mod clients;
pub mod clock;
pub mod companies;
pub mod consents;
pub mod contacts;
pub mod db;
pub mod dsr;
mod entities;
pub mod error;
pub mod events;
pub mod gdpr;
pub mod idempotency;
pub mod ids;
pub mod imports;
pub mod jobs;
pub mod mfa;
pub mod orders;
pub mod pagination;
pub mod passwords;
pub mod personal_data;
pub mod rate_limits;
pub mod retention;
pub mod sealing;
pub mod secrets;
pub mod sessions;
pub mod sso;
pub mod sub_processors;
pub mod suppression;
pub mod tenancy;
pub mod tenants;
pub mod users;
pub mod values;
pub mod vault;

pub use error::{DomainError, DomainResult, FieldError, InvalidValue};
pub use tenancy::{Principal, Tenant, TenantKind};

/// Maps a unique-key violation to a 409 with the given code; other errors pass through.
pub(crate) fn conflict_on_unique(
    err: sea_orm::DbErr,
    code: &'static str,
    detail: &str,
) -> DomainError {
    match err.sql_err() {
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => DomainError::Conflict {
            code,
            detail: detail.to_owned(),
        },
        _ => DomainError::Database(err),
    }
}

/// Checks an `If-Match` version against the stored one.
pub(crate) fn check_version(expected: Option<i32>, actual: i32) -> DomainResult<()> {
    match expected {
        Some(v) if v != actual => Err(DomainError::PreconditionFailed),
        _ => Ok(()),
    }
}

/// A version-checked write touches exactly one row; none means another writer got there first.
pub(crate) fn expect_one_row(rows_affected: u64) -> DomainResult<()> {
    if rows_affected == 1 {
        Ok(())
    } else {
        Err(DomainError::PreconditionFailed)
    }
}
