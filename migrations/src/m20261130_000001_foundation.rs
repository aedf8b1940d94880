//! Tenants, identity (users, password credentials, sessions, refresh tokens, login throttling)
//! and the CRM core (companies, contacts, orders, order lines).
//!
//! Every tenant-owned table carries `tenant_id`, has a unique key `(tenant_id, id)` and refers to
//! other tenant tables through composite keys `(tenant_id, x_id)`, so a row can never point into
//! another tenant, even through a bug.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::helpers::{composite_fk, index, tenant_fk, tenant_key, ts, ts_null};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261130_000001_foundation"
    }
}

const TABLES: &[&str] = &[
    "order_lines",
    "orders",
    "contacts",
    "companies",
    "refresh_tokens",
    "sessions",
    "password_credentials",
    "users",
    "auth_throttle",
    "tenants",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("tenants")
                    .col(uuid("id").primary_key())
                    .col(string_len_uniq("slug", 63))
                    .col(string_len("name", 200))
                    .col(string_len("kind", 16))
                    .col(boolean("active"))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .col(integer("version"))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("users")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(string_len("email", 254))
                    .col(string_len_null("display_name", 200))
                    .col(string_len("role", 32))
                    .col(boolean("active"))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .col(integer("version"))
                    .index(&mut tenant_key("users"))
                    .index(&mut index("users", "email", &["tenant_id", "email"], true))
                    .foreign_key(&mut tenant_fk("users"))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("password_credentials")
                    .col(uuid("user_id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(string_len("hash", 255))
                    .col(ts("updated_at"))
                    .foreign_key(&mut composite_fk(
                        "password_credentials",
                        "user_id",
                        "users",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("sessions")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(uuid("user_id"))
                    .col(string_len("amr", 64))
                    .col(ts("auth_time"))
                    .col(ts("created_at"))
                    .col(ts("expires_at"))
                    .col(ts_null("revoked_at"))
                    .col(string_len_null("revoke_reason", 32))
                    .index(&mut tenant_key("sessions"))
                    .foreign_key(&mut composite_fk(
                        "sessions",
                        "user_id",
                        "users",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("refresh_tokens")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(uuid("session_id"))
                    .col(string_len_uniq("token_hash", 64))
                    .col(ts("created_at"))
                    .col(ts("expires_at"))
                    .col(ts_null("used_at"))
                    .foreign_key(&mut composite_fk(
                        "refresh_tokens",
                        "session_id",
                        "sessions",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;

        // Keys are SHA-256 digests of "account:<tenant>:<e-mail>" or "address:<ip>": no personal
        // value is stored in clear.
        manager
            .create_table(
                Table::create()
                    .table("auth_throttle")
                    .col(string_len("key", 64).primary_key())
                    .col(integer("failures"))
                    .col(ts("window_started_at"))
                    .col(ts_null("locked_until"))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("companies")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(string_len("name", 200))
                    .col(string_len_null("domain", 253))
                    .col(string_len_null("phone", 32))
                    .col(string_len_null("industry", 100))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .col(integer("version"))
                    .index(&mut tenant_key("companies"))
                    .foreign_key(&mut tenant_fk("companies"))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("contacts")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(uuid_null("company_id"))
                    .col(string_len_null("first_name", 100))
                    .col(string_len_null("last_name", 100))
                    .col(string_len_null("email", 254))
                    .col(string_len_null("phone", 32))
                    .col(string_len_null("job_title", 100))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .col(integer("version"))
                    .index(&mut tenant_key("contacts"))
                    .index(&mut index(
                        "contacts",
                        "email",
                        &["tenant_id", "email"],
                        true,
                    ))
                    .foreign_key(&mut tenant_fk("contacts"))
                    .foreign_key(&mut composite_fk(
                        "contacts",
                        "company_id",
                        "companies",
                        ForeignKeyAction::NoAction,
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("orders")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(uuid_null("contact_id"))
                    .col(uuid_null("company_id"))
                    .col(string_len("status", 16))
                    .col(char_len("currency", 3))
                    .col(big_integer("total_minor"))
                    .col(ts_null("placed_at"))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .col(integer("version"))
                    .index(&mut tenant_key("orders"))
                    .foreign_key(&mut tenant_fk("orders"))
                    .foreign_key(&mut composite_fk(
                        "orders",
                        "contact_id",
                        "contacts",
                        ForeignKeyAction::NoAction,
                    ))
                    .foreign_key(&mut composite_fk(
                        "orders",
                        "company_id",
                        "companies",
                        ForeignKeyAction::NoAction,
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("order_lines")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(uuid("order_id"))
                    .col(integer("position"))
                    .col(string_len_null("sku", 64))
                    .col(string_len("description", 500))
                    .col(big_integer("quantity"))
                    .col(big_integer("unit_price_minor"))
                    .col(big_integer("line_total_minor"))
                    .index(&mut index(
                        "order_lines",
                        "position",
                        &["tenant_id", "order_id", "position"],
                        true,
                    ))
                    .foreign_key(&mut composite_fk(
                        "order_lines",
                        "order_id",
                        "orders",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;

        for (table, name, cols) in [
            ("sessions", "user", &["tenant_id", "user_id"][..]),
            (
                "refresh_tokens",
                "session",
                &["tenant_id", "session_id"][..],
            ),
            ("contacts", "company", &["tenant_id", "company_id"][..]),
            ("contacts", "updated", &["tenant_id", "updated_at"][..]),
            ("orders", "contact", &["tenant_id", "contact_id"][..]),
            ("orders", "company", &["tenant_id", "company_id"][..]),
            ("orders", "status", &["tenant_id", "status"][..]),
            ("orders", "placed", &["tenant_id", "placed_at"][..]),
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
        Ok(())
    }
}
