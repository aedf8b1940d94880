//! The audit trail: append-only, hash-chained per tenant, ids and actions only — never
//! personal values. Every change and every GDPR action writes an entry in the same
//! transaction as the change; `verify_chain` detects an altered, inserted or deleted entry.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait, Query, SubQueryStatement};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::entities::audit_event;
use crate::error::DomainResult;
use crate::ids::TenantId;
use crate::pagination::{Page, PageRequest};
use crate::tenancy::{Principal, Tenant};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did something, and in which request.
#[derive(Clone, Debug)]
pub struct Actor {
    /// The user's or integration client's id.
    pub actor_id: Option<Uuid>,
    /// `user`, `client`, `system` (scheduled jobs) or `cli`.
    pub kind: &'static str,
    pub request_id: Option<String>,
}

impl Actor {
    pub fn user(principal: &Principal, request_id: Option<String>) -> Self {
        Actor {
            actor_id: Some(principal.user_id.as_uuid()),
            kind: "user",
            request_id,
        }
    }

    pub fn client(client_id: Uuid, request_id: Option<String>) -> Self {
        Actor {
            actor_id: Some(client_id),
            kind: "client",
            request_id,
        }
    }

    pub fn system() -> Self {
        Actor {
            actor_id: None,
            kind: "system",
            request_id: None,
        }
    }
}

/// One thing that happened to one object.
pub struct Event<'a> {
    pub action: &'a str,
    pub object_type: &'a str,
    pub object_id: Option<Uuid>,
    /// Ids and codes only.
    pub details: Option<Value>,
}

#[derive(Clone, Debug)]
pub struct AuditRecord {
    pub id: Uuid,
    pub seq: i64,
    pub occurred_at: DateTime<Utc>,
    pub actor_id: Option<Uuid>,
    pub actor_kind: String,
    pub action: String,
    pub object_type: String,
    pub object_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub details: Option<Value>,
    pub hash: String,
}

fn digest(prev_hash: &str, m: &audit_event::Model) -> String {
    let fields = [
        prev_hash.to_owned(),
        m.id.to_string(),
        m.tenant_id.to_string(),
        m.seq.to_string(),
        m.occurred_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        m.actor_id.map(|a| a.to_string()).unwrap_or_default(),
        m.actor_kind.clone(),
        m.action.clone(),
        m.object_type.clone(),
        m.object_id.map(|a| a.to_string()).unwrap_or_default(),
        m.request_id.clone().unwrap_or_default(),
        m.details.as_ref().map(Value::to_string).unwrap_or_default(),
    ];
    let mut h = Sha256::new();
    for f in fields {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    crate::secrets::hex(&h.finalize())
}

/// Proof that the transaction holds the tenant's chain lock (which also orders the tenant's
/// change feed): appends that follow need not take it again.
#[derive(Debug)]
pub struct ChainLock {
    pub(crate) tenant: TenantId,
}

/// Serialises appends per tenant on PostgreSQL (SQLite write transactions are serial already).
pub(crate) async fn lock_chain(
    db: &impl ConnectionTrait,
    tenant: TenantId,
) -> DomainResult<ChainLock> {
    if db.get_database_backend() == DbBackend::Postgres {
        let bytes = tenant.as_uuid().into_bytes();
        let mut key = [0u8; 8];
        key.copy_from_slice(&bytes[8..16]);
        db.query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [i64::from_be_bytes(key).into()],
        ))
        .await?;
    }
    Ok(ChainLock { tenant })
}

/// Appends an entry to the tenant's chain. Call inside the transaction of the change.
pub async fn record(
    db: &impl ConnectionTrait,
    tenant: TenantId,
    actor: &Actor,
    event: Event<'_>,
    now: DateTime<Utc>,
) -> DomainResult<ChainLock> {
    record_many(db, tenant, actor, [event], now).await
}

/// The end of a tenant's chain: its last entry's number and hash. A fixed statement (every
/// write runs it): building it with sea-query cost more than running it on SQLite.
const CHAIN_END_SQL: &str =
    "SELECT seq, hash FROM audit_events WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1";

