//! The authorization matrix: every operation of the served spec, called as every kind of
//! caller, allows exactly whom this table says. A new route without an entry fails the test.
//! (Another tenant's objects are covered object by object in `isolation.rs`.)

use std::collections::{BTreeMap, BTreeSet};

use crm_e2e::both;
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
enum Who {
    /// Everyone, signed in or not.
    Public,
    /// Any signed-in user, platform admins included; no integration clients.
    User,
    PlatformAdmin,
    TenantAdmin,
    /// Tenant admins and dpos.
    Gdpr,
    /// Platform admins, tenant admins and dpos.
    Breach,
    /// Tenant roles, and clients with the scope.
    Read(&'static str),
    /// Tenant admins, dpos and members, and clients with the scope.
    Write(&'static str),
}

use Who::*;

const MATRIX: &[(&str, &str, Who)] = &[
    ("GET", "/.well-known/jwks.json", Public),
    ("GET", "/health", Public),
    ("GET", "/v1/audit-events", Gdpr),
    ("POST", "/v1/auth/login", Public),
    ("POST", "/v1/auth/logout", User),
    ("POST", "/v1/auth/mfa/enrol/finish", Public),
    ("POST", "/v1/auth/mfa/enrol/start", Public),
    ("POST", "/v1/auth/mfa/webauthn/finish", Public),
    ("POST", "/v1/auth/mfa/webauthn/start", Public),
    ("POST", "/v1/auth/passkey/finish", Public),
    ("POST", "/v1/auth/passkey/start", Public),
    ("POST", "/v1/auth/refresh", Public),
    ("POST", "/v1/auth/sso/{tenant}/callback", Public),
    ("GET", "/v1/auth/sso/{tenant}/start", Public),
    ("POST", "/v1/auth/step-up/finish", User),
    ("POST", "/v1/auth/step-up/start", User),
    ("GET", "/v1/breaches", Breach),
    ("POST", "/v1/breaches", Breach),
    ("GET", "/v1/breaches/{id}", Breach),
    ("GET", "/v1/breaches/{id}/notifications", Breach),
    ("POST", "/v1/breaches/{id}/notify", Breach),
    ("POST", "/v1/breaches/{id}/updates", Breach),
    ("GET", "/v1/changes", Read("changes:read")),
    ("GET", "/v1/companies", Read("companies:read")),
    ("POST", "/v1/companies", Write("companies:write")),
    ("GET", "/v1/companies/{id}", Read("companies:read")),
    ("DELETE", "/v1/companies/{id}", Write("companies:write")),
    ("PATCH", "/v1/companies/{id}", Write("companies:write")),
    ("GET", "/v1/contacts", Read("contacts:read")),
    ("POST", "/v1/contacts", Write("contacts:write")),
    ("POST", "/v1/contacts/batch", Write("contacts:write")),
    ("POST", "/v1/contacts/imports", Write("contacts:write")),
    ("GET", "/v1/contacts/imports/{id}", Write("contacts:write")),
    ("GET", "/v1/contacts/{id}", Read("contacts:read")),
    ("DELETE", "/v1/contacts/{id}", Write("contacts:write")),
    ("PATCH", "/v1/contacts/{id}", Write("contacts:write")),
    ("GET", "/v1/contacts/{id}/consents", Read("consents:read")),
    (
        "POST",
        "/v1/contacts/{id}/consents",
        Write("consents:write"),
    ),
    (
        "POST",
        "/v1/contacts/{id}/consents/{purpose}/withdraw",
        Write("consents:write"),
    ),
    ("POST", "/v1/contacts/{id}/erase", Gdpr),
    ("GET", "/v1/contacts/{id}/export", Gdpr),
    ("PUT", "/v1/contacts/{id}/legal-hold", Gdpr),
    ("DELETE", "/v1/contacts/{id}/legal-hold", Gdpr),
    ("POST", "/v1/contacts/{id}/redact", Gdpr),
    ("GET", "/v1/dsr", Gdpr),
    ("POST", "/v1/dsr", Gdpr),
    ("GET", "/v1/dsr/{id}", Gdpr),
    ("PATCH", "/v1/dsr/{id}", Gdpr),
    ("GET", "/v1/gdpr/settings", Gdpr),
    ("PUT", "/v1/gdpr/settings", Gdpr),
    ("GET", "/v1/integration-clients", TenantAdmin),
    ("POST", "/v1/integration-clients", TenantAdmin),
    ("GET", "/v1/integration-clients/{id}", TenantAdmin),
    ("DELETE", "/v1/integration-clients/{id}", TenantAdmin),
    (
        "POST",
        "/v1/integration-clients/{id}/rotate-secret",
        TenantAdmin,
    ),
    ("GET", "/v1/me", User),
    ("POST", "/v1/me/password", User),
    ("GET", "/v1/me/webauthn/credentials", User),
    ("DELETE", "/v1/me/webauthn/credentials/{id}", User),
    ("PATCH", "/v1/me/webauthn/credentials/{id}", User),
    ("POST", "/v1/me/webauthn/register/finish", User),
    ("POST", "/v1/me/webauthn/register/start", User),
    ("POST", "/v1/oauth/token", Public),
    ("GET", "/v1/orders", Read("orders:read")),
    ("POST", "/v1/orders", Write("orders:write")),
    ("GET", "/v1/orders/{id}", Read("orders:read")),
    ("DELETE", "/v1/orders/{id}", Write("orders:write")),
    ("PATCH", "/v1/orders/{id}", Write("orders:write")),
    ("GET", "/v1/purposes", Read("consents:read")),
    ("POST", "/v1/purposes", Gdpr),
    ("GET", "/v1/retention-policies", Gdpr),
    ("PUT", "/v1/retention-policies", Gdpr),
    ("POST", "/v1/retention/run", Gdpr),
    ("GET", "/v1/sso/connection", TenantAdmin),
    ("PUT", "/v1/sso/connection", TenantAdmin),
    ("DELETE", "/v1/sso/connection", TenantAdmin),
    ("GET", "/v1/sub-processors", User),
    ("POST", "/v1/sub-processors", PlatformAdmin),
    ("GET", "/v1/sub-processors/changes", User),
    ("PATCH", "/v1/sub-processors/{id}", PlatformAdmin),
    ("POST", "/v1/suppression/check", Read("suppression:read")),
    ("GET", "/v1/tenant/security", TenantAdmin),
    ("PUT", "/v1/tenant/security", TenantAdmin),
    ("GET", "/v1/tenants", PlatformAdmin),
    ("POST", "/v1/tenants", PlatformAdmin),
    ("GET", "/v1/tenants/{id}", PlatformAdmin),
    ("PATCH", "/v1/tenants/{id}", PlatformAdmin),
    ("GET", "/v1/users", TenantAdmin),
    ("POST", "/v1/users", TenantAdmin),
    ("GET", "/v1/users/{id}", TenantAdmin),
    ("DELETE", "/v1/users/{id}", TenantAdmin),
    ("PATCH", "/v1/users/{id}", TenantAdmin),
    ("DELETE", "/v1/users/{id}/webauthn", TenantAdmin),
    ("POST", "/v1/webhook-deliveries/{id}/redeliver", TenantAdmin),
    ("GET", "/v1/webhooks", TenantAdmin),
    ("POST", "/v1/webhooks", TenantAdmin),
    ("DELETE", "/v1/webhooks/{id}", TenantAdmin),
    ("GET", "/v1/webhooks/{id}/deliveries", TenantAdmin),
];

const CALLERS: [&str; 9] = [
    "anonymous",
    "platform_admin",
    "admin",
    "dpo",
    "member",
    "viewer",
    "client_with_scope",
    "client_without_scope",
    "client_with_other_scope",
];

fn allowed(who: Who, caller: &str) -> bool {
    let tenant_roles = ["admin", "dpo", "member", "viewer"];
    match who {
        Public => true,
        User => caller == "platform_admin" || tenant_roles.contains(&caller),
        PlatformAdmin => caller == "platform_admin",
        TenantAdmin => caller == "admin",
        Gdpr => ["admin", "dpo"].contains(&caller),
        Breach => ["platform_admin", "admin", "dpo"].contains(&caller),
        Read(_) => tenant_roles.contains(&caller) || caller == "client_with_scope",
        Write(_) => ["admin", "dpo", "member", "client_with_scope"].contains(&caller),
    }
}

/// A refusal on authentication or authorisation grounds (as opposed to anything the
/// operation says after letting the caller in: not found, invalid, step up, …).
fn denied(status: u16, body: &Value) -> bool {
    let code = body["code"].as_str().unwrap_or_default();
    (status == 401 || status == 403)
        && [
            "unauthenticated",
            "invalid_token",
            "forbidden",
            "insufficient_scope",
        ]
        .contains(&code)
}

async fn client_token(app: &crm_e2e::TestApp, admin: &str, scopes: &[&str]) -> String {
    let client = app
        .create(
            "/v1/integration-clients",
            admin,
            json!({"name": format!("matrix {}", scopes.join(" ")), "scopes": scopes}),
        )
        .await;
    let token: Value = app
        .client
        .post(app.url("/v1/oauth/token"))
        .basic_auth(
            client["client_id"].as_str().unwrap(),
            client["client_secret"].as_str(),
        )
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    token["access_token"].as_str().unwrap().to_owned()
}

both!(every_operation_allows_exactly_its_callers, |app| {
    // The table covers the served spec exactly.
    let spec: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut served = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            served.insert((method.to_uppercase(), path.clone()));
        }
    }
    let table: BTreeSet<(String, String)> = MATRIX
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let missing: Vec<_> = served.difference(&table).collect();
    let stale: Vec<_> = table.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "operations without a matrix entry: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "matrix entries for no operation: {stale:?}"
    );
    // The spec's oauth2 scopes say the same as the table.
    for (method, path, who) in MATRIX {
        let op = &spec["paths"][*path][method.to_lowercase()];
        let scopes: Vec<String> = op["security"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|req| req.get("oauth2"))
            .flat_map(|s| s.as_array().cloned().unwrap_or_default())
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        let expected: Vec<String> = match who {
            Read(scope) | Write(scope) => vec![(*scope).to_owned()],
            _ => Vec::new(),
        };
        assert_eq!(
            scopes, expected,
            "{method} {path}: oauth2 scopes in the spec"
        );
    }

