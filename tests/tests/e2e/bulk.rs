//! Bulk upsert of contacts: per-item results, one transaction with a savepoint per item.

use crm_e2e::{assert_problem, both};
use reqwest::StatusCode;
use serde_json::{Value, json};

both!(bulk_upsert_reports_every_item, |app| {
    let admin = app.new_tenant().await;
    let admin = app.stepped_up(&admin).await;
    let other = app.new_tenant().await;
    // A suppressed address (an erased person's) and an existing contact.
    let gone = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"email": "gone@example.com"}),
        )
        .await;
    let resp = app
        .post(
            &format!("/v1/contacts/{}/erase", gone["id"].as_str().unwrap()),
            &admin.access,
            &json!({}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let existing = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"first_name": "Old", "email": "kept@example.com"}),
        )
        .await;
    let foreign = app
        .create(
            "/v1/contacts",
            &other.access,
            json!({"first_name": "Theirs"}),
        )
        .await;

    let body = json!({"items": [
        {"first_name": "New", "email": "new@example.com"},
        {"email": "not-an-address"},
        {"email": "gone@example.com"},
        {"email": "kept@example.com", "job_title": "Buyer"},
        {"id": existing["id"], "last_name": "Updated"},
        {"id": foreign["id"], "first_name": "Hijack"},
        {"first_name": "Company", "company_id": "00000000-0000-7000-8000-000000000000"},
        "not an object",
        {},
        {"first_name": "Twin", "email": "new@example.com"},
        // The database refuses this one (unique e-mail): only its savepoint rolls back.
        {"id": existing["id"], "email": "new@example.com"},
        {"first_name": "After"},
    ]});
    let resp = app.post("/v1/contacts/batch", &admin.access, &body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let out: Value = resp.json().await.unwrap();
    let r = out["results"].as_array().unwrap();
    assert_eq!(r.len(), 12);
    let status: Vec<&str> = r.iter().map(|i| i["status"].as_str().unwrap()).collect();
    assert_eq!(
        status,
        [
            "created", "failed", "failed", "updated", "updated", "failed", "failed", "failed",
            "failed", "updated", "failed", "created"
        ]
    );
    assert_eq!(r[1]["errors"][0]["pointer"], "/items/1/email");
    assert_eq!(r[2]["code"], "email_suppressed");
    assert_eq!(r[3]["id"], existing["id"]);
    assert_eq!(
        r[5]["code"], "contact_not_found",
        "another tenant's contact is not found"
    );
    assert_eq!(r[6]["errors"][0]["pointer"], "/items/6/company_id");
    assert_eq!(r[7]["errors"][0]["pointer"], "/items/7");
    assert_eq!(r[8]["errors"][0]["code"], "empty_contact");
    assert_eq!(
        r[9]["id"], r[0]["id"],
        "the second item with the address updates the first"
    );
    assert_eq!(
        (
            out["created"].as_u64(),
            out["updated"].as_u64(),
            out["failed"].as_u64()
        ),
        (Some(2), Some(3), Some(7))
    );
    assert_eq!(r[10]["code"], "email_taken");

    // What was written is there; what failed left nothing behind.
    let kept: Value = app
        .get(
            &format!("/v1/contacts/{}", existing["id"].as_str().unwrap()),
            &admin.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (kept["job_title"].as_str(), kept["last_name"].as_str()),
        (Some("Buyer"), Some("Updated"))
    );
    let theirs: Value = app
        .get(
            &format!("/v1/contacts/{}", foreign["id"].as_str().unwrap()),
            &other.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["first_name"], "Theirs");
    let list: Value = app
        .get("/v1/contacts", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    let twin: Value = app
        .get(
            &format!("/v1/contacts/{}", r[0]["id"].as_str().unwrap()),
            &admin.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(twin["first_name"], "Twin");

    // Limits and shape.
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"first_name": format!("P{i}")}))
        .collect();
    assert_problem(
        app.post(
            "/v1/contacts/batch",
            &admin.access,
            &json!({"items": too_many}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    assert_problem(
        app.post("/v1/contacts/batch", &admin.access, &json!({"items": []}))
            .await,
        422,
        "validation_failed",
    )
    .await;
    let viewer = app.new_user(&admin, "viewer").await;
    assert_problem(
        app.post(
            "/v1/contacts/batch",
            &viewer.access,
            &json!({"items": [{"first_name": "X"}]}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;

    // A full batch of 1,000 goes through in one call.
    let many: Vec<Value> = (0..1000)
        .map(|i| json!({"first_name": format!("Bulk{i}"), "email": format!("bulk{i}@example.com")}))
        .collect();
    let out: Value = app
        .post("/v1/contacts/batch", &admin.access, &json!({"items": many}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(out["created"], 1000);
});

both!(bulk_upsert_applies_items_in_order, |app| {
    let admin = app.new_tenant().await;
    let a = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"email": "a1@example.com"}),
        )
        .await;
    let c = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"email": "c1@example.com"}),
        )
        .await;
    let since = changes(&app, &admin.access, 0).await.len() as i64;
    assert_eq!(since, 2);

    // Each item sees the ones before it: A frees a1, a new contact takes it, and the third
    // item finds A by its new address.
    let body = json!({"items": [
        {"id": a["id"], "email": "a2@example.com"},
        {"first_name": "New", "email": "a1@example.com"},
        {"email": "a2@example.com", "job_title": "Buyer"},
    ]});
    let out = batch(&app, &admin.access, &body).await;
    let r = out["results"].as_array().unwrap();
    let status: Vec<&str> = r.iter().map(|i| i["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["updated", "created", "updated"]);
    assert_eq!(r[2]["id"], a["id"]);

    // C hands its address on and takes A's old one in the same call, after A moved on: the
    // order of the items decides, as if they were sent one by one.
    let body = json!({"items": [
        {"id": c["id"], "email": "c2@example.com"},
        {"id": a["id"], "email": "a3@example.com"},
        {"id": c["id"], "email": "a2@example.com"},
    ]});
    let out = batch(&app, &admin.access, &body).await;
    let status: Vec<&str> = out["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(status, ["updated", "updated", "updated"]);
    let got = |id: &Value| {
        let path = format!("/v1/contacts/{}", id.as_str().unwrap());
        let token = admin.access.clone();
        let app = &app;
        async move {
            let v: Value = app.get(&path, &token).await.json().await.unwrap();
            (
                v["email"].as_str().unwrap().to_owned(),
                v["version"].as_i64().unwrap(),
            )
        }
    };
    assert_eq!(got(&c["id"]).await, ("a2@example.com".to_owned(), 3));
    assert_eq!(got(&a["id"]).await, ("a3@example.com".to_owned(), 4));

    // One event per applied item, in item order, each with the contact as it was then.
    let feed = changes(&app, &admin.access, since).await;
    let seen: Vec<(String, String, i64)> = feed
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["data"]["email"].as_str().unwrap().to_owned(),
                e["data"]["version"].as_i64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("contact.updated", "a2@example.com", 2),
        ("contact.created", "a1@example.com", 1),
        ("contact.updated", "a2@example.com", 3),
        ("contact.updated", "c2@example.com", 2),
        ("contact.updated", "a3@example.com", 4),
        ("contact.updated", "a2@example.com", 3),
    ];
    let want: Vec<(String, String, i64)> = want
        .iter()
        .map(|(t, e, v)| ((*t).to_owned(), (*e).to_owned(), *v))
        .collect();
    assert_eq!(seen, want);
    let seqs: Vec<i64> = feed.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, ((since + 1)..=(since + 6)).collect::<Vec<_>>());

    // One audit entry per applied item, and the chain still verifies.
    let audit: Value = app
        .get(
            &format!("/v1/audit-events?object_id={}", c["id"].as_str().unwrap()),
            &admin.access,
        )
        .await
        .json()
        .await
        .unwrap();
    let mut actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    actions.sort_unstable();
    assert_eq!(
        actions,
        ["contact.created", "contact.updated", "contact.updated"]
    );
    let db = crm_e2e::open_db(&app).await;
    let (_, breaks) = crm_domain::audit::verify_chain(&db).await.unwrap();
    assert!(breaks.is_empty(), "{breaks:?}");
});

// Each column of a batch travels as one array on PostgreSQL; a column with no NULLs, some
// NULLs or only NULLs is sent differently. Every pattern reads back as written — in the
// contact, in its event and in its e-mail's blind index (the lookup by address) — and
// updates keep what they do not name.
both!(
    bulk_upsert_round_trips_every_pattern_of_missing_values,
    |app| {
        let admin = app.new_tenant().await;
        let t = &admin.access;
        let company = app
            .create("/v1/companies", t, json!({"name": "Acme"}))
            .await;
        // Rows with a value, per column: last_name all; first_name 3; email 0 and 2; phone 0
        // and 1; job_title 1 and 2; company_id 1 (no two columns alike, so swapped masks show).
        let items = json!([
            {"last_name": "One", "email": "one@example.com", "phone": "+44 1"},
            {
                "last_name": "Two", "phone": "+44 2", "job_title": "Buyer",
                "company_id": company["id"]
            },
            {"last_name": "Three", "email": "three@example.com", "job_title": "Owner"},
            {"last_name": "Four", "first_name": "Dora"},
        ]);
        let since = changes(&app, t, 0).await.len() as i64;
        let out = batch(&app, t, &json!({"items": items})).await;
        assert_eq!(out["created"], 4);
        let ids: Vec<Value> = (0..4).map(|i| out["results"][i]["id"].clone()).collect();
        let feed = changes(&app, t, since).await;
        assert_eq!(feed.len(), 4);
        for (i, want) in items.as_array().unwrap().iter().enumerate() {
            assert_contact(&app, t, &ids[i], want, 1).await;
            assert_eq!(feed[i]["type"], "contact.created");
            assert_eq!(feed[i]["data"]["id"], ids[i]);
            assert_eq!(feed[i]["data"]["version"], 1);
            for f in FIELDS {
                assert_eq!(feed[i]["data"][f], field(want, f), "item {i}'s event, {f}");
            }
        }
        assert_eq!(by_email(&app, t, "one@example.com").await, [ids[0].clone()]);
        assert_eq!(
            by_email(&app, t, "three@example.com").await,
            [ids[2].clone()]
        );

        // Updates with other patterns: named fields change (null clears), others stay, and an
        // address no item names keeps its blind index.
        let updates = json!([
            {"id": ids[0], "phone": null, "job_title": "Owner"},
            {"id": ids[1], "company_id": null},
            {"id": ids[2], "first_name": "Tess"},
            {"id": ids[3], "email": "four@example.com"},
        ]);
        let since = since + 4;
        let out = batch(&app, t, &json!({"items": updates})).await;
        assert_eq!(out["updated"], 4);
        let want = [
            json!({"last_name": "One", "email": "one@example.com", "job_title": "Owner"}),
            json!({"last_name": "Two", "phone": "+44 2", "job_title": "Buyer"}),
            json!({
                "last_name": "Three", "email": "three@example.com", "job_title": "Owner",
                "first_name": "Tess"
            }),
            json!({"last_name": "Four", "first_name": "Dora", "email": "four@example.com"}),
        ];
        let feed = changes(&app, t, since).await;
        assert_eq!(feed.len(), 4);
        for (i, want) in want.iter().enumerate() {
            assert_contact(&app, t, &ids[i], want, 2).await;
            assert_eq!(feed[i]["type"], "contact.updated");
            assert_eq!(feed[i]["data"]["id"], ids[i]);
            for f in FIELDS {
                assert_eq!(
                    feed[i]["data"][f],
                    field(want, f),
                    "update {i}'s event, {f}"
                );
            }
        }
        for (email, i) in [
            ("one@example.com", 0),
            ("three@example.com", 2),
            ("four@example.com", 3),
        ] {
            assert_eq!(by_email(&app, t, email).await, [ids[i].clone()], "{email}");
        }
    }
);

/// The contact fields a bulk item can set.
const FIELDS: [&str; 6] = [
    "first_name",
    "last_name",
    "email",
    "phone",
    "job_title",
    "company_id",
];

fn field(item: &Value, name: &str) -> Value {
    item.get(name).cloned().unwrap_or(Value::Null)
}

/// The contact has exactly the item's fields (the others empty) and this version.
async fn assert_contact(
    app: &crm_e2e::TestApp,
    token: &str,
    id: &Value,
    want: &Value,
    version: i64,
) {
    let id = id.as_str().unwrap();
    let got: Value = app
        .get(&format!("/v1/contacts/{id}"), token)
        .await
        .json()
        .await
        .unwrap();
    for f in FIELDS {
        assert_eq!(got[f], field(want, f), "{id}, {f}");
    }
    assert_eq!(got["version"], version, "{id}");
}

/// The ids of the contacts found by an address.
async fn by_email(app: &crm_e2e::TestApp, token: &str, email: &str) -> Vec<Value> {
    let resp = app.get(&format!("/v1/contacts?email={email}"), token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].clone())
        .collect()
}

