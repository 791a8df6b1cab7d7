//! Row decoding: a row of the `events` table checked and made into an event, a view, or a
//! fold's item, by the rules every read path shares.

use super::*;

/// One row of an SQL `events` table, as read, before its invariants are checked.
///
/// Reads select the metadata as one packed column, NULL when an event has none (the common
/// case): the SQL drivers copy every column of every row, so five mostly-NULL columns cost more
/// than one JSON array `[tenant, actor, correlation, causation, extra]` decoded when present.
pub(crate) struct EventRow {
    pub(crate) stream: StreamId,
    pub(crate) position: Position,
    pub(crate) event_id: uuid::Uuid,
    pub(crate) version: i64,
    pub(crate) event_type: String,
    pub(crate) schema_version: i64,
    pub(crate) occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) metadata: Option<String>,
    pub(crate) payload: String,
}

/// Reads the columns of one row, turning a column that cannot be read into an
/// [`Error::Corrupt`] that names the stream, the position and whatever else was read before it.
pub(crate) struct RowReader<'r, R> {
    pub(crate) row: &'r R,
    pub(crate) stream: &'r StreamId,
    pub(crate) position: Option<Position>,
    pub(crate) version: Option<u64>,
    pub(crate) event_type: Option<&'r str>,
    /// Whether sqlx checks each value's type before decoding it.
    columns: Columns,
}

/// Whether sqlx checks each value's column type before decoding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Columns {
    /// Checked: SQLite, where a column of a table written by hand can hold a value of any type.
    Checked,
    /// Not checked: PostgreSQL statements whose every column has the table's type or a cast's,
    /// so it cannot hold a value of another type. Values are still decoded (text still checked
    /// as UTF-8). The check was nearly half of the client's work per value read by a load
    /// (`callgrind`: 16.3M -> 9.2M instructions for the values of 1,000 ten-event loads).
    #[cfg(feature = "postgres")]
    Typed,
}

impl Columns {
    /// Column `index` of `row` as a `T`, with sqlx's type check or without it.
    pub(crate) fn get<'r, R, T>(self, row: &'r R, index: usize) -> sqlx::Result<T>
    where
        R: sqlx::Row,
        T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        usize: sqlx::ColumnIndex<R>,
    {
        match self {
            Columns::Checked => row.try_get(index),
            #[cfg(feature = "postgres")]
            Columns::Typed => row.try_get_unchecked(index),
        }
    }
}

impl<'r, R: sqlx::Row> RowReader<'r, R> {
    /// A reader of a row whose column types are checked ([`Columns::Checked`]).
    pub(crate) fn new(row: &'r R, stream: &'r StreamId, position: Option<Position>) -> Self {
        Self::of(row, stream, position, Columns::Checked)
    }

    pub(crate) fn of(
        row: &'r R,
        stream: &'r StreamId,
        position: Option<Position>,
        columns: Columns,
    ) -> Self {
        RowReader {
            row,
            stream,
            position,
            version: None,
            event_type: None,
            columns,
        }
    }

    /// Column `index` (named `name` in errors) as a `T`.
    pub(crate) fn get<T>(&self, index: usize, name: &str) -> Result<T>
    where
        T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        usize: sqlx::ColumnIndex<R>,
    {
        self.columns
            .get(self.row, index)
            .map_err(|err| self.damaged(format!("column `{name}` cannot be read: {err}")))
    }

    /// The error for this row.
    pub(crate) fn damaged(&self, reason: String) -> Error {
        Error::corrupt(self.stream, reason).at_row(self.position, self.version, self.event_type)
    }
}

/// The reason every read path gives for a row whose fault is one column's value, whether the
/// read decoded that column or had the database check it (the `damage!()` expression of each SQL
/// store, which names the first bad column of a row, or is NULL).
pub(crate) fn damaged_column(column: &str) -> String {
    match column {
        "occurred_at" => "column `occurred_at` holds a time out of range".to_owned(),
        "metadata" => "column `metadata` does not hold a JSON object".to_owned(),
        other => format!("column `{other}` does not hold a UUID"),
    }
}

/// The values of a stream row, in the order `feed_stream_row` reads them.
pub(super) type StreamRowValues<'r> = (i64, i64, &'r str, i64, Option<&'r str>, &'r str);

