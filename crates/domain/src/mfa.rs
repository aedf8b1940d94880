//! Second factors and sign-in ceremonies: WebAuthn credentials of users, ceremony state
//! (single use, minutes), and the tickets a first factor yields when MFA is required.
//!
//! The domain stores the webauthn-rs credential and ceremony state as opaque JSON; the API
//! crate runs the ceremonies. Ceremony state is deleted on first use, success or failure,
//! because webauthn-rs would accept the same assertion twice against the same state.
//!
//! The single-statement writes of sign-in ceremonies take the SQLite writer turn
//! ([`crate::db::write_turn`]) so a saturating write load cannot leave them in the busy handler.

use chrono::{DateTime, Duration, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder,
};
use uuid::Uuid;

use crate::audit::{self, Actor, Event};
use crate::entities::{auth_challenge, session, tenant, user, webauthn_credential};
use crate::error::{DomainError, DomainResult};
use crate::ids::{SessionId, TenantId, UserId};
use crate::secrets::{random_token, sha256_hex};
use crate::tenancy::{Principal, Tenant, TenantKind};
use crate::{conflict_on_unique, db};

/// How long a ceremony (WebAuthn challenge, OpenID Connect state) stays valid.
pub const CEREMONY_TTL: Duration = Duration::minutes(5);
/// How long an MFA or enrolment ticket stays valid.
pub const TICKET_TTL: Duration = Duration::minutes(10);

/// What a stored challenge is for; a challenge is only ever consumed as its own kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeKind {
    WebauthnRegister,
    WebauthnAuthenticate,
    PasskeyLogin,
    StepUp,
    OidcLogin,
    MfaTicket,
    EnrolTicket,
}

impl ChallengeKind {
    fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::WebauthnRegister => "webauthn_register",
            ChallengeKind::WebauthnAuthenticate => "webauthn_authenticate",
            ChallengeKind::PasskeyLogin => "passkey_login",
            ChallengeKind::StepUp => "step_up",
            ChallengeKind::OidcLogin => "oidc_login",
            ChallengeKind::MfaTicket => "mfa_ticket",
            ChallengeKind::EnrolTicket => "enrol_ticket",
        }
    }
}

/// A consumed challenge.
#[derive(Debug)]
pub struct Challenge {
    pub tenant_id: TenantId,
    pub user_id: Option<UserId>,
    pub state: String,
}

/// Stores ceremony state; returns its id (what the client sends back).
pub async fn create_challenge(
    db: &DatabaseConnection,
    tenant_id: TenantId,
    user_id: Option<UserId>,
    kind: ChallengeKind,
    state: String,
    now: DateTime<Utc>,
) -> DomainResult<Uuid> {
    insert_challenge(db, tenant_id, user_id, kind, None, state, CEREMONY_TTL, now).await
}

#[allow(clippy::too_many_arguments)]
async fn insert_challenge(
    db: &DatabaseConnection,
    tenant_id: TenantId,
    user_id: Option<UserId>,
    kind: ChallengeKind,
    secret_hash: Option<String>,
    state: String,
    ttl: Duration,
    now: DateTime<Utc>,
) -> DomainResult<Uuid> {
    let id = Uuid::now_v7();
    let _turn = crate::db::write_turn(db).await?;
    auth_challenge::Entity::insert(auth_challenge::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant_id.as_uuid()),
        user_id: Set(user_id.map(UserId::as_uuid)),
        kind: Set(kind.as_str().to_owned()),
        secret_hash: Set(secret_hash),
        state: Set(state),
        created_at: Set(now),
        expires_at: Set(now + ttl),
    })
    .exec_without_returning(db)
    .await?;
    Ok(id)
}

/// Takes a challenge out of the store: whoever deletes the row owns it, so a challenge is
/// used at most once even under concurrent attempts. Expired or unknown: `None`.
async fn take(
    db: &DatabaseConnection,
    row: Option<auth_challenge::Model>,
    now: DateTime<Utc>,
) -> DomainResult<Option<Challenge>> {
    let Some(row) = row else { return Ok(None) };
    let _turn = crate::db::write_turn(db).await?;
    let deleted = auth_challenge::Entity::delete_by_id(row.id)
        .exec(db)
        .await?
        .rows_affected;
    if deleted != 1 || row.expires_at <= now {
        return Ok(None);
    }
    Ok(Some(Challenge {
        tenant_id: TenantId::from_uuid(row.tenant_id),
        user_id: row.user_id.map(UserId::from_uuid),
        state: row.state,
    }))
}