/// Appends several entries to the tenant's chain in order, with one read of the chain's end
/// and one insert (bulk writes). Call inside the transaction of the changes.
pub async fn record_many<'a>(
    db: &impl ConnectionTrait,
    tenant: TenantId,
    actor: &Actor,
    events: impl IntoIterator<Item = Event<'a>>,
    now: DateTime<Utc>,
) -> DomainResult<ChainLock> {
    // Collected: a `Map` over a closure held across the `await` would keep the futures of
    // callers from being `Send` for every lifetime (`tokio::spawn` of grouped writes).
    let entries: Vec<Entry<'_>> = events
        .into_iter()
        .map(|event| Entry {
            actor,
            event,
            at: now,
        })
        .collect();
    record_each(db, tenant, entries).await
}

/// One entry of [`record_each`]: what was done, by whom and when.
pub(crate) struct Entry<'a> {
    pub actor: &'a Actor,
    pub event: Event<'a>,
    pub at: DateTime<Utc>,
}

/// [`record_many`] for entries of several requests (grouped writes): each has its own actor
/// and time.
pub(crate) async fn record_each<'a>(
    db: &impl ConnectionTrait,
    tenant: TenantId,
    entries: impl IntoIterator<Item = Entry<'a>>,
) -> DomainResult<ChainLock> {
    let lock = lock_chain(db, tenant).await?;
    let mut entries = entries.into_iter().peekable();
    if entries.peek().is_none() {
        return Ok(lock);
    }
    let last = crate::db::fixed_one_in(
        db,
        CHAIN_END_SQL,
        &[crate::db::Param::Uuid(tenant.as_uuid())],
    )
    .await?;
    let (mut seq, mut prev_hash) = match last {
        Some(row) => (row.try_get_by_index(0)?, row.try_get_by_index(1)?),
        None => (0, GENESIS.to_owned()),
    };
    let mut rows = Vec::new();
    for Entry { actor, event, at } in entries {
        seq += 1;
        let mut model = audit_event::Model {
            id: Uuid::now_v7(),
            tenant_id: tenant.as_uuid(),
            seq,
            occurred_at: at,
            actor_id: actor.actor_id,
            actor_kind: actor.kind.to_owned(),
            action: event.action.to_owned(),
            object_type: event.object_type.to_owned(),
            object_id: event.object_id,
            request_id: actor.request_id.clone(),
            // A JSON null is stored as no details (PostgreSQL's JSON rows make it NULL), so
            // the digest is over what is read back.
            details: event.details.filter(|d| !d.is_null()),
            prev_hash: std::mem::take(&mut prev_hash),
            hash: String::new(),
        };
        model.hash = digest(&model.prev_hash, &model);
        prev_hash.clone_from(&model.hash);
        rows.push(audit_event::ActiveModel {
            id: Set(model.id),
            tenant_id: Set(model.tenant_id),
            seq: Set(model.seq),
            occurred_at: Set(model.occurred_at),
            actor_id: Set(model.actor_id),
            actor_kind: Set(model.actor_kind),
            action: Set(model.action),
            object_type: Set(model.object_type),
            object_id: Set(model.object_id),
            request_id: Set(model.request_id),
            details: Set(model.details),
            prev_hash: Set(model.prev_hash),
            hash: Set(model.hash),
        });
    }
    crate::db::insert_rows(db, rows, None).await?;
    Ok(lock)
}

fn to_record(m: audit_event::Model) -> AuditRecord {
    AuditRecord {
        id: m.id,
        seq: m.seq,
        occurred_at: m.occurred_at,
        actor_id: m.actor_id,
        actor_kind: m.actor_kind,
        action: m.action,
        object_type: m.object_type,
        object_id: m.object_id,
        request_id: m.request_id,
        details: m.details,
        hash: m.hash,
    }
}