/// Feeds one row of a stream read (position, version, event type, schema version as a 64-bit
/// integer, the store's `damage!()` expression, payload, in that order) to `apply`; returns its
/// version.
pub(crate) fn feed_stream_row<'r, R, F>(
    row: &'r R,
    stream: &'r StreamId,
    columns: Columns,
    apply: &mut F,
) -> Result<i64>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<&'r str>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    F: FnMut(EventView<'_>) -> Result<()>,
{
    // All six values first, with no error context built: the context (which column of which
    // row) is put together only when one fails to decode.
    let values = (|| -> sqlx::Result<StreamRowValues<'r>> {
        Ok((
            columns.get::<_, i64>(row, 0)?,
            columns.get::<_, i64>(row, 1)?,
            columns.get::<_, &str>(row, 2)?,
            columns.get::<_, i64>(row, 3)?,
            columns.get::<_, Option<&str>>(row, 4)?,
            columns.get::<_, &str>(row, 5)?,
        ))
    })();
    let Ok((position, version, event_type, schema_version, damage, payload)) = values else {
        // Read again, column by column, naming the one that fails and as much of the row
        // (position, version, type) as could be read.
        let position: i64 = columns.get(row, 0).map_err(Error::database("load"))?;
        let position = Position::new(position.max(0) as u64);
        let mut reader = RowReader::of(row, stream, Some(position), columns);
        let version: i64 = reader.get(1, "version")?;
        reader.version = u64::try_from(version).ok();
        let event_type: &str = reader.get(2, "event_type")?;
        reader.event_type = Some(event_type);
        reader.get::<i64>(3, "schema_version")?;
        reader.get::<Option<&str>>(4, "damage")?;
        reader.get::<&str>(5, "payload")?;
        return Err(reader.damaged("a value cannot be read".to_owned()));
    };
    let position = Position::new(position.max(0) as u64);
    apply(row_view(
        stream,
        position,
        version,
        event_type,
        schema_version,
        damage,
        payload,
    )?)?;
    Ok(version)
}

/// A view of a row read by a store's `fold_stream`, after the checks every read path makes:
/// versions in range, and no column the view leaves out damaged (`damage`, the store's
/// `damage!()` expression: the name of the first damaged column, if any).
pub(crate) fn row_view<'a>(
    stream: &'a StreamId,
    position: Position,
    version: i64,
    event_type: &'a str,
    schema_version: i64,
    damage: Option<&str>,
    payload: &'a str,
) -> Result<EventView<'a>> {
    let (version, schema_version) = match crate::stream::checked_versions(version, schema_version) {
        Some(versions) => versions,
        None => {
            return Err(Error::corrupt(
                stream,
                format!("version {version} or schema version {schema_version} out of range"),
            )
            .at_row(
                Some(position),
                u64::try_from(version).ok(),
                Some(event_type),
            ));
        }
    };
    if let Some(column) = damage {
        return Err(Error::corrupt(stream, damaged_column(column)).at_row(
            Some(position),
            Some(version),
            Some(event_type),
        ));
    }
    Ok(EventView::new(
        stream,
        position,
        version,
        event_type,
        schema_version,
        payload,
    ))
}

/// A snapshot read from a `snapshots` row, or [`Error::Corrupt`] if its numbers are out of
/// range. (A state that does not decode is the repository's concern: it ignores the snapshot.)
pub(crate) fn snapshot_row(
    stream: &StreamId,
    version: i64,
    state_version: i64,
    state: String,
    taken_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<crate::snapshot::Snapshot> {
    match (
        u64::try_from(version),
        u32::try_from(state_version),
        taken_at,
    ) {
        (Ok(version), Ok(state_version), Some(taken_at)) => {
            Ok(
                crate::snapshot::Snapshot::new(stream.clone(), version, state_version, state)
                    .taken_at(taken_at),
            )
        }
        _ => Err(Error::corrupt(
            stream,
            format!(
                "snapshot version {version}, state version {state_version} or time out of range"
            ),
        )),
    }
}

/// The packed metadata column: `[tenant, actor, correlation, causation, extra]`. The stores pack
/// a NULL `metadata` column as `{}`, so that `extra` is a JSON object unless the column holds
/// something else (JSON `null` included): then the row is damaged, as on every read path.
pub(super) type PackedMetadata = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    serde_json::Map<String, serde_json::Value>,
);

/// Decodes the packed metadata column, or says why it cannot be (naming the column at fault).
pub(crate) fn unpack_metadata(packed: &str) -> std::result::Result<crate::event::Metadata, String> {
    // The other columns are typed (text, and a UUID or its hex): only `metadata` can fail here.
    let (tenant_id, actor_id, correlation, causation, extra): PackedMetadata =
        serde_json::from_str(packed).map_err(|_| damaged_column("metadata"))?;
    let uuid = |column: &str, text: Option<String>| match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => uuid::Uuid::try_parse(&t)
            .map(Some)
            .map_err(|_| damaged_column(column)),
    };
    let mut metadata = crate::event::Metadata::new();
    metadata.tenant_id = tenant_id;
    metadata.actor_id = actor_id;
    metadata.correlation_id = uuid("correlation_id", correlation)?;
    metadata.causation_id = uuid("causation_id", causation)?;
    metadata.extra = extra;
    Ok(metadata)
}

