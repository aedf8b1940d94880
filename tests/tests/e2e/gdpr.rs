//! GDPR: export, redaction, erasure that leaves no trace, legal hold, suppression, the audit
//! chain and who may do what.

use crm_e2e::{Backend, TestApp, assert_problem, both, capture_logs, dump_all_rows, open_db};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const EMAIL: &str = "erase-me.please@example.org";
const FIRST: &str = "Philippa";
const LAST: &str = "Quartermaine";
const PHONE: &str = "+44 1632 960777";

/// A contact with a company, a booked and a draft order and some history.
async fn subject(app: &TestApp, token: &str) -> (Value, Value, Value) {
    let company = app
        .create("/v1/companies", token, json!({"name": "Harbour Holdings"}))
        .await;
    let contact = app
        .create(
            "/v1/contacts",
            token,
            json!({"first_name": FIRST, "last_name": LAST, "email": EMAIL, "phone": PHONE, "job_title": "Navigator", "company_id": company["id"]}),
        )
        .await;
    let path = format!("/v1/contacts/{}", contact["id"].as_str().unwrap());
    assert_eq!(
        app.patch(&path, token, &json!({"job_title": "Chief Navigator"}))
            .await
            .status(),
        StatusCode::OK
    );
    let booked = app
        .create(
            "/v1/orders",
            token,
            json!({"contact_id": contact["id"], "status": "placed", "currency": "GBP", "lines": [{"sku": "MAP-1", "description": "Sea chart", "quantity": 2, "unit_price_minor": 4500}]}),
        )
        .await;
    let draft = app
        .create("/v1/orders", token, json!({"contact_id": contact["id"], "currency": "GBP", "lines": [{"description": "Compass", "quantity": 1, "unit_price_minor": 999}]}))
        .await;
    (contact, booked, draft)
}

