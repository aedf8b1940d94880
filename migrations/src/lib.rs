//! Database migrations of the CRM. Append-only: a released migration is never edited, a change
//! is a new migration. Migrations never import entities, so they describe the schema as it was.

#![forbid(unsafe_code)]

pub use sea_orm_migration::prelude::*;

mod helpers;
mod m20261130_000001_foundation;
mod m20261130_000002_gdpr;
mod m20261130_000003_integration_clients;
mod m20261130_000004_sub_processors;
mod m20261201_000005_identity;
mod m20261201_000006_events;
mod m20261201_000007_breaches;
mod m20261201_000008_imports;
mod m20261201_000009_job_runs;
mod m20261201_000010_request_limits;
mod m20261201_000011_sealed_personal_data;
mod m20261201_000012_log_tables_without_tenant_checks;
mod m20261205_000013_audit_indexes_in_chain_order;
mod m20261206_000014_contacts_in_the_clear_indexed;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261130_000001_foundation::Migration),
            Box::new(m20261130_000002_gdpr::Migration),
            Box::new(m20261130_000003_integration_clients::Migration),
            Box::new(m20261130_000004_sub_processors::Migration),
            Box::new(m20261201_000005_identity::Migration),
            Box::new(m20261201_000006_events::Migration),
            Box::new(m20261201_000007_breaches::Migration),
            Box::new(m20261201_000008_imports::Migration),
            Box::new(m20261201_000009_job_runs::Migration),
            Box::new(m20261201_000010_request_limits::Migration),
            Box::new(m20261201_000011_sealed_personal_data::Migration),
            Box::new(m20261201_000012_log_tables_without_tenant_checks::Migration),
            Box::new(m20261205_000013_audit_indexes_in_chain_order::Migration),
            Box::new(m20261206_000014_contacts_in_the_clear_indexed::Migration),
        ]
    }
}
