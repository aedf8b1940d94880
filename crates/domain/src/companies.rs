//! Companies (organisations a tenant does business with).

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use crate::audit::{self, Actor, Event};
use crate::entities::{company, contact, order};
use crate::error::{DomainError, DomainResult};
use crate::ids::CompanyId;
use crate::pagination::{Page, PageRequest};
use crate::tenancy::Tenant;
use crate::values::Patch;
use crate::{check_version, db};

#[derive(Clone, Debug)]
pub struct Company {
    pub id: CompanyId,
    pub name: String,
    pub domain: Option<String>,
    pub phone: Option<String>,
    pub industry: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
}

impl From<company::Model> for Company {
    fn from(m: company::Model) -> Self {
        Company {
            id: CompanyId::from_uuid(m.id),
            name: m.name,
            domain: m.domain,
            phone: m.phone,
            industry: m.industry,
            created_at: m.created_at,
            updated_at: m.updated_at,
            version: m.version,
        }
    }
}

#[derive(Debug)]
pub struct NewCompany {
    pub name: String,
    pub domain: Option<String>,
    pub phone: Option<String>,
    pub industry: Option<String>,
}

#[derive(Debug, Default)]
pub struct CompanyChanges {
    pub name: Option<String>,
    pub domain: Patch<String>,
    pub phone: Patch<String>,
    pub industry: Patch<String>,
}

#[derive(Debug, Default)]
pub struct CompanyFilter {
    /// Case-insensitive substring of the name or domain.
    pub q: Option<String>,
}

