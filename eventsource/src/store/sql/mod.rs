//! What every SQL backend shares, written once: row decoding and its checks, the retry policy
//! for transient errors, the statements that differ only by dialect.

/// The statement that saves a snapshot, `$state` the dialect's form of parameter `$5` (the state
/// as JSON text): it replaces the stored snapshot unless that one is newer for the same state
/// version.
macro_rules! save_snapshot {
    ($state:literal) => {
        concat!(
            "INSERT INTO snapshots (aggregate_type, aggregate_id, version, state_version, state, \
             taken_at) VALUES ($1, $2, $3, $4, ",
            $state,
            ", $6) ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
             version = excluded.version, state_version = excluded.state_version, \
             state = excluded.state, taken_at = excluded.taken_at \
             WHERE excluded.version >= snapshots.version \
             OR excluded.state_version <> snapshots.state_version"
        )
    };
}
pub(crate) use save_snapshot;

/// Where a stream read's rows come from: stream `$1`/`$2`, versions `$3` to `$4`, occurred at
/// or before `$5` (NULL: whenever; `$until` is the dialect's form of that parameter), in version
/// order; a statement ends it with `ASC` or `DESC` and `LIMIT $6` (see [`stream_query`]).
macro_rules! stream_range {
    ($until:literal) => {
        concat!(
            " FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 \
             AND version BETWEEN $3 AND $4 AND (",
            $until,
            " IS NULL OR occurred_at <= $5) ORDER BY version"
        )
    };
}
pub(crate) use stream_range;

/// The two statements of `read_stream`, oldest first and newest first: `$columns` of
/// [`stream_range!`]`($until)`.
macro_rules! stream_reads {
    ($columns:expr, $until:literal) => {
        [
            concat!(
                "SELECT ",
                $columns,
                crate::store::sql::stream_range!($until),
                " ASC LIMIT $6"
            ),
            concat!(
                "SELECT ",
                $columns,
                crate::store::sql::stream_range!($until),
                " DESC LIMIT $6"
            ),
        ]
    };
}
pub(crate) use stream_reads;

pub(crate) mod checkpoint;
pub(crate) mod dialect;
mod retry;
mod rows;

pub(crate) use retry::*;
pub(crate) use rows::*;

use super::*;

impl StreamQuery {
    /// The limit as an SQL `LIMIT` value (-1: none; SQLite and PostgreSQL both read a negative
    /// or NULL limit as "all", we use `i64::MAX` to be explicit).
    pub(crate) fn sql_limit(&self) -> i64 {
        self.limit
            .map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX))
    }

    /// The version range as SQL bounds.
    pub(crate) fn sql_versions(&self) -> (i64, i64) {
        let from = i64::try_from(self.from_version).unwrap_or(i64::MAX);
        let to = self
            .to_version
            .map_or(i64::MAX, |v| i64::try_from(v).unwrap_or(i64::MAX));
        (from, to)
    }
}

/// The free-form part of the metadata as JSON, `None` when there is none.
pub(crate) fn extra_json(metadata: &crate::event::Metadata) -> Option<String> {
    if metadata.extra.is_empty() {
        None
    } else {
        serde_json::to_string(&metadata.extra).ok()
    }
}

/// A stream read's statement (see [`stream_range!`]) with its parameters bound: the stream, the
/// version range, the time-travel bound (in the dialect's codec) and the row limit.
pub(crate) fn stream_query<'q, D, T>(
    sql: &'q str,
    stream: &'q StreamId,
    (from, to): (i64, i64),
    until: Option<T>,
    limit: i64,
) -> sqlx::query::Query<'q, D, <D as sqlx::Database>::Arguments<'q>>
where
    D: sqlx::Database,
    &'q str: sqlx::Encode<'q, D> + sqlx::Type<D>,
    i64: sqlx::Encode<'q, D> + sqlx::Type<D>,
    Option<T>: sqlx::Encode<'q, D> + sqlx::Type<D>,
    T: 'q + Send,
{
    sqlx::query(sql)
        .bind(stream.aggregate_type())
        .bind(stream.aggregate_id())
        .bind(from)
        .bind(to)
        .bind(until)
        .bind(limit)
}

/// The events of a stream read's `rows`, each decoded by `decode`, checked for gaps
/// ([`check_sequence`]): the end of every SQL store's `read_stream`.
pub(crate) fn stream_events<R>(
    stream: &StreamId,
    query: &StreamQuery,
    rows: &[R],
    mut decode: impl FnMut(&R) -> Result<PageRow>,
) -> Result<Vec<RecordedEvent>> {
    let events = rows
        .iter()
        .filter_map(|row| match decode(row) {
            Ok((_, event)) => event,
            Err(error) => Some(Err(error)),
        })
        .collect::<Result<Vec<_>>>()?;
    check_sequence(stream, query, &events)?;
    Ok(events)
}
