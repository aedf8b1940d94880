//! `/v1/orders`: orders with lines; the server computes all amounts.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use crm_domain::ids::{CompanyId, ContactId, OrderId};
use crm_domain::orders::{
    self, MAX_LINES, MAX_QUANTITY, MAX_UNIT_PRICE_MINOR, NewOrder, NewOrderLine, Order,
    OrderChanges, OrderFilter,
};
use crm_domain::values::{CurrencyCode, OrderStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{QueryErrors, created, if_match, list_type, path_id, with_etag};
use crate::auth::{OrdersRead, OrdersWrite};
use crate::input::{self, Input, text};
use crate::problem::ApiError;
use crate::state::AppState;

/// The life cycle of an order: draft → placed | cancelled; placed → paid | cancelled;
/// paid → fulfilled | refunded; fulfilled → refunded.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatusDto {
    Draft,
    Placed,
    Paid,
    Fulfilled,
    Cancelled,
    Refunded,
}

impl From<OrderStatus> for OrderStatusDto {
    fn from(s: OrderStatus) -> Self {
        match s {
            OrderStatus::Draft => OrderStatusDto::Draft,
            OrderStatus::Placed => OrderStatusDto::Placed,
            OrderStatus::Paid => OrderStatusDto::Paid,
            OrderStatus::Fulfilled => OrderStatusDto::Fulfilled,
            OrderStatus::Cancelled => OrderStatusDto::Cancelled,
            OrderStatus::Refunded => OrderStatusDto::Refunded,
        }
    }
}

/// An order line as stored.
#[derive(Serialize, ToSchema)]
pub struct OrderLineOut {
    pub position: i32,
    pub sku: Option<String>,
    pub description: String,
    pub quantity: i64,
    /// Unit price in minor units of the order currency (cents for EUR).
    pub unit_price_minor: i64,
    /// quantity × unit_price_minor, computed by the server.
    pub line_total_minor: i64,
}

/// An order as stored.
#[derive(Serialize, ToSchema)]
pub struct OrderOut {
    pub id: Uuid,
    pub contact_id: Option<Uuid>,
    pub company_id: Option<Uuid>,
    pub status: OrderStatusDto,
    /// ISO 4217 code.
    #[schema(example = "EUR")]
    pub currency: String,
    /// Sum of the line totals in minor units, computed by the server.
    pub total_minor: i64,
    /// When the order was placed.
    pub placed_at: Option<DateTime<Utc>>,
    pub lines: Vec<OrderLineOut>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
}

impl From<Order> for OrderOut {
    fn from(o: Order) -> Self {
        OrderOut {
            id: o.id.as_uuid(),
            contact_id: o.contact_id.map(ContactId::as_uuid),
            company_id: o.company_id.map(CompanyId::as_uuid),
            status: o.status.into(),
            currency: o.currency,
            total_minor: o.total_minor,
            placed_at: o.placed_at,
            lines: o
                .lines
                .into_iter()
                .map(|l| OrderLineOut {
                    position: l.position,
                    sku: l.sku,
                    description: l.description,
                    quantity: l.quantity,
                    unit_price_minor: l.unit_price_minor,
                    line_total_minor: l.line_total_minor,
                })
                .collect(),
            created_at: o.created_at,
            updated_at: o.updated_at,
            version: o.version,
        }
    }
}

/// An order line to store.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct OrderLineIn {
    #[schema(min_length = 1, max_length = 64)]
    sku: Option<String>,
    #[schema(min_length = 1, max_length = 500)]
    description: String,
    #[schema(minimum = 1, maximum = 1_000_000)]
    quantity: i64,
    /// In minor units of the order currency.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    unit_price_minor: i64,
}

/// A new order for a contact and/or a company.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct OrderIn {
    contact_id: Option<Uuid>,
    company_id: Option<Uuid>,
    /// `draft` (default) or `placed`.
    #[schema(nullable = false)]
    status: Option<OrderStatusDto>,
    /// ISO 4217 code.
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    currency: String,
    #[schema(min_items = 1, max_items = 500)]
    lines: Vec<OrderLineIn>,
}

