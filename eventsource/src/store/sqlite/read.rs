//! Reads: streams (row by row, then framed texts), pages of the global log, counts and the head.

use super::*;
use crate::store::sql::stream_query;

impl SqliteEventStore {
    /// One page of `read_all`: as one framed text with the whole context
    /// ([`FOLD_FRAMED_WHOLE`], as a fold's page), each record made into an owned event; from a
    /// record that does not parse (a damaged row) or for rows too large to frame together, the
    /// rest of the page row by row, where a damaged row is reported on its own.
    pub(super) async fn read_page(&self, query: ReadAll) -> Result<Vec<PageRow>> {
        let mut rows = Vec::new();
        let mut after = query.after;
        if let Some(page) = self.framed_page(&query, true).await? {
            if page.count == 0 {
                return Ok(rows);
            }
            rows.reserve(page.count);
            let mut streams = StreamCache::default();
            for record in page.records(after, true) {
                let lean = record.lean;
                let Some(details) = lean.details else {
                    break;
                };
                let event = EventRow {
                    stream: streams
                        .get(record.aggregate_type, record.aggregate_id)
                        .clone(),
                    position: record.position,
                    event_id: details.event_id,
                    version: lean.version,
                    event_type: lean.event_type.to_owned(),
                    schema_version: lean.schema_version,
                    occurred_at: details.occurred_at,
                    metadata: details.metadata.map(str::to_owned),
                    payload: lean.payload.to_owned(),
                }
                .into_event();
                rows.push((record.position, Some(event)));
                after = record.position;
            }
            if rows.len() >= page.count {
                return Ok(rows);
            }
        }
        let rest = ReadAll {
            after,
            batch_size: query.batch_size.saturating_sub(rows.len()),
            ..query
        };
        for row in &self.fetch_page(&rest).await? {
            rows.push(decode_row(row, None)?);
        }
        Ok(rows)
    }

    /// The rows of one page of a global read: the stream columns, then the stream's.
    pub(super) async fn fetch_page(&self, query: &ReadAll) -> Result<Vec<SqliteRow>> {
        let mut select = QueryBuilder::<Sqlite>::new(concat!(
            "SELECT ",
            stream_columns!(),
            ", aggregate_type, aggregate_id FROM events WHERE position > "
        ));
        select.push_bind(query.after.to_sql());
        push_filters(&mut select, query);
        select.push(" ORDER BY position LIMIT ");
        select.push_bind(to_i64(query.batch_size as u64));
        select
            .build()
            .fetch_all(&self.reader)
            .await
            .map_err(Error::database("read_all"))
    }
}

/// Appends the `ReadAll` filters to a `WHERE` clause.
pub(super) fn push_filters(select: &mut QueryBuilder<'_, Sqlite>, query: &ReadAll) {
    // `IN (?, ?, ...)`: SQLite builds one lookup table per statement; a `json_each` subquery
    // cost a third of a projection's catch-up.
    for (column, values) in [
        ("event_type", &query.event_types),
        ("aggregate_type", &query.aggregate_types),
    ] {
        if values.is_empty() {
            continue;
        }
        select.push(format_args!(" AND {column} IN ("));
        let mut list = select.separated(", ");
        for value in values {
            list.push_bind(value.clone());
        }
        select.push(")");
    }
    if let Some(tenant) = &query.tenant_id {
        select.push(" AND tenant_id = ");
        select.push_bind(tenant.clone());
    }
}

/// How many rows a stream read reads row by row before it reads the rest as framed texts.
pub(super) const STREAM_HEAD: i64 = 64;

/// How many rows of a stream one framed text holds at most.
pub(super) const STREAM_CHUNK: i64 = 10_000;

