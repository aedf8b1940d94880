//! Idempotency keys (the stored first response of a POST) and rate-limit windows shared by
//! every node.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::helpers::{index, tenant_fk, ts};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000010_request_limits"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("idempotency_keys")
                    .col(uuid("tenant_id"))
                    // user:<id> or client:<id>
                    .col(string_len("caller", 64))
                    .col(string_len("key", 255))
                    // Keyed digest of method, path, query and body.
                    .col(string_len("fingerprint", 64))
                    // in_flight, done
                    .col(string_len("state", 16))
                    .col(integer_null("status"))
                    .col(text_null("headers"))
                    // The response body, sealed (AES-256-GCM).
                    .col(text_null("body_enc"))
                    // Ids the response names, so an erasure can find what refers to the person.
                    .col(text("refs"))
                    .col(ts("created_at"))
                    .col(ts("expires_at"))
                    .primary_key(Index::create().col("tenant_id").col("caller").col("key"))
                    .foreign_key(&mut tenant_fk("idempotency_keys"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "idempotency_keys",
                "expires_at",
                &["expires_at"],
                false,
            ))
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("rate_limits")
                    // A digest of the limited key (caller or client address).
                    .col(string_len("key", 64).primary_key())
                    .col(ts("window_start"))
                    .col(big_integer("count"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in ["rate_limits", "idempotency_keys"] {
            manager
                .drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
