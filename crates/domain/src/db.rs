//! Connecting to SQLite (the embedded default) or PostgreSQL, and write transactions.

use std::time::Duration;

use sea_orm::{
    ActiveModelTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use sea_orm::DatabaseConnection as Db;

/// A value bound to a [`fixed_one`] or [`fixed_all`] statement.
#[derive(Clone, Copy)]
pub(crate) enum Param<'a> {
    Uuid(uuid::Uuid),
    Time(chrono::DateTime<chrono::Utc>),
    Bool(bool),
    Int(i64),
    Text(&'a str),
}

impl From<Param<'_>> for sea_orm::Value {
    fn from(p: Param<'_>) -> Self {
        match p {
            Param::Uuid(u) => u.into(),
            Param::Time(t) => t.into(),
            Param::Bool(b) => b.into(),
            Param::Int(i) => i.into(),
            Param::Text(t) => t.into(),
        }
    }
}

/// A sqlx query with [`Param`]s bound.
macro_rules! bound {
    ($query:expr, $params:expr) => {{
        let mut q = $query;
        for p in $params {
            q = match *p {
                Param::Uuid(u) => q.bind(u),
                Param::Time(t) => q.bind(t),
                Param::Bool(b) => q.bind(b),
                Param::Int(i) => q.bind(i),
                Param::Text(t) => q.bind(t),
            };
        }
        q
    }};
}

/// Runs `$run!(database, pool)` on the connection's sqlx pool.
macro_rules! on_pool {
    ($db:expr, $run:ident) => {{
        use sea_orm::DatabaseConnectionType as Kind;
        match &$db.inner {
            Kind::SqlxPostgresPoolConnection(_) => {
                $run!(sea_orm::sqlx::Postgres, $db.get_postgres_connection_pool())
            }
            Kind::SqlxSqlitePoolConnection(_) => {
                $run!(sea_orm::sqlx::Sqlite, $db.get_sqlite_connection_pool())
            }
            // Only the two sqlx pools are built in; `Disconnected` is what is left.
            _ => Err(DbErr::Conn(sea_orm::RuntimeErr::Internal(
                "fixed statements need a PostgreSQL or SQLite pool".into(),
            ))),
        }
    }};
}

/// At most one row of a fixed statement, run on sqlx's pool under sea-orm.
///
/// For the statements every request runs (the session check, a contact by id). Through
/// sea-orm each call converts its values, moves a large future into a box of its own and
/// wraps the row; on a GET by id that was ~5 % of the API's CPU in a profile, a third of
/// what it spends beyond the minimal server's. The row comes back as sea-orm's `QueryResult`,
/// so decoding is the same on both paths. sqlx binds values exactly as sea-orm does (sea-orm
/// hands them to sqlx), and the pool's idle check and statement cache are the same.
pub(crate) async fn fixed_one(
    db: &DatabaseConnection,
    sql: &'static str,
    params: &[Param<'_>],
) -> Result<Option<sea_orm::QueryResult>, DbErr> {
    use sea_orm::sqlx;
    macro_rules! run {
        ($db:ty, $pool:expr) => {
            bound!(sqlx::query::<$db>(sql), params)
                .fetch_optional($pool)
                .await
                .map(|row| row.map(sea_orm::QueryResult::from))
                .map_err(sqlx_failed)
        };
    }
    on_pool!(db, run)
}

/// The rows of a statement built at run time from fixed parts (a list's filters), run on
/// sqlx's pool as [`fixed_one`]: sea-orm's path costs a boxed future and a copy of every row.
/// `sql` must come from fixed text and placeholders, never from input.
pub(crate) async fn fixed_all(
    db: &DatabaseConnection,
    sql: String,
    params: &[Param<'_>],
) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
    use sea_orm::sqlx;
    macro_rules! run {
        ($db:ty, $pool:expr) => {
            bound!(sqlx::query::<$db>(sqlx::AssertSqlSafe(sql)), params)
                .fetch_all($pool)
                .await
                .map(|rows| rows.into_iter().map(sea_orm::QueryResult::from).collect())
                .map_err(sqlx_failed)
        };
    }
    on_pool!(db, run)
}

/// A sqlx error as sea-orm reports it.
pub(crate) fn sqlx_failed(e: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Query(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(e)))
}

/// [`fixed_one`] on any connection (inside a transaction), through sea-orm.
pub(crate) async fn fixed_one_in(
    conn: &impl ConnectionTrait,
    sql: &'static str,
    params: &[Param<'_>],
) -> Result<Option<sea_orm::QueryResult>, DbErr> {
    let values = params.iter().map(|p| sea_orm::Value::from(*p));
    let stmt = sea_orm::Statement::from_sql_and_values(conn.get_database_backend(), sql, values);
    conn.query_one_raw(stmt).await
}

/// `column IN (values)`. On PostgreSQL it is `column = ANY($1)` with the values as one array
/// parameter: the statement's text is the same for any number of values (prepared once per
/// connection) and the server neither parses nor plans a parameter per value (for the 1,000
/// addresses of a bulk call, or the 1,000 orders of an export, that took milliseconds).
pub(crate) fn one_of<C, V>(
    backend: DbBackend,
    column: C,
    values: impl IntoIterator<Item = V>,
) -> sea_orm::sea_query::Expr
where
    C: sea_orm::ColumnTrait,
    V: Into<sea_orm::Value> + sea_orm::sea_query::postgres_array::NotU8,
{
    match backend {
        DbBackend::Postgres => column.eq_any(values),
        _ => column.is_in(values),
    }
}

/// A pooled connection idle this long is pinged before it is handed out.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(5);

/// PostgreSQL connections of each request worker's pool. A node serves requests with
/// `workers` × this many (one worker per core is the intent): a few per core keeps the cores busy
/// while statements wait on the network, and more only queue inside PostgreSQL. On 2 cores, 8
/// connections instead of 16 served the list page ~20 % faster with a p99 of 13–19 ms instead
/// of 22–28 ms at 32 concurrent requests (alternating rounds; the minimal server likewise).
pub const PG_WORKER_CONNECTIONS: u32 = 4;

/// At most this many PostgreSQL connections start a node and run its background jobs (each
/// job runs one statement or transaction at a time) and the command line's work.
const PG_SHARED_CONNECTIONS: u32 = 8;

/// Opens a pool. SQL statement logging is off: statements could carry personal values.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let max = if url.contains(":memory:") {
        1
    } else if url.starts_with("sqlite:") {
        4
    } else {
        PG_SHARED_CONNECTIONS
    };
    let db = Database::connect(options(url, max, "crm")).await?;
    if max > 1 && db.get_database_backend() == DbBackend::Sqlite {
        register_sqlite_writer(&db);
    }
    Ok(db)
}

