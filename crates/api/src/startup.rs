//! Building and running the application: database, migrations, keys, first-run bootstrap,
//! router, middleware (request id, access log, security headers, problem+json for every error).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::BoxBody;
use actix_web::dev::{Server, Service, ServiceResponse};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{App, HttpMessage, HttpRequest, HttpServer, web};
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use crm_domain::clock::Clock;
use crm_domain::passwords::Password;
use crm_domain::sessions::{SessionPolicy, ThrottlePolicy};
use crm_domain::tenants;
use crm_domain::values::EmailAddress;
use crm_migration::{Migrator, MigratorTrait};
use rand::RngCore;
use utoipa_actix_web::{AppExt, scope, service_config::ServiceConfig};

use crate::config::{Environment, Settings};
use crate::keys::KeyStore;
use crate::problem::{ApiError, PROBLEM_JSON, problem_response};
use crate::routes::{
    auth, breaches, clients, companies, consents, contacts, dsr, gdpr, meta, orders, sso,
    sub_processors, tenants as tenant_routes, users, webauthn, webhooks,
};
use crate::state::AppState;

/// Every documented route. The router and the OpenAPI document are both built from this.
fn routes(cfg: &mut ServiceConfig) {
    cfg.service(meta::health).service(meta::jwks).service(
        scope::scope("/v1")
            // The busiest routes first: actix tries routes in this order, matching each
            // parameterised path with a regular expression (contacts first: a GET by id
            // tried the three `/companies/{id}` routes before its own).
            .service(contacts::batch_upsert)
            .service(contacts::create_import)
            .service(contacts::get_import)
            .service(contacts::create_contact)
            .service(contacts::list_contacts)
            .service(contacts::get_contact)
            .service(contacts::update_contact)
            .service(contacts::delete_contact)
            .service(companies::create_company)
            .service(companies::list_companies)
            .service(companies::get_company)
            .service(companies::update_company)
            .service(companies::delete_company)
            .service(orders::create_order)
            .service(orders::list_orders)
            .service(orders::get_order)
            .service(orders::update_order)
            .service(orders::delete_order)
            .service(auth::login)
            .service(auth::refresh)
            .service(auth::logout)
            .service(auth::me)
            .service(auth::change_password)
            .service(webauthn::register_start)
            .service(webauthn::register_finish)
            .service(webauthn::list_credentials)
            .service(webauthn::rename_credential)
            .service(webauthn::remove_credential)
            .service(webauthn::enrol_start)
            .service(webauthn::enrol_finish)
            .service(webauthn::mfa_start)
            .service(webauthn::mfa_finish)
            .service(webauthn::passkey_start)
            .service(webauthn::passkey_finish)
            .service(webauthn::step_up_start)
            .service(webauthn::step_up_finish)
            .service(webauthn::reset_user_mfa)
            .service(webauthn::get_security)
            .service(webauthn::put_security)
            .service(sso::get_connection)
            .service(sso::put_connection)
            .service(sso::delete_connection)
            .service(sso::start)
            .service(sso::callback)
            .service(webhooks::create_webhook)
            .service(webhooks::list_webhooks)
            .service(webhooks::delete_webhook)
            .service(webhooks::list_deliveries)
            .service(webhooks::redeliver)
            .service(webhooks::changes)
            .service(breaches::create_breach)
            .service(breaches::list_breaches)
            .service(breaches::get_breach)
            .service(breaches::add_update)
            .service(breaches::notify)
            .service(breaches::notifications)
            .service(clients::token)
            .service(clients::create_client)
            .service(clients::list_clients)
            .service(clients::get_client)
            .service(clients::rotate_secret)
            .service(clients::revoke_client)
            .service(tenant_routes::create_tenant)
            .service(tenant_routes::list_tenants)
            .service(tenant_routes::get_tenant)
            .service(tenant_routes::update_tenant)
            .service(users::create_user)
            .service(users::list_users)
            .service(users::get_user)
            .service(users::update_user)
            .service(users::delete_user)
            .service(gdpr::export_contact)
            .service(gdpr::redact_contact)
            .service(gdpr::erase_contact)
            .service(gdpr::set_legal_hold)
            .service(gdpr::release_legal_hold)
            .service(gdpr::check_suppression)
            .service(gdpr::get_settings)
            .service(gdpr::put_settings)
            .service(gdpr::list_audit_events)
            .service(consents::create_purpose)
            .service(consents::list_purposes)
            .service(consents::record_consent)
            .service(consents::get_consents)
            .service(consents::withdraw_consent)
            .service(dsr::create_request)
            .service(dsr::list_requests)
            .service(dsr::get_request)
            .service(dsr::update_request)
            .service(dsr::get_policies)
            .service(dsr::put_policies)
            .service(dsr::run_retention)
            .service(sub_processors::create_sub_processor)
            .service(sub_processors::list_sub_processors)
            .service(sub_processors::list_sub_processor_changes)
            .service(sub_processors::update_sub_processor),
    );
}

