//! Rate limits and idempotency keys, as middleware in front of every route.
//!
//! **Rate limits** are fixed one-minute windows per caller (user or integration client) on the
//! API and per client address on the sign-in routes. Every node counts locally and adds its
//! counts to the shared `rate_limits` rows every `rate_limit_sync_ms`, reading back what all
//! nodes counted; a request is refused when the shared count plus what this node has not
//! added yet reaches the limit. Across N nodes a caller can therefore exceed the limit by at
//! most what the other nodes admitted since their last sync, and no request costs a database
//! round trip. Responses carry `RateLimit-Policy` and `RateLimit` (IETF draft
//! `draft-ietf-httpapi-ratelimit-headers`); refusals are 429 problems with `Retry-After`.
//!
//! **Idempotency keys**: a POST with `Idempotency-Key` is claimed in `idempotency_keys`
//! (tenant, caller, key). The first response (unless it is a 5xx, 401, 403, 409 or 429) is
//! stored sealed and returned again, with `Idempotent-Replayed: true`, for the same key and
//! request; the same key with another request is a 422; while the first runs, 409. Keys expire
//! after 24 hours. Sign-in routes take no keys (their answers are credentials).

use std::collections::HashMap;
use std::sync::Mutex;

use actix_web::HttpMessage;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;
use chrono::{DateTime, Duration, Utc};
use crm_domain::idempotency::{self, Begin, Scope, Stored};
use futures_util::StreamExt;
use uuid::Uuid;

use crate::auth::{TokenSubject, VerifiedToken, bearer, client_addr, verify_access_token};
use crate::problem::ApiError;
use crate::state::AppState;

/// A limit: `quota` requests per `window`.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub name: &'static str,
    pub quota: u32,
    pub window: Duration,
}

/// The answer for one request.
#[derive(Clone, Copy, Debug)]
pub struct Decision {
    pub policy: Policy,
    pub allowed: bool,
    pub remaining: u32,
    /// Seconds until the window ends.
    pub reset: u64,
}

struct Counter {
    window_start: DateTime<Utc>,
    /// What all nodes had counted at the last sync (this node's synced counts included).
    shared: i64,
    /// Counted here, not yet added to the shared row.
    unsynced: i64,
    /// Taken out of `unsynced` by a sync that has not answered yet.
    in_transit: i64,
}

/// Per-node counters synchronised with the shared rows.
#[derive(Default)]
pub struct RateLimiter {
    counters: Mutex<HashMap<String, Counter>>,
}

fn window_start(now: DateTime<Utc>, window: Duration) -> DateTime<Utc> {
    let w = window.num_seconds().max(1);
    let start = now.timestamp().div_euclid(w) * w;
    DateTime::from_timestamp(start, 0).unwrap_or(now)
}

impl Counter {
    fn new(window_start: DateTime<Utc>, shared: i64) -> Self {
        Counter {
            window_start,
            shared,
            unsynced: 0,
            in_transit: 0,
        }
    }
}

impl RateLimiter {
    /// Counts a request for `key` (a keyed digest: client addresses are never stored in the
    /// clear) under `policy`, or refuses it. The first request for a key in a window on this
    /// node reads what the other nodes have counted so far.
    pub async fn check(
        &self,
        db: &crm_domain::db::Db,
        policy: Policy,
        key: String,
        now: DateTime<Utc>,
    ) -> Decision {
        let start = window_start(now, policy.window);
        // Whole seconds, rounded up: after `reset` seconds the next window has begun.
        let reset = ((start + policy.window - now).num_milliseconds() + 999)
            .div_euclid(1000)
            .max(1) as u64;
        let known = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .is_some_and(|c| c.window_start == start);
        let seed = if known {
            None
        } else {
            // Boxed: a database call's future is large, and this one is rare; inline, it made
            // every request's future (moved into a box per request) that much larger.
            match Box::pin(crm_domain::rate_limits::add(db, &key, start, 0)).await {
                Ok(n) => Some(n),
                Err(e) => {
                    log::warn!("reading a shared rate-limit count failed: {e}");
                    Some(0)
                }
            }
        };
        self.count(policy, key, start, reset, seed)
    }

    fn count(
        &self,
        policy: Policy,
        key: String,
        start: DateTime<Utc>,
        reset: u64,
        seed: Option<i64>,
    ) -> Decision {
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = counters
            .entry(key)
            .or_insert_with(|| Counter::new(start, seed.unwrap_or(0)));
        if c.window_start != start {
            *c = Counter::new(start, seed.unwrap_or(0));
        } else if let Some(seed) = seed {
            c.shared = c.shared.max(seed);
        }
        let used = c.shared + c.unsynced + c.in_transit;
        let quota = i64::from(policy.quota);
        if used >= quota {
            return Decision {
                policy,
                allowed: false,
                remaining: 0,
                reset,
            };
        }
        c.unsynced += 1;
        Decision {
            policy,
            allowed: true,
            remaining: (quota - used - 1).max(0) as u32,
            reset,
        }
    }