both!(export_holds_everything_about_the_person, |app| {
    let s = app.new_tenant().await;
    let (contact, booked, draft) = subject(&app, &s.access).await;
    let path = format!("/v1/contacts/{}/export", contact["id"].as_str().unwrap());
    let resp = app.get(&path, &s.access).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let export: Value = resp.json().await.unwrap();

    // Everything that was put in about the person is in the export.
    let subject = &export["subject"];
    for (field, value) in [
        ("first_name", FIRST),
        ("last_name", LAST),
        ("email", EMAIL),
        ("phone", PHONE),
        ("job_title", "Chief Navigator"),
    ] {
        assert_eq!(subject[field], value, "{field}");
    }
    assert_eq!(export["company"]["name"], "Harbour Holdings");
    let orders = export["orders"].as_array().unwrap();
    let ids: Vec<&Value> = orders.iter().map(|o| &o["id"]).collect();
    assert!(ids.contains(&&booked["id"]) && ids.contains(&&draft["id"]));
    let chart = orders.iter().find(|o| o["id"] == booked["id"]).unwrap();
    assert_eq!(chart["lines"][0]["description"], "Sea chart");
    assert_eq!(chart["total_minor"], 9000);

    // Complete against the registry: every exported column of the subject's tables is there.
    for (table, section) in [
        ("contacts", subject),
        ("orders", &orders[0]),
        ("order_lines", &chart["lines"][0]),
    ] {
        for column in crm_domain::personal_data::exported_columns(table) {
            assert!(
                section.get(column).is_some(),
                "export lacks {table}.{column}: {section}"
            );
        }
    }
    // Who read and changed the record, including this export.
    let actions: Vec<&str> = export["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for action in ["contact.created", "contact.updated", "contact.exported"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let processing = &export["processing"];
    for key in [
        "controller",
        "categories",
        "purposes",
        "lawful_bases",
        "retention",
        "recipients",
        "source",
    ] {
        assert!(
            processing.get(key).is_some(),
            "processing information lacks {key}"
        );
    }
    assert_eq!(processing["controller"], format!("Tenant {}", s.tenant));
    // The export itself is in the audit trail.
    let audit: Value = app
        .get(
            &format!(
                "/v1/audit-events?action=contact.exported&object_id={}",
                contact["id"].as_str().unwrap()
            ),
            &s.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["data"].as_array().unwrap().len(), 1);
    assert_eq!(audit["data"][0]["actor_kind"], "user");
    assert!(audit["data"][0]["request_id"].is_string());
});

both!(erasure_leaves_no_trace, |app| {
    let logs = capture_logs();
    let s = app.new_tenant().await;
    // Erasure needs a recent WebAuthn step-up.
    let s = app.stepped_up(&s).await;
    let (contact, booked, draft) = subject(&app, &s.access).await;
    let id = contact["id"].as_str().unwrap();
    // Reads and an export before the erasure leave audit history too.
    assert_eq!(
        app.get(&format!("/v1/contacts/{id}/export"), &s.access)
            .await
            .status(),
        StatusCode::OK
    );

    let resp = app
        .post(&format!("/v1/contacts/{id}/erase"), &s.access, &json!({}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let plan: Value = resp.json().await.unwrap();
    assert_eq!(plan["dry_run"], false);
    assert!(plan["erasure_id"].is_string());
    assert_eq!(plan["suppressed"], true);
    let kept_orders = plan["kept"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["table"] == "orders")
        .unwrap();
    assert_eq!(
        kept_orders["ids"],
        json!([booked["id"]]),
        "the booked order is kept by law"
    );
    assert!(kept_orders["reason"].as_str().unwrap().contains("17(3)(b)"));
    let deleted_orders = plan["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["table"] == "orders")
        .unwrap();
    assert_eq!(deleted_orders["ids"], json!([draft["id"]]));

    assert_problem(
        app.get(&format!("/v1/contacts/{id}"), &s.access).await,
        404,
        "contact_not_found",
    )
    .await;
    assert_problem(
        app.get(
            &format!("/v1/orders/{}", draft["id"].as_str().unwrap()),
            &s.access,
        )
        .await,
        404,
        "order_not_found",
    )
    .await;
    let kept: Value = app
        .get(
            &format!("/v1/orders/{}", booked["id"].as_str().unwrap()),
            &s.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        kept["contact_id"],
        Value::Null,
        "kept order is detached from the person"
    );
    assert_eq!(kept["total_minor"], 9000, "and still good for the books");

    // Scan every row of every table for the person.
    let rows = dump_all_rows(&app).await;
    assert!(
        rows.iter().any(|(t, _)| t == "audit_events"),
        "the scan sees the audit trail"
    );
    for (table, row) in &rows {
        for needle in [EMAIL, FIRST, LAST, PHONE, "1632 960777", "Navigator"] {
            assert!(
                !row.contains(needle),
                "{table} still holds {needle:?}: {row}"
            );
        }
    }
    // Values are sealed, so their text would not show in a row anyway: the erased contact's
    // rows are gone too. Only the audit trail, the erasure ledger and the change feed (its
    // events reduced to ids) still name the contact's id.
    let hex = id.replace('-', "").to_uppercase();
    for (table, row) in &rows {
        if !["audit_events", "erasure_ledger", "events"].contains(&table.as_str()) {
            assert!(
                !row.contains(id) && !row.contains(&hex),
                "{table} still refers to the erased contact: {row}"
            );
        }
    }
    // On SQLite, the raw database files too (deleted content is zeroed, the WAL truncated).
    if app.backend == Backend::Sqlite {
        let dir = std::path::Path::new(
            app.settings
                .database_url
                .trim_start_matches("sqlite://")
                .split('?')
                .next()
                .unwrap(),
        )
        .parent()
        .unwrap()
        .to_owned();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                for needle in [EMAIL, FIRST, LAST] {
                    let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
                    assert!(!found, "{} holds {needle:?}", path.display());
                }
            }
        }
    }
    // A database dump (pg_dump, or SQLite's VACUUM INTO) does not hold them either.
    let db = open_db(&app).await;
    let dump = crm_e2e::backup(&app, &db).await;
    db.close().await.ok();
    let bytes = std::fs::read(&dump).unwrap();
    for needle in [EMAIL, FIRST, LAST, PHONE] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the dump holds {needle:?}"
        );
    }
    for line in logs.lines() {
        for needle in [EMAIL, FIRST, LAST, PHONE] {
            assert!(!line.contains(needle), "log holds {needle:?}: {line}");
        }
    }
    // The erasure is in the audit trail, with ids and counts only.
    let audit: Value = app
        .get(
            &format!("/v1/audit-events?object_id={id}&action=contact.erased"),
            &s.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["data"][0]["details"]["kept"]["orders"], 1);
});

/// The files the database keeps its data in: SQLite's database and WAL files; PostgreSQL's
/// files of this database and the write-ahead log (after a checkpoint, so every change is
/// on disk). The test process reads them directly (PostgreSQL runs on this machine).
async fn database_files(
    app: &TestApp,
    db: &sea_orm::DatabaseConnection,
) -> Vec<std::path::PathBuf> {
    use sea_orm::{ConnectionTrait, Statement};
    let dirs: Vec<std::path::PathBuf> = match app.backend {
        Backend::Sqlite => vec![
            std::path::Path::new(
                app.settings
                    .database_url
                    .trim_start_matches("sqlite://")
                    .split('?')
                    .next()
                    .unwrap(),
            )
            .parent()
            .unwrap()
            .to_owned(),
        ],
        Backend::Postgres => {
            let backend = db.get_database_backend();
            db.execute_unprepared("CHECKPOINT").await.unwrap();
            let one = |sql: &'static str| async move {
                db.query_one_raw(Statement::from_string(backend, sql))
                    .await
                    .unwrap()
                    .unwrap()
                    .try_get_by_index::<String>(0)
                    .unwrap()
            };
            let data = std::path::PathBuf::from(one("SHOW data_directory").await);
            let oid =
                one("SELECT oid::text FROM pg_database WHERE datname = current_database()").await;
            vec![data.join("base").join(oid), data.join("pg_wal")]
        }
    };
    let mut files = Vec::new();
    for dir in dirs {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot read {} ({e}): this test reads the database's own files, so it runs \
                 where the database runs, as a user who may read them",
                dir.display()
            )
        });
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files
}