/// The OpenAPI document of the service (a pure function of the code).
pub fn openapi_spec() -> utoipa::openapi::OpenApi {
    let (_, spec) = App::new()
        .into_utoipa_app()
        .configure(routes)
        .split_for_parts();
    crate::openapi::finish(spec)
}

/// The served spec, serialised once.
pub struct SpecJson(pub String);

/// Path templates and their methods, to tell 405 from 404.
pub struct RouteTable(Vec<(Vec<String>, Vec<&'static str>)>);

impl RouteTable {
    fn from_spec(spec: &utoipa::openapi::OpenApi) -> Self {
        let mut table = Vec::new();
        for (path, item) in &spec.paths.paths {
            let mut methods = Vec::new();
            for (m, present) in [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
            ] {
                if present {
                    methods.push(m);
                }
            }
            let segments = path.split('/').map(str::to_owned).collect();
            table.push((segments, methods));
        }
        table.push((vec![String::new(), "openapi.json".into()], vec!["GET"]));
        table.push((vec![String::new(), "docs".into()], vec!["GET"]));
        RouteTable(table)
    }

    /// The methods of the most specific template matching `path` (literal segments win over
    /// parameters: `/v1/contacts/batch` is not `/v1/contacts/{id}`).
    fn methods(&self, path: &str) -> Option<&[&'static str]> {
        let parts: Vec<&str> = path.split('/').collect();
        self.0
            .iter()
            .filter(|(segments, _)| {
                segments.len() == parts.len()
                    && segments
                        .iter()
                        .zip(&parts)
                        .all(|(s, p)| (s.starts_with('{') && !p.is_empty()) || s == p)
            })
            .max_by_key(|(segments, _)| segments.iter().filter(|s| !s.starts_with('{')).count())
            .map(|(_, methods)| methods.as_slice())
    }

    fn allowed(&self, path: &str) -> Option<String> {
        self.methods(path).map(|m| m.join(", "))
    }

    /// Literal routes that a parameterised sibling would also match (`/v1/contacts/batch` and
    /// `/v1/contacts/{id}`), with their methods.
    fn shadowed(&self) -> std::collections::HashMap<String, Vec<&'static str>> {
        let mut out = std::collections::HashMap::new();
        for (segments, methods) in &self.0 {
            if segments.iter().any(|s| s.starts_with('{')) {
                continue;
            }
            let path = segments.join("/");
            let shadowed = self.0.iter().any(|(other, _)| {
                other.len() == segments.len()
                    && other.iter().any(|s| s.starts_with('{'))
                    && other
                        .iter()
                        .zip(segments)
                        .all(|(o, s)| o.starts_with('{') || o == s)
            });
            if shadowed {
                out.insert(path, methods.clone());
            }
        }
        out
    }
}

/// 405 before routing for literal routes a parameterised sibling would otherwise take
/// (`PATCH /v1/sub-processors/changes` is not `PATCH /v1/sub-processors/{id}`): one lookup.
pub struct Shadowed(std::collections::HashMap<String, Vec<&'static str>>);

impl Shadowed {
    pub(crate) fn refuses(&self, path: &str, method: &Method) -> Option<String> {
        if method == Method::OPTIONS || method == Method::HEAD {
            return None;
        }
        let methods = self.0.get(path)?;
        (!methods.contains(&method.as_str())).then(|| methods.join(", "))
    }
}

async fn fallback(
    req: HttpRequest,
    table: web::Data<RouteTable>,
) -> Result<actix_web::HttpResponse, ApiError> {
    Err(match table.allowed(req.path()) {
        Some(allow) if req.method() != Method::OPTIONS || !allow.is_empty() => {
            ApiError::MethodNotAllowed { allow }
        }
        _ => ApiError::status(
            StatusCode::NOT_FOUND,
            "not_found",
            "no resource at this path",
        ),
    })
}

fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError::status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than this service accepts",
            )
        }
        JsonPayloadError::ContentType => ApiError::status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json (or application/merge-patch+json for PATCH)",
        ),
        JsonPayloadError::Deserialize(e) => {
            ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
        }
        _ => ApiError::bad_request("unreadable_body", "the request body could not be read"),
    };
    api.into()
}

