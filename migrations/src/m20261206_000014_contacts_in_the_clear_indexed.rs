//! Contacts still in the clear (written by a version before personal values were sealed:
//! no data key) are found through a partial index instead of by reading the whole table.
//!
//! Every start of a node, and `crm migrate`, looks for such rows to seal them
//! (`crm_domain::sealing`). Without an index that was a scan of every contact at each start:
//! on the benchmark's PostgreSQL database (1.5 million contacts) a start took 0.61–0.92 s
//! without the index and 0.21–0.22 s with it, and the scan grows with the table. The index holds only rows without a data key, so it is empty once
//! they are sealed and costs new contacts (which always have a key) nothing but the check of
//! its condition. Both databases support partial indexes with the same statement.
//!
//! Building it reads the table once. On PostgreSQL the migration runs in one transaction with
//! plain `CREATE INDEX`: writes to `contacts` wait until it is built (about a second per
//! million contacts read from disk). On a large table, run it in a maintenance window.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000014_contacts_in_the_clear_indexed"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX ix_contacts_in_clear ON contacts (id) WHERE data_key IS NULL",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_contacts_in_clear")
                    .table("contacts")
                    .to_owned(),
            )
            .await
    }
}
