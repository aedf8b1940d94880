//! The outbox: signed webhooks with retries and dead letters, the partner change feed,
//! scrubbing on erasure, platform-wide events, several workers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::Duration;
use crm_e2e::{Receiver, TestApp, assert_problem, both, random_hex};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn register(app: &TestApp, token: &str, url: &str, types: Value) -> Value {
    app.create(
        "/v1/webhooks",
        token,
        json!({"url": url, "event_types": types}),
    )
    .await
}

async fn feed(app: &TestApp, token: &str, since: i64) -> Value {
    let resp = app
        .get(&format!("/v1/changes?since={since}&limit=1000"), token)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

async fn deliveries(app: &TestApp, token: &str, hook: &Value) -> Vec<Value> {
    let path = format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap());
    let body: Value = app.get(&path, token).await.json().await.unwrap();
    body["data"].as_array().unwrap().clone()
}

both!(webhooks_are_signed_retried_and_dead_lettered, |app| {
    let admin = app.new_tenant().await;
    let other = app.new_tenant().await;
    let ok = Receiver::start(204).await;
    let broken = Receiver::start(500).await;

    // Bad registrations: private address, scheme, unknown event type.
    let problem = assert_problem(
        app.post(
            "/v1/webhooks",
            &admin.access,
            &json!({"url": "http://10.1.2.3/hook", "event_types": ["*"]}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["code"], "url_not_allowed");
    let problem = assert_problem(
        app.post(
            "/v1/webhooks",
            &admin.access,
            &json!({"url": "ftp://hooks.example.com/", "event_types": ["contact.created", "nope"]}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/url", "/event_types/1"]);

    let hook = register(
        &app,
        &admin.access,
        &ok.url,
        json!(["contact.created", "consent.withdrawn"]),
    )
    .await;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let listed: Value = app
        .get("/v1/webhooks", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        listed["data"][0].get("secret").is_none(),
        "the secret is shown once"
    );
    let dead_hook = register(&app, &admin.access, &broken.url, json!(["*"])).await;

    // Another tenant sees none of it.
    let hook_path = format!("/v1/webhooks/{}", hook["id"].as_str().unwrap());
    assert_problem(
        app.delete(&hook_path, &other.access).await,
        404,
        "webhook_not_found",
    )
    .await;
    assert_problem(
        app.get(&format!("{hook_path}/deliveries"), &other.access)
            .await,
        404,
        "webhook_not_found",
    )
    .await;
    let member = app.new_user(&admin, "member").await;
    assert_problem(
        app.get("/v1/webhooks", &member.access).await,
        403,
        "forbidden",
    )
    .await;

    // A change is delivered, signed.
    let contact = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"first_name": "Ada", "email": "ada@example.com"}),
        )
        .await;
    let got = ok.wait_for(1).await;
    let r = &got[0];
    assert!(
        r.signature_valid(&secret),
        "signature verifies: {:?}",
        r.headers
    );
    assert!(!r.signature_valid("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));
    let body = r.json();
    assert_eq!(body["type"], "contact.created");
    assert_eq!(body["data"]["object"]["email"], "ada@example.com");
    assert_eq!(body["data"]["object_id"], contact["id"]);
    let ts: i64 = r.headers["webhook-timestamp"].parse().unwrap();
    assert!((ts - crm_domain::clock::Clock::now(&*app.clock).timestamp()).abs() < 5);

    // Another tenant's change never reaches this tenant's receiver.
    app.create("/v1/contacts", &other.access, json!({"first_name": "Zed"}))
        .await;
    // An event whose transaction rolled back does not exist: a duplicate e-mail is refused.
    let before = feed(&app, &admin.access, 0).await["data"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        app.post(
            "/v1/contacts",
            &admin.access,
            &json!({"email": "ada@example.com"})
        )
        .await
        .status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        feed(&app, &admin.access, 0).await["data"]
            .as_array()
            .unwrap()
            .len(),
        before
    );

    // The broken receiver: tried, retried with backoff, then dead-lettered.
    broken.wait_for(1).await;
    for _ in 0..2 {
        app.clock.advance(Duration::seconds(10));
        let n = broken.received().len();
        broken.wait_for(n + 1).await;
    }
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = deliveries(&app, &admin.access, &dead_hook).await;
        if dead.iter().all(|d| d["status"] == "dead") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["status"], "dead");
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["last_status"], 500);
    // No more tries however long we wait.
    app.clock.advance(Duration::hours(2));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(broken.received().len(), 3);
    // Redelivery on request (signed in again: the clock moved past the token's life).
    let admin = app
        .session(&admin.tenant, &admin.email, &admin.password)
        .await;
    let other = app
        .session(&other.tenant, &other.email, &other.password)
        .await;
    let redo = app
        .post(
            &format!(
                "/v1/webhook-deliveries/{}/redeliver",
                dead[0]["id"].as_str().unwrap()
            ),
            &admin.access,
            &json!({}),
        )
        .await;
    assert_eq!(redo.status(), StatusCode::ACCEPTED);
    broken.wait_for(4).await;
    assert_problem(
        app.post(
            &format!(
                "/v1/webhook-deliveries/{}/redeliver",
                dead[0]["id"].as_str().unwrap()
            ),
            &other.access,
            &json!({}),
        )
        .await,
        404,
        "delivery_not_found",
    )
    .await;

    // The good receiver got exactly one request: this tenant's only subscribed event.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(ok.received().len(), 1);
    let delivered = deliveries(&app, &admin.access, &hook).await;
    assert_eq!(delivered[0]["status"], "delivered");
    assert_eq!(delivered[0]["last_status"], 204);
    ok.stop().await;
    broken.stop().await;
});

both!(
    the_change_feed_mirrors_a_tenant_under_concurrent_writes,
    |app| {
        let admin = app.new_tenant().await;
        // A partner with the feed scope mirrors; one without it is refused.
        let client = app
            .create(
                "/v1/integration-clients",
                &admin.access,
                json!({"name": "Mirror", "scopes": ["changes:read"]}),
            )
            .await;
        let token: Value = app
            .client
            .post(app.url("/v1/oauth/token"))
            .basic_auth(
                client["client_id"].as_str().unwrap(),
                client["client_secret"].as_str(),
            )
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let partner = token["access_token"].as_str().unwrap().to_owned();
        let viewer = app.new_user(&admin, "viewer").await;
        assert_eq!(
            app.get("/v1/changes", &viewer.access).await.status(),
            StatusCode::OK
        );
        let narrow = app
            .create(
                "/v1/integration-clients",
                &admin.access,
                json!({"name": "Narrow", "scopes": ["contacts:read"]}),
            )
            .await;
        let narrow_token: Value = app
            .client
            .post(app.url("/v1/oauth/token"))
            .basic_auth(
                narrow["client_id"].as_str().unwrap(),
                narrow["client_secret"].as_str(),
            )
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_problem(
            app.get(
                "/v1/changes",
                narrow_token["access_token"].as_str().unwrap(),
            )
            .await,
            403,
            "insufficient_scope",
        )
        .await;
        assert_problem(
            app.get("/v1/changes?since=-1", &partner).await,
            422,
            "validation_failed",
        )
        .await;

        // Writers create, change and delete contacts while the partner reads the feed.
        let mut writers = Vec::new();
        for w in 0..4 {
            let app = app.clone();
            let token = admin.access.clone();
            writers.push(tokio::spawn(async move {
            for i in 0..8 {
                let c = app
                    .create(
                        "/v1/contacts",
                        &token,
                        json!({"first_name": format!("W{w}-{i}"), "email": format!("w{w}-{i}-{}@example.com", random_hex(4))}),
                    )
                    .await;
                let path = format!("/v1/contacts/{}", c["id"].as_str().unwrap());
                let resp = app.patch(&path, &token, &json!({"job_title": "changed"})).await;
                assert_eq!(resp.status(), StatusCode::OK);
                if i % 3 == 0 {
                    assert_eq!(app.delete(&path, &token).await.status(), StatusCode::NO_CONTENT);
                }
            }
        }));
        }
        let mut mirror: BTreeMap<String, Value> = BTreeMap::new();
        let mut seen: Vec<i64> = Vec::new();
        let mut since = 0;
        let apply = |page: &Value, mirror: &mut BTreeMap<String, Value>, seen: &mut Vec<i64>| {
            for e in page["data"].as_array().unwrap() {
                seen.push(e["seq"].as_i64().unwrap());
                let id = e["object_id"].as_str().unwrap().to_owned();
                match e["type"].as_str().unwrap() {
                    "contact.created" | "contact.updated" => {
                        mirror.insert(id, e["data"].clone());
                    }
                    "contact.deleted" | "contact.erased" => {
                        mirror.remove(&id);
                    }
                    _ => {}
                }
            }
            page["next_since"].as_i64().unwrap()
        };
        loop {
            let done = writers.iter().all(|w| w.is_finished());
            let page = feed(&app, &partner, since).await;
            since = apply(&page, &mut mirror, &mut seen);
            if done && page["data"].as_array().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for w in writers {
            w.await.unwrap();
        }
        let page = feed(&app, &partner, since).await;
        apply(&page, &mut mirror, &mut seen);
        // Every event once, in order, no gaps.
        let expected: Vec<i64> = (1..=seen.len() as i64).collect();
        assert_eq!(seen, expected);
        // The mirror equals the tenant's contacts.
        let list: Value = app
            .get("/v1/contacts?limit=200", &admin.access)
            .await
            .json()
            .await
            .unwrap();
        let actual: BTreeMap<String, Value> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["id"].as_str().unwrap().to_owned(), c.clone()))
            .collect();
        assert_eq!(mirror.len(), 4 * 8 - 4 * 3);
        assert_eq!(
            mirror.keys().collect::<Vec<_>>(),
            actual.keys().collect::<Vec<_>>()
        );
        for (id, c) in &actual {
            for field in ["first_name", "email", "job_title", "version"] {
                assert_eq!(mirror[id][field], c[field], "{id} {field}");
            }
        }
    }
);

both!(erasure_scrubs_events_and_tombstones_carry_ids_only, |app| {
    let admin = app.new_tenant().await;
    let admin = app.stepped_up(&admin).await;
    // A receiver that is down keeps the event queued.
    let down = Receiver::start(503).await;
    register(&app, &admin.access, &down.url, json!(["*"])).await;
    let email = format!("gone-{}@example.com", random_hex(6));
    let c = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"first_name": "Gone", "email": email}),
        )
        .await;
    let id = c["id"].as_str().unwrap();
    let before = feed(&app, &admin.access, 0).await;
    assert!(before.to_string().contains(&email));
    let erase = app
        .post(
            &format!("/v1/contacts/{id}/erase"),
            &admin.access,
            &json!({}),
        )
        .await;
    assert_eq!(erase.status(), StatusCode::OK);
    let after = feed(&app, &admin.access, 0).await;
    assert!(!after.to_string().contains(&email), "{after}");
    let events = after["data"].as_array().unwrap();
    assert_eq!(events.last().unwrap()["type"], "contact.erased");
    assert_eq!(events.last().unwrap()["data"], json!({"id": id}));
    // What the worker sends from now on holds no personal data either.
    let n = down.received().len();
    app.clock.advance(Duration::seconds(10));
    let got = down.wait_for(n + 1).await;
    assert!(!got.last().unwrap().body.contains(&email));
    down.stop().await;
});