/// A JSON Merge Patch of an order. `lines` replaces all lines; lines and currency change only
/// while the order is a draft.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct OrderPatch {
    contact_id: Option<Uuid>,
    company_id: Option<Uuid>,
    #[schema(nullable = false)]
    status: Option<OrderStatusDto>,
    #[schema(pattern = "^[A-Z]{3}$", nullable = false)]
    currency: Option<String>,
    #[schema(min_items = 1, max_items = 500, nullable = false)]
    lines: Option<Vec<OrderLineIn>>,
}

list_type!(OrderList, OrderOut);

const FIELDS: &[&str] = &["contact_id", "company_id", "status", "currency", "lines"];
const LINE_FIELDS: &[&str] = &["sku", "description", "quantity", "unit_price_minor"];

fn read_lines(i: &mut Input<'_>) -> Option<Vec<NewOrderLine>> {
    let items = i.array("lines", true, 1, MAX_LINES)?;
    let mut errors = Vec::new();
    let mut lines = Vec::with_capacity(items.len());
    for (n, item) in items.iter().enumerate() {
        let base = format!("{}/{n}", i.pointer("lines"));
        let Some(mut li) = Input::nested(item, &base, LINE_FIELDS, &mut errors) else {
            continue;
        };
        let line = (
            li.string("sku", false, text(1, 64)),
            li.string("description", true, text(1, 500)),
            li.integer("quantity", true, 1, MAX_QUANTITY),
            li.integer("unit_price_minor", true, 0, MAX_UNIT_PRICE_MINOR),
        );
        errors.extend(li.take_errors());
        if let (sku, Some(description), Some(quantity), Some(unit_price_minor)) = line {
            lines.push(NewOrderLine {
                sku,
                description,
                quantity,
                unit_price_minor,
            });
        }
    }
    let ok = errors.is_empty();
    i.push_errors(errors);
    ok.then_some(lines)
}

/// Create an order.
#[utoipa::path(
    tag = "orders",
    request_body(content = OrderIn, content_type = "application/json"),
    responses((status = 201, description = "Created", body = OrderOut,
               headers(("ETag" = String, description = "Version"), ("Location" = String)))),
    security(("bearer" = []), ("oauth2" = ["orders:write"]))
)]
#[post("/orders")]
pub async fn create_order(
    caller: OrdersWrite,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut i = Input::body(&body, FIELDS)?;
    let contact_id = i
        .string("contact_id", false, input::uuid)
        .map(ContactId::from_uuid);
    let company_id = i
        .string("company_id", false, input::uuid)
        .map(CompanyId::from_uuid);
    let status = i
        .string("status", false, OrderStatus::parse)
        .unwrap_or(OrderStatus::Draft);
    let currency = i.string("currency", true, CurrencyCode::parse);
    let lines = read_lines(&mut i);
    i.finish()?;
    let (Some(currency), Some(lines)) = (currency, lines) else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "validated order input incomplete"
        )));
    };
    let input = NewOrder {
        contact_id,
        company_id,
        status,
        currency,
        lines,
    };
    let order = orders::create_order(
        &state.db,
        &caller.0.tenant,
        input,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    let version = order.version;
    let out = OrderOut::from(order);
    Ok(created(format!("/v1/orders/{}", out.id), &out, version))
}

/// Query parameters of the order list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderQuery {
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    #[param(value_type = Option<Uuid>)]
    contact_id: Option<String>,
    #[param(value_type = Option<Uuid>)]
    company_id: Option<String>,
    #[param(value_type = Option<OrderStatusDto>)]
    status: Option<String>,
    /// Only orders placed at or after this time (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    placed_since: Option<String>,
}

