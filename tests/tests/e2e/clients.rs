//! Integration clients: client credentials, scopes on every route, rotation and revocation.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use crm_e2e::{TestApp, assert_invalid, assert_problem, both};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn token_request(
    app: &TestApp,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> reqwest::Response {
    let mut req = app.client.post(app.url("/v1/oauth/token")).form(form);
    if let Some((id, secret)) = basic {
        req = req.header(
            "authorization",
            format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))),
        );
    }
    req.send().await.unwrap()
}

async fn oauth_error(resp: reqwest::Response, status: u16, error: &str) {
    assert_eq!(resp.status().as_u16(), status);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], error, "{body}");
}

both!(client_credentials_and_scopes, |app| {
    let admin = app.new_tenant().await;
    let member = app.new_user(&admin, "member").await;
    let stranger = app.new_tenant().await;
    let contact = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"email": "partner-visible@example.org"}),
        )
        .await;
    let foreign = app
        .create(
            "/v1/contacts",
            &stranger.access,
            json!({"email": "foreign@example.org"}),
        )
        .await;

    assert_problem(
        app.post(
            "/v1/integration-clients",
            &member.access,
            &json!({"name": "x", "scopes": ["contacts:read"]}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    let body = assert_problem(
        app.post(
            "/v1/integration-clients",
            &admin.access,
            &json!({"name": "", "scopes": ["contacts:read", "users:admin", "contacts:read"]}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(body["errors"].as_array().unwrap().len(), 3);

    let resp = app
        .post("/v1/integration-clients", &admin.access, &json!({"name": "Mailer", "scopes": ["contacts:read", "consents:read", "suppression:read"]}))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.unwrap();
    let client_id = created["client_id"].as_str().unwrap().to_owned();
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let listed: Value = app
        .get("/v1/integration-clients", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        listed["data"][0].get("client_secret").is_none(),
        "the secret is shown once"
    );
    assert!(!listed.to_string().contains(&secret));

    // RFC 6749 errors.
    oauth_error(
        token_request(
            &app,
            &[("grant_type", "client_credentials")],
            Some((&client_id, "wrong")),
        )
        .await,
        401,
        "invalid_client",
    )
    .await;
    oauth_error(
        token_request(
            &app,
            &[("grant_type", "client_credentials")],
            Some(("crm_unknown", &secret)),
        )
        .await,
        401,
        "invalid_client",
    )
    .await;
    oauth_error(
        token_request(
            &app,
            &[("grant_type", "password")],
            Some((&client_id, &secret)),
        )
        .await,
        400,
        "unsupported_grant_type",
    )
    .await;
    oauth_error(
        token_request(&app, &[], Some((&client_id, &secret))).await,
        400,
        "invalid_request",
    )
    .await;
    oauth_error(
        token_request(
            &app,
            &[
                ("grant_type", "client_credentials"),
                ("scope", "contacts:write"),
            ],
            Some((&client_id, &secret)),
        )
        .await,
        400,
        "invalid_scope",
    )
    .await;
    let json_body = app
        .client
        .post(app.url("/v1/oauth/token"))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    oauth_error(json_body, 400, "invalid_request").await;

    // Credentials in the form, a narrower scope.
    let resp = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &client_id),
            ("client_secret", &secret),
            ("scope", "contacts:read"),
        ],
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let narrow: Value = resp.json().await.unwrap();
    assert_eq!(narrow["scope"], "contacts:read");
    let narrow_token = narrow["access_token"].as_str().unwrap().to_owned();
    let check = app
        .post(
            "/v1/suppression/check",
            &narrow_token,
            &json!({"emails": ["a@example.org"]}),
        )
        .await;
    assert_problem(check, 403, "insufficient_scope").await;

    // HTTP Basic, all scopes.
    let resp = token_request(
        &app,
        &[("grant_type", "client_credentials")],
        Some((&client_id, &secret)),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let tokens: Value = resp.json().await.unwrap();
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["typ"], "at+jwt");
    assert!(tokens["expires_in"].as_i64().unwrap() <= 900);

    // What the scopes allow, and nothing else.
    let list: Value = app.get("/v1/contacts", &token).await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.get(
            &format!("/v1/contacts/{}/consents", contact["id"].as_str().unwrap()),
            &token
        )
        .await
        .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.post(
            "/v1/suppression/check",
            &token,
            &json!({"emails": ["a@example.org"]})
        )
        .await
        .status(),
        StatusCode::OK
    );
    assert_problem(
        app.post("/v1/contacts", &token, &json!({"email": "new@example.org"}))
            .await,
        403,
        "insufficient_scope",
    )
    .await;
    assert_problem(
        app.get("/v1/orders", &token).await,
        403,
        "insufficient_scope",
    )
    .await;
    assert_problem(
        app.get("/v1/companies", &token).await,
        403,
        "insufficient_scope",
    )
    .await;
    for path in [
        "/v1/users",
        "/v1/me",
        "/v1/audit-events",
        "/v1/dsr",
        "/v1/integration-clients",
        "/v1/tenants",
    ] {
        assert_problem(app.get(path, &token).await, 403, "forbidden").await;
    }
    assert_problem(
        app.get(
            &format!("/v1/contacts/{}/export", contact["id"].as_str().unwrap()),
            &token,
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    assert_problem(
        app.get(
            &format!("/v1/contacts/{}", foreign["id"].as_str().unwrap()),
            &token,
        )
        .await,
        404,
        "contact_not_found",
    )
    .await;

    // Exports name the clients that receive the person's data.
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
        export["processing"]["recipients"]["integration_clients"][0]["name"],
        "Mailer"
    );

    // A writing client is audited as itself.
    let writer: Value = app
        .post(
            "/v1/integration-clients",
            &admin.access,
            &json!({"name": "Importer", "scopes": ["contacts:write", "consents:write"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let wtoken: Value = token_request(
        &app,
        &[("grant_type", "client_credentials")],
        Some((
            writer["client_id"].as_str().unwrap(),
            writer["client_secret"].as_str().unwrap(),
        )),
    )
    .await
    .json()
    .await
    .unwrap();
    let wtoken = wtoken["access_token"].as_str().unwrap();
    let made = app
        .create(
            "/v1/contacts",
            wtoken,
            json!({"email": "imported@example.org"}),
        )
        .await;
    let audit: Value = app
        .get(
            &format!(
                "/v1/audit-events?object_id={}",
                made["id"].as_str().unwrap()
            ),
            &admin.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["data"][0]["actor_kind"], "client");
    assert_eq!(audit["data"][0]["actor_id"], writer["id"]);
    assert_invalid(
        app.post("/v1/contacts", wtoken, &json!({"email": "bad"}))
            .await,
        "/email",
        "invalid_email",
    )
    .await;

    // Rotation: the old secret stops working at once.
    let rotated: Value = app
        .post(
            &format!("/v1/integration-clients/{id}/rotate-secret"),
            &admin.access,
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let new_secret = rotated["client_secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    oauth_error(
        token_request(
            &app,
            &[("grant_type", "client_credentials")],
            Some((&client_id, &secret)),
        )
        .await,
        401,
        "invalid_client",
    )
    .await;
    assert_eq!(
        token_request(
            &app,
            &[("grant_type", "client_credentials")],
            Some((&client_id, new_secret))
        )
        .await
        .status(),
        StatusCode::OK
    );

    // Revocation: live tokens are refused on their next use.
    let resp = app
        .request(
            Method::DELETE,
            &format!("/v1/integration-clients/{id}"),
            Some(&admin.access),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_problem(app.get("/v1/contacts", &token).await, 401, "client_revoked").await;
    oauth_error(
        token_request(
            &app,
            &[("grant_type", "client_credentials")],
            Some((&client_id, new_secret)),
        )
        .await,
        401,
        "invalid_client",
    )
    .await;
    assert_problem(
        app.post(
            &format!("/v1/integration-clients/{id}/rotate-secret"),
            &admin.access,
            &json!({}),
        )
        .await,
        409,
        "client_revoked",
    )
    .await;
    // Another tenant's admin cannot see or touch the client.
    assert_problem(
        app.get(&format!("/v1/integration-clients/{id}"), &stranger.access)
            .await,
        404,
        "integration_client_not_found",
    )
    .await;
    assert_problem(
        app.request(
            Method::DELETE,
            &format!("/v1/integration-clients/{id}"),
            Some(&stranger.access),
            None,
        )
        .await,
        404,
        "integration_client_not_found",
    )
    .await;
});
