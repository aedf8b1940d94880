//! Single sign-on against a real OpenID provider (npm `oidc-provider` on 127.0.0.1).

use crm_e2e::{
    Authenticator, OIDC_CLIENT_ID, OIDC_REDIRECT_URI, OidcProvider, TestApp, assert_problem, both,
    dump_all_rows, open_db, random_hex,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crm_e2e::claims_of;

async fn put_connection(app: &TestApp, token: &str, body: &Value) -> (u16, Value) {
    let resp = app
        .request(Method::PUT, "/v1/sso/connection", Some(token), Some(body))
        .await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Starts a sign-in, lets the provider log `who` in, and returns the redirect's query.
async fn authorize(app: &TestApp, idp: &OidcProvider, tenant: &str, who: &str) -> Value {
    let (url, query) = authorize_with(app, idp, tenant, who, |u| u).await;
    let _ = url;
    query
}

async fn authorize_with(
    app: &TestApp,
    idp: &OidcProvider,
    tenant: &str,
    who: &str,
    tamper: impl FnOnce(String) -> String,
) -> (String, Value) {
    let resp = app
        .request(
            Method::GET,
            &format!("/v1/auth/sso/{tenant}/start"),
            None,
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let start: Value = resp.json().await.unwrap();
    let url = start["authorization_url"].as_str().unwrap().to_owned();
    let query = idp.authorize(&tamper(url.clone()), who).await;
    (url, query)
}

async fn callback(app: &TestApp, tenant: &str, body: Value) -> reqwest::Response {
    app.request(
        Method::POST,
        &format!("/v1/auth/sso/{tenant}/callback"),
        None,
        Some(&body),
    )
    .await
}

both!(sso_signs_in_links_provisions_and_refuses, |app| {
    let secret = format!("oidc-secret-{}", random_hex(24));
    let idp = OidcProvider::start(
        &secret,
        json!({
            "alice": {"email": "alice@acme.test", "email_verified": true, "name": "Alice A"},
            "bob": {"email": "bob@acme.test", "email_verified": false},
            "mallory": {"email": "mallory@evil.test", "email_verified": true},
            "newbie": {"email": "newbie@acme.test", "email_verified": true, "name": "New Bie"},
        }),
        None,
    )
    .await;
    let admin = app.new_tenant().await;
    let tenant = admin.tenant.clone();
    for email in ["alice@acme.test", "bob@acme.test"] {
        app.create(
            "/v1/users",
            &admin.access,
            json!({"email": email, "role": "member", "password": crm_e2e::PASSWORD}),
        )
        .await;
    }

    // No connection yet.
    assert_problem(
        app.request(
            Method::GET,
            &format!("/v1/auth/sso/{tenant}/start"),
            None,
            None,
        )
        .await,
        404,
        "sso_connection_not_found",
    )
    .await;
    // Bad configuration is refused field by field.
    let (st, problem) = put_connection(
        &app,
        &admin.access,
        &json!({"issuer": "ftp://idp", "client_id": "", "redirect_uri": OIDC_REDIRECT_URI, "allowed_domains": ["acme.test", 7], "default_role": "root"}),
    )
    .await;
    assert_eq!(st, 422, "{problem}");
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        [
            "/issuer",
            "/client_id",
            "/allowed_domains/1",
            "/default_role"
        ]
    );
    // A new connection needs its secret.
    let (st, problem) = put_connection(
        &app,
        &admin.access,
        &json!({"issuer": idp.issuer, "client_id": OIDC_CLIENT_ID, "redirect_uri": OIDC_REDIRECT_URI}),
    )
    .await;
    assert_eq!(
        (st, &problem["errors"][0]["pointer"]),
        (422, &json!("/client_secret"))
    );
    let connection = json!({
        "issuer": idp.issuer,
        "client_id": OIDC_CLIENT_ID,
        "client_secret": secret,
        "redirect_uri": OIDC_REDIRECT_URI,
        "allowed_domains": ["acme.test"],
        "jit_provisioning": false,
        "default_role": "viewer",
    });
    let (st, created) = put_connection(&app, &admin.access, &connection).await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["client_secret_set"], true);
    assert!(created.get("client_secret").is_none());
    // The secret is stored encrypted: it is in no row of any table.
    let db = open_db(&app).await;
    for (table, row) in dump_all_rows(&app).await {
        assert!(!row.contains(&secret), "{table} holds the client secret");
    }
    drop(db);
    // Only the tenant's admin manages it; another tenant sees its own (none).
    let member = app.new_user(&admin, "member").await;
    assert_problem(
        app.get("/v1/sso/connection", &member.access).await,
        403,
        "forbidden",
    )
    .await;
    let stranger = app.new_tenant().await;
    assert_problem(
        app.get("/v1/sso/connection", &stranger.access).await,
        404,
        "sso_connection_not_found",
    )
    .await;

    // A verified e-mail in an allowed domain links to the existing account.
    let (url, redirect) = authorize_with(&app, &idp, &tenant, "alice", |u| u).await;
    assert!(url.starts_with(&format!("{}/auth?", idp.base_url)), "{url}");
    for param in [
        "code_challenge_method=S256",
        "code_challenge=",
        "nonce=",
        "state=",
        "scope=openid",
    ] {
        assert!(url.contains(param), "{url} lacks {param}");
    }
    assert!(redirect["code"].is_string(), "{redirect}");
    let body =
        json!({"code": redirect["code"], "state": redirect["state"], "iss": redirect["iss"]});
    let resp = callback(&app, &tenant, body.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let tokens: Value = resp.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(claims_of(access)["amr"], json!(["sso"]));
    let me: Value = app.get("/v1/me", access).await.json().await.unwrap();
    assert_eq!(me["email"], "alice@acme.test");
    assert_eq!(me["role"], "member");

    // The same code and state again: refused (state and code are single use).
    assert_problem(
        callback(&app, &tenant, body).await,
        401,
        "invalid_sso_state",
    )
    .await;
    // A state the service never issued.
    let redirect = authorize(&app, &idp, &tenant, "alice").await;
    assert_problem(
        callback(
            &app,
            &tenant,
            json!({"code": redirect["code"], "state": "forged"}),
        )
        .await,
        401,
        "invalid_sso_state",
    )
    .await;
    // The state belongs to the tenant that started the sign-in.
    assert_problem(
        callback(
            &app,
            &stranger.tenant,
            json!({"code": redirect["code"], "state": redirect["state"]}),
        )
        .await,
        404,
        "sso_connection_not_found",
    )
    .await;
    // An `iss` in the redirect naming another issuer (mix-up) is refused.
    let redirect = authorize(&app, &idp, &tenant, "alice").await;
    assert_problem(
        callback(
            &app,
            &tenant,
            json!({"code": redirect["code"], "state": redirect["state"], "iss": "http://127.0.0.1:9/evil"}),
        )
        .await,
        401,
        "sso_failed",
    )
    .await;
    // A nonce other than the one the service sent: the ID token is refused.
    let (_, redirect) = authorize_with(&app, &idp, &tenant, "alice", |u| {
        let mut url = url::Url::parse(&u).unwrap();
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "nonce" {
                    "attacker-nonce".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        url.to_string()
    })
    .await;
    assert_problem(
        callback(
            &app,
            &tenant,
            json!({"code": redirect["code"], "state": redirect["state"]}),
        )
        .await,
        401,
        "sso_failed",
    )
    .await;

    // An unverified e-mail never links, nor does a verified one outside the allowed domains.
    for who in ["bob", "mallory"] {
        let redirect = authorize(&app, &idp, &tenant, who).await;
        assert_problem(
            callback(
                &app,
                &tenant,
                json!({"code": redirect["code"], "state": redirect["state"]}),
            )
            .await,
            401,
            "sso_not_linkable",
        )
        .await;
    }
    // No account and no provisioning.
    let redirect = authorize(&app, &idp, &tenant, "newbie").await;
    assert_problem(
        callback(
            &app,
            &tenant,
            json!({"code": redirect["code"], "state": redirect["state"]}),
        )
        .await,
        401,
        "sso_no_account",
    )
    .await;
    // With provisioning on (the stored secret is kept when none is sent), the account is made
    // with the default role; mallory still is not.
    let mut update = connection.clone();
    update["jit_provisioning"] = json!(true);
    update.as_object_mut().unwrap().remove("client_secret");
    let (st, updated) = put_connection(&app, &admin.access, &update).await;
    assert_eq!(
        (st, &updated["jit_provisioning"]),
        (200, &json!(true)),
        "{updated}"
    );
    let redirect = authorize(&app, &idp, &tenant, "newbie").await;
    let resp = callback(
        &app,
        &tenant,
        json!({"code": redirect["code"], "state": redirect["state"]}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let tokens: Value = resp.json().await.unwrap();
    let me: Value = app
        .get("/v1/me", tokens["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (me["email"].as_str(), me["role"].as_str()),
        (Some("newbie@acme.test"), Some("viewer"))
    );
    assert_eq!(me["display_name"], "New Bie");
    let redirect = authorize(&app, &idp, &tenant, "mallory").await;
    assert_problem(
        callback(
            &app,
            &tenant,
            json!({"code": redirect["code"], "state": redirect["state"]}),
        )
        .await,
        401,
        "sso_not_linkable",
    )
    .await;

    // With MFA required, SSO is only the first factor.
    let mut admin_key = app.register_authenticator(&admin.access).await;
    let admin_access = app.step_up_with(&admin.access, &mut admin_key).await;
    let resp = app
        .request(
            Method::PUT,
            "/v1/tenant/security",
            Some(&admin_access),
            Some(&json!({"mfa_required": true})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let redirect = authorize(&app, &idp, &tenant, "alice").await;
    let resp = callback(
        &app,
        &tenant,
        json!({"code": redirect["code"], "state": redirect["state"]}),
    )
    .await;
    let ticket: Value = resp.json().await.unwrap();
    assert_eq!(ticket["mfa"], "enrol", "{ticket}");
    assert!(ticket.get("access_token").is_none());
    let mut alice_key = Authenticator::new();
    let tokens = app.complete_mfa(&ticket, &mut alice_key).await;
    assert_eq!(
        claims_of(tokens["access_token"].as_str().unwrap())["amr"],
        json!(["sso", "hwk", "mfa"])
    );
});

both!(sso_refuses_a_provider_with_another_issuer, |app| {
    let secret = format!("oidc-secret-{}", random_hex(24));
    // Served at one address, claiming to be another issuer.
    let idp = OidcProvider::start(
        &secret,
        json!({"alice": {"email": "alice@acme.test", "email_verified": true}}),
        Some("http://127.0.0.1:9/not-this-one"),
    )
    .await;
    let admin = app.new_tenant().await;
    let (st, _) = put_connection(
        &app,
        &admin.access,
        &json!({
            "issuer": idp.base_url,
            "client_id": OIDC_CLIENT_ID,
            "client_secret": secret,
            "redirect_uri": OIDC_REDIRECT_URI,
            "allowed_domains": ["acme.test"],
        }),
    )
    .await;
    assert_eq!(st, 201);
    assert_problem(
        app.request(
            Method::GET,
            &format!("/v1/auth/sso/{}/start", admin.tenant),
            None,
            None,
        )
        .await,
        502,
        "sso_provider_error",
    )
    .await;
});

both!(sso_never_calls_internal_addresses, |app| {
    let admin = app.new_tenant().await;
    // Refused when configured, before any connection is made: no packet goes to these.
    for issuer in [
        "http://10.255.255.1",
        "http://169.254.169.254",
        "http://[fd00:ec2::254]",
    ] {
        let (st, problem) = put_connection(
            &app,
            &admin.access,
            &json!({
                "issuer": issuer,
                "client_id": OIDC_CLIENT_ID,
                "client_secret": "irrelevant-secret",
                "redirect_uri": OIDC_REDIRECT_URI,
            }),
        )
        .await;
        assert_eq!(st, 422, "{problem}");
        assert_eq!(problem["errors"][0]["pointer"], "/issuer");
        assert_eq!(problem["errors"][0]["code"], "url_not_allowed");
    }
    assert_problem(
        app.get("/v1/sso/connection", &admin.access).await,
        404,
        "sso_connection_not_found",
    )
    .await;
});

// Two nodes on one database: every sign-in started on one finishes on the other (SSO,
// WebAuthn ceremonies, refresh), because all their state lives in the database.
both!(sign_ins_cross_nodes, |app| {
    let (node2, node2_handle) = app.second_node().await;
    let secret = format!("oidc-secret-{}", random_hex(24));
    let idp = OidcProvider::start(
        &secret,
        json!({"alice": {"email": "alice@acme.test", "email_verified": true}}),
        None,
    )
    .await;
    let admin = app.new_tenant().await;
    app.create(
        "/v1/users",
        &admin.access,
        json!({"email": "alice@acme.test", "role": "member", "password": crm_e2e::PASSWORD}),
    )
    .await;
    let (st, _) = put_connection(
        &app,
        &admin.access,
        &json!({"issuer": idp.issuer, "client_id": OIDC_CLIENT_ID, "client_secret": secret,
                "redirect_uri": OIDC_REDIRECT_URI, "allowed_domains": ["acme.test"]}),
    )
    .await;
    assert_eq!(st, 201);
    // SSO: started on node 1, finished on node 2.
    let redirect = authorize(&app, &idp, &admin.tenant, "alice").await;
    let resp = app
        .client
        .post(format!("{node2}/v1/auth/sso/{}/callback", admin.tenant))
        .json(&json!({"code": redirect["code"], "state": redirect["state"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let tokens: Value = resp.json().await.unwrap();
    // Refresh on node 1; the spent token is refused on node 2.
    let refreshed = app
        .call(
            "/v1/auth/refresh",
            None,
            &json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(refreshed.0, 200);
    let replay = app
        .client
        .post(format!("{node2}/v1/auth/refresh"))
        .json(&json!({"refresh_token": tokens["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    // A WebAuthn ceremony started on node 2 finishes on node 1.
    let mut key = app.register_authenticator(&admin.access).await;
    let start: Value = app
        .client
        .post(format!("{node2}/v1/auth/step-up/start"))
        .bearer_auth(&admin.access)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let assertion = key.assert(&start["options"]);
    let (st, done) = app
        .call(
            "/v1/auth/step-up/finish",
            Some(&admin.access),
            &json!({"ceremony_id": start["ceremony_id"], "credential": assertion}),
        )
        .await;
    assert_eq!(st, 200, "{done}");
    // Logout on node 2 ends the session on node 1 at once.
    let out = app
        .client
        .post(format!("{node2}/v1/auth/logout"))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert_problem(app.get("/v1/me", &admin.access).await, 401, "session_ended").await;
    node2_handle.stop(false).await;
});
