//! Webhooks (tenant admins register endpoints, see deliveries, redeliver) and the partner
//! change feed.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, delete, get, post, web};
use chrono::{DateTime, Utc};
use crm_domain::events::{self, ChangeEvent, Delivery, Endpoint, NewEndpoint};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{QueryErrors, path_id};
use crate::auth::{ChangesRead, TenantAdmin};
use crate::config::Environment;
use crate::input::{Input, text};
use crate::outbound;
use crate::problem::ApiError;
use crate::state::AppState;

/// A registered webhook endpoint.
#[derive(Serialize, ToSchema)]
pub struct WebhookOut {
    pub id: Uuid,
    pub url: String,
    /// Event types delivered here (`*` for all).
    pub event_types: Vec<String>,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

impl From<Endpoint> for WebhookOut {
    fn from(e: Endpoint) -> Self {
        WebhookOut {
            id: e.id,
            url: e.url,
            event_types: e.event_types,
            description: e.description,
            active: e.active,
            created_at: e.created_at,
        }
    }
}

/// A new endpoint and its signing secret, shown only now.
#[derive(Serialize, ToSchema)]
pub struct WebhookCreatedOut {
    #[serde(flatten)]
    pub webhook: WebhookOut,
    /// Standard Webhooks secret (`whsec_…`): verify `webhook-signature` with it.
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub data: Vec<WebhookOut>,
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct WebhookIn {
    /// `https://` URL on the public internet; loopback, private, link-local and metadata
    /// addresses are refused.
    #[schema(max_length = 2000)]
    url: String,
    /// Event types to deliver (see `event_types` in the README), or `["*"]`.
    #[schema(min_items = 1, max_items = 20)]
    event_types: Vec<String>,
    #[schema(min_length = 1, max_length = 200)]
    description: Option<String>,
}

/// Register a webhook endpoint. Deliveries are signed per Standard Webhooks
/// (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`).
#[utoipa::path(
    tag = "webhooks",
    request_body(content = WebhookIn, content_type = "application/json"),
    responses((status = 201, description = "Registered; the secret is shown only now", body = WebhookCreatedOut)),
    security(("bearer" = []))
)]
#[post("/webhooks")]
pub async fn create_webhook(
    admin: TenantAdmin,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let allow_http = state.settings.environment == Environment::Development;
    let mut i = Input::body(&body, &["url", "event_types", "description"])?;
    let url = i.string("url", true, |raw| {
        if raw.len() > 2000 {
            return Err(crm_domain::InvalidValue::new(
                "invalid_url",
                "must be at most 2000 characters",
            ));
        }
        outbound::check_url(raw, allow_http)
            .map(|u| u.to_string())
            .map_err(|e| crm_domain::InvalidValue::new("invalid_url", e.to_string()))
    });
    let mut types = Vec::new();
    if let Some(items) = i.array("event_types", true, 1, 20) {
        for (n, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(t) if t == "*" || events::EVENT_TYPES.contains(&t) => types.push(t.to_owned()),
                _ => {
                    let pointer = format!("{}/{n}", i.pointer("event_types"));
                    i.push_errors(vec![crm_domain::FieldError::at(
                        pointer,
                        "unknown_event_type",
                        format!("must be * or one of {}", events::EVENT_TYPES.join(", ")),
                    )]);
                }
            }
        }
    }
    let description = i.string("description", false, text(1, 200));
    i.finish()?;
    let url = url.unwrap_or_default();
    // The address is checked now as well as at each delivery.
    if let Ok(parsed) = url::Url::parse(&url)
        && let Err(e) =
            outbound::resolve_and_vet(&parsed, state.settings.webhook_allow_loopback).await
    {
        return Err(ApiError::invalid(vec![crm_domain::FieldError::at(
            "/url",
            "url_not_allowed",
            e.to_string(),
        )]));
    }
    types.sort();
    types.dedup();
    let secret = outbound::new_secret();
    let sealed = state.secret_box.seal(&secret).map_err(ApiError::Internal)?;
    let ep = events::create_endpoint(
        &state.db,
        &admin.0.tenant,
        NewEndpoint {
            url,
            event_types: types,
            description,
            secret_enc: sealed,
        },
        &admin.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::Created().json(WebhookCreatedOut {
        webhook: ep.into(),
        secret,
    }))
}

/// The tenant's webhook endpoints.
#[utoipa::path(
    tag = "webhooks",
    responses((status = 200, description = "Endpoints", body = WebhookList)),
    security(("bearer" = []))
)]
#[get("/webhooks")]
pub async fn list_webhooks(
    admin: TenantAdmin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let data = events::list_endpoints(&state.db, &admin.0.tenant)
        .await?
        .into_iter()
        .map(WebhookOut::from)
        .collect();
    Ok(HttpResponse::Ok().json(WebhookList { data }))
}

