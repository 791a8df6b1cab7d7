//! The dialect: what differs between the SQL databases for a statement that is otherwise the
//! same. Statements written once use `$1`, `$2`, ... placeholders, which SQLite reads as well as
//! PostgreSQL; their values are [`Value`]s, which each dialect binds in its own codec (a time is
//! microseconds since the epoch on SQLite, a `TIMESTAMPTZ` on PostgreSQL); their rows are read
//! through the dialect's getters, which decode by the same codecs.
//!
//! A dialect is the database type of sqlx itself (`impl Dialect for sqlx::Sqlite`): generic code
//! takes `&mut D::Connection`, which a pooled connection and a transaction both give. What
//! truly differs (SQLite's single writer and framed pages, PostgreSQL's fence, advisory locks
//! and `LISTEN`) stays in each backend's folder.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use uuid::Uuid;

/// A value bound to a statement written once for every SQL backend.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Value<'a> {
    /// A 64-bit integer, or NULL.
    Int(Option<i64>),
    /// A text, or NULL.
    Text(Option<&'a str>),
    /// A UUID column (a 16-byte BLOB on SQLite), or NULL.
    Id(Option<Uuid>),
    /// A time: microseconds since the epoch on SQLite, a `TIMESTAMPTZ` on PostgreSQL.
    Time(DateTime<Utc>),
    /// A key id: text on SQLite (the keys table's first form), a UUID on PostgreSQL.
    #[cfg(feature = "encryption")]
    KeyId(Uuid),
    /// A key store's time stamp: RFC 3339 text on SQLite, a `TIMESTAMPTZ` on PostgreSQL.
    #[cfg(feature = "encryption")]
    Stamp(DateTime<Utc>),
    /// Bytes, or NULL.
    #[cfg(feature = "encryption")]
    Bytes(Option<&'a [u8]>),
}

impl From<i64> for Value<'_> {
    fn from(value: i64) -> Self {
        Value::Int(Some(value))
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(value: &'a str) -> Self {
        Value::Text(Some(value))
    }
}

/// A statement with `$n` placeholders and the values they stand for, built piece by piece.
#[derive(Debug, Default)]
pub(crate) struct Statement<'a> {
    pub(crate) sql: String,
    pub(crate) values: Vec<Value<'a>>,
}

impl<'a> Statement<'a> {
    /// A statement starting with `sql`.
    pub(crate) fn new(sql: &str) -> Self {
        Statement {
            sql: sql.to_owned(),
            values: Vec::new(),
        }
    }

    /// Appends SQL text.
    pub(crate) fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Appends the placeholder of `value`.
    pub(crate) fn bind(&mut self, value: impl Into<Value<'a>>) -> &mut Self {
        self.values.push(value.into());
        self.sql.push('$');
        self.sql.push_str(&self.values.len().to_string());
        self
    }
}

/// What differs between the SQL databases, for the statements written once (checkpoints, dead
/// letters, inspection, the keys tables): how values are bound and read back, and the few SQL
/// texts that are the database's own.
pub(crate) trait Dialect: sqlx::Database {
    /// The largest value of an `INTEGER` column (64 bits on SQLite, 32 on PostgreSQL).
    const INT_MAX: i64;

    /// The migrations of the event store's schema.
    fn migrator() -> sqlx::migrate::Migrator;

    /// A statement giving 1 if sqlx's migrations table exists, 0 if not.
    const HAS_MIGRATIONS: &'static str;

    /// Events per day (`YYYY-MM-DD` in UTC) they occurred on, oldest first.
    const EVENTS_BY_DAY: &'static str;

    /// The bytes the store's tables take.
    const SIZE: &'static str;

