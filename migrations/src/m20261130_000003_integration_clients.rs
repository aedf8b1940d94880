//! Integration clients: partners' machine credentials (OAuth 2.0 client credentials).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::helpers::{tenant_fk, tenant_key, ts, ts_null};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261130_000003_integration_clients"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The secret is 256 random bits, so a SHA-256 digest is a safe way to store it.
        manager
            .create_table(
                Table::create()
                    .table("integration_clients")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(string_len_uniq("client_id", 64))
                    .col(string_len("name", 200))
                    .col(string_len("secret_hash", 64))
                    .col(string_len("scopes", 500))
                    .col(boolean("active"))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .col(ts_null("secret_rotated_at"))
                    .index(&mut tenant_key("integration_clients"))
                    .foreign_key(&mut tenant_fk("integration_clients"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table("integration_clients")
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
