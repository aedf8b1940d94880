//! The benchmark's floor: actix-web, sqlx and jsonwebtoken with nothing else. Every route
//! verifies the same EdDSA access token as the API (signature, issuer, audience, expiry),
//! keeping tokens that verified as the API does, and runs the same session check query, then
//! the same SQL as the API's endpoint:
//!
//! - `GET /v1/contacts/{id}`: the contact query; the row as JSON, its personal values opened
//!   with the contact's data key (unwrapped with the key-encryption key), as the API does.
//! - `GET /v1/contacts?limit=50&updated_since=…`: the list query (one row more than the page,
//!   to know whether there is a next one); `{data, next_cursor}`.
//! - `POST /v1/contacts`: one transaction with the API's statements — suppression lookup
//!   (keyed digest, also the e-mail's blind index), insert (values sealed with a new data
//!   key), the tenant's chain lock, the audit entry (hash-chained), the event (next `seq`,
//!   its payload sealed) and the webhook endpoints lookup.
//!
//! No validation beyond parsing, no error mapping, no middleware: what the API costs beyond
//! this is the price of its framework and its checks.
//!
//! Environment: `BASELINE_DATABASE_URL` (postgres:// or sqlite:), `BASELINE_LISTEN`
//! (127.0.0.1:port), `BASELINE_KEY_DIR` (the API's key directory: its key-encryption keys
//! and suppression secret), `BASELINE_JWK_X` (the base64url Ed25519 public key of the API's JWKS),
//! `BASELINE_ISSUER`, `BASELINE_AUDIENCE`, `BASELINE_WORKERS`.
//!
//! On PostgreSQL each worker thread has its own pool, as in the API (its connections are
//! registered with the event loop of the thread that uses them); `BASELINE_SHARED_POOL=1`
//! makes one pool shared by all workers instead, opened on the main thread, as a minimal
//! sqlx server usually has it (the benchmark reports both).

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use chrono::{DateTime, SecondsFormat, Utc};
use crm_domain::ids::TenantId;
use crm_domain::vault::{DataKey, Vault};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sea_orm::sqlx::{self, PgPool, Row, SqlitePool};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use uuid::Uuid;

