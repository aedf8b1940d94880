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
