//! Which node runs a periodic job next: one row per job, claimed by a conditional update.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::helpers::ts;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000009_job_runs"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("job_runs")
                    .col(string_len("name", 64).primary_key())
                    .col(ts("next_run_at"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("job_runs").if_exists().to_owned())
            .await
    }
}
