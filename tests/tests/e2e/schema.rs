//! Migrations go up, down and up again to the same schema, on both databases.

use crm_e2e::{Backend, TestDb};
use crm_migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

async fn schema(db: &DatabaseConnection, backend: Backend) -> Vec<String> {
    let sql = match backend {
        Backend::Sqlite => {
            "SELECT type || ' ' || name || ' ' || coalesce(sql, '') AS d FROM sqlite_master \
                            WHERE name NOT LIKE 'sqlite_%' AND name <> 'seaql_migrations' ORDER BY name"
        }
        Backend::Postgres => {
            "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable AS d \
                              FROM information_schema.columns WHERE table_schema = 'public' \
                              AND table_name <> 'seaql_migrations' \
                              UNION ALL SELECT 'index ' || indexname || ' ' || indexdef FROM pg_indexes \
                              WHERE schemaname = 'public' AND tablename <> 'seaql_migrations' \
                              UNION ALL SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid) \
                              FROM pg_constraint WHERE connamespace = 'public'::regnamespace \
                              AND conname NOT LIKE 'seaql%' ORDER BY 1"
        }
    };
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get::<String>("", "d").unwrap())
        .collect()
}

async fn round_trip(backend: Backend) {
    let test_db = TestDb::create(backend).await;
    let db = crm_domain::db::connect(&test_db.url).await.unwrap();
    Migrator::up(&db, None).await.unwrap();
    let first = schema(&db, backend).await;
    assert!(first.iter().any(|d| d.contains("contacts")), "{first:?}");
    Migrator::down(&db, None).await.unwrap();
    assert!(
        schema(&db, backend).await.is_empty(),
        "down removes every table"
    );
    Migrator::up(&db, None).await.unwrap();
    assert_eq!(
        schema(&db, backend).await,
        first,
        "up after down gives the same schema"
    );
    db.close().await.ok();
    test_db.drop_database().await;
}

#[tokio::test]
async fn migrations_round_trip_sqlite() {
    round_trip(Backend::Sqlite).await;
}

#[tokio::test]
async fn migrations_round_trip_postgres() {
    round_trip(Backend::Postgres).await;
}

/// How the database would run `statement` (PostgreSQL with sequential scans priced out, so
/// the plan shows whether an index can serve it at all on a small table).
async fn plan(db: &DatabaseConnection, statement: Statement) -> String {
    let backend = db.get_database_backend();
    let (prefix, column) = match backend {
        sea_orm::DbBackend::Sqlite => ("EXPLAIN QUERY PLAN ", 3),
        _ => ("EXPLAIN ", 0),
    };
    if backend == sea_orm::DbBackend::Postgres {
        db.execute_unprepared("SET enable_seqscan = off")
            .await
            .unwrap();
    }
    let explained = Statement::from_sql_and_values(
        backend,
        format!("{prefix}{}", statement.sql),
        statement.values.map(|v| v.0).unwrap_or_default(),
    );
    db.query_all_raw(explained)
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get_by_index::<String>(column).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A node's start looks for contacts still in the clear through the partial index made for
/// them, not by reading every contact: the first batch and a batch after a cursor.
async fn contacts_in_clear_are_read_by_index(backend: Backend) {
    use sea_orm::QueryTrait;
    let test_db = TestDb::create(backend).await;
    // One connection: PostgreSQL's `SET` applies to the session the plans run on.
    let db = sea_orm::Database::connect(
        sea_orm::ConnectOptions::new(test_db.url.clone())
            .max_connections(1)
            .to_owned(),
    )
    .await
    .unwrap();
    Migrator::up(&db, None).await.unwrap();
    let db_backend = db.get_database_backend();
    for after in [None, Some(uuid::Uuid::now_v7())] {
        let statement = crm_domain::sealing::contacts_in_clear(after).build(db_backend);
        let plan = plan(&db, statement).await;
        assert!(
            plan.contains("ix_contacts_in_clear"),
            "after {after:?}: {plan}"
        );
    }
    db.close().await.ok();
    test_db.drop_database().await;
}

#[tokio::test]
async fn contacts_in_clear_are_read_by_index_sqlite() {
    contacts_in_clear_are_read_by_index(Backend::Sqlite).await;
}

#[tokio::test]
async fn contacts_in_clear_are_read_by_index_postgres() {
    contacts_in_clear_are_read_by_index(Backend::Postgres).await;
}
