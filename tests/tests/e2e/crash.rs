//! Crash safety: the real `crm serve` process is killed with SIGKILL in the middle of a stream
//! of writes, a bulk upsert, an import and an erasure, then started again on the same
//! database. Every acknowledged write must be there, no batch or erasure may be half done, the
//! import must finish exactly once, and the outbox must deliver every committed event.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use crm_e2e::{Backend, Receiver, TestApp};
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};

const IMPORT_ROWS: usize = 3000;
const BATCH_ITEMS: usize = 1000;

async fn all_emails(app: &TestApp, token: &str) -> Vec<String> {
    let mut emails = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/contacts?limit=200&cursor={c}"),
            None => "/v1/contacts?limit=200".to_owned(),
        };
        let resp = app.get(&path, token).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let page: Value = resp.json().await.unwrap();
        for c in page["data"].as_array().unwrap() {
            if let Some(e) = c["email"].as_str() {
                emails.push(e.to_owned());
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return emails,
        }
    }
}

async fn orders_of(app: &TestApp, token: &str, contact: &str) -> usize {
    let resp = app
        .get(&format!("/v1/orders?contact_id={contact}&limit=200"), token)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let page: Value = resp.json().await.unwrap();
    page["data"].as_array().unwrap().len()
}

async fn killed_mid_write(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let s = app.new_tenant().await;
    let s = app.stepped_up(&s).await;
    let receiver = Receiver::start(204).await;
    app.create(
        "/v1/webhooks",
        &s.access,
        json!({"url": receiver.url, "event_types": ["contact.created"]}),
    )
    .await;
    // The person to erase, with three draft orders (deleted by an erasure).
    let person = app
        .create(
            "/v1/contacts",
            &s.access,
            json!({"email": "erase-me@crash.example", "first_name": "Erase"}),
        )
        .await;
    let person_id = person["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        app.create(
            "/v1/orders",
            &s.access,
            json!({"contact_id": person_id, "currency": "EUR", "lines": [{"description": "Map", "quantity": 1, "unit_price_minor": 500}]}),
        )
        .await;
    }

    // Hand the database to a separate process and drive it.
    app.stop_server().await;
    let process = app.start_process().await;
    app.base = process.base.clone();
    let app = Arc::new(app);

    let mut csv = String::from("first_name,email\n");
    for i in 0..IMPORT_ROWS {
        csv.push_str(&format!("I{i},i{i}@import.crash.example\n"));
    }
    let resp = app
        .client
        .post(app.url("/v1/contacts/imports"))
        .bearer_auth(&s.access)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let import = resp.headers()["location"].to_str().unwrap().to_owned();

    // A stream of single writes; the ids the server acknowledged are kept.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let writer = {
        let (app, token, acked) = (app.clone(), s.access.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let body = json!({"email": format!("w{i}@stream.crash.example")});
                let Ok(resp) = app
                    .client
                    .post(app.url("/v1/contacts"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                if resp.status() != StatusCode::CREATED {
                    return;
                }
                let Ok(c) = resp.json::<Value>().await else {
                    return;
                };
                acked
                    .lock()
                    .unwrap()
                    .push(c["id"].as_str().unwrap().to_owned());
            }
        })
    };
    let batch = {
        let (app, token) = (app.clone(), s.access.clone());
        tokio::spawn(async move {
            let items: Vec<Value> = (0..BATCH_ITEMS)
                .map(|i| json!({"email": format!("b{i}@batch.crash.example")}))
                .collect();
            app.client
                .post(app.url("/v1/contacts/batch"))
                .bearer_auth(&token)
                .json(&json!({"items": items}))
                .send()
                .await
                .map(|r| r.status())
                .ok()
        })
    };
    let erase = {
        let (app, token, id) = (app.clone(), s.access.clone(), person_id.clone());
        tokio::spawn(async move {
            app.client
                .post(app.url(&format!("/v1/contacts/{id}/erase")))
                .bearer_auth(&token)
                .json(&json!({}))
                .send()
                .await
                .map(|r| r.status())
                .ok()
        })
    };

    let delay = rand::thread_rng().gen_range(50..400);
    tokio::time::sleep(StdDuration::from_millis(delay)).await;
    process.kill().await;
    writer.await.unwrap();
    let batch_status = batch.await.unwrap();
    let erase_status = erase.await.unwrap();
    let acked = acked.lock().unwrap().clone();

    // Start again on the same database.
    let process = app.start_process().await;
    let mut app = Arc::try_unwrap(app)
        .ok()
        .expect("no other users of the app");
    app.base = process.base.clone();

    // Every acknowledged write is there.
    let emails: HashSet<String> = all_emails(&app, &s.access).await.into_iter().collect();
    for id in &acked {
        let resp = app.get(&format!("/v1/contacts/{id}"), &s.access).await;
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "acknowledged contact {id} lost"
        );
    }
    // The batch is all or nothing.
    let batch_rows = emails
        .iter()
        .filter(|e| e.ends_with("@batch.crash.example"))
        .count();
    assert!(
        batch_rows == 0 || batch_rows == BATCH_ITEMS,
        "half a batch is visible: {batch_rows} rows"
    );
    if batch_status == Some(StatusCode::OK) {
        assert_eq!(batch_rows, BATCH_ITEMS, "an acknowledged batch was lost");
    }
    // The erasure is all or nothing.
    let contact = app
        .get(&format!("/v1/contacts/{person_id}"), &s.access)
        .await
        .status();
    let orders = orders_of(&app, &s.access, &person_id).await;
    match contact {
        StatusCode::NOT_FOUND => assert_eq!(orders, 0, "erased contact kept its orders"),
        StatusCode::OK => {
            assert_eq!(orders, 3, "a half-done erasure");
            assert_ne!(
                erase_status,
                Some(StatusCode::OK),
                "an acknowledged erasure was lost"
            );
        }
        other => panic!("contact answered {other}"),
    }
    // The import resumes after its last committed chunk and applies every row exactly once.
    let mut job = Value::Null;
    for _ in 0..600 {
        job = app.get(&import, &s.access).await.json().await.unwrap();
        if job["status"] == "done" {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["processed"], IMPORT_ROWS);
    assert_eq!(job["failed"], 0, "{job}");
    let emails = all_emails(&app, &s.access).await;
    let imported: Vec<_> = emails
        .iter()
        .filter(|e| e.ends_with("@import.crash.example"))
        .collect();
    assert_eq!(imported.len(), IMPORT_ROWS);
    assert_eq!(
        imported.iter().collect::<HashSet<_>>().len(),
        IMPORT_ROWS,
        "an imported row was applied twice"
    );
    // The outbox delivers what was committed: every acknowledged contact's event arrives. A
    // delivery the killed process had claimed is sent once its claim's lease (60 s) ends, so
    // allow for that.
    let mut delivered = HashSet::new();
    for _ in 0..1600 {
        delivered = receiver
            .received()
            .iter()
            .map(|r| {
                r.json()["data"]["object_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        if acked.iter().all(|id| delivered.contains(id)) {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    let missing: Vec<_> = acked.iter().filter(|id| !delivered.contains(*id)).collect();
    assert!(missing.is_empty(), "events never delivered: {missing:?}");

    process.kill().await;
    receiver.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_write_sqlite() {
    killed_mid_write(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_write_postgres() {
    killed_mid_write(Backend::Postgres).await;
}
