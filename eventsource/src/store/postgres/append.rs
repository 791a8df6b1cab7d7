//! Appends: one statement that checks the expected version and inserts the batch, the
//! advisory lock after lost races, group commit, and what a failed append finds out.

use super::*;
use crate::store::group::{GroupWriter, Grouped, Pending};

/// The head of [`APPEND`] and [`APPEND_ONE`]: the stream's version (`current`), and it again
/// (`accepted`) only if it satisfies the expected version (`$3` its kind, `$4` an exact one).
macro_rules! append_check {
    () => {
        r#"
WITH current AS (
    SELECT COALESCE(MAX(version), 0)::BIGINT AS v
    FROM events WHERE aggregate_type = $1 AND aggregate_id = $2
), accepted AS (
    SELECT v FROM current
    WHERE CASE $3::INT WHEN 0 THEN TRUE WHEN 1 THEN v = 0 WHEN 2 THEN v > 0 ELSE v = $4::BIGINT END
)"#
    };
}

/// The transaction's base position, and the end of a batch's append: each inserted row's
/// version and position, summed up with the stream's version before it.
macro_rules! append_parts {
    (tx) => {
        r#", tx AS MATERIALIZED (
    SELECT pg_current_xact_id()::TEXT::BIGINT * 65536 AS base FROM accepted
)"#
    };
    (end) => {
        r#"
    RETURNING version, position
)
SELECT (SELECT v FROM current), (SELECT MAX(version) FROM inserted), (SELECT MAX(position) FROM inserted)
"#
    };
}

pub(super) const APPEND: &str = concat!(
    append_check!(),
    append_parts!(tx),
    r#", inserted AS (
    INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, event_type,
        schema_version, occurred_at, tenant_id, actor_id, correlation_id, causation_id, metadata, payload)
    SELECT tx.base + e.ord - 1, e.event_id, $1, $2, accepted.v + e.ord, e.event_type,
        e.schema_version, e.occurred_at, e.tenant_id, e.actor_id, e.correlation_id, e.causation_id,
        e.metadata::JSONB, e.payload::JSONB
    FROM accepted, tx, UNNEST($5::UUID[], $6::TEXT[], $7::INT[], $8::TIMESTAMPTZ[], $9::TEXT[],
        $10::TEXT[], $11::UUID[], $12::UUID[], $13::TEXT[], $14::TEXT[])
        WITH ORDINALITY AS e(event_id, event_type, schema_version, occurred_at, tenant_id, actor_id,
            correlation_id, causation_id, metadata, payload, ord)"#,
    append_parts!(end)
);

/// [`APPEND`] for a batch without metadata (the common case): five arrays instead of ten.
pub(super) const APPEND_BARE: &str = concat!(
    append_check!(),
    append_parts!(tx),
    r#", inserted AS (
    INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, event_type,
        schema_version, occurred_at, payload)
    SELECT tx.base + e.ord - 1, e.event_id, $1, $2, accepted.v + e.ord, e.event_type,
        e.schema_version, e.occurred_at, e.payload::JSONB
    FROM accepted, tx, UNNEST($5::UUID[], $6::TEXT[], $7::INT[], $8::TIMESTAMPTZ[], $9::TEXT[])
        WITH ORDINALITY AS e(event_id, event_type, schema_version, occurred_at, payload, ord)"#,
    append_parts!(end)
);

/// [`APPEND`] for one event (the command path's usual save), with plain parameters instead of
/// arrays: encoding ten one-element arrays was a sixth of the client's instructions for such an
/// append (`callgrind`).
pub(super) const APPEND_ONE: &str = concat!(
    append_check!(),
    r#", inserted AS (
    INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, event_type,
        schema_version, occurred_at, tenant_id, actor_id, correlation_id, causation_id, metadata, payload)
    SELECT pg_current_xact_id()::TEXT::BIGINT * 65536, $5::UUID, $1, $2, accepted.v + 1,
        $6::TEXT, $7::INT, $8::TIMESTAMPTZ, $9::TEXT, $10::TEXT, $11::UUID, $12::UUID,
        $13::TEXT::JSONB, $14::TEXT::JSONB
    FROM accepted
    RETURNING version, position
)
SELECT (SELECT v FROM current), (SELECT version FROM inserted), (SELECT position FROM inserted)
"#
);

