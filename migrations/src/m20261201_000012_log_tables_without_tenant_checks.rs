//! The append-only logs (`audit_events`, `events`) no longer carry a foreign key to
//! `tenants` on PostgreSQL.
//!
//! PostgreSQL checks a foreign key row by row: every inserted entry looked its tenant up and
//! locked it (`FOR KEY SHARE`): for the two logs together ~7 ms of the ~43 ms a 1,000-contact
//! bulk write spent in the database. The check guards nothing the service can reach: entries
//! are written only inside the transaction of the change they record, for the tenant the
//! caller is signed in to, and tenants are deactivated, never deleted (no code path deletes
//! one; the `ON DELETE CASCADE` never fired). The rows stay keyed and indexed by tenant
//! exactly as before. `contacts` and every other tenant-owned table keep their keys.
//!
//! SQLite keeps the constraints: they are part of its table definitions and cannot be dropped
//! without rebuilding the tables, and its check is an in-process index probe.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000012_log_tables_without_tenant_checks"
    }
}

const KEYS: &[(&str, &str)] = &[
    ("audit_events", "fk_audit_events_tenant"),
    ("events", "fk_events_tenant"),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        for (table, key) in KEYS {
            db.execute_unprepared(&format!(
                "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {key}"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        for (table, key) in KEYS {
            db.execute_unprepared(&format!(
                "ALTER TABLE {table} ADD CONSTRAINT {key} FOREIGN KEY (tenant_id) \
                 REFERENCES tenants (id) ON DELETE CASCADE"
            ))
            .await?;
        }
        Ok(())
    }
}