    /// Adds this node's counts to the shared rows and reads back what every node counted.
    /// Counters of ended windows are dropped.
    pub async fn sync(&self, db: &crm_domain::db::Db, now: DateTime<Utc>) {
        let batch: Vec<(String, DateTime<Utc>, i64)> = {
            let mut counters = self
                .counters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // A window older than two minutes has ended for every policy.
            counters.retain(|_, c| {
                c.window_start > now - Duration::minutes(2) || c.unsynced + c.in_transit > 0
            });
            counters
                .iter_mut()
                .map(|(k, c)| {
                    let delta = c.unsynced;
                    c.in_transit += delta;
                    c.unsynced = 0;
                    (k.clone(), c.window_start, delta)
                })
                .collect()
        };
        for (key, start, delta) in batch {
            let result = crm_domain::rate_limits::add(db, &key, start, delta).await;
            let mut counters = self
                .counters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(c) = counters.get_mut(&key) else {
                continue;
            };
            if c.window_start != start {
                continue;
            }
            c.in_transit -= delta;
            match result {
                Ok(total) => c.shared = total.max(c.shared),
                Err(e) => {
                    // Counted again next time.
                    c.unsynced += delta;
                    log::warn!("rate-limit sync failed: {e}");
                }
            }
        }
    }
}

/// Runs the limiter's sync loop and prunes old shared windows now and then.
pub fn spawn_sync(state: web::Data<AppState>) -> tokio::task::JoinHandle<()> {
    let every = std::time::Duration::from_millis(state.settings.rate_limit_sync_ms.max(10));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            ticker.tick().await;
            let now = state.clock.now();
            state.rate_limiter.sync(&state.db, now).await;
            ticks += 1;
            if ticks.is_multiple_of(600)
                && let Err(e) =
                    crm_domain::rate_limits::prune(&state.db, now - Duration::minutes(5)).await
            {
                log::warn!("pruning rate-limit windows failed: {e}");
            }
        }
    })
}

/// The rest of the chain, with its body boxed.
struct Forward<B>(Next<B>);

impl<B: MessageBody + 'static> Forward<B> {
    async fn call(self, req: ServiceRequest) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
        Ok(self.0.call(req).await?.map_into_boxed_body())
    }
}

/// Sign-in routes: limited per client address, and never idempotent.
pub fn is_sign_in(path: &str) -> bool {
    path.starts_with("/v1/auth/") || path == "/v1/oauth/token"
}

/// Verifies the bearer token once per request and keeps the answer for the extractors.
fn verified(req: &ServiceRequest, state: &AppState) -> Option<TokenSubject> {
    if let Some(v) = req.extensions().get::<VerifiedToken>() {
        return v.0.clone();
    }
    let subject = bearer(req.request())
        .ok()
        .and_then(|token| verify_access_token(state, token).ok());
    req.extensions_mut().insert(VerifiedToken(subject.clone()));
    subject
}

fn caller_of(subject: &TokenSubject) -> (Uuid, String) {
    match subject {
        TokenSubject::User(tid, uid, _) => (tid.as_uuid(), format!("user:{uid}")),
        TokenSubject::Client(tid, id, _) => (tid.as_uuid(), format!("client:{id}")),
    }
}

fn rate_headers(res: &mut actix_web::HttpResponse<BoxBody>, d: &Decision) {
    let h = res.headers_mut();
    let policy = format!(
        "\"{}\";q={};w={}",
        d.policy.name,
        d.policy.quota,
        d.policy.window.num_seconds()
    );
    let now = format!("\"{}\";r={};t={}", d.policy.name, d.remaining, d.reset);
    if let Ok(v) = HeaderValue::from_str(&policy) {
        h.insert(HeaderName::from_static("ratelimit-policy"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&now) {
        h.insert(HeaderName::from_static("ratelimit"), v);
    }
    if !d.allowed
        && let Ok(v) = HeaderValue::from_str(&d.reset.to_string())
    {
        h.insert(header::RETRY_AFTER, v);
    }
}

/// Middleware: what every request passes before routing, in one layer — each middleware layer
/// boxes the rest of the request's future once more (a visible share of a GET's CPU with
/// three of them). In order: the rate limit (429 past it), 405 for a literal route that a
/// parameterised sibling would otherwise take, then idempotency keys.
///
/// First step here: counts the request against its limit, refuses it with 429 past the limit.
pub async fn guard<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return past_limit(req, next).await;
    };
    let s = &state.settings;
    let sign_in = is_sign_in(req.path());
    let quota = if sign_in {
        s.auth_rate_limit_per_minute
    } else {
        s.rate_limit_per_minute
    };
    if quota == 0 {
        return past_limit(req, next).await;
    }
    let addr = || client_addr(req.request(), s.trust_forwarded_for);
    let (name, key) = if sign_in {
        ("auth", format!("addr:{}", addr()))
    } else if let Some(subject) = verified(&req, &state) {
        let (tid, caller) = caller_of(&subject);
        ("api", format!("{tid}:{caller}"))
    } else {
        ("api", format!("addr:{}", addr()))
    };
    let policy = Policy {
        name,
        quota,
        window: Duration::minutes(1),
    };
    let decision = state
        .rate_limiter
        .check(
            &state.db,
            policy,
            state
                .secret_box
                .fingerprint(&[name.as_bytes(), key.as_bytes()]),
            state.clock.now(),
        )
        .await;
    if !decision.allowed {
        let err = ApiError::status(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "more than {} requests in a minute; retry after the time given in Retry-After",
                policy.quota
            ),
        );
        let mut res = actix_web::ResponseError::error_response(&err);
        rate_headers(&mut res, &decision);
        return Ok(req.into_response(res));
    }
    let res = past_limit(req, next).await?;
    let (req, mut res) = res.into_parts();
    rate_headers(&mut res, &decision);
    Ok(ServiceResponse::new(req, res))
}