/// The pool of one request worker thread. On PostgreSQL a worker gets its own pool
/// ([`PG_WORKER_CONNECTIONS`] connections, opened on first use), so each connection's
/// socket is registered with the event loop of the thread that uses it. A connection opened
/// on another thread (the start-up pool's, or the other worker's) has its readiness reported
/// by that thread's event loop, which then has to wake this one: a profile of GET by id
/// showed the main thread woken for every other request. SQLite connections run on their own
/// threads whichever pool they are in: the shared pool is kept (one writer queue, one
/// in-memory database in tests).
pub fn worker_pool(shared: &DatabaseConnection, url: &str) -> DatabaseConnection {
    if shared.get_database_backend() != DbBackend::Postgres {
        return shared.clone();
    }
    let mut opts = options(url, PG_WORKER_CONNECTIONS, "crm-worker");
    opts.connect_lazy(true);
    // A lazy pool opens nothing: the connector returns without waiting (it needs the
    // thread's runtime, which a worker has, for the pool's upkeep task).
    let mut connecting = std::pin::pin!(Database::connect(opts));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::future::Future::poll(connecting.as_mut(), &mut cx) {
        std::task::Poll::Ready(Ok(db)) => db,
        std::task::Poll::Ready(Err(e)) => {
            log::warn!("a worker's own pool could not be made ({e}); it uses the shared pool");
            shared.clone()
        }
        std::task::Poll::Pending => {
            log::warn!("a worker's own pool was not ready at once; it uses the shared pool");
            shared.clone()
        }
    }
}

/// Pool settings. `name` is the PostgreSQL `application_name` (`crm` for the pool that
/// starts the node and runs its background jobs, `crm-worker` for request workers), unless
/// the URL or the `PGAPPNAME` environment variable names one (then every pool has that name).
fn options(url: &str, max_connections: u32, name: &'static str) -> ConnectOptions {
    let sqlite = url.starts_with("sqlite:");
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings a pooled connection on every checkout by default: one more round trip
        // (PostgreSQL) or thread hop (SQLite) per statement, ~a fifth of a GET's CPU in a
        // profile. Only a connection idle for a while is checked now (what firewalls and
        // proxies drop); a busy connection that broke fails its statement once and is
        // replaced.
        .test_before_acquire_if_idle_for(PING_AFTER_IDLE)
        .max_connections(max_connections);
    if sqlite {
        // (sqlx's default, stated: the statistics below depend on it.)
        opts.max_lifetime(Duration::from_secs(30 * 60));
        opts.map_sqlx_sqlite_opts(|o| {
            o.foreign_keys(true)
                .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                // Deleted content is zeroed, not left in free pages (erasure).
                .pragma("secure_delete", "ON")
                // The planner's statistics (sqlite_stat1): SQLite's advice for long-lived
                // connections. A connection loads them when it opens and never again (an
                // ANALYZE on another connection does not reach it), so each one refreshes
                // those that went stale as it opens: any table with an index that has none,
                // or that grew or shrank 25-fold since (a row-count check per table, and a
                // time-limited ANALYZE of those). Pooled connections are replaced every
                // 30 minutes (sqlx's `max_lifetime`), the writer's every hour.
                .pragma("optimize", "0x10002")
        });
    } else {
        opts.map_sqlx_postgres_opts(move |o| {
            if o.get_application_name().is_some() {
                o
            } else {
                o.application_name(name)
            }
        });
    }
    opts
}

/// SQLite lets one transaction write at a time. A writer that finds the lock taken waits in
/// SQLite's busy handler, which sleeps 1, 2, 5, 10, … ms between tries: under load the lock
/// sat idle while every waiter slept (a contact creation's p99 under 32 connections was
/// 130–164 ms; with this queue ~30 ms). This process's writers queue here instead, one queue per
/// database file, in arrival order, before they take a connection (readers are not held up by
/// waiting writers). Writes from other processes on the same file still meet the busy handler.
static SQLITE_WRITERS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, SqliteWriter>>,
> = std::sync::LazyLock::new(Default::default);

/// How long the writer connection of a SQLite file serves before it is replaced.
const WRITER_LIFETIME: Duration = Duration::from_secs(3600);

