//! Reads: streams, pages of the global log below the fence, counts, the head and waiting.

use super::*;
use crate::store::sql::stream_query;

impl PostgresEventStore {
    /// One page of a global read: the next events of finished transactions only (the fence).
    pub(super) async fn read_page(&self, query: ReadAll) -> Result<Vec<PageRow>> {
        let query = &query;
        let rows = self
            .retrying("read_all", move |_| self.fetch_page(query))
            .await?;
        let mut of = RowsOf::Log(StreamCache::default());
        rows.iter().map(|row| decode_row(row, &mut of)).collect()
    }

    /// The rows of one page of a global read: the columns of a stream read, then the stream's
    /// (at indexes 8 and 9) and whether the row passes the filters (10).
    pub(super) async fn fetch_page(&self, query: &ReadAll) -> Result<Vec<PgRow>> {
        let mut select = page_query(query, true);
        let mut session = self.session().await.map_err(Error::database("read_all"))?;
        let rows = select
            .build()
            .fetch_all(session.conn())
            .await
            .map_err(Error::database("read_all"))?;
        session.end().await.map_err(Error::database("read_all"))?;
        Ok(rows)
    }
}

impl PostgresEventStore {
    /// One page of [`EventStore::fold_all`], fed row by row as the rows arrive: PostgreSQL
    /// produces the next rows while this process applies the last ones. An error part way
    /// leaves the rows before it fed (`end` says how many).
    pub(super) async fn stream_page<F>(
        &self,
        query: &ReadAll,
        details: bool,
        end: &mut FoldEnd,
        apply: &mut F,
    ) -> Result<()>
    where
        F: for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()> + Send,
    {
        let mut select = page_query(query, details);
        let mut session = self.session().await.map_err(Error::database("read_all"))?;
        let mut streams = StreamCache::default();
        {
            let mut rows = select.build().fetch(session.conn());
            while let Some(row) = rows.try_next().await.map_err(Error::database("read_all"))? {
                let position = Position::new(
                    row.try_get::<i64, _>(0)
                        .map_err(Error::database("read_all"))?
                        .max(0) as u64,
                );
                end.rows += 1;
                end.last = Some(position);
                let at = if details {
                    &PageColumns::FULL
                } else {
                    &PageColumns::LEAN
                };
                if !row
                    .try_get::<bool, _>(at.wanted)
                    .map_err(Error::database("read_all"))?
                {
                    continue;
                }
                let flow = match (
                    row.try_get::<&str, _>(at.aggregate_type),
                    row.try_get::<&str, _>(at.aggregate_id),
                ) {
                    (Ok(aggregate_type), Ok(aggregate_id)) => {
                        let stream = streams.get(aggregate_type, aggregate_id);
                        let reader = RowReader::new(&row, stream, Some(position));
                        let lean = (|| {
                            Ok(LeanRow {
                                version: reader.get(at.version, "version")?,
                                event_type: reader.get(at.event_type, "event_type")?,
                                schema_version: i64::from(
                                    reader.get::<i32>(at.schema_version, "schema_version")?,
                                ),
                                payload: reader.get(at.payload, "payload")?,
                                details: if details {
                                    Some(RowDetails {
                                        event_id: reader.get(1, "event_id")?,
                                        occurred_at: reader.get(5, "occurred_at")?,
                                        metadata: reader.get(6, "metadata")?,
                                    })
                                } else {
                                    None
                                },
                                damage: match at.damage {
                                    Some(damage) => reader.get(damage, "damage")?,
                                    None => None,
                                },
                            })
                        })();
                        feed_row(stream, position, lean, apply)
                    }
                    _ => {
                        let unreadable = StreamId::unchecked("?", "?");
                        let error = RowReader::new(&row, &unreadable, Some(position))
                            .damaged("the stream columns cannot be read".into());
                        apply(Err(&error))
                    }
                };
                if flow.is_break() {
                    end.stopped = true;
                    break;
                }
            }
        }
        session.end().await.map_err(Error::database("read_all"))
    }
}

/// Where the columns of a page ([`page_query`]) are, with the whole context or without.
pub(super) struct PageColumns {
    version: usize,
    event_type: usize,
    schema_version: usize,
    payload: usize,
    aggregate_type: usize,
    aggregate_id: usize,
    wanted: usize,
    /// `damage!()`, in a fold of locations.
    damage: Option<usize>,
}

impl PageColumns {
    /// A stream read's columns (the event id at 1, the time at 5, the metadata at 6), then the
    /// stream's and `wanted`.
    pub(super) const FULL: PageColumns = PageColumns {
        version: 2,
        event_type: 3,
        schema_version: 4,
        payload: 7,
        aggregate_type: 8,
        aggregate_id: 9,
        wanted: 10,
        damage: None,
    };
    /// A fold of locations: position, version, type, schema version, payload, stream, `wanted`,
    /// `damage!()`.
    pub(super) const LEAN: PageColumns = PageColumns {
        version: 1,
        event_type: 2,
        schema_version: 3,
        payload: 4,
        aggregate_type: 5,
        aggregate_id: 6,
        wanted: 7,
        damage: Some(8),
    };
}

