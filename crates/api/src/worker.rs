//! The delivery worker: claims due webhook deliveries from the outbox and sends them, signed
//! per Standard Webhooks. Runs inside the server (every `CRM_WORKER_INTERVAL_MS`) and as
//! `crm worker`; several workers on one PostgreSQL never send the same claim twice.

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use crm_domain::clock::Clock;
use crm_domain::db::Db;
use crm_domain::events::{self, Claimed, Outcome};
use rand::Rng;
use serde_json::json;

use crate::config::{Environment, Settings};
use crate::keys::SecretBox;
use crate::outbound;

/// What a worker needs; shared with the server's state or built by `crm worker`.
pub struct Worker {
    pub db: Db,
    pub secret_box: Arc<SecretBox>,
    /// The keys of personal data (sealed payloads; imports refuse suppressed addresses).
    pub vault: Arc<crm_domain::vault::Vault>,
    pub settings: Settings,
    pub clock: Arc<dyn Clock>,
}

/// How long a claim lasts: longer than one delivery can take.
const LEASE: i64 = 60;
const BATCH: u64 = 20;
/// Rows of an import applied per transaction.
const CHUNK: usize = 1000;
/// How long an import claim lasts; renewed with every chunk (which takes about a second), so
/// a job whose node died resumes elsewhere within this time.
const IMPORT_LEASE: i64 = 15;

