//! Connecting to SQLite (the embedded default) or PostgreSQL, and write transactions.

use std::time::Duration;

use sea_orm::{
    ActiveModelTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};

pub use sea_orm::DatabaseConnection as Db;

/// Opens a pool. SQL statement logging is off: statements could carry personal values.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let sqlite = url.starts_with("sqlite:");
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .max_connections(if url.contains(":memory:") {
            1
        } else if sqlite {
            4
        } else {
            16
        });
    if sqlite {
        opts.map_sqlx_sqlite_opts(|o| {
            o.foreign_keys(true)
                .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                // Deleted content is zeroed, not left in free pages (erasure).
                .pragma("secure_delete", "ON")
        });
    }
    Database::connect(opts).await
}

/// Starts a transaction that will write. On SQLite it takes the write lock at `BEGIN`
/// (`BEGIN IMMEDIATE`), so a transaction that reads first never fails to upgrade its lock
/// when another writer got there in between; concurrent writers wait instead.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    let mode = match db.get_database_backend() {
        DbBackend::Sqlite => Some(SqliteTransactionMode::Immediate),
        _ => None,
    };
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: mode,
        ..Default::default()
    })
    .await
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
/// binding, so each column also sends a mask of which rows are NULL. SQLite runs in-process:
/// multi-row `VALUES`; so does a single row on PostgreSQL.
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
        let (arrays, casts) = column_arrays(&mut rows, &columns)?;
        let table = A::Entity::default().table_name().to_owned();
        let names: Vec<String> = columns
            .iter()
            .map(|c| format!("\"{}\"", c.as_str()))
            .collect();
        // Column k travels as $2k+1 (values) and $2k+2 (NULL mask).
        let selected: Vec<String> = casts
            .iter()
            .enumerate()
            .map(|(k, cast)| format!("CASE WHEN n{k} THEN NULL ELSE v{k}{cast} END"))
            .collect();
        let unnested: Vec<String> = arrays
            .iter()
            .enumerate()
            .map(|(k, (_, array_type))| {
                format!("${}::{array_type}[], ${}::bool[]", 2 * k + 1, 2 * k + 2)
            })
            .collect();
        let aliases: Vec<String> = (0..columns.len()).map(|k| format!("v{k}, n{k}")).collect();
        let mut sql = format!(
            "INSERT INTO \"{table}\" ({}) SELECT {} FROM unnest({}) AS u({})",
            names.join(", "),
            selected.join(", "),
            unnested.join(", "),
            aliases.join(", "),
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
        let values = arrays
            .into_iter()
            .flat_map(|((values, nulls), _)| [values, nulls]);
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

/// One column's values as a typed array and its NULL mask, with the array's element type.
type ColumnArray = ((sea_orm::Value, sea_orm::Value), &'static str);

/// The rows' values column by column, taken out of the rows (not cloned), as typed arrays
/// with NULL masks; and per column the cast from the array's element type to the column's
/// (JSON travels as text).
fn column_arrays<A: ActiveModelTrait>(
    rows: &mut [A],
    columns: &[<A::Entity as sea_orm::EntityTrait>::Column],
) -> Result<(Vec<ColumnArray>, Vec<&'static str>), DbErr> {
    use sea_orm::sea_query::ArrayType as T;
    use sea_orm::{ColumnTrait, ColumnType, IdenStatic, Value as V};
    let mut arrays = Vec::with_capacity(columns.len());
    let mut casts = Vec::with_capacity(columns.len());
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
            nulls.push(V::Bool(Some(null)));
            values.push(element);
            kind.get_or_insert(this_kind);
        }
        let Some((array_type, element_type)) = kind else {
            return Err(DbErr::Custom("bulk insert: no rows".into()));
        };
        casts.push(match column.def().get_column_type() {
            ColumnType::Json => "::json",
            ColumnType::JsonBinary => "::jsonb",
            _ => "",
        });
        arrays.push((
            (
                V::Array(array_type, Some(Box::new(values))),
                V::Array(T::Bool, Some(Box::new(nulls))),
            ),
            element_type,
        ));
    }
    Ok((arrays, casts))
}
