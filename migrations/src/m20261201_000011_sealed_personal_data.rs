//! Crypto-shredding: each contact's data key (wrapped by a key-encryption key kept outside
//! the database) and the blind index that replaces the e-mail address for lookups and
//! uniqueness. Sealed values are longer than the text they hold, so the columns that hold
//! them become unbounded text (PostgreSQL; SQLite does not enforce lengths). The service
//! seals the rows written before this migration when it starts.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::helpers::index;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000011_sealed_personal_data"
    }
}

/// Columns that hold sealed values from now on.
const SEALED: &[(&str, &str)] = &[
    ("contacts", "first_name"),
    ("contacts", "last_name"),
    ("contacts", "email"),
    ("contacts", "phone"),
    ("contacts", "job_title"),
    ("consents", "source"),
    ("consents", "evidence"),
    ("dsr_requests", "extension_reason"),
    ("dsr_requests", "outcome"),
    ("email_outbox", "to_address"),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for mut col in [blob_null("data_key"), string_len_null("email_index", 64)] {
            manager
                .alter_table(
                    Table::alter()
                        .table("contacts")
                        .add_column(&mut col)
                        .to_owned(),
                )
                .await?;
        }
        // The outbox finds a person's messages by the blind index of their address.
        manager
            .alter_table(
                Table::alter()
                    .table("email_outbox")
                    .add_column(string_len_null("to_index", 64))
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == sea_orm::DbBackend::Postgres {
            let db = manager.get_connection();
            for (table, column) in SEALED {
                db.execute_unprepared(&format!(
                    "ALTER TABLE {table} ALTER COLUMN {column} TYPE text"
                ))
                .await?;
            }
            // Sealed addresses are all different: uniqueness moves to the blind index. (On
            // SQLite the old constraint is part of the table and stays, harmless.)
            db.execute_unprepared(
                "ALTER TABLE contacts DROP CONSTRAINT IF EXISTS ix_contacts_email",
            )
            .await?;
            db.execute_unprepared("DROP INDEX IF EXISTS ix_contacts_email")
                .await?;
        }
        manager
            .create_index(index(
                "contacts",
                "email_index",
                &["tenant_id", "email_index"],
                true,
            ))
            .await?;
        manager
            .create_index(index(
                "email_outbox",
                "to_index",
                &["tenant_id", "to_index"],
                false,
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, name) in [("email_outbox", "to_index"), ("contacts", "email_index")] {
            manager
                .drop_index(
                    Index::drop()
                        .name(format!("ix_{table}_{name}"))
                        .table(table)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table("email_outbox")
                    .drop_column("to_index")
                    .to_owned(),
            )
            .await?;
        for col in ["email_index", "data_key"] {
            manager
                .alter_table(Table::alter().table("contacts").drop_column(col).to_owned())
                .await?;
        }
        Ok(())
    }
}