/// This process's writers of one SQLite database file.
struct SqliteWriter {
    /// The writer turn: one holder at a time.
    turn: std::sync::Arc<Semaphore>,
    /// The one connection write transactions run on ([`connect`] opens it with the pool's
    /// settings, on first use). In WAL mode a connection drops its whole page cache when
    /// another connection has committed since its last read, so with writes spread over the
    /// pool's connections most transactions began by reading the b-tree pages they touch from
    /// the file again (~56 page reads per contact created; ~15 with one connection writing).
    /// `None` for a pool not opened by [`connect`]: its writes run on the pool.
    connection: Option<DatabaseConnection>,
}

impl SqliteWriter {
    fn new() -> Self {
        SqliteWriter {
            turn: std::sync::Arc::new(Semaphore::new(1)),
            connection: None,
        }
    }
}

/// Gives the database file of `db` (a SQLite pool of more than one connection) its writer
/// connection: a pool of one with the same settings, opened on first use and kept open (no idle
/// timeout: its page cache is the point) for an hour at a time, so it takes up the planner's
/// statistics as they are refreshed (see `options`). A later pool on the same file replaces it.
fn register_sqlite_writer(db: &DatabaseConnection) {
    use sea_orm::sqlx::sqlite::SqlitePoolOptions;
    let options = db.get_sqlite_connection_pool().connect_options();
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(WRITER_LIFETIME)
        // In-process: nothing between the pool and the database can drop the connection.
        .test_before_acquire(false)
        .acquire_timeout(WRITER_WAIT)
        .connect_lazy_with((*options).clone());
    let mut writers = SQLITE_WRITERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    writers
        .entry(options.get_filename().to_path_buf())
        .or_insert_with(SqliteWriter::new)
        .connection = Some(DatabaseConnection::from(pool));
}

/// The writer turn of the database file of `db` (`None` on PostgreSQL) and the connection its
/// write transactions run on.
fn sqlite_writer(
    db: &DatabaseConnection,
) -> Option<(std::sync::Arc<Semaphore>, Option<DatabaseConnection>)> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return None;
    }
    let options = db.get_sqlite_connection_pool().connect_options();
    let file = options.get_filename();
    let mut writers = SQLITE_WRITERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // The path is copied once per database, not per write.
    let writer = match writers.get(file) {
        Some(writer) => writer,
        None => writers
            .entry(file.to_path_buf())
            .or_insert_with(SqliteWriter::new),
    };
    Some((writer.turn.clone(), writer.connection.clone()))
}

/// Calls `f` with the database file of `db` when its write transactions run on a writer
/// connection of their own (a SQLite pool of several connections opened by [`connect`]):
/// writes to that file can be grouped into one transaction. `None` otherwise (PostgreSQL, an
/// in-memory database).
pub(crate) fn with_sqlite_writer_file<R>(
    db: &DatabaseConnection,
    f: impl FnOnce(&std::path::Path) -> R,
) -> Option<R> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return None;
    }
    let options = db.get_sqlite_connection_pool().connect_options();
    let file = options.get_filename();
    let registered = SQLITE_WRITERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(file)
        .is_some_and(|w| w.connection.is_some());
    registered.then(|| f(file))
}

/// This process's writer turn on a SQLite database (`None` on PostgreSQL), held until dropped.
/// [`begin_write`] takes it; a write outside a transaction (one statement in autocommit) on a
/// request path takes it too, or queued writers handing the lock on back to back would leave
/// it waiting in the busy handler. Never take it while holding it (or a [`WriteTxn`]).
pub async fn write_turn(db: &DatabaseConnection) -> Result<Option<OwnedSemaphorePermit>, DbErr> {
    match sqlite_writer(db) {
        Some((turn, _)) => take_turn(turn).await.map(Some),
        None => Ok(None),
    }
}

async fn take_turn(turn: std::sync::Arc<Semaphore>) -> Result<OwnedSemaphorePermit, DbErr> {
    match tokio::time::timeout(WRITER_WAIT, turn.acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        // The semaphore is never closed; a wait this long is a stuck writer.
        Ok(Err(_)) | Err(_) => Err(DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout)),
    }
}

/// How long a writer waits for its turn: SQLite's own busy timeout (see [`connect`]).
const WRITER_WAIT: Duration = Duration::from_secs(10);

/// The server keeps the write-ahead log of a SQLite database at about this size at most
/// ([`bound_wal`]): a truncating checkpoint copies what is left of it in well under 1 ms per MB
/// (647 MB in 269 ms, `bench/wal.py`).
pub const WAL_LIMIT: u64 = 16 << 20;

/// How often the server looks at the size of the write-ahead log ([`bound_wal`]).
pub const WAL_CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long [`bound_wal`] waits for readers that still use the log, holding up writers
/// meanwhile: longer than a request's read, short enough that a long one (a backup, a report
/// on another connection) only delays the truncation to a later check.
const WAL_READER_WAIT: Duration = Duration::from_millis(20);

/// What [`bound_wal`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalBound {
    /// No log file, or one within the limit (or PostgreSQL).
    Within,
    /// The log had grown past the limit; it is in the database now and the file is empty.
    Emptied,
    /// The log had grown past the limit, and a reader still used it after the wait: copied as
    /// far as that reader allows, not emptied (the next check tries again).
    InUse,
}

