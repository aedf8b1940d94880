//! Contact creations on SQLite, grouped into shared transactions.
//!
//! SQLite writes one transaction at a time, and each statement of a transaction is a trip to
//! the connection's thread and back: two thread wake-ups. Written one by one, a creation held
//! the writer for ~12 such trips (begin, suppression check, insert, chain end, audit entry,
//! feed end, webhook endpoints, event, commit, the connection's return to its pool); under 32
//! concurrent requests on 2 cores the writer thread was busy a third of the time and waited
//! for wake-ups the rest (`perf sched`: ~20 µs of scheduling delay per wake-up).
//!
//! Creations that arrive while another is being written wait in a queue per database file. One
//! task writes what has queued up in one transaction, with one statement per kind and tenant
//! (companies, suppressed addresses, contacts, audit entries, events), then answers each
//! request with its own result. Every creation gets the checks and errors of the one-by-one
//! path, in the same order. When the database refuses the grouped writes (an address taken
//! since it was read, or two in the group), or anything else fails, the transaction is rolled
//! back and each creation is written alone, so each gets its own answer.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect,
};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Contact, NewRow, admit, email_taken, unknown_company};
use crate::audit::{self, Actor, Entry, Event};
use crate::db::{self, one_of};
use crate::entities::{company, suppression};
use crate::error::{DomainError, DomainResult};
use crate::tenancy::Tenant;

/// At most this many creations share a transaction.
const MAX_GROUP: usize = 256;

/// A creation ready to be written: what the one-by-one path needs, owned.
pub(super) struct Pending {
    pub tenant: Tenant,
    pub row: NewRow,
    pub override_reason: Option<String>,
    pub actor: Actor,
    pub now: DateTime<Utc>,
}

impl Pending {
    /// Writes the contact in a transaction of its own.
    pub(super) async fn create_alone(self, db: &DatabaseConnection) -> DomainResult<Contact> {
        let txn = db::begin_write(db).await?;
        let created = self
            .row
            .insert(
                &txn,
                &self.tenant,
                self.override_reason.as_deref(),
                &self.actor,
                self.now,
            )
            .await?;
        txn.commit().await?;
        Ok(created)
    }
}

struct Queued {
    pending: Pending,
    answer: oneshot::Sender<DomainResult<Contact>>,
}

/// The creations waiting for a database file, and whether a task is writing them.
#[derive(Default)]
struct Queue {
    waiting: Vec<Queued>,
    writing: bool,
}

static QUEUES: LazyLock<Mutex<HashMap<PathBuf, Arc<Mutex<Queue>>>>> =
    LazyLock::new(Default::default);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn queue_of(file: &Path) -> Arc<Mutex<Queue>> {
    let mut queues = lock(&QUEUES);
    match queues.get(file) {
        Some(queue) => queue.clone(),
        None => queues.entry(file.to_path_buf()).or_default().clone(),
    }
}

/// Creates the contact with whatever else is queued for the same database file. `Err` gives
/// the creation back when `db` has no writer connection of its own (PostgreSQL, where
/// transactions run side by side, or an in-memory SQLite database).
pub(super) async fn create(
    db: &DatabaseConnection,
    pending: Pending,
) -> Result<DomainResult<Contact>, Pending> {
    let Some(queue) = db::with_sqlite_writer_file(db, queue_of) else {
        return Err(pending);
    };
    let (answer, answered) = oneshot::channel();
    let start = {
        let mut q = lock(&queue);
        q.waiting.push(Queued { pending, answer });
        !std::mem::replace(&mut q.writing, true)
    };
    if start {
        // A task of its own: a request that goes away (a client that disconnects) does not
        // stop the writes of the others. Once queued, a creation is written even when its
        // request has gone.
        tokio::spawn(write_queue(db.clone(), queue));
    }
    Ok(answered.await.unwrap_or_else(|_| {
        Err(DomainError::Internal(
            "the grouped write stopped before it answered".into(),
        ))
    }))
}

