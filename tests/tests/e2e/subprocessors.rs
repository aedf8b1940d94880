//! The sub-processor register: platform admins keep it, every tenant reads it and its history,
//! exports name the active ones as recipients.

use chrono::Duration;
use crm_e2e::{assert_invalid, assert_problem, both};
use reqwest::StatusCode;
use serde_json::{Value, json};

both!(sub_processor_register, |app| {
    let platform = app.platform_admin().await;
    let admin = app.new_tenant().await;
    let viewer = app.new_user(&admin, "viewer").await;
    let entry = json!({
        "name": "Mailcloud Ltd",
        "purpose": "Sending transactional e-mail",
        "data_categories": ["contact_details", "identity"],
        "location": "EU (Ireland)",
        "transfer_safeguards": "None needed: processing stays in the EEA"
    });
    assert_problem(
        app.post("/v1/sub-processors", &admin.access, &entry).await,
        403,
        "forbidden",
    )
    .await;
    let body = assert_problem(
        app.post(
            "/v1/sub-processors",
            &platform.access,
            &json!({"name": "", "data_categories": [], "since": "soon"}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    assert!(body["errors"].as_array().unwrap().len() >= 5);
    let created = app
        .create("/v1/sub-processors", &platform.access, entry.clone())
        .await;
    assert_eq!(created["active"], true);
    let path = format!("/v1/sub-processors/{}", created["id"].as_str().unwrap());

    let list: Value = app
        .get("/v1/sub-processors", &viewer.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["name"], "Mailcloud Ltd");
    assert_eq!(
        list["data"][0]["data_categories"],
        json!(["contact_details", "identity"])
    );

    // Exports name the active sub-processors as recipients.
    let contact = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"email": "recipient-check@example.org"}),
        )
        .await;
    let export: Value = app
        .get(
            &format!("/v1/contacts/{}/export", contact["id"].as_str().unwrap()),
            &admin.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        export["processing"]["recipients"]["sub_processors"][0]["name"],
        "Mailcloud Ltd"
    );

    assert_problem(
        app.patch(&path, &admin.access, &json!({"location": "US"}))
            .await,
        403,
        "forbidden",
    )
    .await;
    assert_invalid(
        app.patch(
            &path,
            &platform.access,
            &json!({"until": "2000-01-01T00:00:00Z"}),
        )
        .await,
        "/until",
        "before_since",
    )
    .await;
    assert_invalid(
        app.patch(&path, &platform.access, &json!({"name": null}))
            .await,
        "/name",
        "not_nullable",
    )
    .await;
    let until = (chrono::Utc::now() + Duration::days(30)).to_rfc3339();
    let ended: Value = app
        .patch(&path, &platform.access, &json!({"until": until}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ended["active"], true, "still engaged until the end date");
    app.clock.advance(Duration::days(31));
    let platform = app.platform_admin().await;
    let admin = app
        .session(&admin.tenant, &admin.email, &admin.password)
        .await;
    let list: Value = app
        .get("/v1/sub-processors", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["active"], false);
    let export: Value = app
        .get(
            &format!("/v1/contacts/{}/export", contact["id"].as_str().unwrap()),
            &admin.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        export["processing"]["recipients"]["sub_processors"],
        json!([])
    );

    let history: Value = app
        .get("/v1/sub-processors/changes", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["change"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["added", "removed"]);
    assert!(history["data"][1]["snapshot"]["until"].is_string());
    assert_eq!(
        app.get("/v1/sub-processors", &platform.access)
            .await
            .status(),
        StatusCode::OK
    );
});
