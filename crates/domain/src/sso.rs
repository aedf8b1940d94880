//! Single sign-on with OpenID Connect: one connection per tenant, and the identities
//! (issuer, subject) it links to users. The protocol runs in the API crate; this module
//! decides who a verified identity is.
//!
//! Matching: a known (issuer, subject) signs its user in. Otherwise an e-mail links to an
//! existing account only when the provider says it is verified and its domain is allowed;
//! with just-in-time provisioning such an identity gets a new account instead.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::audit::{self, Actor, Event};
use crate::entities::{sso_connection, tenant, user, user_identity};
use crate::error::{DomainError, DomainResult};
use crate::ids::{TenantId, UserId};
use crate::tenancy::{Tenant, TenantKind};
use crate::values::{EmailAddress, Role};
use crate::{db, tenants};

#[derive(Clone, Debug)]
pub struct Connection {
    pub tenant_id: TenantId,
    pub issuer: String,
    pub client_id: String,
    /// Encrypted by the API's SSO key; never shown to anyone.
    pub client_secret_enc: String,
    pub redirect_uri: String,
    pub allowed_domains: Vec<String>,
    pub jit_provisioning: bool,
    pub default_role: Role,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<sso_connection::Model> for Connection {
    type Error = DomainError;

    fn try_from(m: sso_connection::Model) -> DomainResult<Self> {
        Ok(Connection {
            tenant_id: TenantId::from_uuid(m.tenant_id),
            issuer: m.issuer,
            client_id: m.client_id,
            client_secret_enc: m.client_secret_enc,
            redirect_uri: m.redirect_uri,
            allowed_domains: m
                .allowed_domains
                .split(' ')
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect(),
            jit_provisioning: m.jit_provisioning,
            default_role: Role::parse(&m.default_role)
                .map_err(|_| DomainError::Internal("unknown role in database".into()))?,
            enabled: m.enabled,
            created_at: m.created_at,
            updated_at: m.updated_at,
        })
    }
}

/// A connection as configured by a tenant admin. `client_secret_enc` `None` keeps the
/// stored secret (required when there is none yet).
#[derive(Debug)]
pub struct ConnectionInput {
    pub issuer: String,
    pub client_id: String,
    pub client_secret_enc: Option<String>,
    pub redirect_uri: String,
    pub allowed_domains: Vec<String>,
    pub jit_provisioning: bool,
    pub default_role: Role,
    pub enabled: bool,
}

async fn find(db: &impl ConnectionTrait, tenant_id: TenantId) -> DomainResult<Option<Connection>> {
    sso_connection::Entity::find()
        .filter(sso_connection::Column::TenantId.eq(tenant_id.as_uuid()))
        .one(db)
        .await?
        .map(Connection::try_from)
        .transpose()
}

pub async fn get_connection(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
) -> DomainResult<Connection> {
    find(db, tenant.id())
        .await?
        .ok_or(DomainError::NotFound("sso_connection"))
}

/// Creates or replaces the tenant's connection.
pub async fn put_connection(
    db: &DatabaseConnection,
    tenant: &Tenant,
    input: ConnectionInput,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<(Connection, bool)> {
    let txn = db::begin_write(db).await?;
    let existing = sso_connection::Entity::find()
        .filter(sso_connection::Column::TenantId.eq(tenant.id().as_uuid()))
        .one(&txn)
        .await?;
    let created = existing.is_none();
    let secret = match (input.client_secret_enc, &existing) {
        (Some(s), _) => s,
        (None, Some(e)) => e.client_secret_enc.clone(),
        (None, None) => {
            return Err(DomainError::invalid(
                "/client_secret",
                "required",
                "a new connection needs the client secret",
            ));
        }
    };
    let model = sso_connection::ActiveModel {
        id: Set(existing.as_ref().map(|e| e.id).unwrap_or_else(Uuid::now_v7)),
        tenant_id: Set(tenant.id().as_uuid()),
        issuer: Set(input.issuer),
        client_id: Set(input.client_id),
        client_secret_enc: Set(secret),
        redirect_uri: Set(input.redirect_uri),
        allowed_domains: Set(input.allowed_domains.join(" ")),
        jit_provisioning: Set(input.jit_provisioning),
        default_role: Set(input.default_role.as_str().to_owned()),
        enabled: Set(input.enabled),
        created_at: Set(existing.as_ref().map(|e| e.created_at).unwrap_or(now)),
        updated_at: Set(now),
    };
    if created {
        sso_connection::Entity::insert(model)
            .exec_without_returning(&txn)
            .await?;
    } else {
        sso_connection::Entity::update(model).exec(&txn).await?;
    }
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: if created {
                "sso.connection_created"
            } else {
                "sso.connection_updated"
            },
            object_type: "sso_connection",
            object_id: None,
            details: None,
        },
        now,
    )
    .await?;
    let conn = find(&txn, tenant.id())
        .await?
        .ok_or(DomainError::NotFound("sso_connection"))?;
    txn.commit().await?;
    Ok((conn, created))
}