/// Consumes a ceremony by id, success or failure.
pub async fn consume_challenge(
    db: &DatabaseConnection,
    id: Uuid,
    kind: ChallengeKind,
    now: DateTime<Utc>,
) -> DomainResult<Option<Challenge>> {
    let row = auth_challenge::Entity::find_by_id(id)
        .filter(auth_challenge::Column::Kind.eq(kind.as_str()))
        .one(db)
        .await?;
    take(db, row, now).await
}

/// Stores ceremony state under a secret the client holds (OpenID Connect `state`).
pub async fn create_secret_challenge(
    db: &DatabaseConnection,
    tenant_id: TenantId,
    kind: ChallengeKind,
    state: String,
    now: DateTime<Utc>,
) -> DomainResult<String> {
    let secret = random_token("", 32);
    insert_challenge(
        db,
        tenant_id,
        None,
        kind,
        Some(sha256_hex(&secret)),
        state,
        CEREMONY_TTL,
        now,
    )
    .await?;
    Ok(secret)
}

/// Consumes a secret-addressed ceremony, success or failure.
pub async fn consume_secret_challenge(
    db: &DatabaseConnection,
    secret: &str,
    kind: ChallengeKind,
    now: DateTime<Utc>,
) -> DomainResult<Option<Challenge>> {
    let row = auth_challenge::Entity::find()
        .filter(auth_challenge::Column::SecretHash.eq(sha256_hex(secret)))
        .filter(auth_challenge::Column::Kind.eq(kind.as_str()))
        .one(db)
        .await?;
    take(db, row, now).await
}

/// What a first factor yields when the user must also use WebAuthn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketKind {
    /// The user has a credential: authenticate with it.
    Verify,
    /// The user has none: the ticket can only register one.
    Enrol,
}

impl TicketKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketKind::Verify => "webauthn",
            TicketKind::Enrol => "enrol",
        }
    }
}

/// A ticket as handed to the client: shown once, stored as a digest.
pub struct IssuedTicket {
    pub token: String,
    pub kind: TicketKind,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for IssuedTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTicket")
            .field("kind", &self.kind)
            .finish()
    }
}

/// A live ticket: whose, and which first factor it stands for.
#[derive(Clone, Debug)]
pub struct Ticket {
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub kind: TicketKind,
    /// The first factor's `amr` values (`pwd`, `sso`).
    pub amr: Vec<String>,
}

/// Issues a ticket after a first factor: enrolment when the user has no credential yet.
pub async fn issue_ticket(
    db: &DatabaseConnection,
    tenant_id: TenantId,
    user_id: UserId,
    amr: &[String],
    now: DateTime<Utc>,
) -> DomainResult<IssuedTicket> {
    let has_credential = webauthn_credential::Entity::find()
        .filter(webauthn_credential::Column::TenantId.eq(tenant_id.as_uuid()))
        .filter(webauthn_credential::Column::UserId.eq(user_id.as_uuid()))
        .count(db)
        .await?
        > 0;
    let (kind, ckind) = if has_credential {
        (TicketKind::Verify, ChallengeKind::MfaTicket)
    } else {
        (TicketKind::Enrol, ChallengeKind::EnrolTicket)
    };
    let token = random_token("mt_", 32);
    insert_challenge(
        db,
        tenant_id,
        Some(user_id),
        ckind,
        Some(sha256_hex(&token)),
        amr.join(" "),
        TICKET_TTL,
        now,
    )
    .await?;
    Ok(IssuedTicket {
        token,
        kind,
        expires_at: now + TICKET_TTL,
    })
}

/// Looks a ticket up without spending it (a failed WebAuthn attempt can be retried).
pub async fn find_ticket(
    db: &impl ConnectionTrait,
    token: &str,
    now: DateTime<Utc>,
) -> DomainResult<Ticket> {
    let row = auth_challenge::Entity::find()
        .filter(auth_challenge::Column::SecretHash.eq(sha256_hex(token)))
        .filter(auth_challenge::Column::Kind.is_in([
            ChallengeKind::MfaTicket.as_str(),
            ChallengeKind::EnrolTicket.as_str(),
        ]))
        .filter(auth_challenge::Column::ExpiresAt.gt(now))
        .one(db)
        .await?
        .ok_or(DomainError::Unauthenticated("invalid_mfa_ticket"))?;
    let user_id = row
        .user_id
        .ok_or_else(|| DomainError::Internal("ticket without user".into()))?;
    Ok(Ticket {
        tenant_id: TenantId::from_uuid(row.tenant_id),
        user_id: UserId::from_uuid(user_id),
        kind: if row.kind == ChallengeKind::EnrolTicket.as_str() {
            TicketKind::Enrol
        } else {
            TicketKind::Verify
        },
        amr: row.state.split(' ').map(str::to_owned).collect(),
    })
}