/// 405 before routing: a literal route (`/v1/sub-processors/changes`) must not fall through to
/// a parameterised sibling that takes the method.
async fn past_limit<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let refused = req
        .app_data::<web::Data<crate::startup::Shadowed>>()
        .and_then(|t| t.refuses(req.path(), req.method()));
    if let Some(allow) = refused {
        let res = actix_web::ResponseError::error_response(&ApiError::MethodNotAllowed { allow });
        return Ok(req.into_response(res));
    }
    idempotency(req, next).await
}

/// The largest body an idempotent request may have (the import route's limit).
const MAX_IDEMPOTENT_BODY: usize = 32 * 1024 * 1024;

fn valid_key(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 255 && s.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        .then(|| s.to_owned())
}

/// Statuses that are not the outcome of the operation: not stored, the key is released.
fn worth_storing(status: StatusCode) -> bool {
    !(status.is_server_error()
        || matches!(
            status,
            StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::CONFLICT
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::REQUEST_TIMEOUT
        ))
}

/// Every UUID in a response body (the ids it names).
fn ids_in(body: &[u8]) -> Vec<Uuid> {
    let text = String::from_utf8_lossy(body);
    let mut ids: Vec<Uuid> = text
        .split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .filter(|t| t.len() == 36)
        .filter_map(|t| Uuid::parse_str(t).ok())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

const REPLAYED_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::LOCATION, header::ETAG];

fn problem(status: StatusCode, code: &str, detail: &str) -> actix_web::HttpResponse<BoxBody> {
    actix_web::ResponseError::error_response(&ApiError::status(status, code, detail))
}

/// Makes POSTs with an `Idempotency-Key` safe to retry.
async fn idempotency<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let srv = Forward(next);
    let key_header = req.headers().get("idempotency-key").cloned();
    let (Some(key_header), Some(state)) =
        (key_header, req.app_data::<web::Data<AppState>>().cloned())
    else {
        return srv.call(req).await;
    };
    if req.method() != actix_web::http::Method::POST || is_sign_in(req.path()) {
        return srv.call(req).await;
    }
    // Without a valid token the route answers 401 itself; nothing to scope the key to.
    let Some(subject) = verified(&req, &state) else {
        return srv.call(req).await;
    };
    let Some(key) = valid_key(&key_header) else {
        let res = problem(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        );
        return Ok(req.into_response(res));
    };
    // Boxed: the keyed path's database calls would make every request's future larger (it is
    // moved into a box per request, a copy of all of it).
    Box::pin(keyed(req, srv, state, subject, key)).await
}

