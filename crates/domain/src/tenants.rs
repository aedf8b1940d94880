//! Tenants (customer organisations, each a GDPR controller) and the platform bootstrap.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use crate::audit::{self, Actor, Event};
use crate::entities::{password_credential, tenant, user};
use crate::error::{DomainError, DomainResult};
use crate::ids::{TenantId, UserId};
use crate::pagination::{Page, PageRequest};
use crate::passwords::{Password, hash_password};
use crate::values::{EmailAddress, Role, TenantSlug};
use crate::{Tenant, TenantKind, check_version, conflict_on_unique, db};

pub const PLATFORM_SLUG: &str = "platform";

#[derive(Clone, Debug)]
pub struct TenantRecord {
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    pub kind: TenantKind,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
    /// Users must sign in with a second factor (always true for the platform tenant).
    pub mfa_required: bool,
}

impl From<tenant::Model> for TenantRecord {
    fn from(m: tenant::Model) -> Self {
        TenantRecord {
            id: TenantId::from_uuid(m.id),
            slug: m.slug,
            name: m.name,
            kind: TenantKind::from_db(&m.kind),
            active: m.active,
            created_at: m.created_at,
            updated_at: m.updated_at,
            version: m.version,
            mfa_required: m.mfa_required || m.kind == TenantKind::Platform.as_str(),
        }
    }
}

/// A new tenant and its first admin.
#[derive(Debug)]
pub struct NewTenant {
    pub slug: TenantSlug,
    pub name: String,
    pub admin_email: EmailAddress,
    pub admin_display_name: Option<String>,
    pub admin_password: Password,
    pub mfa_required: bool,
}

#[derive(Debug, Default)]
pub struct TenantChanges {
    pub name: Option<String>,
    pub active: Option<bool>,
    pub mfa_required: Option<bool>,
}

#[derive(Debug)]
pub struct Bootstrapped {
    pub tenant_id: TenantId,
    pub user_id: UserId,
}

/// Whether a platform admin exists (the platform is ready to use).
pub async fn platform_admin_exists(db: &impl ConnectionTrait) -> DomainResult<bool> {
    Ok(user::Entity::find()
        .filter(user::Column::Role.eq(Role::PlatformAdmin.as_str()))
        .count(db)
        .await?
        > 0)
}

