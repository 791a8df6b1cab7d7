//! Framed texts: a page of rows as one value (see [`FOLD_FRAMED`]) and their parsing.

use super::*;

/// A page of [`EventStore::fold_all`] as one framed text: SQLite concatenates the page's rows,
/// each a header of decimal integers (position, version, schema version, and the byte lengths
/// of the event type, aggregate type, aggregate id, payload and `damage!()`, -1 for NULL) ended
/// by `:`, then those texts. sqlx copies every column of every SQLite row into an allocation of its own and hands
/// each row over from its worker thread, which cost a projection's catch-up more than the
/// database's own work; a page as one value pays that once. The lengths make the framing exact
/// whatever the texts hold. This one reads locations only; [`FOLD_FRAMED_WHOLE`] the whole
/// context.
pub(super) const FOLD_FRAMED: &str = concat!(
    "SELECT count(*), group_concat(concat(position, ',', version, ',', \
     schema_version, ',', octet_length(event_type), ',', octet_length(aggregate_type), ',', \
     octet_length(aggregate_id), ',', octet_length(payload), ',', \
     coalesce(octet_length(damage), -1), ':', event_type, aggregate_type, aggregate_id, \
     payload, damage), '' ORDER BY position) FROM (SELECT position, version, \
     schema_version, event_type, aggregate_type, aggregate_id, payload, ",
    damage!(),
    " AS damage FROM events WHERE position > "
);

/// [`FOLD_FRAMED`] with the whole context: the header has the time (microseconds) after the
/// schema version, and the lengths of the event id (in hex) and the packed metadata (-1 for
/// none) after the payload's; those two texts follow the payload.
pub(super) const FOLD_FRAMED_WHOLE: &str = concat!(
    "SELECT count(*), group_concat(concat(position, ',', version, ',', schema_version, ',', \
     occurred_at, ',', octet_length(event_type), ',', octet_length(aggregate_type), ',', \
     octet_length(aggregate_id), ',', octet_length(payload), ',', octet_length(event_id) * 2, \
     ',', coalesce(octet_length(metadata), -1), ':', event_type, aggregate_type, aggregate_id, \
     payload, hex(event_id), metadata), '' ORDER BY position) FROM (SELECT position, version, \
     schema_version, occurred_at, event_type, aggregate_type, aggregate_id, payload, event_id, ",
    packed_metadata!(),
    " AS metadata FROM events WHERE position > "
);

/// The rest of a long stream as one framed text (see [`FOLD_FRAMED`]), each record a header
/// (position, version, schema version, then the byte lengths of the type, `damage!()` or -1 for
/// NULL, and the payload) and those texts.
pub(super) const STREAM_FRAMED: &str = concat!(
    "SELECT count(*), group_concat(concat(position, ',', version, ',', \
     schema_version, ',', octet_length(event_type), ',', \
     coalesce(octet_length(damage), -1), ',', octet_length(payload), ':', event_type, \
     damage, payload), '' ORDER BY version) FROM (SELECT position, version, \
     event_type, schema_version, ",
    damage!(),
    " AS damage, payload",
    crate::store::sql::stream_range!("$5"),
    " ASC LIMIT $6)"
);

/// The first framed text of a stream read of `stream` from version `from` (`STREAM_FRAMED`), as
/// `load` reads it after its first rows: what the fuzz targets' seeds are made of.
#[cfg(feature = "fuzzing")]
pub(crate) async fn stream_text(
    store: &SqliteEventStore,
    stream: &StreamId,
    from: i64,
) -> Result<Option<String>> {
    use super::read::STREAM_CHUNK;
    use crate::store::sql::stream_query;
    let row = stream_query(
        STREAM_FRAMED,
        stream,
        (from, i64::MAX),
        None::<i64>,
        STREAM_CHUNK,
    )
    .fetch_one(store.pool())
    .await
    .map_err(Error::database("load"))?;
    row.try_get(1).map_err(Error::database("load"))
}

/// Whether SQLite refused a value longer than its limit (`SQLITE_TOOBIG`): the rows of a
/// framed text were too large together, and are read row by row instead.
pub(super) fn too_big(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code == "18")
}

/// One page of [`FOLD_FRAMED`]: how many rows it holds, and their records.
pub(crate) struct FramedPage {
    pub(super) count: usize,
    pub(super) row: SqliteRow,
}

impl FramedPage {
    /// The records; `None` if the text is not readable (not UTF-8: a damaged row, which the
    /// row-by-row read reports).
    pub(crate) fn text(&self) -> Option<&str> {
        self.row.try_get::<Option<&str>, _>(1).ok().flatten()
    }

