//! Companies, contacts and orders: happy paths, validation, versions, pagination.

use crm_e2e::{assert_invalid, assert_problem, both};
use reqwest::StatusCode;
use serde_json::{Value, json};

both!(contact_lifecycle, |app| {
    let s = app.new_tenant().await;
    let company = app
        .create(
            "/v1/companies",
            &s.access,
            json!({"name": "Analytical Engines Ltd", "domain": "Engines.Example"}),
        )
        .await;
    assert_eq!(company["domain"], "engines.example");

    let resp = app
        .post(
            "/v1/contacts",
            &s.access,
            &json!({"first_name": " Ada ", "last_name": "Lovelace", "email": "Ada@Example.COM", "phone": "+44 20 7946 0958", "company_id": company["id"]}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["etag"], "\"1\"");
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let contact: Value = resp.json().await.unwrap();
    assert_eq!(contact["first_name"], "Ada", "trimmed");
    assert_eq!(contact["email"], "ada@example.com", "normalised");
    assert_eq!(
        location,
        format!("/v1/contacts/{}", contact["id"].as_str().unwrap())
    );

    let resp = app.get(&location, &s.access).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["etag"], "\"1\"");
    let fetched: Value = resp.json().await.unwrap();
    assert_eq!(fetched, contact);

    // Merge patch: absent stays, null clears, value sets.
    let resp = app
        .patch(
            &location,
            &s.access,
            &json!({"phone": null, "job_title": "Mathematician"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["etag"], "\"2\"");
    let patched: Value = resp.json().await.unwrap();
    assert_eq!(patched["phone"], Value::Null);
    assert_eq!(patched["job_title"], "Mathematician");
    assert_eq!(patched["last_name"], "Lovelace");
    assert_eq!(patched["version"], 2);

    // Duplicate e-mail in the same tenant, in any case.
    let resp = app
        .post(
            "/v1/contacts",
            &s.access,
            &json!({"email": "ADA@example.com"}),
        )
        .await;
    assert_problem(resp, 409, "email_taken").await;
    let other = app
        .create(
            "/v1/contacts",
            &s.access,
            json!({"email": "charles@example.com"}),
        )
        .await;
    let resp = app
        .patch(
            &format!("/v1/contacts/{}", other["id"].as_str().unwrap()),
            &s.access,
            &json!({"email": "ada@example.com"}),
        )
        .await;
    assert_problem(resp, 409, "email_taken").await;

    // Filters.
    let list: Value = app
        .get("/v1/contacts?email=ADA@EXAMPLE.COM", &s.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let list: Value = app
        .get("/v1/contacts?q=LOVE", &s.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["id"], contact["id"]);
    let list: Value = app
        .get(
            &format!(
                "/v1/contacts?company_id={}",
                company["id"].as_str().unwrap()
            ),
            &s.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let list: Value = app
        .get("/v1/contacts?q=100%25", &s.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        0,
        "% is matched literally"
    );
    let since = patched["updated_at"].as_str().unwrap();
    let list: Value = app
        .get(
            &format!("/v1/contacts?updated_since={}", since.replace('+', "%2B")),
            &s.access,
        )
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&Value> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["id"])
        .collect();
    assert!(ids.contains(&&contact["id"]) && ids.contains(&&other["id"]));

    // Delete, then it is gone.
    let resp = app.delete(&location, &s.access).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.get(&location, &s.access).await,
        404,
        "contact_not_found",
    )
    .await;
    assert_problem(
        app.delete(&location, &s.access).await,
        404,
        "contact_not_found",
    )
    .await;
});

both!(contact_validation, |app| {
    let s = app.new_tenant().await;
    let resp = app
        .post(
            "/v1/contacts",
            &s.access,
            &json!({"first_name": "", "email": "not-an-email", "phone": "call me", "nickname": "x", "last_name": 7, "job_title": "x".repeat(101)}),
        )
        .await;
    let body = assert_invalid(resp, "/first_name", "blank").await;
    let codes: Vec<(String, String)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["pointer"].as_str().unwrap().to_owned(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("/email", "invalid_email"),
        ("/phone", "invalid_phone"),
        ("/nickname", "unknown_field"),
        ("/last_name", "invalid_type"),
        ("/job_title", "too_long"),
    ] {
        assert!(
            codes.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} in {codes:?}"
        );
    }
    assert_invalid(
        app.post("/v1/contacts", &s.access, &json!({})).await,
        "",
        "empty_contact",
    )
    .await;
    assert_invalid(
        app.post("/v1/contacts", &s.access, &json!([1])).await,
        "",
        "invalid_type",
    )
    .await;
    assert_invalid(
        app.post(
            "/v1/contacts",
            &s.access,
            &json!({"email": "a@example.com", "company_id": uuid::Uuid::now_v7()}),
        )
        .await,
        "/company_id",
        "unknown_company",
    )
    .await;
    assert_invalid(
        app.post(
            "/v1/contacts",
            &s.access,
            &json!({"email": "a@example.com", "company_id": "nope"}),
        )
        .await,
        "/company_id",
        "invalid_id",
    )
    .await;
    // Nothing was stored by the refused requests.
    let list: Value = app
        .get("/v1/contacts", &s.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);

    // Query parameters.
    let resp = app
        .get(
            "/v1/contacts?limit=0&cursor=zz!&updated_since=yesterday&company_id=1",
            &s.access,
        )
        .await;
    let body = assert_problem(resp, 422, "validation_failed").await;
    let params: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["parameter"].as_str().unwrap())
        .collect();
    for p in ["limit", "cursor", "updated_since", "company_id"] {
        assert!(params.contains(&p), "{p} in {params:?}");
    }
    assert_problem(
        app.get("/v1/contacts?limit=201", &s.access).await,
        422,
        "validation_failed",
    )
    .await;

    // A patch that would leave nothing to identify the person.
    let c = app
        .create(
            "/v1/contacts",
            &s.access,
            json!({"email": "only@example.com"}),
        )
        .await;
    let path = format!("/v1/contacts/{}", c["id"].as_str().unwrap());
    assert_invalid(
        app.patch(&path, &s.access, &json!({"email": null})).await,
        "",
        "empty_contact",
    )
    .await;
    assert_invalid(
        app.patch(&path, &s.access, &json!({"email": "nope"})).await,
        "/email",
        "invalid_email",
    )
    .await;
    assert_problem(
        app.get("/v1/contacts/not-a-uuid", &s.access).await,
        404,
        "contact_not_found",
    )
    .await;
});