/// [`idempotency`] for a POST with a valid key and a verified caller.
async fn keyed<B: MessageBody + 'static>(
    mut req: ServiceRequest,
    srv: Forward<B>,
    state: web::Data<AppState>,
    subject: TokenSubject,
    key: String,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // Read the body to fingerprint it, then hand it on.
    let mut payload = req.take_payload();
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > MAX_IDEMPOTENT_BODY {
            let res = problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than this service accepts",
            );
            return Ok(req.into_response(res));
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let fingerprint = state.secret_box.fingerprint(&[
        req.method().as_str().as_bytes(),
        req.path().as_bytes(),
        req.query_string().as_bytes(),
        &content_type,
        &body,
    ]);
    let (tenant_id, caller) = caller_of(&subject);
    let scope = Scope {
        tenant_id,
        caller,
        key,
    };
    let now = state.clock.now();
    match idempotency::begin(&state.db, &scope, &fingerprint, now)
        .await
        .map_err(ApiError::from)?
    {
        Begin::Proceed => {}
        Begin::Mismatch => {
            let res = problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request; use a new key",
            );
            return Ok(req.into_response(res));
        }
        Begin::InFlight => {
            let res = problem(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still being processed; retry shortly",
            );
            return Ok(req.into_response(res));
        }
        Begin::Replay(stored) => {
            let res = replay(&state, &stored)?;
            return Ok(req.into_response(res));
        }
    }
    req.set_payload(actix_web::dev::Payload::from(body));
    let res = match srv.call(req).await {
        Ok(res) => res,
        Err(e) => {
            if let Err(e) = idempotency::abandon(&state.db, &scope).await {
                log::error!("releasing an idempotency key failed: {e}");
            }
            return Err(e);
        }
    };
    let status = res.status();
    if !worth_storing(status) {
        if let Err(e) = idempotency::abandon(&state.db, &scope).await {
            log::error!("releasing an idempotency key failed: {e}");
        }
        return Ok(res);
    }
    let (req, res) = res.into_parts();
    let (head, body) = res.into_parts();
    let bytes = match body.try_into_bytes() {
        Ok(b) => b,
        Err(body) => actix_web::body::to_bytes(body)
            .await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("response body unreadable")))?,
    };
    let headers: Vec<(String, String)> = REPLAYED_HEADERS
        .iter()
        .filter_map(|n| {
            head.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(|v| (n.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    // Under the key-encryption key, so rotating and retiring it reaches these copies too.
    let sealed = state
        .vault
        .seal_system(idempotency::BODY, &String::from_utf8_lossy(&bytes));
    let stored = Stored {
        status: status.as_u16(),
        headers: serde_json::to_string(&headers).unwrap_or_else(|_| "[]".into()),
        body_enc: sealed,
    };
    if let Err(e) = idempotency::finish(&state.db, &scope, stored, &ids_in(&bytes)).await {
        log::error!("storing an idempotent response failed: {e}");
    }
    let res = head.set_body(BoxBody::new(bytes));
    Ok(ServiceResponse::new(req, res))
}

fn replay(state: &AppState, stored: &Stored) -> Result<actix_web::HttpResponse<BoxBody>, ApiError> {
    let body = if crm_domain::vault::is_system_sealed(&stored.body_enc) {
        state
            .vault
            .open_system(idempotency::BODY, &stored.body_enc)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?
    } else {
        // Stored by an earlier version (sealed with the SSO secret); gone within a day.
        state
            .secret_box
            .open(&stored.body_enc)
            .map_err(ApiError::Internal)?
    };
    let status = StatusCode::from_u16(stored.status)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored status: {e}")))?;
    let mut res = actix_web::HttpResponse::build(status);
    let headers: Vec<(String, String)> = serde_json::from_str(&stored.headers).unwrap_or_default();
    for (name, value) in headers {
        res.insert_header((name, value));
    }
    res.insert_header(("idempotent-replayed", "true"));
    Ok(res.body(body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn counts_within_a_window_and_starts_again_in_the_next() {
        let limiter = RateLimiter::default();
        let policy = Policy {
            name: "api",
            quota: 3,
            window: Duration::minutes(1),
        };
        let now = at("2026-12-01T10:00:10Z");
        let answers: Vec<_> = (0..4)
            .map(|_| {
                limiter.count(
                    policy,
                    "k".into(),
                    window_start(now, policy.window),
                    50,
                    None,
                )
            })
            .map(|d| (d.allowed, d.remaining, d.reset))
            .collect();
        assert_eq!(
            answers,
            vec![(true, 2, 50), (true, 1, 50), (true, 0, 50), (false, 0, 50)]
        );
        // Another key has its own count.
        assert!(
            limiter
                .count(
                    policy,
                    "other".into(),
                    window_start(now, policy.window),
                    50,
                    None
                )
                .allowed
        );
        // The next window starts from what the other nodes counted in it.
        let next_start = window_start(at("2026-12-01T10:01:00Z"), policy.window);
        let next = limiter.count(policy, "k".into(), next_start, 60, Some(1));
        assert!(next.allowed);
        assert_eq!((next.remaining, next.reset), (1, 60));
    }

    #[test]
    fn finds_the_ids_a_response_names() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let body =
            format!(r#"{{"id":"{a}","items":[{{"id":"{b}"}},{{"id":"{a}"}}],"x":"not-a-uuid"}}"#);
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(ids_in(body.as_bytes()), want);
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        assert!(valid_key(&HeaderValue::from_static("order-2026-12-01_#1")).is_some());
        assert!(valid_key(&HeaderValue::from_static("has space")).is_none());
        assert!(valid_key(&HeaderValue::from_str(&"k".repeat(256)).unwrap()).is_none());
    }
}
