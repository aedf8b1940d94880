//! Sign-in, sessions and refresh tokens.
//!
//! A session is one sign-in; its refresh tokens form a family. Each refresh spends the token
//! and issues the next one; presenting a spent token means it was stolen or replayed, so the
//! whole family (the session) is revoked. Access tokens name their session, and every request
//! checks it, so logout and deactivation take effect at once.

use chrono::{DateTime, Duration, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter};

use crate::db;
use crate::entities::{auth_throttle, password_credential, refresh_token, session, tenant, user};
use crate::error::{DomainError, DomainResult};
use crate::ids::{SessionId, TenantId, UserId};
use crate::passwords::{Password, dummy_verify, verify_password};
use crate::secrets::{random_token, sha256_hex};
use crate::tenancy::{Principal, Tenant, TenantKind};
use crate::values::Role;

/// Throttling of failed sign-ins. After `free_failures` failures within `window` a key is
/// locked, for `base_lock` doubled with each further failure, at most `max_lock`.
#[derive(Clone, Debug)]
pub struct ThrottlePolicy {
    pub account_free_failures: i32,
    pub address_free_failures: i32,
    pub window: Duration,
    pub base_lock: Duration,
    pub max_lock: Duration,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        ThrottlePolicy {
            account_free_failures: 5,
            address_free_failures: 20,
            window: Duration::minutes(15),
            base_lock: Duration::seconds(30),
            max_lock: Duration::minutes(15),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SessionPolicy {
    /// Absolute lifetime of a sign-in; refreshing does not extend it.
    pub session_ttl: Duration,
    pub throttle: ThrottlePolicy,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            session_ttl: Duration::days(30),
            throttle: ThrottlePolicy::default(),
        }
    }
}

pub struct LoginAttempt<'a> {
    pub tenant_slug: &'a str,
    /// As typed; normalised here so throttling cannot be dodged by changing case.
    pub email: &'a str,
    pub password: Password,
    /// The client's address, for per-address throttling.
    pub client_addr: &'a str,
}

/// A session that was just started or refreshed. The refresh token is shown to the client
/// once and stored only as a hash.
pub struct IssuedSession {
    pub principal: Principal,
    pub auth_time: DateTime<Utc>,
    pub amr: Vec<String>,
    pub refresh_token: String,
    pub session_expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for IssuedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedSession")
            .field("principal", &self.principal)
            .field("refresh_token", &"***")
            .finish()
    }
}

fn new_refresh_token() -> String {
    random_token("rt_", 32)
}

fn account_key(tenant_slug: &str, email: &str) -> String {
    sha256_hex(&format!(
        "account:{}:{}",
        tenant_slug.trim().to_lowercase(),
        email.trim().to_lowercase()
    ))
}

fn address_key(addr: &str) -> String {
    sha256_hex(&format!("address:{addr}"))
}

/// Seconds until the key is unlocked, if it is locked.
async fn locked_for(
    db: &impl ConnectionTrait,
    key: &str,
    now: DateTime<Utc>,
) -> DomainResult<Option<u64>> {
    let row = auth_throttle::Entity::find_by_id(key.to_owned())
        .one(db)
        .await?;
    Ok(row
        .and_then(|r| r.locked_until)
        .filter(|until| *until > now)
        .map(|until| (until - now).num_seconds().max(1) as u64))
}

