//! The processor's register of sub-processors and its change history (platform-wide, read by
//! every tenant).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::helpers::{index, ts, ts_null};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261130_000004_sub_processors"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("sub_processors")
                    .col(uuid("id").primary_key())
                    .col(string_len("name", 200))
                    .col(string_len("purpose", 1000))
                    .col(string_len("data_categories", 1000))
                    .col(string_len("location", 200))
                    .col(string_len("transfer_safeguards", 1000))
                    .col(ts("since"))
                    .col(ts_null("until"))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .col(integer("version"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("sub_processor_changes")
                    .col(uuid("id").primary_key())
                    .col(uuid("sub_processor_id"))
                    .col(string_len("change", 16))
                    .col(uuid_null("actor_id"))
                    .col(json("snapshot"))
                    .col(ts("changed_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_sub_processor_changes_sub_processor")
                            .from("sub_processor_changes", "sub_processor_id")
                            .to("sub_processors", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "sub_processor_changes",
                "sub_processor",
                &["sub_processor_id"],
                false,
            ))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["sub_processor_changes", "sub_processors"] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
