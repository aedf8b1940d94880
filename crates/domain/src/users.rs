//! Users of a tenant: tenant admins create them, list them, change their role and deactivate
//! them. Deactivation ends the user's sessions at once.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use crate::audit::{self, Actor, Event};
use crate::entities::{password_credential, session, user};
use crate::error::{DomainError, DomainResult};
use crate::ids::{TenantId, UserId};
use crate::pagination::{Page, PageRequest};
use crate::passwords::{Password, hash_password, verify_password};
use crate::tenancy::{Principal, Tenant};
use crate::values::{EmailAddress, Role};
use crate::{check_version, db, tenants};

#[derive(Clone, Debug)]
pub struct User {
    pub id: UserId,
    pub tenant_id: TenantId,
    pub email: String,
    pub display_name: Option<String>,
    pub role: Role,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
}

impl User {
    fn from_model(m: user::Model) -> DomainResult<Self> {
        Ok(User {
            id: UserId::from_uuid(m.id),
            tenant_id: TenantId::from_uuid(m.tenant_id),
            email: m.email,
            display_name: m.display_name,
            role: Role::parse(&m.role).map_err(|_| {
                DomainError::Internal(format!("unknown role in database: {}", m.role))
            })?,
            active: m.active,
            created_at: m.created_at,
            updated_at: m.updated_at,
            version: m.version,
        })
    }
}

#[derive(Debug)]
pub struct NewUser {
    pub email: EmailAddress,
    pub display_name: Option<String>,
    pub role: Role,
    pub password: Password,
}

#[derive(Debug, Default)]
pub struct UserChanges {
    pub display_name: crate::values::Patch<String>,
    pub role: Option<Role>,
    pub active: Option<bool>,
}

pub async fn create_user(
    db: &DatabaseConnection,
    tenant: &Tenant,
    input: NewUser,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<User> {
    let hash = hash_password(&input.password).await?;
    let txn = db::begin_write(db).await?;
    let id = UserId::new();
    tenants::insert_user(
        &txn,
        tenant.id(),
        id,
        &input.email,
        input.display_name,
        input.role,
        Some(&hash),
        now,
    )
    .await?;
    let details = serde_json::json!({"role": input.role.as_str()});
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "user.created",
            object_type: "user",
            object_id: Some(id.as_uuid()),
            details: Some(details),
        },
        now,
    )
    .await?;
    let user = get_user(&txn, tenant, id).await?;
    txn.commit().await?;
    Ok(user)
}

