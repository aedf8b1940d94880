//! Integration clients: machine credentials for partners (OAuth 2.0 client credentials), each
//! with a set of scopes. The secret is shown once and stored as a SHA-256 digest (it is 256
//! random bits, so a fast digest is safe); revocation takes effect on the next request.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::audit::{self, Actor, Event};
use crate::db;
use crate::entities::{integration_client, tenant};
use crate::error::{DomainError, DomainResult, InvalidValue};
use crate::ids::TenantId;
use crate::secrets::{random_token, sha256_hex};
use crate::tenancy::Tenant;

/// Every scope a client can be given. Users' routes (accounts, GDPR operations, tenants) are
/// never open to clients.
pub const SCOPES: [&str; 10] = [
    "contacts:read",
    "contacts:write",
    "companies:read",
    "companies:write",
    "orders:read",
    "orders:write",
    "consents:read",
    "consents:write",
    "suppression:read",
    "changes:read",
];

pub fn parse_scope(raw: &str) -> Result<String, InvalidValue> {
    SCOPES
        .contains(&raw)
        .then(|| raw.to_owned())
        .ok_or_else(|| {
            InvalidValue::new(
                "invalid_scope",
                format!("must be one of {}", SCOPES.join(", ")),
            )
        })
}

#[derive(Clone, Debug)]
pub struct Client {
    pub id: Uuid,
    pub client_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub secret_rotated_at: Option<DateTime<Utc>>,
}

impl From<integration_client::Model> for Client {
    fn from(m: integration_client::Model) -> Self {
        Client {
            id: m.id,
            client_id: m.client_id,
            name: m.name,
            scopes: m
                .scopes
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            active: m.active,
            created_at: m.created_at,
            updated_at: m.updated_at,
            secret_rotated_at: m.secret_rotated_at,
        }
    }
}

/// An authenticated client: its tenant, id and granted scopes.
#[derive(Clone, Debug)]
pub struct ClientPrincipal {
    pub tenant: Tenant,
    pub id: Uuid,
    pub scopes: Vec<String>,
}

/// Creates a client; returns it with its secret, which is never shown again.
pub async fn create_client(
    db: &DatabaseConnection,
    tenant: &Tenant,
    name: String,
    scopes: Vec<String>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<(Client, String)> {
    let secret = random_token("cs_", 32);
    let id = Uuid::now_v7();
    let txn = db::begin_write(db).await?;
    integration_client::Entity::insert(integration_client::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant.id().as_uuid()),
        client_id: Set(random_token("crm_", 16)),
        name: Set(name),
        secret_hash: Set(sha256_hex(&secret)),
        scopes: Set(scopes.join(" ")),
        active: Set(true),
        created_at: Set(now),
        updated_at: Set(now),
        secret_rotated_at: Set(None),
    })
    .exec_without_returning(&txn)
    .await?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "client.created",
            object_type: "integration_client",
            object_id: Some(id),
            details: Some(serde_json::json!({"scopes": scopes})),
        },
        now,
    )
    .await?;
    let client = get_client(&txn, tenant, id).await?;
    txn.commit().await?;
    Ok((client, secret))
}