fn query_error(_err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request("malformed_query", "the query string could not be parsed").into()
}

fn path_error(_err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::status(
        StatusCode::NOT_FOUND,
        "not_found",
        "no resource at this path",
    )
    .into()
}

fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .content_type(|mime| {
            mime.type_() == actix_web::mime::APPLICATION
                && (mime.subtype() == actix_web::mime::JSON
                    || mime.suffix() == Some(actix_web::mime::JSON))
        })
        .error_handler(json_error)
}

fn valid_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
    .then(|| s.to_owned())
}

fn status_code_name(status: StatusCode) -> String {
    match status {
        StatusCode::NOT_FOUND => "not_found".into(),
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed".into(),
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large".into(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type".into(),
        StatusCode::BAD_REQUEST => "bad_request".into(),
        s if s.is_server_error() => "internal_error".into(),
        s => s
            .canonical_reason()
            .unwrap_or("error")
            .to_lowercase()
            .replace([' ', '-'], "_"),
    }
}

/// Turns any error response that is not JSON yet (the framework's own) into a problem document.
/// JSON error bodies are ours: problem documents, and RFC 6749 errors of the token endpoint.
fn ensure_problem(res: ServiceResponse) -> ServiceResponse<BoxBody> {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON) || v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res.map_into_boxed_body();
    }
    if let Some(err) = res.response().error() {
        log::warn!("framework error {status}: {err}");
    }
    let (req, old) = res.into_parts();
    let mut new = problem_response(status, &status_code_name(status), None, Vec::new());
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = old.headers().get(&name) {
            new.headers_mut().insert(name, v.clone());
        }
    }
    ServiceResponse::new(req, new)
}

fn security_headers(res: &mut ServiceResponse<BoxBody>, request_id: &str) {
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static("x-request-id"), v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// The platform admin made on a first start; its password is shown once and never stored.
pub struct FirstRunCredentials {
    pub email: String,
    pub password: String,
    /// A demo tenant (`demo`) and its admin, so a newcomer can try the API with a password
    /// alone (platform admins always need WebAuthn as well).
    pub demo_tenant: String,
    pub demo_email: String,
    pub demo_password: String,
}

impl std::fmt::Debug for FirstRunCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstRunCredentials")
            .field("password", &"***")
            .finish()
    }
}

const DEMO_TENANT: &str = "demo";
const DEMO_EMAIL: &str = "admin@demo.example";