impl Worker {
    /// Claims and delivers what is due (webhooks, then e-mails); returns how many attempts
    /// were made.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let now = self.clock.now();
        let claimed =
            events::claim_due(&self.db, &self.vault, now, Duration::seconds(LEASE), BATCH).await?;
        let mut n = claimed.len();
        for c in claimed {
            let outcome = self.deliver(&c).await;
            events::record_attempt(&self.db, c.id, outcome, self.clock.now()).await?;
        }
        n += self.send_emails().await?;
        n += self.run_import().await?;
        Ok(n)
    }

    /// Applies one claimed import, chunk by chunk; returns the rows applied.
    async fn run_import(&self) -> anyhow::Result<usize> {
        use crm_domain::imports;
        let lease = Duration::seconds(IMPORT_LEASE);
        let Some(mut job) =
            imports::claim_job(&self.db, &self.vault, self.clock.now(), lease).await?
        else {
            return Ok(0);
        };
        let rows = crate::routes::contacts::import_rows(&job.format, &job.payload)
            .map_err(|e| anyhow::anyhow!("import {}: {e}", job.id))?;
        let total = rows.len() as i64;
        let mut applied = 0;
        loop {
            let start = job.processed.clamp(0, total) as usize;
            let end = (start + CHUNK).min(rows.len());
            let (mut items, mut invalid) = (Vec::new(), Vec::new());
            for (offset, row) in rows[start..end].iter().enumerate() {
                let number = (start + offset + 1) as i64;
                match crate::routes::contacts::parse_item(row, "") {
                    Ok(item) => items.push((number, item)),
                    Err(errors) => invalid.push((
                        number,
                        errors
                            .first()
                            .map(|e| e.code.clone())
                            .unwrap_or_else(|| "validation_failed".into()),
                    )),
                }
            }
            let finished = end == rows.len();
            match imports::apply_chunk(
                &self.db,
                &job,
                &self.vault,
                items,
                invalid,
                end as i64,
                finished,
                lease,
                self.clock.now(),
            )
            .await
            {
                Ok(()) => {}
                // Another worker took the job over after our lease ran out.
                Err(crm_domain::DomainError::PreconditionFailed) => return Ok(applied),
                Err(e) => return Err(e.into()),
            }
            applied += end - start;
            job.processed = end as i64;
            if finished {
                return Ok(applied);
            }
        }
    }

    async fn send_emails(&self) -> anyhow::Result<usize> {
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
        let Some(relay) = &self.settings.smtp_relay else {
            return Ok(0);
        };
        let (host, port) = relay
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("CRM_SMTP_RELAY must be host:port"))?;
        let claimed = crm_domain::breaches::claim_emails(
            &self.db,
            &self.vault,
            self.clock.now(),
            Duration::seconds(LEASE),
            BATCH,
        )
        .await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(outbound::TIMEOUT))
            .build();
        let n = claimed.len();
        for m in claimed {
            let message = Message::builder()
                .from(self.settings.mail_from.parse()?)
                .to(match m.to.parse() {
                    Ok(to) => to,
                    Err(_) => {
                        let result = Err(("invalid recipient address".to_owned(), None));
                        crm_domain::breaches::record_email(
                            &self.db,
                            m.id,
                            result,
                            self.clock.now(),
                        )
                        .await?;
                        continue;
                    }
                })
                .subject(m.subject.clone())
                .body(m.body.clone())?;
            let result = match transport.send(message).await {
                Ok(_) => Ok(()),
                Err(e) => Err((
                    format!("SMTP: {e}"),
                    self.retry_at(m.attempts + 1, self.clock.now()),
                )),
            };
            crm_domain::breaches::record_email(&self.db, m.id, result, self.clock.now()).await?;
        }
        Ok(n)
    }

    /// Polls until the process ends.
    pub async fn run_forever(self) {
        let every = std::time::Duration::from_millis(self.settings.worker_interval_ms.max(10));
        loop {
            match self.run_once().await {
                // More may be due: go again at once.
                Ok(n) if n as u64 == BATCH => continue,
                Ok(_) => {}
                Err(e) => log::error!("delivery worker: {e:#}"),
            }
            tokio::time::sleep(every).await;
        }
    }

    fn retry_at(&self, attempts_done: i32, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if attempts_done >= self.settings.webhook_max_attempts {
            return None;
        }
        let base = self.settings.webhook_retry_base.num_milliseconds() as f64;
        let exp = base * 2f64.powi((attempts_done - 1).clamp(0, 20));
        let capped = exp.min(3_600_000.0);
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        Some(now + Duration::milliseconds((capped * jitter) as i64))
    }

    async fn deliver(&self, c: &Claimed) -> Outcome {
        let attempts_done = c.attempts + 1;
        let fail = |status: Option<i32>, error: String| Outcome::Failed {
            status,
            error,
            retry_at: self.retry_at(attempts_done, self.clock.now()),
        };
        let allow_http = self.settings.environment == Environment::Development;
        let url = match outbound::check_url(&c.url, allow_http) {
            Ok(u) => u,
            Err(e) => return fail(None, e.to_string()),
        };
        let addr: SocketAddr =
            match outbound::resolve_and_vet(&url, self.settings.webhook_allow_loopback).await {
                Ok(a) => a,
                Err(e) => return fail(None, e.to_string()),
            };
        let secret = match self.secret_box.open(&c.secret_enc) {
            Ok(s) => s,
            Err(e) => return fail(None, format!("signing secret: {e}")),
        };
        let e = &c.event;
        let body = json!({
            "type": e.event_type,
            "timestamp": e.occurred_at,
            "data": {
                "event_id": e.id,
                "seq": e.seq,
                "object_type": e.object_type,
                "object_id": e.object_id,
                "object": e.data,
            },
        })
        .to_string();
        let msg_id = format!("msg_{}", e.id.simple());
        let ts = self.clock.now().timestamp();
        let signature = match outbound::sign(&secret, &msg_id, ts, &body) {
            Ok(s) => s,
            Err(e) => return fail(None, format!("signing: {e}")),
        };
        let host = url.host_str().unwrap_or_default().to_owned();
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&host, addr)
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(outbound::TIMEOUT)
            .build()
        {
            Ok(c) => c,
            Err(e) => return fail(None, format!("client: {e}")),
        };
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => Outcome::Delivered {
                status: i32::from(resp.status().as_u16()),
            },
            Ok(resp) => fail(
                Some(i32::from(resp.status().as_u16())),
                format!("receiver answered {}", resp.status()),
            ),
            Err(e) if e.is_timeout() => fail(None, "timed out".into()),
            Err(_) => fail(None, "could not connect or send".into()),
        }
    }
}