pub async fn get_client(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    id: Uuid,
) -> DomainResult<Client> {
    integration_client::Entity::find()
        .filter(integration_client::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(integration_client::Column::Id.eq(id))
        .one(db)
        .await?
        .map(Client::from)
        .ok_or(DomainError::NotFound("integration_client"))
}

pub async fn list_clients(db: &impl ConnectionTrait, tenant: &Tenant) -> DomainResult<Vec<Client>> {
    Ok(integration_client::Entity::find()
        .filter(integration_client::Column::TenantId.eq(tenant.id().as_uuid()))
        .order_by_asc(integration_client::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(Client::from)
        .collect())
}

/// Replaces the secret; the old one stops working at once.
pub async fn rotate_secret(
    db: &DatabaseConnection,
    tenant: &Tenant,
    id: Uuid,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<(Client, String)> {
    let txn = db::begin_write(db).await?;
    let client = get_client(&txn, tenant, id).await?;
    if !client.active {
        return Err(DomainError::Conflict {
            code: "client_revoked",
            detail: "a revoked client cannot get a new secret".into(),
        });
    }
    let secret = random_token("cs_", 32);
    integration_client::Entity::update_many()
        .col_expr(
            integration_client::Column::SecretHash,
            Expr::value(sha256_hex(&secret)),
        )
        .col_expr(
            integration_client::Column::SecretRotatedAt,
            Expr::value(Some(now)),
        )
        .col_expr(integration_client::Column::UpdatedAt, Expr::value(now))
        .filter(integration_client::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(integration_client::Column::Id.eq(id))
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "client.secret_rotated",
            object_type: "integration_client",
            object_id: Some(id),
            details: None,
        },
        now,
    )
    .await?;
    let client = get_client(&txn, tenant, id).await?;
    txn.commit().await?;
    Ok((client, secret))
}

/// Revokes a client: its tokens are refused on their next use.
pub async fn revoke_client(
    db: &DatabaseConnection,
    tenant: &Tenant,
    id: Uuid,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let txn = db::begin_write(db).await?;
    get_client(&txn, tenant, id).await?;
    integration_client::Entity::update_many()
        .col_expr(integration_client::Column::Active, Expr::value(false))
        .col_expr(integration_client::Column::UpdatedAt, Expr::value(now))
        .filter(integration_client::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(integration_client::Column::Id.eq(id))
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "client.revoked",
            object_type: "integration_client",
            object_id: Some(id),
            details: None,
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

/// Checks client credentials (the token endpoint). Unknown ids and wrong secrets look alike.
pub async fn authenticate_credentials(
    db: &impl ConnectionTrait,
    client_id: &str,
    secret: &str,
) -> DomainResult<ClientPrincipal> {
    let row = integration_client::Entity::find()
        .filter(integration_client::Column::ClientId.eq(client_id))
        .one(db)
        .await?;
    let presented = sha256_hex(secret);
    let Some(row) = row else {
        let _ = presented.as_bytes().ct_eq(sha256_hex("").as_bytes());
        return Err(DomainError::Unauthenticated("invalid_client"));
    };
    if !bool::from(presented.as_bytes().ct_eq(row.secret_hash.as_bytes())) || !row.active {
        return Err(DomainError::Unauthenticated("invalid_client"));
    }
    principal_of(db, row).await
}

async fn principal_of(
    db: &impl ConnectionTrait,
    row: integration_client::Model,
) -> DomainResult<ClientPrincipal> {
    let tenant_active = tenant::Entity::find_by_id(row.tenant_id)
        .filter(tenant::Column::Active.eq(true))
        .one(db)
        .await?
        .is_some();
    if !tenant_active {
        return Err(DomainError::Unauthenticated("invalid_client"));
    }
    let client = Client::from(row.clone());
    Ok(ClientPrincipal {
        tenant: Tenant::scoped(TenantId::from_uuid(row.tenant_id)),
        id: row.id,
        scopes: client.scopes,
    })
}

/// Checks, for every request with a client token, that the client is still active.
pub async fn authenticate_token(
    db: &impl ConnectionTrait,
    tenant_id: TenantId,
    id: Uuid,
) -> DomainResult<ClientPrincipal> {
    let row = integration_client::Entity::find()
        .filter(integration_client::Column::TenantId.eq(tenant_id.as_uuid()))
        .filter(integration_client::Column::Id.eq(id))
        .filter(integration_client::Column::Active.eq(true))
        .one(db)
        .await?
        .ok_or(DomainError::Unauthenticated("client_revoked"))?;
    principal_of(db, row)
        .await
        .map_err(|_| DomainError::Unauthenticated("client_revoked"))
}