/// Creates the platform tenant and its first platform admin. Refused once one exists, so the
/// bootstrap can never be used to take over a running platform.
pub async fn bootstrap_platform(
    db: &DatabaseConnection,
    email: &EmailAddress,
    password: &Password,
    now: DateTime<Utc>,
) -> DomainResult<Bootstrapped> {
    let hash = hash_password(password).await?;
    let txn = db::begin_write(db).await?;
    if platform_admin_exists(&txn).await? {
        return Err(DomainError::Conflict {
            code: "already_bootstrapped",
            detail: "a platform admin exists already".into(),
        });
    }
    let tenant_id = match tenant::Entity::find()
        .filter(tenant::Column::Slug.eq(PLATFORM_SLUG))
        .one(&txn)
        .await?
    {
        Some(t) => TenantId::from_uuid(t.id),
        None => {
            let id = TenantId::new();
            tenant::Entity::insert(tenant::ActiveModel {
                id: Set(id.as_uuid()),
                slug: Set(PLATFORM_SLUG.into()),
                name: Set("Platform".into()),
                kind: Set(TenantKind::Platform.as_str().into()),
                active: Set(true),
                created_at: Set(now),
                updated_at: Set(now),
                version: Set(1),
                // Platform admins always need MFA, whatever this says.
                mfa_required: Set(true),
            })
            .exec_without_returning(&txn)
            .await?;
            id
        }
    };
    let user_id = UserId::new();
    insert_user(
        &txn,
        tenant_id,
        user_id,
        email,
        None,
        Role::PlatformAdmin,
        Some(&hash),
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(Bootstrapped { tenant_id, user_id })
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_user(
    db: &impl ConnectionTrait,
    tenant_id: TenantId,
    user_id: UserId,
    email: &EmailAddress,
    display_name: Option<String>,
    role: Role,
    password_hash: Option<&str>,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    user::Entity::insert(user::ActiveModel {
        id: Set(user_id.as_uuid()),
        tenant_id: Set(tenant_id.as_uuid()),
        email: Set(email.as_str().to_owned()),
        display_name: Set(display_name),
        role: Set(role.as_str().into()),
        active: Set(true),
        created_at: Set(now),
        updated_at: Set(now),
        version: Set(1),
    })
    .exec_without_returning(db)
    .await
    .map_err(|e| {
        conflict_on_unique(
            e,
            "email_taken",
            "a user with this e-mail exists in the tenant",
        )
    })?;
    // Users provisioned by single sign-on have no password.
    if let Some(hash) = password_hash {
        password_credential::Entity::insert(password_credential::ActiveModel {
            user_id: Set(user_id.as_uuid()),
            tenant_id: Set(tenant_id.as_uuid()),
            hash: Set(hash.to_owned()),
            updated_at: Set(now),
        })
        .exec_without_returning(db)
        .await?;
    }
    Ok(())
}

/// Creates a customer tenant with its first admin, in one transaction.
pub async fn create_tenant(
    db: &DatabaseConnection,
    input: NewTenant,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<(TenantRecord, UserId)> {
    let hash = hash_password(&input.admin_password).await?;
    let txn = db::begin_write(db).await?;
    let id = TenantId::new();
    let model = tenant::ActiveModel {
        id: Set(id.as_uuid()),
        slug: Set(input.slug.as_str().to_owned()),
        name: Set(input.name),
        kind: Set(TenantKind::Customer.as_str().into()),
        active: Set(true),
        created_at: Set(now),
        updated_at: Set(now),
        version: Set(1),
        mfa_required: Set(input.mfa_required),
    };
    tenant::Entity::insert(model)
        .exec_without_returning(&txn)
        .await
        .map_err(|e| conflict_on_unique(e, "slug_taken", "a tenant with this slug exists"))?;
    let admin = UserId::new();
    insert_user(
        &txn,
        id,
        admin,
        &input.admin_email,
        input.admin_display_name,
        Role::Admin,
        Some(&hash),
        now,
    )
    .await?;
    audit::record(
        &txn,
        id,
        actor,
        Event {
            action: "tenant.created",
            object_type: "tenant",
            object_id: Some(id.as_uuid()),
            details: Some(serde_json::json!({"admin_user_id": admin.as_uuid()})),
        },
        now,
    )
    .await?;
    let record = find(&txn, id).await?;
    txn.commit().await?;
    Ok((record, admin))
}

async fn find(db: &impl ConnectionTrait, id: TenantId) -> DomainResult<TenantRecord> {
    tenant::Entity::find_by_id(id.as_uuid())
        .one(db)
        .await?
        .map(TenantRecord::from)
        .ok_or(DomainError::NotFound("tenant"))
}

pub async fn get_tenant(db: &impl ConnectionTrait, id: TenantId) -> DomainResult<TenantRecord> {
    find(db, id).await
}

pub async fn list_tenants(
    db: &impl ConnectionTrait,
    page: PageRequest,
) -> DomainResult<Page<TenantRecord>> {
    let mut q = tenant::Entity::find().order_by_asc(tenant::Column::Id);
    if let Some(after) = page.after {
        q = q.filter(tenant::Column::Id.gt(after));
    }
    let rows = q.limit(page.limit + 1).all(db).await?;
    Ok(Page::from_rows(rows, page.limit, |r| r.id).map(TenantRecord::from))
}

/// Renames or (de)activates a tenant. A deactivated tenant's users are refused at once.
pub async fn update_tenant(
    db: &DatabaseConnection,
    id: TenantId,
    changes: TenantChanges,
    if_match: Option<i32>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<TenantRecord> {
    let txn = db::begin_write(db).await?;
    let current = tenant::Entity::find_by_id(id.as_uuid())
        .one(&txn)
        .await?
        .ok_or(DomainError::NotFound("tenant"))?;
    check_version(if_match, current.version)?;
    if current.kind == TenantKind::Platform.as_str() && changes.active == Some(false) {
        return Err(DomainError::Conflict {
            code: "platform_tenant",
            detail: "the platform tenant cannot be deactivated".into(),
        });
    }
    let result = tenant::Entity::update_many()
        .set(tenant::ActiveModel {
            name: changes.name.map(Set).unwrap_or_default(),
            active: changes.active.map(Set).unwrap_or_default(),
            mfa_required: changes.mfa_required.map(Set).unwrap_or_default(),
            updated_at: Set(now),
            version: Set(current.version + 1),
            ..Default::default()
        })
        .filter(tenant::Column::Id.eq(id.as_uuid()))
        .filter(tenant::Column::Version.eq(current.version))
        .exec(&txn)
        .await?;
    crate::expect_one_row(result.rows_affected)?;
    audit::record(
        &txn,
        id,
        actor,
        Event {
            action: "tenant.updated",
            object_type: "tenant",
            object_id: Some(id.as_uuid()),
            details: None,
        },
        now,
    )
    .await?;
    let record = find(&txn, id).await?;
    txn.commit().await?;
    Ok(record)
}

/// The scope of an active tenant named by a verified sign-in ticket or ceremony.
pub async fn tenant_scope(db: &impl ConnectionTrait, id: TenantId) -> DomainResult<Tenant> {
    tenant::Entity::find_by_id(id.as_uuid())
        .filter(tenant::Column::Active.eq(true))
        .one(db)
        .await?
        .map(|t| Tenant::scoped(TenantId::from_uuid(t.id)))
        .ok_or(DomainError::Unauthenticated("session_ended"))
}

/// An active tenant by slug, for sign-in flows that start without a user.
pub async fn active_tenant_by_slug(
    db: &impl ConnectionTrait,
    slug: &str,
) -> DomainResult<TenantId> {
    tenant::Entity::find()
        .filter(tenant::Column::Slug.eq(slug.trim()))
        .filter(tenant::Column::Active.eq(true))
        .one(db)
        .await?
        .map(|t| TenantId::from_uuid(t.id))
        .ok_or(DomainError::NotFound("tenant"))
}

/// A tenant admin sets whether the tenant requires MFA. Requiring it needs a credential of
/// the admin's own, so the admin is not locked out. Returns the policy now in force.
pub async fn set_mfa_required(
    db: &DatabaseConnection,
    admin: &crate::Principal,
    required: bool,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<bool> {
    let tenant_id = admin.tenant.id();
    if required
        && crate::mfa::list_credentials(db, tenant_id, admin.user_id)
            .await?
            .is_empty()
    {
        return Err(DomainError::Conflict {
            code: "enrol_first",
            detail: "register a WebAuthn credential of your own before requiring MFA".into(),
        });
    }
    let txn = db::begin_write(db).await?;
    tenant::Entity::update_many()
        .col_expr(
            tenant::Column::MfaRequired,
            sea_orm::sea_query::Expr::value(required),
        )
        .col_expr(
            tenant::Column::UpdatedAt,
            sea_orm::sea_query::Expr::value(now),
        )
        .filter(tenant::Column::Id.eq(tenant_id.as_uuid()))
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        tenant_id,
        actor,
        Event {
            action: "tenant.mfa_policy_changed",
            object_type: "tenant",
            object_id: Some(tenant_id.as_uuid()),
            details: Some(serde_json::json!({"mfa_required": required})),
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(required)
}

/// A bare active customer tenant, for unit tests that need one row to key their data to.
#[cfg(test)]
pub(crate) async fn insert_for_test(
    db: &impl sea_orm::ConnectionTrait,
    slug: &str,
) -> crate::error::DomainResult<crate::ids::TenantId> {
    use sea_orm::ActiveValue::Set;
    use sea_orm::EntityTrait;
    let id = crate::ids::TenantId::new();
    let now = chrono::Utc::now();
    crate::entities::tenant::Entity::insert(crate::entities::tenant::ActiveModel {
        id: Set(id.as_uuid()),
        slug: Set(slug.into()),
        name: Set(slug.into()),
        kind: Set("customer".into()),
        active: Set(true),
        created_at: Set(now),
        updated_at: Set(now),
        version: Set(1),
        mfa_required: Set(false),
    })
    .exec_without_returning(db)
    .await?;
    Ok(id)
}