/// The statement of one page of a global read (see [`PostgresEventStore::fetch_page`]).
pub(super) fn page_query(query: &ReadAll, details: bool) -> QueryBuilder<'_, Postgres> {
    {
        // The page is the next `batch_size` events after the position, cut at the fence. Written
        // as one range (`position > $1 AND position < fence`), a generic plan (what PostgreSQL
        // uses for a prepared statement after five runs), knowing neither bound, estimates a
        // small range and sorts every later event per page: 15x slower on 100,000 events. The
        // one-sided inner query always walks the primary key in order, and the result is the
        // same: the events below the fence among the next ones are a prefix of them.
        //
        // Filters by event or aggregate type are not pushed into that walk: with a filter of
        // unknown selectivity (a table not yet analyzed, a generic plan) PostgreSQL scans and
        // sorts the whole rest of the table for every page. The walk reads the next positions
        // whatever their type, and a `wanted` column tells which rows pass: the others come back
        // with their payload and metadata left out, so that they only move the cursor.
        let filtered = !query.event_types.is_empty() || !query.aggregate_types.is_empty();
        let mut select = match (details, filtered) {
            // `wanted` is computed once per row in the walk; the outer query hands over the
            // payload and metadata of wanted rows only.
            (true, true) => QueryBuilder::<Postgres>::new(concat!(
                "SELECT position, event_id, version, event_type, schema_version, ",
                occurred_at!(),
                ", CASE WHEN wanted THEN ",
                packed_metadata!(),
                " END, CASE WHEN wanted THEN payload::TEXT END, aggregate_type, aggregate_id, \
                 wanted FROM (SELECT *, "
            )),
            (true, false) => QueryBuilder::<Postgres>::new(concat!(
                "SELECT * FROM (SELECT ",
                stream_columns!(),
                ", aggregate_type, aggregate_id, TRUE AS wanted"
            )),
            // A lean page (see `PageColumns::LEAN`): the walk carries the seven columns it hands over, not
            // the whole row (a third faster on 1,000-row pages than `SELECT *`).
            (false, true) => QueryBuilder::<Postgres>::new(concat!(
                "SELECT position, version, event_type, schema_version, \
                 CASE WHEN wanted THEN payload::TEXT END, aggregate_type, aggregate_id, wanted, \
                 damage FROM (SELECT position, version, event_type, schema_version, payload, \
                 aggregate_type, aggregate_id, ",
                damage!(),
                " AS damage, ",
            )),
            (false, false) => QueryBuilder::<Postgres>::new(concat!(
                "SELECT * FROM (SELECT position, version, event_type, schema_version, \
                 payload::TEXT, aggregate_type, aggregate_id, TRUE AS wanted, ",
                damage!(),
                " AS damage",
            )),
        };
        if filtered {
            push_wanted(&mut select, query);
            select.push(" AS wanted");
        }
        select.push(" FROM events WHERE position > ");
        select.push_bind(query.after.to_sql());
        if let Some(tenant) = &query.tenant_id {
            push_tenant(&mut select, tenant);
        }
        select.push(format_args!(
            " ORDER BY position LIMIT {}) page WHERE position < {FENCE} ORDER BY position",
            query.batch_size.min(i64::MAX as usize)
        ));
        select
    }
}

/// The values of a filter that a stored event can have. Every store refuses a NUL character in
/// the types and tenants it stores, and PostgreSQL refuses one in a parameter: such a value
/// matches nothing, as on every other store, and is not sent.
pub(super) fn storable(values: &[String]) -> Vec<&str> {
    values
        .iter()
        .map(String::as_str)
        .filter(|value| !value.contains('\0'))
        .collect()
}

/// The tenant filter (see [`storable`]).
pub(super) fn push_tenant<'q>(select: &mut QueryBuilder<'q, Postgres>, tenant: &'q str) {
    if tenant.contains('\0') {
        select.push(" AND FALSE");
    } else {
        select.push(" AND tenant_id = ");
        select.push_bind(tenant);
    }
}

/// The `ReadAll` type filters as one boolean expression (`TRUE` without any).
pub(super) fn push_wanted<'q>(select: &mut QueryBuilder<'q, Postgres>, query: &'q ReadAll) {
    select.push("(TRUE");
    if !query.event_types.is_empty() {
        select.push(" AND event_type = ANY(");
        select.push_bind(storable(&query.event_types));
        select.push(")");
    }
    if !query.aggregate_types.is_empty() {
        select.push(" AND aggregate_type = ANY(");
        select.push_bind(storable(&query.aggregate_types));
        select.push(")");
    }
    select.push(")");
}