/// Remove an endpoint; its pending deliveries go with it.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "Webhook id")),
    responses((status = 204, description = "Removed")),
    security(("bearer" = []))
)]
#[delete("/webhooks/{id}")]
pub async fn delete_webhook(
    admin: TenantAdmin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("webhook", &path)?;
    events::delete_endpoint(&state.db, &admin.0.tenant, id, &admin.1, state.clock.now()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// One delivery of one event to one endpoint.
#[derive(Serialize, ToSchema)]
pub struct DeliveryOut {
    pub id: Uuid,
    pub event_id: Uuid,
    /// `pending`, `delivered` or `dead` (no more tries; redeliver to try again).
    #[schema(example = "delivered")]
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// HTTP status of the last attempt.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<i32>,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
}

impl From<Delivery> for DeliveryOut {
    fn from(d: Delivery) -> Self {
        let _ = d.endpoint_id;
        DeliveryOut {
            id: d.id,
            event_id: d.event_id,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_attempt_at: d.last_attempt_at,
            last_status: d.last_status,
            last_error: d.last_error,
            delivered_at: d.delivered_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    pub data: Vec<DeliveryOut>,
}

/// The latest deliveries to an endpoint (newest first, at most 200).
#[utoipa::path(
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "Webhook id")),
    responses((status = 200, description = "Deliveries", body = DeliveryList)),
    security(("bearer" = []))
)]
#[get("/webhooks/{id}/deliveries")]
pub async fn list_deliveries(
    admin: TenantAdmin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("webhook", &path)?;
    let data = events::list_deliveries(&state.db, &admin.0.tenant, id, 200)
        .await?
        .into_iter()
        .map(DeliveryOut::from)
        .collect();
    Ok(HttpResponse::Ok().json(DeliveryList { data }))
}

/// Queue a delivery again now (e.g. a dead one after the receiver was fixed).
#[utoipa::path(
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "Delivery id")),
    responses((status = 202, description = "Queued", body = DeliveryOut)),
    security(("bearer" = []))
)]
#[post("/webhook-deliveries/{id}/redeliver")]
pub async fn redeliver(
    admin: TenantAdmin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("delivery", &path)?;
    let d = events::redeliver(&state.db, &admin.0.tenant, id, state.clock.now()).await?;
    Ok(HttpResponse::build(StatusCode::ACCEPTED).json(DeliveryOut::from(d)))
}

/// One change of the tenant's data.
#[derive(Serialize, ToSchema)]
pub struct ChangeOut {
    /// Position in the feed; pass the last one seen as `since`.
    pub seq: i64,
    pub id: Uuid,
    #[schema(example = "contact.updated")]
    #[serde(rename = "type")]
    pub event_type: String,
    pub object_type: String,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_id: Option<Uuid>,
    /// The object as it was after the change; ids only for deletions and erasures (and for
    /// every earlier event about an erased person).
    #[schema(value_type = Object)]
    pub data: Value,
    #[serde(serialize_with = "crate::timestamp::rfc3339")]
    pub occurred_at: DateTime<Utc>,
}

impl From<ChangeEvent> for ChangeOut {
    fn from(e: ChangeEvent) -> Self {
        ChangeOut {
            seq: e.seq,
            id: e.id,
            event_type: e.event_type,
            object_type: e.object_type,
            object_id: e.object_id,
            data: e.data,
            occurred_at: e.occurred_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ChangeList {
    pub data: Vec<ChangeOut>,
    /// The `seq` to pass as `since` next (the last one returned, or `since` when none).
    pub next_since: i64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// Return changes after this `seq` (default 0: from the beginning).
    #[param(value_type = Option<i64>, minimum = 0)]
    since: Option<String>,
    /// 1–1000, default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// The tenant's changes in commit order: contacts created, updated, deleted and erased
/// (tombstones carry ids only), consent granted and withdrawn, sub-processor changes. A
/// partner mirrors by calling again with `since` = `next_since`; nothing is skipped or
/// repeated.
#[utoipa::path(
    tag = "webhooks",
    params(ChangesQuery),
    responses((status = 200, description = "Changes", body = ChangeList)),
    security(("bearer" = []), ("oauth2" = ["changes:read"]))
)]
#[get("/changes")]
pub async fn changes(
    caller: ChangesRead,
    state: web::Data<AppState>,
    query: web::Query<ChangesQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut errs = QueryErrors::default();
    let int = |min: i64, max: i64| {
        move |raw: &str| match raw.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(crm_domain::InvalidValue::new(
                "out_of_range",
                format!("must be an integer from {min} to {max}"),
            )),
        }
    };
    let since = errs
        .parse("since", query.since.as_deref(), int(0, i64::MAX))
        .unwrap_or(0);
    let limit = errs
        .parse("limit", query.limit.as_deref(), int(1, 1000))
        .unwrap_or(100);
    errs.finish()?;
    let data: Vec<ChangeOut> = events::changes(
        &state.db,
        &state.vault,
        &caller.0.tenant,
        since,
        limit as u64,
    )
    .await?
    .into_iter()
    .map(ChangeOut::from)
    .collect();
    let next_since = data.last().map_or(since, |c| c.seq);
    Ok(HttpResponse::Ok().json(ChangeList { data, next_since }))
}
