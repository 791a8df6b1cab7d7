//! The parsers of what others wrote (rows, envelopes, messages), reached from outside the crate
//! by the fuzz targets in `fuzz/`. Each entry calls the crate's own function and hands back its
//! answer; nothing here is API, and it exists only with the feature `fuzzing`.

use crate::event::RecordedEvent;

/// The bus's wire envelope: a message's bytes as the event, or why they are not one.
pub fn bus_decode(bytes: &[u8]) -> Result<RecordedEvent, String> {
    crate::bus::wire::decode(bytes)
}

/// An event as the bytes of a bus message.
pub fn bus_encode(event: &RecordedEvent) -> Vec<u8> {
    crate::bus::wire::encode(event)
}

/// The SQL stores' packed metadata column (`[tenant, actor, correlation, causation, extra]`).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub fn unpack_metadata(packed: &str) -> Result<crate::Metadata, String> {
    crate::store::unpack_metadata(packed)
}

/// A page of SQLite's framed global read (`fold_all`, and `read_all` with `details`) after
/// position `after`, read as the store reads it: each record checked and fed to a fold, and
/// (with `details`) turned into a recorded event. One entry per record: the event (or its
/// position, without `details`), or why the row is damaged.
#[cfg(feature = "sqlite")]
pub fn sqlite_page(text: &str, after: u64, details: bool) -> Vec<Result<u64, String>> {
    use crate::store::{EventRow, StreamCache, feed_row};
    let mut streams = StreamCache::default();
    let mut read = Vec::new();
    for record in crate::store::sqlite::page_records(text, crate::Position::new(after), details) {
        let stream = streams
            .get(record.aggregate_type, record.aggregate_id)
            .clone();
        if let Some(details) = &record.lean.details {
            let row = EventRow {
                stream: stream.clone(),
                position: record.position,
                event_id: details.event_id,
                version: record.lean.version,
                event_type: record.lean.event_type.to_owned(),
                schema_version: record.lean.schema_version,
                occurred_at: details.occurred_at,
                metadata: details.metadata.map(str::to_owned),
                payload: record.lean.payload.to_owned(),
            };
            read.push(
                row.into_event()
                    .map(|e| e.position.get())
                    .map_err(|e| e.to_string()),
            );
        }
        let _ = feed_row(&stream, record.position, Ok(record.lean), &mut |item| {
            read.push(match item {
                Ok((view, _)) => Ok(view.position.get()),
                Err(error) => Err(error.to_string()),
            });
            std::ops::ControlFlow::Continue(())
        });
    }
    read
}

/// A framed text of SQLite's stream read, from version `next` on, read as `load` reads it: the
/// version of each record, or why the row is damaged.
#[cfg(feature = "sqlite")]
pub fn sqlite_stream(text: &str, next: i64) -> Vec<Result<u64, String>> {
    let stream = crate::StreamId::unchecked("Fuzz", "f-1");
    crate::store::sqlite::stream_records(text, next)
        .map(|record| {
            crate::store::row_view(
                &stream,
                record.position,
                record.version,
                record.event_type,
                record.schema_version,
                record.damage,
                record.payload,
            )
            .map(|view| view.version)
            .map_err(|e| e.to_string())
        })
        .collect()
}

/// The fixed data key the envelope targets encrypt and decrypt with, so that a seed written
/// under it reaches the decryption.
#[cfg(feature = "encryption")]
fn fuzz_key() -> crate::protection::DataKey {
    crate::protection::DataKey::new(uuid::Uuid::from_u128(0xF022), None, "fuzz", [7; 32])
}

/// A personal field's envelope as [`envelope_open`] reads it: `plain` encrypted under the fuzz
/// key, for the seed corpus.
#[cfg(feature = "encryption")]
pub fn envelope_seal(field: &str, plain: &[u8]) -> serde_json::Value {
    fuzz_key().encrypt(field, plain)
}

/// Reads a personal field's envelope (`Envelope::parse`) and, if it is one, decrypts it with the
/// fuzz key: the plain bytes, `None` if they do not authenticate, or why it is no envelope.
#[cfg(feature = "encryption")]
pub fn envelope_open(field: &str, value: &serde_json::Value) -> Result<Option<Vec<u8>>, String> {
    let envelope = crate::protection::cipher::Envelope::parse(value)?;
    Ok(fuzz_key().decrypt(field, &envelope))
}

/// A snapshot of `stream` sealed under the fuzz key (once per share), for the seed corpus.
#[cfg(feature = "encryption")]
pub fn sealed_seal(
    shares: usize,
    stream: &crate::StreamId,
    version: u64,
    state_version: u32,
    state: &str,
) -> String {
    let keys = vec![fuzz_key(); shares.max(1)];
    crate::protection::sealed::seal_state(&keys, stream, version, state_version, state)
}

/// Reads a sealed snapshot's state (`sealed::parse`) and, if it is one, opens it with the fuzz
/// key for each share: `None` if it is not a sealed snapshot, `Some(None)` if it does not open.
#[cfg(feature = "encryption")]
pub fn sealed_open(
    state: &str,
    stream: &crate::StreamId,
    version: u64,
    state_version: u32,
) -> Option<Option<String>> {
    let sealed = crate::protection::sealed::parse(state)?;
    let keys = vec![fuzz_key(); sealed.shares.len()];
    Some(sealed.open(&keys, stream, version, state_version))
}

/// The first framed text of a global read after `after` as the store reads it (with `details`,
/// the whole context): what the seeds of the page target are made of.
#[cfg(feature = "sqlite")]
pub async fn sqlite_page_text(
    store: &crate::SqliteEventStore,
    after: u64,
    details: bool,
) -> crate::Result<Option<String>> {
    let query = crate::ReadAll::after(crate::Position::new(after));
    let page = store.framed_page(&query, details).await?;
    Ok(page.and_then(|page| page.text().map(str::to_owned)))
}

/// The first framed text of a stream read from version `from`: the seeds of the stream target.
#[cfg(feature = "sqlite")]
pub async fn sqlite_stream_text(
    store: &crate::SqliteEventStore,
    stream: &crate::StreamId,
    from: i64,
) -> crate::Result<Option<String>> {
    crate::store::sqlite::stream_text(store, stream, from).await
}