/// Appends the `ReadAll` filters to a `WHERE` clause.
pub(super) fn push_filters<'q>(select: &mut QueryBuilder<'q, Postgres>, query: &'q ReadAll) {
    select.push(" AND ");
    push_wanted(select, query);
    if let Some(tenant) = &query.tenant_id {
        push_tenant(select, tenant);
    }
}
impl EventStore for PostgresEventStore {
    crate::store::observed_append!();

    async fn read_stream(
        &self,
        stream: &StreamId,
        query: StreamQuery,
    ) -> Result<Vec<RecordedEvent>> {
        stream.validate()?;
        const READS: [&str; 2] =
            crate::store::sql::stream_reads!(stream_columns!(), "$5::TIMESTAMPTZ");
        let (from, to) = query.sql_versions();
        let (sql, until, limit) = (
            READS[usize::from(query.backwards)],
            query.until,
            query.sql_limit(),
        );
        let rows = self
            .statement("read_stream", move |conn, _| {
                Box::pin(stream_query(sql, stream, (from, to), until, limit).fetch_all(conn))
            })
            .await?;
        let mut of = RowsOf::Stream(stream);
        crate::store::sql::stream_events(stream, &query, &rows, |row| decode_row(row, &mut of))
    }

    fn read_all(&self, query: ReadAll) -> BoxStream<'_, Result<RecordedEvent>> {
        paged(query, move |query| self.read_page(query))
    }

    fn watch_appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended
            .get_or_init(|| {
                let (sender, _) = tokio::sync::watch::channel(0);
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(listen(self.pool.clone(), sender.clone()));
                }
                sender
            })
            .subscribe()
    }

    async fn fold_all<F>(&self, query: &ReadAll, mut apply: F) -> Result<FoldEnd>
    where
        F: for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()> + Send,
    {
        let details = query.context == ContextFields::All;
        // Nothing fed yet: the read is safe to repeat.
        let mut retries = crate::store::Retries::new("read_all");
        loop {
            let mut end = FoldEnd::default();
            match self.stream_page(query, details, &mut end, &mut apply).await {
                Err(error) if end.rows == 0 && retries.again(&error).await => self.recover().await,
                result => return result.map(|()| end),
            }
        }
    }

    async fn count(&self, query: ReadAll) -> Result<u64> {
        let query = &query;
        let count: i64 = self
            .statement("count", move |conn, _| {
                let mut select =
                    QueryBuilder::<Postgres>::new("SELECT COUNT(*) FROM events WHERE position > ");
                select.push_bind(query.after.to_sql());
                push_filters(&mut select, query);
                select.push(format_args!(" AND position < {FENCE}"));
                Box::pin(async move { select.build_query_scalar().fetch_one(conn).await })
            })
            .await?;
        Ok(count.max(0) as u64)
    }

    async fn log_head(&self) -> Result<LogHead> {
        // Plain scalar subqueries with the fence inline: each walks the primary key's index.
        let sql = format!(
            "SELECT (SELECT MAX(position) FROM events), \
             COALESCE((SELECT MAX(position) FROM events WHERE position < {FENCE}), 0), \
             (SELECT COUNT(*) FROM events WHERE position >= {FENCE})"
        );
        let sql = sql.as_str();
        let (last, readable, held_back): (Option<i64>, i64, i64) = self
            .statement("log_head", move |conn, _| {
                Box::pin(sqlx::query_as(sql).fetch_one(conn))
            })
            .await?;
        Ok(LogHead {
            last: Position::new(last.unwrap_or(0).max(0) as u64),
            readable: Position::new(readable.max(0) as u64),
            held_back: held_back.max(0) as u64,
        })
    }

    async fn wait_for(&self, position: Position, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(1);
        loop {
            let sql = format!("SELECT {FENCE}");
            let sql = sql.as_str();
            let fence: i64 = self
                .retrying("wait_for", move |_| async move {
                    sqlx::query_scalar(sql)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(Error::database("wait_for"))
                })
                .await?;
            if position.to_sql() < fence {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(Error::Timeout {
                    operation: "waiting for a position to become readable",
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(delay.min(timeout.saturating_sub(started.elapsed()))).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
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
        // The metadata and the time are not read, only checked (`damage!()`, usually NULL).
        const SQL: &str = concat!(
            "SELECT position, version, event_type, schema_version::BIGINT, ",
            damage!(),
            ", payload::TEXT",
            crate::store::sql::stream_range!("$5::TIMESTAMPTZ"),
            " ASC LIMIT $6"
        );
        let (from, to) = query.sql_versions();
        let (until, limit) = (query.until, query.sql_limit());
        // Rows are applied as they arrive, while the server sends the next ones (a tenth faster
        // than applying them after all have arrived, and no more memory than one row). So an
        // attempt is repeated after a transient error only if it applied no row yet; a failure
        // part way fails the load, which the repository then repeats from the start.
        let mut retries = crate::store::Retries::new("load");
        loop {
            let mut fed = false;
            let attempt = async {
                let mut session = self.session().await.map_err(Error::database("load"))?;
                let mut rows =
                    stream_query(SQL, stream, (from, to), until, limit).fetch(session.conn());
                while let Some(row) = rows.try_next().await.map_err(Error::database("load"))? {
                    fed = true;
                    // The statement fixes every column's type (the table's, or a cast).
                    feed_stream_row(&row, stream, Columns::Typed, &mut apply)?;
                }
                drop(rows);
                session.end().await.map_err(Error::database("load"))
            };
            match attempt.await {
                Err(error) if !fed && retries.again(&error).await => self.recover().await,
                result => return result,
            }
        }
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        stream.validate()?;
        let version: i64 = self
            .statement("stream_version", move |conn, _| {
                Box::pin(
                    sqlx::query_scalar(
                        "SELECT COALESCE(MAX(version), 0)::BIGINT FROM events \
                         WHERE aggregate_type = $1 AND aggregate_id = $2",
                    )
                    .bind(stream.aggregate_type())
                    .bind(stream.aggregate_id())
                    .fetch_one(conn),
                )
            })
            .await?;
        Ok(version.max(0) as u64)
    }

    async fn stream_hidden(&self, stream: &StreamId) -> Result<bool> {
        if self.tenant.is_none() {
            // The unscoped store: its role sees every row, or (not being the owner) none.
            return Ok(false);
        }
        self.statement("stream_hidden", move |conn, _| {
            Box::pin(
                sqlx::query_scalar(
                    "SELECT eventsource_stream_taken($1, $2) AND NOT EXISTS (SELECT 1 FROM events \
                     WHERE aggregate_type = $1 AND aggregate_id = $2)",
                )
                .bind(stream.aggregate_type())
                .bind(stream.aggregate_id())
                .fetch_one(conn),
            )
        })
        .await
    }
}

/// Reads one row of the `events` table: its position (an error here is the database's), then
/// the event, or why the row is damaged.
/// Whose rows `decode_row` reads: one stream's, or a global read's, whose consecutive rows of
/// one stream share its id instead of allocating it again.
pub(super) enum RowsOf<'a> {
    Stream(&'a StreamId),
    Log(StreamCache),
}

pub(super) fn decode_row(row: &PgRow, of: &mut RowsOf<'_>) -> Result<PageRow> {
    let position = Position::new(
        Columns::Typed
            .get::<_, i64>(row, 0)
            .map_err(Error::database("read"))?
            .max(0) as u64,
    );
    // A global read's rows end with whether they pass the read's filters.
    if matches!(of, RowsOf::Log(_))
        && !Columns::Typed
            .get::<_, bool>(row, 10)
            .map_err(Error::database("read"))?
    {
        return Ok((position, None));
    }
    let stream = match of {
        RowsOf::Stream(stream) => *stream,
        RowsOf::Log(streams) => match (
            Columns::Typed.get::<_, &str>(row, 8),
            Columns::Typed.get::<_, &str>(row, 9),
        ) {
            (Ok(aggregate_type), Ok(aggregate_id)) => streams.get(aggregate_type, aggregate_id),
            _ => {
                let unreadable = StreamId::unchecked("?", "?");
                let reader = RowReader::of(row, &unreadable, Some(position), Columns::Typed);
                let error = match reader.get::<&str>(8, "aggregate_type") {
                    Err(error) => error,
                    Ok(_) => match reader.get::<&str>(9, "aggregate_id") {
                        Err(error) => error,
                        Ok(_) => reader.damaged("the stream cannot be read".to_owned()),
                    },
                };
                return Ok((position, Some(Err(error))));
            }
        },
    };
    Ok((position, Some(read_event(row, stream, position))))
}

/// An event from a row of `stream_columns!`: every column's type is the table's or a cast's,
/// so values are decoded without sqlx's per-value type check ([`Columns::Typed`]).
pub(super) fn read_event(
    row: &PgRow,
    stream: &StreamId,
    position: Position,
) -> Result<RecordedEvent> {
    let mut reader = RowReader::of(row, stream, Some(position), Columns::Typed);
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
        schema_version: i64::from(reader.get::<i32>(4, "schema_version")?),
        occurred_at: reader.get(5, "occurred_at")?,
        metadata: reader.get(6, "metadata")?,
        payload: reader.get(7, "payload")?,
    }
    .into_event()
}
