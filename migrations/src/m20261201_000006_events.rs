//! Events: the outbox written in the same transaction as each change (also the partner
//! change feed, in commit order per tenant), webhook endpoints and their deliveries.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::helpers::{composite_fk, index, tenant_fk, tenant_key, ts, ts_null};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000006_events"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("events")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    // Per tenant, assigned under the tenant's write lock: commit order.
                    .col(big_integer("seq"))
                    .col(string_len("event_type", 64))
                    .col(string_len("object_type", 32))
                    .col(uuid_null("object_id"))
                    // The contact the payload is about: erasure scrubs it to ids only.
                    .col(uuid_null("subject_contact_id"))
                    .col(text("payload"))
                    .col(ts("created_at"))
                    .foreign_key(&mut tenant_fk("events"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index("events", "seq", &["tenant_id", "seq"], true))
            .await?;
        manager
            .create_index(index(
                "events",
                "subject",
                &["tenant_id", "subject_contact_id"],
                false,
            ))
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("webhook_endpoints")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(string_len("url", 2000))
                    // Space-separated event types; `*` for all.
                    .col(string_len("event_types", 1000))
                    .col(string_len_null("description", 200))
                    // Standard Webhooks secret, encrypted with the service's key.
                    .col(text("secret_enc"))
                    .col(boolean("active"))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .index(&mut tenant_key("webhook_endpoints"))
                    .foreign_key(&mut tenant_fk("webhook_endpoints"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("webhook_deliveries")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(uuid("endpoint_id"))
                    .col(uuid("event_id"))
                    // pending, delivered, dead
                    .col(string_len("status", 16))
                    .col(integer("attempts"))
                    .col(ts("next_attempt_at"))
                    .col(ts_null("locked_until"))
                    .col(ts_null("last_attempt_at"))
                    .col(integer_null("last_status"))
                    .col(string_len_null("last_error", 500))
                    .col(ts_null("delivered_at"))
                    .col(ts("created_at"))
                    .foreign_key(&mut tenant_fk("webhook_deliveries"))
                    .foreign_key(&mut composite_fk(
                        "webhook_deliveries",
                        "endpoint_id",
                        "webhook_endpoints",
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_webhook_deliveries_event")
                            .from("webhook_deliveries", "event_id")
                            .to("events", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "webhook_deliveries",
                "due",
                &["status", "next_attempt_at"],
                false,
            ))
            .await?;
        manager
            .create_index(index(
                "webhook_deliveries",
                "endpoint",
                &["tenant_id", "endpoint_id"],
                false,
            ))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["webhook_deliveries", "webhook_endpoints", "events"] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
