//! A pooled connection goes back to the pool clean: what a dropped transaction or an abandoned
//! query left pending is completed before the next user gets the connection (the vendored
//! `sqlx-core` completes it on release instead of pinging the database each time).

use std::time::Duration;

use crm_e2e::{Backend, TestDb};
use sea_orm::sqlx::{self, Connection as _, Row as _};

/// A pool of one connection, so the next acquire gets the connection just released.
async fn postgres_pool(db: &TestDb) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_dropped_transaction_is_rolled_back_before_its_connection_is_reused_postgres() {
    let db = TestDb::create(Backend::Postgres).await;
    let pool = postgres_pool(&db).await;
    sqlx::query("CREATE TABLE t (n int NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut *tx)
            .await
            .unwrap();
        // Dropped without commit or rollback.
    }
    let mut conn = pool.acquire().await.unwrap();
    let row = sqlx::query(
        "SELECT count(*) AS n, pg_current_xact_id_if_assigned() IS NULL AS outside FROM t",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(row.get::<i64, _>("n"), 0, "the insert was rolled back");
    assert!(
        row.get::<bool, _>("outside"),
        "not inside the old transaction"
    );
    drop(conn);
    pool.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn an_abandoned_query_does_not_answer_the_next_one_postgres() {
    let db = TestDb::create(Backend::Postgres).await;
    let pool = postgres_pool(&db).await;
    let slow = sqlx::query("SELECT 1 AS n FROM pg_sleep(0.3)").fetch_one(&pool);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), slow)
            .await
            .is_err(),
        "abandoned before its answer"
    );
    let started = std::time::Instant::now();
    let row = sqlx::query("SELECT 2 AS n").fetch_one(&pool).await.unwrap();
    assert_eq!(row.get::<i32, _>("n"), 2, "its own answer");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The connection is the same one, and still usable in a transaction.
    let mut tx = pool.begin().await.unwrap();
    let row = sqlx::query("SELECT 3 AS n")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(row.get::<i32, _>("n"), 3);
    tx.commit().await.unwrap();
    pool.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_dropped_transaction_is_rolled_back_before_its_connection_is_reused_sqlite() {
    let db = TestDb::create(Backend::Sqlite).await;
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (n INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let mut conn = pool.acquire().await.unwrap();
    let n: i64 = sqlx::query("SELECT count(*) FROM t")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the insert was rolled back");
    // Not inside the old transaction: a new one can begin on this connection.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO t VALUES (2)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    drop(conn);
    let n: i64 = sqlx::query("SELECT count(*) FROM t")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    pool.close().await;
    db.drop_database().await;
}
