//! Sign-in, tokens, sessions, roles, users and tenants.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use crm_e2e::{PASSWORD, TestApp, assert_invalid, assert_problem, both};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn header_of(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

/// The server's own signing key, read from its key directory.
fn server_key(app: &TestApp) -> (String, EncodingKey) {
    let entry = std::fs::read_dir(&app.key_dir)
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.file_name().to_string_lossy().ends_with(".pem"))
        .unwrap();
    let kid = entry
        .file_name()
        .to_string_lossy()
        .trim_end_matches(".pem")
        .to_owned();
    let pem = std::fs::read_to_string(entry.path()).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    (
        kid,
        EncodingKey::from_ed_der(&STANDARD.decode(body).unwrap()),
    )
}

fn sign(claims: &Value, kid: &str, typ: &str, key: &EncodingKey) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(typ.into());
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

both!(access_token_shape, |app| {
    let s = app.new_tenant().await;
    let header = header_of(&s.access);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    let claims = claims_of(&s.access);
    for claim in [
        "iss",
        "aud",
        "sub",
        "tid",
        "sid",
        "roles",
        "amr",
        "auth_time",
        "jti",
        "exp",
        "iat",
    ] {
        assert!(!claims[claim].is_null(), "claim {claim} in {claims}");
    }
    assert_eq!(claims["roles"], json!(["admin"]));
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() <= 900);

    // The JWKS publishes the key named by `kid`.
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(
        keys.iter()
            .any(|k| k["kid"] == header["kid"] && k["kty"] == "OKP" && k["crv"] == "Ed25519")
    );

    let me: Value = app.get("/v1/me", &s.access).await.json().await.unwrap();
    assert_eq!(me["role"], "admin");
    assert_eq!(me["email"], s.email);
});

both!(bad_tokens_are_refused, |app| {
    let s = app.new_tenant().await;
    let good = claims_of(&s.access);
    let (kid, key) = server_key(&app);
    let now = chrono::Utc::now().timestamp();

    // A token signed with the real key passes, so the refusals below are about the claims.
    let resigned = sign(&good, &kid, "at+jwt", &key);
    assert_eq!(app.get("/v1/me", &resigned).await.status(), StatusCode::OK);

    let mut expired = good.clone();
    expired["exp"] = json!(now - 60);
    expired["iat"] = json!(now - 960);
    expired["nbf"] = json!(now - 960);
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("http://evil.test");
    let mut no_aud = good.clone();
    no_aud.as_object_mut().unwrap().remove("aud");

    let forged_key = {
        let mut seed = [7u8; 32];
        seed[0] = 1;
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&seed);
        EncodingKey::from_ed_der(&der)
    };
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&good).unwrap())
    );
    let parts: Vec<&str> = s.access.split('.').collect();
    let mut elevated = good.clone();
    elevated["roles"] = json!(["platform_admin"]);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&elevated).unwrap()),
        parts[2]
    );
    let cases: Vec<(&str, String)> = vec![
        ("forged signature", sign(&good, &kid, "at+jwt", &forged_key)),
        ("expired", sign(&expired, &kid, "at+jwt", &key)),
        ("wrong audience", sign(&wrong_aud, &kid, "at+jwt", &key)),
        ("missing audience", sign(&no_aud, &kid, "at+jwt", &key)),
        ("wrong issuer", sign(&wrong_iss, &kid, "at+jwt", &key)),
        ("wrong typ", sign(&good, &kid, "JWT", &key)),
        ("unknown kid", sign(&good, "nokey", "at+jwt", &key)),
        ("alg none", unsigned),
        ("tampered payload", tampered),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (name, token) in cases {
        let resp = app.get("/v1/contacts", &token).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{name}");
        assert_problem(resp, 401, "invalid_token").await;
    }
    let resp = app
        .client
        .get(app.url("/v1/contacts"))
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_problem(resp, 401, "unauthenticated").await;
    let resp = app
        .client
        .get(app.url("/v1/contacts"))
        .header("authorization", format!("Basic {}", s.access))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 401, "invalid_token").await;
});