both!(company_lifecycle, |app| {
    let s = app.new_tenant().await;
    assert_invalid(
        app.post("/v1/companies", &s.access, &json!({})).await,
        "/name",
        "required",
    )
    .await;
    assert_invalid(
        app.post(
            "/v1/companies",
            &s.access,
            &json!({"name": "X", "domain": "not a domain"}),
        )
        .await,
        "/domain",
        "invalid_domain",
    )
    .await;
    let company = app
        .create(
            "/v1/companies",
            &s.access,
            json!({"name": "Babbage & Co", "industry": "Computing"}),
        )
        .await;
    let path = format!("/v1/companies/{}", company["id"].as_str().unwrap());
    let contact = app
        .create(
            "/v1/contacts",
            &s.access,
            json!({"first_name": "Charles", "company_id": company["id"]}),
        )
        .await;
    let order = app
        .create(
            "/v1/orders",
            &s.access,
            json!({"company_id": company["id"], "currency": "GBP", "lines": [{"description": "Engine", "quantity": 1, "unit_price_minor": 100}]}),
        )
        .await;
    let list: Value = app
        .get("/v1/companies?q=babbage", &s.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_invalid(
        app.patch(&path, &s.access, &json!({"name": null})).await,
        "/name",
        "not_nullable",
    )
    .await;
    let patched: Value = app
        .patch(
            &path,
            &s.access,
            &json!({"industry": null, "phone": "020 7946 0000"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(patched["industry"], Value::Null);
    assert_eq!(patched["name"], "Babbage & Co");

    // Deleting a company keeps its contacts and orders, without the link.
    assert_eq!(
        app.delete(&path, &s.access).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_problem(app.get(&path, &s.access).await, 404, "company_not_found").await;
    let c: Value = app
        .get(
            &format!("/v1/contacts/{}", contact["id"].as_str().unwrap()),
            &s.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(c["company_id"], Value::Null);
    let o: Value = app
        .get(
            &format!("/v1/orders/{}", order["id"].as_str().unwrap()),
            &s.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(o["company_id"], Value::Null);
});

both!(order_lifecycle, |app| {
    let s = app.new_tenant().await;
    let contact = app
        .create(
            "/v1/contacts",
            &s.access,
            json!({"email": "buyer@example.com"}),
        )
        .await;
    let order = app
        .create(
            "/v1/orders",
            &s.access,
            json!({
                "contact_id": contact["id"],
                "currency": "EUR",
                "lines": [
                    {"sku": "W-1", "description": "Widget", "quantity": 3, "unit_price_minor": 1250},
                    {"description": "Shipping", "quantity": 1, "unit_price_minor": 499}
                ]
            }),
        )
        .await;
    assert_eq!(order["status"], "draft");
    assert_eq!(order["total_minor"], 3 * 1250 + 499);
    assert_eq!(order["lines"][0]["line_total_minor"], 3750);
    assert_eq!(order["lines"][1]["position"], 1);
    assert_eq!(order["placed_at"], Value::Null);
    let path = format!("/v1/orders/{}", order["id"].as_str().unwrap());

    // Lines are replaced as a whole while a draft; totals recomputed.
    let o: Value = app
        .patch(
            &path,
            &s.access,
            &json!({"lines": [{"description": "Gadget", "quantity": 2, "unit_price_minor": 1000}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(o["total_minor"], 2000);
    assert_eq!(o["lines"].as_array().unwrap().len(), 1);

    // draft → paid is not a transition.
    assert_invalid(
        app.patch(&path, &s.access, &json!({"status": "paid"}))
            .await,
        "/status",
        "invalid_transition",
    )
    .await;
    let placed: Value = app
        .patch(&path, &s.access, &json!({"status": "placed"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(placed["status"], "placed");
    assert!(placed["placed_at"].is_string());
    assert_invalid(
        app.patch(
            &path,
            &s.access,
            &json!({"lines": [{"description": "X", "quantity": 1, "unit_price_minor": 1}]}),
        )
        .await,
        "/lines",
        "order_not_editable",
    )
    .await;
    assert_invalid(
        app.patch(&path, &s.access, &json!({"currency": "USD"}))
            .await,
        "/currency",
        "order_not_editable",
    )
    .await;
    let paid: Value = app
        .patch(&path, &s.access, &json!({"status": "paid"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(paid["status"], "paid");
    assert_problem(
        app.delete(&path, &s.access).await,
        409,
        "order_not_deletable",
    )
    .await;

    // Filters.
    let list: Value = app
        .get("/v1/orders?status=paid", &s.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let list: Value = app
        .get("/v1/orders?status=draft", &s.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let list: Value = app
        .get(
            &format!("/v1/orders?contact_id={}", contact["id"].as_str().unwrap()),
            &s.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["lines"][0]["description"], "Gadget");
    let list: Value = app
        .get("/v1/orders?placed_since=2999-01-01T00:00:00Z", &s.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    assert_problem(
        app.get("/v1/orders?status=lost", &s.access).await,
        422,
        "validation_failed",
    )
    .await;

    // A draft can be deleted; its lines go with it.
    let draft = app
        .create("/v1/orders", &s.access, json!({"contact_id": contact["id"], "currency": "EUR", "lines": [{"description": "A", "quantity": 1, "unit_price_minor": 0}]}))
        .await;
    let draft_path = format!("/v1/orders/{}", draft["id"].as_str().unwrap());
    assert_eq!(
        app.delete(&draft_path, &s.access).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_problem(
        app.get(&draft_path, &s.access).await,
        404,
        "order_not_found",
    )
    .await;
});

both!(order_validation, |app| {
    let s = app.new_tenant().await;
    let contact = app
        .create("/v1/contacts", &s.access, json!({"email": "v@example.com"}))
        .await;
    assert_invalid(app.post("/v1/orders", &s.access, &json!({"currency": "EUR", "lines": [{"description": "A", "quantity": 1, "unit_price_minor": 1}]})).await, "", "party_required").await;
    let resp = app
        .post(
            "/v1/orders",
            &s.access,
            &json!({
                "contact_id": contact["id"],
                "currency": "eur",
                "status": "paid",
                "lines": [
                    {"description": "ok", "quantity": 0, "unit_price_minor": 1},
                    {"description": "", "quantity": 1.5, "unit_price_minor": -1},
                    "not a line"
                ]
            }),
        )
        .await;
    let body = assert_invalid(resp, "/currency", "invalid_currency").await;
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    for p in [
        "/lines/0/quantity",
        "/lines/1/description",
        "/lines/1/quantity",
        "/lines/1/unit_price_minor",
        "/lines/2",
    ] {
        assert!(pointers.contains(&p), "{p} in {pointers:?}");
    }
    assert_invalid(
        app.post("/v1/orders", &s.access, &json!({"contact_id": contact["id"], "currency": "EUR", "status": "paid", "lines": [{"description": "A", "quantity": 1, "unit_price_minor": 1}]})).await,
        "/status",
        "invalid_initial_status",
    )
    .await;
    assert_invalid(
        app.post(
            "/v1/orders",
            &s.access,
            &json!({"contact_id": contact["id"], "currency": "EUR", "lines": []}),
        )
        .await,
        "/lines",
        "too_few_items",
    )
    .await;
    // An integer written as 2.0 is an integer (JSON Schema semantics).
    let o = app
        .create("/v1/orders", &s.access, json!({"contact_id": contact["id"], "currency": "JPY", "lines": [{"description": "A", "quantity": 2.0, "unit_price_minor": 500}]}))
        .await;
    assert_eq!(o["total_minor"], 1000);
    // 500 lines at the largest price overflow no integer: each line fits, the sum is checked.
    let big: Vec<Value> = (0..500)
        .map(|_| json!({"description": "gold", "quantity": 1_000_000, "unit_price_minor": 1_000_000_000_000_i64}))
        .collect();
    assert_invalid(
        app.post(
            "/v1/orders",
            &s.access,
            &json!({"contact_id": contact["id"], "currency": "EUR", "lines": big}),
        )
        .await,
        "/lines",
        "amount_too_large",
    )
    .await;
});

both!(if_match_versions, |app| {
    let s = app.new_tenant().await;
    let c = app
        .create(
            "/v1/contacts",
            &s.access,
            json!({"first_name": "Versioned"}),
        )
        .await;
    let path = format!("/v1/contacts/{}", c["id"].as_str().unwrap());
    let stale = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&s.access)
        .header("if-match", "\"7\"")
        .json(&json!({"last_name": "X"}))
        .send()
        .await
        .unwrap();
    assert_problem(stale, 412, "version_mismatch").await;
    let ok = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&s.access)
        .header("if-match", "\"1\"")
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"last_name":"Y"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["etag"], "\"2\"");

    // Two concurrent updates of the same version: exactly one wins.
    let send = |name: &'static str| {
        app.client
            .patch(app.url(&path))
            .bearer_auth(&s.access)
            .header("if-match", "\"2\"")
            .json(&json!({"first_name": name}))
            .send()
    };
    let (a, b) = tokio::join!(send("A"), send("B"));
    let mut statuses = vec![a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, vec![200, 412]);
    let now: Value = app.get(&path, &s.access).await.json().await.unwrap();
    assert_eq!(now["version"], 3);

    let stale_delete = app
        .client
        .delete(app.url(&path))
        .bearer_auth(&s.access)
        .header("if-match", "\"2\"")
        .send()
        .await
        .unwrap();
    assert_problem(stale_delete, 412, "version_mismatch").await;
    let delete = app
        .client
        .delete(app.url(&path))
        .bearer_auth(&s.access)
        .header("if-match", "\"3\"")
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::NO_CONTENT);
});

both!(pagination_is_stable_under_inserts, |app| {
    let s = app.new_tenant().await;
    let mut originals = Vec::new();
    for i in 0..25 {
        let c = app
            .create(
                "/v1/contacts",
                &s.access,
                json!({"first_name": format!("P{i:02}")}),
            )
            .await;
        originals.push(c["id"].as_str().unwrap().to_owned());
    }
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/contacts?limit=10&cursor={c}"),
            None => "/v1/contacts?limit=10".to_owned(),
        };
        let page: Value = app.get(&path, &s.access).await.json().await.unwrap();
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        // Rows inserted while paging.
        app.create(
            "/v1/contacts",
            &s.access,
            json!({"first_name": format!("Inserted{pages}")}),
        )
        .await;
        match page["next_cursor"].as_str() {
            Some(c) if pages < 20 => cursor = Some(c.to_owned()),
            _ => break,
        }
    }
    let unique: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no row repeated");
    for id in &originals {
        assert!(seen.contains(id), "no row skipped");
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, seen, "stable id order");
});

// `q` is matched on opened (decrypted) values, over at most 2,000 contacts per page: a page
// can come back short, even empty, with a cursor to go on from.
both!(search_goes_on_past_the_scan_limit_with_a_cursor, |app| {
    let s = app.new_tenant().await;
    for chunk in 0..3 {
        let items: Vec<Value> = (0..700)
            .map(|i| json!({"first_name": "Filler", "email": format!("filler{chunk}-{i}@example.org")}))
            .collect();
        let resp = app
            .post("/v1/contacts/batch", &s.access, &json!({"items": items}))
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let needle = app
        .create(
            "/v1/contacts",
            &s.access,
            json!({"first_name": "Nell", "last_name": "Finchley"}),
        )
        .await;
    let page: Value = app
        .get("/v1/contacts?q=FINCH&limit=10", &s.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["data"],
        json!([]),
        "2,000 fillers looked at, no match yet"
    );
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a cursor to go on from");
    let page: Value = app
        .get(
            &format!("/v1/contacts?q=FINCH&limit=10&cursor={cursor}"),
            &s.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"][0]["id"], needle["id"]);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_cursor"], Value::Null, "the end of the list");
    // A full page stops at `limit` matches, with a cursor.
    let page: Value = app
        .get("/v1/contacts?q=filler1-&limit=5", &s.access)
        .await
        .json()
        .await
        .unwrap();
    let emails: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails.len(), 5);
    assert!(
        emails.iter().all(|e| e.starts_with("filler1-")),
        "{emails:?}"
    );
    assert!(page["next_cursor"].is_string());
});

// Creations that arrive together (on SQLite, written in shared transactions): each gets its
// own answer, with the checks of a creation made alone, and what was answered is what is
// stored, audited and in the change feed. Another tenant's company is unknown here.
both!(concurrent_creations_each_get_their_own_answer, |app| {
    let a = app.new_tenant().await;
    // Erasure (which suppresses the address) needs a recent WebAuthn step-up.
    let a = app.stepped_up(&a).await;
    let b = app.new_tenant().await;
    let company_a = app
        .create("/v1/companies", &a.access, json!({"name": "A Ltd"}))
        .await;
    let company_b = app
        .create("/v1/companies", &b.access, json!({"name": "B Ltd"}))
        .await;
    let gone = app
        .create(
            "/v1/contacts",
            &a.access,
            json!({"email": "gone@example.org"}),
        )
        .await;
    let erase = format!("/v1/contacts/{}/erase", gone["id"].as_str().unwrap());
    assert_eq!(
        app.post(&erase, &a.access, &json!({})).await.status(),
        StatusCode::OK
    );
    app.create(
        "/v1/contacts",
        &a.access,
        json!({"email": "held@example.org"}),
    )
    .await;
    let feed_start: Value = app
        .get("/v1/changes?since=0&limit=1000", &a.access)
        .await
        .json()
        .await
        .unwrap();
    let since = feed_start["data"]
        .as_array()
        .unwrap()
        .last()
        .map_or(0, |e| e["seq"].as_i64().unwrap());

    // (token, body, expected status, expected problem code)
    let mut calls: Vec<(&str, Value, u16, &str)> = Vec::new();
    for k in 0..24 {
        calls.push((
            &a.access,
            json!({"email": format!("p{k}@example.org"), "company_id": company_a["id"]}),
            201,
            "",
        ));
    }
    // The same addresses are free in another tenant.
    for k in 0..12 {
        calls.push((
            &b.access,
            json!({"email": format!("p{k}@example.org")}),
            201,
            "",
        ));
    }
    calls.push((
        &a.access,
        json!({"email": "held@example.org"}),
        409,
        "email_taken",
    ));
    calls.push((
        &a.access,
        json!({"email": "gone@example.org"}),
        409,
        "email_suppressed",
    ));
    calls.push((
        &a.access,
        json!({"email": "GONE@example.org", "suppression_override_reason": "consent_renewed"}),
        201,
        "",
    ));
    calls.push((
        &a.access,
        json!({"first_name": "Zed", "company_id": company_b["id"]}),
        422,
        "unknown_company",
    ));
    // Two creations of one address: one is created, the other finds it taken.
    for _ in 0..2 {
        calls.push((&a.access, json!({"email": "twice@example.org"}), 0, "twice"));
    }
    let responses = futures_util::future::join_all(
        calls
            .iter()
            .map(|(token, body, _, _)| app.post("/v1/contacts", token, body)),
    )
    .await;
    let mut created_a = Vec::new();
    let mut created_b = Vec::new();
    let mut twice = Vec::new();
    for ((token, body, status, code), resp) in calls.iter().zip(responses) {
        let got = resp.status().as_u16();
        let json: Value = resp.json().await.unwrap();
        if *code == "twice" {
            twice.push((got, json["code"].as_str().unwrap_or("").to_owned()));
            if got == 201 {
                created_a.push(json);
            }
            continue;
        }
        assert_eq!(got, *status, "{body}: {json}");
        if *status == 201 {
            let email = body["email"].as_str().unwrap().to_lowercase();
            assert_eq!(
                json["email"],
                email.as_str(),
                "each request gets its own contact"
            );
            if *token == a.access {
                created_a.push(json);
            } else {
                created_b.push(json);
            }
        } else if *code == "unknown_company" {
            let errors = json["errors"].as_array().unwrap();
            assert!(
                errors.iter().any(|e| e["code"] == "unknown_company"),
                "{json}"
            );
        } else {
            assert_eq!(json["code"], *code, "{body}: {json}");
        }
    }
    twice.sort();
    assert_eq!(
        twice,
        [(201, String::new()), (409, "email_taken".to_owned())]
    );
    assert_eq!((created_a.len(), created_b.len()), (26, 12));

    // Stored as answered, and each tenant sees only its own.
    for (mine, theirs, contacts) in [
        (&a.access, &b.access, &created_a),
        (&b.access, &a.access, &created_b),
    ] {
        for c in contacts.iter() {
            let path = format!("/v1/contacts/{}", c["id"].as_str().unwrap());
            let stored: Value = app.get(&path, mine).await.json().await.unwrap();
            assert_eq!(stored["email"], c["email"]);
            assert_eq!(stored["company_id"], c["company_id"]);
            assert_eq!(app.get(&path, theirs).await.status(), StatusCode::NOT_FOUND);
        }
    }
    let listed: Value = app
        .get("/v1/contacts?limit=200", &a.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        27,
        "26 new and one held"
    );

    // One event per creation, numbered without gaps; refused creations left none.
    let feed: Value = app
        .get(&format!("/v1/changes?since={since}&limit=1000"), &a.access)
        .await
        .json()
        .await
        .unwrap();
    let events = feed["data"].as_array().unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, ((since + 1)..=(since + 26)).collect::<Vec<_>>());
    let mut ids: Vec<&str> = events
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "contact.created");
            e["object_id"].as_str().unwrap()
        })
        .collect();
    let mut want: Vec<&str> = created_a
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    want.sort_unstable();
    assert_eq!(ids, want);

    // The override is audited; every tenant's chain is whole.
    let overridden = created_a
        .iter()
        .find(|c| c["email"] == "gone@example.org")
        .unwrap();
    let audit: Value = app
        .get(
            &format!(
                "/v1/audit-events?object_id={}",
                overridden["id"].as_str().unwrap()
            ),
            &a.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["data"][0]["details"]["reason"], "consent_renewed");
    let db = crm_e2e::open_db(&app).await;
    let (_, breaks) = crm_domain::audit::verify_chain(&db).await.unwrap();
    assert!(breaks.is_empty(), "{breaks:?}");
});
