//! Contact creations on SQLite, grouped into shared transactions.
//!
//! SQLite writes one transaction at a time, and each statement of a transaction is a trip to
//! the connection's thread and back: two thread wake-ups. Written one by one, a creation held
//! the writer for ~12 such trips (begin, suppression check, insert, chain end, audit entry,
//! feed end, webhook endpoints, event, commit, the connection's return to its pool); under 32
//! concurrent requests on 2 cores the writer thread was busy a third of the time and waited
//! for wake-ups the rest (`perf sched`: ~20 µs of scheduling delay per wake-up).
//!
//! Creations wait in a queue per database file. A thread of its own per file (so that no
//! request worker's life, or shutdown, cuts a write short) takes what has queued up and writes
//! it in one transaction, with one statement per kind and tenant (companies, suppressed
//! addresses, addresses taken, contacts, audit entries, events), then answers each request
//! with its own result. Every creation gets the checks and errors of the one-by-one path, in
//! the same order; the transaction holds SQLite's write lock from its start, so what it reads
//! stays true until it commits. Should the database still refuse the grouped writes, or a
//! statement fail, the transaction is rolled back and each creation is written alone, so each
//! gets its own answer. When the transaction cannot begin or commit, every creation of the
//! group gets that error (one by one would wait for the same lock once per creation).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect,
};
use tokio::sync::{Notify, oneshot};

use super::{Contact, NewRow, admit, email_taken, unknown_company};
use crate::audit::{self, Actor, Entry, Event};
use crate::db::{self, one_of};
use crate::entities::contact;
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

/// The creations waiting for a database file, and its writer's wake-up.
#[derive(Default)]
struct Queue {
    waiting: Mutex<Vec<Queued>>,
    /// Notified after each push: a notification that finds the writer busy is kept for it.
    wake: Notify,
    /// The largest group written so far (tests check that creations were grouped).
    #[cfg(test)]
    largest: std::sync::atomic::AtomicUsize,
}

