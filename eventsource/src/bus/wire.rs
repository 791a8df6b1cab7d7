//! What only the brokers use: the event on the wire (every field of a [`RecordedEvent`] as
//! JSON), the names they build from groups, and a consumer group's broker settings. Compiled
//! always (the fuzz targets and the unit tests read it), used with a broker feature.
#![cfg_attr(
    not(any(
        feature = "redis",
        feature = "rabbitmq",
        feature = "nats",
        feature = "kafka"
    )),
    allow(dead_code)
)]

use super::ConsumerGroup;
use crate::error::{Error, Result};
use crate::event::{Metadata, RecordedEvent};
use crate::stream::{Position, StreamId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use uuid::Uuid;

impl ConsumerGroup {
    /// This consumer's name: the one given, or a new one.
    #[cfg_attr(
        not(any(feature = "redis", feature = "rabbitmq", feature = "kafka")),
        allow(dead_code)
    )]
    pub(crate) fn consumer_name(&self) -> String {
        self.consumer
            .clone()
            .unwrap_or_else(|| format!("consumer-{}", Uuid::now_v7().simple()))
    }

    pub(crate) fn prefetch_count(&self) -> usize {
        self.prefetch
    }

    /// The group's name checked for use in broker names (queues, consumers, keys).
    pub(crate) fn checked_group(&self) -> Result<&str> {
        check_name("group", &self.group)?;
        Ok(&self.group)
    }
}

/// Broker names are made of these: letters, digits, `-` and `_`.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::InvalidConfig(format!(
            "bus {what} `{name}`: use letters, digits, `-` and `_` only, and at least one"
        )));
    }
    Ok(())
}

/// The event on the wire: every field of a [`RecordedEvent`], as JSON.
#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    event_id: Uuid,
    #[serde(borrow)]
    aggregate_type: Cow<'a, str>,
    #[serde(borrow)]
    aggregate_id: Cow<'a, str>,
    version: u64,
    position: u64,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    schema_version: u32,
    occurred_at: DateTime<Utc>,
    #[serde(default)]
    metadata: Cow<'a, Metadata>,
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

/// Writes an event as the bytes of a message.
pub(crate) fn encode(event: &RecordedEvent) -> Vec<u8> {
    let envelope = Envelope {
        event_id: event.event_id,
        aggregate_type: Cow::Borrowed(event.stream.aggregate_type()),
        aggregate_id: Cow::Borrowed(event.stream.aggregate_id()),
        version: event.version,
        position: event.position.get(),
        event_type: Cow::Borrowed(&event.event_type),
        schema_version: event.schema_version,
        occurred_at: event.occurred_at,
        metadata: Cow::Borrowed(&event.metadata),
        payload: Cow::Borrowed(&event.payload),
    };
    // Only strings, numbers and JSON maps: serialising cannot fail.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

/// Reads a message's bytes back as the event; the reason it cannot, as text.
pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<RecordedEvent, String> {
    let envelope: Envelope<'_> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let stream = StreamId::new(
        envelope.aggregate_type.into_owned(),
        envelope.aggregate_id.into_owned(),
    )
    .map_err(|e| e.to_string())?;
    Ok(RecordedEvent {
        event_id: envelope.event_id,
        stream,
        version: envelope.version,
        position: Position::new(envelope.position),
        event_type: envelope.event_type.into_owned(),
        schema_version: envelope.schema_version,
        occurred_at: envelope.occurred_at,
        metadata: envelope.metadata.into_owned(),
        payload: envelope.payload.into_owned(),
    })
}

/// A name made safe for a routing key or subject token: `.`, `*`, `>`, `#` and whitespace
/// become `_`.
#[cfg_attr(not(any(feature = "rabbitmq", feature = "nats")), allow(dead_code))]
pub(crate) fn token(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | '*' | '>' | '#' | ' ' | '\t' | '\n' | '\r' => '_',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_round_trips_every_field() {
        let mut metadata = Metadata::new()
            .with_tenant("t-1")
            .with_correlation_id(Uuid::now_v7());
        metadata
            .extra
            .insert("k".into(), serde_json::json!([1, "two"]));
        let event = RecordedEvent {
            event_id: Uuid::now_v7(),
            stream: StreamId::new("Order", "o-1").unwrap(),
            version: 7,
            position: Position::new(42),
            event_type: "OrderPaid".into(),
            schema_version: 2,
            occurred_at: crate::event::now(),
            metadata,
            payload: r#"{"cents":5,"note":"a \"quoted\" word"}"#.into(),
        };
        assert_eq!(decode(&encode(&event)).unwrap(), event);
    }

    #[test]
    fn a_foreign_message_is_refused_with_its_reason() {
        assert!(decode(b"not json").unwrap_err().contains("expected"));
        let no_stream = br#"{"event_id":"0190c0de-0000-7000-8000-000000000000","aggregate_type":"","aggregate_id":"x","version":1,"position":1,"event_type":"E","schema_version":1,"occurred_at":"2026-01-01T00:00:00Z","payload":"{}"}"#;
        assert!(decode(no_stream).is_err());
    }

    #[test]
    fn tokens_have_no_separators() {
        assert_eq!(token("a.b*c>d#e f"), "a_b_c_d_e_f");
    }
}
