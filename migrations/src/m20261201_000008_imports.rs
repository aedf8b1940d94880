//! Contact imports (NDJSON or CSV files) processed in the background with progress.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::helpers::{index, tenant_fk, tenant_key, ts, ts_null};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000008_imports"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("import_jobs")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(uuid_null("actor_id"))
                    .col(string_len("format", 8))
                    // queued, running, done
                    .col(string_len("status", 16))
                    .col(big_integer("total"))
                    .col(big_integer("processed"))
                    .col(big_integer("created"))
                    .col(big_integer("updated"))
                    .col(big_integer("failed"))
                    // Row numbers and codes of failed rows (no values), at most 1000.
                    .col(text("errors"))
                    // The uploaded file until it has been processed; then emptied.
                    .col(text("payload"))
                    .col(ts_null("locked_until"))
                    .col(ts("created_at"))
                    .col(ts_null("finished_at"))
                    .index(&mut tenant_key("import_jobs"))
                    .foreign_key(&mut tenant_fk("import_jobs"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index("import_jobs", "status", &["status"], false))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("import_jobs").if_exists().to_owned())
            .await
    }
}