// Contact events are stored sealed with the contact's data key: while the contact exists the
// feed shows them whole; once it is deleted its earlier events show ids only.
both!(a_deleted_contacts_earlier_events_keep_ids_only, |app| {
    let admin = app.new_tenant().await;
    let email = format!("deleted-{}@example.com", random_hex(6));
    let c = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"first_name": "Dora", "email": email}),
        )
        .await;
    let id = c["id"].as_str().unwrap();
    let before = feed(&app, &admin.access, 0).await;
    let created = &before["data"][0];
    assert_eq!(created["type"], "contact.created");
    assert_eq!(created["data"]["email"], email.as_str());
    assert_eq!(created["data"]["first_name"], "Dora");
    assert_eq!(
        app.delete(&format!("/v1/contacts/{id}"), &admin.access)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let after = feed(&app, &admin.access, 0).await;
    let events = after["data"].as_array().unwrap();
    assert_eq!(events[0]["data"], json!({"id": id, "deleted": true}));
    assert_eq!(events.last().unwrap()["type"], "contact.deleted");
    assert_eq!(events.last().unwrap()["data"], json!({"id": id}));
    assert!(!after.to_string().contains(&email), "{after}");
});

both!(sub_processor_changes_reach_every_tenant, |app| {
    let a = app.new_tenant().await;
    let b = app.new_tenant().await;
    let platform = app.platform_admin().await;
    let sp = app
        .create(
            "/v1/sub-processors",
            &platform.access,
            json!({"name": "MailCo", "purpose": "e-mail delivery", "data_categories": ["contact details"], "location": "EU", "transfer_safeguards": "none needed", "since": "2026-01-01T00:00:00Z"}),
        )
        .await;
    for s in [&a, &b] {
        let page = feed(&app, &s.access, 0).await;
        let e = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "sub_processor.changed")
            .cloned()
            .unwrap();
        assert_eq!(e["object_id"], sp["id"]);
        assert_eq!(e["data"]["change"], "added");
    }
});