/// A random password that meets the policy.
pub fn random_password() -> String {
    let mut bytes = [0u8; 18];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// On a first start in development (no platform admin yet), creates one with a random
/// password that the caller prints once. Production uses `crm bootstrap` instead.
async fn first_run(
    db: &crm_domain::db::Db,
    settings: &Settings,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Option<FirstRunCredentials>> {
    if settings.environment != Environment::Development
        || tenants::platform_admin_exists(db).await?
    {
        return Ok(None);
    }
    let email = EmailAddress::parse(&settings.bootstrap_email)
        .map_err(|e| anyhow::anyhow!("CRM_BOOTSTRAP_EMAIL {}", e.detail))?;
    let password = random_password();
    let checked = Password::parse(&password, &[])
        .map_err(|e| anyhow::anyhow!("generated password: {}", e.detail))?;
    match tenants::bootstrap_platform(db, &email, &checked, now).await {
        Ok(_) => {
            let demo_password = random_password();
            let demo = tenants::NewTenant {
                slug: crm_domain::values::TenantSlug::parse(DEMO_TENANT)
                    .map_err(|e| anyhow::anyhow!("demo slug: {}", e.detail))?,
                name: "Demo tenant".into(),
                admin_email: EmailAddress::parse(DEMO_EMAIL)
                    .map_err(|e| anyhow::anyhow!("demo e-mail: {}", e.detail))?,
                admin_display_name: None,
                admin_password: Password::parse(&demo_password, &[])
                    .map_err(|e| anyhow::anyhow!("generated password: {}", e.detail))?,
                mfa_required: false,
            };
            tenants::create_tenant(db, demo, &crm_domain::audit::Actor::system(), now).await?;
            Ok(Some(FirstRunCredentials {
                email: email.to_string(),
                password,
                demo_tenant: DEMO_TENANT.into(),
                demo_email: DEMO_EMAIL.into(),
                demo_password,
            }))
        }
        // Another node bootstrapped at the same moment.
        Err(crm_domain::DomainError::Conflict { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Creates the directory of a SQLite database file.
fn ensure_sqlite_dir(url: &str) -> anyhow::Result<()> {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Ok(());
    };
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.starts_with(':') {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(())
}

/// Opens the database and applies pending migrations.
pub async fn open_database(settings: &Settings) -> anyhow::Result<crm_domain::db::Db> {
    ensure_sqlite_dir(&settings.database_url)?;
    let db = crm_domain::db::connect(&settings.database_url)
        .await
        .context("connecting to the database")?;
    Migrator::up(&db, None)
        .await
        .context("applying migrations")?;
    Ok(db)
}

/// Keeps the write-ahead log of a SQLite database near [`crm_domain::db::WAL_LIMIT`] under
/// sustained load (see [`crm_domain::db::bound_wal`]).
fn spawn_wal_bound(db: crm_domain::db::Db) -> tokio::task::JoinHandle<()> {
    use crm_domain::db::{WAL_CHECK_EVERY, WAL_LIMIT, WalBound, bound_wal};
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(WAL_CHECK_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match bound_wal(&db, WAL_LIMIT).await {
                Ok(WalBound::Within | WalBound::Emptied) => {}
                Ok(WalBound::InUse) => {
                    log::debug!("the write-ahead log is still in use; emptied at a later check")
                }
                Err(e) => log::warn!("bounding the write-ahead log failed: {e}"),
            }
        }
    })
}

/// Applies every tenant's retention policies periodically, and prunes expired sign-in data.
/// Every node ticks; the one that claims the run (`job_runs`) does the work, so with several
/// nodes it runs once per interval.
fn spawn_retention_job(state: web::Data<AppState>) -> tokio::task::JoinHandle<()> {
    let every = std::time::Duration::from_secs(state.settings.retention_interval_secs);
    let period = chrono::Duration::seconds(state.settings.retention_interval_secs as i64);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            ticker.tick().await;
            // A little less than the period, so the claiming node's own next tick is due.
            let hold = period - chrono::Duration::seconds(1).min(period / 10);
            match crm_domain::jobs::claim_run(&state.db, "retention", hold, state.clock.now()).await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    log::error!("claiming the retention run failed: {e}");
                    continue;
                }
            }
            match crm_domain::retention::run_all(&state.db, &state.vault, state.clock.now()).await {
                Ok(reports) => {
                    for r in reports {
                        log::info!(
                            "retention tenant={} erased={} redacted={} held={}",
                            r.tenant_id,
                            r.erased.len(),
                            r.redacted.len(),
                            r.held.len()
                        );
                    }
                }
                Err(e) => log::error!("retention job failed: {e}"),
            }
            let policy = &state.session_policy.throttle;
            if let Err(e) =
                crm_domain::sessions::prune_expired(&state.db, policy, state.clock.now()).await
            {
                log::error!("pruning expired sign-in data failed: {e}");
            }
            if let Err(e) = crm_domain::mfa::prune_challenges(&state.db, state.clock.now()).await {
                log::error!("pruning expired ceremonies failed: {e}");
            }
            if let Err(e) = crm_domain::idempotency::prune(&state.db, state.clock.now()).await {
                log::error!("pruning expired idempotency keys failed: {e}");
            }
        }
    })
}