/// The same allocator as the `crm` binary, so the comparison is about the framework.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone)]
enum Pool {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

#[derive(Clone)]
struct State {
    pool: Pool,
    /// The API's keys of personal data (from its key directory).
    vault: std::sync::Arc<Vault>,
    key: DecodingKey,
    validation: Validation,
    /// Tokens whose signature verified, as the API keeps them (`crm_api::auth::VerifiedTokens`):
    /// tenant, session, user and expiry, by the token's text; shared by the workers.
    verified: std::sync::Arc<std::sync::Mutex<HashMap<Box<str>, Verified>>>,
}

type Verified = (Uuid, Uuid, Uuid, i64);
const VERIFIED_TOKENS: usize = 4096;

#[derive(Deserialize)]
struct Claims {
    sub: String,
    tid: String,
    sid: String,
    exp: i64,
}

#[derive(Serialize)]
struct Contact {
    id: Uuid,
    company_id: Option<Uuid>,
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    job_title: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i32,
    legal_hold: bool,
    redacted_at: Option<DateTime<Utc>>,
}

const SESSION_SQL: &str = "SELECT sessions.user_id, sessions.auth_time, sessions.amr, sessions.expires_at, sessions.webauthn_at, users.role, tenants.kind, tenants.mfa_required FROM sessions INNER JOIN users ON users.tenant_id = sessions.tenant_id AND users.id = sessions.user_id INNER JOIN tenants ON tenants.id = sessions.tenant_id WHERE sessions.tenant_id = $1 AND sessions.id = $2 AND sessions.revoked_at IS NULL AND sessions.expires_at > $3 AND users.active = $4 AND tenants.active = $5";
const CONTACT_SQL: &str = "SELECT id, tenant_id, company_id, first_name, last_name, email, phone, job_title, created_at, updated_at, version, legal_hold, redacted_at, data_key, email_index FROM contacts WHERE tenant_id = $1 AND id = $2 LIMIT 1";

const LIST_SQL: &str = "SELECT id, tenant_id, company_id, first_name, last_name, email, phone, job_title, created_at, updated_at, version, legal_hold, redacted_at, data_key, email_index FROM contacts WHERE tenant_id = $1 AND updated_at >= $2 ORDER BY id ASC LIMIT $3";
const SUPPRESSED_SQL: &str =
    "SELECT tenant_id FROM suppressions WHERE tenant_id = $1 AND email_hmac = $2 LIMIT 1";
const INSERT_SQL: &str = "INSERT INTO contacts (id, tenant_id, company_id, first_name, last_name, email, phone, job_title, created_at, updated_at, version, legal_hold, redacted_at, data_key, email_index) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";
const LOCK_SQL: &str = "SELECT pg_advisory_xact_lock($1)";
const LAST_AUDIT_SQL: &str =
    "SELECT seq, hash FROM audit_events WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1";
const AUDIT_SQL: &str = "INSERT INTO audit_events (id, tenant_id, seq, occurred_at, actor_id, actor_kind, action, object_type, object_id, request_id, details, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, 'user', 'contact.created', 'contact', $6, NULL, NULL, $7, $8)";
const LAST_EVENT_SQL: &str =
    "SELECT seq FROM events WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1";
const EVENT_SQL: &str = "INSERT INTO events (id, tenant_id, seq, event_type, object_type, object_id, subject_contact_id, payload, created_at) VALUES ($1, $2, $3, 'contact.created', 'contact', $4, $4, $5, $6)";
const ENDPOINTS_SQL: &str =
    "SELECT id, event_types FROM webhook_endpoints WHERE tenant_id = $1 AND active = $2";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The caller's tenant and user once the token and the session check pass.
macro_rules! authenticate {
    ($req:expr, $state:expr, $pool:expr) => {{
        match claims(&$req, &$state) {
            None => None,
            Some((tid, sid, uid)) => {
                let session = sqlx::query(SESSION_SQL)
                    .bind(tid)
                    .bind(sid)
                    .bind(Utc::now())
                    .bind(true)
                    .bind(true)
                    .fetch_optional($pool)
                    .await
                    .ok()
                    .flatten();
                match session {
                    Some(s) if s.try_get::<Uuid, _>("user_id").ok() == Some(uid) => {
                        Some((tid, uid))
                    }
                    _ => None,
                }
            }
        }
    }};
}

macro_rules! contact_of {
    ($r:expr, $vault:expr, $tid:expr) => {{
        let r = $r;
        (|| {
            let id: Uuid = r.try_get("id").ok()?;
            let wrapped: Vec<u8> = r.try_get("data_key").ok()?;
            let key = $vault
                .data_key(TenantId::from_uuid($tid), id, &wrapped)
                .ok()?;
            let open = |field: &str| -> Option<Option<String>> {
                let stored: Option<String> = r.try_get(field).ok()?;
                key.open_opt(field, stored).ok()
            };
            Some(Contact {
                id,
                company_id: r.try_get("company_id").ok()?,
                first_name: open("first_name")?,
                last_name: open("last_name")?,
                email: open("email")?,
                phone: open("phone")?,
                job_title: open("job_title")?,
                created_at: r.try_get("created_at").ok()?,
                updated_at: r.try_get("updated_at").ok()?,
                version: r.try_get("version").ok()?,
                legal_hold: r.try_get("legal_hold").ok()?,
                redacted_at: r.try_get("redacted_at").ok()?,
            })
        })()
    }};
}

macro_rules! lookup {
    ($req:expr, $state:expr, $pool:expr, $id:expr) => {{
        let Some((tid, _)) = authenticate!($req, $state, $pool) else {
            return HttpResponse::Unauthorized().finish();
        };
        sqlx::query(CONTACT_SQL)
            .bind(tid)
            .bind($id)
            .fetch_optional($pool)
            .await
            .ok()
            .flatten()
            .and_then(|r| contact_of!(r, $state.vault, tid))
            .map_or_else(
                || HttpResponse::NotFound().finish(),
                |c| HttpResponse::Ok().json(c),
            )
    }};
}

macro_rules! list {
    ($req:expr, $state:expr, $pool:expr, $q:expr) => {{
        let Some((tid, _)) = authenticate!($req, $state, $pool) else {
            return HttpResponse::Unauthorized().finish();
        };
        let rows = sqlx::query(LIST_SQL)
            .bind(tid)
            .bind($q.updated_since)
            .bind($q.limit + 1)
            .fetch_all($pool)
            .await;
        let Ok(rows) = rows else {
            return HttpResponse::InternalServerError().finish();
        };
        let mut data: Vec<Contact> = rows
            .iter()
            .filter_map(|r| contact_of!(r, $state.vault, tid))
            .collect();
        let next_cursor = if data.len() as i64 > $q.limit {
            data.truncate($q.limit as usize);
            data.last().map(|c| c.id.simple().to_string())
        } else {
            None
        };
        HttpResponse::Ok().json(ContactList { data, next_cursor })
    }};
}

macro_rules! create {
    ($req:expr, $state:expr, $pool:expr, $tx:expr, $body:expr, $pg:expr) => {{
        let Some((tid, uid)) = authenticate!($req, $state, $pool) else {
            return HttpResponse::Unauthorized().finish();
        };
        let b = $body;
        let email = b.email.map(|e| e.trim().to_lowercase());
        let now = Utc::now();
        let c = Contact {
            id: Uuid::now_v7(),
            company_id: b.company_id,
            first_name: b.first_name,
            last_name: b.last_name,
            email,
            phone: b.phone,
            job_title: b.job_title,
            created_at: now,
            updated_at: now,
            version: 1,
            legal_hold: false,
            redacted_at: None,
        };
        let key = $state.vault.new_data_key(TenantId::from_uuid(tid), c.id);
        let seal = |field: &str, v: &Option<String>| key.seal_opt(field, v.as_deref());
        // The suppression digest, which is also the e-mail's blind index.
        let index = c
            .email
            .as_deref()
            .map(|e| digest_email(&$state.vault, tid, e));
        let result: Result<(), sqlx::Error> = async {
            let mut tx = $tx.await?;
            if let Some(index) = &index {
                sqlx::query(SUPPRESSED_SQL)
                    .bind(tid)
                    .bind(index)
                    .fetch_optional(&mut *tx)
                    .await?;
            }
            sqlx::query(INSERT_SQL)
                .bind(c.id)
                .bind(tid)
                .bind(c.company_id)
                .bind(seal("first_name", &c.first_name))
                .bind(seal("last_name", &c.last_name))
                .bind(seal("email", &c.email))
                .bind(seal("phone", &c.phone))
                .bind(seal("job_title", &c.job_title))
                .bind(c.created_at)
                .bind(c.updated_at)
                .bind(c.version)
                .bind(c.legal_hold)
                .bind(c.redacted_at)
                .bind(key.wrapped())
                .bind(&index)
                .execute(&mut *tx)
                .await?;
            if $pg {
                sqlx::query(LOCK_SQL)
                    .bind(lock_key(tid))
                    .execute(&mut *tx)
                    .await?;
            }
            let last = sqlx::query(LAST_AUDIT_SQL)
                .bind(tid)
                .fetch_optional(&mut *tx)
                .await?;
            let (seq, prev): (i64, String) = match last {
                Some(r) => (r.try_get::<i64, _>("seq")? + 1, r.try_get("hash")?),
                None => (1, GENESIS.to_owned()),
            };
            let audit_id = Uuid::now_v7();
            let hash = chain_hash(&prev, audit_id, tid, seq, now, uid, c.id);
            sqlx::query(AUDIT_SQL)
                .bind(audit_id)
                .bind(tid)
                .bind(seq)
                .bind(now)
                .bind(uid)
                .bind(c.id)
                .bind(&prev)
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
            let last = sqlx::query(LAST_EVENT_SQL)
                .bind(tid)
                .fetch_optional(&mut *tx)
                .await?;
            let seq = match last {
                Some(r) => r.try_get::<i64, _>("seq")? + 1,
                None => 1,
            };
            let payload = sealed_payload(&key, &c);
            sqlx::query(EVENT_SQL)
                .bind(Uuid::now_v7())
                .bind(tid)
                .bind(seq)
                .bind(c.id)
                .bind(payload)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(ENDPOINTS_SQL)
                .bind(tid)
                .bind(true)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => HttpResponse::Created()
                .insert_header(("location", format!("/v1/contacts/{}", c.id)))
                .json(c),
            Err(e)
                if e.as_database_error()
                    .is_some_and(|d| d.is_unique_violation()) =>
            {
                HttpResponse::Conflict().finish()
            }
            Err(_) => HttpResponse::InternalServerError().finish(),
        }
    }};
}

/// The token's tenant, session and user, when the token verifies (or verified before and has
/// not expired).
fn claims(req: &HttpRequest, state: &State) -> Option<(Uuid, Uuid, Uuid)> {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?;
    let now = Utc::now().timestamp();
    if let Some(&(tid, sid, uid, exp)) = state.verified.lock().ok()?.get(token) {
        return (exp > now).then_some((tid, sid, uid));
    }
    let data = jsonwebtoken::decode::<Claims>(token, &state.key, &state.validation).ok()?;
    let found = (
        Uuid::parse_str(&data.claims.tid).ok()?,
        Uuid::parse_str(&data.claims.sid).ok()?,
        Uuid::parse_str(&data.claims.sub).ok()?,
    );
    let mut verified = state.verified.lock().ok()?;
    if verified.len() >= VERIFIED_TOKENS {
        verified.retain(|_, v| v.3 > now);
        if verified.len() >= VERIFIED_TOKENS {
            verified.clear();
        }
    }
    verified.insert(token.into(), (found.0, found.1, found.2, data.claims.exp));
    Some(found)
}

/// The API's keyed digest of an address (its suppression digest and blind index).
fn digest_email(vault: &Vault, tenant: Uuid, email: &str) -> String {
    match crm_domain::values::EmailAddress::parse(email) {
        Ok(e) => vault.email_index(TenantId::from_uuid(tenant), &e),
        Err(_) => String::new(),
    }
}

/// The event payload as the API stores it: sealed with the contact's key, as a JSON string.
fn sealed_payload(key: &DataKey, c: &Contact) -> String {
    let plain = serde_json::to_string(c).unwrap_or_default();
    serde_json::Value::String(key.seal("event.payload", &plain)).to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lock_key(tenant: Uuid) -> i64 {
    let bytes = tenant.into_bytes();
    let mut key = [0u8; 8];
    key.copy_from_slice(&bytes[8..16]);
    i64::from_be_bytes(key)
}

/// The API's audit chain digest: the previous hash and the entry's fields, length-prefixed.
fn chain_hash(
    prev: &str,
    id: Uuid,
    tenant: Uuid,
    seq: i64,
    at: DateTime<Utc>,
    actor: Uuid,
    object: Uuid,
) -> String {
    let fields = [
        prev.to_owned(),
        id.to_string(),
        tenant.to_string(),
        seq.to_string(),
        at.to_rfc3339_opts(SecondsFormat::Micros, true),
        actor.to_string(),
        "user".into(),
        "contact.created".into(),
        "contact".into(),
        object.to_string(),
        String::new(),
        String::new(),
    ];
    let mut h = Sha256::new();
    for f in fields {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    hex(&h.finalize())
}

async fn get_contact(
    req: HttpRequest,
    path: web::Path<Uuid>,
    state: web::Data<State>,
) -> HttpResponse {
    let id = path.into_inner();
    match &state.pool {
        Pool::Pg(p) => lookup!(req, state, p, id),
        Pool::Sqlite(p) => lookup!(req, state, p, id),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: i64,
    updated_since: DateTime<Utc>,
}

#[derive(Serialize)]
struct ContactList {
    data: Vec<Contact>,
    next_cursor: Option<String>,
}

async fn list_contacts(
    req: HttpRequest,
    q: web::Query<ListQuery>,
    state: web::Data<State>,
) -> HttpResponse {
    let q = q.into_inner();
    match &state.pool {
        Pool::Pg(p) => list!(req, state, p, q),
        Pool::Sqlite(p) => list!(req, state, p, q),
    }
}

#[derive(Deserialize)]
struct NewContact {
    company_id: Option<Uuid>,
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    job_title: Option<String>,
}

async fn create_contact(
    req: HttpRequest,
    body: web::Json<NewContact>,
    state: web::Data<State>,
) -> HttpResponse {
    let body = body.into_inner();
    match &state.pool {
        Pool::Pg(p) => create!(req, state, p, p.begin(), body, true),
        Pool::Sqlite(p) => create!(req, state, p, p.begin_with("BEGIN IMMEDIATE"), body, false),
    }
}

/// As the API's pool: a connection is pinged before use only after it sat idle.
async fn ping_if_idle<C: sqlx::Connection>(
    conn: &mut C,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> Result<bool, sqlx::Error> {
    if meta.idle_for >= crm_domain::db::PING_AFTER_IDLE {
        conn.ping().await?;
    }
    Ok(true)
}

/// The API's pool settings, as for SQLite.
fn pg_pool_options(max: u32) -> sqlx::postgres::PgPoolOptions {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| Box::pin(ping_if_idle(conn, meta)))
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is required"))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let url = env("BASELINE_DATABASE_URL");
    let workers: usize = env("BASELINE_WORKERS").parse().unwrap_or(2);
    let pool = if url.starts_with("sqlite:") {
        Pool::Sqlite(
            // The API's connection settings (crm_domain::db::connect).
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(4)
                .test_before_acquire(false)
                .before_acquire(|conn, meta| Box::pin(ping_if_idle(conn, meta)))
                .connect_with(
                    url.parse::<sqlx::sqlite::SqliteConnectOptions>()
                        .map_err(std::io::Error::other)?
                        .foreign_keys(true)
                        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                        .busy_timeout(std::time::Duration::from_secs(10))
                        .pragma("secure_delete", "ON"),
                )
                .await
                .map_err(std::io::Error::other)?,
        )
    } else {
        Pool::Pg(
            pg_pool_options(crm_domain::db::PG_WORKER_CONNECTIONS * workers as u32)
                .connect(&url)
                .await
                .map_err(std::io::Error::other)?,
        )
    };
    let key =
        DecodingKey::from_ed_components(&env("BASELINE_JWK_X")).map_err(std::io::Error::other)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[env("BASELINE_ISSUER")]);
    validation.set_audience(&[env("BASELINE_AUDIENCE")]);
    let shared_pool = std::env::var("BASELINE_SHARED_POOL").is_ok_and(|v| v == "1");
    let state = State {
        pool,
        // The API's own loader: the keys are read once, at start.
        vault: std::sync::Arc::new(
            crm_api::keys::load_vault(std::path::Path::new(&env("BASELINE_KEY_DIR")), false)
                .map_err(std::io::Error::other)?,
        ),
        key,
        validation,
        verified: Default::default(),
    };
    let own_pools = match &state.pool {
        Pool::Pg(_) if !shared_pool => Some(
            url.parse::<sqlx::postgres::PgConnectOptions>()
                .map_err(std::io::Error::other)?,
        ),
        _ => None,
    };
    HttpServer::new(move || {
        // Each worker's own PostgreSQL pool, as the API's (crm_domain::db::worker_pool).
        let mut worker = state.clone();
        if let Some(options) = &own_pools {
            let size = crm_domain::db::PG_WORKER_CONNECTIONS;
            worker.pool = Pool::Pg(pg_pool_options(size).connect_lazy_with(options.clone()));
        }
        App::new()
            .app_data(web::Data::new(worker))
            .route("/v1/contacts/{id}", web::get().to(get_contact))
            .route("/v1/contacts", web::get().to(list_contacts))
            .route("/v1/contacts", web::post().to(create_contact))
    })
    .workers(workers)
    .bind(env("BASELINE_LISTEN"))?
    .run()
    .await
}