/// Feeds a row of `fold_columns!()` to a fold; the event id, time and metadata only if
/// `details` (otherwise the fold reads locations).
pub(super) fn feed_whole<F>(
    row: &SqliteRow,
    position: Position,
    details: bool,
    streams: &mut StreamCache,
    apply: &mut F,
) -> std::ops::ControlFlow<()>
where
    F: for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()>,
{
    let (Ok(aggregate_type), Ok(aggregate_id)) =
        (row.try_get::<&str, _>(1), row.try_get::<&str, _>(2))
    else {
        let unreadable = StreamId::unchecked("?", "?");
        let error = RowReader::new(row, &unreadable, Some(position))
            .damaged("the stream columns cannot be read".into());
        return apply(Err(&error));
    };
    let stream = streams.get(aggregate_type, aggregate_id);
    let reader = RowReader::new(row, stream, Some(position));
    let lean = (|| {
        Ok(LeanRow {
            version: reader.get(3, "version")?,
            event_type: reader.get(4, "event_type")?,
            schema_version: reader.get(5, "schema_version")?,
            payload: reader.get(6, "payload")?,
            details: if details {
                Some(RowDetails {
                    event_id: reader.get(7, "event_id")?,
                    occurred_at: chrono::DateTime::from_timestamp_micros(
                        reader.get(8, "occurred_at")?,
                    ),
                    metadata: reader.get(9, "metadata")?,
                })
            } else {
                None
            },
            damage: if details {
                None
            } else {
                reader.get(10, "damage")?
            },
        })
    })();
    feed_row(stream, position, lean, apply)
}