/// List orders, oldest first.
#[utoipa::path(
    tag = "orders",
    params(OrderQuery),
    responses((status = 200, description = "A page of orders", body = OrderList)),
    security(("bearer" = []), ("oauth2" = ["orders:read"]))
)]
#[get("/orders")]
pub async fn list_orders(
    caller: OrdersRead,
    state: web::Data<AppState>,
    query: web::Query<OrderQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut errs = QueryErrors::default();
    let page = errs.page(query.limit.as_deref(), query.cursor.as_deref());
    let filter = OrderFilter {
        contact_id: errs
            .parse("contact_id", query.contact_id.as_deref(), input::uuid)
            .map(ContactId::from_uuid),
        company_id: errs
            .parse("company_id", query.company_id.as_deref(), input::uuid)
            .map(CompanyId::from_uuid),
        status: errs.parse("status", query.status.as_deref(), OrderStatus::parse),
        placed_since: errs.parse(
            "placed_since",
            query.placed_since.as_deref(),
            input::timestamp,
        ),
    };
    errs.finish()?;
    let page = orders::list_orders(&state.db, &caller.0.tenant, filter, page).await?;
    Ok(HttpResponse::Ok().json(OrderList::from(page.map(OrderOut::from))))
}

/// Get an order with its lines.
#[utoipa::path(
    tag = "orders",
    params(("id" = Uuid, Path, description = "Order id")),
    responses((status = 200, description = "The order", body = OrderOut,
               headers(("ETag" = String, description = "Version")))),
    security(("bearer" = []), ("oauth2" = ["orders:read"]))
)]
#[get("/orders/{id}")]
pub async fn get_order(
    caller: OrdersRead,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = OrderId::from_uuid(path_id("order", &id)?);
    let order = orders::get_order(&state.db, &caller.0.tenant, id).await?;
    let version = order.version;
    Ok(with_etag(StatusCode::OK, &OrderOut::from(order), version))
}

/// Change an order (JSON Merge Patch): status transitions, parties, and — while a draft —
/// currency and lines.
#[utoipa::path(
    tag = "orders",
    params(
        ("id" = Uuid, Path, description = "Order id"),
        ("If-Match" = Option<String>, Header, description = "ETag of the version being changed"),
    ),
    request_body(content = OrderPatch, content_type = "application/merge-patch+json"),
    responses((status = 200, description = "The changed order", body = OrderOut,
               headers(("ETag" = String, description = "New version")))),
    security(("bearer" = []), ("oauth2" = ["orders:write"]))
)]
#[patch("/orders/{id}")]
pub async fn update_order(
    caller: OrdersWrite,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = OrderId::from_uuid(path_id("order", &id)?);
    let expected = if_match(&req)?;
    let mut i = Input::body(&body, FIELDS)?;
    let changes = OrderChanges {
        contact_id: i
            .patch_string("contact_id", true, input::uuid)
            .map(ContactId::from_uuid),
        company_id: i
            .patch_string("company_id", true, input::uuid)
            .map(CompanyId::from_uuid),
        status: i
            .patch_string("status", false, OrderStatus::parse)
            .apply_to(None),
        currency: i
            .patch_string("currency", false, CurrencyCode::parse)
            .apply_to(None),
        lines: if i.has("lines") {
            read_lines(&mut i)
        } else {
            None
        },
    };
    i.finish()?;
    let order = orders::update_order(
        &state.db,
        &caller.0.tenant,
        id,
        changes,
        expected,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    let version = order.version;
    Ok(with_etag(StatusCode::OK, &OrderOut::from(order), version))
}

/// Delete a draft or cancelled order (others are kept: 409 `order_not_deletable`).
#[utoipa::path(
    tag = "orders",
    params(
        ("id" = Uuid, Path, description = "Order id"),
        ("If-Match" = Option<String>, Header, description = "ETag of the version being deleted"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "The order reached the books (`order_not_deletable`)", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("oauth2" = ["orders:write"]))
)]
#[delete("/orders/{id}")]
pub async fn delete_order(
    caller: OrdersWrite,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = OrderId::from_uuid(path_id("order", &id)?);
    let expected = if_match(&req)?;
    orders::delete_order(
        &state.db,
        &caller.0.tenant,
        id,
        expected,
        &caller.1,
        state.clock.now(),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
