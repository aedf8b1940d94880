//! Configuration: read once from `CRM_*` environment variables, validated, secrets wrapped.
//! Nothing else in the service reads the environment.

use std::path::PathBuf;

use chrono::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub environment: Environment,
    /// `sqlite://…` (default `sqlite://var/crm.db?mode=rwc`) or `postgres://…`.
    pub database_url: String,
    /// Address to listen on; port 0 picks a free port.
    pub listen_addr: String,
    /// Directory of Ed25519 signing keys (PKCS#8 PEM files, `<kid>.pem`).
    pub key_dir: PathBuf,
    /// `iss` of issued tokens: the public base URL of the service.
    pub issuer: String,
    /// `aud` of issued access tokens.
    pub audience: String,
    pub access_token_ttl: Duration,
    pub session_ttl: Duration,
    /// E-mail of the platform admin created on a first start with an empty database.
    pub bootstrap_email: String,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Take the client address from `X-Forwarded-For` (only behind a trusted proxy).
    pub trust_forwarded_for: bool,
    /// HTTP worker threads.
    pub workers: usize,
    /// Seconds between runs of the retention job; 0 turns it off.
    pub retention_interval_secs: u64,
    /// WebAuthn relying-party id: the registrable domain of the front end (e.g. `example.com`).
    pub webauthn_rp_id: String,
    /// Origins of front ends that run WebAuthn ceremonies (and may call the API from a
    /// browser: CORS is limited to them).
    pub webauthn_origins: Vec<String>,
    /// A WebAuthn verification younger than this counts as a step-up for destructive operations.
    pub step_up_max_age: Duration,
    /// Accept `http://` OpenID Connect issuers (development and tests only).
    pub sso_allow_http: bool,
    /// Milliseconds between polls of the delivery worker inside the server; 0 runs none
    /// (use `crm worker`).
    pub worker_interval_ms: u64,
    /// Tries before a webhook delivery is dead-lettered.
    pub webhook_max_attempts: i32,
    /// First retry delay; doubles with each try (with jitter), at most an hour.
    pub webhook_retry_base: Duration,
    /// Allow webhook URLs on loopback addresses (tests and local development only). Private,
    /// link-local and metadata addresses are always refused.
    pub webhook_allow_loopback: bool,
    /// SMTP relay for notifications (`host:port`); none keeps e-mails queued.
    pub smtp_relay: Option<String>,
    /// Sender address of notifications.
    pub mail_from: String,
    /// Requests per minute for each caller (user or integration client) on the API, and for
    /// each client address on calls without a valid token; 0 turns the limit off.
    pub rate_limit_per_minute: u32,
    /// Requests per minute for each client address on the sign-in routes (`/v1/auth/*`,
    /// `/v1/oauth/token`); 0 turns the limit off.
    pub auth_rate_limit_per_minute: u32,
    /// How often a node adds its counts to the shared counters (milliseconds).
    pub rate_limit_sync_ms: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

pub const DEFAULT_DATABASE_URL: &str = "sqlite://var/crm.db?mode=rwc";