static QUEUES: LazyLock<Mutex<HashMap<PathBuf, Arc<Queue>>>> = LazyLock::new(Default::default);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The queue of a database file; its writer thread starts with it and runs for the life of
/// the process, as the file's writer connection does.
fn queue_of(db: &DatabaseConnection, file: &Path) -> std::io::Result<Arc<Queue>> {
    let mut queues = lock(&QUEUES);
    if let Some(queue) = queues.get(file) {
        return Ok(queue.clone());
    }
    let queue = Arc::new(Queue::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (db, writer) = (db.clone(), queue.clone());
    std::thread::Builder::new()
        .name("crm-grouped-writes".into())
        .spawn(move || runtime.block_on(write_queue(db, writer)))?;
    queues.insert(file.to_path_buf(), queue.clone());
    Ok(queue)
}

/// Creates the contact with whatever else is queued for the same database file. `Err` gives
/// the creation back when `db` has no writer connection of its own (PostgreSQL, where
/// transactions run side by side, or an in-memory SQLite database).
pub(super) async fn create(
    db: &DatabaseConnection,
    pending: Pending,
) -> Result<DomainResult<Contact>, Pending> {
    let queue = match db::with_sqlite_writer_file(db, |file| queue_of(db, file)) {
        Some(Ok(queue)) => queue,
        Some(Err(e)) => {
            log::warn!("no thread for grouped contact creations ({e}); one by one");
            return Err(pending);
        }
        None => return Err(pending),
    };
    let (answer, answered) = oneshot::channel();
    lock(&queue.waiting).push(Queued { pending, answer });
    queue.wake.notify_one();
    // Once queued, a creation is written even when its request has gone (a client that
    // disconnected): the writer thread does not depend on the request.
    Ok(answered.await.unwrap_or_else(|_| {
        Err(DomainError::Internal(
            "the grouped write stopped before it answered".into(),
        ))
    }))
}

/// The writer thread's loop: writes the queue's creations a group at a time.
async fn write_queue(db: DatabaseConnection, queue: Arc<Queue>) {
    loop {
        let group: Vec<Queued> = {
            let mut waiting = lock(&queue.waiting);
            let n = waiting.len().min(MAX_GROUP);
            waiting.drain(..n).collect()
        };
        if group.is_empty() {
            queue.wake.notified().await;
            continue;
        }
        #[cfg(test)]
        queue
            .largest
            .fetch_max(group.len(), std::sync::atomic::Ordering::Relaxed);
        // A task per group: should one panic, its requests get an error (their answers are
        // dropped) and the thread goes on with the next group.
        if let Err(e) = tokio::spawn(write_group(db.clone(), group)).await {
            log::error!("a grouped write of contact creations stopped: {e}");
        }
    }
}

/// What became of a group's transaction.
enum Outcome {
    /// Committed: each creation's result.
    Written(Vec<DomainResult<Contact>>),
    /// Rolled back; written one by one, each creation gets its own answer.
    Refused,
    /// The transaction could not begin or commit: nothing of the group was written.
    Failed(DomainError),
}

async fn write_group(db: DatabaseConnection, group: Vec<Queued>) {
    let (pending, answers): (Vec<Pending>, Vec<_>) =
        group.into_iter().map(|q| (q.pending, q.answer)).unzip();
    match together(&db, &pending).await {
        Outcome::Written(results) => {
            for (result, answer) in results.into_iter().zip(answers) {
                // A request that went away no longer waits for its answer.
                let _ = answer.send(result);
            }
        }
        Outcome::Refused => {
            for (p, answer) in pending.into_iter().zip(answers) {
                let _ = answer.send(p.create_alone(&db).await);
            }
        }
        Outcome::Failed(e) => {
            log::error!(
                "a grouped write of {} contact creations failed: {e:?}",
                pending.len()
            );
            for answer in answers {
                let _ = answer.send(Err(DomainError::Internal(format!(
                    "the grouped write failed: {e}"
                ))));
            }
        }
    }
}

/// Writes the group in one transaction.
async fn together(db: &DatabaseConnection, pending: &[Pending]) -> Outcome {
    let txn = match db::begin_write(db).await {
        Ok(txn) => txn,
        Err(e) => return Outcome::Failed(e.into()),
    };
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
        let out = match write_tenant(&txn, tenant, &mine).await {
            Ok(Some(out)) => out,
            refused => {
                if let Err(e) = refused {
                    log::warn!("a grouped write of contact creations failed ({e}); one by one");
                }
                return match txn.rollback().await {
                    Ok(()) => Outcome::Refused,
                    Err(e) => Outcome::Failed(e.into()),
                };
            }
        };
        for (k, result) in members.into_iter().zip(out) {
            results[k] = Some(result);
        }
    }
    if let Err(e) = txn.commit().await {
        return Outcome::Failed(e.into());
    }
    Outcome::Written(
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(DomainError::Internal("not written".into()))))
            .collect(),
    )
}