/// Spends a ticket; false when it was spent concurrently.
pub async fn spend_ticket(db: &DatabaseConnection, token: &str) -> DomainResult<bool> {
    let _turn = crate::db::write_turn(db).await?;
    let deleted = auth_challenge::Entity::delete_many()
        .filter(auth_challenge::Column::SecretHash.eq(sha256_hex(token)))
        .exec(db)
        .await?
        .rows_affected;
    Ok(deleted == 1)
}

/// After enrolment the same ticket authenticates with the new credential.
async fn promote_enrol_ticket(db: &impl ConnectionTrait, token: &str) -> DomainResult<()> {
    auth_challenge::Entity::update_many()
        .col_expr(
            auth_challenge::Column::Kind,
            Expr::value(ChallengeKind::MfaTicket.as_str()),
        )
        .filter(auth_challenge::Column::SecretHash.eq(sha256_hex(token)))
        .filter(auth_challenge::Column::Kind.eq(ChallengeKind::EnrolTicket.as_str()))
        .exec(db)
        .await?;
    Ok(())
}

/// Deletes expired ceremonies and tickets.
pub async fn prune_challenges(db: &DatabaseConnection, now: DateTime<Utc>) -> DomainResult<u64> {
    let _turn = crate::db::write_turn(db).await?;
    Ok(auth_challenge::Entity::delete_many()
        .filter(auth_challenge::Column::ExpiresAt.lt(now))
        .exec(db)
        .await?
        .rows_affected)
}

/// Whether users of this tenant must use a second factor: platform admins always do.
pub async fn mfa_required(db: &impl ConnectionTrait, tenant_id: TenantId) -> DomainResult<bool> {
    let t = tenant::Entity::find_by_id(tenant_id.as_uuid())
        .one(db)
        .await?
        .ok_or(DomainError::NotFound("tenant"))?;
    Ok(t.mfa_required || t.kind == TenantKind::Platform.as_str())
}

// ---------------------------------------------------------------------------------------
// Credentials