    let admin = app.new_tenant().await;
    let admin = app.stepped_up(&admin).await;
    let dpo = app.new_user(&admin, "dpo").await;
    let dpo = app.stepped_up(&dpo).await;
    let member = app.new_user(&admin, "member").await;
    let viewer = app.new_user(&admin, "viewer").await;
    let platform = app.platform_admin().await;
    let all_scopes: Vec<&str> = crm_domain::clients::SCOPES.to_vec();
    let client_all = client_token(&app, &admin.access, &all_scopes).await;
    let client_changes = client_token(&app, &admin.access, &["changes:read"]).await;
    let client_contacts = client_token(&app, &admin.access, &["contacts:read"]).await;

    let mut failures = Vec::new();
    let mut ops: Vec<&(&str, &str, Who)> = MATRIX.iter().collect();
    // Signing out ends the session: last.
    ops.sort_by_key(|(_, p, _)| *p == "/v1/auth/logout");
    for (method, path, who) in ops {
        let url = path
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{tenant}", "no-such-tenant")
            .replace("{purpose}", "no-such-purpose");
        let mut results = BTreeMap::new();
        for caller in CALLERS {
            let token: Option<&str> = match caller {
                "anonymous" => None,
                "platform_admin" => Some(&platform.access),
                "admin" => Some(&admin.access),
                "dpo" => Some(&dpo.access),
                "member" => Some(&member.access),
                "viewer" => Some(&viewer.access),
                "client_with_scope" => Some(&client_all),
                "client_without_scope" => Some(match who {
                    Read("changes:read") => &client_contacts,
                    _ => &client_changes,
                }),
                _ => Some(match who {
                    Read("contacts:read") => &client_changes,
                    _ => &client_contacts,
                }),
            };
            let verb = Method::from_bytes(method.as_bytes()).unwrap();
            let body =
                matches!(verb, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
            let resp = app.request(verb, &url, token, body.as_ref()).await;
            let status = resp.status().as_u16();
            let json: Value = resp.json().await.unwrap_or(Value::Null);
            let expect = allowed(*who, caller);
            let got = !denied(status, &json);
            if expect != got {
                failures.push(format!(
                    "{method} {path} as {caller}: expected {}, got {status} {}",
                    if expect { "allowed" } else { "denied" },
                    json["code"]
                ));
            }
            results.insert(caller, status);
        }
        assert!(status_sane(&results), "{method} {path}: {results:?}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
});

/// No operation answers 5xx to any caller.
fn status_sane(results: &BTreeMap<&str, u16>) -> bool {
    results.values().all(|s| *s < 500)
}
