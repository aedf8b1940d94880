//! Orders and their lines. The server computes every amount from the lines, in integer minor
//! units of the order's ISO 4217 currency; clients never send totals.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use crate::audit::{self, Actor, Event};
use crate::companies::company_exists;
use crate::contacts::contact_exists;
use crate::entities::{order, order_line};
use crate::error::{DomainError, DomainResult, FieldError};
use crate::ids::{CompanyId, ContactId, OrderId};
use crate::pagination::{Page, PageRequest};
use crate::tenancy::Tenant;
use crate::values::{CurrencyCode, OrderStatus, Patch};
use crate::{check_version, db};

pub const MAX_LINES: usize = 500;
pub const MAX_QUANTITY: i64 = 1_000_000;
pub const MAX_UNIT_PRICE_MINOR: i64 = 1_000_000_000_000;

#[derive(Clone, Debug)]
pub struct OrderLine {
    pub position: i32,
    pub sku: Option<String>,
    pub description: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub line_total_minor: i64,
}

#[derive(Clone, Debug)]
pub struct Order {
    pub id: OrderId,
    pub contact_id: Option<ContactId>,
    pub company_id: Option<CompanyId>,
    pub status: OrderStatus,
    pub currency: String,
    pub total_minor: i64,
    pub placed_at: Option<DateTime<Utc>>,
    pub lines: Vec<OrderLine>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
}

#[derive(Clone, Debug)]
pub struct NewOrderLine {
    pub sku: Option<String>,
    pub description: String,
    /// 1 ..= MAX_QUANTITY (checked by the caller's parser).
    pub quantity: i64,
    /// 0 ..= MAX_UNIT_PRICE_MINOR.
    pub unit_price_minor: i64,
}

#[derive(Debug)]
pub struct NewOrder {
    pub contact_id: Option<ContactId>,
    pub company_id: Option<CompanyId>,
    pub status: OrderStatus,
    pub currency: CurrencyCode,
    pub lines: Vec<NewOrderLine>,
}

#[derive(Debug, Default)]
pub struct OrderChanges {
    pub contact_id: Patch<ContactId>,
    pub company_id: Patch<CompanyId>,
    pub status: Option<OrderStatus>,
    pub currency: Option<CurrencyCode>,
    pub lines: Option<Vec<NewOrderLine>>,
}

#[derive(Debug, Default)]
pub struct OrderFilter {
    pub contact_id: Option<ContactId>,
    pub company_id: Option<CompanyId>,
    pub status: Option<OrderStatus>,
    pub placed_since: Option<DateTime<Utc>>,
}

fn order_from(m: order::Model, lines: Vec<order_line::Model>) -> DomainResult<Order> {
    Ok(Order {
        id: OrderId::from_uuid(m.id),
        contact_id: m.contact_id.map(ContactId::from_uuid),
        company_id: m.company_id.map(CompanyId::from_uuid),
        status: OrderStatus::parse(&m.status)
            .map_err(|_| DomainError::Internal(format!("unknown order status {}", m.status)))?,
        currency: m.currency,
        total_minor: m.total_minor,
        placed_at: m.placed_at,
        lines: lines
            .into_iter()
            .map(|l| OrderLine {
                position: l.position,
                sku: l.sku,
                description: l.description,
                quantity: l.quantity,
                unit_price_minor: l.unit_price_minor,
                line_total_minor: l.line_total_minor,
            })
            .collect(),
        created_at: m.created_at,
        updated_at: m.updated_at,
        version: m.version,
    })
}

/// Line totals and the order total, with overflow reported per line.
fn totals(lines: &[NewOrderLine]) -> DomainResult<(Vec<i64>, i64)> {
    let mut errors = Vec::new();
    let mut line_totals = Vec::with_capacity(lines.len());
    let mut total: Option<i64> = Some(0);
    for (i, line) in lines.iter().enumerate() {
        match line.quantity.checked_mul(line.unit_price_minor) {
            Some(t) => {
                line_totals.push(t);
                total = total.and_then(|sum| sum.checked_add(t));
            }
            None => errors.push(FieldError::at(
                format!("/lines/{i}"),
                "amount_too_large",
                "quantity × unit price is too large",
            )),
        }
    }
    match (errors.is_empty(), total) {
        (true, Some(total)) => Ok((line_totals, total)),
        (true, None) => Err(DomainError::invalid(
            "/lines",
            "amount_too_large",
            "the order total is too large",
        )),
        (false, _) => Err(DomainError::Invalid(errors)),
    }
}