/// One tenant's creations of the group, in order: `None` when the database refused them.
async fn write_tenant(
    txn: &impl ConnectionTrait,
    tenant: Tenant,
    pending: &[&Pending],
) -> DomainResult<Option<Vec<DomainResult<Contact>>>> {
    let companies = crate::companies::existing_companies(
        txn,
        &tenant,
        pending
            .iter()
            .filter_map(|p| p.row.contact.company_id.map(|c| c.as_uuid())),
    )
    .await?;
    // An address's blind index is also its suppression digest.
    let indexes: HashSet<&str> = pending
        .iter()
        .filter_map(|p| p.row.index.as_deref())
        .collect();
    let listed = || indexes.iter().map(|i| (*i).to_owned());
    let suppressed = crate::suppression::suppressed_among(txn, tenant.id(), listed()).await?;
    let held: HashSet<String> = if indexes.is_empty() {
        HashSet::new()
    } else {
        contact::Entity::find()
            .select_only()
            .column(contact::Column::EmailIndex)
            .filter(contact::Column::TenantId.eq(tenant.id().as_uuid()))
            .filter(one_of(
                txn.get_database_backend(),
                contact::Column::EmailIndex,
                listed(),
            ))
            .into_tuple::<String>()
            .all(txn)
            .await?
            .into_iter()
            .collect()
    };
    // The checks of `NewRow::insert`, in its order; an address is taken when a contact holds
    // it or an earlier creation of the group takes it.
    let mut taken: HashSet<&str> = HashSet::new();
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
                        if !held.contains(index) && taken.insert(index) {
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
    if !super::bulk::write_contacts(txn, Vec::new(), rows).await? {
        return Ok(None);
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
    use crate::entities::{contact, event};
    use crate::ids::CompanyId;
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
                let id = crate::tenants::insert_for_test(&db, slug).await?;
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
    /// Contacts, audit entries and events stored.
    async fn counts(db: &DatabaseConnection) -> DomainResult<(u64, u64, u64)> {
        Ok((
            contact::Entity::find().count(db).await?,
            crate::entities::audit_event::Entity::find()
                .count(db)
                .await?,
            event::Entity::find().count(db).await?,
        ))
    }

    /// One transaction writes a group of two tenants' creations with the checks and errors of
    /// one-by-one creation; each entry is audited with its own actor, request and time, and
    /// each tenant's chain and change feed stay whole and in order.
    #[tokio::test]
    async fn a_group_is_written_in_one_transaction_with_each_creations_own_answer()
    -> DomainResult<()> {
        let s = Setup::new().await?;
        s.suppress(s.a, "gone@example.org").await?;
        s.pending(s.a, "held@example.org", None, None, "r0")?
            .create_alone(&s.db)
            .await?;
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
            s.pending(s.a, "held@example.org", None, None, "r8")?,
            // Held in the other tenant only.
            s.pending(s.b, "held@example.org", None, None, "r9")?,
        ];
        let Outcome::Written(results) = together(&s.db, &group).await else {
            panic!("the group was not written");
        };
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
                "created",
                "email_taken",
                "created"
            ]
        );
        assert_eq!(s.contacts().await?, 6);
        let entries = crate::entities::audit_event::Entity::find()
            .filter(crate::entities::audit_event::Column::Action.eq("contact.created"))
            .all(&s.db)
            .await?;
        assert_eq!(entries.len(), 6);
        for (p, result) in group.iter().zip(&results) {
            let Ok(c) = result else { continue };
            assert_eq!(c.id, p.row.contact.id);
            // Its own entry: its actor, its request, its time.
            let entry = entries
                .iter()
                .find(|e| e.object_id == Some(c.id.as_uuid()))
                .ok_or_else(|| DomainError::Internal("no audit entry".into()))?;
            assert_eq!(entry.tenant_id, p.tenant.id().as_uuid());
            assert_eq!(entry.actor_id, p.actor.actor_id);
            assert_eq!(entry.request_id, p.actor.request_id);
            assert_eq!(entry.occurred_at, p.now);
            let stored = contact::Entity::find_by_id(c.id.as_uuid())
                .one(&s.db)
                .await?
                .ok_or_else(|| DomainError::Internal("no contact".into()))?;
            assert_eq!(stored.tenant_id, p.tenant.id().as_uuid());
            assert_eq!(stored.email_index, p.row.index);
        }
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
        for (t, n) in [(s.a, 3), (s.b, 3)] {
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

    /// When the database refuses a write of the group (here a contact id that exists, which
    /// no check foresees), the whole transaction is rolled back — also what the group had
    /// written for another tenant before — and the creations written one by one each get
    /// their own answer.
    #[tokio::test]
    async fn a_refused_group_is_rolled_back_and_written_one_by_one() -> DomainResult<()> {
        let s = Setup::new().await?;
        let existing = s
            .pending(s.a, "first@example.org", None, None, "r0")?
            .create_alone(&s.db)
            .await?;
        let group = || -> DomainResult<Vec<Pending>> {
            let mut clash = s.pending(s.a, "clash@example.org", None, None, "r3")?;
            clash.row.row.id = sea_orm::ActiveValue::Set(existing.id.as_uuid());
            Ok(vec![
                s.pending(s.b, "new@example.org", None, None, "r1")?,
                s.pending(s.a, "new@example.org", None, None, "r2")?,
                clash,
            ])
        };
        let before = counts(&s.db).await?;
        assert!(matches!(together(&s.db, &group()?).await, Outcome::Refused));
        assert_eq!(
            counts(&s.db).await?,
            before,
            "the refused group left nothing"
        );

        let mut answers = Vec::new();
        let queued = group()?
            .into_iter()
            .map(|pending| {
                let (answer, answered) = oneshot::channel();
                answers.push(answered);
                Queued { pending, answer }
            })
            .collect();
        write_group(s.db.clone(), queued).await;
        let mut codes = Vec::new();
        for answered in answers {
            let result = answered
                .await
                .map_err(|e| DomainError::Internal(e.to_string()))?;
            codes.push(code(&result));
        }
        // The one-by-one path reports any unique key it meets as a taken address.
        assert_eq!(codes, ["created", "created", "email_taken"]);
        assert_eq!(s.contacts().await?, 3);
        let (_, breaks) = audit::verify_chain(&s.db).await?;
        assert!(breaks.is_empty(), "{breaks:?}");
        s.done().await;
        Ok(())
    }

    /// Creations that arrive while the writer is busy wait in the queue and are written as
    /// one group; each is answered, and what was answered as created is what the database
    /// holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creations_that_arrive_together_are_written_as_a_group() -> DomainResult<()> {
        use std::future::Future;
        let s = Setup::new().await?;
        // Another write holds the writer turn while the creations arrive.
        let turn = db::write_turn(&s.db).await?;
        let mut creations = Vec::new();
        for k in 0..60usize {
            // Every tenth address repeats the one before: one of the two is taken.
            let email = format!("p{}@example.org", k - usize::from(k % 10 == 9));
            let pending = s.pending(s.a, &email, None, None, &format!("r{k}"))?;
            creations.push(Box::pin(create(&s.db, pending)));
        }
        // A first poll queues each creation; none can be answered while the turn is held.
        std::future::poll_fn(|cx| {
            for c in creations.iter_mut() {
                assert!(c.as_mut().poll(cx).is_pending());
            }
            std::task::Poll::Ready(())
        })
        .await;
        drop(turn);
        let (mut created, mut taken) = (0, 0);
        for c in creations {
            let result = match c.await {
                Ok(result) => result,
                Err(_) => panic!("the creation was not queued"),
            };
            match code(&result) {
                "created" => created += 1,
                "email_taken" => taken += 1,
                other => panic!("unexpected answer {other}: {result:?}"),
            }
        }
        assert_eq!((created, taken), (54, 6));
        let queue = db::with_sqlite_writer_file(&s.db, |file| queue_of(&s.db, file))
            .ok_or_else(|| DomainError::Internal("no queue".into()))?
            .map_err(|e| DomainError::Internal(e.to_string()))?;
        // The writer took at most part of them before the turn was free; the rest waited.
        assert!(
            queue.largest.load(std::sync::atomic::Ordering::Relaxed) >= 30,
            "grouped"
        );
        let (contacts, entries, events) = counts(&s.db).await?;
        // The audit chain also holds the set-up's two companies.
        assert_eq!((contacts, entries, events), (54, 56, 54));
        let (_, breaks) = audit::verify_chain(&s.db).await?;
        assert!(breaks.is_empty(), "{breaks:?}");
        s.done().await;
        Ok(())
    }
}
