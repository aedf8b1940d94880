//! WebAuthn with a software authenticator: registration, second factor, passkey sign-in,
//! step-up, the MFA policy and its enrolment tickets.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Duration;
use crm_domain::clock::Clock;
use crm_e2e::{Authenticator, Session, TestApp, assert_problem, both};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crm_e2e::claims_of;

/// Starts a ceremony and returns (ceremony_id, options).
async fn start(app: &TestApp, path: &str, token: Option<&str>, body: Value) -> (Value, Value) {
    let (st, out) = app.call(path, token, &body).await;
    assert_eq!(st, 200, "{path}: {out}");
    (out["ceremony_id"].clone(), out["options"].clone())
}

async fn login_ticket(app: &TestApp, s: &Session) -> Value {
    let resp = app.login(&s.tenant, &s.email, &s.password).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["mfa_ticket"].is_string(),
        "a ticket, not tokens: {body}"
    );
    assert!(body.get("access_token").is_none() && body.get("refresh_token").is_none());
    body
}

both!(credentials_second_factor_and_replays, |app| {
    let admin = app.new_tenant().await;
    let member = app.new_user(&admin, "member").await;

    // Requiring MFA needs a credential of your own first.
    assert_problem(
        app.request(
            Method::PUT,
            "/v1/tenant/security",
            Some(&admin.access),
            Some(&json!({"mfa_required": true})),
        )
        .await,
        409,
        "enrol_first",
    )
    .await;

    // Register, list, rename.
    let mut key = Authenticator::new();
    let (id, options) = start(
        &app,
        "/v1/me/webauthn/register/start",
        Some(&admin.access),
        json!({}),
    )
    .await;
    assert_eq!(options["publicKey"]["rp"]["id"], "localhost");
    let cred = key.register(&options);
    let (st, created) = app
        .call(
            "/v1/me/webauthn/register/finish",
            Some(&admin.access),
            &json!({"ceremony_id": id, "credential": cred, "name": "desk key"}),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["name"], "desk key");
    assert_eq!(created["sign_count"], 0);
    // The registration ceremony was spent.
    assert_problem(
        app.post(
            "/v1/me/webauthn/register/finish",
            &admin.access,
            &json!({"ceremony_id": id, "credential": cred}),
        )
        .await,
        401,
        "invalid_ceremony",
    )
    .await;
    let cred_path = format!(
        "/v1/me/webauthn/credentials/{}",
        created["id"].as_str().unwrap()
    );
    let renamed: Value = app
        .patch(&cred_path, &admin.access, &json!({"name": "YubiKey"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(renamed["name"], "YubiKey");
    // Another user does not see or touch it.
    let theirs: Value = app
        .get("/v1/me/webauthn/credentials", &member.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["data"], json!([]));
    assert_problem(
        app.delete(&cred_path, &member.access).await,
        404,
        "credential_not_found",
    )
    .await;
    // Bad input is refused field by field.
    let resp = app
        .post(
            "/v1/me/webauthn/register/finish",
            &admin.access,
            &json!({"ceremony_id": "nope", "credential": {"id": 1}}),
        )
        .await;
    let problem = assert_problem(resp, 422, "validation_failed").await;
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/ceremony_id", "/credential"]);

    // Now the tenant can require MFA; sessions without WebAuthn end at once.
    let (st, policy) = app
        .request(
            Method::PUT,
            "/v1/tenant/security",
            Some(&admin.access),
            Some(&json!({"mfa_required": true})),
        )
        .await
        .json::<Value>()
        .await
        .map(|v| (200, v))
        .unwrap();
    assert_eq!((st, &policy["mfa_required"]), (200, &json!(true)));
    assert_problem(app.get("/v1/me", &admin.access).await, 401, "mfa_required").await;
    let refresh = app
        .call(
            "/v1/auth/refresh",
            None,
            &json!({"refresh_token": member.refresh}),
        )
        .await;
    assert_eq!(
        refresh.0, 401,
        "a pre-MFA refresh token is refused: {}",
        refresh.1
    );

    // Password alone yields a ticket; the ticket is no bearer token.
    let ticket = login_ticket(&app, &admin).await;
    assert_eq!(ticket["mfa"], "webauthn");
    let t = ticket["mfa_ticket"].as_str().unwrap();
    assert_problem(app.get("/v1/me", t).await, 401, "invalid_token").await;

    // Second factor.
    let (id, options) = start(
        &app,
        "/v1/auth/mfa/webauthn/start",
        None,
        json!({"mfa_ticket": t}),
    )
    .await;
    let assertion = key.assert(&options);
    let (st, tokens) = app
        .call(
            "/v1/auth/mfa/webauthn/finish",
            None,
            &json!({"mfa_ticket": t, "ceremony_id": id, "credential": assertion}),
        )
        .await;
    assert_eq!(st, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(claims_of(access)["amr"], json!(["pwd", "hwk", "mfa"]));
    assert_eq!(app.get("/v1/me", access).await.status(), StatusCode::OK);
    // The signature counter was saved.
    let listed: Value = app
        .get("/v1/me/webauthn/credentials", access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"][0]["sign_count"], 1);
    assert!(listed["data"][0]["last_used_at"].is_string());
    // The ticket was spent with the sign-in.
    assert_problem(
        app.post("/v1/auth/mfa/webauthn/start", "", &json!({"mfa_ticket": t}))
            .await,
        401,
        "invalid_mfa_ticket",
    )
    .await;

    // A second use of the same ceremony, and a replayed assertion on a new one, fail.
    let ticket = login_ticket(&app, &admin).await;
    let t = ticket["mfa_ticket"].as_str().unwrap();
    assert_problem(
        app.post(
            "/v1/auth/mfa/webauthn/finish",
            "",
            &json!({"mfa_ticket": t, "ceremony_id": id, "credential": assertion}),
        )
        .await,
        401,
        "invalid_ceremony",
    )
    .await;
    let (id2, options2) = start(
        &app,
        "/v1/auth/mfa/webauthn/start",
        None,
        json!({"mfa_ticket": t}),
    )
    .await;
    assert_problem(
        app.post(
            "/v1/auth/mfa/webauthn/finish",
            "",
            &json!({"mfa_ticket": t, "ceremony_id": id2, "credential": assertion}),
        )
        .await,
        401,
        "webauthn_failed",
    )
    .await;
    // That failure spent the ceremony: a good assertion for it no longer counts.
    let good = key.assert(&options2);
    assert_problem(
        app.post(
            "/v1/auth/mfa/webauthn/finish",
            "",
            &json!({"mfa_ticket": t, "ceremony_id": id2, "credential": good}),
        )
        .await,
        401,
        "invalid_ceremony",
    )
    .await;

    // An assertion made for another origin is refused.
    let (id3, options3) = start(
        &app,
        "/v1/auth/mfa/webauthn/start",
        None,
        json!({"mfa_ticket": t}),
    )
    .await;
    let foreign = key.assert_at("http://localhost:4000", &options3).unwrap();
    assert_problem(
        app.post(
            "/v1/auth/mfa/webauthn/finish",
            "",
            &json!({"mfa_ticket": t, "ceremony_id": id3, "credential": foreign}),
        )
        .await,
        401,
        "webauthn_failed",
    )
    .await;

    // The member has no credential: their ticket can only enrol.
    let enrol = login_ticket(&app, &member).await;
    assert_eq!(enrol["mfa"], "enrol");
    let et = enrol["mfa_ticket"].as_str().unwrap();
    assert_problem(
        app.post(
            "/v1/auth/mfa/webauthn/start",
            "",
            &json!({"mfa_ticket": et}),
        )
        .await,
        403,
        "enrolment_required",
    )
    .await;
    assert_problem(
        app.post("/v1/me/webauthn/register/start", et, &json!({}))
            .await,
        401,
        "invalid_token",
    )
    .await;
    assert_problem(app.get("/v1/contacts", et).await, 401, "invalid_token").await;
    let mut member_key = Authenticator::new();
    let member_tokens = app.complete_mfa(&enrol, &mut member_key).await;
    let member_access = member_tokens["access_token"].as_str().unwrap().to_owned();
    let member_cred: Value = app
        .get("/v1/me/webauthn/credentials", &member_access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(member_cred["data"].as_array().unwrap().len(), 1);

    // The member's credential cannot answer for the admin.
    let ticket = login_ticket(&app, &admin).await;
    let t = ticket["mfa_ticket"].as_str().unwrap();
    let (id4, mut options4) = start(
        &app,
        "/v1/auth/mfa/webauthn/start",
        None,
        json!({"mfa_ticket": t}),
    )
    .await;
    let member_cred_id = member_key_credential_id(&mut member_key, &app, &member_access).await;
    options4["publicKey"]["allowCredentials"] =
        json!([{"type": "public-key", "id": member_cred_id}]);
    let wrong_user = member_key.assert(&options4);
    assert_problem(
        app.post(
            "/v1/auth/mfa/webauthn/finish",
            "",
            &json!({"mfa_ticket": t, "ceremony_id": id4, "credential": wrong_user}),
        )
        .await,
        401,
        "webauthn_failed",
    )
    .await;

    // The last credential cannot be removed while MFA is required.
    let ticket = login_ticket(&app, &admin).await;
    let tokens = app.complete_mfa(&ticket, &mut key).await;
    let admin_access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_problem(
        app.delete(&cred_path, &admin_access).await,
        409,
        "last_credential",
    )
    .await;

    // Admin resets the member's MFA: needs a recent step-up.
    let member_id = claims_of(&member_access)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let reset = format!("/v1/users/{member_id}/webauthn");
    app.clock.advance(Duration::minutes(6));
    assert_problem(
        app.delete(&reset, &admin_access).await,
        401,
        "step_up_required",
    )
    .await;
    let stepped = app.step_up_with(&admin_access, &mut key).await;
    let claims = claims_of(&stepped);
    assert_eq!(claims["auth_time"], app.clock.now().timestamp());
    // Another tenant's admin cannot reach the member, even stepped up.
    let stranger = app.new_tenant().await;
    let stranger = app.stepped_up(&stranger).await;
    assert_problem(
        app.delete(&reset, &stranger.access).await,
        404,
        "user_not_found",
    )
    .await;
    let done: Value = app.delete(&reset, &stepped).await.json().await.unwrap();
    assert_eq!(done["removed"], 1);
    // The member's sessions ended, and the next sign-in enrols again.
    assert_problem(
        app.get("/v1/me", &member_access).await,
        401,
        "session_ended",
    )
    .await;
    assert_eq!(login_ticket(&app, &member).await["mfa"], "enrol");
    // The reset is in the audit trail.
    let audit: Value = app
        .get("/v1/audit-events?action=webauthn.reset", &stepped)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["data"].as_array().unwrap().len(), 1, "{audit}");

    // Tickets expire.
    let ticket = login_ticket(&app, &admin).await;
    app.clock.advance(Duration::minutes(11));
    assert_problem(
        app.post(
            "/v1/auth/mfa/webauthn/start",
            "",
            &json!({"mfa_ticket": ticket["mfa_ticket"]}),
        )
        .await,
        401,
        "invalid_mfa_ticket",
    )
    .await;
});

/// The credential id (base64url) the authenticator registered for this user.
async fn member_key_credential_id(_key: &mut Authenticator, app: &TestApp, token: &str) -> String {
    // The id is what the authenticator returned at registration; the API keeps it private,
    // so read it from a fresh assertion for a step-up challenge.
    let (_, options) = start(app, "/v1/auth/step-up/start", Some(token), json!({})).await;
    options["publicKey"]["allowCredentials"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

both!(passkey_sign_in_without_a_user_name, |app| {
    let admin = app.new_tenant().await;
    let member = app.new_user(&admin, "member").await;
    let mut key = app.register_authenticator(&admin.access).await;
    let mut member_key = app.register_authenticator(&member.access).await;
    let tenant = json!({"tenant": admin.tenant});

    // The browser is asked for any passkey of this site (no allow list).
    let (id, options) = start(&app, "/v1/auth/passkey/start", None, tenant.clone()).await;
    assert_eq!(options["publicKey"]["allowCredentials"], json!([]));
    assert_eq!(options["mediation"], "conditional");

    // A discoverable authenticator picks its credential and returns the user handle it
    // stored at registration. (The software authenticator keeps no resident keys, so the
    // test plays that part: it names its credential and adds the handle.)
    let assert_discoverable = |key: &mut Authenticator, options: &Value, cred_id: &str| {
        let mut options = options.clone();
        options["publicKey"]["allowCredentials"] = json!([{"type": "public-key", "id": cred_id}]);
        let mut assertion = key.assert(&options);
        let handle = key.user_handle.clone().unwrap();
        assertion["response"]["userHandle"] = json!(URL_SAFE_NO_PAD.encode(handle));
        assertion
    };
    let admin_cred = member_key_credential_id(&mut key, &app, &admin.access).await;
    let member_cred = member_key_credential_id(&mut member_key, &app, &member.access).await;

    let assertion = assert_discoverable(&mut key, &options, &admin_cred);
    let (st, tokens) = app
        .call(
            "/v1/auth/passkey/finish",
            None,
            &json!({"ceremony_id": id, "credential": assertion}),
        )
        .await;
    assert_eq!(st, 200, "{tokens}");
    let claims = claims_of(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["amr"], json!(["hwk", "mfa"]));
    let me: Value = app
        .get("/v1/me", tokens["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], admin.email);

    // Single use.
    assert_problem(
        app.post(
            "/v1/auth/passkey/finish",
            "",
            &json!({"ceremony_id": id, "credential": assertion}),
        )
        .await,
        401,
        "invalid_ceremony",
    )
    .await;

    // A credential presented with another user's handle is refused.
    let (id, options) = start(&app, "/v1/auth/passkey/start", None, tenant.clone()).await;
    let mut forged = assert_discoverable(&mut member_key, &options, &member_cred);
    forged["response"]["userHandle"] =
        json!(URL_SAFE_NO_PAD.encode(key.user_handle.clone().unwrap()));
    assert_problem(
        app.post(
            "/v1/auth/passkey/finish",
            "",
            &json!({"ceremony_id": id, "credential": forged}),
        )
        .await,
        401,
        "webauthn_failed",
    )
    .await;

    // A passkey of this tenant does not sign in to another one.
    let other = app.new_tenant().await;
    let (id, options) = start(
        &app,
        "/v1/auth/passkey/start",
        None,
        json!({"tenant": other.tenant}),
    )
    .await;
    let assertion = assert_discoverable(&mut key, &options, &admin_cred);
    assert_problem(
        app.post(
            "/v1/auth/passkey/finish",
            "",
            &json!({"ceremony_id": id, "credential": assertion}),
        )
        .await,
        401,
        "webauthn_failed",
    )
    .await;

    // Unknown tenant; malformed input.
    assert_problem(
        app.post(
            "/v1/auth/passkey/start",
            "",
            &json!({"tenant": "no-such-tenant"}),
        )
        .await,
        404,
        "tenant_not_found",
    )
    .await;
    assert_problem(
        app.post("/v1/auth/passkey/finish", "", &json!({"ceremony_id": id}))
            .await,
        422,
        "validation_failed",
    )
    .await;
});

both!(erasure_needs_a_recent_step_up, |app| {
    let admin = app.new_tenant().await;
    let contact = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com"}),
        )
        .await;
    let erase = format!("/v1/contacts/{}/erase", contact["id"].as_str().unwrap());
    // A dry run changes nothing and needs no step-up.
    assert_eq!(
        app.post(&format!("{erase}?dry_run=true"), &admin.access, &json!({}))
            .await
            .status(),
        StatusCode::OK
    );
    let resp = app.post(&erase, &admin.access, &json!({})).await;
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_problem(resp, 401, "step_up_required").await;
    assert!(www.unwrap().contains("step_up_required"));
    // Without a credential there is nothing to step up with.
    assert_problem(
        app.post("/v1/auth/step-up/start", &admin.access, &json!({}))
            .await,
        409,
        "no_credential",
    )
    .await;
    let mut key = app.register_authenticator(&admin.access).await;
    let stepped = app.step_up_with(&admin.access, &mut key).await;
    let claims = claims_of(&stepped);
    assert_eq!(claims["amr"], json!(["pwd", "hwk", "mfa"]));
    // The step-up is a property of the session: the old token counts too, for a while.
    app.clock.advance(Duration::minutes(6));
    assert_problem(
        app.post(&erase, &stepped, &json!({})).await,
        401,
        "step_up_required",
    )
    .await;
    let stepped = app.step_up_with(&stepped, &mut key).await;
    assert_eq!(
        app.post(&erase, &stepped, &json!({})).await.status(),
        StatusCode::OK
    );
});

both!(deleting_a_user_needs_a_step_up, |app| {
    let admin = app.new_tenant().await;
    let member = app.new_user(&admin, "member").await;
    let member_id = claims_of(&member.access)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/users/{member_id}");
    assert_problem(
        app.delete(&path, &admin.access).await,
        401,
        "step_up_required",
    )
    .await;
    let admin = app.stepped_up(&admin).await;
    // Not yourself, and never another tenant's user.
    let admin_id = claims_of(&admin.access)["sub"].as_str().unwrap().to_owned();
    assert_problem(
        app.delete(&format!("/v1/users/{admin_id}"), &admin.access)
            .await,
        409,
        "cannot_delete_self",
    )
    .await;
    let stranger = app.new_tenant().await;
    let stranger = app.stepped_up(&stranger).await;
    assert_problem(
        app.delete(&path, &stranger.access).await,
        404,
        "user_not_found",
    )
    .await;
    // A member cannot delete anyone.
    assert_problem(app.delete(&path, &member.access).await, 403, "forbidden").await;
    assert_eq!(
        app.delete(&path, &admin.access).await.status(),
        StatusCode::NO_CONTENT
    );
    // Gone with their sessions; the sign-in fails like any unknown account.
    assert_problem(
        app.get("/v1/me", &member.access).await,
        401,
        "session_ended",
    )
    .await;
    assert_problem(app.get(&path, &admin.access).await, 404, "user_not_found").await;
    assert_eq!(
        app.login(&member.tenant, &member.email, &member.password)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // No row holds the deleted user's e-mail any more.
    for (table, row) in crm_e2e::dump_all_rows(&app).await {
        assert!(
            !row.contains(&member.email),
            "{table} still holds the e-mail"
        );
    }
});

both!(
    ceremonies_expire_and_operators_can_reset_a_locked_out_admin,
    |app| {
        let admin = app.new_tenant().await;
        let mut key = app.register_authenticator(&admin.access).await;
        let (id, options) = start(
            &app,
            "/v1/auth/step-up/start",
            Some(&admin.access),
            json!({}),
        )
        .await;
        app.clock.advance(Duration::minutes(6));
        let admin = app
            .session(&admin.tenant, &admin.email, &admin.password)
            .await;
        let late = key.assert(&options);
        assert_problem(
            app.post(
                "/v1/auth/step-up/finish",
                &admin.access,
                &json!({"ceremony_id": id, "credential": late}),
            )
            .await,
            401,
            "invalid_ceremony",
        )
        .await;

        // The platform admin loses their authenticator: the operator resets it from the
        // command line's domain call, and the next sign-in enrols again.
        let _ = app.platform_admin().await;
        let db = crm_e2e::open_db(&app).await;
        let removed =
            crm_domain::mfa::reset_mfa_by_email(&db, "platform", &app.admin_email, app.clock.now())
                .await
                .unwrap();
        assert_eq!(removed, 1);
        let resp = app
            .login("platform", &app.admin_email, &app.admin_password)
            .await;
        let ticket: Value = resp.json().await.unwrap();
        assert_eq!(ticket["mfa"], "enrol");
    }
);

both!(
    browsers_may_call_from_the_configured_front_end_only,
    |app| {
        let preflight = |origin: &'static str| {
            app.client
                .request(Method::OPTIONS, app.url("/v1/auth/passkey/start"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type")
                .send()
        };
        let ok = preflight(crm_e2e::FRONTEND_ORIGIN).await.unwrap();
        assert!(ok.status().is_success(), "{}", ok.status());
        assert_eq!(
            ok.headers()["access-control-allow-origin"],
            crm_e2e::FRONTEND_ORIGIN
        );
        let other = preflight("http://evil.example").await.unwrap();
        assert!(other.headers().get("access-control-allow-origin").is_none());
        // A simple request from the front end carries the header; from elsewhere it does not.
        let resp = app
            .client
            .get(app.url("/health"))
            .header("origin", crm_e2e::FRONTEND_ORIGIN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.headers()["access-control-allow-origin"],
            crm_e2e::FRONTEND_ORIGIN
        );
        let exposed = resp.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap();
        assert!(
            exposed.contains("etag") && exposed.contains("x-request-id"),
            "{exposed}"
        );
        // A request without Origin (a script, an integration) is not a CORS request: no
        // Access-Control-* headers, only Vary, for caches. Also on an error.
        for path in ["/health", "/v1/contacts"] {
            let plain = app.client.get(app.url(path)).send().await.unwrap();
            assert!(
                plain
                    .headers()
                    .keys()
                    .all(|k| !k.as_str().starts_with("access-control-")),
                "{path}: {:?}",
                plain.headers()
            );
            assert_eq!(
                plain.headers()["vary"],
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
                "{path}"
            );
        }
    }
);
