//! Several nodes on one database: periodic jobs are claimed by one node per interval.

use chrono::Duration;
use crm_domain::clock::Clock;
use crm_e2e::{both, open_db};

both!(periodic_job_is_claimed_by_one_node_per_interval, |app| {
    // Four "nodes", each with its own connection pool, tick at the same instant.
    let mut nodes = Vec::new();
    for _ in 0..4 {
        nodes.push(open_db(&app).await);
    }
    let every = Duration::minutes(60);
    let claims = |now| {
        let nodes = nodes.clone();
        async move {
            let mut tasks = Vec::new();
            for db in nodes {
                tasks.push(tokio::spawn(async move {
                    crm_domain::jobs::claim_run(&db, "retention", every, now)
                        .await
                        .expect("claim answers")
                }));
            }
            let mut won = 0;
            for t in tasks {
                if t.await.unwrap() {
                    won += 1;
                }
            }
            won
        }
    };
    let start = app.clock.now();
    assert_eq!(
        claims(start).await,
        1,
        "the first tick: exactly one node runs"
    );
    assert_eq!(
        claims(start + Duration::minutes(59)).await,
        0,
        "before the interval has passed nobody runs"
    );
    assert_eq!(
        claims(start + Duration::minutes(60)).await,
        1,
        "the next interval: exactly one node runs again"
    );
    for db in nodes {
        db.close().await.ok();
    }
});

/// On PostgreSQL each request worker has its own pool (`crm-worker` connections), so a
/// connection is polled by the thread that uses it; the pool that started the node (`crm`)
/// runs only start-up and background work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_on_the_workers_own_pools() {
    use sea_orm::{ConnectionTrait, Statement};
    crm_e2e::run_with(
        crm_e2e::Backend::Postgres,
        |s| s.workers = 2,
        |app| async move {
            let s = app.new_tenant().await;
            let created = app
                .post(
                    "/v1/contacts",
                    &s.access,
                    &serde_json::json!({"email": "pool@example.com"}),
                )
                .await;
            assert_eq!(created.status(), 201);
            let id = created.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
            for _ in 0..4 {
                let got = app.get(&format!("/v1/contacts/{id}"), &s.access).await;
                assert_eq!(got.status(), 200);
            }
            let db = open_db(&app).await;
            let rows = db
                .query_all_raw(Statement::from_string(
                    db.get_database_backend(),
                    "SELECT application_name, query FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                ))
                .await
                .unwrap();
            let seen: Vec<(String, String)> = rows
                .iter()
                .map(|r| {
                    (
                        r.try_get_by_index(0).unwrap(),
                        r.try_get_by_index(1).unwrap(),
                    )
                })
                .collect();
            let reads_contact = |q: &str| {
                q.starts_with("SELECT id, tenant_id, company_id")
                    && q.contains("FROM contacts WHERE tenant_id = $1 AND id = $2")
            };
            assert!(
                seen.iter()
                    .any(|(name, q)| name == "crm-worker" && reads_contact(q)),
                "a worker's own connection read the contact: {seen:?}"
            );
            assert!(
                seen.iter().any(|(name, _)| name == "crm"),
                "the start-up pool is still open: {seen:?}"
            );
            assert!(
                !seen
                    .iter()
                    .any(|(name, q)| name == "crm" && reads_contact(q)),
                "no request ran on the start-up pool: {seen:?}"
            );
            db.close().await.ok();
        },
    )
    .await;
}
