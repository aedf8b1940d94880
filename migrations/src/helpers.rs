//! Column and key helpers shared by the migrations. They only build statements; a migration
//! keeps describing the schema as it was when it was written.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub fn ts(name: &'static str) -> ColumnDef {
    timestamp_with_time_zone(name)
}

pub fn ts_null(name: &'static str) -> ColumnDef {
    timestamp_with_time_zone_null(name)
}

/// The unique key `(tenant_id, id)` that composite references point at.
pub fn tenant_key(table: &'static str) -> IndexCreateStatement {
    Index::create()
        .name(format!("uq_{table}_tenant_id"))
        .table(table)
        .col("tenant_id")
        .col("id")
        .unique()
        .to_owned()
}

pub fn tenant_fk(table: &'static str) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(format!("fk_{table}_tenant"))
        .from(table, "tenant_id")
        .to("tenants", "id")
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

/// A composite reference `(tenant_id, column)` → `parent(tenant_id, id)`.
pub fn composite_fk(
    table: &'static str,
    column: &'static str,
    parent: &'static str,
    on_delete: ForeignKeyAction,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(format!("fk_{table}_{column}"))
        .from_tbl(table)
        .from_col("tenant_id")
        .from_col(column)
        .to_tbl(parent)
        .to_col("tenant_id")
        .to_col("id")
        .on_delete(on_delete)
        .to_owned()
}

pub fn index(
    table: &'static str,
    name: &str,
    cols: &[&'static str],
    unique: bool,
) -> IndexCreateStatement {
    let mut idx = Index::create();
    idx.name(format!("ix_{table}_{name}")).table(table);
    for col in cols {
        idx.col(*col);
    }
    if unique {
        idx.unique();
    }
    idx.to_owned()
}
