//! Another tenant's objects are invisible: 404 on every route, absent from every list.

use crm_e2e::{assert_invalid, assert_problem, both};
use reqwest::Method;
use serde_json::{Value, json};

both!(another_tenants_objects_are_not_found, |app| {
    let a = app.new_tenant().await;
    let b = app.new_tenant().await;
    let company = app
        .create("/v1/companies", &a.access, json!({"name": "A's company"}))
        .await;
    let contact = app
        .create(
            "/v1/contacts",
            &a.access,
            json!({"email": "secret@a.example", "company_id": company["id"]}),
        )
        .await;
    let order = app
        .create("/v1/orders", &a.access, json!({"contact_id": contact["id"], "currency": "EUR", "lines": [{"description": "A", "quantity": 1, "unit_price_minor": 1}]}))
        .await;
    let a_user = app.new_user(&a, "member").await;
    let users: Value = app.get("/v1/users", &a.access).await.json().await.unwrap();
    let user_id = users["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == a_user.email)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let table: Vec<(Method, String, &str, Option<Value>)> = vec![
        (
            Method::GET,
            format!("/v1/companies/{}", id(&company)),
            "company_not_found",
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/companies/{}", id(&company)),
            "company_not_found",
            Some(json!({"name": "B"})),
        ),
        (
            Method::DELETE,
            format!("/v1/companies/{}", id(&company)),
            "company_not_found",
            None,
        ),
        (
            Method::GET,
            format!("/v1/contacts/{}", id(&contact)),
            "contact_not_found",
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/contacts/{}", id(&contact)),
            "contact_not_found",
            Some(json!({"first_name": "B"})),
        ),
        (
            Method::DELETE,
            format!("/v1/contacts/{}", id(&contact)),
            "contact_not_found",
            None,
        ),
        (
            Method::GET,
            format!("/v1/orders/{}", id(&order)),
            "order_not_found",
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/orders/{}", id(&order)),
            "order_not_found",
            Some(json!({"status": "cancelled"})),
        ),
        (
            Method::DELETE,
            format!("/v1/orders/{}", id(&order)),
            "order_not_found",
            None,
        ),
        (
            Method::GET,
            format!("/v1/users/{user_id}"),
            "user_not_found",
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/users/{user_id}"),
            "user_not_found",
            Some(json!({"active": false})),
        ),
    ];
    for (method, path, code, body) in &table {
        let resp = app
            .request(method.clone(), path, Some(&b.access), body.as_ref())
            .await;
        assert_problem(resp, 404, code).await;
    }

    // Lists and filters never show A's rows to B.
    for path in [
        "/v1/companies".to_owned(),
        "/v1/contacts".to_owned(),
        "/v1/orders".to_owned(),
        "/v1/contacts?email=secret@a.example".to_owned(),
        format!("/v1/contacts?company_id={}", id(&company)),
        format!("/v1/orders?contact_id={}", id(&contact)),
    ] {
        let list: Value = app.get(&path, &b.access).await.json().await.unwrap();
        assert_eq!(list["data"].as_array().unwrap().len(), 0, "{path}");
    }
    let users: Value = app.get("/v1/users", &b.access).await.json().await.unwrap();
    assert!(
        users["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["email"] != a_user.email)
    );

    // B cannot point its own records at A's objects.
    assert_invalid(
        app.post(
            "/v1/contacts",
            &b.access,
            &json!({"email": "b@b.example", "company_id": company["id"]}),
        )
        .await,
        "/company_id",
        "unknown_company",
    )
    .await;
    assert_invalid(
        app.post("/v1/orders", &b.access, &json!({"contact_id": contact["id"], "currency": "EUR", "lines": [{"description": "x", "quantity": 1, "unit_price_minor": 1}]})).await,
        "/contact_id",
        "unknown_contact",
    )
    .await;
    // The same e-mail may exist in both tenants.
    app.create(
        "/v1/contacts",
        &b.access,
        json!({"email": "secret@a.example"}),
    )
    .await;

    // A's data is untouched by all of B's attempts.
    let still: Value = app
        .get(&format!("/v1/contacts/{}", id(&contact)), &a.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still["version"], 1);
    let still: Value = app
        .get(&format!("/v1/orders/{}", id(&order)), &a.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still["status"], "draft");
    assert_eq!(
        app.get(&format!("/v1/companies/{}", id(&company)), &a.access)
            .await
            .status(),
        200
    );
    assert_eq!(app.get("/v1/me", &a_user.access).await.status(), 200);
});
