//! Access tokens and the extractors that authenticate and authorise every request.
//!
//! An access token is an EdDSA-signed JWT (`typ: at+jwt`, ≤ 15 minutes, `kid` in the header).
//! Verifying the signature is not enough: each request also checks that the token's session
//! is live and its user and tenant active, so logout and deactivation take effect at once.
//! Authorisation lives in the extractor types: a handler that takes `CrmWriter` cannot run
//! for a viewer.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use crm_domain::clients::{self, ClientPrincipal};
use crm_domain::ids::{SessionId, TenantId, UserId};
use crm_domain::sessions::{self, IssuedSession};
use crm_domain::values::Role;
use crm_domain::{Principal, Tenant, TenantKind};
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::problem::ApiError;
use actix_web::HttpMessage;
use crm_domain::audit::Actor;

/// The request id, put in the request's extensions by the access-log middleware.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);
use crate::state::AppState;

pub const TOKEN_TYPE: &str = "at+jwt";

#[derive(Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    /// Tenant id.
    pub tid: String,
    /// Session id (user tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Authentication methods (RFC 8176), e.g. `pwd` (user tokens).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// Space-separated scopes (integration client tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The OAuth client id (integration client tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

fn sign(state: &AppState, claims: &AccessClaims) -> Result<String, ApiError> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(TOKEN_TYPE.into());
    header.kid = Some(state.keys.current.kid.clone());
    jsonwebtoken::encode(&header, claims, &state.keys.current.encoding)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("signing access token")))
}

/// Signs an access token for an integration client with the granted scopes.
pub fn issue_client_token(
    state: &AppState,
    client: &crm_domain::clients::ClientPrincipal,
    client_id: &str,
    scopes: &[String],
) -> Result<(String, i64), ApiError> {
    let now = state.clock.now();
    let ttl = state.settings.access_token_ttl;
    let claims = AccessClaims {
        iss: state.settings.issuer.clone(),
        sub: client.id.to_string(),
        aud: state.settings.audience.clone(),
        exp: (now + ttl).timestamp(),
        iat: now.timestamp(),
        nbf: now.timestamp(),
        jti: Uuid::now_v7().to_string(),
        tid: client.tenant.id().to_string(),
        sid: None,
        roles: Vec::new(),
        amr: Vec::new(),
        auth_time: None,
        scope: Some(scopes.join(" ")),
        client_id: Some(client_id.to_owned()),
    };
    Ok((sign(state, &claims)?, ttl.num_seconds()))
}

/// Signs an access token for a session that was just started or refreshed.
pub fn issue_access_token(
    state: &AppState,
    session: &IssuedSession,
) -> Result<(String, i64), ApiError> {
    let now = state.clock.now();
    let ttl = state.settings.access_token_ttl;
    let p = &session.principal;
    let claims = AccessClaims {
        iss: state.settings.issuer.clone(),
        sub: p.user_id.to_string(),
        aud: state.settings.audience.clone(),
        exp: (now + ttl).timestamp(),
        iat: now.timestamp(),
        nbf: now.timestamp(),
        jti: Uuid::now_v7().to_string(),
        tid: p.tenant.id().to_string(),
        sid: Some(p.session_id.to_string()),
        roles: vec![p.role.as_str().to_owned()],
        amr: session.amr.clone(),
        auth_time: Some(session.auth_time.timestamp()),
        scope: None,
        client_id: None,
    };
    let token = sign(state, &claims)?;
    Ok((token, ttl.num_seconds()))
}

fn invalid_token() -> ApiError {
    ApiError::Unauthenticated {
        code: "invalid_token",
        detail: "the access token is malformed, expired, or not issued by this service",
    }
}

/// Who a verified access token speaks for.
#[derive(Clone, Debug)]
pub enum TokenSubject {
    User(TenantId, UserId, SessionId),
    /// The client, and the scopes the token was granted.
    Client(TenantId, Uuid, Vec<String>),
}

/// The validation of access tokens (issuer, audience, required claims), built once.
pub fn token_validation(issuer: &str, audience: &str) -> Validation {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    // Expiry is checked against the service's clock below, not the library's.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation
}