/// For each needle, the files that hold it (each file read once).
fn files_holding(files: &[std::path::PathBuf], needles: &[&str]) -> Vec<Vec<String>> {
    let finders: Vec<memchr::memmem::Finder> = needles
        .iter()
        .map(|n| memchr::memmem::Finder::new(n.as_bytes()))
        .collect();
    let mut found = vec![Vec::new(); needles.len()];
    for f in files {
        // A file may go away while we look (a recycled WAL segment).
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        for (k, finder) in finders.iter().enumerate() {
            if finder.find(&bytes).is_some() {
                found[k].push(f.display().to_string());
            }
        }
    }
    found
}

// Names unique to this run: write-ahead logs are recycled, not wiped, so an earlier run's
// values may still be in them.
both!(erased_people_are_not_in_the_database_files, |app| {
    let s = app.new_tenant().await;
    let s = app.stepped_up(&s).await;
    let tag = crm_e2e::random_hex(10);
    let first = format!("Ysolde{tag}");
    let last = format!("Brackenridge{tag}");
    let email = format!("ysolde.{tag}@example.org");
    let phone = format!(
        "+44 20 7946 {}",
        u32::from_str_radix(&tag[..5], 16).unwrap() % 10_000_000
    );
    // Not personal, kept in the clear: the scan must find it (it reads the right files).
    let control = format!("Lighthouse Trading {tag}");
    let company = app
        .create("/v1/companies", &s.access, json!({"name": control}))
        .await;
    let contact = app
        .create(
            "/v1/contacts",
            &s.access,
            json!({"first_name": first, "last_name": last, "email": email, "job_title": format!("Keeper {tag}"), "company_id": company["id"]}),
        )
        .await;
    let id = contact["id"].as_str().unwrap();
    // Changes leave old row versions behind (PostgreSQL keeps them until reused).
    for body in [
        json!({"phone": phone}),
        json!({"job_title": format!("Head Keeper {tag}")}),
    ] {
        assert_eq!(
            app.patch(&format!("/v1/contacts/{id}"), &s.access, &body)
                .await
                .status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        app.post(
            "/v1/purposes",
            &s.access,
            &json!({"key": "newsletter", "name": "Newsletter"})
        )
        .await
        .status(),
        StatusCode::CREATED
    );
    let evidence = format!("{first} {last} ticked the box");
    assert_eq!(
        app.post(
            &format!("/v1/contacts/{id}/consents"),
            &s.access,
            &json!({"purpose": "newsletter", "status": "granted", "lawful_basis": "consent", "channel": "web",
                    "source": format!("form filled in by {email}"), "evidence": evidence}),
        )
        .await
        .status(),
        StatusCode::CREATED
    );
    let request = app
        .create(
            "/v1/dsr",
            &s.access,
            json!({"kind": "erasure", "contact_id": id}),
        )
        .await;
    let outcome = format!("identity of {first} {last} checked by phone {phone}");
    assert_eq!(
        app.patch(
            &format!("/v1/dsr/{}", request["id"].as_str().unwrap()),
            &s.access,
            &json!({"outcome": outcome}),
        )
        .await
        .status(),
        StatusCode::OK
    );
    // Sealed values come back whole through the API.
    let export: Value = app
        .get(&format!("/v1/contacts/{id}/export"), &s.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(export["subject"]["email"], email.as_str());
    assert_eq!(export["subject"]["phone"], phone.as_str());
    assert_eq!(export["consents"][0]["evidence"], evidence.as_str());
    assert_eq!(export["requests"][0]["outcome"], outcome.as_str());
    let found: Value = app
        .get(&format!("/v1/contacts?email={email}"), &s.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["data"][0]["id"], id);
    let found: Value = app
        .get(
            &format!("/v1/contacts?q={}", &last[..12].to_uppercase()),
            &s.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        found["data"][0]["id"], id,
        "search matches the opened values"
    );

    assert_eq!(
        app.post(&format!("/v1/contacts/{id}/erase"), &s.access, &json!({}))
            .await
            .status(),
        StatusCode::OK
    );
    let db = open_db(&app).await;
    let files = database_files(&app, &db).await;
    let needles = [&control, &first, &last, &email, &phone, &evidence, &outcome];
    let found = files_holding(&files, &needles.map(String::as_str));
    assert!(
        !found[0].is_empty(),
        "the scan finds what is kept in the clear ({} files)",
        files.len()
    );
    for (needle, holding) in needles.iter().zip(&found).skip(1) {
        assert!(holding.is_empty(), "{needle:?} is in {holding:?}");
    }
    db.close().await.ok();
});

// The key-encryption key rotates and the old one is retired: everything stays readable
// through a node that has only the new key, and what the old key wrapped (copies of data
// keys in old row versions, WAL, backups) no longer opens. A row written in the clear by an
// older version is sealed when a node starts.
both!(data_keys_rotate_and_older_rows_are_sealed, |app| {
    use sea_orm::{ConnectionTrait, Statement};
    let s = app.new_tenant().await;
    let contact = app
        .create(
            "/v1/contacts",
            &s.access,
            json!({"first_name": "Rowena", "last_name": "Rotherhithe", "email": "rowena@example.org"}),
        )
        .await;
    let id = contact["id"].as_str().unwrap().to_owned();
    app.create(
        "/v1/purposes",
        &s.access,
        json!({"key": "news", "name": "News"}),
    )
    .await;
    let consent = json!({"purpose": "news", "status": "granted", "lawful_basis": "consent",
                         "channel": "web", "evidence": "Rowena ticked the box"});
    app.create(&format!("/v1/contacts/{id}/consents"), &s.access, consent)
        .await;
    let request = app
        .create(
            "/v1/dsr",
            &s.access,
            json!({"kind": "access", "contact_id": id}),
        )
        .await;
    let request_path = format!("/v1/dsr/{}", request["id"].as_str().unwrap());
    assert_eq!(
        app.patch(
            &request_path,
            &s.access,
            &json!({"outcome": "sent to Rowena by post"})
        )
        .await
        .status(),
        StatusCode::OK
    );
    // A stored idempotent answer (sealed under the KEK).
    let idem_key = format!("rotation-{}", crm_e2e::random_hex(8));
    let create_idem = |base: String| {
        app.client
            .post(format!("{base}/v1/contacts"))
            .bearer_auth(&s.access)
            .header("Idempotency-Key", &idem_key)
            .json(&json!({"email": "idem.rotation@example.org"}))
            .send()
    };
    let first = create_idem(app.base.clone()).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();

    let db = open_db(&app).await;
    let backend = db.get_database_backend();
    let lit = crm_e2e::id_literal(app.backend, &id);
    // A row as an older version wrote it: in the clear, without a data key or blind index.
    let legacy = uuid::Uuid::now_v7().to_string();
    db.execute_unprepared(&format!(
        "INSERT INTO contacts (id, tenant_id, first_name, last_name, email, created_at, updated_at, version, legal_hold) \
         SELECT {}, tenant_id, 'Lenora', 'Legacy', 'lenora.legacy@example.org', created_at, updated_at, 1, legal_hold \
         FROM contacts WHERE id = {lit}",
        crm_e2e::id_literal(app.backend, &legacy)
    ))
    .await
    .unwrap();
    // And a consent of that person as an older version wrote it; its evidence happens to
    // start with what looks like a sealed value's prefix in another case.
    let legacy_consent = uuid::Uuid::now_v7().to_string();
    db.execute_unprepared(&format!(
        "INSERT INTO consents (id, tenant_id, contact_id, purpose_id, status, lawful_basis, channel, source, evidence, recorded_by, recorded_at) \
         SELECT {}, tenant_id, {}, purpose_id, status, lawful_basis, channel, NULL, 'S1: paper form signed by Lenora', recorded_by, recorded_at \
         FROM consents WHERE contact_id = {lit}",
        crm_e2e::id_literal(app.backend, &legacy_consent),
        crm_e2e::id_literal(app.backend, &legacy),
    ))
    .await
    .unwrap();
    let row = db
        .query_one_raw(Statement::from_string(
            backend,
            format!("SELECT tenant_id, data_key FROM contacts WHERE id = {lit}"),
        ))
        .await
        .unwrap()
        .unwrap();
    let tenant: uuid::Uuid = row.try_get_by_index(0).unwrap();
    let wrapped_before: Vec<u8> = row.try_get_by_index(1).unwrap();

    assert_eq!(crm_api::keys::generate_kek(&app.key_dir).unwrap(), 2);
    assert_eq!(
        crm_domain::sealing::count_under(&db, 1).await.unwrap(),
        4,
        "two data keys, the request's outcome and the stored answer are under key 1"
    );
    let vault = crm_api::keys::load_vault(&app.key_dir, false).unwrap();
    let done = crm_domain::sealing::rewrap_all(&db, &vault).await.unwrap();
    assert_eq!(done.data_keys, 2, "both sealed contacts: {done:?}");
    assert_eq!(
        done.values, 2,
        "the request's outcome and the stored answer: {done:?}"
    );
    assert_eq!(
        crm_domain::sealing::rewrap_all(&db, &vault).await.unwrap(),
        crm_domain::sealing::Rewrapped::default(),
        "a second pass finds nothing left under the old key"
    );
    assert_eq!(crm_domain::sealing::count_under(&db, 1).await.unwrap(), 0);
    assert!(
        crm_api::keys::remove_kek(&app.key_dir, 2).is_err(),
        "the newest key stays"
    );
    crm_api::keys::remove_kek(&app.key_dir, 1).unwrap();
    let retired = crm_api::keys::load_vault(&app.key_dir, false).unwrap();
    let contact_uuid = uuid::Uuid::parse_str(&id).unwrap();
    let tid = crm_domain::ids::TenantId::from_uuid(tenant);
    assert!(
        retired
            .data_key(tid, contact_uuid, &wrapped_before)
            .is_err(),
        "the key as wrapped before the rotation opens no more"
    );

    // A node with only the new key: it seals the older row when it starts.
    let (base, handle) = app.second_node().await;
    let get = |path: String| {
        let url = format!("{base}{path}");
        let token = s.access.clone();
        let client = app.client.clone();
        async move {
            let resp = client.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.json::<Value>().await.unwrap()
        }
    };
    assert_eq!(
        get(format!("/v1/contacts/{id}")).await["last_name"],
        "Rotherhithe"
    );
    assert_eq!(
        get(format!("/v1/contacts/{legacy}")).await["first_name"],
        "Lenora"
    );
    let found = get("/v1/contacts?email=lenora.legacy@example.org".into()).await;
    assert_eq!(found["data"][0]["id"], legacy.as_str());
    let consents = get(format!("/v1/contacts/{id}/consents")).await;
    assert_eq!(consents["history"][0]["evidence"], "Rowena ticked the box");
    assert_eq!(
        get(request_path.clone()).await["outcome"],
        "sent to Rowena by post"
    );
    let legacy_consents = get(format!("/v1/contacts/{legacy}/consents")).await;
    assert_eq!(
        legacy_consents["history"][0]["evidence"],
        "S1: paper form signed by Lenora"
    );
    let evidence = db
        .query_one_raw(Statement::from_string(
            backend,
            format!(
                "SELECT evidence FROM consents WHERE id = {}",
                crm_e2e::id_literal(app.backend, &legacy_consent)
            ),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<String>(0)
        .unwrap();
    assert!(evidence.starts_with("s1:"), "sealed at start: {evidence}");
    let again = create_idem(base.clone()).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let sealed = db
        .query_one_raw(Statement::from_string(
            backend,
            format!(
                "SELECT first_name, email_index FROM contacts WHERE id = {}",
                crm_e2e::id_literal(app.backend, &legacy)
            ),
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(
        sealed
            .try_get_by_index::<String>(0)
            .unwrap()
            .starts_with("s1:")
    );
    assert!(
        sealed
            .try_get_by_index::<Option<String>>(1)
            .unwrap()
            .is_some()
    );
    handle.stop(true).await;
    db.close().await.ok();
});

both!(dry_run_changes_nothing_and_legal_hold_blocks, |app| {
    let s = app.new_tenant().await;
    // Erasure needs a recent WebAuthn step-up.
    let s = app.stepped_up(&s).await;
    let (contact, _, _) = subject(&app, &s.access).await;
    let id = contact["id"].as_str().unwrap();
    let before = dump_all_rows(&app).await;
    let resp = app
        .post(
            &format!("/v1/contacts/{id}/erase?dry_run=true"),
            &s.access,
            &json!({}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let plan: Value = resp.json().await.unwrap();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["erasure_id"], Value::Null);
    assert_eq!(plan["deleted"][0]["ids"], json!([id]));
    assert_eq!(
        dump_all_rows(&app).await,
        before,
        "a dry run writes nothing, not even an audit entry"
    );
    assert_problem(
        app.post(
            &format!("/v1/contacts/{id}/erase?dry_run=maybe"),
            &s.access,
            &json!({}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;

    let hold = app
        .request(
            Method::PUT,
            &format!("/v1/contacts/{id}/legal-hold"),
            Some(&s.access),
            None,
        )
        .await;
    assert_eq!(hold.status(), StatusCode::NO_CONTENT);
    let held: Value = app
        .get(&format!("/v1/contacts/{id}"), &s.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(held["legal_hold"], true);
    assert_problem(
        app.post(&format!("/v1/contacts/{id}/erase"), &s.access, &json!({}))
            .await,
        409,
        "legal_hold",
    )
    .await;
    assert_problem(
        app.post(&format!("/v1/contacts/{id}/redact"), &s.access, &json!({}))
            .await,
        409,
        "legal_hold",
    )
    .await;
    assert_eq!(
        app.get(&format!("/v1/contacts/{id}"), &s.access)
            .await
            .status(),
        StatusCode::OK,
        "still there"
    );
    let release = app
        .request(
            Method::DELETE,
            &format!("/v1/contacts/{id}/legal-hold"),
            Some(&s.access),
            None,
        )
        .await;
    assert_eq!(release.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.post(&format!("/v1/contacts/{id}/erase"), &s.access, &json!({}))
            .await
            .status(),
        StatusCode::OK
    );
});

both!(suppression_blocks_recreation, |app| {
    let s = app.new_tenant().await;
    // Erasure needs a recent WebAuthn step-up.
    let s = app.stepped_up(&s).await;
    let other = app.new_tenant().await;
    let contact = app
        .create("/v1/contacts", &s.access, json!({"email": EMAIL}))
        .await;
    let id = contact["id"].as_str().unwrap();
    assert_eq!(
        app.post(&format!("/v1/contacts/{id}/erase"), &s.access, &json!({}))
            .await
            .status(),
        StatusCode::OK
    );

    let shouting = EMAIL.to_uppercase();
    assert_problem(
        app.post("/v1/contacts", &s.access, &json!({"email": shouting}))
            .await,
        409,
        "email_suppressed",
    )
    .await;
    let c = app
        .create("/v1/contacts", &s.access, json!({"first_name": "Someone"}))
        .await;
    let cpath = format!("/v1/contacts/{}", c["id"].as_str().unwrap());
    assert_problem(
        app.patch(&cpath, &s.access, &json!({"email": EMAIL})).await,
        409,
        "email_suppressed",
    )
    .await;

    let check: Value = app
        .post(
            "/v1/suppression/check",
            &s.access,
            &json!({"emails": [shouting, "fresh@example.org"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(check["results"][0]["suppressed"], true);
    assert_eq!(check["results"][1]["suppressed"], false);
    assert_problem(
        app.post(
            "/v1/suppression/check",
            &s.access,
            &json!({"emails": ["nope", 3]}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    assert_problem(
        app.post("/v1/suppression/check", &s.access, &json!({"emails": []}))
            .await,
        422,
        "validation_failed",
    )
    .await;
    // Suppression is the tenant's own: another controller may hold the same address.
    let check: Value = app
        .post(
            "/v1/suppression/check",
            &other.access,
            &json!({"emails": [EMAIL]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(check["results"][0]["suppressed"], false);
    app.create("/v1/contacts", &other.access, json!({"email": EMAIL}))
        .await;

    // An explicit override with a reason is possible, and audited.
    let back = app
        .create(
            "/v1/contacts",
            &s.access,
            json!({"email": EMAIL, "suppression_override_reason": "consent_renewed"}),
        )
        .await;
    let audit: Value = app
        .get(
            &format!(
                "/v1/audit-events?object_id={}",
                back["id"].as_str().unwrap()
            ),
            &s.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["data"][0]["details"]["suppression_overridden"], true);
    assert_eq!(audit["data"][0]["details"]["reason"], "consent_renewed");
    crm_e2e::assert_invalid(
        app.post(
            "/v1/contacts",
            &s.access,
            &json!({"email": "x@example.org", "suppression_override_reason": "because I said so"}),
        )
        .await,
        "/suppression_override_reason",
        "invalid_reason",
    )
    .await;
    // No table holds the address in clear: not for the erased person, and not for the new
    // contacts either (their values are sealed with their own data keys). The scan does see
    // the new contact's row.
    let rows = dump_all_rows(&app).await;
    let new_id = back["id"].as_str().unwrap();
    let new_hex = new_id.replace('-', "").to_uppercase();
    assert!(
        rows.iter()
            .any(|(t, r)| t == "contacts" && (r.contains(new_id) || r.contains(&new_hex))),
        "the scan sees the contacts table"
    );
    let holders: Vec<&(String, String)> = rows.iter().filter(|(_, r)| r.contains(EMAIL)).collect();
    assert!(holders.is_empty(), "the address in clear: {holders:?}");
});

both!(redaction_keeps_records_without_identity, |app| {
    let s = app.new_tenant().await;
    let (contact, booked, _) = subject(&app, &s.access).await;
    let id = contact["id"].as_str().unwrap();
    assert_eq!(
        app.post(&format!("/v1/contacts/{id}/redact"), &s.access, &json!({}))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let redacted: Value = app
        .get(&format!("/v1/contacts/{id}"), &s.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(redacted["first_name"], "[redacted]");
    assert_eq!(redacted["last_name"], "[redacted]");
    assert_eq!(redacted["email"], Value::Null);
    assert_eq!(redacted["phone"], Value::Null);
    assert!(redacted["redacted_at"].is_string());
    assert_eq!(
        redacted["company_id"], contact["company_id"],
        "still counts for its company"
    );
    let order: Value = app
        .get(
            &format!("/v1/orders/{}", booked["id"].as_str().unwrap()),
            &s.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        order["contact_id"], contact["id"],
        "statistics keep working"
    );
    assert_problem(
        app.patch(
            &format!("/v1/contacts/{id}"),
            &s.access,
            &json!({"first_name": "Back"}),
        )
        .await,
        409,
        "contact_redacted",
    )
    .await;
    for (table, row) in dump_all_rows(&app).await {
        for needle in [EMAIL, FIRST, LAST, PHONE] {
            assert!(
                !row.contains(needle),
                "{table} still holds {needle:?}: {row}"
            );
        }
    }
});

// Every page of the audit trail, filtered or not, follows the chain (`seq`) from the previous
// page's cursor; another tenant's cursor leads nowhere.
both!(audit_pages_follow_the_chain_with_their_filters, |app| {
    let s = app.new_tenant().await;
    let other = app.new_tenant().await;
    let tracked = app
        .create("/v1/contacts", &s.access, json!({"first_name": "Tracked"}))
        .await;
    let tracked_id = tracked["id"].as_str().unwrap().to_owned();
    // Entries about the tracked contact, interleaved with entries about others.
    for i in 0..5 {
        app.create(
            "/v1/contacts",
            &s.access,
            json!({"first_name": format!("Other{i}")}),
        )
        .await;
        let resp = app
            .patch(
                &format!("/v1/contacts/{tracked_id}"),
                &s.access,
                &json!({"job_title": format!("Role {i}")}),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    // One tenant's pages of `query`, `limit` at a time, followed to the end.
    let pages = |token: String, query: String, limit: usize| {
        let app = &app;
        async move {
            let mut entries: Vec<Value> = Vec::new();
            let mut cursor: Option<String> = None;
            for _ in 0..50 {
                let sep = if query.is_empty() { "" } else { "&" };
                let path = match &cursor {
                    Some(c) => format!("/v1/audit-events?limit={limit}{sep}{query}&cursor={c}"),
                    None => format!("/v1/audit-events?limit={limit}{sep}{query}"),
                };
                let resp = app.get(&path, &token).await;
                assert_eq!(resp.status(), StatusCode::OK, "{path}");
                let page: Value = resp.json().await.unwrap();
                let data = page["data"].as_array().unwrap();
                assert!(data.len() <= limit);
                entries.extend(data.iter().cloned());
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => return entries,
                }
            }
            panic!("more than 50 pages of {query}");
        }
    };
    let seqs = |entries: &[Value]| -> Vec<i64> {
        entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
    };

    // The tracked contact's entries get ids that run against the chain (the oldest the
    // largest): every page must follow `seq` all the same.
    {
        use sea_orm::ConnectionTrait;
        let db = open_db(&app).await;
        let ids: Vec<String> = pages(s.access.clone(), format!("object_id={tracked_id}"), 200)
            .await
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 6);
        let fresh: Vec<String> = ids
            .iter()
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        for (old, new) in ids.iter().zip(fresh.iter().rev()) {
            db.execute_unprepared(&format!(
                "UPDATE audit_events SET id = {} WHERE id = {}",
                crm_e2e::id_literal(app.backend, new),
                crm_e2e::id_literal(app.backend, old)
            ))
            .await
            .unwrap();
        }
    }
    let all = pages(s.access.clone(), String::new(), 200).await;
    assert_eq!(
        seqs(&all),
        (1..=all.len() as i64).collect::<Vec<_>>(),
        "one page of everything, in chain order"
    );
    let paged = pages(s.access.clone(), String::new(), 3).await;
    assert_eq!(
        paged, all,
        "pages of 3 give the same entries in the same order"
    );

    let about = pages(s.access.clone(), format!("object_id={tracked_id}"), 2).await;
    let actions: Vec<&str> = about
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "contact.created",
            "contact.updated",
            "contact.updated",
            "contact.updated",
            "contact.updated",
            "contact.updated"
        ]
    );
    assert!(about.iter().all(|e| e["object_id"] == tracked["id"]));
    let expected: Vec<Value> = all
        .iter()
        .filter(|e| e["object_id"] == tracked["id"])
        .cloned()
        .collect();
    assert_eq!(
        about, expected,
        "the object's entries of the whole trail, in its order"
    );

    let updates = pages(s.access.clone(), "action=contact.updated".into(), 2).await;
    let expected: Vec<Value> = all
        .iter()
        .filter(|e| e["action"] == "contact.updated")
        .cloned()
        .collect();
    assert_eq!(updates.len(), 5);
    assert_eq!(updates, expected);
    let both_filters = pages(
        s.access.clone(),
        format!("action=contact.created&object_id={tracked_id}"),
        1,
    )
    .await;
    assert_eq!(both_filters.len(), 1);
    assert_eq!(both_filters[0]["action"], "contact.created");

    // Another tenant: the first tenant's cursor gives an empty page, its object nothing.
    let first: Value = app
        .get("/v1/audit-events?limit=2", &s.access)
        .await
        .json()
        .await
        .unwrap();
    let cursor = first["next_cursor"].as_str().unwrap();
    let foreign: Value = app
        .get(&format!("/v1/audit-events?cursor={cursor}"), &other.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(foreign["data"], json!([]));
    assert_eq!(foreign["next_cursor"], Value::Null);
    assert!(
        pages(other.access.clone(), format!("object_id={tracked_id}"), 50)
            .await
            .is_empty()
    );
    assert_problem(
        app.get("/v1/audit-events?cursor=not-a-cursor", &s.access)
            .await,
        422,
        "validation_failed",
    )
    .await;
});

both!(audit_chain_detects_tampering, |app| {
    let s = app.new_tenant().await;
    let (contact, _, _) = subject(&app, &s.access).await;
    let db = open_db(&app).await;
    let (checked, breaks) = crm_domain::audit::verify_chain(&db).await.unwrap();
    assert!(checked >= 5, "{checked} entries");
    assert!(breaks.is_empty(), "{breaks:?}");

    let list: Value = app
        .get("/v1/audit-events?limit=200", &s.access)
        .await
        .json()
        .await
        .unwrap();
    let entries = list["data"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "contact.created" && e["object_id"] == contact["id"])
    );
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gap-free sequence"
    );
    assert_problem(
        app.get("/v1/audit-events?since=yesterday", &s.access).await,
        422,
        "validation_failed",
    )
    .await;

    use sea_orm::ConnectionTrait;
    let third = crm_e2e::id_literal(app.backend, entries[2]["id"].as_str().unwrap());
    db.execute_unprepared(&format!(
        "UPDATE audit_events SET action = 'contact.viewed' WHERE id = {third}"
    ))
    .await
    .unwrap();
    let (_, breaks) = crm_domain::audit::verify_chain(&db).await.unwrap();
    assert!(
        breaks
            .iter()
            .any(|b| b.seq == 3 && b.reason == "altered_entry"),
        "{breaks:?}"
    );

    let fifth = crm_e2e::id_literal(app.backend, entries[4]["id"].as_str().unwrap());
    db.execute_unprepared(&format!("DELETE FROM audit_events WHERE id = {fifth}"))
        .await
        .unwrap();
    let (_, breaks) = crm_domain::audit::verify_chain(&db).await.unwrap();
    assert!(
        breaks.iter().any(|b| b.reason == "missing_entry"),
        "{breaks:?}"
    );
    db.close().await.ok();
});

both!(erasures_are_replayed_after_a_restore, |app| {
    let s = app.new_tenant().await;
    // Erasure needs a recent WebAuthn step-up.
    let s = app.stepped_up(&s).await;
    let (contact, _, draft) = subject(&app, &s.access).await;
    let id = contact["id"].as_str().unwrap();
    let db = open_db(&app).await;
    // A backup taken before the erasure…
    let backup = crm_e2e::backup(&app, &db).await;
    assert_eq!(
        app.post(&format!("/v1/contacts/{id}/erase"), &s.access, &json!({}))
            .await
            .status(),
        StatusCode::OK
    );
    // …the ledger kept outside the backup…
    let ledger = crm_domain::gdpr::export_ledger(&db).await.unwrap();
    assert_eq!(ledger.len(), 1);
    let ledger_text = serde_json::to_string(&ledger).unwrap();
    for needle in [EMAIL, FIRST, LAST] {
        assert!(!ledger_text.contains(needle), "the ledger holds ids only");
    }
    db.close().await.ok();
    // …and the backup restored: the person is back.
    let restored = crm_e2e::restore(&app, &backup).await;
    let count = |db: sea_orm::DatabaseConnection| async move {
        use sea_orm::{ConnectionTrait, Statement};
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT count(*) AS n FROM contacts",
            ))
            .await
            .unwrap()
            .unwrap();
        let n: i64 = row.try_get("", "n").unwrap();
        db.close().await.ok();
        n
    };
    let restored_db = crm_domain::db::connect(&restored).await.unwrap();
    assert_eq!(count(restored_db.clone()).await, 1);
    let restored_db = crm_domain::db::connect(&restored).await.unwrap();
    assert_eq!(
        crm_domain::gdpr::import_ledger(&restored_db, &ledger)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        crm_domain::gdpr::replay_erasures(&restored_db)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        crm_domain::gdpr::replay_erasures(&restored_db)
            .await
            .unwrap(),
        0,
        "idempotent"
    );
    assert_eq!(count(restored_db).await, 0, "erased again");
    let _ = draft;
    crm_e2e::drop_restored(&app, &restored).await;
});

both!(only_dpo_and_admin_run_gdpr_operations, |app| {
    let admin = app.new_tenant().await;
    let dpo = app.new_user(&admin, "dpo").await;
    let member = app.new_user(&admin, "member").await;
    let viewer = app.new_user(&admin, "viewer").await;
    let stranger = app.new_tenant().await;
    let contact = app
        .create(
            "/v1/contacts",
            &member.access,
            json!({"email": "rights@example.org"}),
        )
        .await;
    let id = contact["id"].as_str().unwrap();
    let ops: Vec<(Method, String)> = vec![
        (Method::GET, format!("/v1/contacts/{id}/export")),
        (Method::POST, format!("/v1/contacts/{id}/redact")),
        (
            Method::POST,
            format!("/v1/contacts/{id}/erase?dry_run=true"),
        ),
        (Method::PUT, format!("/v1/contacts/{id}/legal-hold")),
        (Method::DELETE, format!("/v1/contacts/{id}/legal-hold")),
    ];
    for s in [&member, &viewer] {
        for (m, p) in &ops {
            assert_problem(
                app.request(m.clone(), p, Some(&s.access), Some(&json!({})))
                    .await,
                403,
                "forbidden",
            )
            .await;
        }
        assert_problem(
            app.get("/v1/audit-events", &s.access).await,
            403,
            "forbidden",
        )
        .await;
        assert_problem(
            app.get("/v1/gdpr/settings", &s.access).await,
            403,
            "forbidden",
        )
        .await;
    }
    for (m, p) in &ops {
        assert_problem(
            app.request(m.clone(), p, Some(&stranger.access), Some(&json!({})))
                .await,
            404,
            "contact_not_found",
        )
        .await;
    }
    // The stranger's audit trail shows nothing of the other tenant.
    let audit: Value = app
        .get(
            &format!("/v1/audit-events?object_id={id}"),
            &stranger.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["data"].as_array().unwrap().len(), 0);
    assert_eq!(
        app.get(&format!("/v1/contacts/{id}/export"), &dpo.access)
            .await
            .status(),
        StatusCode::OK
    );
    let settings: Value = app
        .get("/v1/gdpr/settings", &dpo.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(settings["order_retention_days"], 3653);
    let resp = app
        .request(
            Method::PUT,
            "/v1/gdpr/settings",
            Some(&dpo.access),
            Some(&json!({"order_retention_days": 2192})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app
        .request(
            Method::PUT,
            "/v1/gdpr/settings",
            Some(&dpo.access),
            Some(&json!({"order_retention_days": -1})),
        )
        .await;
    assert_problem(resp, 422, "validation_failed").await;
    assert_eq!(
        app.get("/v1/gdpr/settings", &admin.access)
            .await
            .json::<Value>()
            .await
            .unwrap()["order_retention_days"],
        2192
    );
    // Member may still check suppression (partners need it before imports).
    assert_eq!(
        app.post(
            "/v1/suppression/check",
            &viewer.access,
            &json!({"emails": ["a@example.org"]})
        )
        .await
        .status(),
        StatusCode::OK
    );
});