async fn batch(app: &crm_e2e::TestApp, token: &str, body: &Value) -> Value {
    let resp = app.post("/v1/contacts/batch", token, body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

async fn changes(app: &crm_e2e::TestApp, token: &str, since: i64) -> Vec<Value> {
    let resp = app
        .get(&format!("/v1/changes?since={since}&limit=1000"), token)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["data"].as_array().unwrap().clone()
}

async fn upload(
    app: &crm_e2e::TestApp,
    token: &str,
    content_type: &str,
    body: String,
) -> reqwest::Response {
    app.client
        .post(app.url("/v1/contacts/imports"))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn wait_done(app: &crm_e2e::TestApp, token: &str, location: &str) -> Value {
    for _ in 0..600 {
        let job: Value = app.get(location, token).await.json().await.unwrap();
        if job["status"] == "done" {
            return job;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the import did not finish");
}

both!(imports_apply_files_in_the_background_with_progress, |app| {
    let admin = app.new_tenant().await;
    let other = app.new_tenant().await;
    // A CSV of 2,500 rows (three chunks) with a bad row, a suppressed address and a quoted
    // field with a comma.
    let mut csv = String::from("first_name,last_name,email,job_title\n");
    for i in 0..2500 {
        match i {
            7 => csv.push_str("Bad,Row,not-an-address,\n"),
            1500 => csv.push_str("Sup,Pressed,suppressed@example.com,\n"),
            _ => csv.push_str(&format!("P{i},\"Smith, Jr\",p{i}@import.example,Buyer\n")),
        }
    }
    // Suppress an address first.
    let admin = app.stepped_up(&admin).await;
    let s = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"email": "suppressed@example.com"}),
        )
        .await;
    app.post(
        &format!("/v1/contacts/{}/erase", s["id"].as_str().unwrap()),
        &admin.access,
        &json!({}),
    )
    .await;

    let resp = upload(&app, &admin.access, "text/csv", csv).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = resp.json().await.unwrap();
    assert_eq!(job["total"], 2500);
    assert_problem(
        app.get(&location, &other.access).await,
        404,
        "import_not_found",
    )
    .await;
    let done = wait_done(&app, &admin.access, &location).await;
    assert_eq!(done["processed"], 2500);
    assert_eq!(done["created"], 2498);
    assert_eq!(done["failed"], 2);
    assert_eq!(
        done["errors"],
        json!([{"row": 8, "code": "invalid_email"}, {"row": 1501, "code": "email_suppressed"}])
    );
    let one: Value = app
        .get("/v1/contacts?email=p42@import.example", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["data"][0]["last_name"], "Smith, Jr");
    // The file is gone once applied.
    for (table, row) in crm_e2e::dump_all_rows(&app).await {
        if table == "import_jobs" {
            assert!(!row.contains("p42@import.example"), "the upload is kept");
        }
    }

    // NDJSON, re-importing updates by e-mail; a line that is not JSON is a failed row.
    let ndjson = "{\"email\":\"p1@import.example\",\"job_title\":\"Owner\"}\nnot json\n\n{\"first_name\":\"Solo\"}\n";
    let resp = upload(&app, &admin.access, "application/x-ndjson", ndjson.into()).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let done = wait_done(&app, &admin.access, &location).await;
    assert_eq!(
        (
            done["total"].as_i64(),
            done["updated"].as_i64(),
            done["created"].as_i64(),
            done["failed"].as_i64()
        ),
        (Some(3), Some(1), Some(1), Some(1))
    );

    // Refused uploads.
    assert_problem(
        upload(&app, &admin.access, "application/json", "{}".into()).await,
        415,
        "unsupported_media_type",
    )
    .await;
    assert_problem(
        upload(
            &app,
            &admin.access,
            "text/csv",
            "name,email\nA,a@example.com\n".into(),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    let viewer = app.new_user(&admin, "viewer").await;
    assert_problem(
        upload(
            &app,
            &viewer.access,
            "text/csv",
            "email\nx@example.com\n".into(),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
});