impl EventRow {
    /// The recorded event, or [`Error::Corrupt`] if the row breaks the store's invariants.
    pub(crate) fn into_event(self) -> Result<RecordedEvent> {
        let EventRow {
            stream,
            position,
            event_id,
            version,
            event_type,
            schema_version,
            occurred_at,
            metadata,
            payload,
        } = self;
        let damaged = |reason: String, version: Option<u64>| {
            Error::corrupt(&stream, reason).at_row(Some(position), version, Some(&event_type))
        };
        let Some((version, schema_version)) =
            crate::stream::checked_versions(version, schema_version)
        else {
            return Err(damaged(
                format!("version {version} or schema version {schema_version} out of range"),
                None,
            ));
        };
        let Some(occurred_at) = occurred_at else {
            return Err(damaged(damaged_column("occurred_at"), Some(version)));
        };
        let metadata = match metadata {
            None => crate::event::Metadata::new(),
            Some(packed) => {
                unpack_metadata(&packed).map_err(|reason| damaged(reason, Some(version)))?
            }
        };
        Ok(RecordedEvent {
            event_id,
            stream,
            version,
            position,
            event_type,
            schema_version,
            occurred_at,
            metadata,
            payload,
        })
    }
}

/// The stream of consecutive rows, allocated once per run of rows of the same stream.
#[derive(Default)]
pub(crate) struct StreamCache(Option<StreamId>);

impl StreamCache {
    pub(crate) fn get(&mut self, aggregate_type: &str, aggregate_id: &str) -> &StreamId {
        let reuse = self.0.as_ref().is_some_and(|stream| {
            stream.aggregate_id() == aggregate_id && stream.aggregate_type() == aggregate_type
        });
        if !reuse {
            self.0 = Some(StreamId::unchecked(aggregate_type, aggregate_id));
        }
        self.0.as_ref().expect("just set")
    }
}

/// The columns of one lean row, read; checked and fed to a fold's callback by [`feed_row`].
pub(crate) struct LeanRow<'r> {
    pub(crate) version: i64,
    pub(crate) event_type: &'r str,
    pub(crate) schema_version: i64,
    pub(crate) payload: &'r str,
    /// The rest of the context; `None` when the fold reads the location only.
    pub(crate) details: Option<RowDetails<'r>>,
    /// Without details: the store's `damage!()` expression, which checks in the database the
    /// columns the fold does not read (the first damaged one's name, or `None`).
    pub(crate) damage: Option<&'r str>,
}

/// The columns of a lean row that only the whole [`EventContext`] needs.
pub(crate) struct RowDetails<'r> {
    pub(crate) event_id: uuid::Uuid,
    pub(crate) occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) metadata: Option<&'r str>,
}

/// Checks a lean row by the rule every read path shares and feeds it to `apply` (or feeds its
/// error). Without details, the context's id, time and metadata are the nil id, the epoch and
/// empty metadata ([`ContextFields::Location`]), and the row's `damage` says whether those
/// columns are sound.
pub(crate) fn feed_row<F>(
    stream: &StreamId,
    position: Position,
    row: Result<LeanRow<'_>>,
    apply: &mut F,
) -> std::ops::ControlFlow<()>
where
    F: for<'e> FnMut(FoldItem<'e>) -> std::ops::ControlFlow<()>,
{
    static EMPTY: std::sync::OnceLock<crate::event::Metadata> = std::sync::OnceLock::new();
    let checked = row.and_then(|row| {
        let damaged = |reason: String, version: Option<u64>| {
            Error::corrupt(stream, reason).at_row(Some(position), version, Some(row.event_type))
        };
        let (version, schema_version) =
            crate::stream::checked_versions(row.version, row.schema_version).ok_or_else(|| {
                damaged(
                    format!(
                        "version {} or schema version {} out of range",
                        row.version, row.schema_version
                    ),
                    None,
                )
            })?;
        if let Some(column) = row.damage {
            return Err(damaged(damaged_column(column), Some(version)));
        }
        let (event_id, occurred_at, metadata) = match &row.details {
            None => (uuid::Uuid::nil(), chrono::DateTime::UNIX_EPOCH, None),
            Some(details) => {
                let occurred_at = details
                    .occurred_at
                    .ok_or_else(|| damaged(damaged_column("occurred_at"), Some(version)))?;
                let metadata = match details.metadata {
                    None => None,
                    Some(packed) => Some(
                        unpack_metadata(packed).map_err(|reason| damaged(reason, Some(version)))?,
                    ),
                };
                (details.event_id, occurred_at, metadata)
            }
        };
        Ok((
            row,
            version,
            schema_version,
            event_id,
            occurred_at,
            metadata,
        ))
    });
    match checked {
        Ok((row, version, schema_version, event_id, occurred_at, metadata)) => {
            let context = EventContext {
                event_id,
                stream,
                version,
                position,
                event_type: row.event_type,
                occurred_at,
                metadata: metadata
                    .as_ref()
                    .unwrap_or_else(|| EMPTY.get_or_init(crate::event::Metadata::new)),
            };
            let view = EventView::new(
                stream,
                position,
                version,
                row.event_type,
                schema_version,
                row.payload,
            );
            apply(Ok((view, &context)))
        }
        Err(error) => apply(Err(&error)),
    }
}
