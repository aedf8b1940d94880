//! Contract fuzzing: schemathesis (PyPI, pinned in tests/contract/requirements.txt, installed by
//! `make contract-tools`) runs every check against the served `/openapi.json` as a tenant admin,
//! with another tenant as the peer for object-level authorization (tests/contract/hooks.py).
//! Path parameters are pinned to real objects of the tenant so the checks reach them. The run
//! is bounded (examples per operation) and must end with no failure at all.

use std::path::PathBuf;

use crm_e2e::{Receiver, Session, TestApp, both};
use serde_json::{Value, json};

fn contract_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/contract"))
}

fn schemathesis() -> PathBuf {
    let st = contract_dir().join(".venv/bin/st");
    assert!(
        st.exists(),
        "schemathesis is not installed: run `make contract-tools` (part of `make test`)"
    );
    st
}

struct Objects {
    company: String,
    contact: String,
    /// A second contact for the destructive GDPR operations.
    subject: String,
    order: String,
    purpose: String,
    dsr: String,
    import: String,
    client: String,
    member: String,
    webhook: String,
    breach: String,
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_owned()
}

async fn seed(app: &TestApp, s: &Session, hook: &str) -> Objects {
    let t = &s.access;
    let company = app
        .create("/v1/companies", t, json!({"name": "Harbour Maps Ltd"}))
        .await;
    let contact = app
        .create(
            "/v1/contacts",
            t,
            json!({"email": format!("ada@{}.example", s.tenant), "first_name": "Ada", "company_id": company["id"]}),
        )
        .await;
    let subject = app
        .create(
            "/v1/contacts",
            t,
            json!({"email": format!("grace@{}.example", s.tenant), "first_name": "Grace"}),
        )
        .await;
    let order = app
        .create(
            "/v1/orders",
            t,
            json!({"contact_id": contact["id"], "currency": "EUR", "lines": [{"description": "Chart", "quantity": 1, "unit_price_minor": 1200}]}),
        )
        .await;
    let purpose = app
        .create(
            "/v1/purposes",
            t,
            json!({"key": "newsletter", "name": "Monthly newsletter"}),
        )
        .await;
    app.create(
        &format!("/v1/contacts/{}/consents", id(&subject)),
        t,
        json!({"purpose": "newsletter", "status": "granted", "lawful_basis": "consent", "channel": "web", "source": "signup form"}),
    )
    .await;
    let dsr = app
        .create(
            "/v1/dsr",
            t,
            json!({"kind": "access", "contact_id": contact["id"]}),
        )
        .await;
    let resp = app
        .client
        .post(app.url("/v1/contacts/imports"))
        .bearer_auth(t)
        .header("content-type", "text/csv")
        .body(format!("email\nimported@{}.example\n", s.tenant))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let import: Value = resp.json().await.unwrap();
    let client = app
        .create(
            "/v1/integration-clients",
            t,
            json!({"name": "Mailer", "scopes": ["contacts:read"]}),
        )
        .await;
    let member = app.new_user(s, "member").await;
    let member_id = crm_e2e::claims_of(&member.access)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let webhook = app
        .create(
            "/v1/webhooks",
            t,
            json!({"url": hook, "event_types": ["contact.created"]}),
        )
        .await;
    let breach = app
        .create(
            "/v1/breaches",
            t,
            json!({
                "title": "Laptop lost",
                "nature": "A laptop with an export was lost on a train.",
                "data_categories": "contact details",
                "subjects_approx": 10,
                "records_approx": 10,
                "likely_consequences": "Unwanted e-mail.",
                "measures": "Disk encryption verified; passwords rotated.",
                "contact_point": "dpo@example.org",
                "aware_at": chrono::Utc::now().to_rfc3339(),
            }),
        )
        .await;
    Objects {
        company: id(&company),
        contact: id(&contact),
        subject: id(&subject),
        order: id(&order),
        purpose: purpose["key"].as_str().unwrap().to_owned(),
        dsr: id(&dsr),
        import: id(&import),
        client: id(&client),
        member: member_id,
        webhook: id(&webhook),
        breach: id(&breach),
    }
}