/// A group of appends (see `store::group`) in one statement: every stream's version is read,
/// each append's check decides whether its rows go in, and each append's outcome comes back by
/// its index (`a`). Two appends of one stream never share a group: both would read the same
/// version.
pub(super) const GROUP_APPEND: &str = r#"
WITH e AS (
    SELECT * FROM UNNEST($1::INT[], $2::TEXT[], $3::TEXT[], $4::INT[], $5::BIGINT[], $6::BIGINT[],
        $7::UUID[], $8::TEXT[], $9::INT[], $10::TIMESTAMPTZ[], $11::TEXT[], $12::TEXT[],
        $13::UUID[], $14::UUID[], $15::TEXT[], $16::TEXT[])
        WITH ORDINALITY AS e(a, aggregate_type, aggregate_id, kind, exact, i, event_id, event_type,
            schema_version, occurred_at, tenant_id, actor_id, correlation_id, causation_id,
            metadata, payload, ord)
), heads AS (
    SELECT s.a, s.aggregate_type, s.aggregate_id, s.kind, s.exact,
        (SELECT COALESCE(MAX(version), 0) FROM events v
         WHERE v.aggregate_type = s.aggregate_type AND v.aggregate_id = s.aggregate_id)::BIGINT AS v
    FROM e AS s WHERE s.i = 1
), accepted AS (
    SELECT a, v FROM heads
    WHERE CASE kind WHEN 0 THEN TRUE WHEN 1 THEN v = 0 WHEN 2 THEN v > 0 ELSE v = exact END
), tx AS MATERIALIZED (
    SELECT pg_current_xact_id()::TEXT::BIGINT * 65536 AS base
    FROM (SELECT 1 FROM accepted LIMIT 1) AS any_accepted
), inserted AS (
    INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, event_type,
        schema_version, occurred_at, tenant_id, actor_id, correlation_id, causation_id, metadata, payload)
    SELECT tx.base + e.ord - 1, e.event_id, e.aggregate_type, e.aggregate_id, accepted.v + e.i,
        e.event_type, e.schema_version, e.occurred_at, e.tenant_id, e.actor_id, e.correlation_id,
        e.causation_id, e.metadata::JSONB, e.payload::JSONB
    FROM e JOIN accepted ON accepted.a = e.a, tx
    RETURNING aggregate_type, aggregate_id, version, position
)
SELECT h.a, MAX(i.version), MAX(i.position)
FROM heads h LEFT JOIN inserted i
    ON i.aggregate_type = h.aggregate_type AND i.aggregate_id = h.aggregate_id
GROUP BY h.a
"#;

/// One append's outcome in a group: its index, and its stream version and last position if it
/// was written.
pub(super) type GroupRow = (i32, Option<i64>, Option<i64>);

impl GroupWriter for PostgresEventStore {
    const SAME_STREAM_TWICE: bool = false;
    /// Two: one group commits while the next forms. With eight, groups were smaller and more
    /// statements ran for the same appends; with commits of 0.08 ms, 64 writers ran at 1.86-1.88x
    /// raw with eight in flight against 3.01-3.07x with two (2.62-2.94x with four).
    const IN_FLIGHT: usize = 2;

