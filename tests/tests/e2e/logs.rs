//! The log has one line per request and never personal data or secrets.

use crm_e2e::both;
use serde_json::{Value, json};

both!(logs_hold_no_personal_data_or_secrets, |app| {
    let capture = crm_e2e::capture_logs();
    let s = app.new_tenant().await;
    let email = "privacy-probe@example.com";
    let contact = app
        .create("/v1/contacts", &s.access, json!({"first_name": "Zaphodina", "last_name": "Beeblebroxia", "email": email, "phone": "+44 1632 960123"}))
        .await;
    let _ = app
        .get(
            &format!("/v1/contacts?email={email}&q=Zaphodina"),
            &s.access,
        )
        .await;
    let _ = app
        .login(&s.tenant, &s.email, "hunter2 but much longer secret")
        .await;
    let refreshed: Value = app
        .request(
            reqwest::Method::POST,
            "/v1/auth/refresh",
            None,
            Some(&json!({"refresh_token": s.refresh})),
        )
        .await
        .json()
        .await
        .unwrap();
    let _ = app
        .post("/v1/contacts", &s.access, &json!({"email": email}))
        .await;

    let lines = capture.lines();
    let id = contact["id"].as_str().unwrap();
    let request_lines: Vec<&String> = lines.iter().filter(|l| l.contains("request_id=")).collect();
    assert!(
        request_lines
            .iter()
            .any(|l| l.contains("method=POST route=/v1/contacts status=201")),
        "one line per request with method, route and status: {request_lines:#?}"
    );
    assert!(
        request_lines
            .iter()
            .any(|l| l.contains("route=/v1/contacts status=409")),
        "failed requests are logged too"
    );
    let secrets = [
        email,
        "Zaphodina",
        "Beeblebroxia",
        "1632 960123",
        "hunter2",
        crm_e2e::PASSWORD,
        s.email.as_str(),
        s.access.as_str(),
        s.refresh.as_str(),
        refreshed["access_token"].as_str().unwrap(),
        refreshed["refresh_token"].as_str().unwrap(),
        app.admin_password.as_str(),
    ];
    for line in &lines {
        for secret in secrets {
            assert!(!line.contains(secret), "log line leaks {secret:?}: {line}");
        }
    }
    // Ids are not personal data by themselves, but the access log does not even need them.
    assert!(
        request_lines.iter().all(|l| !l.contains(id)),
        "routes are logged as templates"
    );
});
