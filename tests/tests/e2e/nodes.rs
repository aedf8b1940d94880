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