fn config(o: &Objects) -> String {
    let pin = |path: &str, params: &[(&str, &str)]| {
        let params: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("\"path.{k}\" = \"{v}\""))
            .collect();
        format!(
            "[[operations]]\ninclude-path = \"{path}\"\nparameters = {{ {} }}\n\n",
            params.join(", ")
        )
    };
    let mut toml = String::from(
        "# Written by tests/tests/e2e/contract.rs.\n\
         # A schema-valid request may still be refused for what JSON Schema cannot say: a \n\
         # reference to an object that does not exist, a currency that is not in ISO 4217, a\n\
         # password on the blocklist, a cursor this API did not issue (422), or an If-Match that\n\
         # is not the current version (412). Every other refusal of valid data fails the run.\n\
         [auth.openapi.bearer]\n\
         bearer = \"${CRM_TOKEN}\"\n\n\
         [checks.positive_data_acceptance]\n\
         expected-statuses = [\"2xx\", \"401\", \"403\", \"404\", \"409\", \"412\", \"422\", \"429\"]\n\n",
    );
    for path in [
        "/v1/contacts/{id}",
        "/v1/contacts/{id}/export",
        "/v1/contacts/{id}/consents",
    ] {
        toml.push_str(&pin(path, &[("id", &o.contact)]));
    }
    for path in [
        "/v1/contacts/{id}/erase",
        "/v1/contacts/{id}/redact",
        "/v1/contacts/{id}/legal-hold",
    ] {
        toml.push_str(&pin(path, &[("id", &o.subject)]));
    }
    toml.push_str(&pin(
        "/v1/contacts/{id}/consents/{purpose}/withdraw",
        &[("id", &o.subject), ("purpose", &o.purpose)],
    ));
    toml.push_str(&pin("/v1/companies/{id}", &[("id", &o.company)]));
    toml.push_str(&pin("/v1/orders/{id}", &[("id", &o.order)]));
    toml.push_str(&pin("/v1/dsr/{id}", &[("id", &o.dsr)]));
    toml.push_str(&pin("/v1/contacts/imports/{id}", &[("id", &o.import)]));
    for path in [
        "/v1/integration-clients/{id}",
        "/v1/integration-clients/{id}/rotate-secret",
    ] {
        toml.push_str(&pin(path, &[("id", &o.client)]));
    }
    for path in ["/v1/users/{id}", "/v1/users/{id}/webauthn"] {
        toml.push_str(&pin(path, &[("id", &o.member)]));
    }
    for path in ["/v1/webhooks/{id}", "/v1/webhooks/{id}/deliveries"] {
        toml.push_str(&pin(path, &[("id", &o.webhook)]));
    }
    for path in [
        "/v1/breaches/{id}",
        "/v1/breaches/{id}/notifications",
        "/v1/breaches/{id}/updates",
        "/v1/breaches/{id}/notify",
    ] {
        toml.push_str(&pin(path, &[("id", &o.breach)]));
    }
    toml
}

both!(schemathesis_finds_no_failure, |app| {
    let st = schemathesis();
    let receiver = Receiver::start(204).await;
    let a = app.new_tenant().await;
    let b = app.new_tenant().await;
    let mine = seed(&app, &a, &receiver.url).await;
    let theirs = seed(&app, &b, &receiver.url).await;
    let peer_ids = [
        &theirs.company,
        &theirs.contact,
        &theirs.subject,
        &theirs.order,
        &theirs.dsr,
        &theirs.import,
        &theirs.client,
        &theirs.member,
        &theirs.webhook,
        &theirs.breach,
    ]
    .map(|s| s.as_str())
    .join(" ");
    let config_path = app.db.dir.join("schemathesis.toml");
    std::fs::write(&config_path, config(&mine)).unwrap();

    let output = tokio::process::Command::new(st)
        .arg("--config-file")
        .arg(&config_path)
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--checks", "all"])
        .args(["--max-examples", "15"])
        .args(["--seed", "20261201"])
        .args(["--generation-database", "none"])
        .args(["--workers", "2"])
        .args(["--request-timeout", "20"])
        .args(["--no-color"])
        .env("CRM_TOKEN", &a.access)
        // Signing out or changing the password would end the session the run uses.
        .args(["--exclude-path", "/v1/auth/logout"])
        .args(["--exclude-path", "/v1/me/password"])
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", contract_dir())
        .env("CRM_PEER_TOKEN", &b.access)
        .env("CRM_PEER_IDS", &peer_ids)
        .current_dir(&app.db.dir)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found failures\n{stdout}\n{stderr}"
    );
    // It did test the API: every selected operation ran and got answers.
    assert!(stdout.contains("Tested:"), "{stdout}");
    assert!(!stdout.contains("Tested: 0"), "{stdout}");
    receiver.stop().await;
});