    /// Runs `sql` with `values`; returns how many rows it changed.
    fn execute<'c>(
        conn: &'c mut Self::Connection,
        sql: &'c str,
        values: Vec<Value<'c>>,
    ) -> BoxFuture<'c, sqlx::Result<u64>>;

    /// Runs `sql` with `values`; returns its rows.
    fn fetch_all<'c>(
        conn: &'c mut Self::Connection,
        sql: &'c str,
        values: Vec<Value<'c>>,
    ) -> BoxFuture<'c, sqlx::Result<Vec<Self::Row>>>;

    /// Column `index` as an integer (of any width), `None` for NULL.
    fn int(row: &Self::Row, index: usize) -> sqlx::Result<Option<i64>>;

    /// Column `index` as text, `None` for NULL.
    fn text(row: &Self::Row, index: usize) -> sqlx::Result<Option<String>>;

    /// Column `index` as a UUID, `None` for NULL.
    fn id(row: &Self::Row, index: usize) -> sqlx::Result<Option<Uuid>>;

    /// Column `index` as a time (see [`Value::Time`]), `None` for NULL or out of range.
    fn time(row: &Self::Row, index: usize) -> sqlx::Result<Option<DateTime<Utc>>>;

    /// Column `index` as a key id (see [`Value::KeyId`]).
    #[cfg(feature = "encryption")]
    fn key_id(row: &Self::Row, index: usize) -> crate::Result<Uuid>;

    /// Column `index` as bytes, `None` for NULL.
    #[cfg(feature = "encryption")]
    fn bytes(row: &Self::Row, index: usize) -> sqlx::Result<Option<Vec<u8>>>;
}

/// Runs `sql` and returns its first row, if any.
pub(crate) async fn fetch_optional<'c, D: Dialect>(
    conn: &'c mut D::Connection,
    sql: &'c str,
    values: Vec<Value<'c>>,
) -> sqlx::Result<Option<D::Row>> {
    Ok(D::fetch_all(conn, sql, values).await?.into_iter().next())
}

/// Column `index` as a non-NULL integer.
pub(crate) fn int<D: Dialect>(row: &D::Row, index: usize) -> sqlx::Result<i64> {
    D::int(row, index)?.ok_or_else(|| null(index))
}

/// Column `index` as non-NULL text.
pub(crate) fn text<D: Dialect>(row: &D::Row, index: usize) -> sqlx::Result<String> {
    D::text(row, index)?.ok_or_else(|| null(index))
}

fn null(index: usize) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: index.to_string(),
        source: "unexpected NULL".into(),
    }
}

/// The arguments of `values`, each added by `add` (a backend's codec).
fn arguments<'a, A: sqlx::Arguments<'a>>(
    values: Vec<Value<'a>>,
    mut add: impl FnMut(&mut A, Value<'a>) -> std::result::Result<(), sqlx::error::BoxDynError>,
) -> sqlx::Result<A> {
    let mut arguments = A::default();
    for value in values {
        add(&mut arguments, value).map_err(sqlx::Error::Encode)?;
    }
    Ok(arguments)
}

/// The parts of a dialect that differ only by the database type: running a statement with the
/// arguments `$arguments` makes of its values, and the getters whose codec is sqlx's own.
macro_rules! run_with {
    ($arguments:ident) => {
        fn execute<'c>(
            conn: &'c mut Self::Connection,
            sql: &'c str,
            values: Vec<Value<'c>>,
        ) -> BoxFuture<'c, sqlx::Result<u64>> {
            Box::pin(async move {
                let arguments = $arguments(values)?;
                let done = sqlx::query_with(sql, arguments).execute(conn).await?;
                Ok(done.rows_affected())
            })
        }

        fn fetch_all<'c>(
            conn: &'c mut Self::Connection,
            sql: &'c str,
            values: Vec<Value<'c>>,
        ) -> BoxFuture<'c, sqlx::Result<Vec<Self::Row>>> {
            Box::pin(async move {
                let arguments = $arguments(values)?;
                sqlx::query_with(sql, arguments).fetch_all(conn).await
            })
        }

        fn text(row: &Self::Row, index: usize) -> sqlx::Result<Option<String>> {
            sqlx::Row::try_get(row, index)
        }

        fn id(row: &Self::Row, index: usize) -> sqlx::Result<Option<Uuid>> {
            sqlx::Row::try_get(row, index)
        }

        #[cfg(feature = "encryption")]
        fn bytes(row: &Self::Row, index: usize) -> sqlx::Result<Option<Vec<u8>>> {
            sqlx::Row::try_get(row, index)
        }
    };
}