#[derive(Clone, Debug)]
pub struct Credential {
    pub id: Uuid,
    pub name: String,
    pub sign_count: i64,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<webauthn_credential::Model> for Credential {
    fn from(m: webauthn_credential::Model) -> Self {
        Credential {
            id: m.id,
            name: m.name,
            sign_count: m.sign_count,
            created_at: m.created_at,
            last_used_at: m.last_used_at,
        }
    }
}

/// A stored credential with the state a ceremony needs.
#[derive(Clone, Debug)]
pub struct StoredPasskey {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub user_id: UserId,
    /// webauthn-rs `Passkey` as JSON.
    pub passkey: String,
}

impl From<webauthn_credential::Model> for StoredPasskey {
    fn from(m: webauthn_credential::Model) -> Self {
        StoredPasskey {
            id: m.id,
            tenant_id: TenantId::from_uuid(m.tenant_id),
            user_id: UserId::from_uuid(m.user_id),
            passkey: m.passkey,
        }
    }
}

pub async fn list_credentials(
    db: &impl ConnectionTrait,
    tenant_id: TenantId,
    user_id: UserId,
) -> DomainResult<Vec<Credential>> {
    Ok(webauthn_credential::Entity::find()
        .filter(webauthn_credential::Column::TenantId.eq(tenant_id.as_uuid()))
        .filter(webauthn_credential::Column::UserId.eq(user_id.as_uuid()))
        .order_by_asc(webauthn_credential::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(Credential::from)
        .collect())
}

pub async fn passkeys_of(
    db: &impl ConnectionTrait,
    tenant_id: TenantId,
    user_id: UserId,
) -> DomainResult<Vec<StoredPasskey>> {
    Ok(webauthn_credential::Entity::find()
        .filter(webauthn_credential::Column::TenantId.eq(tenant_id.as_uuid()))
        .filter(webauthn_credential::Column::UserId.eq(user_id.as_uuid()))
        .all(db)
        .await?
        .into_iter()
        .map(StoredPasskey::from)
        .collect())
}

/// The credential with this authenticator credential id, in this tenant only.
pub async fn passkey_by_credential_id(
    db: &impl ConnectionTrait,
    tenant_id: TenantId,
    credential_id: &str,
) -> DomainResult<Option<StoredPasskey>> {
    Ok(webauthn_credential::Entity::find()
        .filter(webauthn_credential::Column::TenantId.eq(tenant_id.as_uuid()))
        .filter(webauthn_credential::Column::CredentialId.eq(credential_id))
        .one(db)
        .await?
        .map(StoredPasskey::from))
}

pub struct NewCredential {
    /// base64url of the authenticator's credential id.
    pub credential_id: String,
    pub name: String,
    pub passkey: String,
    pub sign_count: i64,
}

/// Saves a registered credential. With `ticket`, the enrolment ticket it was registered
/// under becomes an MFA ticket for the next step.
pub async fn add_credential(
    db: &DatabaseConnection,
    tenant_id: TenantId,
    user_id: UserId,
    input: NewCredential,
    ticket: Option<&str>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<Credential> {
    let txn = db::begin_write(db).await?;
    let id = Uuid::now_v7();
    let model = webauthn_credential::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant_id.as_uuid()),
        user_id: Set(user_id.as_uuid()),
        credential_id: Set(input.credential_id),
        name: Set(input.name),
        passkey: Set(input.passkey),
        sign_count: Set(input.sign_count),
        created_at: Set(now),
        last_used_at: Set(None),
    };
    webauthn_credential::Entity::insert(model)
        .exec_without_returning(&txn)
        .await
        .map_err(|e| {
            conflict_on_unique(
                e,
                "credential_exists",
                "this authenticator is already registered",
            )
        })?;
    if let Some(token) = ticket {
        promote_enrol_ticket(&txn, token).await?;
    }
    audit::record(
        &txn,
        tenant_id,
        actor,
        Event {
            action: "webauthn.registered",
            object_type: "user",
            object_id: Some(user_id.as_uuid()),
            details: Some(serde_json::json!({"credential": id})),
        },
        now,
    )
    .await?;
    let row = webauthn_credential::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or(DomainError::NotFound("credential"))?;
    txn.commit().await?;
    Ok(row.into())
}

/// Saves what an authentication changed (signature counter, backup state).
pub async fn record_use(
    db: &DatabaseConnection,
    stored: &StoredPasskey,
    passkey: String,
    sign_count: i64,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let _turn = crate::db::write_turn(db).await?;
    webauthn_credential::Entity::update_many()
        .col_expr(webauthn_credential::Column::Passkey, Expr::value(passkey))
        .col_expr(
            webauthn_credential::Column::SignCount,
            Expr::value(sign_count),
        )
        .col_expr(webauthn_credential::Column::LastUsedAt, Expr::value(now))
        .filter(webauthn_credential::Column::Id.eq(stored.id))
        .filter(webauthn_credential::Column::TenantId.eq(stored.tenant_id.as_uuid()))
        .exec(db)
        .await?;
    Ok(())
}

pub async fn rename_credential(
    db: &DatabaseConnection,
    principal: &Principal,
    id: Uuid,
    name: String,
) -> DomainResult<Credential> {
    let txn = db::begin_write(db).await?;
    let result = webauthn_credential::Entity::update_many()
        .col_expr(webauthn_credential::Column::Name, Expr::value(name))
        .filter(webauthn_credential::Column::Id.eq(id))
        .filter(webauthn_credential::Column::TenantId.eq(principal.tenant.id().as_uuid()))
        .filter(webauthn_credential::Column::UserId.eq(principal.user_id.as_uuid()))
        .exec(&txn)
        .await?;
    if result.rows_affected != 1 {
        return Err(DomainError::NotFound("credential"));
    }
    let row = webauthn_credential::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or(DomainError::NotFound("credential"))?;
    txn.commit().await?;
    Ok(row.into())
}

/// Removes one of the caller's credentials. The last one cannot go while MFA is required.
pub async fn remove_credential(
    db: &DatabaseConnection,
    principal: &Principal,
    id: Uuid,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let tenant_id = principal.tenant.id();
    let txn = db::begin_write(db).await?;
    let mine = list_credentials(&txn, tenant_id, principal.user_id).await?;
    if !mine.iter().any(|c| c.id == id) {
        return Err(DomainError::NotFound("credential"));
    }
    if mine.len() == 1 && mfa_required(&txn, tenant_id).await? {
        return Err(DomainError::Conflict {
            code: "last_credential",
            detail: "MFA is required in this tenant: register another credential before removing the last one".into(),
        });
    }
    webauthn_credential::Entity::delete_by_id(id)
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        tenant_id,
        actor,
        Event {
            action: "webauthn.removed",
            object_type: "user",
            object_id: Some(principal.user_id.as_uuid()),
            details: Some(serde_json::json!({"credential": id})),
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

/// An admin removes every credential of another user of the tenant and ends their sessions;
/// the user enrols again at the next sign-in. Returns how many credentials were removed.
pub async fn reset_user_mfa(
    db: &DatabaseConnection,
    tenant: &Tenant,
    user_id: UserId,
    actor: &Actor,
    now: DateTime<Utc>,
) -> DomainResult<u64> {
    let txn = db::begin_write(db).await?;
    user::Entity::find_by_id(user_id.as_uuid())
        .filter(user::Column::TenantId.eq(tenant.id().as_uuid()))
        .one(&txn)
        .await?
        .ok_or(DomainError::NotFound("user"))?;
    let removed = webauthn_credential::Entity::delete_many()
        .filter(webauthn_credential::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(webauthn_credential::Column::UserId.eq(user_id.as_uuid()))
        .exec(&txn)
        .await?
        .rows_affected;
    session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(now))
        .col_expr(session::Column::RevokeReason, Expr::value("mfa_reset"))
        .filter(session::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(session::Column::UserId.eq(user_id.as_uuid()))
        .filter(session::Column::RevokedAt.is_null())
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        tenant.id(),
        actor,
        Event {
            action: "webauthn.reset",
            object_type: "user",
            object_id: Some(user_id.as_uuid()),
            details: Some(serde_json::json!({"removed": removed})),
        },
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(removed)
}

/// Marks a WebAuthn verification in a live session (step-up): `auth_time` moves to now and
/// `amr` gains `hwk` and `mfa`.
pub async fn record_step_up(
    db: &DatabaseConnection,
    tenant_id: TenantId,
    session_id: SessionId,
    now: DateTime<Utc>,
) -> DomainResult<Vec<String>> {
    let row = session::Entity::find_by_id(session_id.as_uuid())
        .filter(session::Column::TenantId.eq(tenant_id.as_uuid()))
        .one(db)
        .await?
        .ok_or(DomainError::Unauthenticated("session_ended"))?;
    let mut amr: Vec<String> = row.amr.split(' ').map(str::to_owned).collect();
    for m in ["hwk", "mfa"] {
        if !amr.iter().any(|a| a == m) {
            amr.push(m.to_owned());
        }
    }
    let _turn = crate::db::write_turn(db).await?;
    session::Entity::update_many()
        .col_expr(session::Column::Amr, Expr::value(amr.join(" ")))
        .col_expr(session::Column::AuthTime, Expr::value(now))
        .col_expr(session::Column::WebauthnAt, Expr::value(now))
        .filter(session::Column::Id.eq(session_id.as_uuid()))
        .filter(session::Column::TenantId.eq(tenant_id.as_uuid()))
        .exec(db)
        .await?;
    Ok(amr)
}

/// The operator's way out of a lock-out (e.g. the only platform admin lost their key):
/// resets the MFA of the user with this e-mail in the tenant with this slug.
pub async fn reset_mfa_by_email(
    db: &DatabaseConnection,
    tenant_slug: &str,
    email: &str,
    now: DateTime<Utc>,
) -> DomainResult<u64> {
    let tenant_id = crate::tenants::active_tenant_by_slug(db, tenant_slug).await?;
    let found = user::Entity::find()
        .filter(user::Column::TenantId.eq(tenant_id.as_uuid()))
        .filter(user::Column::Email.eq(email.trim().to_lowercase()))
        .one(db)
        .await?
        .ok_or(DomainError::NotFound("user"))?;
    let actor = Actor {
        actor_id: None,
        kind: "cli",
        request_id: None,
    };
    reset_user_mfa(
        db,
        &Tenant::scoped(tenant_id),
        UserId::from_uuid(found.id),
        &actor,
        now,
    )
    .await
}