/// What verification reads from an access token (`iss` and `aud` are checked by the library).
#[derive(Deserialize)]
struct VerifiedClaims {
    sub: String,
    exp: i64,
    iat: i64,
    nbf: i64,
    tid: String,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// Verifies signature, `typ`, `alg`, `kid`, `iss`, `aud`, `exp`, `nbf` and the claim shapes.
///
/// What the token itself proves (signature and shape) is kept in [`VerifiedTokens`], so a
/// client's next request with the same token skips the signature check, the largest cost of
/// authentication in a profile of a list page. The times are checked on every request; the
/// session check that follows (logout, deactivation) is not cached.
pub fn verify_access_token(state: &AppState, token: &str) -> Result<TokenSubject, ApiError> {
    let now = state.clock.now().timestamp();
    if let Some(known) = state.verified_tokens.get(token) {
        return known.at(now);
    }
    let verified = verify_signed(state, token)?;
    let subject = verified.at(now)?;
    state.verified_tokens.insert(token, verified, now);
    Ok(subject)
}

/// The signature, header and claim shapes of a token: what does not change with time.
fn verify_signed(state: &AppState, token: &str) -> Result<Verified, ApiError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| invalid_token())?;
    let typ_ok = header.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case(TOKEN_TYPE) || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok || header.alg != Algorithm::EdDSA {
        return Err(invalid_token());
    }
    let key = header
        .kid
        .as_deref()
        .and_then(|kid| state.keys.decoding_key(kid))
        .ok_or_else(invalid_token)?;
    let data = jsonwebtoken::decode::<VerifiedClaims>(token, key, &state.token_validation)
        .map_err(|_| invalid_token())?;
    let c = data.claims;
    let parse = |s: &str| Uuid::parse_str(s).map_err(|_| invalid_token());
    let tenant = TenantId::from_uuid(parse(&c.tid)?);
    let subject = match (&c.sid, &c.scope) {
        (Some(sid), None) => TokenSubject::User(
            tenant,
            UserId::from_uuid(parse(&c.sub)?),
            SessionId::from_uuid(parse(sid)?),
        ),
        (None, Some(scope)) => TokenSubject::Client(
            tenant,
            parse(&c.sub)?,
            scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        _ => return Err(invalid_token()),
    };
    Ok(Verified {
        subject,
        exp: c.exp,
        iat: c.iat,
        nbf: c.nbf,
    })
}

/// A token whose signature and shape were verified, with the times still to check.
#[derive(Clone)]
struct Verified {
    subject: TokenSubject,
    exp: i64,
    iat: i64,
    nbf: i64,
}

impl Verified {
    /// Whom the token speaks for at `now` (Unix seconds), if it is valid then.
    fn at(&self, now: i64) -> Result<TokenSubject, ApiError> {
        const LEEWAY: i64 = 5;
        if self.exp <= now - LEEWAY
            || self.nbf > now + LEEWAY
            || self.exp - self.iat > ACCESS_TOKEN_MAX_SECS + LEEWAY
        {
            return Err(invalid_token());
        }
        Ok(self.subject.clone())
    }
}

/// The longest lifetime an access token may claim.
const ACCESS_TOKEN_MAX_SECS: i64 = 900;

/// Access tokens this process has verified, by their full text: a cache of a pure function
/// of the token and the signing keys, which are fixed for the process's life (a removed key
/// takes effect on restart). Bounded: when full, entries past their expiry go first, and if
/// none has expired the cache starts over (the tokens are verified again on their next use).
/// Only tokens that verified are kept, so made-up tokens cannot fill it.
pub struct VerifiedTokens {
    entries: Mutex<HashMap<Box<str>, Verified>>,
    capacity: usize,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        // ~4,000 live tokens at under 1 KiB each: a few MB at most.
        Self::with_capacity(4096)
    }
}

impl VerifiedTokens {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Default::default(),
            capacity,
        }
    }

    /// The map. A lock poisoned by a panic elsewhere still guards a whole map: every change
    /// here is one call on it.
    fn entries(&self) -> MutexGuard<'_, HashMap<Box<str>, Verified>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, token: &str) -> Option<Verified> {
        self.entries().get(token).cloned()
    }

    fn insert(&self, token: &str, verified: Verified, now: i64) {
        let mut entries = self.entries();
        if entries.len() >= self.capacity {
            entries.retain(|_, v| v.exp > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(token.into(), verified);
    }

    /// How many tokens are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().len()
    }
}