#[cfg(feature = "sqlite")]
impl Dialect for sqlx::Sqlite {
    const INT_MAX: i64 = i64::MAX;

    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/sqlite")
    }

    const HAS_MIGRATIONS: &'static str = "SELECT COUNT(*) FROM sqlite_master \
         WHERE type = 'table' AND name = '_sqlx_migrations'";

    const EVENTS_BY_DAY: &'static str = "SELECT strftime('%Y-%m-%d', occurred_at / 1000000, \
         'unixepoch') AS day, COUNT(*) FROM events GROUP BY day ORDER BY day";

    const SIZE: &'static str =
        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()";

    run_with!(sqlite_arguments);

    fn int(row: &Self::Row, index: usize) -> sqlx::Result<Option<i64>> {
        sqlx::Row::try_get(row, index)
    }

    fn time(row: &Self::Row, index: usize) -> sqlx::Result<Option<DateTime<Utc>>> {
        let micros: Option<i64> = sqlx::Row::try_get(row, index)?;
        Ok(micros.and_then(DateTime::from_timestamp_micros))
    }

    #[cfg(feature = "encryption")]
    fn key_id(row: &Self::Row, index: usize) -> crate::Result<Uuid> {
        let id: String =
            sqlx::Row::try_get(row, index).map_err(crate::Error::database("read a subject key"))?;
        id.parse().map_err(|_| {
            crate::Error::InvalidConfig(format!(
                "the keys table holds a key id that is not a UUID: `{id}`"
            ))
        })
    }
}

#[cfg(feature = "sqlite")]
fn sqlite_arguments<'a>(values: Vec<Value<'a>>) -> sqlx::Result<sqlx::sqlite::SqliteArguments<'a>> {
    use sqlx::Arguments;
    arguments(
        values,
        |arguments: &mut sqlx::sqlite::SqliteArguments<'a>, value| match value {
            Value::Int(value) => arguments.add(value),
            Value::Text(value) => arguments.add(value),
            Value::Id(value) => arguments.add(value),
            Value::Time(time) => arguments.add(time.timestamp_micros()),
            #[cfg(feature = "encryption")]
            Value::KeyId(id) => arguments.add(id.to_string()),
            #[cfg(feature = "encryption")]
            Value::Stamp(time) => arguments.add(time.to_rfc3339()),
            #[cfg(feature = "encryption")]
            Value::Bytes(value) => arguments.add(value),
        },
    )
}

#[cfg(feature = "postgres")]
impl Dialect for sqlx::Postgres {
    const INT_MAX: i64 = i32::MAX as i64;

    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/postgres")
    }

    const HAS_MIGRATIONS: &'static str =
        "SELECT CASE WHEN to_regclass('_sqlx_migrations') IS NULL THEN 0 ELSE 1 END::BIGINT";

    const EVENTS_BY_DAY: &'static str = "SELECT to_char(occurred_at AT TIME ZONE 'UTC', \
         'YYYY-MM-DD') AS day, COUNT(*) FROM events GROUP BY day ORDER BY day";

    const SIZE: &'static str = "SELECT COALESCE(SUM(pg_total_relation_size(t)), 0)::BIGINT FROM \
         (SELECT to_regclass(name) AS t FROM UNNEST(ARRAY['events', 'snapshots', \
         'checkpoints', 'dead_letters']) AS name) AS tables WHERE t IS NOT NULL";

    run_with!(postgres_arguments);

    fn int(row: &Self::Row, index: usize) -> sqlx::Result<Option<i64>> {
        // `INTEGER` columns (a dead letter's attempts, a snapshot's state version) are 32 bits.
        match sqlx::Row::try_get::<Option<i64>, _>(row, index) {
            Err(sqlx::Error::ColumnDecode { .. }) => {
                Ok(sqlx::Row::try_get::<Option<i32>, _>(row, index)?.map(i64::from))
            }
            result => result,
        }
    }

    fn time(row: &Self::Row, index: usize) -> sqlx::Result<Option<DateTime<Utc>>> {
        sqlx::Row::try_get(row, index)
    }

    #[cfg(feature = "encryption")]
    fn key_id(row: &Self::Row, index: usize) -> crate::Result<Uuid> {
        sqlx::Row::try_get(row, index).map_err(crate::Error::database("read a subject key"))
    }
}

#[cfg(feature = "postgres")]
fn postgres_arguments(values: Vec<Value<'_>>) -> sqlx::Result<sqlx::postgres::PgArguments> {
    use sqlx::Arguments;
    arguments(
        values,
        |arguments: &mut sqlx::postgres::PgArguments, value| match value {
            Value::Int(value) => arguments.add(value),
            Value::Text(value) => arguments.add(value),
            Value::Id(value) => arguments.add(value),
            Value::Time(time) => arguments.add(time),
            #[cfg(feature = "encryption")]
            Value::Stamp(time) => arguments.add(time),
            #[cfg(feature = "encryption")]
            Value::KeyId(id) => arguments.add(id),
            #[cfg(feature = "encryption")]
            Value::Bytes(value) => arguments.add(value),
        },
    )
}