pub async fn get_user(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    id: UserId,
) -> DomainResult<User> {
    user::Entity::find()
        .filter(user::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(user::Column::Id.eq(id.as_uuid()))
        .one(db)
        .await?
        .ok_or(DomainError::NotFound("user"))
        .and_then(User::from_model)
}

pub async fn list_users(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    page: PageRequest,
) -> DomainResult<Page<User>> {
    let mut q = user::Entity::find()
        .filter(user::Column::TenantId.eq(tenant.id().as_uuid()))
        .order_by_asc(user::Column::Id);
    if let Some(after) = page.after {
        q = q.filter(user::Column::Id.gt(after));
    }
    let rows = q.limit(page.limit + 1).all(db).await?;
    let page = Page::from_rows(rows, page.limit, |r| r.id);
    Ok(Page {
        data: page
            .data
            .into_iter()
            .map(User::from_model)
            .collect::<DomainResult<_>>()?,
        next_cursor: page.next_cursor,
    })
}

/// Changes a user's name, role or active flag. Refuses to leave the tenant without an active
/// admin. Deactivating a user revokes all of their sessions in the same transaction.
pub async fn update_user(
    db: &DatabaseConnection,
    tenant: &Tenant,
    id: UserId,
    changes: UserChanges,
    if_match: Option<i32>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<User> {
    let txn = db::begin_write(db).await?;
    let current = get_user(&txn, tenant, id).await?;
    check_version(if_match, current.version)?;
    let role = changes.role.unwrap_or(current.role);
    let active = changes.active.unwrap_or(current.active);
    if current.role == Role::Admin && current.active && (role != Role::Admin || !active) {
        let admins = user::Entity::find()
            .filter(user::Column::TenantId.eq(tenant.id().as_uuid()))
            .filter(user::Column::Role.eq(Role::Admin.as_str()))
            .filter(user::Column::Active.eq(true))
            .count(&txn)
            .await?;
        if admins <= 1 {
            return Err(DomainError::Conflict {
                code: "last_admin",
                detail: "the tenant must keep at least one active admin".into(),
            });
        }
    }
    let result = user::Entity::update_many()
        .set(user::ActiveModel {
            display_name: Set(changes.display_name.apply_to(current.display_name.clone())),
            role: Set(role.as_str().into()),
            active: Set(active),
            updated_at: Set(now),
            version: Set(current.version + 1),
            ..Default::default()
        })
        .filter(user::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(user::Column::Id.eq(id.as_uuid()))
        .filter(user::Column::Version.eq(current.version))
        .exec(&txn)
        .await?;
    crate::expect_one_row(result.rows_affected)?;
    if !active {
        revoke_user_sessions(&txn, tenant.id(), id, "user_deactivated", now).await?;
    }
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "user.updated",
            object_type: "user",
            object_id: Some(id.as_uuid()),
            details: Some(serde_json::json!({"role": role.as_str(), "active": active})),
        },
        now,
    )
    .await?;
    let user = get_user(&txn, tenant, id).await?;
    txn.commit().await?;
    Ok(user)
}

pub(crate) async fn revoke_user_sessions(
    db: &impl ConnectionTrait,
    tenant_id: TenantId,
    user_id: UserId,
    reason: &str,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(now))
        .col_expr(session::Column::RevokeReason, Expr::value(reason))
        .filter(session::Column::TenantId.eq(tenant_id.as_uuid()))
        .filter(session::Column::UserId.eq(user_id.as_uuid()))
        .filter(session::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(())
}

/// A signed-in user changes their own password: the current one is verified, the new one
/// must meet the policy, and every other session of the user ends.
pub async fn change_own_password(
    db: &DatabaseConnection,
    principal: &Principal,
    current: &Password,
    new: &Password,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let tenant = principal.tenant;
    let cred = password_credential::Entity::find()
        .filter(password_credential::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(password_credential::Column::UserId.eq(principal.user_id.as_uuid()))
        .one(db)
        .await?
        .ok_or(DomainError::NotFound("user"))?;
    if !verify_password(current, &cred.hash).await {
        return Err(DomainError::invalid(
            "/current_password",
            "wrong_password",
            "is not the current password",
        ));
    }
    let hash = hash_password(new).await?;
    let txn = db::begin_write(db).await?;
    password_credential::Entity::update_many()
        .col_expr(password_credential::Column::Hash, Expr::value(hash))
        .col_expr(password_credential::Column::UpdatedAt, Expr::value(now))
        .filter(password_credential::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(password_credential::Column::UserId.eq(principal.user_id.as_uuid()))
        .exec(&txn)
        .await?;
    session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(now))
        .col_expr(
            session::Column::RevokeReason,
            Expr::value("password_changed"),
        )
        .filter(session::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(session::Column::UserId.eq(principal.user_id.as_uuid()))
        .filter(session::Column::Id.ne(principal.session_id.as_uuid()))
        .filter(session::Column::RevokedAt.is_null())
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

/// Deletes a user of the tenant with their credentials, sessions and linked identities (the
/// staff member's own personal data). The audit trail keeps their id only. Nobody deletes
/// themselves, and the tenant keeps one active admin.
pub async fn delete_user(
    db: &DatabaseConnection,
    admin: &Principal,
    id: UserId,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let tenant = &admin.tenant;
    let txn = db::begin_write(db).await?;
    let current = get_user(&txn, tenant, id).await?;
    if id == admin.user_id {
        return Err(DomainError::Conflict {
            code: "cannot_delete_self",
            detail: "you cannot delete your own account".into(),
        });
    }
    if current.role == Role::Admin && current.active {
        let admins = user::Entity::find()
            .filter(user::Column::TenantId.eq(tenant.id().as_uuid()))
            .filter(user::Column::Role.eq(Role::Admin.as_str()))
            .filter(user::Column::Active.eq(true))
            .count(&txn)
            .await?;
        if admins <= 1 {
            return Err(DomainError::Conflict {
                code: "last_admin",
                detail: "the tenant must keep at least one active admin".into(),
            });
        }
    }
    // Sessions, refresh tokens, credentials and identities go with the user (cascade).
    user::Entity::delete_many()
        .filter(user::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(user::Column::Id.eq(id.as_uuid()))
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "user.deleted",
            object_type: "user",
            object_id: Some(id.as_uuid()),
            details: None,
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(())
}