/// Empties the write-ahead log of the SQLite file of `db` when the file has grown past `limit`
/// bytes. SQLite's automatic checkpoints (every 1,000 pages written) copy the log back into the
/// database, but start it over only at a moment when no reader uses it, and never shrink the
/// file: with readers always active, or one long reader, the file only grows (the SQLite
/// documentation's "checkpoint starvation"), and the next truncating checkpoint has all of it
/// to copy (an erasure ends with one, see `gdpr`). The checkpoint runs in this process's
/// writer turn, on a connection of its own that waits [`WAL_READER_WAIT`] at most for readers
/// still in the log (new readers read the database file once the log is copied).
pub async fn bound_wal(db: &DatabaseConnection, limit: u64) -> Result<WalBound, DbErr> {
    use sea_orm::sqlx::{ConnectOptions as _, Connection as _};
    let Some(log) = wal_file(db) else {
        return Ok(WalBound::Within);
    };
    if !std::fs::metadata(log).is_ok_and(|m| m.len() > limit) {
        return Ok(WalBound::Within);
    }
    let _turn = write_turn(db).await?;
    let options = (*db.get_sqlite_connection_pool().connect_options())
        .clone()
        .busy_timeout(WAL_READER_WAIT);
    let mut connection = options.connect().await.map_err(sqlx_failed)?;
    // (busy, frames in the log, frames copied): busy is 1 when readers kept it from finishing.
    let checkpoint: Result<(i32, i32, i32), _> =
        sea_orm::sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut connection)
            .await;
    let closed = connection.close().await;
    let (busy, _, _) = checkpoint.map_err(sqlx_failed)?;
    closed.map_err(sqlx_failed)?;
    Ok(if busy == 0 {
        WalBound::Emptied
    } else {
        WalBound::InUse
    })
}

/// Copies the write-ahead log of the SQLite file of `db` into the database and empties the
/// file, in this process's writer turn ([`write_turn`]): writers wait while it runs, readers do
/// not (a reader that starts once the log has been copied reads the database file; the
/// checkpoint waits, up to the busy timeout, for those that started before). An error when it
/// could not finish in that time; nothing on PostgreSQL.
pub async fn truncate_wal(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(());
    }
    let _turn = write_turn(db).await?;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA wal_checkpoint(TRUNCATE)",
        ))
        .await?;
    // (busy, frames in the log, frames copied): busy is 1 when readers kept it from finishing.
    let busy: i32 = match row {
        Some(row) => row.try_get_by_index(0)?,
        None => 0,
    };
    if busy != 0 {
        return Err(DbErr::Custom(
            "the write-ahead log was still in use: the checkpoint did not finish".into(),
        ));
    }
    Ok(())
}

/// The write-ahead log file of the SQLite database of `db` (`None` on PostgreSQL); it need not
/// exist (an in-memory database has none).
fn wal_file(db: &DatabaseConnection) -> Option<std::path::PathBuf> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return None;
    }
    let options = db.get_sqlite_connection_pool().connect_options();
    let mut log = options.get_filename().as_os_str().to_owned();
    log.push("-wal");
    Some(log.into())
}

/// A transaction that will write: on SQLite it holds the process's writer turn until it is
/// committed, rolled back or dropped. It is used as the transaction itself (it runs
/// statements as it; [`WriteTxn::savepoint`] nests one). A savepoint must end before the
/// `WriteTxn` does, as with sea-orm's own nested transactions.
pub struct WriteTxn {
    /// `None` only once the transaction has ended (commit, rollback or drop).
    txn: Option<DatabaseTransaction>,
    turn: Option<OwnedSemaphorePermit>,
    backend: DbBackend,
    returning: bool,
}

impl WriteTxn {
    fn txn(&self) -> Result<&DatabaseTransaction, DbErr> {
        self.txn.as_ref().ok_or_else(ended)
    }

    pub async fn commit(mut self) -> Result<(), DbErr> {
        self.txn.take().ok_or_else(ended)?.commit().await
    }

    pub async fn rollback(mut self) -> Result<(), DbErr> {
        self.txn.take().ok_or_else(ended)?.rollback().await
    }

    /// A nested transaction (a savepoint) inside this one.
    pub async fn savepoint(&self) -> Result<DatabaseTransaction, DbErr> {
        self.txn()?.begin().await
    }
}

/// Only `commit` and `rollback` end a [`WriteTxn`], and they consume it: never seen by callers.
fn ended() -> DbErr {
    DbErr::Custom("the write transaction has ended".into())
}

/// A transaction dropped without commit or rollback (an error returned with `?`) still holds
/// SQLite's write lock until its rollback has run. sea-orm sends that rollback on drop but
/// nothing waits for it, so the next writer's `BEGIN IMMEDIATE` could find the lock still
/// taken and wait in the busy handler. The writer turn is handed on only after an explicit
/// rollback instead. Not covered: a `commit` or `rollback` that fails or whose future is
/// dropped mid-way releases the turn at once (rare: no deferred constraints).
impl Drop for WriteTxn {
    fn drop(&mut self) {
        let (Some(txn), Some(turn)) = (self.txn.take(), self.turn.take()) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = txn.rollback().await {
                        log::warn!("rolling back a dropped write transaction failed: {e}");
                    }
                    drop(turn);
                });
            }
            // Never reached: a WriteTxn only exists inside the runtime (sqlx itself needs one
            // to hand the connection back).
            Err(_) => drop(txn),
        }
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for WriteTxn {
    fn get_database_backend(&self) -> DbBackend {
        self.backend
    }

    async fn execute_raw(&self, stmt: sea_orm::Statement) -> Result<sea_orm::ExecResult, DbErr> {
        self.txn()?.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<sea_orm::ExecResult, DbErr> {
        self.txn()?.execute_unprepared(sql).await
    }

    async fn query_one_raw(
        &self,
        stmt: sea_orm::Statement,
    ) -> Result<Option<sea_orm::QueryResult>, DbErr> {
        self.txn()?.query_one_raw(stmt).await
    }

    async fn query_all_raw(
        &self,
        stmt: sea_orm::Statement,
    ) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
        self.txn()?.query_all_raw(stmt).await
    }

    fn support_returning(&self) -> bool {
        self.returning
    }
}