pub(crate) fn like_pattern(q: &str) -> LikeExpr {
    let escaped: String = q
        .to_lowercase()
        .chars()
        .flat_map(|c| match c {
            '%' | '_' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    LikeExpr::new(format!("%{escaped}%")).escape('\\')
}

pub(crate) fn lower_like(col: impl sea_orm::sea_query::IntoColumnRef, q: &str) -> Expr {
    Expr::expr(Func::lower(Expr::col(col))).like(like_pattern(q))
}

pub async fn create_company(
    db: &DatabaseConnection,
    tenant: &Tenant,
    input: NewCompany,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Company> {
    let txn = db::begin_write(db).await?;
    let id = CompanyId::new();
    let model = company::ActiveModel {
        id: Set(id.as_uuid()),
        tenant_id: Set(tenant.id().as_uuid()),
        name: Set(input.name),
        domain: Set(input.domain),
        phone: Set(input.phone),
        industry: Set(input.industry),
        created_at: Set(now),
        updated_at: Set(now),
        version: Set(1),
    };
    company::Entity::insert(model)
        .exec_without_returning(&txn)
        .await?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "company.created",
            object_type: "company",
            object_id: Some(id.as_uuid()),
            details: None,
        },
        now,
    )
    .await?;
    let created = get_company(&txn, tenant, id).await?;
    txn.commit().await?;
    Ok(created)
}

pub async fn get_company(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    id: CompanyId,
) -> DomainResult<Company> {
    company::Entity::find()
        .filter(company::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(company::Column::Id.eq(id.as_uuid()))
        .one(db)
        .await?
        .map(Company::from)
        .ok_or(DomainError::NotFound("company"))
}

/// Whether the company exists in this tenant (for references from other records).
pub(crate) async fn company_exists(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    id: CompanyId,
) -> DomainResult<bool> {
    Ok(company::Entity::find()
        .select_only()
        .column(company::Column::Id)
        .filter(company::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(company::Column::Id.eq(id.as_uuid()))
        .into_tuple::<uuid::Uuid>()
        .one(db)
        .await?
        .is_some())
}

/// Which of `ids` are companies of the tenant: one query (none for no ids). For checks of
/// many references at once (bulk and grouped writes).
pub(crate) async fn existing_companies(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    ids: impl IntoIterator<Item = uuid::Uuid>,
) -> DomainResult<std::collections::HashSet<uuid::Uuid>> {
    let ids: Vec<uuid::Uuid> = ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(Default::default());
    }
    Ok(company::Entity::find()
        .select_only()
        .column(company::Column::Id)
        .filter(company::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(db::one_of(
            db.get_database_backend(),
            company::Column::Id,
            ids,
        ))
        .into_tuple::<uuid::Uuid>()
        .all(db)
        .await?
        .into_iter()
        .collect())
}

pub async fn list_companies(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    filter: CompanyFilter,
    page: PageRequest,
) -> DomainResult<Page<Company>> {
    let mut q = company::Entity::find()
        .filter(company::Column::TenantId.eq(tenant.id().as_uuid()))
        .order_by_asc(company::Column::Id);
    if let Some(after) = page.after {
        q = q.filter(company::Column::Id.gt(after));
    }
    if let Some(text) = filter.q.as_deref() {
        q = q.filter(
            sea_orm::Condition::any()
                .add(lower_like((company::Entity, company::Column::Name), text))
                .add(lower_like((company::Entity, company::Column::Domain), text)),
        );
    }
    let rows = q.limit(page.limit + 1).all(db).await?;
    Ok(Page::from_rows(rows, page.limit, |r| r.id).map(Company::from))
}

pub async fn update_company(
    db: &DatabaseConnection,
    tenant: &Tenant,
    id: CompanyId,
    changes: CompanyChanges,
    if_match: Option<i32>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Company> {
    let txn = db::begin_write(db).await?;
    let current = get_company(&txn, tenant, id).await?;
    check_version(if_match, current.version)?;
    let result = company::Entity::update_many()
        .set(company::ActiveModel {
            name: Set(changes.name.unwrap_or(current.name)),
            domain: Set(changes.domain.apply_to(current.domain)),
            phone: Set(changes.phone.apply_to(current.phone)),
            industry: Set(changes.industry.apply_to(current.industry)),
            updated_at: Set(now),
            version: Set(current.version + 1),
            ..Default::default()
        })
        .filter(company::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(company::Column::Id.eq(id.as_uuid()))
        .filter(company::Column::Version.eq(current.version))
        .exec(&txn)
        .await?;
    crate::expect_one_row(result.rows_affected)?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "company.updated",
            object_type: "company",
            object_id: Some(id.as_uuid()),
            details: None,
        },
        now,
    )
    .await?;
    let company = get_company(&txn, tenant, id).await?;
    txn.commit().await?;
    Ok(company)
}

/// Deletes a company. Its contacts and orders stay and lose the link, in the same transaction.
pub async fn delete_company(
    db: &DatabaseConnection,
    tenant: &Tenant,
    id: CompanyId,
    if_match: Option<i32>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let txn = db::begin_write(db).await?;
    let current = get_company(&txn, tenant, id).await?;
    check_version(if_match, current.version)?;
    let tid = tenant.id().as_uuid();
    contact::Entity::update_many()
        .col_expr(
            contact::Column::CompanyId,
            Expr::value(Option::<uuid::Uuid>::None),
        )
        .col_expr(contact::Column::UpdatedAt, Expr::value(now))
        .col_expr(
            contact::Column::Version,
            Expr::col(contact::Column::Version).add(1),
        )
        .filter(contact::Column::TenantId.eq(tid))
        .filter(contact::Column::CompanyId.eq(id.as_uuid()))
        .exec(&txn)
        .await?;
    order::Entity::update_many()
        .col_expr(
            order::Column::CompanyId,
            Expr::value(Option::<uuid::Uuid>::None),
        )
        .col_expr(order::Column::UpdatedAt, Expr::value(now))
        .col_expr(
            order::Column::Version,
            Expr::col(order::Column::Version).add(1),
        )
        .filter(order::Column::TenantId.eq(tid))
        .filter(order::Column::CompanyId.eq(id.as_uuid()))
        .exec(&txn)
        .await?;
    let deleted = company::Entity::delete_many()
        .filter(company::Column::TenantId.eq(tid))
        .filter(company::Column::Id.eq(id.as_uuid()))
        .filter(company::Column::Version.eq(current.version))
        .exec(&txn)
        .await?;
    crate::expect_one_row(deleted.rows_affected)?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "company.deleted",
            object_type: "company",
            object_id: Some(id.as_uuid()),
            details: None,
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(())
}