pub(crate) fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    let missing = ApiError::Unauthenticated {
        code: "unauthenticated",
        detail: "this operation needs an access token: Authorization: Bearer <token>",
    };
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(missing)?;
    let (scheme, token) = value.split_once(' ').ok_or_else(invalid_token)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(invalid_token());
    }
    Ok(token.trim())
}

/// The outcome of verifying the request's bearer token, kept in the request's extensions so
/// it is verified once (`None`: no valid token).
#[derive(Clone)]
pub struct VerifiedToken(pub Option<TokenSubject>);

/// A verified caller: a signed-in user or an integration client.
pub enum Authenticated {
    User(Principal),
    Client(ClientPrincipal),
}

async fn authenticate(req: &HttpRequest) -> Result<Authenticated, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("application state missing")))?;
    // The middleware may have verified the token already.
    let known = req
        .extensions()
        .get::<VerifiedToken>()
        .and_then(|v| v.0.clone());
    let subject = match known {
        Some(s) => s,
        None => verify_access_token(&state, bearer(req)?)?,
    };
    let now = state.clock.now();
    match subject {
        TokenSubject::User(tid, uid, sid) => Ok(Authenticated::User(
            sessions::authenticate(&state.db, tid, uid, sid, now).await?,
        )),
        TokenSubject::Client(tid, id, granted) => {
            // The token's scopes, as far as the client still holds them.
            let mut client = clients::authenticate_token(&state.db, tid, id).await?;
            client.scopes.retain(|s| granted.contains(s));
            Ok(Authenticated::Client(client))
        }
    }
}

fn request_id(req: &HttpRequest) -> Option<String> {
    req.extensions().get::<RequestId>().map(|r| r.0.clone())
}