    async fn write_group(&self, group: &[Pending]) -> Vec<Grouped> {
        let rows: usize = group.iter().map(|pending| pending.events.len()).sum();
        let mut appends = Vec::with_capacity(rows);
        let mut aggregate_types = Vec::with_capacity(rows);
        let mut aggregate_ids = Vec::with_capacity(rows);
        let mut kinds = Vec::with_capacity(rows);
        let mut exacts = Vec::with_capacity(rows);
        let mut indexes = Vec::with_capacity(rows);
        let mut ids = Vec::with_capacity(rows);
        let mut types = Vec::with_capacity(rows);
        let mut schema_versions = Vec::with_capacity(rows);
        let mut times = Vec::with_capacity(rows);
        let mut tenants = Vec::with_capacity(rows);
        let mut actors = Vec::with_capacity(rows);
        let mut correlations = Vec::with_capacity(rows);
        let mut causations = Vec::with_capacity(rows);
        let mut extras = Vec::with_capacity(rows);
        let mut payloads = Vec::with_capacity(rows);
        for (a, pending) in group.iter().enumerate() {
            let (kind, exact) = expected_code(pending.expected);
            for (i, event) in pending.events.iter().enumerate() {
                appends.push(a as i32);
                aggregate_types.push(pending.stream.aggregate_type());
                aggregate_ids.push(pending.stream.aggregate_id());
                kinds.push(kind);
                exacts.push(exact);
                indexes.push(i as i64 + 1);
                ids.push(event.event_id);
                types.push(&*event.event_type);
                schema_versions.push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
                times.push(event.occurred_at);
                tenants.push(event.metadata.tenant_id.as_deref());
                actors.push(event.metadata.actor_id.as_deref());
                correlations.push(event.metadata.correlation_id);
                causations.push(event.metadata.causation_id);
                extras.push(extra_json(&event.metadata));
                payloads.push(event.payload.as_str());
            }
        }
        // On a kept connection (see `store::warm`), like every append.
        let outcome: sqlx::Result<Vec<GroupRow>> = match self.warm.acquire().await {
            Err(error) => Err(error),
            Ok(mut conn) => {
                let rows = sqlx::query_as(GROUP_APPEND)
                    .bind(&appends)
                    .bind(&aggregate_types)
                    .bind(&aggregate_ids)
                    .bind(&kinds)
                    .bind(&exacts)
                    .bind(&indexes)
                    .bind(&ids)
                    .bind(&types)
                    .bind(&schema_versions)
                    .bind(&times)
                    .bind(&tenants)
                    .bind(&actors)
                    .bind(&correlations)
                    .bind(&causations)
                    .bind(&extras)
                    .bind(&payloads)
                    .fetch_all(&mut *conn)
                    .await;
                if rows.is_ok() {
                    self.warm.put(conn);
                }
                rows
            }
        };
        let mut outcomes: Vec<Grouped> = group.iter().map(|_| Grouped::Alone).collect();
        // A failed statement wrote nothing (a concurrent writer outside the group took a
        // version, an event id is taken, the connection broke): each append goes on its own.
        if let Ok(rows) = outcome {
            for (a, version, position) in rows {
                if let (Some(slot), Some(version), Some(position)) =
                    (outcomes.get_mut(a.max(0) as usize), version, position)
                {
                    *slot = Grouped::Done(Ok(AppendResult {
                        stream_version: version.max(0) as u64,
                        last_position: Position::new(position.max(0) as u64),
                    }));
                }
            }
        }
        outcomes
    }

    async fn append_alone(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult> {
        self.retrying("append", |_| self.append_attempt(stream, expected, events))
            .await
    }

    fn committed(&self) {
        self.signal_append();
    }
}

/// An expected version as the append statements take it: a kind and, for `Exact`, the version.
pub(super) fn expected_code(expected: ExpectedVersion) -> (i32, i64) {
    match expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::StreamExists => (2, 0),
        ExpectedVersion::Exact(n) => (3, i64::try_from(n).unwrap_or(i64::MAX)),
    }
}

impl PostgresEventStore {
    pub(super) async fn append_once<'c, X>(
        executor: X,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> std::result::Result<AppendResult, AppendFailure>
    where
        X: sqlx::PgExecutor<'c>,
    {
        let (kind, exact) = expected_code(expected);
        let row = if let [event] = events {
            sqlx::query(APPEND_ONE)
                .bind(stream.aggregate_type())
                .bind(stream.aggregate_id())
                .bind(kind)
                .bind(exact)
                .bind(event.event_id)
                .bind(&*event.event_type)
                .bind(i32::try_from(event.schema_version).unwrap_or(i32::MAX))
                .bind(event.occurred_at)
                .bind(event.metadata.tenant_id.as_deref())
                .bind(event.metadata.actor_id.as_deref())
                .bind(event.metadata.correlation_id)
                .bind(event.metadata.causation_id)
                .bind(extra_json(&event.metadata))
                .bind(event.payload.as_str())
                .fetch_one(executor)
                .await
                .map_err(AppendFailure::Database)?
        } else {
            Self::append_rows(executor, stream, (kind, exact), events).await?
        };
        let current: i64 = row.try_get(0).map_err(AppendFailure::Database)?;
        let version: Option<i64> = row.try_get(1).map_err(AppendFailure::Database)?;
        let position: Option<i64> = row.try_get(2).map_err(AppendFailure::Database)?;
        match (version, position) {
            (Some(version), Some(position)) => Ok(AppendResult {
                stream_version: version as u64,
                last_position: Position::new(position as u64),
            }),
            _ => Err(AppendFailure::Rejected {
                current: current.max(0) as u64,
            }),
        }
    }

