//! The OpenAPI document: collected from the router's own registrations (utoipa-actix-web), then
//! completed with the problem responses every operation can give, derived from its shape.

use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{
    ClientCredentials, Flow, HttpAuthScheme, HttpBuilder, OAuth2, Scopes, SecurityScheme,
};
use utoipa::openapi::{Content, OpenApi as Spec, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "GDPR-first CRM API",
        description = "Headless multi-tenant CRM and eCommerce API. Every tenant is the GDPR controller of its data; \
the platform is the processor. Errors are RFC 9457 problem details with a stable `code`. \
Lists use cursor pagination; writes honour `If-Match`.",
        license(name = "AGPL-3.0-or-later")
    ),
    modifiers(&Security),
    tags(
        (name = "auth", description = "Signing in, tokens and the caller's own account"),
        (name = "webauthn", description = "WebAuthn credentials, the second factor, passkey sign-in and step-up"),
        (name = "sso", description = "Single sign-on with OpenID Connect"),
        (name = "tenants", description = "Customer tenants (platform admins) and a tenant's sign-in policy"),
        (name = "users", description = "Users of a tenant (tenant admins)"),
        (name = "clients", description = "Integration clients for partners (tenant admins)"),
        (name = "companies", description = "Companies"),
        (name = "contacts", description = "Contacts (data subjects)"),
        (name = "orders", description = "Orders and order lines"),
        (name = "gdpr", description = "Data-subject rights, suppression, settings and the audit trail (admin, dpo)"),
        (name = "consent", description = "Purposes, consent and lawful basis"),
        (name = "dsr", description = "Data-subject requests and retention (admin, dpo)"),
        (name = "sub-processors", description = "The processor's sub-processors (platform admins keep it, everyone reads it)"),
        (name = "webhooks", description = "Webhook endpoints, deliveries and the partner change feed"),
        (name = "breaches", description = "The breach register (Art. 33/34) and notifications"),
        (name = "meta", description = "Health and signing keys"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut Spec) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("Access token from /v1/auth/login or /v1/auth/refresh"))
                    .build(),
            ),
        );
        let scopes = Scopes::from_iter(crm_domain::clients::SCOPES.iter().map(|s| (*s, *s)));
        components.add_security_scheme(
            "oauth2",
            SecurityScheme::OAuth2(OAuth2::with_description(
                [Flow::ClientCredentials(ClientCredentials::new("/v1/oauth/token", scopes))],
                "Integration clients: client credentials grant; the token is sent as a bearer token",
            )),
        );
    }
}

fn problem(description: &str) -> RefOr<Response> {
    RefOr::T(
        Response::builder()
            .description(description)
            .content(
                crate::problem::PROBLEM_JSON,
                Content::new(Some(Ref::from_schema_name("Problem"))),
            )
            .build(),
    )
}

fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| problem(description));
}

/// Adds the problem responses an operation can give, from its shape: security, path and
/// query parameters, request body, and method.
fn complete(op: &mut Operation, method: &str) {
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let params = op.parameters.as_deref().unwrap_or_default();
    let has_path = params
        .iter()
        .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Path));
    let has_query = params
        .iter()
        .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Query));
    let has_body = op.request_body.is_some();
    if secured {
        add(
            op,
            "401",
            "Missing, invalid or expired access token, or the session has ended",
        );
        add(op, "403", "The caller's role does not allow this operation");
    }
    if has_path {
        add(op, "404", "Not found (also for another tenant's objects)");
    }
    if has_body {
        add(op, "400", "Malformed JSON");
        add(op, "413", "Request body too large");
        add(op, "415", "Content type is not JSON");
    }
    if has_query {
        add(op, "400", "A query parameter is repeated or not decodable");
    }
    if has_body || has_query {
        add(
            op,
            "422",
            "Invalid values; `errors` holds a JSON pointer or parameter per value",
        );
    }
    if method == "patch" || method == "delete" {
        add(op, "412", "`If-Match` does not match the current version");
    }
    add(
        op,
        "429",
        "Rate limit reached (`rate_limited`); see `Retry-After` and `RateLimit`",
    );
    add(
        op,
        "500",
        "Internal error; details are logged, never returned",
    );
}