    /// The page's records after position `after`, in order (with `details`, of a
    /// [`FOLD_FRAMED_WHOLE`] page). They end early at a record that does not parse or does not
    /// move past the one before it (which only a text the lengths do not describe could
    /// cause), and there are none if the text is not readable: the caller reads the rest of
    /// the page row by row.
    pub(super) fn records(
        &self,
        after: Position,
        details: bool,
    ) -> impl Iterator<Item = Record<'_>> {
        page_records(self.text().unwrap_or_default(), after, details)
    }
}

/// The records of a page's text after position `after` (see [`FramedPage::records`]).
pub(crate) fn page_records(
    text: &str,
    after: Position,
    details: bool,
) -> impl Iterator<Item = Record<'_>> {
    let (mut at, mut last) = (0, after);
    std::iter::from_fn(move || {
        if at >= text.len() {
            return None;
        }
        let record = Record::next(text, &mut at, details).filter(|r| r.position > last)?;
        last = record.position;
        Some(record)
    })
}

/// One row of a [`FOLD_FRAMED`] page, borrowed from its text.
pub(crate) struct Record<'t> {
    pub(crate) position: Position,
    pub(crate) aggregate_type: &'t str,
    pub(crate) aggregate_id: &'t str,
    pub(crate) lean: LeanRow<'t>,
}

impl<'t> Record<'t> {
    /// The record at `at` of a page of [`FOLD_FRAMED`] (or of [`FOLD_FRAMED_WHOLE`], with
    /// `details`), which moves `at` past it; `None` if the text there is not a record.
    pub(super) fn next(text: &'t str, at: &mut usize, details: bool) -> Option<Self> {
        let (position, version, schema_version, texts, more, damage) = if details {
            let ([position, version, schema_version, micros], texts) = framed::<4, 6>(text, at)?;
            let [texts @ .., Some(event_id), metadata] = texts else {
                return None;
            };
            let details = RowDetails {
                event_id: uuid::Uuid::try_parse(event_id).ok()?,
                occurred_at: chrono::DateTime::from_timestamp_micros(micros),
                metadata,
            };
            (
                position,
                version,
                schema_version,
                texts,
                Some(details),
                None,
            )
        } else {
            let ([position, version, schema_version], texts) = framed::<3, 5>(text, at)?;
            let [texts @ .., damage] = texts;
            (position, version, schema_version, texts, None, damage)
        };
        let [
            Some(event_type),
            Some(aggregate_type),
            Some(aggregate_id),
            Some(payload),
        ] = texts
        else {
            return None;
        };
        Some(Record {
            position: Position::new(u64::try_from(position).ok()?),
            aggregate_type,
            aggregate_id,
            lean: LeanRow {
                version,
                event_type,
                schema_version,
                payload,
                details: more,
                damage,
            },
        })
    }
}

/// One record of a stream read's framed text (see `fold_stream_on`), borrowed from it.
pub(crate) struct StreamRecord<'t> {
    pub(crate) position: Position,
    pub(crate) version: i64,
    pub(crate) schema_version: i64,
    pub(crate) event_type: &'t str,
    /// The first column of the row found out of range (`damage!()`), if any.
    pub(crate) damage: Option<&'t str>,
    pub(crate) payload: &'t str,
}

/// The records of a stream read's framed text, from version `next` on, in order. A record that
/// does not parse, or does not move past the one before it, ends them: the caller reads the
/// rest row by row.
pub(crate) fn stream_records(text: &str, mut next: i64) -> impl Iterator<Item = StreamRecord<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= text.len() {
            return None;
        }
        let ([position, version, schema_version], [Some(event_type), damage, Some(payload)]) =
            framed::<3, 3>(text, &mut at)?
        else {
            return None;
        };
        if version < next {
            return None;
        }
        next = version.saturating_add(1);
        Some(StreamRecord {
            position: Position::new(position.max(0) as u64),
            version,
            schema_version,
            event_type,
            damage,
            payload,
        })
    })
}

/// Reads the record at `at` of a framed text, and moves `at` past it: `I` decimal integers and
/// the byte lengths of `T` texts (-1 for NULL), separated by `,` and ended by `:`, then the
/// texts. `None` if the text there is not such a record.
pub(super) fn framed<'t, const I: usize, const T: usize>(
    text: &'t str,
    at: &mut usize,
) -> Option<([i64; I], [Option<&'t str>; T])> {
    let rest = text.get(*at..)?;
    let colon = rest.find(':')?;
    let mut header = rest[..colon].split(',');
    let mut ints = [0; I];
    for int in &mut ints {
        *int = header.next()?.parse().ok()?;
    }
    let mut start = colon + 1;
    let mut texts = [None; T];
    for text in &mut texts {
        let length: i64 = header.next()?.parse().ok()?;
        if length == -1 {
            continue;
        }
        let end = start.checked_add(usize::try_from(length).ok()?)?;
        *text = Some(rest.get(start..end)?);
        start = end;
    }
    if header.next().is_some() {
        return None;
    }
    *at += start;
    Some((ints, texts))
}