/// Browsers may call the API from the configured front-end origins only. Tokens travel in
/// the `Authorization` header, never in cookies, so credentials mode stays off.
///
/// A request without `Origin` that is not a preflight (`OPTIONS`) is not a CORS request: it
/// skips the CORS checks and gets only the `Vary` header (so a cache never answers a browser's
/// CORS request with it). Scripted clients and integrations, most of the traffic, pay nothing
/// more, and their responses carry no `Access-Control-*` headers.
fn cors(origins: &[String]) -> CorsIfOrigin {
    CorsIfOrigin(cors_rules(origins))
}

fn cors_rules(origins: &[String]) -> actix_cors::Cors {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "PUT", "PATCH", "DELETE"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::ETAG,
            header::LOCATION,
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(600);
    for origin in origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}

/// What actix-cors answers in `Vary` on every response.
const CORS_VARY: &str = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// [`actix_cors::Cors`] for CORS requests only (see [`cors`]).
struct CorsIfOrigin(actix_cors::Cors);

impl<S, B> actix_web::dev::Transform<S, actix_web::dev::ServiceRequest> for CorsIfOrigin
where
    S: Service<
            actix_web::dev::ServiceRequest,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
        > + 'static,
    B: actix_web::body::MessageBody + 'static,
{
    type Response = ServiceResponse<actix_web::body::EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = CorsIfOriginService<S>;
    type InitError = ();
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        let inner = std::rc::Rc::new(service);
        // actix-service serves through an `Rc` of a service: both paths share it.
        let cors = self.0.new_transform(inner.clone());
        Box::pin(async move {
            Ok(CorsIfOriginService {
                inner,
                cors: cors.await?,
            })
        })
    }
}

struct CorsIfOriginService<S: 'static> {
    inner: std::rc::Rc<S>,
    cors: actix_cors::CorsMiddleware<std::rc::Rc<S>>,
}

impl<S, B> Service<actix_web::dev::ServiceRequest> for CorsIfOriginService<S>
where
    S: Service<
            actix_web::dev::ServiceRequest,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
        > + 'static,
    B: actix_web::body::MessageBody + 'static,
{
    type Response = ServiceResponse<actix_web::body::EitherBody<B>>;
    type Error = actix_web::Error;
    type Future =
        futures_util::future::LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_web::dev::forward_ready!(inner);

    fn call(&self, req: actix_web::dev::ServiceRequest) -> Self::Future {
        if req.method() == Method::OPTIONS || req.headers().contains_key(header::ORIGIN) {
            return self.cors.call(req);
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            // Appended: a handler's own `Vary` stays.
            res.headers_mut()
                .append(header::VARY, HeaderValue::from_static(CORS_VARY));
            Ok(res.map_into_left_body())
        })
    }
}

