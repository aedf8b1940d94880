//! The breach register (Art. 33/34) with its affected controllers and phased updates, and the
//! e-mail outbox that notifications go through.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::helpers::{index, tenant_fk, tenant_key, ts, ts_null};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000007_breaches"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("breaches")
                    .col(uuid("id").primary_key())
                    // The recording tenant: the platform tenant for the processor's breaches.
                    .col(uuid("tenant_id"))
                    .col(string_len("scope", 16))
                    .col(string_len("title", 200))
                    .col(string_len("nature", 4000))
                    .col(string_len("data_categories", 1000))
                    .col(big_integer_null("subjects_approx"))
                    .col(big_integer_null("records_approx"))
                    .col(string_len("likely_consequences", 4000))
                    .col(string_len("measures", 4000))
                    .col(string_len("contact_point", 500))
                    .col(boolean("high_risk"))
                    // Contacts of the recording tenant to inform when high risk (Art. 34).
                    .col(text("affected_contacts"))
                    .col(ts("aware_at"))
                    .col(ts("deadline_at"))
                    .col(string_len("status", 16))
                    .col(string_len_null("late_reason", 2000))
                    .col(ts_null("notified_at"))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .index(&mut tenant_key("breaches"))
                    .foreign_key(&mut tenant_fk("breaches"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("breach_tenants")
                    .col(uuid("breach_id"))
                    .col(uuid("tenant_id"))
                    .primary_key(Index::create().col("breach_id").col("tenant_id"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_breach_tenants_breach")
                            .from("breach_tenants", "breach_id")
                            .to("breaches", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(&mut tenant_fk("breach_tenants"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index("breach_tenants", "tenant", &["tenant_id"], false))
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("breach_updates")
                    .col(uuid("id").primary_key())
                    .col(uuid("breach_id"))
                    .col(string_len("note", 4000))
                    .col(uuid_null("actor_id"))
                    .col(ts("created_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_breach_updates_breach")
                            .from("breach_updates", "breach_id")
                            .to("breaches", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("email_outbox")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    // What the message is about (e.g. the breach), for showing delivery state.
                    .col(string_len("topic", 32))
                    .col(uuid_null("topic_id"))
                    .col(string_len("recipient_kind", 16))
                    .col(string_len("to_address", 254))
                    .col(string_len("subject", 300))
                    .col(text("body"))
                    .col(string_len("status", 16))
                    .col(integer("attempts"))
                    .col(ts("next_attempt_at"))
                    .col(ts_null("locked_until"))
                    .col(string_len_null("last_error", 500))
                    .col(ts_null("sent_at"))
                    .col(ts("created_at"))
                    .foreign_key(&mut tenant_fk("email_outbox"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "email_outbox",
                "due",
                &["status", "next_attempt_at"],
                false,
            ))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "email_outbox",
            "breach_updates",
            "breach_tenants",
            "breaches",
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
