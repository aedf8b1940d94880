//! The breach register: platform breaches notified to every affected controller by e-mail
//! (SMTP sink) and webhook (receiver), tenant breaches with the 72-hour clock, lateness and
//! high-risk notices to data subjects.

use chrono::Duration;
use crm_domain::clock::Clock;
use crm_e2e::{Receiver, TestApp, assert_problem, both};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn breach_body(app: &TestApp, aware_hours_ago: i64) -> Value {
    json!({
        "title": "Backup bucket exposed",
        "nature": "A storage bucket with database backups was publicly readable for six hours.",
        "data_categories": "contact details, order history",
        "subjects_approx": 1200,
        "records_approx": 5400,
        "likely_consequences": "Phishing using the exposed addresses.",
        "measures": "Access revoked, keys rotated, access logs reviewed.",
        "contact_point": "dpo@platform.example",
        "aware_at": (app.clock.now() - Duration::hours(aware_hours_ago)).to_rfc3339(),
    })
}

both!(
    platform_breach_reaches_every_affected_controller_and_no_other,
    |app| {
        let a = app.new_tenant().await;
        let a_dpo = app.new_user(&a, "dpo").await;
        let b = app.new_tenant().await;
        let c = app.new_tenant().await;
        let mut receivers = Vec::new();
        for s in [&a, &b, &c] {
            let r = Receiver::start(204).await;
            app.create(
                "/v1/webhooks",
                &s.access,
                json!({"url": r.url, "event_types": ["breach.notified"]}),
            )
            .await;
            receivers.push(r);
        }
        let platform = app.platform_admin().await;

        // Bad input: missing content, a future awareness time, unknown tenants.
        let resp = app
            .post("/v1/breaches", &platform.access, &json!({"title": ""}))
            .await;
        let problem = assert_problem(resp, 422, "validation_failed").await;
        assert!(
            problem["errors"].as_array().unwrap().len() >= 6,
            "{problem}"
        );
        let mut future = breach_body(&app, 0);
        future["aware_at"] = json!((app.clock.now() + Duration::hours(2)).to_rfc3339());
        future["affected_tenants"] = json!([a.tenant_id()]);
        crm_e2e::assert_invalid(
            app.post("/v1/breaches", &platform.access, &future).await,
            "/aware_at",
            "in_future",
        )
        .await;
        let mut unknown = breach_body(&app, 1);
        unknown["affected_tenants"] = json!([uuid::Uuid::now_v7()]);
        crm_e2e::assert_invalid(
            app.post("/v1/breaches", &platform.access, &unknown).await,
            "/affected_tenants",
            "unknown_tenant",
        )
        .await;

        let mut body = breach_body(&app, 1);
        body["affected_tenants"] = json!([a.tenant_id(), b.tenant_id()]);
        let breach = app.create("/v1/breaches", &platform.access, body).await;
        let id = breach["id"].as_str().unwrap();
        assert_eq!(breach["scope"], "platform");
        assert_eq!(breach["status"], "open");
        assert_eq!(breach["overdue"], false);
        let aware =
            chrono::DateTime::parse_from_rfc3339(breach["aware_at"].as_str().unwrap()).unwrap();
        let deadline =
            chrono::DateTime::parse_from_rfc3339(breach["deadline_at"].as_str().unwrap()).unwrap();
        assert_eq!(deadline - aware, Duration::hours(72));

        // Affected controllers see it; the unaffected one does not; members may not look.
        let path = format!("/v1/breaches/{id}");
        for s in [&a, &b] {
            let listed: Value = app
                .get("/v1/breaches", &s.access)
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(listed["data"][0]["id"], id);
        }
        assert_problem(app.get(&path, &c.access).await, 404, "breach_not_found").await;
        let listed: Value = app
            .get("/v1/breaches", &c.access)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(listed["data"], json!([]));
        let member = app.new_user(&a, "member").await;
        assert_problem(app.get(&path, &member.access).await, 403, "forbidden").await;
        // Only the recorder notifies.
        let a_up = app.stepped_up(&a).await;
        assert_problem(
            app.post(&format!("{path}/notify"), &a_up.access, &json!({}))
                .await,
            403,
            "forbidden",
        )
        .await;

        // Notify: e-mails to A's admin and dpo and B's admin, an event for A and B.
        let resp = app
            .post(&format!("{path}/notify"), &platform.access, &json!({}))
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let report: Value = resp.json().await.unwrap();
        assert_eq!(report["controller_emails"], 3);
        assert_eq!(report["webhook_events"], 2);
        assert_eq!(report["breach"]["status"], "notified");
        let mails = app.mail.wait_for(3).await;
        let mut to: Vec<String> = mails.iter().flat_map(|m| m.to.clone()).collect();
        to.sort();
        let mut expected = vec![a.email.clone(), a_dpo.email.clone(), b.email.clone()];
        expected.sort();
        assert_eq!(to, expected);
        assert!(mails[0].data.contains("Backup bucket exposed"));
        for r in &receivers[..2] {
            let got = r.wait_for(1).await;
            assert_eq!(got[0].json()["type"], "breach.notified");
            assert_eq!(got[0].json()["data"]["object_id"], id);
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            receivers[2].received().is_empty(),
            "the unaffected tenant got nothing"
        );
        assert_eq!(app.mail.received().len(), 3);
        assert_problem(
            app.post(&format!("{path}/notify"), &platform.access, &json!({}))
                .await,
            409,
            "already_notified",
        )
        .await;

        // Delivery state: the recorder sees every message, an affected tenant its own.
        let mut all = Value::Null;
        for _ in 0..100 {
            all = app
                .get(&format!("{path}/notifications"), &platform.access)
                .await
                .json()
                .await
                .unwrap();
            if all["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["status"] == "sent")
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(all["data"].as_array().unwrap().len(), 3, "{all}");
        assert!(
            all["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["status"] == "sent")
        );
        let mine: Value = app
            .get(&format!("{path}/notifications"), &b.access)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(mine["data"].as_array().unwrap().len(), 1);
        for r in receivers {
            r.stop().await;
        }
    }
);

both!(tenant_breach_deadline_lateness_and_data_subjects, |app| {
    let admin = app.new_tenant().await;
    let dpo = app.new_user(&admin, "dpo").await;
    let member = app.new_user(&admin, "member").await;
    let stranger = app.new_tenant().await;
    let with_email = app
        .create(
            "/v1/contacts",
            &admin.access,
            json!({"first_name": "Ida", "email": "ida@example.com"}),
        )
        .await;
    let without = app
        .create("/v1/contacts", &admin.access, json!({"first_name": "Noel"}))
        .await;
    let foreign = app
        .create(
            "/v1/contacts",
            &stranger.access,
            json!({"first_name": "Zed"}),
        )
        .await;

    assert_problem(
        app.post("/v1/breaches", &member.access, &breach_body(&app, 0))
            .await,
        403,
        "forbidden",
    )
    .await;
    // A tenant names neither other tenants nor another tenant's contacts.
    let mut body = breach_body(&app, 0);
    body["affected_contacts"] = json!([foreign["id"]]);
    crm_e2e::assert_invalid(
        app.post("/v1/breaches", &dpo.access, &body).await,
        "/affected_contacts",
        "unknown_contact",
    )
    .await;
    let mut body = breach_body(&app, 0);
    body["high_risk"] = json!(true);
    body["affected_contacts"] = json!([with_email["id"], without["id"]]);
    let breach = app.create("/v1/breaches", &dpo.access, body).await;
    let path = format!("/v1/breaches/{}", breach["id"].as_str().unwrap());
    assert_eq!(breach["scope"], "tenant");
    assert_problem(
        app.get(&path, &stranger.access).await,
        404,
        "breach_not_found",
    )
    .await;

    // A phased update.
    let updated: Value = app
        .post(
            &format!("{path}/updates"),
            &dpo.access,
            &json!({"note": "Forensics confirmed the scope."}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        updated["updates"][0]["note"],
        "Forensics confirmed the scope."
    );

    // Not overdue yet; 73 hours later it is.
    let overdue: Value = app
        .get("/v1/breaches?overdue=true", &dpo.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(overdue["data"], json!([]));
    app.clock.advance(Duration::hours(73));
    let dpo = app.session(&dpo.tenant, &dpo.email, &dpo.password).await;
    let overdue: Value = app
        .get("/v1/breaches?overdue=true&status=open", &dpo.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(overdue["data"][0]["overdue"], true);

    // Notifying needs a step-up, and now a reason for the delay.
    assert_problem(
        app.post(&format!("{path}/notify"), &dpo.access, &json!({}))
            .await,
        401,
        "step_up_required",
    )
    .await;
    let dpo = app.stepped_up(&dpo).await;
    crm_e2e::assert_invalid(
        app.post(&format!("{path}/notify"), &dpo.access, &json!({}))
            .await,
        "/late_reason",
        "late_reason_required",
    )
    .await;
    let resp = app
        .post(
            &format!("{path}/notify"),
            &dpo.access,
            &json!({"late_reason": "The extent was only known after forensics."}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let report: Value = resp.json().await.unwrap();
    // The admin and the dpo; one subject has an address.
    assert_eq!(report["controller_emails"], 2);
    assert_eq!(report["data_subject_emails"], 1);
    assert_eq!(
        report["breach"]["late_reason"],
        "The extent was only known after forensics."
    );
    assert_eq!(report["breach"]["overdue"], false);
    let mails = app.mail.wait_for(3).await;
    let to_subject: Vec<_> = mails
        .iter()
        .filter(|m| m.to == ["ida@example.com"])
        .collect();
    assert_eq!(to_subject.len(), 1);
    assert!(to_subject[0].data.contains("high risk"));

    // Erasing the person takes the messages to their address with them.
    let erase = app
        .post(
            &format!("/v1/contacts/{}/erase", with_email["id"].as_str().unwrap()),
            &dpo.access,
            &json!({}),
        )
        .await;
    assert_eq!(erase.status(), StatusCode::OK);
    for (table, row) in crm_e2e::dump_all_rows(&app).await {
        assert!(
            !row.contains("ida@example.com"),
            "{table} keeps the address"
        );
    }
});

// Two server nodes on one database, each with its delivery worker: a platform breach
// affecting two tenants reaches each controller exactly once by e-mail and webhook, and a
// tenant written to through one node is mirrored through the other's change feed.
both!(two_nodes_notify_once_and_mirror_through_the_feed, |app| {
    let (node2, node2_handle) = app.second_node().await;
    let a = app.new_tenant().await;
    let b = app.new_tenant().await;
    let bystander = app.new_tenant().await;
    let mut receivers = Vec::new();
    for s in [&a, &b, &bystander] {
        let r = Receiver::start(204).await;
        app.create(
            "/v1/webhooks",
            &s.access,
            json!({"url": r.url, "event_types": ["breach.notified"]}),
        )
        .await;
        receivers.push(r);
    }
    let platform = app.platform_admin().await;
    let mut body = breach_body(&app, 2);
    body["affected_tenants"] = json!([a.tenant_id(), b.tenant_id()]);
    let breach = app.create("/v1/breaches", &platform.access, body).await;
    // Notified through the second node.
    let resp = app
        .client
        .post(format!(
            "{node2}/v1/breaches/{}/notify",
            breach["id"].as_str().unwrap()
        ))
        .bearer_auth(&platform.access)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    app.mail.wait_for(2).await;
    receivers[0].wait_for(1).await;
    receivers[1].wait_for(1).await;
    // Both workers ran for a while: still exactly one of each.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(app.mail.received().len(), 2);
    let counts: Vec<usize> = receivers.iter().map(|r| r.received().len()).collect();
    assert_eq!(counts, [1, 1, 0]);

    // Mirror tenant A through node 2 while writing through node 1.
    let writer = {
        let app = app.clone();
        let token = a.access.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                let c = app
                    .create(
                        "/v1/contacts",
                        &token,
                        json!({"first_name": format!("M{i}")}),
                    )
                    .await;
                if i % 4 == 0 {
                    let path = format!("/v1/contacts/{}", c["id"].as_str().unwrap());
                    app.delete(&path, &token).await;
                }
            }
        })
    };
    let mut mirror = std::collections::BTreeSet::new();
    let mut since = 0;
    loop {
        let finished = writer.is_finished();
        let page: Value = app
            .client
            .get(format!("{node2}/v1/changes?since={since}"))
            .bearer_auth(&a.access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for e in page["data"].as_array().unwrap() {
            let id = e["object_id"].as_str().unwrap_or_default().to_owned();
            match e["type"].as_str().unwrap() {
                "contact.created" | "contact.updated" => {
                    mirror.insert(id);
                }
                "contact.deleted" => {
                    mirror.remove(&id);
                }
                _ => {}
            }
        }
        since = page["next_since"].as_i64().unwrap();
        if finished && page["data"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    writer.await.unwrap();
    let list: Value = app
        .get("/v1/contacts?limit=200", &a.access)
        .await
        .json()
        .await
        .unwrap();
    let actual: std::collections::BTreeSet<String> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(mirror, actual);
    assert_eq!(actual.len(), 15);
    node2_handle.stop(false).await;
    for r in receivers {
        r.stop().await;
    }
});