#[derive(Debug, Default)]
pub struct AuditFilter {
    pub object_id: Option<Uuid>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

pub async fn list(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    filter: AuditFilter,
    page: PageRequest,
) -> DomainResult<Page<AuditRecord>> {
    let rows = list_query(tenant, filter, page).all(db).await?;
    Ok(Page::from_rows(rows, page.limit, |r| r.id).map(to_record))
}

/// The statement of a page of [`list`], in chain order: every filter has an index that ends in
/// `seq`, so a page is a range read whatever the planner's statistics say.
fn list_query(
    tenant: &Tenant,
    filter: AuditFilter,
    page: PageRequest,
) -> sea_orm::Select<audit_event::Entity> {
    let tenant_id = tenant.id().as_uuid();
    let mut q = audit_event::Entity::find()
        .filter(audit_event::Column::TenantId.eq(tenant_id))
        .order_by_asc(audit_event::Column::Seq);
    if let Some(after) = page.after {
        // The cursor is the id of the previous page's last entry (as on every list); the page
        // goes on after its place in the chain. Another tenant's id has none: an empty page.
        let place = Query::select()
            .column(audit_event::Column::Seq)
            .from(audit_event::Entity)
            .and_where(audit_event::Column::TenantId.eq(tenant_id))
            .and_where(audit_event::Column::Id.eq(after))
            .to_owned();
        q = q.filter(
            Expr::col((audit_event::Entity, audit_event::Column::Seq))
                .gt(SubQueryStatement::from(place)),
        );
    }
    if let Some(object) = filter.object_id {
        q = q.filter(audit_event::Column::ObjectId.eq(object));
    }
    if let Some(action) = filter.action {
        q = q.filter(audit_event::Column::Action.eq(action));
    }
    if let Some(since) = filter.since {
        q = q.filter(audit_event::Column::OccurredAt.gte(since));
    }
    q.limit(page.limit + 1)
}

/// All entries about one object, oldest first (for exports).
pub async fn for_object(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    object_id: Uuid,
) -> DomainResult<Vec<AuditRecord>> {
    Ok(for_object_query(tenant, object_id)
        .all(db)
        .await?
        .into_iter()
        .map(to_record)
        .collect())
}

fn for_object_query(tenant: &Tenant, object_id: Uuid) -> sea_orm::Select<audit_event::Entity> {
    audit_event::Entity::find()
        .filter(audit_event::Column::TenantId.eq(tenant.id().as_uuid()))
        .filter(audit_event::Column::ObjectId.eq(object_id))
        .order_by_asc(audit_event::Column::Seq)
}

/// A break in a tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub tenant_id: Uuid,
    /// The sequence number where the chain stops holding.
    pub seq: i64,
    pub reason: &'static str,
}

