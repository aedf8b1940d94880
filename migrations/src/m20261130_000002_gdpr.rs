//! GDPR records: redaction and legal hold on contacts, consent purposes and the append-only
//! consent history, data-subject requests, suppression list, erasure ledger, retention
//! policies, tenant GDPR settings and the hash-chained audit trail.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::helpers::{composite_fk, index, tenant_fk, tenant_key, ts, ts_null};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261130_000002_gdpr"
    }
}

const TABLES: &[&str] = &[
    "audit_events",
    "retention_policies",
    "gdpr_settings",
    "erasure_ledger",
    "suppressions",
    "dsr_requests",
    "consents",
    "purposes",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for mut col in [
            boolean("legal_hold").default(false).to_owned(),
            ts_null("redacted_at"),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table("contacts")
                        .add_column(&mut col)
                        .to_owned(),
                )
                .await?;
        }

        manager
            .create_table(
                Table::create()
                    .table("purposes")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(string_len("key", 64))
                    .col(string_len("name", 200))
                    .col(string_len_null("description", 1000))
                    .col(ts("created_at"))
                    .index(&mut tenant_key("purposes"))
                    .index(&mut index("purposes", "key", &["tenant_id", "key"], true))
                    .foreign_key(&mut tenant_fk("purposes"))
                    .to_owned(),
            )
            .await?;

        // Append-only: a grant or withdrawal is a new row; the latest row per
        // (contact, purpose) is the current state.
        manager
            .create_table(
                Table::create()
                    .table("consents")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(uuid("contact_id"))
                    .col(uuid("purpose_id"))
                    .col(string_len("status", 16))
                    .col(string_len("lawful_basis", 32))
                    .col(string_len("channel", 32))
                    .col(string_len_null("source", 200))
                    .col(string_len_null("evidence", 1000))
                    .col(uuid_null("recorded_by"))
                    .col(ts("recorded_at"))
                    .index(&mut tenant_key("consents"))
                    .foreign_key(&mut composite_fk(
                        "consents",
                        "contact_id",
                        "contacts",
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut composite_fk(
                        "consents",
                        "purpose_id",
                        "purposes",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("dsr_requests")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(uuid_null("contact_id"))
                    .col(string_len("kind", 16))
                    .col(ts("received_at"))
                    .col(ts("due_at"))
                    .col(string_len_null("extension_reason", 1000))
                    .col(string_len("identity_verification", 16))
                    .col(string_len("status", 16))
                    .col(string_len_null("outcome", 1000))
                    .col(uuid_null("erasure_id"))
                    .col(ts_null("closed_at"))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .col(integer("version"))
                    .index(&mut tenant_key("dsr_requests"))
                    .foreign_key(&mut tenant_fk("dsr_requests"))
                    .foreign_key(&mut composite_fk(
                        "dsr_requests",
                        "contact_id",
                        "contacts",
                        ForeignKeyAction::NoAction,
                    ))
                    .to_owned(),
            )
            .await?;

        // Keyed HMAC of the normalised e-mail; never the address.
        manager
            .create_table(
                Table::create()
                    .table("suppressions")
                    .col(uuid("tenant_id"))
                    .col(string_len("email_hmac", 64))
                    .col(ts("created_at"))
                    .primary_key(Index::create().col("tenant_id").col("email_hmac"))
                    .foreign_key(&mut tenant_fk("suppressions"))
                    .to_owned(),
            )
            .await?;

        // Ids and time only, so erasures can be re-applied after a restore.
        manager
            .create_table(
                Table::create()
                    .table("erasure_ledger")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(uuid("contact_id"))
                    .col(json_null("order_ids"))
                    .col(ts("erased_at"))
                    .index(&mut tenant_key("erasure_ledger"))
                    .foreign_key(&mut tenant_fk("erasure_ledger"))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("gdpr_settings")
                    .col(uuid("tenant_id").primary_key())
                    .col(integer("order_retention_days"))
                    .col(ts("updated_at"))
                    .foreign_key(&mut tenant_fk("gdpr_settings"))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("retention_policies")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(string_len("record_type", 32))
                    .col(string_len("basis", 16))
                    .col(integer("after_days"))
                    .col(string_len("action", 16))
                    .col(ts("created_at"))
                    .index(&mut tenant_key("retention_policies"))
                    .index(&mut index(
                        "retention_policies",
                        "type",
                        &["tenant_id", "record_type", "basis"],
                        true,
                    ))
                    .foreign_key(&mut tenant_fk("retention_policies"))
                    .to_owned(),
            )
            .await?;

        // Append-only and hash-chained per tenant: `hash` covers `prev_hash` and every field.
        manager
            .create_table(
                Table::create()
                    .table("audit_events")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(big_integer("seq"))
                    .col(ts("occurred_at"))
                    .col(uuid_null("actor_id"))
                    .col(string_len("actor_kind", 16))
                    .col(string_len("action", 64))
                    .col(string_len("object_type", 32))
                    .col(uuid_null("object_id"))
                    .col(string_len_null("request_id", 64))
                    .col(json_null("details"))
                    .col(string_len("prev_hash", 64))
                    .col(string_len("hash", 64))
                    .index(&mut index(
                        "audit_events",
                        "seq",
                        &["tenant_id", "seq"],
                        true,
                    ))
                    .foreign_key(&mut tenant_fk("audit_events"))
                    .to_owned(),
            )
            .await?;

        for (table, name, cols) in [
            (
                "consents",
                "contact",
                &["tenant_id", "contact_id", "purpose_id"][..],
            ),
            (
                "dsr_requests",
                "due",
                &["tenant_id", "status", "due_at"][..],
            ),
            ("audit_events", "object", &["tenant_id", "object_id"][..]),
        ] {
            manager
                .create_index(index(table, name, cols, false))
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            manager
                .drop_table(Table::drop().table(*table).if_exists().to_owned())
                .await?;
        }
        for col in ["legal_hold", "redacted_at"] {
            manager
                .alter_table(Table::alter().table("contacts").drop_column(col).to_owned())
                .await?;
        }
        Ok(())
    }
}