async fn record_failure(
    db: &DatabaseConnection,
    key: String,
    free: i32,
    policy: &ThrottlePolicy,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let txn = db::begin_write(db).await?;
    let row = auth_throttle::Entity::find_by_id(key.clone())
        .one(&txn)
        .await?;
    let (failures, window_started_at) = match &row {
        Some(r) if now - r.window_started_at < policy.window => {
            (r.failures + 1, r.window_started_at)
        }
        _ => (1, now),
    };
    let locked_until = (failures > free).then(|| {
        let doublings = (failures - free - 1).min(16) as u32;
        let lock = policy.base_lock * 2i32.pow(doublings);
        now + lock.min(policy.max_lock)
    });
    let model = auth_throttle::ActiveModel {
        key: Set(key),
        failures: Set(failures),
        window_started_at: Set(window_started_at),
        locked_until: Set(locked_until),
    };
    let write = if row.is_some() {
        auth_throttle::Entity::update(model)
            .exec(&txn)
            .await
            .map(|_| ())
    } else {
        auth_throttle::Entity::insert(model)
            .exec_without_returning(&txn)
            .await
            .map(|_| ())
    };
    match write {
        Ok(()) => txn.commit().await?,
        // A concurrent failure created the row first: that one counted.
        Err(e)
            if matches!(
                e.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            ) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Signs a user in with a password. Unknown tenants, unknown users, deactivated users and wrong
/// passwords all give the same answer after the same work.
pub async fn login(
    db: &DatabaseConnection,
    attempt: LoginAttempt<'_>,
    policy: &SessionPolicy,
    now: DateTime<Utc>,
) -> DomainResult<SignIn> {
    let account = account_key(attempt.tenant_slug, attempt.email);
    let address = address_key(attempt.client_addr);
    for key in [&account, &address] {
        if let Some(secs) = locked_for(db, key, now).await? {
            return Err(DomainError::Throttled {
                retry_after_secs: secs,
            });
        }
    }

    let email = attempt.email.trim().to_lowercase();
    let found = match tenant::Entity::find()
        .filter(tenant::Column::Slug.eq(attempt.tenant_slug.trim()))
        .filter(tenant::Column::Active.eq(true))
        .one(db)
        .await?
    {
        Some(t) => user::Entity::find()
            .filter(user::Column::TenantId.eq(t.id))
            .filter(user::Column::Email.eq(email))
            .filter(user::Column::Active.eq(true))
            .one(db)
            .await?
            .map(|u| (t, u)),
        None => None,
    };
    let credential = match &found {
        Some((_, u)) => {
            password_credential::Entity::find()
                .filter(password_credential::Column::TenantId.eq(u.tenant_id))
                .filter(password_credential::Column::UserId.eq(u.id))
                .one(db)
                .await?
        }
        None => None,
    };

    let verified = match (&found, &credential) {
        (Some(_), Some(cred)) => verify_password(&attempt.password, &cred.hash).await,
        _ => {
            dummy_verify(&attempt.password).await;
            false
        }
    };
    let (tenant_row, user_row) = match (verified, found) {
        (true, Some(found)) => found,
        _ => {
            let t = &policy.throttle;
            record_failure(db, account, t.account_free_failures, t, now).await?;
            record_failure(db, address, t.address_free_failures, t, now).await?;
            return Err(DomainError::Unauthenticated("invalid_credentials"));
        }
    };

    let turn = db::write_turn(db).await?;
    auth_throttle::Entity::delete_by_id(account)
        .exec(db)
        .await?;
    drop(turn);
    if let Some(cred) = credential
        && crate::passwords::outdated(&cred.hash)
    {
        // Re-hashed with today's parameters while the password is at hand.
        let hash = crate::passwords::hash_password(&attempt.password).await?;
        let _turn = db::write_turn(db).await?;
        password_credential::Entity::update_many()
            .col_expr(
                password_credential::Column::Hash,
                sea_orm::sea_query::Expr::value(hash),
            )
            .filter(password_credential::Column::TenantId.eq(cred.tenant_id))
            .filter(password_credential::Column::UserId.eq(cred.user_id))
            .filter(password_credential::Column::Hash.eq(cred.hash))
            .exec(db)
            .await?;
    }
    let tenant_id = TenantId::from_uuid(tenant_row.id);
    let user_id = UserId::from_uuid(user_row.id);
    first_factor_done(db, tenant_id, user_id, vec!["pwd".to_owned()], policy, now).await
}

/// After a first factor (password, SSO): a session, or a ticket when MFA is required.
pub async fn first_factor_done(
    db: &DatabaseConnection,
    tenant_id: TenantId,
    user_id: UserId,
    amr: Vec<String>,
    policy: &SessionPolicy,
    now: DateTime<Utc>,
) -> DomainResult<SignIn> {
    if crate::mfa::mfa_required(db, tenant_id).await? {
        let ticket = crate::mfa::issue_ticket(db, tenant_id, user_id, &amr, now).await?;
        return Ok(SignIn::Ticket(ticket));
    }
    let session = start_session(db, tenant_id, user_id, amr, false, policy, now).await?;
    Ok(SignIn::Session(session))
}

/// What a first factor yields: a session, or a ticket for the second factor.
#[derive(Debug)]
pub enum SignIn {
    Session(IssuedSession),
    Ticket(crate::mfa::IssuedTicket),
}

/// Starts a session for a user whose sign-in is complete (`amr` says how), with its first
/// refresh token.
pub async fn start_session(
    db: &DatabaseConnection,
    tenant_id: TenantId,
    user_id: UserId,
    amr: Vec<String>,
    webauthn: bool,
    policy: &SessionPolicy,
    now: DateTime<Utc>,
) -> DomainResult<IssuedSession> {
    let txn = db::begin_write(db).await?;
    let session_id = SessionId::new();
    let expires_at = now + policy.session_ttl;
    session::Entity::insert(session::ActiveModel {
        id: Set(session_id.as_uuid()),
        tenant_id: Set(tenant_id.as_uuid()),
        user_id: Set(user_id.as_uuid()),
        amr: Set(amr.join(" ")),
        auth_time: Set(now),
        created_at: Set(now),
        expires_at: Set(expires_at),
        revoked_at: Set(None),
        revoke_reason: Set(None),
        webauthn_at: Set(webauthn.then_some(now)),
    })
    .exec_without_returning(&txn)
    .await?;
    let refresh = issue_refresh_token(&txn, tenant_id, session_id, expires_at, now).await?;
    let (_, principal) = load_principal(&txn, tenant_id, session_id, now).await?;
    if principal.user_id != user_id {
        return Err(DomainError::Internal("session of another user".into()));
    }
    txn.commit().await?;
    Ok(IssuedSession {
        principal,
        auth_time: now,
        amr,
        refresh_token: refresh,
        session_expires_at: expires_at,
    })
}

async fn issue_refresh_token(
    db: &impl ConnectionTrait,
    tenant_id: TenantId,
    session_id: SessionId,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> DomainResult<String> {
    let token = new_refresh_token();
    refresh_token::Entity::insert(refresh_token::ActiveModel {
        id: Set(uuid::Uuid::now_v7()),
        tenant_id: Set(tenant_id.as_uuid()),
        session_id: Set(session_id.as_uuid()),
        token_hash: Set(sha256_hex(&token)),
        created_at: Set(now),
        expires_at: Set(expires_at),
        used_at: Set(None),
    })
    .exec_without_returning(db)
    .await?;
    Ok(token)
}

async fn revoke_session(
    db: &impl ConnectionTrait,
    tenant_id: uuid::Uuid,
    session_id: uuid::Uuid,
    reason: &str,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(now))
        .col_expr(session::Column::RevokeReason, Expr::value(reason))
        .filter(session::Column::TenantId.eq(tenant_id))
        .filter(session::Column::Id.eq(session_id))
        .filter(session::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(())
}

/// Spends a refresh token and issues the next one of its family. A spent token revokes the
/// family; an expired or revoked session, a deactivated user or tenant is refused.
pub async fn refresh(
    db: &DatabaseConnection,
    presented: &str,
    now: DateTime<Utc>,
) -> DomainResult<IssuedSession> {
    let txn = db::begin_write(db).await?;
    let token = refresh_token::Entity::find()
        .filter(refresh_token::Column::TokenHash.eq(sha256_hex(presented)))
        .one(&txn)
        .await?
        .ok_or(DomainError::Unauthenticated("invalid_refresh_token"))?;
    if token.used_at.is_some() {
        revoke_session(
            &txn,
            token.tenant_id,
            token.session_id,
            "refresh_token_reuse",
            now,
        )
        .await?;
        txn.commit().await?;
        return Err(DomainError::Unauthenticated("refresh_token_reused"));
    }
    if token.expires_at <= now {
        return Err(DomainError::Unauthenticated("invalid_refresh_token"));
    }
    let spent = refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::UsedAt, Expr::value(now))
        .filter(refresh_token::Column::Id.eq(token.id))
        .filter(refresh_token::Column::UsedAt.is_null())
        .exec(&txn)
        .await?;
    if spent.rows_affected != 1 {
        // Spent concurrently by another request with the same token: a replay.
        revoke_session(
            &txn,
            token.tenant_id,
            token.session_id,
            "refresh_token_reuse",
            now,
        )
        .await?;
        txn.commit().await?;
        return Err(DomainError::Unauthenticated("refresh_token_reused"));
    }
    let session_id = SessionId::from_uuid(token.session_id);
    let tenant_id = TenantId::from_uuid(token.tenant_id);
    let (session_row, principal) = load_principal(&txn, tenant_id, session_id, now).await?;
    let next =
        issue_refresh_token(&txn, tenant_id, session_id, session_row.expires_at, now).await?;
    txn.commit().await?;
    Ok(IssuedSession {
        principal,
        auth_time: session_row.auth_time,
        amr: session_row.amr.split(' ').map(str::to_owned).collect(),
        refresh_token: next,
        session_expires_at: session_row.expires_at,
    })
}

/// Ends a session at once: its access tokens are refused on the next request.
pub async fn logout(
    db: &DatabaseConnection,
    principal: &Principal,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    revoke_session(
        db,
        principal.tenant.id().as_uuid(),
        principal.session_id.as_uuid(),
        "logout",
        now,
    )
    .await
}

/// The parts of a live session that sign-in needs again.
struct LiveSession {
    auth_time: DateTime<Utc>,
    amr: String,
    expires_at: DateTime<Utc>,
}

/// One query on the hot path: the session with its user and tenant, all three still live.
/// The session, its user's role and its tenant's policy, if all are live.
const SESSION_CHECK_SQL: &str = "SELECT sessions.user_id, sessions.auth_time, sessions.amr, \
    sessions.expires_at, sessions.webauthn_at, users.role, tenants.kind, tenants.mfa_required \
    FROM sessions \
    INNER JOIN users ON users.tenant_id = sessions.tenant_id AND users.id = sessions.user_id \
    INNER JOIN tenants ON tenants.id = sessions.tenant_id \
    WHERE sessions.tenant_id = $1 AND sessions.id = $2 AND sessions.revoked_at IS NULL \
    AND sessions.expires_at > $3 AND users.active = $4 AND tenants.active = $5";

async fn load_principal(
    db: &impl ConnectionTrait,
    tenant_id: TenantId,
    session_id: SessionId,
    now: DateTime<Utc>,
) -> DomainResult<(LiveSession, Principal)> {
    let params = session_check_params(tenant_id, session_id, now);
    let row = db::fixed_one_in(db, SESSION_CHECK_SQL, &params).await?;
    principal_of(row, tenant_id, session_id)
}

fn session_check_params(
    tenant_id: TenantId,
    session_id: SessionId,
    now: DateTime<Utc>,
) -> [db::Param<'static>; 5] {
    use db::Param;
    [
        Param::Uuid(tenant_id.as_uuid()),
        Param::Uuid(session_id.as_uuid()),
        Param::Time(now),
        Param::Bool(true),
        Param::Bool(true),
    ]
}

/// The session and caller in a [`SESSION_CHECK_SQL`] row; no row: the session has ended.
fn principal_of(
    row: Option<sea_orm::QueryResult>,
    tenant_id: TenantId,
    session_id: SessionId,
) -> DomainResult<(LiveSession, Principal)> {
    let row = row.ok_or(DomainError::Unauthenticated("session_ended"))?;
    let role: String = row.try_get("", "role")?;
    let role =
        Role::parse(&role).map_err(|_| DomainError::Internal("unknown role in database".into()))?;
    let kind: String = row.try_get("", "kind")?;
    let user_id: uuid::Uuid = row.try_get("", "user_id")?;
    let webauthn_at: Option<DateTime<Utc>> = row.try_get("", "webauthn_at")?;
    let mfa_required: bool = row.try_get("", "mfa_required")?;
    let tenant_kind = TenantKind::from_db(&kind);
    // A session from before the tenant required MFA (or without it) no longer counts.
    if (mfa_required || tenant_kind == TenantKind::Platform) && webauthn_at.is_none() {
        return Err(DomainError::Unauthenticated("mfa_required"));
    }
    let live = LiveSession {
        auth_time: row.try_get("", "auth_time")?,
        amr: row.try_get("", "amr")?,
        expires_at: row.try_get("", "expires_at")?,
    };
    let principal = Principal {
        tenant: Tenant::scoped(tenant_id),
        tenant_kind,
        user_id: UserId::from_uuid(user_id),
        session_id,
        role,
        webauthn_at,
    };
    Ok((live, principal))
}

/// Checks, for every request, that the session named by a verified access token is still
/// live and its user and tenant still active. Returns the caller with its current role.
pub async fn authenticate(
    db: &DatabaseConnection,
    tenant_id: TenantId,
    user_id: UserId,
    session_id: SessionId,
    now: DateTime<Utc>,
) -> DomainResult<Principal> {
    // Runs on every authenticated request: a fixed statement (prepared once per connection)
    // straight on the pool.
    let params = session_check_params(tenant_id, session_id, now);
    let row = db::fixed_one(db, SESSION_CHECK_SQL, &params).await?;
    let (_, principal) = principal_of(row, tenant_id, session_id)?;
    if principal.user_id != user_id {
        return Err(DomainError::Unauthenticated("session_ended"));
    }
    Ok(principal)
}

/// Deletes what sign-in no longer needs: throttle entries whose window and lock have passed,
/// and sessions (with their refresh tokens) that expired more than a day ago. Returns the
/// number of rows removed.
pub async fn prune_expired(
    db: &DatabaseConnection,
    policy: &ThrottlePolicy,
    now: DateTime<Utc>,
) -> DomainResult<u64> {
    let _turn = db::write_turn(db).await?;
    let throttles = auth_throttle::Entity::delete_many()
        .filter(auth_throttle::Column::WindowStartedAt.lt(now - policy.window))
        .filter(
            sea_orm::Condition::any()
                .add(auth_throttle::Column::LockedUntil.is_null())
                .add(auth_throttle::Column::LockedUntil.lt(now)),
        )
        .exec(db)
        .await?
        .rows_affected;
    let sessions = session::Entity::delete_many()
        .filter(session::Column::ExpiresAt.lt(now - Duration::days(1)))
        .exec(db)
        .await?
        .rows_affected;
    Ok(throttles + sessions)
}