/// Documents `Idempotency-Key` on a POST that creates or acts for a signed-in caller.
fn idempotent(op: &mut Operation) {
    use utoipa::openapi::Required;
    use utoipa::openapi::path::ParameterBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    if op.security.as_ref().is_none_or(|s| s.is_empty()) {
        return;
    }
    let param = ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Makes the request safe to retry: the first response for this key (scoped to the \
tenant and caller, kept 24 hours) is returned again with `Idempotent-Replayed: true`. The same \
key with a different request is a 422 (`idempotency_key_reused`); while the first request runs, \
409 (`idempotency_key_in_use`).",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(255))
                .pattern(Some("^[!-~]+$")),
        ))
        .build();
    op.parameters
        .get_or_insert_with(Vec::new)
        .push(RefOr::T(param));
    add(op, "400", "Malformed JSON, or an invalid `Idempotency-Key`");
    add(
        op,
        "409",
        "A request with this `Idempotency-Key` is still being processed (`idempotency_key_in_use`)",
    );
    add(
        op,
        "422",
        "Invalid values, or the `Idempotency-Key` was used with another request (`idempotency_key_reused`)",
    );
}

/// Wire types and the table whose personal-data classification their fields follow.
const PERSONAL_SCHEMAS: &[(&str, &str)] = &[
    ("ContactOut", "contacts"),
    ("ContactIn", "contacts"),
    ("ContactPatch", "contacts"),
    ("OrderOut", "orders"),
    ("OrderIn", "orders"),
    ("OrderPatch", "orders"),
    ("ConsentOut", "consents"),
    ("ConsentIn", "consents"),
    ("DsrOut", "dsr_requests"),
    ("DsrIn", "dsr_requests"),
    ("DsrPatch", "dsr_requests"),
    ("UserOut", "users"),
    ("UserIn", "users"),
    ("UserPatch", "users"),
    ("CompanyOut", "companies"),
    ("CompanyIn", "companies"),
    ("CompanyPatch", "companies"),
];

fn extensions_of(schema: &mut Schema) -> Option<&mut Option<Extensions>> {
    match schema {
        Schema::Object(o) => Some(&mut o.extensions),
        Schema::Array(a) => Some(&mut a.extensions),
        Schema::OneOf(o) => Some(&mut o.extensions),
        Schema::AllOf(o) => Some(&mut o.extensions),
        Schema::AnyOf(o) => Some(&mut o.extensions),
        _ => None,
    }
}

/// Marks fields holding personal data with `x-personal-data: {category}`, from the domain's
/// personal-data registry, so clients and the GDPR code agree on what is personal.
fn mark_personal_data(spec: &mut Spec) {
    let Some(components) = spec.components.as_mut() else {
        return;
    };
    for (schema_name, table) in PERSONAL_SCHEMAS {
        let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(*schema_name)
        else {
            continue;
        };
        for (column, category) in crm_domain::personal_data::personal_columns(table) {
            if let Some(RefOr::T(property)) = object.properties.get_mut(column)
                && let Some(ext) = extensions_of(property)
            {
                let mark: Extensions = [(
                    "x-personal-data",
                    serde_json::json!({"category": category.as_str()}),
                )]
                .into_iter()
                .collect();
                ext.get_or_insert_with(Default::default).merge(mark);
            }
        }
    }
}

/// Completes every operation of a collected spec.
pub fn finish(mut spec: Spec) -> Spec {
    let base = ApiDoc::openapi();
    spec.info = base.info;
    spec.tags = base.tags;
    let components = spec.components.get_or_insert_with(Default::default);
    if let Some(base_components) = base.components {
        components
            .security_schemes
            .extend(base_components.security_schemes);
    }
    for (path, item) in spec.paths.paths.iter_mut() {
        for (method, op) in [
            ("get", item.get.as_mut()),
            ("post", item.post.as_mut()),
            ("patch", item.patch.as_mut()),
            ("put", item.put.as_mut()),
            ("delete", item.delete.as_mut()),
        ] {
            if let Some(op) = op {
                complete(op, method);
                if method == "post" && !crate::limits::is_sign_in(path) {
                    idempotent(op);
                }
            }
        }
    }
    mark_personal_data(&mut spec);
    close_request_schemas(&mut spec);
    open_batch_items(&mut spec);
    spec
}