both!(refresh_rotates_and_reuse_revokes_the_family, |app| {
    let s = app.new_tenant().await;
    let refresh = |token: String| {
        let app = app.clone();
        async move {
            app.request(
                reqwest::Method::POST,
                "/v1/auth/refresh",
                None,
                Some(&json!({"refresh_token": token})),
            )
            .await
        }
    };
    let resp = refresh(s.refresh.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let second: Value = resp.json().await.unwrap();
    let second_refresh = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second_refresh, s.refresh);
    let second_access = second["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        claims_of(&second_access)["sid"],
        claims_of(&s.access)["sid"],
        "same session"
    );
    assert_eq!(
        claims_of(&second_access)["auth_time"],
        claims_of(&s.access)["auth_time"]
    );
    assert_eq!(
        app.get("/v1/me", &second_access).await.status(),
        StatusCode::OK
    );

    // Presenting the spent token again: refused, and the whole family dies.
    assert_problem(
        refresh(s.refresh.clone()).await,
        401,
        "refresh_token_reused",
    )
    .await;
    assert_problem(refresh(second_refresh).await, 401, "session_ended").await;
    assert_problem(
        app.get("/v1/me", &second_access).await,
        401,
        "session_ended",
    )
    .await;
    assert_problem(app.get("/v1/me", &s.access).await, 401, "session_ended").await;

    assert_problem(
        refresh("rt_unknown".into()).await,
        401,
        "invalid_refresh_token",
    )
    .await;
    assert_invalid(
        app.request(
            reqwest::Method::POST,
            "/v1/auth/refresh",
            None,
            Some(&json!({})),
        )
        .await,
        "/refresh_token",
        "required",
    )
    .await;

    // Another session of the same user is unaffected.
    let other = app.session(&s.tenant, &s.email, &s.password).await;
    assert_eq!(
        app.get("/v1/me", &other.access).await.status(),
        StatusCode::OK
    );
});

both!(logout_ends_the_session_at_once, |app| {
    let s = app.new_tenant().await;
    // Used once before logout, so the server has verified (and kept) the token's signature:
    // the session check still runs on the next request.
    assert_eq!(
        app.get("/v1/contacts", &s.access).await.status(),
        StatusCode::OK
    );
    let resp = app
        .request(
            reqwest::Method::POST,
            "/v1/auth/logout",
            Some(&s.access),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.get("/v1/contacts", &s.access).await,
        401,
        "session_ended",
    )
    .await;
    let resp = app
        .request(
            reqwest::Method::POST,
            "/v1/auth/refresh",
            None,
            Some(&json!({"refresh_token": s.refresh})),
        )
        .await;
    assert_problem(resp, 401, "session_ended").await;
});

both!(a_token_verified_before_is_refused_once_it_expires, |app| {
    let s = app.new_tenant().await;
    assert_eq!(app.get("/v1/me", &s.access).await.status(), StatusCode::OK);
    assert_eq!(
        app.get("/v1/me", &s.access).await.status(),
        StatusCode::OK,
        "the kept verification answers"
    );
    // Access tokens live at most 15 minutes; the session itself lives on.
    app.clock.advance(chrono::Duration::minutes(16));
    assert_problem(app.get("/v1/me", &s.access).await, 401, "invalid_token").await;
    let fresh = app.session(&s.tenant, &s.email, PASSWORD).await;
    assert_eq!(
        app.get("/v1/me", &fresh.access).await.status(),
        StatusCode::OK
    );
});