/// Writes the queue's creations, a group at a time, until none waits.
async fn write_queue(db: DatabaseConnection, queue: Arc<Mutex<Queue>>) {
    let mut writing = Writing {
        queue: queue.clone(),
        armed: true,
    };
    loop {
        let group: Vec<Queued> = {
            let mut q = lock(&queue);
            if q.waiting.is_empty() {
                // Under the same lock as a creation's push: one that comes later starts a
                // new task.
                q.writing = false;
                writing.armed = false;
                return;
            }
            let n = q.waiting.len().min(MAX_GROUP);
            q.waiting.drain(..n).collect()
        };
        write_group(&db, group).await;
    }
}

/// Ends the queue's writing when its task stops early (a panic, the runtime shutting down):
/// the creations still waiting are answered with an error (none of them was written), and
/// the next creation starts a new task.
struct Writing {
    queue: Arc<Mutex<Queue>>,
    armed: bool,
}

impl Drop for Writing {
    fn drop(&mut self) {
        if self.armed {
            let mut q = lock(&self.queue);
            q.writing = false;
            q.waiting.clear();
        }
    }
}

async fn write_group(db: &DatabaseConnection, group: Vec<Queued>) {
    let (pending, answers): (Vec<Pending>, Vec<_>) =
        group.into_iter().map(|q| (q.pending, q.answer)).unzip();
    match together(db, &pending).await {
        Ok(Some(results)) => {
            for (result, answer) in results.into_iter().zip(answers) {
                // A request that went away no longer waits for its answer.
                let _ = answer.send(result);
            }
        }
        outcome => {
            if let Err(e) = outcome {
                log::warn!(
                    "a grouped write of {} contacts failed ({e}); one by one",
                    pending.len()
                );
            }
            for (p, answer) in pending.into_iter().zip(answers) {
                let _ = answer.send(p.create_alone(db).await);
            }
        }
    }
}

/// Writes the group in one transaction: each creation's result, or `None` when the database
/// refused the grouped writes (rolled back).
async fn together(
    db: &DatabaseConnection,
    pending: &[Pending],
) -> DomainResult<Option<Vec<DomainResult<Contact>>>> {
    let txn = db::begin_write(db).await?;
    let mut results: Vec<Option<DomainResult<Contact>>> = pending.iter().map(|_| None).collect();
    let mut tenants: Vec<Tenant> = Vec::new();
    for p in pending {
        if !tenants.contains(&p.tenant) {
            tenants.push(p.tenant);
        }
    }
    for tenant in tenants {
        let members: Vec<usize> = (0..pending.len())
            .filter(|&k| pending[k].tenant == tenant)
            .collect();
        let mine: Vec<&Pending> = members.iter().map(|&k| &pending[k]).collect();
        match write_tenant(&txn, tenant, &mine).await? {
            Some(out) => {
                for (k, result) in members.into_iter().zip(out) {
                    results[k] = Some(result);
                }
            }
            None => {
                txn.rollback().await?;
                return Ok(None);
            }
        }
    }
    txn.commit().await?;
    Ok(Some(
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(DomainError::Internal("not written".into()))))
            .collect(),
    ))
}

