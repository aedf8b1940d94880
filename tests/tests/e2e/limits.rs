//! Idempotency keys and rate limits, on one node and across two.

use std::time::Duration as StdDuration;

use chrono::Duration;
use crm_domain::clock::Clock;
use crm_domain::idempotency::{self, Begin, Scope};
use crm_e2e::{TestApp, assert_problem, both, claims_of, open_db};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

async fn post_with_key(
    app: &TestApp,
    base: &str,
    path: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> Response {
    app.client
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn contact_count(app: &TestApp, token: &str) -> usize {
    let resp = app.get("/v1/contacts?limit=200", token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let page: Value = resp.json().await.unwrap();
    page["data"].as_array().unwrap().len()
}

both!(idempotency_key_replays_the_first_response, |app| {
    let s = app.new_tenant().await;
    let body = json!({"email": "ada@example.org", "first_name": "Ada"});
    let first = post_with_key(
        &app,
        &app.base,
        "/v1/contacts",
        &s.access,
        "create-ada-1",
        &body,
    )
    .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers().get("location").cloned();
    let first: Value = first.json().await.unwrap();

    // The retry gets the same answer and creates nothing.
    let again = post_with_key(
        &app,
        &app.base,
        "/v1/contacts",
        &s.access,
        "create-ada-1",
        &body,
    )
    .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.headers().get("location").cloned(), location);
    assert_eq!(
        again.headers().get("content-type").unwrap(),
        "application/json"
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first);
    assert_eq!(contact_count(&app, &s.access).await, 1);

    // The same key with another body is refused and changes nothing.
    let other = json!({"email": "grace@example.org"});
    let resp = post_with_key(
        &app,
        &app.base,
        "/v1/contacts",
        &s.access,
        "create-ada-1",
        &other,
    )
    .await;
    assert_problem(resp, 422, "idempotency_key_reused").await;
    // ... and so is the same body on another route.
    let resp = post_with_key(
        &app,
        &app.base,
        "/v1/companies",
        &s.access,
        "create-ada-1",
        &json!({"name": "Ada Ltd"}),
    )
    .await;
    assert_problem(resp, 422, "idempotency_key_reused").await;
    assert_eq!(contact_count(&app, &s.access).await, 1);

    // Keys belong to their caller: another user and another tenant start afresh.
    let member = app.new_user(&s, "member").await;
    let resp = post_with_key(
        &app,
        &app.base,
        "/v1/contacts",
        &member.access,
        "create-ada-1",
        &json!({"email": "ada2@example.org"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().get("idempotent-replayed").is_none());
    let t = app.new_tenant().await;
    let resp = post_with_key(
        &app,
        &app.base,
        "/v1/contacts",
        &t.access,
        "create-ada-1",
        &body,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let theirs: Value = resp.json().await.unwrap();
    assert_ne!(
        theirs["id"], first["id"],
        "another tenant never sees the stored answer"
    );
    assert_eq!(contact_count(&app, &t.access).await, 1);
    assert_eq!(contact_count(&app, &s.access).await, 2);

    // A validation failure is an outcome too: replayed, not re-run.
    let bad = json!({"email": "not an address"});
    let resp = post_with_key(&app, &app.base, "/v1/contacts", &s.access, "bad-1", &bad).await;
    let problem = assert_problem(resp, 422, "validation_failed").await;
    let resp = post_with_key(&app, &app.base, "/v1/contacts", &s.access, "bad-1", &bad).await;
    assert_eq!(resp.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(
        assert_problem(resp, 422, "validation_failed").await,
        problem
    );

    // Malformed keys are refused before anything runs.
    for key in ["has space", &"k".repeat(256)] {
        let resp = post_with_key(&app, &app.base, "/v1/contacts", &s.access, key, &other).await;
        assert_problem(resp, 400, "invalid_idempotency_key").await;
    }
    assert_eq!(contact_count(&app, &s.access).await, 2);

    // Without a valid token the key does not matter: 401 as always.
    let resp = post_with_key(
        &app,
        &app.base,
        "/v1/contacts",
        "not-a-token",
        "create-ada-1",
        &body,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Keys expire after 24 hours: then the same key runs the request again.
    app.clock.advance(Duration::hours(25));
    let s = app.session(&s.tenant, &s.email, &s.password).await;
    let resp = post_with_key(
        &app,
        &app.base,
        "/v1/contacts",
        &s.access,
        "create-ada-1",
        &other,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().get("idempotent-replayed").is_none());
});

both!(idempotency_key_in_flight_gives_409, |app| {
    let s = app.new_tenant().await;
    let claims = claims_of(&s.access);
    let scope = Scope {
        tenant_id: Uuid::parse_str(claims["tid"].as_str().unwrap()).unwrap(),
        caller: format!("user:{}", claims["sub"].as_str().unwrap()),
        key: "slow-1".into(),
    };
    // Another node has claimed the key and is still running the request.
    let db = open_db(&app).await;
    let began = idempotency::begin(&db, &scope, "fingerprint-of-another-node", app.clock.now())
        .await
        .unwrap();
    assert!(matches!(began, Begin::Proceed));
    let body = json!({"email": "slow@example.org"});
    let resp = post_with_key(&app, &app.base, "/v1/contacts", &s.access, "slow-1", &body).await;
    assert_problem(resp, 409, "idempotency_key_in_use").await;
    assert_eq!(contact_count(&app, &s.access).await, 0);

    // A node that died mid-request leaves the key in flight; after two minutes it is taken over.
    app.clock.advance(Duration::minutes(3));
    let s = app.session(&s.tenant, &s.email, &s.password).await;
    let resp = post_with_key(&app, &app.base, "/v1/contacts", &s.access, "slow-1", &body).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(contact_count(&app, &s.access).await, 1);
    db.close().await.ok();
});

both!(concurrent_retries_on_two_nodes_create_once, |app| {
    let s = app.new_tenant().await;
    let (second, handle) = app.second_node().await;
    let body = json!({"email": "race@example.org", "last_name": "Race"});
    let mut tasks = Vec::new();
    for i in 0..8 {
        let app = app.clone();
        let base = if i % 2 == 0 {
            app.base.clone()
        } else {
            second.clone()
        };
        let token = s.access.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let resp = post_with_key(&app, &base, "/v1/contacts", &token, "race-1", &body).await;
            let status = resp.status().as_u16();
            let json: Value = resp.json().await.unwrap();
            (status, json)
        }));
    }
    let mut created = Vec::new();
    for t in tasks {
        let (status, json) = t.await.unwrap();
        match status {
            201 => created.push(json["id"].clone()),
            409 => assert_eq!(json["code"], "idempotency_key_in_use"),
            other => panic!("unexpected {other}: {json}"),
        }
    }
    assert!(!created.is_empty());
    assert!(
        created.iter().all(|id| *id == created[0]),
        "one contact, answered the same: {created:?}"
    );
    assert_eq!(contact_count(&app, &s.access).await, 1);
    handle.stop(true).await;
});

both!(erasure_forgets_stored_responses_about_the_person, |app| {
    let s = app.new_tenant().await;
    let s = app.stepped_up(&s).await;
    let body = json!({"email": "forget-me@example.org", "first_name": "Forget"});
    let resp = post_with_key(
        &app,
        &app.base,
        "/v1/contacts",
        &s.access,
        "create-forget-1",
        &body,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let contact: Value = resp.json().await.unwrap();
    let id = contact["id"].as_str().unwrap().to_owned();
    // A stored response about someone else stays.
    let resp = post_with_key(
        &app,
        &app.base,
        "/v1/contacts",
        &s.access,
        "create-other-1",
        &json!({"email": "stays@example.org"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);

    let resp = app
        .post(&format!("/v1/contacts/{id}/erase"), &s.access, &json!({}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);

    let rows = crm_e2e::dump_all_rows(&app).await;
    let stored: Vec<_> = rows
        .iter()
        .filter(|(t, _)| t == "idempotency_keys")
        .collect();
    assert_eq!(
        stored.len(),
        1,
        "only the other person's stored response is left: {stored:?}"
    );
    assert!(stored.iter().all(|(_, row)| !row.contains(&id)));

    // A retry with the erased person's key runs again (and meets the suppression list).
    let resp = post_with_key(
        &app,
        &app.base,
        "/v1/contacts",
        &s.access,
        "create-forget-1",
        &body,
    )
    .await;
    assert!(resp.headers().get("idempotent-replayed").is_none());
    assert_problem(resp, 409, "email_suppressed").await;
});

async fn get_at(app: &TestApp, base: &str, path: &str, token: Option<&str>) -> Response {
    let mut req = app.client.request(Method::GET, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

fn header(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

both!(
    api_rate_limit_per_caller,
    settings = |s: &mut crm_api::config::Settings| {
        s.rate_limit_per_minute = 10;
        s.auth_rate_limit_per_minute = 1000;
    },
    |app| {
        let s = app.new_tenant().await;
        let viewer = app.new_user(&s, "viewer").await;
        // new_tenant and new_user made requests as the platform admin and the tenant admin;
        // the viewer has made none.
        for i in 0..10u32 {
            let resp = get_at(&app, &app.base, "/v1/contacts", Some(&viewer.access)).await;
            assert_eq!(resp.status(), StatusCode::OK, "request {i}");
            assert_eq!(header(&resp, "ratelimit-policy"), "\"api\";q=10;w=60");
            let rl = header(&resp, "ratelimit");
            assert!(
                rl.starts_with(&format!("\"api\";r={};t=", 9 - i)),
                "request {i}: {rl}"
            );
        }
        let resp = get_at(&app, &app.base, "/v1/contacts", Some(&viewer.access)).await;
        let retry_after: u64 = header(&resp, "retry-after").parse().unwrap();
        assert!((1..=60).contains(&retry_after));
        assert!(header(&resp, "ratelimit").starts_with("\"api\";r=0;t="));
        assert_problem(resp, 429, "rate_limited").await;

        // Another caller has its own budget.
        let member = app.new_user(&s, "member").await;
        let resp = get_at(&app, &app.base, "/v1/contacts", Some(&member.access)).await;
        assert_eq!(resp.status(), StatusCode::OK);

        // The next window admits the viewer again.
        app.clock.advance(Duration::seconds(retry_after as i64));
        let viewer = app
            .session(&viewer.tenant, &viewer.email, &viewer.password)
            .await;
        let resp = get_at(&app, &app.base, "/v1/contacts", Some(&viewer.access)).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
);

both!(
    auth_rate_limit_per_address,
    settings = |s: &mut crm_api::config::Settings| {
        s.auth_rate_limit_per_minute = 5;
    },
    |app| {
        for i in 0..5 {
            let (status, body) = app
                .call(
                    "/v1/auth/refresh",
                    None,
                    &json!({"refresh_token": "rt_nonsense"}),
                )
                .await;
            assert_eq!(status, 401, "attempt {i}: {body}");
        }
        let resp = app
            .request(
                Method::POST,
                "/v1/auth/refresh",
                None,
                Some(&json!({"refresh_token": "rt_nonsense"})),
            )
            .await;
        assert_eq!(header(&resp, "ratelimit-policy"), "\"auth\";q=5;w=60");
        assert!(!header(&resp, "retry-after").is_empty());
        assert_problem(resp, 429, "rate_limited").await;
        // Sign-in is refused too; the API itself is not limited by address here.
        let resp = app.login("anything", "a@b.example", "whatever").await;
        assert_problem(resp, 429, "rate_limited").await;
        let resp = get_at(&app, &app.base, "/health", None).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
);

both!(
    rate_limit_holds_across_two_nodes,
    settings = |s: &mut crm_api::config::Settings| {
        s.rate_limit_per_minute = 10;
        s.auth_rate_limit_per_minute = 1000;
    },
    |app| {
        let s = app.new_tenant().await;
        let viewer = app.new_user(&s, "viewer").await;
        let (second, handle) = app.second_node().await;
        for _ in 0..6 {
            let resp = get_at(&app, &app.base, "/v1/contacts", Some(&viewer.access)).await;
            assert_eq!(resp.status(), StatusCode::OK);
        }
        // Both nodes sync every 50 ms; after that the second node knows of the first's six.
        tokio::time::sleep(StdDuration::from_millis(400)).await;
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(
                get_at(&app, &second, "/v1/contacts", Some(&viewer.access))
                    .await
                    .status()
                    .as_u16(),
            );
        }
        assert_eq!(statuses, vec![200, 200, 200, 200, 429, 429]);
        tokio::time::sleep(StdDuration::from_millis(400)).await;
        let resp = get_at(&app, &app.base, "/v1/contacts", Some(&viewer.access)).await;
        assert_problem(resp, 429, "rate_limited").await;
        handle.stop(true).await;
    }
);
