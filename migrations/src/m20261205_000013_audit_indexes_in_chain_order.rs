//! The audit trail is listed in chain order (`seq`), and its filters have indexes that give
//! that order: `(tenant_id, object_id, seq)` replaces `(tenant_id, object_id)`, and
//! `(tenant_id, action, seq)` is new.
//!
//! Before, a list filtered by object or by action had no index that matched both its filter
//! and its order. The planner chose between reading every matching entry and sorting them,
//! and walking the log in order while filtering. With statistics taken while the log was
//! small, SQLite walked the whole log: ~55 ms for a page about one object on a log of 400,000
//! entries, and the same walk in every export, which reads the subject's entries in chain
//! order. With the order in the index, a page is a range read whatever the statistics say.
//!
//! The new index is created before the old one is dropped, under a new name: there is always
//! an index on the object, and no step depends on another pool connection having seen the
//! drop (SQLite runs migrations on the pool, outside a transaction).
//!
//! On PostgreSQL the migration runs in one transaction with plain `CREATE INDEX`: writes to
//! `audit_events` (every change writes one) wait until both indexes are built over the whole
//! log. On a large log, run it in a maintenance window.

use sea_orm_migration::prelude::*;

use crate::helpers::index;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261205_000013_audit_indexes_in_chain_order"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(index(
                "audit_events",
                "object_seq",
                &["tenant_id", "object_id", "seq"],
                false,
            ))
            .await?;
        manager
            .create_index(index(
                "audit_events",
                "action_seq",
                &["tenant_id", "action", "seq"],
                false,
            ))
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("ix_audit_events_object")
                    .table("audit_events")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(index(
                "audit_events",
                "object",
                &["tenant_id", "object_id"],
                false,
            ))
            .await?;
        for name in ["ix_audit_events_object_seq", "ix_audit_events_action_seq"] {
            manager
                .drop_index(Index::drop().name(name).table("audit_events").to_owned())
                .await?;
        }
        Ok(())
    }
}
