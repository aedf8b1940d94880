//! Consent with lawful basis, data-subject requests with deadlines and retention, with an
//! injected clock.

use chrono::Duration;
use crm_e2e::{assert_invalid, assert_problem, both, dump_all_rows};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

both!(consent_history_and_withdrawal, |app| {
    let admin = app.new_tenant().await;
    // Erasure needs a recent WebAuthn step-up.
    let admin = app.stepped_up(&admin).await;
    let member = app.new_user(&admin, "member").await;
    let viewer = app.new_user(&admin, "viewer").await;
    let stranger = app.new_tenant().await;

    let resp = app
        .post(
            "/v1/purposes",
            &admin.access,
            &json!({"key": "newsletter", "name": "Monthly newsletter"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_problem(
        app.post(
            "/v1/purposes",
            &admin.access,
            &json!({"key": "newsletter", "name": "Again"}),
        )
        .await,
        409,
        "purpose_exists",
    )
    .await;
    assert_invalid(
        app.post(
            "/v1/purposes",
            &admin.access,
            &json!({"key": "News Letter", "name": "x"}),
        )
        .await,
        "/key",
        "invalid_key",
    )
    .await;
    assert_problem(
        app.post(
            "/v1/purposes",
            &member.access,
            &json!({"key": "other", "name": "x"}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    let purposes: Value = app
        .get("/v1/purposes", &viewer.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(purposes["data"][0]["key"], "newsletter");

    let contact = app
        .create(
            "/v1/contacts",
            &member.access,
            json!({"email": "consenting@example.org"}),
        )
        .await;
    let id = contact["id"].as_str().unwrap();
    let path = format!("/v1/contacts/{id}/consents");
    let grant = json!({"purpose": "newsletter", "status": "granted", "lawful_basis": "consent", "channel": "web",
                       "source": "signup form", "evidence": "ticked box 'Send me the newsletter', submission 8812"});
    let resp = app.post(&path, &member.access, &grant).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let granted: Value = resp.json().await.unwrap();
    assert_eq!(granted["status"], "granted");
    assert!(granted["recorded_by"].is_string());

    let resp = app
        .post(&path, &member.access, &json!({"purpose": "newsletter", "status": "maybe", "lawful_basis": "because", "channel": "telepathy"}))
        .await;
    let body = assert_problem(resp, 422, "validation_failed").await;
    assert_eq!(body["errors"].as_array().unwrap().len(), 3);
    assert_invalid(
        app.post(&path, &member.access, &json!({"purpose": "unknown", "status": "granted", "lawful_basis": "consent", "channel": "web"})).await,
        "/purpose",
        "unknown_purpose",
    )
    .await;
    assert_problem(
        app.post(&path, &viewer.access, &grant).await,
        403,
        "forbidden",
    )
    .await;
    assert_problem(
        app.post(&path, &stranger.access, &grant).await,
        404,
        "contact_not_found",
    )
    .await;
    assert_problem(
        app.get(&path, &stranger.access).await,
        404,
        "contact_not_found",
    )
    .await;

    // Withdrawal is one call and holds at once.
    let resp = app
        .post(
            &format!("{path}/newsletter/withdraw"),
            &member.access,
            &json!({"channel": "email"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let state: Value = app.get(&path, &viewer.access).await.json().await.unwrap();
    assert_eq!(state["current"].as_array().unwrap().len(), 1);
    assert_eq!(state["current"][0]["status"], "withdrawn");
    assert_eq!(state["current"][0]["lawful_basis"], "consent");
    let history = state["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "history is append-only");
    assert_eq!(history[0]["status"], "granted");
    assert_problem(
        app.post(
            &format!("{path}/other/withdraw"),
            &member.access,
            &json!({}),
        )
        .await,
        404,
        "consent_not_found",
    )
    .await;

    // The export carries the consent history and the lawful bases.
    let export: Value = app
        .get(&format!("/v1/contacts/{id}/export"), &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(export["consents"].as_array().unwrap().len(), 2);
    for column in crm_domain::personal_data::exported_columns("consents") {
        assert!(
            export["consents"][0].get(column).is_some(),
            "export lacks consents.{column}"
        );
    }
    assert_eq!(export["processing"]["lawful_bases"], json!(["consent"]));
    assert_eq!(export["processing"]["purposes"][0]["key"], "newsletter");

    // Erasure takes the consent history with it.
    assert_eq!(
        app.post(
            &format!("/v1/contacts/{id}/erase"),
            &admin.access,
            &json!({})
        )
        .await
        .status(),
        StatusCode::OK
    );
    for (table, row) in dump_all_rows(&app).await {
        assert!(!row.contains("submission 8812"), "{table}: {row}");
    }
});

both!(request_deadlines_with_an_injected_clock, |app| {
    let admin = app.new_tenant().await;
    let viewer = app.new_user(&admin, "viewer").await;
    let stranger = app.new_tenant().await;
    let contact = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"email": "subject@example.org"}),
        )
        .await;

    let resp = app
        .post(
            "/v1/dsr",
            &admin.access,
            &json!({"kind": "access", "contact_id": contact["id"]}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let req: Value = resp.json().await.unwrap();
    let received =
        chrono::DateTime::parse_from_rfc3339(req["received_at"].as_str().unwrap()).unwrap();
    let due = chrono::DateTime::parse_from_rfc3339(req["due_at"].as_str().unwrap()).unwrap();
    assert!(
        (28..=31).contains(&(due - received).num_days()),
        "one month"
    );
    assert_eq!(req["status"], "open");
    assert_eq!(req["identity_verification"], "pending");
    assert_eq!(req["overdue"], false);
    let path = format!("/v1/dsr/{}", req["id"].as_str().unwrap());
    let erasure_req = app
        .create(
            "/v1/dsr",
            &admin.access,
            json!({"kind": "erasure", "contact_id": contact["id"]}),
        )
        .await;

    assert_invalid(
        app.post("/v1/dsr", &admin.access, &json!({"kind": "complaint"}))
            .await,
        "/kind",
        "invalid_kind",
    )
    .await;
    assert_invalid(
        app.post(
            "/v1/dsr",
            &admin.access,
            &json!({"kind": "access", "received_at": "2999-01-01T00:00:00Z"}),
        )
        .await,
        "/received_at",
        "in_future",
    )
    .await;
    assert_invalid(
        app.post(
            "/v1/dsr",
            &admin.access,
            &json!({"kind": "access", "contact_id": uuid::Uuid::now_v7()}),
        )
        .await,
        "/contact_id",
        "unknown_contact",
    )
    .await;
    assert_problem(
        app.post("/v1/dsr", &viewer.access, &json!({"kind": "access"}))
            .await,
        403,
        "forbidden",
    )
    .await;
    assert_problem(
        app.get(&path, &stranger.access).await,
        404,
        "dsr_request_not_found",
    )
    .await;

    let overdue: Value = app
        .get("/v1/dsr?overdue=true", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(overdue["data"].as_array().unwrap().len(), 0);

    // 32 days later both requests are overdue.
    app.clock.advance(Duration::days(32));
    let admin = app
        .session(&admin.tenant, &admin.email, &admin.password)
        .await;
    let overdue: Value = app
        .get("/v1/dsr?overdue=true", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(overdue["data"].as_array().unwrap().len(), 2);
    assert_eq!(overdue["data"][0]["overdue"], true);

    // One extension of up to two months, with a reason.
    assert_invalid(
        app.patch(
            &path,
            &admin.access,
            &json!({"extension": {"months": 3, "reason": "complex"}}),
        )
        .await,
        "/extension/months",
        "out_of_range",
    )
    .await;
    assert_invalid(
        app.patch(&path, &admin.access, &json!({"extension": {"months": 2}}))
            .await,
        "/extension/reason",
        "required",
    )
    .await;
    let extended: Value = app
        .patch(&path, &admin.access, &json!({"extension": {"months": 2, "reason": "many systems to search"}, "identity_verification": "verified"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(extended["extended"], true);
    assert_eq!(extended["overdue"], false);
    assert_eq!(extended["identity_verification"], "verified");
    assert_problem(
        app.patch(
            &path,
            &admin.access,
            &json!({"extension": {"months": 1, "reason": "again"}}),
        )
        .await,
        409,
        "already_extended",
    )
    .await;
    let overdue: Value = app
        .get("/v1/dsr?overdue=true", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        overdue["data"].as_array().unwrap().len(),
        1,
        "only the erasure request is still overdue"
    );

    let done: Value = app
        .patch(
            &path,
            &admin.access,
            &json!({"status": "completed", "outcome": "export sent"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "completed");
    assert!(done["closed_at"].is_string());
    assert_problem(
        app.patch(&path, &admin.access, &json!({"status": "open"}))
            .await,
        409,
        "request_closed",
    )
    .await;
    let open: Value = app
        .get("/v1/dsr?status=open", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(open["data"].as_array().unwrap().len(), 1);
    assert_problem(
        app.get("/v1/dsr?status=sleeping", &admin.access).await,
        422,
        "validation_failed",
    )
    .await;

    let admin = app.stepped_up(&admin).await;
    // Erasing the person links the erasure request and detaches the register entries.
    let plan: Value = app
        .post(
            &format!("/v1/contacts/{}/erase", contact["id"].as_str().unwrap()),
            &admin.access,
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let linked: Value = app
        .get(
            &format!("/v1/dsr/{}", erasure_req["id"].as_str().unwrap()),
            &admin.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(linked["erasure_id"], plan["erasure_id"]);
    assert_eq!(linked["contact_id"], Value::Null);
    let kept = plan["kept"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["table"] == "dsr_requests")
        .unwrap();
    assert_eq!(kept["ids"].as_array().unwrap().len(), 2);
});

both!(retention_job_with_an_injected_clock, |app| {
    let admin = app.new_tenant().await;
    let stale = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"email": "stale@example.org", "first_name": "Stale"}),
        )
        .await;
    let held = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"email": "held@example.org"}),
        )
        .await;
    let active = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"email": "active@example.org"}),
        )
        .await;
    let hold = app
        .request(
            Method::PUT,
            &format!("/v1/contacts/{}/legal-hold", held["id"].as_str().unwrap()),
            Some(&admin.access),
            None,
        )
        .await;
    assert_eq!(hold.status(), StatusCode::NO_CONTENT);

    let policies = json!({"policies": [{"record_type": "contacts", "basis": "inactivity", "after_days": 30, "action": "erase"}]});
    let resp = app
        .request(
            Method::PUT,
            "/v1/retention-policies",
            Some(&admin.access),
            Some(&policies),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let bad = json!({"policies": [{"record_type": "orders", "basis": "forever", "after_days": 0, "action": "shred"}]});
    let body = assert_problem(
        app.request(
            Method::PUT,
            "/v1/retention-policies",
            Some(&admin.access),
            Some(&bad),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(body["errors"].as_array().unwrap().len(), 4);
    let read: Value = app
        .get("/v1/retention-policies", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read, policies);

    // Nothing is due yet.
    let run: Value = app
        .post("/v1/retention/run", &admin.access, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(run, json!({"erased": [], "redacted": [], "held": []}));

    app.clock.advance(Duration::days(31));
    let admin = app
        .session(&admin.tenant, &admin.email, &admin.password)
        .await;
    // Activity within the period keeps a contact.
    app.create("/v1/orders", &admin.access, json!({"contact_id": active["id"], "currency": "EUR", "lines": [{"description": "x", "quantity": 1, "unit_price_minor": 1}]})).await;
    let run: Value = app
        .post("/v1/retention/run", &admin.access, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(run["erased"], json!([stale["id"]]));
    assert_eq!(run["held"], json!([held["id"]]));
    assert_problem(
        app.get(
            &format!("/v1/contacts/{}", stale["id"].as_str().unwrap()),
            &admin.access,
        )
        .await,
        404,
        "contact_not_found",
    )
    .await;
    assert_eq!(
        app.get(
            &format!("/v1/contacts/{}", held["id"].as_str().unwrap()),
            &admin.access
        )
        .await
        .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get(
            &format!("/v1/contacts/{}", active["id"].as_str().unwrap()),
            &admin.access
        )
        .await
        .status(),
        StatusCode::OK
    );
    // Same trail as a manual erasure: audit entry, suppression.
    let audit: Value = app
        .get(
            &format!(
                "/v1/audit-events?action=contact.erased&object_id={}",
                stale["id"].as_str().unwrap()
            ),
            &admin.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["data"].as_array().unwrap().len(), 1);
    let check: Value = app
        .post(
            "/v1/suppression/check",
            &admin.access,
            &json!({"emails": ["stale@example.org"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(check["results"][0]["suppressed"], true);

    // The scheduled job (and `crm retention run`) applies every tenant's policies.
    let other = app.new_tenant().await;
    let resp = app
        .request(Method::PUT, "/v1/retention-policies", Some(&other.access), Some(&json!({"policies": [{"record_type": "contacts", "basis": "age", "after_days": 10, "action": "redact"}]})))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let old = app
        .create(
            "/v1/contacts",
            &other.access,
            json!({"first_name": "Ageing", "email": "ageing@example.org"}),
        )
        .await;
    app.clock.advance(Duration::days(11));
    let db = crm_e2e::open_db(&app).await;
    let vault = crm_api::keys::load_vault(&app.key_dir, false).unwrap();
    let reports = crm_domain::retention::run_all(
        &db,
        &vault,
        crm_domain::clock::Clock::now(app.clock.as_ref()),
    )
    .await
    .unwrap();
    let redacted: Vec<_> = reports.iter().flat_map(|r| r.redacted.clone()).collect();
    assert_eq!(redacted.len(), 1);
    assert_eq!(redacted[0].to_string(), old["id"].as_str().unwrap());
    db.close().await.ok();
    let other = app
        .session(&other.tenant, &other.email, &other.password)
        .await;
    let c: Value = app
        .get(
            &format!("/v1/contacts/{}", old["id"].as_str().unwrap()),
            &other.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(c["first_name"], "[redacted]");
});

both!(deleting_a_contact_keeps_its_requests_detached, |app| {
    let admin = app.new_tenant().await;
    let contact = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"email": "leaving@example.org"}),
        )
        .await;
    let request = app
        .create(
            "/v1/dsr",
            &admin.access,
            json!({"kind": "objection", "contact_id": contact["id"]}),
        )
        .await;
    let purpose = app
        .post(
            "/v1/purposes",
            &admin.access,
            &json!({"key": "calls", "name": "Sales calls"}),
        )
        .await;
    assert_eq!(purpose.status(), StatusCode::CREATED);
    let consent = json!({"purpose": "calls", "status": "granted", "lawful_basis": "legitimate_interests", "channel": "phone"});
    assert_eq!(
        app.post(
            &format!("/v1/contacts/{}/consents", contact["id"].as_str().unwrap()),
            &admin.access,
            &consent
        )
        .await
        .status(),
        StatusCode::CREATED
    );
    let resp = app
        .delete(
            &format!("/v1/contacts/{}", contact["id"].as_str().unwrap()),
            &admin.access,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let kept: Value = app
        .get(
            &format!("/v1/dsr/{}", request["id"].as_str().unwrap()),
            &admin.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(kept["contact_id"], Value::Null);
    assert_eq!(kept["kind"], "objection");
});
