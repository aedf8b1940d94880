//! The benchmark's floor for an authenticated lookup: actix-web, sqlx and jsonwebtoken with
//! nothing else. `GET /v1/contacts/{id}` verifies the same EdDSA access token as the API
//! (signature, issuer, audience, expiry), runs the same session check query and the same
//! contact query, and answers the row as JSON. No error mapping, no middleware, no audit:
//! what the API costs beyond this is the price of its framework.
//!
//! Environment: `BASELINE_DATABASE_URL` (postgres:// or sqlite:), `BASELINE_LISTEN`
//! (127.0.0.1:port), `BASELINE_JWK_X` (the base64url Ed25519 public key of the API's JWKS),
//! `BASELINE_ISSUER`, `BASELINE_AUDIENCE`, `BASELINE_WORKERS`.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sea_orm::sqlx::{self, PgPool, Row, SqlitePool};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The same allocator as the `crm` binary, so the comparison is about the framework.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

enum Pool {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

struct State {
    pool: Pool,
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    tid: String,
    sid: String,
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
const CONTACT_SQL: &str = "SELECT id, tenant_id, company_id, first_name, last_name, email, phone, job_title, created_at, updated_at, version, legal_hold, redacted_at FROM contacts WHERE tenant_id = $1 AND id = $2 LIMIT 1";

macro_rules! lookup {
    ($pool:expr, $tid:expr, $sid:expr, $uid:expr, $id:expr) => {{
        let session = sqlx::query(SESSION_SQL)
            .bind($tid)
            .bind($sid)
            .bind(Utc::now())
            .bind(true)
            .bind(true)
            .fetch_optional($pool)
            .await
            .ok()
            .flatten();
        match session {
            Some(s) if s.try_get::<Uuid, _>("user_id").ok() == Some($uid) => {
                sqlx::query(CONTACT_SQL)
                    .bind($tid)
                    .bind($id)
                    .fetch_optional($pool)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| {
                        Some(Contact {
                            id: r.try_get("id").ok()?,
                            company_id: r.try_get("company_id").ok()?,
                            first_name: r.try_get("first_name").ok()?,
                            last_name: r.try_get("last_name").ok()?,
                            email: r.try_get("email").ok()?,
                            phone: r.try_get("phone").ok()?,
                            job_title: r.try_get("job_title").ok()?,
                            created_at: r.try_get("created_at").ok()?,
                            updated_at: r.try_get("updated_at").ok()?,
                            version: r.try_get("version").ok()?,
                            legal_hold: r.try_get("legal_hold").ok()?,
                            redacted_at: r.try_get("redacted_at").ok()?,
                        })
                    })
                    .map_or_else(
                        || HttpResponse::NotFound().finish(),
                        |c| HttpResponse::Ok().json(c),
                    )
            }
            _ => HttpResponse::Unauthorized().finish(),
        }
    }};
}

async fn get_contact(
    req: HttpRequest,
    path: web::Path<Uuid>,
    state: web::Data<State>,
) -> HttpResponse {
    let Some(token) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return HttpResponse::Unauthorized().finish();
    };
    let Ok(data) = jsonwebtoken::decode::<Claims>(token, &state.key, &state.validation) else {
        return HttpResponse::Unauthorized().finish();
    };
    let (Ok(tid), Ok(sid), Ok(uid)) = (
        Uuid::parse_str(&data.claims.tid),
        Uuid::parse_str(&data.claims.sid),
        Uuid::parse_str(&data.claims.sub),
    ) else {
        return HttpResponse::Unauthorized().finish();
    };
    let id = path.into_inner();
    match &state.pool {
        Pool::Pg(p) => lookup!(p, tid, sid, uid, id),
        Pool::Sqlite(p) => lookup!(p, tid, sid, uid, id),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is required"))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let url = env("BASELINE_DATABASE_URL");
    let pool = if url.starts_with("sqlite:") {
        Pool::Sqlite(
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(4)
                .connect(&url)
                .await
                .map_err(std::io::Error::other)?,
        )
    } else {
        Pool::Pg(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(16)
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
    let workers: usize = env("BASELINE_WORKERS").parse().unwrap_or(2);
    let state = web::Data::new(State {
        pool,
        key,
        validation,
    });
    HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/v1/contacts/{id}", web::get().to(get_contact))
    })
    .workers(workers)
    .bind(env("BASELINE_LISTEN"))?
    .run()
    .await
}