pub struct Application {
    port: u16,
    server: Server,
    first_run: Option<FirstRunCredentials>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    pub async fn build(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Application> {
        Self::build_with_policy(settings, clock, ThrottlePolicy::default()).await
    }

    pub async fn build_with_policy(
        settings: Settings,
        clock: Arc<dyn Clock>,
        throttle: ThrottlePolicy,
    ) -> anyhow::Result<Application> {
        let db = open_database(&settings).await?;
        let keys = KeyStore::load(&settings.key_dir, settings.may_generate_keys())?;
        let vault = Arc::new(crate::keys::load_vault(
            &settings.key_dir,
            settings.may_generate_keys(),
        )?);
        // Rows written before personal values were sealed are sealed before serving.
        let sealed = crm_domain::sealing::seal_older_rows(&db, &vault).await?;
        if sealed.total() > 0 {
            log::info!("sealed personal data written in the clear: {sealed:?}");
        }
        let secret_box = Arc::new(crate::keys::SecretBox::load(
            &settings.key_dir,
            settings.may_generate_keys(),
        )?);
        let webauthn = crate::routes::webauthn::relying_party(&settings)?;
        let oidc_http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(crate::outbound::PublicOnly {
                allow_loopback: settings.webhook_allow_loopback,
            }))
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        let first_run = first_run(&db, &settings, clock.now()).await?;
        let listener = TcpListener::bind(&settings.listen_addr)
            .with_context(|| format!("binding {}", settings.listen_addr))?;
        let port = listener.local_addr()?.port();
        let workers = settings.workers;
        let max_body = settings.max_body_bytes;
        let session_policy = SessionPolicy {
            session_ttl: settings.session_ttl,
            throttle,
        };
        let token_validation = crate::auth::token_validation(&settings.issuer, &settings.audience);
        let state = web::Data::new(AppState {
            db,
            keys: Arc::new(keys),
            settings,
            clock,
            session_policy,
            vault,
            webauthn,
            secret_box,
            oidc_http,
            rate_limiter: Default::default(),
            token_validation,
            verified_tokens: Default::default(),
        });
        // Background jobs live as long as the server.
        let mut background = Vec::new();
        if state.settings.retention_interval_secs > 0 {
            background.push(spawn_retention_job(state.clone()));
        }
        if state.settings.rate_limit_per_minute > 0 || state.settings.auth_rate_limit_per_minute > 0
        {
            background.push(crate::limits::spawn_sync(state.clone()));
        }
        if sea_orm::ConnectionTrait::get_database_backend(&state.db) == sea_orm::DbBackend::Sqlite {
            background.push(spawn_wal_bound(state.db.clone()));
        }
        if state.settings.worker_interval_ms > 0 {
            let worker = crate::worker::Worker {
                db: state.db.clone(),
                secret_box: state.secret_box.clone(),
                vault: state.vault.clone(),
                settings: state.settings.clone(),
                clock: state.clock.clone(),
            };
            background.push(tokio::spawn(worker.run_forever()));
        }
        let spec = openapi_spec();
        let spec_json = web::Data::new(SpecJson(serde_json::to_string_pretty(&spec)?));
        let table = web::Data::new(RouteTable::from_spec(&spec));
        let shadowed = web::Data::new(Shadowed(table.shadowed()));

        let cors_origins = state.settings.webauthn_origins.clone();
        let server = HttpServer::new(move || {
            // Runs on each worker thread: the worker's own state, with its own pool.
            let worker_state = web::Data::new(AppState {
                db: crm_domain::db::worker_pool(&state.db, &state.settings.database_url),
                ..AppState::clone(&state)
            });
            App::new()
                .app_data(worker_state)
                .app_data(spec_json.clone())
                .app_data(table.clone())
                .app_data(shadowed.clone())
                .app_data(json_config(max_body))
                .app_data(web::PayloadConfig::new(max_body))
                .app_data(web::QueryConfig::default().error_handler(query_error))
                .app_data(web::PathConfig::default().error_handler(path_error))
                .into_utoipa_app()
                .configure(routes)
                .into_app()
                .route("/openapi.json", web::get().to(meta::openapi_json))
                .route("/docs", web::get().to(meta::docs_page))
                .route("/docs/docs.js", web::get().to(meta::docs_script))
                .default_service(web::to(fallback))
                .wrap(actix_web::middleware::from_fn(crate::limits::guard))
                .wrap(cors(&cors_origins))
                .wrap_fn(|req, srv| {
                    let start = Instant::now();
                    let request_id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(valid_request_id)
                        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
                    let method = req.method().clone();
                    req.extensions_mut().insert(crate::auth::RequestId(request_id.clone()));
                    let fut = srv.call(req);
                    async move {
                        let res = fut.await?;
                        let mut res = ensure_problem(res.map_into_boxed_body());
                        security_headers(&mut res, &request_id);
                        if log::log_enabled!(log::Level::Info) {
                            // Matching the route template again costs a routing pass: only
                            // when the line is written.
                            let route =
                                res.request().match_pattern().unwrap_or_else(|| "-".into());
                            log::info!(
                                "request_id={request_id} method={method} route={route} status={} latency_ms={:.2}",
                                res.status().as_u16(),
                                start.elapsed().as_secs_f64() * 1000.0
                            );
                        }
                        Ok(res)
                    }
                })
        })
        .workers(workers)
        .listen(listener)?
        .run();
        Ok(Application {
            port,
            server,
            first_run,
            background,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The platform admin created on this first start, if it was one.
    pub fn take_first_run_credentials(&mut self) -> Option<FirstRunCredentials> {
        self.first_run.take()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        for job in self.background {
            job.abort();
        }
        result
    }

    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }
}