async fn check_refs(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    contact: Option<ContactId>,
    company: Option<CompanyId>,
) -> DomainResult<()> {
    let mut errors = Vec::new();
    if contact.is_none() && company.is_none() {
        errors.push(FieldError::at(
            "",
            "party_required",
            "an order needs a contact_id or a company_id",
        ));
    }
    if let Some(c) = contact
        && !contact_exists(db, tenant, c).await?
    {
        errors.push(FieldError::at(
            "/contact_id",
            "unknown_contact",
            "no contact with this id exists",
        ));
    }
    if let Some(c) = company
        && !company_exists(db, tenant, c).await?
    {
        errors.push(FieldError::at(
            "/company_id",
            "unknown_company",
            "no company with this id exists",
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DomainError::Invalid(errors))
    }
}

async fn insert_lines(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    order_id: OrderId,
    lines: Vec<NewOrderLine>,
    line_totals: Vec<i64>,
) -> DomainResult<()> {
    let models: Vec<order_line::ActiveModel> = lines
        .into_iter()
        .zip(line_totals)
        .enumerate()
        .map(|(i, (l, total))| order_line::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(tenant.id().as_uuid()),
            order_id: Set(order_id.as_uuid()),
            position: Set(i as i32),
            sku: Set(l.sku),
            description: Set(l.description),
            quantity: Set(l.quantity),
            unit_price_minor: Set(l.unit_price_minor),
            line_total_minor: Set(total),
        })
        .collect();
    if !models.is_empty() {
        order_line::Entity::insert_many(models)
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

pub async fn create_order(
    db: &DatabaseConnection,
    tenant: &Tenant,
    input: NewOrder,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Order> {
    if !matches!(input.status, OrderStatus::Draft | OrderStatus::Placed) {
        return Err(DomainError::invalid(
            "/status",
            "invalid_initial_status",
            "a new order is draft or placed",
        ));
    }
    let (line_totals, total) = totals(&input.lines)?;
    let contact_for_audit = input
        .contact_id
        .map(|c| serde_json::json!({"contact_id": c.as_uuid()}));
    let txn = db::begin_write(db).await?;
    check_refs(&txn, tenant, input.contact_id, input.company_id).await?;
    let id = OrderId::new();
    order::Entity::insert(order::ActiveModel {
        id: Set(id.as_uuid()),
        tenant_id: Set(tenant.id().as_uuid()),
        contact_id: Set(input.contact_id.map(ContactId::as_uuid)),
        company_id: Set(input.company_id.map(CompanyId::as_uuid)),
        status: Set(input.status.as_str().into()),
        currency: Set(input.currency.as_str().into()),
        total_minor: Set(total),
        placed_at: Set((input.status == OrderStatus::Placed).then_some(now)),
        created_at: Set(now),
        updated_at: Set(now),
        version: Set(1),
    })
    .exec_without_returning(&txn)
    .await?;
    insert_lines(&txn, tenant, id, input.lines, line_totals).await?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "order.created",
            object_type: "order",
            object_id: Some(id.as_uuid()),
            details: contact_for_audit,
        },
        now,
    )
    .await?;
    let created = get_order(&txn, tenant, id).await?;
    txn.commit().await?;
    Ok(created)
}

pub async fn get_order(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    id: OrderId,
) -> DomainResult<Order> {
    let m = order::Entity::find()
        .filter(order::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(order::Column::Id.eq(id.as_uuid()))
        .one(db)
        .await?
        .ok_or(DomainError::NotFound("order"))?;
    let lines = order_line::Entity::find()
        .filter(order_line::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(order_line::Column::OrderId.eq(id.as_uuid()))
        .order_by_asc(order_line::Column::Position)
        .all(db)
        .await?;
    order_from(m, lines)
}

pub async fn list_orders(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    filter: OrderFilter,
    page: PageRequest,
) -> DomainResult<Page<Order>> {
    let tid = tenant.id().as_uuid();
    let mut q = order::Entity::find()
        .filter(order::Column::TenantId.eq(tid))
        .order_by_asc(order::Column::Id);
    if let Some(after) = page.after {
        q = q.filter(order::Column::Id.gt(after));
    }
    if let Some(c) = filter.contact_id {
        q = q.filter(order::Column::ContactId.eq(c.as_uuid()));
    }
    if let Some(c) = filter.company_id {
        q = q.filter(order::Column::CompanyId.eq(c.as_uuid()));
    }
    if let Some(s) = filter.status {
        q = q.filter(order::Column::Status.eq(s.as_str()));
    }
    if let Some(since) = filter.placed_since {
        q = q.filter(order::Column::PlacedAt.gte(since));
    }
    let rows = q.limit(page.limit + 1).all(db).await?;
    let page = Page::from_rows(rows, page.limit, |r| r.id);
    let ids: Vec<Uuid> = page.data.iter().map(|o| o.id).collect();
    let mut lines: HashMap<Uuid, Vec<order_line::Model>> = HashMap::new();
    if !ids.is_empty() {
        for line in order_line::Entity::find()
            .filter(order_line::Column::TenantId.eq(tid))
            .filter(crate::db::one_of(
                db.get_database_backend(),
                order_line::Column::OrderId,
                ids,
            ))
            .order_by_asc(order_line::Column::OrderId)
            .order_by_asc(order_line::Column::Position)
            .all(db)
            .await?
        {
            lines.entry(line.order_id).or_default().push(line);
        }
    }
    Ok(Page {
        data: page
            .data
            .into_iter()
            .map(|o| {
                let l = lines.remove(&o.id).unwrap_or_default();
                order_from(o, l)
            })
            .collect::<DomainResult<_>>()?,
        next_cursor: page.next_cursor,
    })
}

pub async fn update_order(
    db: &DatabaseConnection,
    tenant: &Tenant,
    id: OrderId,
    changes: OrderChanges,
    if_match: Option<i32>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Order> {
    let txn = db::begin_write(db).await?;
    let current = get_order(&txn, tenant, id).await?;
    check_version(if_match, current.version)?;
    let mut errors = Vec::new();
    let status = changes.status.unwrap_or(current.status);
    if !current.status.can_become(status) {
        errors.push(FieldError::at(
            "/status",
            "invalid_transition",
            format!(
                "an order cannot go from {} to {}",
                current.status.as_str(),
                status.as_str()
            ),
        ));
    }
    if !current.status.is_editable() {
        if changes.lines.is_some() {
            errors.push(FieldError::at(
                "/lines",
                "order_not_editable",
                "lines change only while the order is a draft",
            ));
        }
        if changes.currency.is_some() {
            errors.push(FieldError::at(
                "/currency",
                "order_not_editable",
                "the currency changes only while the order is a draft",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(DomainError::Invalid(errors));
    }
    let contact_id = changes.contact_id.apply_to(current.contact_id);
    let company_id = changes.company_id.apply_to(current.company_id);
    check_refs(&txn, tenant, contact_id, company_id).await?;
    let mut total = current.total_minor;
    if let Some(lines) = changes.lines {
        let (line_totals, new_total) = totals(&lines)?;
        total = new_total;
        order_line::Entity::delete_many()
            .filter(order_line::Column::TenantId.eq(tenant.id().as_uuid()))
            .filter(order_line::Column::OrderId.eq(id.as_uuid()))
            .exec(&txn)
            .await?;
        insert_lines(&txn, tenant, id, lines, line_totals).await?;
    }
    let placed_at = match (current.placed_at, status) {
        (None, OrderStatus::Placed) => Some(now),
        (p, _) => p,
    };
    let result = order::Entity::update_many()
        .set(order::ActiveModel {
            contact_id: Set(contact_id.map(ContactId::as_uuid)),
            company_id: Set(company_id.map(CompanyId::as_uuid)),
            status: Set(status.as_str().into()),
            currency: Set(changes
                .currency
                .map(|c| c.as_str().to_owned())
                .unwrap_or(current.currency)),
            total_minor: Set(total),
            placed_at: Set(placed_at),
            updated_at: Set(now),
            version: Set(current.version + 1),
            ..Default::default()
        })
        .filter(order::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(order::Column::Id.eq(id.as_uuid()))
        .filter(order::Column::Version.eq(current.version))
        .exec(&txn)
        .await?;
    crate::expect_one_row(result.rows_affected)?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "order.updated",
            object_type: "order",
            object_id: Some(id.as_uuid()),
            details: Some(serde_json::json!({"status": status.as_str()})),
        },
        now,
    )
    .await?;
    let updated = get_order(&txn, tenant, id).await?;
    txn.commit().await?;
    Ok(updated)
}

/// Deletes a draft or cancelled order with its lines. Orders that reached the books stay.
pub async fn delete_order(
    db: &DatabaseConnection,
    tenant: &Tenant,
    id: OrderId,
    if_match: Option<i32>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let txn = db::begin_write(db).await?;
    let current = get_order(&txn, tenant, id).await?;
    check_version(if_match, current.version)?;
    if !current.status.is_deletable() {
        return Err(DomainError::Conflict {
            code: "order_not_deletable",
            detail: "only draft and cancelled orders can be deleted".into(),
        });
    }
    let deleted = order::Entity::delete_many()
        .filter(order::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(order::Column::Id.eq(id.as_uuid()))
        .filter(order::Column::Version.eq(current.version))
        .exec(&txn)
        .await?;
    crate::expect_one_row(deleted.rows_affected)?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "order.deleted",
            object_type: "order",
            object_id: Some(id.as_uuid()),
            details: None,
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(())
}