/// One tenant's creations of the group, in order: `None` when the database refused them.
async fn write_tenant(
    txn: &impl ConnectionTrait,
    tenant: Tenant,
    pending: &[&Pending],
) -> DomainResult<Option<Vec<DomainResult<Contact>>>> {
    let tenant_id = tenant.id().as_uuid();
    let backend = txn.get_database_backend();
    let company_ids: HashSet<Uuid> = pending
        .iter()
        .filter_map(|p| p.row.contact.company_id.map(|c| c.as_uuid()))
        .collect();
    let companies: HashSet<Uuid> = if company_ids.is_empty() {
        HashSet::new()
    } else {
        company::Entity::find()
            .select_only()
            .column(company::Column::Id)
            .filter(company::Column::TenantId.eq(tenant_id))
            .filter(one_of(backend, company::Column::Id, company_ids))
            .into_tuple::<Uuid>()
            .all(txn)
            .await?
            .into_iter()
            .collect()
    };
    let digests: HashSet<&str> = pending
        .iter()
        .filter_map(|p| p.row.index.as_deref())
        .collect();
    let suppressed: HashSet<String> = if digests.is_empty() {
        HashSet::new()
    } else {
        suppression::Entity::find()
            .select_only()
            .column(suppression::Column::EmailHmac)
            .filter(suppression::Column::TenantId.eq(tenant_id))
            .filter(one_of(
                backend,
                suppression::Column::EmailHmac,
                digests.into_iter().map(str::to_owned),
            ))
            .into_tuple::<String>()
            .all(txn)
            .await?
            .into_iter()
            .collect()
    };
    // The checks of `NewRow::insert`, in its order; an address is taken by the first
    // creation of the group that names it.
    let mut taken = HashSet::new();
    let mut out = Vec::with_capacity(pending.len());
    let mut rows = Vec::new();
    let mut entries = Vec::new();
    let mut events = Vec::new();
    for p in pending {
        let new = &p.row;
        let checked = if new
            .contact
            .company_id
            .is_some_and(|c| !companies.contains(&c.as_uuid()))
        {
            Err(unknown_company())
        } else {
            match new.index.as_deref() {
                None => Ok(None),
                Some(index) => admit(suppressed.contains(index), p.override_reason.as_deref())
                    .and_then(|details| {
                        if taken.insert(index) {
                            Ok(details)
                        } else {
                            Err(email_taken())
                        }
                    }),
            }
        };
        match checked {
            Ok(details) => {
                rows.push(new.row.clone());
                entries.push(Entry {
                    actor: &p.actor,
                    event: Event {
                        action: "contact.created",
                        object_type: "contact",
                        object_id: Some(new.contact.id.as_uuid()),
                        details,
                    },
                    at: p.now,
                });
                events.push((new.event.clone(), p.now));
                out.push(Ok(new.contact.clone()));
            }
            Err(e) => out.push(Err(e)),
        }
    }
    if rows.is_empty() {
        return Ok(Some(out));
    }
    let n = rows.len() as u64;
    match db::insert_rows(txn, rows, None).await {
        Ok(written) if written == n => {}
        Ok(_) => return Ok(None),
        Err(e)
            if matches!(
                e.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    }
    let lock = audit::record_each(txn, tenant.id(), entries).await?;
    crate::events::emit_locked_each(txn, &lock, events).await?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use crm_migration::{Migrator, MigratorTrait};
    use sea_orm::ActiveValue::Set;
    use sea_orm::{EntityTrait, PaginatorTrait};

    use super::*;
    use crate::contacts::{NewContact, SuppressionGate};
    use crate::entities::{contact, event, tenant};
    use crate::ids::{CompanyId, TenantId};
    use crate::suppression::SuppressionSecret;
    use crate::values::EmailAddress;
    use crate::vault::Vault;

    struct Setup {
        db: DatabaseConnection,
        path: PathBuf,
        vault: Vault,
        a: Tenant,
        b: Tenant,
        company_a: CompanyId,
        company_b: CompanyId,
    }

    impl Setup {
        async fn new() -> DomainResult<Setup> {
            let path =
                std::env::temp_dir().join(format!("crm-grouped-{}.db", uuid::Uuid::now_v7()));
            let db = db::connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
            Migrator::up(&db, None).await?;
            let now = Utc::now();
            let mut tenants = Vec::new();
            for slug in ["a", "b"] {
                let id = TenantId::new();
                tenant::Entity::insert(tenant::ActiveModel {
                    id: Set(id.as_uuid()),
                    slug: Set(slug.into()),
                    name: Set(slug.into()),
                    kind: Set("customer".into()),
                    active: Set(true),
                    created_at: Set(now),
                    updated_at: Set(now),
                    version: Set(1),
                    mfa_required: Set(false),
                })
                .exec_without_returning(&db)
                .await?;
                tenants.push(Tenant::scoped(id));
            }
            let (a, b) = (tenants[0], tenants[1]);
            let mut companies = Vec::new();
            for t in [a, b] {
                let company = crate::companies::create_company(
                    &db,
                    &t,
                    crate::companies::NewCompany {
                        name: "Engines".into(),
                        domain: None,
                        phone: None,
                        industry: None,
                    },
                    &Actor::system(),
                    now,
                )
                .await?;
                companies.push(company.id);
            }
            let vault = Vault::new(vec![(1, [7; 32])], SuppressionSecret::from_bytes([9; 32]))
                .map_err(|e| DomainError::Internal(e.to_string()))?;
            Ok(Setup {
                db,
                path,
                vault,
                a,
                b,
                company_a: companies[0],
                company_b: companies[1],
            })
        }

        /// A creation of `email` (and `company`) by a client whose request id is `request`.
        fn pending(
            &self,
            tenant: Tenant,
            email: &str,
            company: Option<CompanyId>,
            override_reason: Option<&str>,
            request: &str,
        ) -> DomainResult<Pending> {
            let gate = SuppressionGate {
                vault: &self.vault,
                override_reason: override_reason.map(str::to_owned),
            };
            let input = NewContact {
                company_id: company,
                first_name: Some("Ada".into()),
                last_name: None,
                email: Some(
                    EmailAddress::parse(email).map_err(|e| DomainError::Internal(e.to_string()))?,
                ),
                phone: None,
                job_title: None,
            };
            let now = Utc::now();
            Ok(Pending {
                tenant,
                row: NewRow::prepare(&tenant, input, &gate, now)?,
                override_reason: gate.override_reason,
                actor: Actor::client(uuid::Uuid::now_v7(), Some(request.into())),
                now,
            })
        }

        async fn suppress(&self, tenant: Tenant, email: &str) -> DomainResult<()> {
            crate::entities::suppression::Entity::insert(
                crate::entities::suppression::ActiveModel {
                    tenant_id: Set(tenant.id().as_uuid()),
                    email_hmac: Set(self.vault.email_index(
                        tenant.id(),
                        &EmailAddress::parse(email)
                            .map_err(|e| DomainError::Internal(e.to_string()))?,
                    )),
                    created_at: Set(Utc::now()),
                },
            )
            .exec_without_returning(&self.db)
            .await?;
            Ok(())
        }

        async fn contacts(&self) -> DomainResult<u64> {
            Ok(contact::Entity::find().count(&self.db).await?)
        }

        async fn done(self) {
            self.db.close().await.ok();
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
            }
        }
    }

    fn code(result: &DomainResult<Contact>) -> &'static str {
        match result {
            Ok(_) => "created",
            Err(DomainError::Conflict { code, .. }) => code,
            Err(DomainError::Invalid(errors)) if errors[0].code == "unknown_company" => {
                "unknown_company"
            }
            Err(_) => "other error",
        }
    }

    /// One transaction writes a group of two tenants' creations with the checks and errors of
    /// one-by-one creation; each entry is audited with its own actor and request, and each
    /// tenant's chain and change feed stay whole and in order.
    #[tokio::test]
    async fn a_group_is_written_in_one_transaction_with_each_creations_own_answer()
    -> DomainResult<()> {
        let s = Setup::new().await?;
        s.suppress(s.a, "gone@example.org").await?;
        let group = vec![
            s.pending(s.a, "one@example.org", Some(s.company_a), None, "r1")?,
            s.pending(s.b, "one@example.org", Some(s.company_b), None, "r2")?,
            // Another tenant's company does not exist here.
            s.pending(s.a, "two@example.org", Some(s.company_b), None, "r3")?,
            s.pending(s.a, "gone@example.org", None, None, "r4")?,
            // The first creation of an address in the group takes it.
            s.pending(s.a, "one@example.org", None, None, "r5")?,
            s.pending(s.a, "gone@example.org", None, Some("consent_renewed"), "r6")?,
            s.pending(s.b, "three@example.org", None, None, "r7")?,
        ];
        let results = together(&s.db, &group)
            .await?
            .ok_or_else(|| DomainError::Internal("the group was refused".into()))?;
        let codes: Vec<&str> = results.iter().map(code).collect();
        assert_eq!(
            codes,
            [
                "created",
                "created",
                "unknown_company",
                "email_suppressed",
                "email_taken",
                "created",
                "created"
            ]
        );
        assert_eq!(s.contacts().await?, 4);
        for (p, result) in group.iter().zip(&results) {
            if let Ok(c) = result {
                assert_eq!(c.id, p.row.contact.id);
            }
        }
        let entries = crate::entities::audit_event::Entity::find()
            .filter(crate::entities::audit_event::Column::Action.eq("contact.created"))
            .all(&s.db)
            .await?;
        let requests: HashSet<Option<String>> =
            entries.iter().map(|e| e.request_id.clone()).collect();
        let want: HashSet<Option<String>> = ["r1", "r2", "r6", "r7"]
            .into_iter()
            .map(|r| Some(r.to_owned()))
            .collect();
        assert_eq!(requests, want);
        let overridden = entries
            .iter()
            .find(|e| e.request_id.as_deref() == Some("r6"))
            .and_then(|e| e.details.clone());
        assert_eq!(
            overridden,
            Some(serde_json::json!({"suppression_overridden": true, "reason": "consent_renewed"}))
        );
        let (_, breaks) = audit::verify_chain(&s.db).await?;
        assert!(breaks.is_empty(), "{breaks:?}");
        for (t, n) in [(s.a, 2), (s.b, 2)] {
            let seqs: Vec<i64> = event::Entity::find()
                .filter(event::Column::TenantId.eq(t.id().as_uuid()))
                .all(&s.db)
                .await?
                .into_iter()
                .map(|e| e.seq)
                .collect();
            assert_eq!(seqs, (1..=n).collect::<Vec<i64>>());
        }
        s.done().await;
        Ok(())
    }

    /// An address another contact holds makes the database refuse the group's insert (a group
    /// does not read contacts first): nothing of the group stays, and written one by one, only
    /// that creation fails.
    #[tokio::test]
    async fn a_refused_group_is_rolled_back_and_written_one_by_one() -> DomainResult<()> {
        let s = Setup::new().await?;
        s.pending(s.a, "taken@example.org", None, None, "r0")?
            .create_alone(&s.db)
            .await?;
        let group = || -> DomainResult<Vec<Pending>> {
            Ok(vec![
                s.pending(s.a, "new@example.org", None, None, "r1")?,
                s.pending(s.a, "taken@example.org", None, None, "r2")?,
                s.pending(s.b, "taken@example.org", None, None, "r3")?,
            ])
        };
        assert!(together(&s.db, &group()?).await?.is_none());
        assert_eq!(s.contacts().await?, 1, "the refused group left nothing");

        let mut answers = Vec::new();
        let queued = group()?
            .into_iter()
            .map(|pending| {
                let (answer, answered) = oneshot::channel();
                answers.push(answered);
                Queued { pending, answer }
            })
            .collect();
        write_group(&s.db, queued).await;
        let mut codes = Vec::new();
        for answered in answers {
            let result = answered
                .await
                .map_err(|e| DomainError::Internal(e.to_string()))?;
            codes.push(code(&result));
        }
        assert_eq!(codes, ["created", "email_taken", "created"]);
        assert_eq!(s.contacts().await?, 3);
        let (_, breaks) = audit::verify_chain(&s.db).await?;
        assert!(breaks.is_empty(), "{breaks:?}");
        s.done().await;
        Ok(())
    }

    /// Many creations at once through the queue: each is answered, and what was answered as
    /// created is what the database holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creations_are_queued_and_each_answered() -> DomainResult<()> {
        let s = Setup::new().await?;
        let mut tasks = Vec::new();
        for k in 0..60 {
            // Every tenth address repeats the one before: one of the two is taken.
            let email = format!("p{}@example.org", k - usize::from(k % 10 == 9));
            let pending = s.pending(s.a, &email, None, None, &format!("r{k}"))?;
            let db = s.db.clone();
            tasks.push(tokio::spawn(async move {
                match create(&db, pending).await {
                    Ok(result) => result,
                    Err(_) => Err(DomainError::Internal("not queued".into())),
                }
            }));
        }
        let mut created = 0;
        let mut taken = 0;
        for task in tasks {
            let result = task
                .await
                .map_err(|e| DomainError::Internal(e.to_string()))?;
            match code(&result) {
                "created" => created += 1,
                "email_taken" => taken += 1,
                other => panic!("unexpected answer {other}: {result:?}"),
            }
        }
        assert_eq!((created, taken), (54, 6));
        assert_eq!(s.contacts().await?, 54);
        let (_, breaks) = audit::verify_chain(&s.db).await?;
        assert!(breaks.is_empty(), "{breaks:?}");
        let events = event::Entity::find().count(&s.db).await?;
        assert_eq!(events, 54);
        s.done().await;
        Ok(())
    }
}