/// Starts a transaction that will write. On SQLite it first waits for this process's writer
/// turn ([`write_turn`]), then takes the write lock at `BEGIN` (`BEGIN IMMEDIATE`) on the
/// file's writer connection ([`SqliteWriter`]), so a transaction that reads first never fails
/// to upgrade its lock when another writer got there in between. Never start one while holding
/// another: the second would wait for the first.
pub async fn begin_write(db: &DatabaseConnection) -> Result<WriteTxn, DbErr> {
    let (turn, writer) = match sqlite_writer(db) {
        Some((turn, writer)) => (Some(take_turn(turn).await?), writer),
        None => (None, None),
    };
    let txn = writer
        .as_ref()
        .unwrap_or(db)
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: turn.is_some().then_some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;
    Ok(WriteTxn {
        backend: txn.get_database_backend(),
        returning: txn.support_returning(),
        txn: Some(txn),
        turn,
    })
}

/// Rows per multi-row statement on SQLite (15 values per row at most, under its limit of
/// 32,766 bound parameters).
const INSERT_CHUNK: usize = 1000;

/// On a primary-key conflict, take these columns from the new row (an upsert).
pub(crate) struct Upsert {
    pub key: &'static str,
    pub update: &'static [&'static str],
}

/// Inserts rows (every column set) and answers how many rows were written. On PostgreSQL the
/// rows travel as one typed array per column (`unnest`), in the binary protocol: the
/// statement's text is the same for any number of rows — prepared once per connection — and
/// the database decodes arrays instead of parsing text (for 1,000 contacts a third of the
/// statement's time went into parsing them as JSON). Array elements cannot be NULL over this
/// binding, so a column with some NULLs also sends a mask of which rows are NULL; a column
/// with none sends no mask, and a column that is NULL in every row is a typed `NULL` in the
/// statement and sends nothing (each element sent is cloned and encoded twice on the way:
/// for 1,000 contacts the masks were more than half of them). The statement's text depends
/// on which columns have no, some or only NULLs: one text per such pattern, few in practice,
/// each prepared once per connection. SQLite runs in-process: multi-row `VALUES`; so does a
/// single row on PostgreSQL.
pub(crate) async fn insert_rows<A>(
    db: &impl ConnectionTrait,
    mut rows: Vec<A>,
    upsert: Option<&Upsert>,
) -> Result<u64, DbErr>
where
    A: ActiveModelTrait,
{
    use sea_orm::sea_query::{Alias, OnConflict};
    use sea_orm::{EntityName, EntityTrait, IdenStatic, Iterable};
    if rows.is_empty() {
        return Ok(0);
    }
    // One row (every single write's audit entry and event) goes as a plain `VALUES` insert.
    if db.get_database_backend() == DbBackend::Postgres && rows.len() > 1 {
        let columns: Vec<<A::Entity as EntityTrait>::Column> =
            <A::Entity as EntityTrait>::Column::iter().collect();
        let arrays = column_arrays(&mut rows, &columns)?;
        let table = A::Entity::default().table_name().to_owned();
        let names: Vec<String> = columns
            .iter()
            .map(|c| format!("\"{}\"", c.as_str()))
            .collect();
        let mut selected = Vec::with_capacity(arrays.len());
        let mut unnested = Vec::new();
        let mut aliases = Vec::new();
        let mut values = Vec::new();
        for (k, column) in arrays.into_iter().enumerate() {
            let ColumnArray {
                element_type,
                cast,
                values: sent,
                nulls,
            } = column;
            let Some(sent) = sent else {
                selected.push(format!("NULL::{element_type}{cast}"));
                continue;
            };
            values.push(sent);
            unnested.push(format!("${}::{element_type}[]", values.len()));
            aliases.push(format!("v{k}"));
            match nulls {
                Some(mask) => {
                    values.push(mask);
                    unnested.push(format!("${}::bool[]", values.len()));
                    aliases.push(format!("n{k}"));
                    selected.push(format!("CASE WHEN n{k} THEN NULL ELSE v{k}{cast} END"));
                }
                None => selected.push(format!("v{k}{cast}")),
            }
        }
        // Rows whose every column is NULL (no table here has them) are as many rows of NULLs.
        let from = if unnested.is_empty() {
            format!("generate_series(1, {})", rows.len())
        } else {
            format!(
                "unnest({}) AS u({})",
                unnested.join(", "),
                aliases.join(", ")
            )
        };
        let mut sql = format!(
            "INSERT INTO \"{table}\" ({}) SELECT {} FROM {from}",
            names.join(", "),
            selected.join(", "),
        );
        if let Some(u) = upsert {
            let set: Vec<String> = u
                .update
                .iter()
                .map(|c| format!("\"{c}\" = EXCLUDED.\"{c}\""))
                .collect();
            sql.push_str(&format!(
                " ON CONFLICT (\"{}\") DO UPDATE SET {}",
                u.key,
                set.join(", ")
            ));
        }
        let result = db
            .execute_raw(sea_orm::Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .await?;
        return Ok(result.rows_affected());
    }
    let mut written = 0;
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<A> = rows.by_ref().take(INSERT_CHUNK).collect();
        let mut insert = A::Entity::insert_many(chunk);
        if let Some(u) = upsert {
            insert = insert.on_conflict(
                OnConflict::column(Alias::new(u.key))
                    .update_columns(u.update.iter().map(|c| Alias::new(*c)))
                    .to_owned(),
            );
        }
        written += insert.exec_without_returning(db).await?;
    }
    Ok(written)
}

