//! Shared application state, built once at start.

use std::sync::Arc;

use crm_domain::clock::Clock;
use crm_domain::db::Db;
use crm_domain::sessions::SessionPolicy;

use crate::config::Settings;
use crate::keys::KeyStore;

/// Each request worker has its own copy (its own PostgreSQL pool, see
/// [`crm_domain::db::worker_pool`]); everything else in it is shared.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub keys: Arc<KeyStore>,
    pub settings: Settings,
    pub clock: Arc<dyn Clock>,
    pub session_policy: SessionPolicy,
    /// The keys of personal data (key-encryption keys, the blind-index and suppression
    /// secret); kept outside the database.
    pub vault: Arc<crm_domain::vault::Vault>,
    /// WebAuthn relying party (id and origins from the settings).
    pub webauthn: webauthn_rs::Webauthn,
    /// Seals SSO client secrets.
    pub secret_box: Arc<crate::keys::SecretBox>,
    /// Back-channel client for OpenID providers: no redirects, short timeouts.
    pub oidc_http: reqwest::Client,
    /// This node's rate-limit counters (shared through the database).
    pub rate_limiter: Arc<crate::limits::RateLimiter>,
    /// How access tokens are validated (issuer, audience), built once.
    pub token_validation: jsonwebtoken::Validation,
    /// Access tokens whose signature this process has verified (shared by the workers).
    pub verified_tokens: Arc<crate::auth::VerifiedTokens>,
}