both!(login_failures_look_alike_and_are_throttled, |app| {
    let s = app.new_tenant().await;
    for (tenant, email, password) in [
        (
            s.tenant.as_str(),
            s.email.as_str(),
            "wrong password entirely",
        ),
        (s.tenant.as_str(), "nobody@example.com", PASSWORD),
        ("no-such-tenant", s.email.as_str(), PASSWORD),
    ] {
        assert_problem(
            app.login(tenant, email, password).await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    assert_invalid(
        app.request(
            reqwest::Method::POST,
            "/v1/auth/login",
            None,
            Some(&json!({"tenant": "x"})),
        )
        .await,
        "/email",
        "required",
    )
    .await;

    // Five failures for one account in total; the sixth attempt is locked, even with the
    // right password, and says when to retry.
    for _ in 0..4 {
        assert_problem(
            app.login(&s.tenant, &s.email, "wrong password entirely")
                .await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    let resp = app
        .login(
            &s.tenant,
            &s.email.to_uppercase(),
            "wrong password entirely",
        )
        .await;
    assert_problem(resp, 401, "invalid_credentials").await;
    let resp = app.login(&s.tenant, &s.email, PASSWORD).await;
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry));
    assert_problem(resp, 429, "too_many_attempts").await;
    // Another account from the same address still signs in.
    let other = app.new_user(&s, "member").await;
    assert_eq!(
        app.get("/v1/me", &other.access).await.status(),
        StatusCode::OK
    );
});

both!(roles_are_enforced, |app| {
    let admin = app.new_tenant().await;
    let viewer = app.new_user(&admin, "viewer").await;
    let member = app.new_user(&admin, "member").await;
    let dpo = app.new_user(&admin, "dpo").await;
    let platform = app.platform_admin().await;
    let contact = app
        .create(
            "/v1/contacts",
            &member.access,
            json!({"email": "r@example.com"}),
        )
        .await;
    let cpath = format!("/v1/contacts/{}", contact["id"].as_str().unwrap());

    assert_eq!(
        app.get(&cpath, &viewer.access).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get("/v1/orders", &viewer.access).await.status(),
        StatusCode::OK
    );
    assert_problem(
        app.post(
            "/v1/contacts",
            &viewer.access,
            &json!({"email": "v@example.com"}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    assert_problem(
        app.patch(&cpath, &viewer.access, &json!({"first_name": "V"}))
            .await,
        403,
        "forbidden",
    )
    .await;
    assert_problem(app.delete(&cpath, &viewer.access).await, 403, "forbidden").await;
    assert_problem(
        app.post("/v1/companies", &viewer.access, &json!({"name": "V"}))
            .await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(
        app.patch(&cpath, &dpo.access, &json!({"first_name": "D"}))
            .await
            .status(),
        StatusCode::OK
    );

    for s in [&viewer, &member, &dpo] {
        assert_problem(app.get("/v1/users", &s.access).await, 403, "forbidden").await;
        assert_problem(
            app.post(
                "/v1/users",
                &s.access,
                &json!({"email": "x@example.com", "role": "admin", "password": PASSWORD}),
            )
            .await,
            403,
            "forbidden",
        )
        .await;
    }
    for s in [&admin, &member] {
        assert_problem(app.get("/v1/tenants", &s.access).await, 403, "forbidden").await;
    }
    // The processor's staff do not read controllers' CRM data.
    assert_problem(
        app.get("/v1/contacts", &platform.access).await,
        403,
        "forbidden",
    )
    .await;
    assert_problem(
        app.get("/v1/users", &platform.access).await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(
        app.get("/v1/tenants", &platform.access).await.status(),
        StatusCode::OK
    );

    // A role change takes effect on the next request, with the same token.
    let users: Value = app
        .get("/v1/users", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    let viewer_id = users["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == viewer.email)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = app
        .patch(
            &format!("/v1/users/{viewer_id}"),
            &admin.access,
            &json!({"role": "member"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        app.post(
            "/v1/contacts",
            &viewer.access,
            &json!({"email": "promoted@example.com"})
        )
        .await
        .status(),
        StatusCode::CREATED
    );
});

both!(user_management, |app| {
    let admin = app.new_tenant().await;
    assert_invalid(
        app.post(
            "/v1/users",
            &admin.access,
            &json!({"email": "weak@example.com", "role": "member", "password": "password12345678"}),
        )
        .await,
        "/password",
        "password_too_common",
    )
    .await;
    assert_invalid(
        app.post(
            "/v1/users",
            &admin.access,
            &json!({"email": "short@example.com", "role": "member", "password": "short"}),
        )
        .await,
        "/password",
        "password_too_short",
    )
    .await;
    assert_invalid(
        app.post(
            "/v1/users",
            &admin.access,
            &json!({"email": "x@example.com", "role": "platform_admin", "password": PASSWORD}),
        )
        .await,
        "/role",
        "invalid_role",
    )
    .await;
    let member = app.new_user(&admin, "member").await;
    assert_problem(
        app.post(
            "/v1/users",
            &admin.access,
            &json!({"email": member.email, "role": "viewer", "password": PASSWORD}),
        )
        .await,
        409,
        "email_taken",
    )
    .await;
    let list: Value = app
        .get("/v1/users?limit=1", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(list["next_cursor"].is_string());
    let member_id = claims_of(&member.access)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let user: Value = app
        .get(&format!("/v1/users/{member_id}"), &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert!(user.get("password").is_none() && user.get("hash").is_none());

    // Deactivation refuses the user's live token on the next request and blocks sign-in.
    let resp = app
        .patch(
            &format!("/v1/users/{member_id}"),
            &admin.access,
            &json!({"active": false}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_problem(
        app.get("/v1/contacts", &member.access).await,
        401,
        "session_ended",
    )
    .await;
    assert_problem(
        app.login(&member.tenant, &member.email, PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;

    // The last admin cannot demote or deactivate themselves.
    let admin_id = claims_of(&admin.access)["sub"].as_str().unwrap().to_owned();
    assert_problem(
        app.patch(
            &format!("/v1/users/{admin_id}"),
            &admin.access,
            &json!({"role": "viewer"}),
        )
        .await,
        409,
        "last_admin",
    )
    .await;
    assert_problem(
        app.patch(
            &format!("/v1/users/{admin_id}"),
            &admin.access,
            &json!({"active": false}),
        )
        .await,
        409,
        "last_admin",
    )
    .await;

    // Changing one's own password ends the other sessions.
    let other = app.session(&admin.tenant, &admin.email, PASSWORD).await;
    assert_invalid(
        app.post("/v1/me/password", &admin.access, &json!({"current_password": "not it at all", "new_password": "a completely new passphrase"})).await,
        "/current_password",
        "wrong_password",
    )
    .await;
    let resp = app
        .post(
            "/v1/me/password",
            &admin.access,
            &json!({"current_password": PASSWORD, "new_password": "a completely new passphrase"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/v1/me", &admin.access).await.status(),
        StatusCode::OK
    );
    assert_problem(app.get("/v1/me", &other.access).await, 401, "session_ended").await;
    assert_eq!(
        app.login(&admin.tenant, &admin.email, "a completely new passphrase")
            .await
            .status(),
        StatusCode::OK
    );
});

both!(tenant_management, |app| {
    let platform = app.platform_admin().await;
    assert_eq!(
        claims_of(&platform.access)["roles"],
        json!(["platform_admin"])
    );
    let body = json!({"slug": "acme", "name": "Acme", "admin": {"email": "boss@acme.example", "password": PASSWORD}});
    let created = app
        .create("/v1/tenants", &platform.access, body.clone())
        .await;
    assert_eq!(created["slug"], "acme");
    assert_problem(
        app.post("/v1/tenants", &platform.access, &body).await,
        409,
        "slug_taken",
    )
    .await;
    assert_problem(
        app.post("/v1/tenants", &platform.access, &json!({"slug": "platform", "name": "x", "admin": {"email": "a@b.example", "password": PASSWORD}})).await,
        409,
        "slug_taken",
    )
    .await;
    let resp = app.post("/v1/tenants", &platform.access, &json!({"slug": "Bad Slug", "name": "", "admin": {"email": "x", "password": "acmeacmeacmeacme"}})).await;
    let errors = assert_problem(resp, 422, "validation_failed").await;
    let pointers: Vec<&str> = errors["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    for p in ["/slug", "/name", "/admin/email", "/admin/password"] {
        assert!(pointers.contains(&p), "{p} in {pointers:?}");
    }
    assert_invalid(
        app.post(
            "/v1/tenants",
            &platform.access,
            &json!({"slug": "ok-slug", "name": "x"}),
        )
        .await,
        "/admin",
        "required",
    )
    .await;

    let boss = app.session("acme", "boss@acme.example", PASSWORD).await;
    let path = format!("/v1/tenants/{}", created["id"].as_str().unwrap());
    let got: Value = app.get(&path, &platform.access).await.json().await.unwrap();
    assert_eq!(got["name"], "Acme");
    // Deactivating a tenant stops its users at once.
    let resp = app
        .patch(&path, &platform.access, &json!({"active": false}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_problem(
        app.get("/v1/contacts", &boss.access).await,
        401,
        "session_ended",
    )
    .await;
    assert_problem(
        app.login("acme", "boss@acme.example", PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    let list: Value = app
        .get("/v1/tenants", &platform.access)
        .await
        .json()
        .await
        .unwrap();
    assert!(list["data"].as_array().unwrap().len() >= 2);
});

/// Rotation: a new key signs, the previous one keeps verifying its tokens until they expire,
/// a removed key's tokens fail. Keys are read at start, so each step restarts the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_rotate() {
    let mut app = TestApp::spawn(crm_e2e::Backend::Sqlite).await;
    let s = app.new_tenant().await;
    let old_kid = header_of(&s.access)["kid"].as_str().unwrap().to_owned();

    let new_kid = crm_api::keys::generate_key(&app.key_dir).unwrap();
    app.restart().await;
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(
        kids,
        vec![old_kid.as_str(), new_kid.as_str()],
        "both published"
    );
    assert_eq!(
        app.get("/v1/me", &s.access).await.status(),
        StatusCode::OK,
        "old key still verifies"
    );
    let fresh = app.session(&s.tenant, &s.email, PASSWORD).await;
    assert_eq!(
        header_of(&fresh.access)["kid"],
        new_kid.as_str(),
        "the new key signs"
    );

    assert!(crm_api::keys::remove_key(&app.key_dir, "nope").is_err());
    crm_api::keys::remove_key(&app.key_dir, &old_kid).unwrap();
    assert!(
        crm_api::keys::remove_key(&app.key_dir, &new_kid).is_err(),
        "the last key stays"
    );
    app.restart().await;
    assert_problem(app.get("/v1/me", &s.access).await, 401, "invalid_token").await;
    assert_eq!(
        app.get("/v1/me", &fresh.access).await.status(),
        StatusCode::OK
    );
    app.cleanup().await;
}

both!(expired_sign_in_data_is_pruned, |app| {
    let s = app.new_tenant().await;
    for _ in 0..3 {
        assert_problem(
            app.login(&s.tenant, &s.email, "wrong password entirely")
                .await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    let db = crm_e2e::open_db(&app).await;
    let policy = crm_domain::sessions::ThrottlePolicy::default();
    let now = crm_domain::clock::Clock::now(app.clock.as_ref());
    assert_eq!(
        crm_domain::sessions::prune_expired(&db, &policy, now)
            .await
            .unwrap(),
        0,
        "nothing is stale yet"
    );
    // 31 days later the throttle window and every session of this test have expired.
    app.clock.advance(chrono::Duration::days(32));
    let now = crm_domain::clock::Clock::now(app.clock.as_ref());
    let removed = crm_domain::sessions::prune_expired(&db, &policy, now)
        .await
        .unwrap();
    assert!(
        removed >= 3,
        "throttle entries (account, address) and sessions: {removed}"
    );
    assert_eq!(
        crm_domain::sessions::prune_expired(&db, &policy, now)
            .await
            .unwrap(),
        0
    );
    db.close().await.ok();
    // Signing in still works afterwards.
    assert_eq!(
        app.login(&s.tenant, &s.email, PASSWORD).await.status(),
        StatusCode::OK
    );
});