impl Settings {
    /// Development defaults: SQLite under `./var/`, `127.0.0.1:8080`, keys in `./var/keys`.
    pub fn development() -> Self {
        Settings {
            environment: Environment::Development,
            database_url: DEFAULT_DATABASE_URL.into(),
            listen_addr: "127.0.0.1:8080".into(),
            key_dir: PathBuf::from("var/keys"),
            issuer: "http://127.0.0.1:8080".into(),
            audience: "crm-api".into(),
            access_token_ttl: Duration::minutes(15),
            session_ttl: Duration::days(30),
            bootstrap_email: "admin@example.com".into(),
            max_body_bytes: 1024 * 1024,
            trust_forwarded_for: false,
            workers: 2,
            retention_interval_secs: 3600,
            webauthn_rp_id: "localhost".into(),
            webauthn_origins: vec![
                "http://localhost:8080".into(),
                "http://localhost:3000".into(),
            ],
            step_up_max_age: Duration::minutes(5),
            sso_allow_http: true,
            worker_interval_ms: 1000,
            webhook_max_attempts: 8,
            webhook_retry_base: Duration::seconds(30),
            webhook_allow_loopback: false,
            smtp_relay: None,
            mail_from: "CRM <no-reply@localhost>".into(),
            rate_limit_per_minute: 1200,
            auth_rate_limit_per_minute: 60,
            rate_limit_sync_ms: 1000,
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment in production, a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut s = Settings::development();
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let int = |name: &str, min: i64, max: i64| -> Result<Option<i64>, ConfigError> {
            match get(name) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<i64>() {
                    Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                    _ => Err(ConfigError(format!(
                        "{name} must be an integer from {min} to {max}"
                    ))),
                },
            }
        };
        match get("CRM_ENV").as_deref() {
            None | Some("development") => {}
            Some("production") => s.environment = Environment::Production,
            Some(other) => {
                return Err(ConfigError(format!(
                    "CRM_ENV must be development or production, not {other:?}"
                )));
            }
        }
        let database_url = get("CRM_DATABASE_URL");
        if let Some(url) = &database_url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                return Err(ConfigError(
                    "CRM_DATABASE_URL must start with sqlite:, postgres:// or postgresql://".into(),
                ));
            }
            s.database_url = url.clone();
        }
        if let Some(v) = get("CRM_LISTEN_ADDR") {
            s.listen_addr = v;
        }
        let key_dir = get("CRM_KEY_DIR");
        if let Some(v) = &key_dir {
            s.key_dir = PathBuf::from(v);
        }
        let issuer = get("CRM_PUBLIC_URL");
        if let Some(v) = &issuer {
            s.issuer = v.trim_end_matches('/').to_owned();
        } else if let Some(addr) = get("CRM_LISTEN_ADDR") {
            s.issuer = format!("http://{addr}");
        }
        if let Some(v) = get("CRM_JWT_AUDIENCE") {
            s.audience = v;
        }
        if let Some(n) = int("CRM_ACCESS_TOKEN_TTL_SECS", 30, 900)? {
            s.access_token_ttl = Duration::seconds(n);
        }
        if let Some(n) = int("CRM_SESSION_TTL_HOURS", 1, 24 * 90)? {
            s.session_ttl = Duration::hours(n);
        }
        if let Some(v) = get("CRM_BOOTSTRAP_EMAIL") {
            s.bootstrap_email = v;
        }
        if let Some(n) = int("CRM_MAX_BODY_BYTES", 1024, 64 * 1024 * 1024)? {
            s.max_body_bytes = n as usize;
        }
        if let Some(v) = get("CRM_TRUST_FORWARDED_FOR") {
            s.trust_forwarded_for = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(n) = int("CRM_WORKERS", 1, 256)? {
            s.workers = n as usize;
        }
        if let Some(n) = int("CRM_RETENTION_INTERVAL_SECS", 0, 7 * 24 * 3600)? {
            s.retention_interval_secs = n as u64;
        }
        let rp_id = get("CRM_WEBAUTHN_RP_ID");
        if let Some(v) = &rp_id {
            s.webauthn_rp_id = v.trim().to_owned();
        }
        let origins = get("CRM_WEBAUTHN_ORIGINS");
        if let Some(v) = &origins {
            s.webauthn_origins = v
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect();
            if s.webauthn_origins.is_empty()
                || s.webauthn_origins
                    .iter()
                    .any(|o| !(o.starts_with("https://") || o.starts_with("http://")))
            {
                return Err(ConfigError(
                    "CRM_WEBAUTHN_ORIGINS must be a comma-separated list of http(s) origins".into(),
                ));
            }
        }
        if let Some(n) = int("CRM_STEP_UP_MAX_AGE_SECS", 30, 3600)? {
            s.step_up_max_age = Duration::seconds(n);
        }
        if s.environment == Environment::Production {
            s.sso_allow_http = false;
        }
        if let Some(n) = int("CRM_WORKER_INTERVAL_MS", 0, 60_000)? {
            s.worker_interval_ms = n as u64;
        }
        if let Some(n) = int("CRM_WEBHOOK_MAX_ATTEMPTS", 1, 50)? {
            s.webhook_max_attempts = n as i32;
        }
        if let Some(n) = int("CRM_WEBHOOK_RETRY_BASE_SECS", 1, 3600)? {
            s.webhook_retry_base = Duration::seconds(n);
        }
        if let Some(v) = get("CRM_SMTP_RELAY") {
            let ok = v
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(ConfigError("CRM_SMTP_RELAY must be host:port".into()));
            }
            s.smtp_relay = Some(v);
        }
        if let Some(n) = int("CRM_RATE_LIMIT_PER_MINUTE", 0, 1_000_000)? {
            s.rate_limit_per_minute = n as u32;
        }
        if let Some(n) = int("CRM_AUTH_RATE_LIMIT_PER_MINUTE", 0, 1_000_000)? {
            s.auth_rate_limit_per_minute = n as u32;
        }
        if let Some(n) = int("CRM_RATE_LIMIT_SYNC_MS", 10, 60_000)? {
            s.rate_limit_sync_ms = n as u64;
        }
        if let Some(v) = get("CRM_MAIL_FROM") {
            s.mail_from = v;
        }
        if let Some(v) = get("CRM_WEBHOOK_ALLOW_LOOPBACK") {
            s.webhook_allow_loopback = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = get("CRM_SSO_ALLOW_HTTP") {
            s.sso_allow_http = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if s.environment == Environment::Production {
            if rp_id.is_none() || origins.is_none() {
                return Err(ConfigError(
                    "production needs CRM_WEBAUTHN_RP_ID and CRM_WEBAUTHN_ORIGINS".into(),
                ));
            }
            if database_url.is_none() || s.database_url.starts_with("sqlite:") {
                return Err(ConfigError(
                    "production needs CRM_DATABASE_URL set to a PostgreSQL database".into(),
                ));
            }
            if key_dir.is_none() {
                return Err(ConfigError(
                    "production needs CRM_KEY_DIR with signing keys".into(),
                ));
            }
            if issuer.is_none() {
                return Err(ConfigError("production needs CRM_PUBLIC_URL".into()));
            }
        }
        Ok(s)
    }

    /// Development generates missing signing keys; production refuses to.
    pub fn may_generate_keys(&self) -> bool {
        self.environment == Environment::Development
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_serve_a_newcomer() -> Result<(), ConfigError> {
        let s = from(&[])?;
        assert_eq!(s.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(s.listen_addr, "127.0.0.1:8080");
        assert!(s.may_generate_keys());
        Ok(())
    }

    #[test]
    fn production_refuses_defaults() {
        assert!(from(&[("CRM_ENV", "production")]).is_err());
        assert!(
            from(&[
                ("CRM_ENV", "production"),
                ("CRM_DATABASE_URL", "sqlite://x.db")
            ])
            .is_err()
        );
        assert!(
            from(&[
                ("CRM_ENV", "production"),
                ("CRM_DATABASE_URL", "postgres://db/crm"),
                ("CRM_KEY_DIR", "/etc/crm/keys"),
                ("CRM_PUBLIC_URL", "https://crm.example.com"),
                ("CRM_WEBAUTHN_RP_ID", "example.com"),
                ("CRM_WEBAUTHN_ORIGINS", "https://app.example.com"),
            ])
            .is_ok()
        );
    }

    #[test]
    fn bounds_are_enforced() {
        assert!(from(&[("CRM_ACCESS_TOKEN_TTL_SECS", "3600")]).is_err());
        assert!(from(&[("CRM_ENV", "staging")]).is_err());
        assert!(from(&[("CRM_DATABASE_URL", "mysql://x")]).is_err());
    }
}