// Two workers against one database deliver each event exactly once.
both!(two_workers_deliver_each_event_once, |app| {
    let admin = app.new_tenant().await;
    let receiver = Receiver::start(200).await;
    let hook = register(
        &app,
        &admin.access,
        &receiver.url,
        json!(["contact.created"]),
    )
    .await;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    for i in 0..30 {
        app.create(
            "/v1/contacts",
            &admin.access,
            json!({"first_name": format!("N{i}")}),
        )
        .await;
    }
    // Two more workers beside the server's own, on the same database.
    let mut extra = Vec::new();
    for _ in 0..2 {
        let worker = crm_api::worker::Worker {
            db: crm_e2e::open_db(&app).await,
            secret_box: Arc::new(crm_api::keys::SecretBox::load(&app.key_dir, false).unwrap()),
            vault: Arc::new(crm_api::keys::load_vault(&app.key_dir, false).unwrap()),
            settings: app.settings.clone(),
            clock: app.clock.clone(),
        };
        extra.push(tokio::spawn(async move {
            for _ in 0..40 {
                worker.run_once().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }));
    }
    for w in extra {
        w.await.unwrap();
    }
    let got = receiver.wait_for(30).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let got = if receiver.received().len() > got.len() {
        receiver.received()
    } else {
        got
    };
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in &got {
        assert!(r.signature_valid(&secret));
        *per_id.entry(r.headers["webhook-id"].clone()).or_default() += 1;
    }
    assert_eq!(per_id.len(), 30);
    assert!(per_id.values().all(|n| *n == 1), "{per_id:?}");
    receiver.stop().await;
});