/// A bulk upsert applies the valid items and reports the others as failed, whatever they are:
/// its items are a `BatchContactIn` or any other value (which fails alone).
fn open_batch_items(spec: &mut Spec) {
    use utoipa::openapi::schema::{AnyOfBuilder, ArrayItems, ObjectBuilder};
    let Some(components) = spec.components.as_mut() else {
        return;
    };
    if let Some(RefOr::T(Schema::Object(batch))) = components.schemas.get_mut("BatchIn")
        && let Some(RefOr::T(Schema::Array(items))) = batch.properties.get_mut("items")
    {
        let any = AnyOfBuilder::new()
            .item(Ref::from_schema_name("BatchContactIn"))
            .item(
                ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
                    .description(Some(
                        "Any other value is reported as a failed item; the rest are still applied",
                    )),
            )
            .build();
        items.items = ArrayItems::RefOrSchema(Box::new(RefOr::T(Schema::AnyOf(any))));
    }
}

/// Names of the component schemas `schema` refers to, directly or through arrays and
/// compositions.
fn refs_in(schema: &RefOr<Schema>, out: &mut Vec<String>) {
    match schema {
        RefOr::Ref(r) => {
            if let Some(name) = r.ref_location.strip_prefix("#/components/schemas/") {
                out.push(name.to_owned());
            }
        }
        RefOr::T(Schema::Object(o)) => o.properties.values().for_each(|p| refs_in(p, out)),
        RefOr::T(Schema::Array(a)) => {
            if let utoipa::openapi::schema::ArrayItems::RefOrSchema(items) = &a.items {
                refs_in(items, out);
            }
        }
        RefOr::T(Schema::OneOf(o)) => o.items.iter().for_each(|i| refs_in(i, out)),
        RefOr::T(Schema::AllOf(o)) => o.items.iter().for_each(|i| refs_in(i, out)),
        RefOr::T(Schema::AnyOf(o)) => o.items.iter().for_each(|i| refs_in(i, out)),
        RefOr::T(_) => {}
    }
}

fn allow_null(property: &mut RefOr<Schema>) {
    use utoipa::openapi::schema::{SchemaType, Type};
    let schema_type = match property {
        RefOr::T(Schema::Object(p)) => &mut p.schema_type,
        RefOr::T(Schema::Array(a)) => &mut a.schema_type,
        RefOr::Ref(r) => {
            let null = utoipa::openapi::schema::ObjectBuilder::new().schema_type(Type::Null);
            let either = utoipa::openapi::schema::OneOfBuilder::new()
                .item(RefOr::Ref(r.clone()))
                .item(null)
                .build();
            *property = RefOr::T(Schema::OneOf(either));
            return;
        }
        _ => return,
    };
    if let SchemaType::Type(t) = schema_type
        && *t != Type::Null
    {
        *schema_type = SchemaType::from_iter([t.clone(), Type::Null]);
    }
}

/// Request bodies refuse fields they do not define (`422 unknown_field`): say so in their
/// schemas (`additionalProperties: false`), nested objects included.
fn close_request_schemas(spec: &mut Spec) {
    let mut pending = Vec::new();
    for item in spec.paths.paths.values() {
        for op in [&item.post, &item.put, &item.patch, &item.delete]
            .into_iter()
            .flatten()
        {
            if let Some(RefOr::T(body)) = &op.request_body {
                for content in body.content.values() {
                    if let RefOr::T(content) = content
                        && let Some(schema) = &content.schema
                    {
                        refs_in(schema, &mut pending);
                    }
                }
            }
        }
    }
    let Some(components) = spec.components.as_mut() else {
        return;
    };
    let mut seen = std::collections::BTreeSet::new();
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(schema) = components.schemas.get(&name) {
            refs_in(schema, &mut pending);
        }
    }
    for name in seen {
        if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut(&name)
            && !o.properties.is_empty()
        {
            o.additional_properties = Some(Box::new(
                utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
            ));
            // An optional field may be sent as `null`: absent on create, cleared on a merge
            // patch (where a field cannot be cleared, the answer is a 422 that says so).
            for (field, property) in o.properties.iter_mut() {
                if !o.required.contains(field) {
                    allow_null(property);
                }
            }
        }
    }
}