macro_rules! caller_type {
    ($(#[$meta:meta])* $name:ident, $allowed:expr, $denied:literal) => {
        $(#[$meta])*
        pub struct $name(pub Principal, pub Actor);

        impl FromRequest for $name {
            type Error = ApiError;
            type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

            fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
                let req = req.clone();
                Box::pin(async move {
                    let request_id = request_id(&req);
                    let principal = match authenticate(&req).await? {
                        Authenticated::User(p) => p,
                        Authenticated::Client(_) => {
                            return Err(ApiError::forbidden("this operation is for signed-in users, not integration clients"));
                        }
                    };
                    let allowed: fn(&Principal) -> bool = $allowed;
                    if allowed(&principal) {
                        let actor = Actor::user(&principal, request_id);
                        Ok($name(principal, actor))
                    } else {
                        Err(ApiError::forbidden($denied))
                    }
                })
            }
        }
    };
}

caller_type!(
    /// Any signed-in user.
    Caller,
    |_| true,
    "not allowed"
);
/// The tenant a scoped operation runs in, for a user or an integration client.
pub struct Access {
    pub tenant: Tenant,
}

macro_rules! scoped_type {
    ($(#[$meta:meta])* $name:ident, $scope:literal, $write:expr) => {
        $(#[$meta])*
        pub struct $name(pub Access, pub Actor);

        impl $name {
            pub const SCOPE: &'static str = $scope;
        }

        impl FromRequest for $name {
            type Error = ApiError;
            type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

            fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
                let req = req.clone();
                Box::pin(async move {
                    let request_id = request_id(&req);
                    let write: bool = $write;
                    match authenticate(&req).await? {
                        Authenticated::User(p) => {
                            let allowed = p.tenant_kind == TenantKind::Customer
                                && if write { p.role.can_write_crm() } else { p.role.can_read_crm() };
                            if !allowed {
                                return Err(ApiError::forbidden(if write {
                                    "changing CRM records needs the admin, dpo or member role"
                                } else {
                                    "reading CRM records needs a tenant role"
                                }));
                            }
                            let actor = Actor::user(&p, request_id);
                            Ok($name(Access { tenant: p.tenant }, actor))
                        }
                        Authenticated::Client(c) => {
                            if !c.scopes.iter().any(|s| s == $scope) {
                                return Err(ApiError::status(
                                    actix_web::http::StatusCode::FORBIDDEN,
                                    "insufficient_scope",
                                    concat!("this operation needs the scope ", $scope),
                                ));
                            }
                            let actor = Actor::client(c.id, request_id);
                            Ok($name(Access { tenant: c.tenant }, actor))
                        }
                    }
                })
            }
        }
    };
}

scoped_type!(ContactsRead, "contacts:read", false);
scoped_type!(ContactsWrite, "contacts:write", true);
scoped_type!(CompaniesRead, "companies:read", false);
scoped_type!(CompaniesWrite, "companies:write", true);
scoped_type!(OrdersRead, "orders:read", false);
scoped_type!(OrdersWrite, "orders:write", true);
scoped_type!(ConsentsRead, "consents:read", false);
scoped_type!(ConsentsWrite, "consents:write", true);
scoped_type!(SuppressionRead, "suppression:read", false);
scoped_type!(ChangesRead, "changes:read", false);

caller_type!(
    /// May run GDPR operations: tenant admin or dpo.
    GdprOfficer,
    |p| p.tenant_kind == TenantKind::Customer && matches!(p.role, Role::Admin | Role::Dpo),
    "GDPR operations need the admin or dpo role"
);
caller_type!(
    /// A tenant admin.
    TenantAdmin,
    |p| p.tenant_kind == TenantKind::Customer && p.role == Role::Admin,
    "managing users needs the admin role"
);
caller_type!(
    /// A platform admin (the processor's staff).
    PlatformAdmin,
    |p| p.tenant_kind == TenantKind::Platform && p.role == Role::PlatformAdmin,
    "managing tenants needs the platform_admin role"
);

/// The client's address, for throttling: the peer, or the first `X-Forwarded-For` hop when
/// the service runs behind a trusted proxy.
pub fn client_addr(req: &HttpRequest, trust_forwarded_for: bool) -> String {
    if trust_forwarded_for
        && let Some(first) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
    {
        return first.trim().to_owned();
    }
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(exp: i64) -> Verified {
        Verified {
            subject: TokenSubject::Client(
                TenantId::from_uuid(Uuid::nil()),
                Uuid::nil(),
                vec!["contacts:read".into()],
            ),
            exp,
            iat: exp - 600,
            nbf: exp - 600,
        }
    }

    #[test]
    fn a_verified_token_is_valid_only_within_its_times() {
        let v = verified(10_000);
        assert!(v.at(9_800).is_ok());
        assert!(v.at(9_395).is_ok(), "valid from nbf, within the leeway");
        assert!(v.at(10_004).is_ok(), "within the leeway");
        assert!(v.at(10_005).is_err(), "expired");
        assert!(v.at(9_394).is_err(), "not yet valid");
        let mut long = verified(10_000);
        long.iat = 10_000 - ACCESS_TOKEN_MAX_SECS - 6;
        assert!(long.at(9_900).is_err(), "claims a longer life than allowed");
    }

    #[test]
    fn the_cache_answers_only_for_the_exact_token_and_stays_bounded() {
        let cache = VerifiedTokens::with_capacity(2);
        cache.insert("a.b.c", verified(1_000), 500);
        assert!(cache.get("a.b.c").is_some());
        assert!(cache.get("a.b.C").is_none());
        assert!(cache.get("a.b.c ").is_none());
        assert!(cache.get("a.b").is_none());
        // Full: an expired entry makes room, the live one stays.
        cache.insert("old", verified(400), 300);
        assert_eq!(cache.len(), 2);
        cache.insert("new", verified(2_000), 500);
        assert_eq!(cache.len(), 2);
        assert!(cache.get("old").is_none());
        assert!(cache.get("a.b.c").is_some() && cache.get("new").is_some());
        // Full of live entries: it starts over rather than grow.
        cache.insert("third", verified(2_000), 500);
        assert_eq!(cache.len(), 1);
        assert!(cache.get("third").is_some());
        assert!(cache.get("a.b.c").is_none());
    }
}