    /// [`APPEND`] or [`APPEND_BARE`]: the rows of a batch as arrays, one per column.
    pub(super) async fn append_rows<'c, X>(
        executor: X,
        stream: &StreamId,
        (kind, exact): (i32, i64),
        events: &[NewEvent],
    ) -> std::result::Result<PgRow, AppendFailure>
    where
        X: sqlx::PgExecutor<'c>,
    {
        let n = events.len();
        let mut ids = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut schema_versions = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        for event in events {
            ids.push(event.event_id);
            types.push(&*event.event_type);
            schema_versions.push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
            times.push(event.occurred_at);
            payloads.push(event.payload.as_str());
        }
        let bare = events.iter().all(|event| event.metadata.is_empty());
        let (mut tenants, mut actors, mut correlations, mut causations, mut extras) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        if !bare {
            for event in events {
                tenants.push(event.metadata.tenant_id.as_deref());
                actors.push(event.metadata.actor_id.as_deref());
                correlations.push(event.metadata.correlation_id);
                causations.push(event.metadata.causation_id);
                extras.push(extra_json(&event.metadata));
            }
        }
        let mut query = sqlx::query(if bare { APPEND_BARE } else { APPEND })
            .bind(stream.aggregate_type())
            .bind(stream.aggregate_id())
            .bind(kind)
            .bind(exact)
            .bind(&ids)
            .bind(&types)
            .bind(&schema_versions)
            .bind(&times);
        if !bare {
            query = query
                .bind(&tenants)
                .bind(&actors)
                .bind(&correlations)
                .bind(&causations)
                .bind(&extras);
        }
        query
            .bind(&payloads)
            .fetch_one(executor)
            .await
            .map_err(AppendFailure::Database)
    }

    /// The first of the batch's event ids that is stored, the rows hidden from this session by
    /// row-level security included (another tenant's); see the migration `hidden_rows`.
    pub(super) async fn taken_event_id(&self, events: &[NewEvent]) -> Result<Option<Uuid>> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let mut session = self.session().await.map_err(Error::database("append"))?;
        let taken = sqlx::query_scalar("SELECT eventsource_event_id_taken($1)")
            .bind(&ids)
            .fetch_one(session.conn())
            .await
            .map_err(Error::database("append"))?;
        session.end().await.map_err(Error::database("append"))?;
        Ok(taken)
    }

    /// If every event of the batch is stored already (an append retried after its outcome was
    /// lost), the result the first attempt had; see `retried_append`.
    pub(super) async fn stored_already(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Option<AppendResult>> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let mut session = self.session().await.map_err(Error::database("append"))?;
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT e.aggregate_type, e.aggregate_id, e.version, e.position \
             FROM UNNEST($1::UUID[]) WITH ORDINALITY AS ids(event_id, ord) \
             JOIN events e ON e.event_id = ids.event_id ORDER BY ids.ord",
        )
        .bind(&ids)
        .fetch_all(session.conn())
        .await
        .map_err(Error::database("append"))?;
        session.end().await.map_err(Error::database("append"))?;
        if rows.len() != events.len() {
            return Ok(None);
        }
        let stored: Vec<(StreamId, u64, Position)> = rows
            .into_iter()
            .map(|(aggregate_type, aggregate_id, version, position)| {
                (
                    StreamId::unchecked(aggregate_type, aggregate_id),
                    version.max(0) as u64,
                    Position::new(position.max(0) as u64),
                )
            })
            .collect();
        Ok(retried_append(
            stream,
            expected,
            stored.iter().map(|(s, v, p)| (s, *v, *p)),
        ))
    }

    /// One attempt of an append, in a session of its own (see [`session`](Self::session)).
    pub(super) async fn append_in_session(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> std::result::Result<AppendResult, AppendFailure> {
        let mut session = self.session().await.map_err(AppendFailure::Database)?;
        let result = Self::append_once(session.conn(), stream, expected, events).await?;
        session.end().await.map_err(AppendFailure::Database)?;
        Ok(result)
    }

    /// An append of [`ExpectedVersion::Any`] or [`ExpectedVersion::StreamExists`] that lost the
    /// race for its versions several times: queues behind a per-stream advisory lock, taken in
    /// its own transaction, so that such appends to one stream go one at a time and each
    /// eventually gets its turn (a writer with an exact expected version still only checks).
    pub(super) async fn append_locked(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> std::result::Result<AppendResult, AppendFailure> {
        let mut tx = self.pool.begin().await.map_err(AppendFailure::Database)?;
        if let Some(tenant) = &self.tenant {
            set_tenant(&mut tx, tenant)
                .await
                .map_err(AppendFailure::Database)?;
        }
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
            .bind(stream.aggregate_type())
            .bind(stream.aggregate_id())
            .execute(&mut *tx)
            .await
            .map_err(AppendFailure::Database)?;
        let result = Self::append_once(&mut *tx, stream, expected, events).await?;
        tx.commit().await.map_err(AppendFailure::Database)?;
        Ok(result)
    }

    /// After an append: wakes this process's live subscribers at once, and has the notifier
    /// task tell the others (`NOTIFY`), coalescing the appends made while it sends.
    ///
    /// The `NOTIFY` is not part of the append's transaction: PostgreSQL serializes the commits
    /// of notifying transactions on one lock, which cost concurrent writers half their
    /// throughput when every append notified. A wake-up that is late or lost only delays a
    /// subscriber to its next poll.
    pub(super) fn signal_append(&self) {
        if let Some(local) = self.appended.get() {
            local.send_modify(|count| *count = count.wrapping_add(1));
        }
        let notifier = self.notifier.get_or_init(|| {
            let (sender, receiver) = tokio::sync::watch::channel(0);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(notify_others(self.pool.clone(), receiver));
            }
            sender
        });
        notifier.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// One attempt at an append (retried by `append` after a transient failure: an attempt
    /// whose commit went through but whose answer was lost finds its own events stored and
    /// reports the same result).
    pub(super) async fn append_attempt(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult> {
        if events.is_empty() {
            let mut session = self.session().await.map_err(Error::database("append"))?;
            let (current, last): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COALESCE(MAX(version), 0)::BIGINT, MAX(position) FROM events \
                 WHERE aggregate_type = $1 AND aggregate_id = $2",
            )
            .bind(stream.aggregate_type())
            .bind(stream.aggregate_id())
            .fetch_one(session.conn())
            .await
            .map_err(Error::database("append"))?;
            session.end().await.map_err(Error::database("append"))?;
            let current = current.max(0) as u64;
            if !expected.is_satisfied_by(current) {
                return Err(expected.conflict(stream, current));
            }
            return Ok(AppendResult {
                stream_version: current,
                last_position: Position::new(last.unwrap_or(0).max(0) as u64),
            });
        }
        let retry = matches!(
            expected,
            ExpectedVersion::Any | ExpectedVersion::StreamExists
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = if attempt > OPTIMISTIC_ATTEMPTS {
                self.append_locked(stream, expected, events).await
            } else {
                self.append_in_session(stream, expected, events).await
            };
            let err = match outcome {
                Ok(result) => {
                    self.signal_append();
                    return Ok(result);
                }
                Err(AppendFailure::Rejected { current }) => {
                    // An append retried after its outcome was lost finds its own events stored.
                    if let Some(done) = self.stored_already(stream, expected, events).await? {
                        return Ok(done);
                    }
                    return Err(expected.conflict(stream, current));
                }
                Err(AppendFailure::Database(err)) => err,
            };
            let constraint = err
                .as_database_error()
                .filter(|db| db.code().as_deref() == Some("23505"))
                .and_then(|db| db.constraint().map(str::to_owned));
            match constraint.as_deref() {
                Some("events_stream_version") => {
                    // Another writer took the versions between our check and our insert.
                    if !retry {
                        if let Some(done) = self.stored_already(stream, expected, events).await? {
                            return Ok(done);
                        }
                        let current = self.stream_version(stream).await?;
                        return Err(expected.conflict(stream, current));
                    }
                }
                Some("events_event_id") => {
                    if let Some(done) = self.stored_already(stream, expected, events).await? {
                        return Ok(done);
                    }
                    let event_id = self.taken_event_id(events).await?;
                    return Err(match event_id {
                        Some(event_id) => Error::DuplicateEvent {
                            stream: stream.clone(),
                            event_id,
                        },
                        None => Error::database("append")(err),
                    });
                }
                _ => return Err(Error::database("append")(err)),
            }
        }
    }
}

/// Why one append attempt failed, before it becomes an [`Error`].
pub(super) enum AppendFailure {
    /// The expected version did not match: nothing was inserted.
    Rejected {
        current: u64,
    },
    Database(sqlx::Error),
}

impl PostgresEventStore {
    /// [`EventStore::append`], without its span and metrics.
    pub(super) async fn append_unobserved(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        crate::store::group::append(self, self.group.as_ref(), stream, expected, events).await
    }
}
