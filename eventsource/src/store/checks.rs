//! The checks every store makes alike: of a batch before it is written, of an append retried
//! after its outcome was lost, of the versions a stream read returns.

use super::*;

/// Checks a batch before any store writes it, so that every backend refuses the same input with
/// the same error: a bad stream id, an empty or NUL-holding event type, a schema version of 0,
/// a payload that is not JSON or holds a NUL character, metadata holding a NUL character,
/// duplicate ids within the batch.
pub(crate) fn validate_append(stream: &StreamId, events: &[NewEvent]) -> Result<()> {
    stream.validate()?;
    if events.len() > MAX_BATCH {
        return Err(Error::InvalidInput {
            stream: stream.clone(),
            reason: format!(
                "{} events in one append, the limit is {MAX_BATCH}",
                events.len()
            ),
        });
    }
    let mut ids = std::collections::HashSet::with_capacity(events.len());
    for event in events {
        if !ids.insert(event.event_id) {
            return Err(Error::DuplicateEvent {
                stream: stream.clone(),
                event_id: event.event_id,
            });
        }
        let reason = if event.event_type.is_empty() {
            "an event type is empty".to_owned()
        } else if event.event_type.len() > MAX_ID_LEN || event.event_type.contains('\0') {
            format!(
                "event type `{}` is too long or holds a NUL byte",
                event.event_type.escape_debug()
            )
        } else if event.schema_version == 0 || event.schema_version > i32::MAX as u32 {
            format!(
                "event `{}` has schema version {}; versions go from 1 to {}",
                event.event_type,
                event.schema_version,
                i32::MAX
            )
        } else if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&event.payload) {
            format!(
                "the payload of event `{}` is not JSON: {err}",
                event.event_type
            )
        } else if has_nul_escape(&event.payload) {
            // PostgreSQL's JSONB cannot hold U+0000; refuse it everywhere so that data written to
            // one store can be copied to any other.
            format!(
                "the payload of event `{}` holds a NUL character (\\u0000)",
                event.event_type
            )
        } else if let Some(field) = nul_in_metadata(&event.metadata) {
            format!(
                "the {field} of event `{}` holds a NUL character",
                event.event_type
            )
        } else {
            continue;
        };
        return Err(Error::InvalidInput {
            stream: stream.clone(),
            reason,
        });
    }
    Ok(())
}

/// Which part of `metadata` holds a NUL character, which PostgreSQL cannot store in text or JSON.
pub(super) fn nul_in_metadata(metadata: &crate::event::Metadata) -> Option<&'static str> {
    if metadata
        .tenant_id
        .as_deref()
        .is_some_and(|t| t.contains('\0'))
    {
        Some("tenant id")
    } else if metadata
        .actor_id
        .as_deref()
        .is_some_and(|a| a.contains('\0'))
    {
        Some("actor id")
    } else if !metadata.extra.is_empty()
        && serde_json::to_string(&metadata.extra).is_ok_and(|json| has_nul_escape(&json))
    {
        Some("metadata")
    } else {
        None
    }
}

/// Whether JSON text holds the escape `\u0000` (and not an escaped backslash followed by `u0000`).
pub(super) fn has_nul_escape(json: &str) -> bool {
    let bytes = json.as_bytes();
    // Most payloads hold no escape at all: one `memchr` instead of a substring search.
    if !bytes.contains(&b'\\') {
        return false;
    }
    let mut from = 0;
    while let Some(found) = json[from..].find("u0000") {
        let at = from + found;
        let backslashes = bytes[..at]
            .iter()
            .rev()
            .take_while(|b| **b == b'\\')
            .count();
        if backslashes % 2 == 1 {
            return true;
        }
        from = at + 1;
    }
    false
}

/// For an append whose event ids are all stored already: if they are stored in `stream`, at
/// consecutive versions in the batch's order, after a version that satisfies `expected`, this is
/// the same append retried after its outcome was lost (a connection dropped during the commit),
/// and it reports the result the first attempt had. `stored` gives, in the batch's order, each
/// event's stream, version and position.
pub(crate) fn retried_append<'a>(
    stream: &StreamId,
    expected: ExpectedVersion,
    stored: impl IntoIterator<Item = (&'a StreamId, u64, Position)>,
) -> Option<AppendResult> {
    let mut first = None;
    let mut last = None;
    for (at, version, position) in stored {
        if at != stream {
            return None;
        }
        match last {
            None => first = Some(version),
            Some((previous, _)) if version == previous + 1 => {}
            Some(_) => return None,
        }
        last = Some((version, position));
    }
    let (first, (version, position)) = (first?, last?);
    expected.is_satisfied_by(first - 1).then_some(AppendResult {
        stream_version: version,
        last_position: position,
    })
}

/// Checks that a stream read returned consecutive versions (ascending, or descending for a
/// backwards read) starting where the query starts: a gap means rows were deleted or changed
/// behind the store's back, and every read path reports it the same way.
pub(crate) fn check_sequence(
    stream: &StreamId,
    query: &StreamQuery,
    events: &[RecordedEvent],
) -> Result<()> {
    let mut expected = if query.backwards {
        None
    } else {
        Some(query.from_version)
    };
    for event in events {
        if let Some(due) = expected
            && event.version != due
        {
            return Err(Error::corrupt(
                stream,
                format!(
                    "the store returned version {} where version {due} was due",
                    event.version
                ),
            )
            .at_row(
                Some(event.position),
                Some(event.version),
                Some(&event.event_type),
            ));
        }
        expected = Some(if query.backwards {
            event.version.saturating_sub(1)
        } else {
            event.version + 1
        });
    }
    Ok(())
}
