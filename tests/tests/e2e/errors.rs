//! The framework's own failures are problem documents too; the spec is served and complete.

use crm_e2e::{assert_problem, both};
use reqwest::StatusCode;
use serde_json::{Value, json};

both!(framework_errors_are_problems, |app| {
    let s = app.new_tenant().await;
    let url = app.url("/v1/contacts");

    let resp = app
        .client
        .post(&url)
        .bearer_auth(&s.access)
        .header("content-type", "application/json")
        .body("{\"first_name\": ")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 400, "malformed_json").await;
    let resp = app
        .client
        .post(&url)
        .bearer_auth(&s.access)
        .header("content-type", "application/json")
        .body("")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 400, "malformed_json").await;
    // Nesting deeper than 128 levels is refused before anything looks at it (no stack
    // exhaustion, no 500), also in a body of any shape.
    let deep = format!(
        "{{\"first_name\": {}1{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let resp = app
        .client
        .post(&url)
        .bearer_auth(&s.access)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(resp, 400, "malformed_json").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("recursion limit"),
        "{problem}"
    );
    let resp = app
        .client
        .post(&url)
        .bearer_auth(&s.access)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 415, "unsupported_media_type").await;
    let resp = app
        .client
        .post(&url)
        .bearer_auth(&s.access)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 415, "unsupported_media_type").await;
    let huge = format!("{{\"first_name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let resp = app
        .client
        .post(&url)
        .bearer_auth(&s.access)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_problem(resp, 413, "payload_too_large").await;

    let resp = app
        .client
        .put(&url)
        .bearer_auth(&s.access)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert_problem(resp, 405, "method_not_allowed").await;
    let resp = app
        .client
        .put(app.url(&format!("/v1/contacts/{}", uuid::Uuid::now_v7())))
        .bearer_auth(&s.access)
        .send()
        .await
        .unwrap();
    assert_problem(resp, 405, "method_not_allowed").await;
    assert_problem(
        app.client
            .get(app.url("/v1/nothing-here"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_problem(
        app.client.get(app.url("/nowhere")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;

    // Nothing was written by the refused requests.
    let list: Value = app
        .get("/v1/contacts", &s.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);

    // Every response carries a request id and the security headers.
    let resp = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-request-id"], "trace-123");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let resp = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.headers()["x-request-id"], "bad id with spaces");
});

both!(spec_and_docs_are_served, |app| {
    let resp = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let served: Value = resp.json().await.unwrap();
    assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/contacts",
        "/v1/companies",
        "/v1/orders",
        "/v1/contacts/{id}",
        "/v1/auth/login",
    ] {
        assert!(served["paths"][path].is_object(), "{path} in spec");
    }
    // Served and generated specs are the same document.
    let generated = serde_json::to_value(crm_api::openapi_spec()).unwrap();
    assert_eq!(served, generated);
    // Every operation documents its problems and, unless public, its security.
    let public = [
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/v1/oauth/token",
        // Authenticated by an MFA ticket, a ceremony or the provider's answer, not a token.
        "/v1/auth/mfa/enrol/start",
        "/v1/auth/mfa/enrol/finish",
        "/v1/auth/mfa/webauthn/start",
        "/v1/auth/mfa/webauthn/finish",
        "/v1/auth/passkey/start",
        "/v1/auth/passkey/finish",
        "/v1/auth/sso/{tenant}/start",
        "/v1/auth/sso/{tenant}/callback",
        "/health",
        "/.well-known/jwks.json",
    ];
    for (path, item) in served["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.contains_key("500"),
                "{method} {path} documents 500"
            );
            if !public.contains(&path.as_str()) {
                assert!(op["security"].is_array(), "{method} {path} is secured");
                assert!(
                    responses.contains_key("401"),
                    "{method} {path} documents 401"
                );
            }
            for param in op["parameters"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if param["in"] == "query" {
                    let ty = &param["schema"]["type"];
                    assert!(
                        !ty.is_array(),
                        "optional query parameter {} of {path} is not nullable: {ty}",
                        param["name"]
                    );
                }
            }
        }
    }
    // Personal data is marked, driven by the domain's registry.
    let contact = &served["components"]["schemas"]["ContactOut"]["properties"];
    let shown = crm_domain::personal_data::exported_columns("contacts");
    for (column, category) in crm_domain::personal_data::personal_columns("contacts") {
        if !shown.contains(&column) {
            // Never in an answer (the wrapped data key, the blind index).
            assert!(contact.get(column).is_none(), "ContactOut.{column}");
            continue;
        }
        assert_eq!(
            contact[column]["x-personal-data"]["category"],
            category.as_str(),
            "ContactOut.{column}"
        );
    }
    assert!(contact["id"].get("x-personal-data").is_none());
    let docs = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    let html = docs.text().await.unwrap();
    assert!(
        html.contains("/docs/docs.js") && !html.contains("https://"),
        "assets come from the binary"
    );
    let js = app
        .client
        .get(app.url("/docs/docs.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), StatusCode::OK);
    assert!(js.text().await.unwrap().contains("openapi.json"));
});