/// Recomputes every tenant's chain; returns the number of entries checked and every break.
pub async fn verify_chain(db: &impl ConnectionTrait) -> DomainResult<(u64, Vec<ChainBreak>)> {
    let rows = audit_event::Entity::find()
        .order_by_asc(audit_event::Column::TenantId)
        .order_by_asc(audit_event::Column::Seq)
        .all(db)
        .await?;
    let mut breaks = Vec::new();
    let mut checked = 0;
    let mut current: Option<(Uuid, i64, String)> = None;
    for m in rows {
        checked += 1;
        let (expected_seq, prev) = match &current {
            Some((t, seq, hash)) if *t == m.tenant_id => (seq + 1, hash.clone()),
            _ => (1, GENESIS.to_owned()),
        };
        if m.seq != expected_seq {
            breaks.push(ChainBreak {
                tenant_id: m.tenant_id,
                seq: m.seq,
                reason: "missing_entry",
            });
        } else if m.prev_hash != prev {
            breaks.push(ChainBreak {
                tenant_id: m.tenant_id,
                seq: m.seq,
                reason: "broken_link",
            });
        } else if digest(&prev, &m) != m.hash {
            breaks.push(ChainBreak {
                tenant_id: m.tenant_id,
                seq: m.seq,
                reason: "altered_entry",
            });
        }
        current = Some((m.tenant_id, m.seq, m.hash.clone()));
    }
    Ok((checked, breaks))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use crm_migration::{Migrator, MigratorTrait};
    use sea_orm::QueryTrait;

    use super::*;
    use crate::pagination::PageRequest;

    /// What SQLite's planner does with `select`: one detail per step.
    async fn plan(
        db: &impl ConnectionTrait,
        select: sea_orm::Select<audit_event::Entity>,
    ) -> DomainResult<Vec<String>> {
        let mut statement = select.build(DbBackend::Sqlite);
        statement.sql = format!("EXPLAIN QUERY PLAN {}", statement.sql);
        let mut steps = Vec::new();
        for row in db.query_all_raw(statement).await? {
            steps.push(row.try_get_by_index::<String>(3)?);
        }
        Ok(steps)
    }

    /// Every read of the audit trail (a page with each filter, a page after a cursor, the
    /// entries about a subject for an export) is a range of an index in chain order on
    /// SQLite: no scan of the log, no sort. Also when the planner's statistics were taken
    /// while the log was nearly empty, as they are on a database analysed when it was new: a
    /// page about one object once walked the whole log (~55 ms at 400,000 entries).
    #[tokio::test]
    async fn audit_reads_are_index_ranges_in_chain_order_on_sqlite() -> DomainResult<()> {
        let path = std::env::temp_dir().join(format!("crm-audit-{}.db", Uuid::now_v7()));
        let db = crate::db::connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
        Migrator::up(&db, None).await?;
        let now = Utc::now();
        let id = crate::tenants::insert_for_test(&db, "a").await?;
        let t = Tenant::scoped(id);
        let objects: Vec<Uuid> = (0..200).map(|_| Uuid::now_v7()).collect();
        let actions = ["contact.created", "contact.updated", "contact.exported"];
        let entries = |range: std::ops::Range<usize>| -> Vec<Event<'static>> {
            range
                .map(|i| Event {
                    action: actions[i % 3],
                    object_type: "contact",
                    object_id: Some(objects[i % objects.len()]),
                    details: None,
                })
                .collect()
        };
        record_many(&db, id, &Actor::system(), entries(0..3), now).await?;
        db.execute_unprepared("ANALYZE").await?;
        record_many(&db, id, &Actor::system(), entries(3..2_000), now).await?;

        let object = objects[7];
        let filter = |object_id: Option<Uuid>, action: Option<&str>| AuditFilter {
            object_id,
            action: action.map(str::to_owned),
            since: None,
        };
        // The object's entries get ids that run against the chain (the oldest the largest):
        // its pages must follow `seq` all the same.
        let mine = for_object_query(&t, object).all(&db).await?;
        let fresh: Vec<Uuid> = mine.iter().map(|_| Uuid::now_v7()).collect();
        for (entry, new_id) in mine.iter().zip(fresh.iter().rev()) {
            audit_event::Entity::update_many()
                .col_expr(audit_event::Column::Id, Expr::value(*new_id))
                .filter(audit_event::Column::Id.eq(entry.id))
                .exec(&db)
                .await?;
        }
        let first = PageRequest::first(50);
        let about = list(&db, &t, filter(Some(object), None), first).await?.data;
        assert_eq!(about.len(), 10, "2,000 entries over 200 objects");
        let after = PageRequest {
            limit: 50,
            after: Some(about[3].id),
        };
        // Each read, and the columns it may search on beside the tenant (one of them): walking
        // the tenant's whole log in `seq` order and filtering is a search too, but not a range.
        let reads: [(&str, sea_orm::Select<audit_event::Entity>, &[&str]); 6] = [
            (
                "everything",
                list_query(&t, filter(None, None), first),
                &["tenant_id=?"],
            ),
            (
                "by object",
                list_query(&t, filter(Some(object), None), first),
                &["object_id=?"],
            ),
            (
                "by action",
                list_query(&t, filter(None, Some("contact.exported")), first),
                &["action=?"],
            ),
            (
                "by object and action",
                list_query(&t, filter(Some(object), Some("contact.updated")), first),
                &["object_id=?", "action=?"],
            ),
            (
                "by object, after a cursor",
                list_query(&t, filter(Some(object), None), after),
                &["object_id=? AND seq>?"],
            ),
            (
                "for an export",
                for_object_query(&t, object),
                &["object_id=?"],
            ),
        ];
        for (what, select, searched) in reads {
            let steps = plan(&db, select).await?;
            assert!(
                steps
                    .iter()
                    .all(|s| !s.starts_with("SCAN") && !s.contains("TEMP B-TREE")),
                "{what}: {steps:?}"
            );
            let log = steps
                .iter()
                .find(|s| s.starts_with("SEARCH audit_events") && !s.contains("(id=?)"))
                .unwrap_or_else(|| panic!("{what}: {steps:?}"));
            assert!(searched.iter().any(|c| log.contains(c)), "{what}: {log}");
        }

        // The pages are the entries of the chain in its order.
        let seqs: Vec<i64> = about.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (0..10).map(|k| 8 + k * 200).collect::<Vec<_>>());
        let rest = list(&db, &t, filter(Some(object), None), after).await?.data;
        assert_eq!(
            rest.iter().map(|e| e.seq).collect::<Vec<_>>(),
            seqs[4..].to_vec()
        );
        drop(db);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        Ok(())
    }
}