pub async fn delete_connection(
    db: &DatabaseConnection,
    tenant: &Tenant,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let txn = db::begin_write(db).await?;
    let deleted = sso_connection::Entity::delete_many()
        .filter(sso_connection::Column::TenantId.eq(tenant.id().as_uuid()))
        .exec(&txn)
        .await?
        .rows_affected;
    if deleted == 0 {
        return Err(DomainError::NotFound("sso_connection"));
    }
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "sso.connection_deleted",
            object_type: "sso_connection",
            object_id: None,
            details: None,
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

/// The enabled connection of an active customer tenant, by slug (unauthenticated start of a
/// sign-in). Anything else is not found.
pub async fn connection_for_slug(
    db: &impl ConnectionTrait,
    slug: &str,
) -> DomainResult<Connection> {
    let t = tenant::Entity::find()
        .filter(tenant::Column::Slug.eq(slug))
        .filter(tenant::Column::Active.eq(true))
        .filter(tenant::Column::Kind.eq(TenantKind::Customer.as_str()))
        .one(db)
        .await?
        .ok_or(DomainError::NotFound("sso_connection"))?;
    find(db, TenantId::from_uuid(t.id))
        .await?
        .filter(|c| c.enabled)
        .ok_or(DomainError::NotFound("sso_connection"))
}

/// What the provider's verified ID token says about the person.
#[derive(Clone, Debug)]
pub struct VerifiedIdentity {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
}

fn linkable_email(conn: &Connection, id: &VerifiedIdentity) -> Option<EmailAddress> {
    if !id.email_verified {
        return None;
    }
    let email = EmailAddress::parse(id.email.as_deref()?).ok()?;
    let domain = email.as_str().rsplit_once('@')?.1.to_owned();
    conn.allowed_domains
        .iter()
        .any(|d| d.eq_ignore_ascii_case(&domain))
        .then_some(email)
}

/// Finds (or links, or provisions) the user a verified identity stands for.
pub async fn resolve_user(
    db: &DatabaseConnection,
    conn: &Connection,
    id: &VerifiedIdentity,
    now: DateTime<Utc>,
) -> DomainResult<UserId> {
    let tenant_id = conn.tenant_id;
    let txn = db::begin_write(db).await?;
    let known = user_identity::Entity::find()
        .filter(user_identity::Column::TenantId.eq(tenant_id.as_uuid()))
        .filter(user_identity::Column::Issuer.eq(&id.issuer))
        .filter(user_identity::Column::Subject.eq(&id.subject))
        .one(&txn)
        .await?;
    if let Some(link) = known {
        let active = user::Entity::find_by_id(link.user_id)
            .filter(user::Column::TenantId.eq(tenant_id.as_uuid()))
            .filter(user::Column::Active.eq(true))
            .one(&txn)
            .await?
            .is_some();
        if !active {
            return Err(DomainError::Unauthenticated("account_inactive"));
        }
        user_identity::Entity::update_many()
            .col_expr(user_identity::Column::LastLoginAt, Expr::value(now))
            .filter(user_identity::Column::Id.eq(link.id))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        return Ok(UserId::from_uuid(link.user_id));
    }

    let email = linkable_email(conn, id).ok_or(DomainError::Unauthenticated("sso_not_linkable"))?;
    let existing = user::Entity::find()
        .filter(user::Column::TenantId.eq(tenant_id.as_uuid()))
        .filter(user::Column::Email.eq(email.as_str()))
        .one(&txn)
        .await?;
    let (user_id, action) = match existing {
        Some(u) if !u.active => return Err(DomainError::Unauthenticated("account_inactive")),
        Some(u) => {
            // An account already linked to another subject of this issuer is someone else's.
            let other = user_identity::Entity::find()
                .filter(user_identity::Column::TenantId.eq(tenant_id.as_uuid()))
                .filter(user_identity::Column::UserId.eq(u.id))
                .filter(user_identity::Column::Issuer.eq(&id.issuer))
                .one(&txn)
                .await?;
            if other.is_some() {
                return Err(DomainError::Unauthenticated("sso_not_linkable"));
            }
            (UserId::from_uuid(u.id), "sso.identity_linked")
        }
        None if conn.jit_provisioning => {
            let user_id = UserId::new();
            let name = id
                .name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| n.chars().take(200).collect());
            tenants::insert_user(
                &txn,
                tenant_id,
                user_id,
                &email,
                name,
                conn.default_role,
                None,
                now,
            )
            .await?;
            (user_id, "user.provisioned")
        }
        None => return Err(DomainError::Unauthenticated("sso_no_account")),
    };
    user_identity::Entity::insert(user_identity::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant_id.as_uuid()),
        user_id: Set(user_id.as_uuid()),
        issuer: Set(id.issuer.clone()),
        subject: Set(id.subject.clone()),
        created_at: Set(now),
        last_login_at: Set(Some(now)),
    })
    .exec_without_returning(&txn)
    .await?;
    audit::record(
        &txn,
        tenant_id,
        &Actor::system(),
        Event {
            action,
            object_type: "user",
            object_id: Some(user_id.as_uuid()),
            details: Some(serde_json::json!({"via": "sso"})),
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(user_id)
}