impl SqliteEventStore {
    /// Feeds the stream's rows from version `versions.0` to `versions.1`, at most `limit` of
    /// them, row by row; returns how many it fed and the version after the last.
    pub(super) async fn stream_rows<F>(
        conn: &mut sqlx::SqliteConnection,
        stream: &StreamId,
        (from, to): (i64, i64),
        until: Option<i64>,
        limit: i64,
        apply: &mut F,
    ) -> Result<(i64, i64)>
    where
        F: FnMut(EventView<'_>) -> Result<()> + Send,
    {
        // The metadata and the time are not read, only checked (`damage!()`, usually NULL):
        // packing the metadata costs a load a third more.
        const SQL: &str = concat!(
            "SELECT position, version, event_type, schema_version, ",
            damage!(),
            ", payload",
            crate::store::sql::stream_range!("$5"),
            " ASC LIMIT $6"
        );
        let rows = stream_query(SQL, stream, (from, to), until, limit)
            .fetch_all(conn)
            .await
            .map_err(Error::database("load"))?;
        let mut next = from;
        for row in &rows {
            let version = feed_stream_row(row, stream, Columns::Checked, apply)?;
            next = version.saturating_add(1);
        }
        Ok((rows.len() as i64, next))
    }

    /// `fold_stream` on one connection.
    pub(super) async fn fold_stream_on<F>(
        conn: &mut sqlx::SqliteConnection,
        stream: &StreamId,
        query: StreamQuery,
        mut apply: F,
    ) -> Result<()>
    where
        F: FnMut(EventView<'_>) -> Result<()> + Send,
    {
        // The first rows row by row: most loads are short (a few events, or the tail after a
        // snapshot), and for them one plain statement costs less than building a framed text.
        let (from, to) = query.sql_versions();
        let until = query.until.map(|t| t.timestamp_micros());
        let limit = query.sql_limit();
        let head = limit.min(STREAM_HEAD);
        let (applied, next) =
            Self::stream_rows(conn, stream, (from, to), until, head, &mut apply).await?;
        if applied < head || applied >= limit {
            return Ok(());
        }
        // The rest of a long stream as framed texts (see `STREAM_FRAMED`).
        let (mut limit, mut next) = (limit - applied, next);
        while limit > 0 {
            // In chunks, so that a text stays far below SQLite's limit on a value's length.
            let chunk = limit.min(STREAM_CHUNK);
            let page = stream_query(STREAM_FRAMED, stream, (next, to), until, chunk)
                .fetch_one(&mut *conn)
                .await;
            let page = match page {
                // Events too large to frame together: the rest row by row.
                Err(error) if too_big(&error) => break,
                page => page.map_err(Error::database("load"))?,
            };
            let count: i64 = page.try_get(0).map_err(Error::database("load"))?;
            let mut applied = 0;
            if let Ok(Some(text)) = page.try_get::<Option<&str>, _>(1) {
                for record in stream_records(text, next) {
                    apply(row_view(
                        stream,
                        record.position,
                        record.version,
                        record.event_type,
                        record.schema_version,
                        record.damage,
                        record.payload,
                    )?)?;
                    applied += 1;
                    next = record.version.saturating_add(1);
                }
            }
            limit -= applied;
            if applied < count {
                break;
            }
            if count < chunk {
                return Ok(());
            }
        }
        if limit > 0 {
            Self::stream_rows(conn, stream, (next, to), until, limit, &mut apply).await?;
        }
        Ok(())
    }

    /// Reads a page of a fold as one framed text ([`FOLD_FRAMED`], [`FOLD_FRAMED_WHOLE`]);
    /// `None` if its rows are too large to frame together.
    pub(crate) async fn framed_page(
        &self,
        query: &ReadAll,
        details: bool,
    ) -> Result<Option<FramedPage>> {
        let mut select = QueryBuilder::<Sqlite>::new(if details {
            FOLD_FRAMED_WHOLE
        } else {
            FOLD_FRAMED
        });
        select.push_bind(query.after.to_sql());
        push_filters(&mut select, query);
        select.push(" ORDER BY position LIMIT ");
        select.push_bind(to_i64(query.batch_size as u64));
        select.push(")");
        let row = match select.build().fetch_one(&self.reader).await {
            // Events too large to frame together: the page is read row by row.
            Err(error) if too_big(&error) => return Ok(None),
            row => row.map_err(Error::database("read_all"))?,
        };
        let count: i64 = row.try_get(0).map_err(Error::database("read_all"))?;
        Ok(Some(FramedPage {
            count: count.max(0) as usize,
            row,
        }))
    }
}

impl EventStore for SqliteEventStore {
    crate::store::observed_append!();

    async fn read_stream(
        &self,
        stream: &StreamId,
        query: StreamQuery,
    ) -> Result<Vec<RecordedEvent>> {
        stream.validate()?;
        const READS: [&str; 2] = crate::store::sql::stream_reads!(stream_columns!(), "$5");
        let sql = READS[usize::from(query.backwards)];
        let until = query.until.map(|t| t.timestamp_micros());
        let (from, to) = query.sql_versions();
        let rows = self
            .retrying("read_stream", |_| async {
                let mut conn = self
                    .readers
                    .acquire()
                    .await
                    .map_err(Error::database("read_stream"))?;
                let rows = stream_query(sql, stream, (from, to), until, query.sql_limit())
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(Error::database("read_stream"))?;
                self.readers.put(conn);
                Ok(rows)
            })
            .await?;
        crate::store::sql::stream_events(stream, &query, &rows, |row| decode_row(row, Some(stream)))
    }

    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent>> {
        paged(query, move |query| async move {
            let query = &query;
            self.retrying("read_all", |_| self.read_page(query.clone()))
                .await
        })
    }

    async fn fold_stream<F>(
        &self,
        stream: &StreamId,
        query: StreamQuery,
        mut apply: F,
    ) -> Result<()>
    where
        F: FnMut(EventView<'_>) -> Result<()> + Send,
    {
        stream.validate()?;
        // Rows are applied as they are read: an attempt is repeated after a retryable error
        // only if it applied no row yet.
        let mut retries = crate::store::Retries::new("load");
        loop {
            let mut fed = false;
            let attempt = async {
                // One reader connection for the whole load, kept for the next operation if the
                // load ran to its end (see `store::warm`).
                let mut conn = self
                    .readers
                    .acquire()
                    .await
                    .map_err(Error::database("load"))?;
                let feed = |view: EventView<'_>| {
                    fed = true;
                    apply(view)
                };
                Self::fold_stream_on(&mut conn, stream, query.clone(), feed).await?;
                self.readers.put(conn);
                Ok(())
            };
            match attempt.await {
                Err(error) if !fed && retries.again(&error).await => {}
                result => return result,
            }
        }
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        stream.validate()?;
        self.retrying("stream_version", |_| async {
            let mut conn = self
                .readers
                .acquire()
                .await
                .map_err(Error::database("stream_version"))?;
            let version = current_version(&mut conn, stream, "stream_version").await?;
            self.readers.put(conn);
            Ok(version)
        })
        .await
    }

    fn watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    async fn fold_all<F>(&self, query: &ReadAll, mut apply: F) -> Result<FoldEnd>
    where
        F: for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()> + Send,
    {
        use futures::TryStreamExt;
        let details = query.context == ContextFields::All;
        let mut end = FoldEnd::default();
        let mut streams = StreamCache::default();
        let first = self
            .retrying("read_all", |_| self.framed_page(query, details))
            .await?;
        if let Some(page) = first {
            if page.count == 0 {
                return Ok(end);
            }
            for record in page.records(query.after, details) {
                let stream = streams.get(record.aggregate_type, record.aggregate_id);
                let flow = feed_row(stream, record.position, Ok(record.lean), &mut apply);
                end.rows += 1;
                end.last = Some(record.position);
                if flow.is_break() {
                    end.stopped = true;
                    return Ok(end);
                }
            }
            if end.rows == page.count {
                return Ok(end);
            }
        }
        let mut select = QueryBuilder::<Sqlite>::new(concat!(
            "SELECT ",
            fold_columns!(),
            " FROM events WHERE position > "
        ));
        select.push_bind(end.last.unwrap_or(query.after).to_sql());
        push_filters(&mut select, query);
        select.push(" ORDER BY position LIMIT ");
        select.push_bind(to_i64(query.batch_size.saturating_sub(end.rows) as u64));
        // Row by row as sqlx's worker thread steps the statement: the rows are applied while
        // the next ones are read, on the other core. An error part way leaves the rows before
        // it applied (the caller knows how far it got).
        let mut rows = select.build().fetch(&self.reader);
        while let Some(row) = rows.try_next().await.map_err(Error::database("read_all"))? {
            let position = Position::new(
                row.try_get::<i64, _>(0)
                    .map_err(Error::database("read_all"))?
                    .max(0) as u64,
            );
            let flow = feed_whole(&row, position, details, &mut streams, &mut apply);
            end.rows += 1;
            end.last = Some(position);
            if flow.is_break() {
                end.stopped = true;
                break;
            }
        }
        Ok(end)
    }

    async fn count(&self, query: ReadAll) -> Result<u64> {
        let query = &query;
        let count: i64 = self
            .retrying("count", |_| async move {
                let mut select =
                    QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM events WHERE position > ");
                select.push_bind(query.after.to_sql());
                push_filters(&mut select, query);
                select
                    .build_query_scalar()
                    .fetch_one(&self.reader)
                    .await
                    .map_err(Error::database("count"))
            })
            .await?;
        Ok(count.max(0) as u64)
    }

    async fn log_head(&self) -> Result<LogHead> {
        // One writer at a time, positions in commit order: everything committed is readable.
        let last: Option<i64> = self
            .retrying("log_head", |_| async {
                sqlx::query_scalar("SELECT MAX(position) FROM events")
                    .fetch_one(&self.reader)
                    .await
                    .map_err(Error::database("log_head"))
            })
            .await?;
        let last = Position::new(last.unwrap_or(0).max(0) as u64);
        Ok(LogHead {
            last,
            readable: last,
            held_back: 0,
        })
    }
}

/// Reads one row of the `events` table: its position (an error here is the database's), then
/// the event, or why the row is damaged.
pub(super) fn decode_row(row: &SqliteRow, stream: Option<&StreamId>) -> Result<PageRow> {
    let position = Position::new(
        row.try_get::<i64, _>(0)
            .map_err(Error::database("read"))?
            .max(0) as u64,
    );
    let owned;
    let stream = match stream {
        Some(stream) => stream,
        None => {
            let unreadable = StreamId::unchecked("?", "?");
            let reader = RowReader::new(row, &unreadable, Some(position));
            owned = match (
                reader.get::<&str>(8, "aggregate_type"),
                reader.get::<&str>(9, "aggregate_id"),
            ) {
                (Ok(aggregate_type), Ok(aggregate_id)) => {
                    StreamId::unchecked(aggregate_type, aggregate_id)
                }
                (Err(error), _) | (_, Err(error)) => return Ok((position, Some(Err(error)))),
            };
            &owned
        }
    };
    Ok((position, Some(read_event(row, stream, position))))
}

pub(super) fn read_event(
    row: &SqliteRow,
    stream: &StreamId,
    position: Position,
) -> Result<RecordedEvent> {
    let mut reader = RowReader::new(row, stream, Some(position));
    let version: i64 = reader.get(2, "version")?;
    reader.version = u64::try_from(version).ok().filter(|v| *v > 0);
    let event_type: &str = reader.get(3, "event_type")?;
    reader.event_type = Some(event_type);
    EventRow {
        stream: stream.clone(),
        position,
        event_id: reader.get(1, "event_id")?,
        version,
        event_type: event_type.to_owned(),
        schema_version: reader.get(4, "schema_version")?,
        occurred_at: chrono::DateTime::from_timestamp_micros(reader.get(5, "occurred_at")?),
        metadata: reader.get(6, "metadata")?,
        payload: reader.get(7, "payload")?,
    }
    .into_event()
}