/// One column of the rows, as PostgreSQL receives it.
struct ColumnArray {
    /// The array's element type (`uuid`, `text`, …).
    element_type: &'static str,
    /// From the element type to the column's (JSON travels as text), or empty.
    cast: &'static str,
    /// The values as a typed array; `None` when every row's value is NULL.
    values: Option<sea_orm::Value>,
    /// Which rows are NULL; `None` when none is (or all are).
    nulls: Option<sea_orm::Value>,
}

/// The rows' values column by column, taken out of the rows (not cloned), as typed arrays
/// with NULL masks where needed.
fn column_arrays<A: ActiveModelTrait>(
    rows: &mut [A],
    columns: &[<A::Entity as sea_orm::EntityTrait>::Column],
) -> Result<Vec<ColumnArray>, DbErr> {
    use sea_orm::sea_query::ArrayType as T;
    use sea_orm::{ColumnTrait, ColumnType, IdenStatic, Value as V};
    let mut arrays = Vec::with_capacity(columns.len());
    for column in columns {
        let mut values = Vec::with_capacity(rows.len());
        let mut nulls = Vec::with_capacity(rows.len());
        let mut kind: Option<(T, &'static str)> = None;
        for row in rows.iter_mut() {
            let value = row.take(*column).into_value().ok_or_else(|| {
                DbErr::Custom(format!("bulk insert: column {} not set", column.as_str()))
            })?;
            // A NULL travels as a placeholder of the column's kind, with its mask bit set.
            macro_rules! element {
                ($variant:ident, $pg:literal, $v:ident) => {{
                    let null = $v.is_none();
                    (
                        V::$variant(Some($v.unwrap_or_default())),
                        null,
                        (T::$variant, $pg),
                    )
                }};
            }
            let (element, null, this_kind) = match value {
                V::Bool(v) => element!(Bool, "bool", v),
                V::Int(v) => element!(Int, "int4", v),
                V::BigInt(v) => element!(BigInt, "int8", v),
                V::String(v) => element!(String, "text", v),
                V::Uuid(v) => element!(Uuid, "uuid", v),
                V::Bytes(v) => element!(Bytes, "bytea", v),
                V::ChronoDateTimeUtc(v) => element!(ChronoDateTimeUtc, "timestamptz", v),
                V::Json(v) => {
                    let null = v.is_none();
                    let text = v.map(|j| j.to_string()).unwrap_or_default();
                    (V::String(Some(text)), null, (T::String, "text"))
                }
                other => {
                    return Err(DbErr::Custom(format!(
                        "bulk insert: column {} has a kind arrays do not carry: {other:?}",
                        column.as_str()
                    )));
                }
            };
            nulls.push(null);
            values.push(element);
            kind.get_or_insert(this_kind);
        }
        let Some((array_type, element_type)) = kind else {
            return Err(DbErr::Custom("bulk insert: no rows".into()));
        };
        let cast = match column.def().get_column_type() {
            ColumnType::Json => "::json",
            ColumnType::JsonBinary => "::jsonb",
            _ => "",
        };
        let some_null = nulls.iter().any(|n| *n);
        let all_null = nulls.iter().all(|n| *n);
        arrays.push(ColumnArray {
            element_type,
            cast,
            values: (!all_null).then(|| V::Array(array_type, Some(Box::new(values)))),
            nulls: (some_null && !all_null).then(|| {
                let mask = nulls.into_iter().map(|n| V::Bool(Some(n))).collect();
                V::Array(T::Bool, Some(Box::new(mask)))
            }),
        });
    }
    Ok(arrays)
}

#[cfg(test)]
mod tests {
    use sea_orm::{EntityTrait, QueryFilter, QueryTrait};

    use super::*;
    use crate::entities::contact;

    /// The planner's statistics follow the data: a connection that opens after a table was
    /// filled finds statistics for its index, and one that opens after the table grew 25-fold
    /// finds them refreshed.
    #[tokio::test]
    async fn a_new_connection_refreshes_stale_statistics() -> Result<(), DbErr> {
        let path = std::env::temp_dir().join(format!("crm-stat-{}.db", uuid::Uuid::now_v7()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let rows_in_stat = |db: DatabaseConnection| async move {
            let stat_table = db
                .query_one_raw(sea_orm::Statement::from_string(
                    DbBackend::Sqlite,
                    "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'",
                ))
                .await?;
            if stat_table.is_none() {
                db.close().await?;
                return Ok(None);
            }
            let row = db
                .query_one_raw(sea_orm::Statement::from_string(
                    DbBackend::Sqlite,
                    "SELECT stat FROM sqlite_stat1 WHERE idx = 'ix_t_g'",
                ))
                .await?;
            db.close().await?;
            let stat: Option<String> = row.map(|r| r.try_get_by_index(0)).transpose()?;
            // "<rows> <rows per g>"
            Ok::<_, DbErr>(stat.and_then(|s| s.split(' ').next()?.parse::<u64>().ok()))
        };
        let fill = |from: u64, to: u64| {
            format!(
                "WITH RECURSIVE n(v) AS (SELECT {from} UNION ALL SELECT v + 1 FROM n WHERE v < {to}) \
                 INSERT INTO t SELECT v, v % 10 FROM n"
            )
        };
        let db = connect(&url).await?;
        db.execute_unprepared("CREATE TABLE t (n INTEGER NOT NULL, g INTEGER NOT NULL)")
            .await?;
        db.execute_unprepared("CREATE INDEX ix_t_g ON t (g)")
            .await?;
        db.execute_unprepared(&fill(1, 2_000)).await?;
        assert_eq!(rows_in_stat(db).await?, None, "no statistics before");

        let db = connect(&url).await?;
        assert_eq!(rows_in_stat(db).await?, Some(2_000), "analysed on open");

        let db = connect(&url).await?;
        db.execute_unprepared(&fill(2_001, 100_000)).await?;
        db.close().await?;
        let db = connect(&url).await?;
        let grown = rows_in_stat(db).await?;
        assert!(
            grown.is_some_and(|n| n >= 50_000),
            "re-analysed on open after growing 50-fold: {grown:?}"
        );
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        Ok(())
    }

    /// A write-ahead log grown past the limit (a reader kept the automatic checkpoints from
    /// starting it over) is emptied into the database file, losing nothing; one within the
    /// limit is left alone. While a reader still uses it, the check gives up after a short
    /// wait and writers go on.
    #[tokio::test]
    async fn a_long_write_ahead_log_is_emptied_and_nothing_is_lost() -> Result<(), DbErr> {
        use sea_orm::TransactionTrait;
        let path = std::env::temp_dir().join(format!("crm-wal-{}.db", uuid::Uuid::now_v7()));
        let db = connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
        let count = |db: DatabaseConnection| async move {
            let row = db
                .query_one_raw(sea_orm::Statement::from_string(
                    DbBackend::Sqlite,
                    "SELECT count(*), sum(length(pad)) FROM t",
                ))
                .await?
                .ok_or_else(|| DbErr::Custom("no row".into()))?;
            Ok::<_, DbErr>((
                row.try_get_by_index::<i64>(0)?,
                row.try_get_by_index::<i64>(1)?,
            ))
        };
        let size = |suffix: &str| {
            std::fs::metadata(format!("{}{suffix}", path.display())).map_or(0, |m| m.len())
        };
        let fill = "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 1000) \
                    INSERT INTO t SELECT v, randomblob(1000) FROM n";
        db.execute_unprepared("CREATE TABLE t (n INTEGER NOT NULL, pad BLOB NOT NULL)")
            .await?;
        let reader = db.begin().await?;
        reader
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Sqlite,
                "SELECT count(*) FROM t",
            ))
            .await?;
        for _ in 0..4 {
            db.execute_unprepared(fill).await?;
        }
        let grown = size("-wal");
        assert!(grown > 4_000_000, "the log holds the writes: {grown} bytes");

        let started = std::time::Instant::now();
        assert_eq!(
            bound_wal(&db, 1 << 20).await?,
            WalBound::InUse,
            "a reader in it"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "gave up soon: {:?}",
            started.elapsed()
        );
        db.execute_unprepared(fill).await?;
        reader.commit().await?;
        let grown = size("-wal");
        assert!(grown > 5_000_000, "writes went on: {grown} bytes");

        assert_eq!(bound_wal(&db, grown).await?, WalBound::Within);
        assert_eq!(size("-wal"), grown, "left alone within the limit");

        assert_eq!(bound_wal(&db, 1 << 20).await?, WalBound::Emptied);
        assert_eq!(size("-wal"), 0, "emptied");
        assert!(size("") > 5_000_000, "copied into the database file");
        assert_eq!(count(db.clone()).await?, (5_000, 5_000_000), "nothing lost");
        assert_eq!(
            bound_wal(&db, 1 << 20).await?,
            WalBound::Within,
            "once empty"
        );
        db.close().await?;

        let reopened = connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
        assert_eq!(
            count(reopened.clone()).await?,
            (5_000, 5_000_000),
            "after reopening"
        );
        reopened.close().await?;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        Ok(())
    }

    /// A fixed statement binds its values as sea-orm does: a row sea-orm wrote is found by
    /// its id, compared by its time (text on SQLite, so the format must match) and flag, and
    /// decodes to the same values. Without a pool it is an error, not a panic.
    #[tokio::test]
    async fn fixed_statements_bind_and_decode_as_sea_orm_does() -> Result<(), DbErr> {
        use chrono::{Duration as Span, Utc};
        let path = std::env::temp_dir().join(format!("crm-fixed-{}.db", uuid::Uuid::now_v7()));
        let db = connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
        db.execute_unprepared(
            "CREATE TABLE t (id BLOB NOT NULL, at TEXT NOT NULL, ok BOOLEAN NOT NULL)",
        )
        .await?;
        let id = uuid::Uuid::now_v7();
        let at = Utc::now();
        db.execute_raw(sea_orm::Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "INSERT INTO t (id, at, ok) VALUES ($1, $2, $3)",
            [id.into(), at.into(), true.into()],
        ))
        .await?;
        const SQL: &str = "SELECT id, at, ok FROM t WHERE id = $1 AND at > $2 AND ok = $3";
        let find = |since| [Param::Uuid(id), Param::Time(since), Param::Bool(true)];
        let row = fixed_one(&db, SQL, &find(at - Span::seconds(1)))
            .await?
            .ok_or_else(|| DbErr::Custom("the row was not found".into()))?;
        let by_sea_orm = fixed_one_in(&db, SQL, &find(at - Span::seconds(1)))
            .await?
            .ok_or_else(|| DbErr::Custom("sea-orm did not find the row".into()))?;
        let decoded = |r: &sea_orm::QueryResult| -> Result<_, DbErr> {
            Ok((
                r.try_get::<uuid::Uuid>("", "id")?,
                r.try_get::<chrono::DateTime<Utc>>("", "at")?,
                r.try_get::<bool>("", "ok")?,
            ))
        };
        let (got_id, got_at, got_ok) = decoded(&row)?;
        assert_eq!(decoded(&row)?, decoded(&by_sea_orm)?);
        assert_eq!(got_id, id);
        assert!((got_at - at).abs() < Span::milliseconds(1));
        assert!(got_ok);
        assert!(
            fixed_one(&db, SQL, &find(at + Span::seconds(1)))
                .await?
                .is_none()
        );
        let unconnected = DatabaseConnection::default();
        assert!(fixed_one(&unconnected, SQL, &find(at)).await.is_err());
        db.close().await?;
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    /// A write transaction dropped without commit (an error returned with `?`) hands the
    /// writer turn on only once its rollback has run: the next writer, on a pool that does not
    /// wait for SQLite's lock at all, still gets the lock at once.
    #[tokio::test]
    async fn a_dropped_write_hands_the_turn_on_after_its_rollback() -> Result<(), DbErr> {
        let path = std::env::temp_dir().join(format!("crm-turn-{}.db", uuid::Uuid::now_v7()));
        let mut opts = ConnectOptions::new(format!("sqlite://{}?mode=rwc", path.display()));
        // No ping on checkout either: only the fix may give the rollback time to run.
        opts.max_connections(2)
            .sqlx_logging(false)
            .test_before_acquire(false)
            .map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .busy_timeout(Duration::ZERO)
            });
        let db = Database::connect(opts).await?;
        db.execute_unprepared("CREATE TABLE t (n INTEGER NOT NULL)")
            .await?;
        for n in 0..20 {
            let dropped = begin_write(&db).await?;
            dropped
                .execute_unprepared(&format!("INSERT INTO t VALUES ({})", -n - 1))
                .await?;
            drop(dropped);
            let next = begin_write(&db).await?;
            next.execute_unprepared(&format!("INSERT INTO t VALUES ({n})"))
                .await?;
            next.commit().await?;
        }
        let rows = db
            .query_all_raw(sea_orm::Statement::from_string(
                DbBackend::Sqlite,
                "SELECT n FROM t ORDER BY n",
            ))
            .await?;
        let kept: Vec<i64> = rows
            .iter()
            .map(|r| r.try_get_by_index(0))
            .collect::<Result<_, _>>()?;
        assert_eq!(kept, (0..20).collect::<Vec<i64>>(), "only committed rows");
        db.close().await?;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        Ok(())
    }

    /// On a SQLite file opened by [`connect`], write transactions run on one connection of
    /// their own (its page cache outlives each commit) and the pool's connections only read:
    /// a temporary table, private to the connection that made it, is seen by every later
    /// write transaction and by none of the pool's four connections, which see the rows the
    /// writer committed.
    #[tokio::test]
    async fn write_transactions_run_on_one_connection_beside_the_pool() -> Result<(), DbErr> {
        let path = std::env::temp_dir().join(format!("crm-writer-{}.db", uuid::Uuid::now_v7()));
        let db = connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
        db.execute_unprepared("CREATE TABLE t (n INTEGER NOT NULL)")
            .await?;
        // Four read transactions at once: the pool opens all its connections, which it then
        // hands out in turn.
        let mut readers = Vec::new();
        for _ in 0..4 {
            readers.push(db.begin().await?);
        }
        for r in readers {
            r.commit().await?;
        }
        async fn probe(on: &impl ConnectionTrait) -> Result<i64, DbErr> {
            on.query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Sqlite,
                "SELECT count(*) FROM temp.sqlite_master WHERE name = 'probe'",
            ))
            .await?
            .ok_or_else(|| DbErr::Custom("no count".into()))?
            .try_get_by_index::<i64>(0)
        }
        let first = begin_write(&db).await?;
        first
            .execute_unprepared("CREATE TEMP TABLE probe (x INTEGER)")
            .await?;
        first.commit().await?;
        for n in 0..8 {
            let txn = begin_write(&db).await?;
            assert_eq!(probe(&txn).await?, 1, "write {n} ran on another connection");
            txn.execute_unprepared(&format!("INSERT INTO t VALUES ({n})"))
                .await?;
            txn.commit().await?;
            assert_eq!(probe(&db).await?, 0, "the pool wrote");
        }
        let count = db
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Sqlite,
                "SELECT count(*) FROM t",
            ))
            .await?
            .ok_or_else(|| DbErr::Custom("no count".into()))?
            .try_get_by_index::<i64>(0)?;
        assert_eq!(count, 8, "readers see what the writer committed");
        db.close().await?;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        Ok(())
    }

    #[test]
    fn one_of_binds_one_array_on_postgres() {
        let ids = vec![uuid::Uuid::nil(), uuid::Uuid::max()];
        let pg = contact::Entity::find()
            .filter(one_of(
                DbBackend::Postgres,
                contact::Column::Id,
                ids.clone(),
            ))
            .build(DbBackend::Postgres);
        assert!(
            pg.sql.ends_with(r#""contacts"."id" = ANY($1)"#),
            "{}",
            pg.sql
        );
        assert_eq!(pg.values.map(|v| v.0.len()), Some(1));
        let sqlite = contact::Entity::find()
            .filter(one_of(DbBackend::Sqlite, contact::Column::Id, ids))
            .build(DbBackend::Sqlite);
        assert!(
            sqlite.sql.ends_with(r#""contacts"."id" IN (?, ?)"#),
            "{}",
            sqlite.sql
        );
        assert_eq!(sqlite.values.map(|v| v.0.len()), Some(2));
    }
}
