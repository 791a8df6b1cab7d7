//! Output: tables sized to the terminal, JSON Lines, times and payloads; every text for people
//! (stdout and stderr) goes through [`escaped`].

use chrono::{DateTime, Utc};
use comfy_table::{ContentArrangement, Table, presets};
use eventsource::{EventRegistry, RecordedEvent};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;

/// `text` with every character that could steer a terminal written as a Rust-style escape:
/// C0 controls (`\n`, `\r`, `\t`, else `\u{1b}`), DEL and C1 controls, and the Unicode
/// bidirectional formatting characters, which reorder what follows them. Stream ids, event
/// types, tenants and payloads are stored as their writers chose: printed raw, one could set
/// the terminal's title, clear the screen or fake a line. JSON Lines need none of this (JSON
/// escapes control characters in strings).
pub(crate) fn escaped(text: &str) -> Cow<'_, str> {
    if !text.chars().any(steers_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if steers_terminal(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A control character (C0, DEL, C1) or a bidirectional formatting character.
fn steers_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// A line for people on stderr (a note, a warning), escaped.
pub(crate) fn note(text: impl std::fmt::Display) {
    eprintln!("{}", escaped(&text.to_string()));
}

/// Where a command writes: stdout, as tables or as JSON Lines.
pub(crate) struct Output {
    pub(crate) json: bool,
    out: std::io::StdoutLock<'static>,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Output {
            json,
            out: std::io::stdout().lock(),
        }
    }

    /// One JSON value on a line of its own.
    pub(crate) fn json_line(&mut self, value: &Value) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    /// A line of text, escaped (a newline in it is shown as `\n`).
    pub(crate) fn line(&mut self, text: impl std::fmt::Display) -> std::io::Result<()> {
        self.raw_line(escaped(&text.to_string()))
    }

    /// A line written as it is: only for text built here from escaped parts.
    fn raw_line(&mut self, text: impl std::fmt::Display) -> std::io::Result<()> {
        writeln!(self.out, "{text}")?;
        self.out.flush()
    }

    /// A table with `header`, as wide as the terminal allows; every cell escaped.
    pub(crate) fn table(&mut self, header: &[&str], rows: Vec<Vec<String>>) -> std::io::Result<()> {
        let mut table = Table::new();
        table
            .load_preset(presets::UTF8_BORDERS_ONLY)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(header.to_vec());
        for row in rows {
            table.add_row(
                row.into_iter()
                    .map(|cell| escaped(&cell).into_owned())
                    .collect::<Vec<_>>(),
            );
        }
        self.raw_line(table)
    }
}

/// A time as the tables show it.
pub(crate) fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

/// The event's payload as JSON: decoded and upcast to the current schema by the registry when
/// this binary knows the type, else as stored. The second value says why it was not decoded,
/// for a type the binary knows whose payload does not decode.
pub(crate) fn payload(event: &RecordedEvent) -> (Value, bool, Option<String>) {
    match EventRegistry::global().decode_json(event) {
        Ok(mut value) => {
            redact(&mut value);
            (value, true, None)
        }
        Err(error) => {
            let mut stored = serde_json::from_str(&event.payload)
                .unwrap_or_else(|_| Value::String(event.payload.clone()));
            let encrypted = event.payload.contains(&format!(
                "\"{}\"",
                eventsource::protection::ENCRYPTED_MARKER
            ));
            redact(&mut stored);
            let why = match error {
                eventsource::Error::UnknownEventType { .. } => None,
                // Personal fields: shown as placeholders, which is all the command line can do.
                _ if encrypted => None,
                other => Some(other.to_string()),
            };
            (stored, false, why)
        }
    }
}

/// What the command line shows for a personal field: it has no key store, so an encrypted field
/// (and a forgotten one) is never shown as stored, let alone decrypted.
pub(crate) const ENCRYPTED_PLACEHOLDER: &str = "<encrypted personal data>";
/// What it shows for a field whose data subject was forgotten.
pub(crate) const FORGOTTEN_PLACEHOLDER: &str = "<forgotten>";

/// Replaces encrypted and forgotten personal fields by their placeholders, at any depth.
fn redact(value: &mut Value) {
    if eventsource::protection::is_envelope(value) {
        *value = Value::String(ENCRYPTED_PLACEHOLDER.into());
        return;
    }
    match value {
        Value::Object(fields)
            if fields.len() == 1
                && fields.contains_key(eventsource::protection::FORGOTTEN_MARKER) =>
        {
            *value = Value::String(FORGOTTEN_PLACEHOLDER.into());
        }
        Value::Object(fields) => fields.values_mut().for_each(redact),
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// An event as a JSON object (the same shape for `events` and `tail`).
pub(crate) fn event_json(event: &RecordedEvent) -> Value {
    let (payload, decoded, decode_error) = payload(event);
    let mut value = json!({
        "position": event.position.get(),
        "stream": event.stream.to_string(),
        "aggregate_type": event.stream.aggregate_type(),
        "aggregate_id": event.stream.aggregate_id(),
        "version": event.version,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "occurred_at": event.occurred_at,
        "metadata": event.metadata,
        "payload": payload,
        "decoded": decoded,
    });
    if let (Some(why), Some(object)) = (decode_error, value.as_object_mut()) {
        object.insert("decode_error".into(), Value::String(why));
    }
    value
}

/// A projection's or a stream's position for a table: `-` for none.
pub(crate) fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod escaping {
    use super::escaped;

    #[test]
    fn controls_and_bidi_are_escaped_and_the_rest_kept() {
        assert_eq!(
            escaped("o\x1b]0;pwned\x07\r\n\t\x7f\u{9b}\u{202e}x"),
            "o\\u{1b}]0;pwned\\u{7}\\r\\n\\t\\u{7f}\\u{9b}\\u{202e}x"
        );
        assert!(matches!(
            escaped("Order/o-1 café ✓"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}

#[cfg(test)]
mod redaction {
    use super::*;
    use eventsource::{NewEvent, Position, StreamId};

    fn stored(payload: &str) -> RecordedEvent {
        RecordedEvent::new(
            StreamId::new("Customer", "c-1").unwrap(),
            1,
            Position::new(1),
            NewEvent::from_json("cli.test.Registered", 1, payload),
        )
    }

    #[test]
    fn personal_fields_show_as_placeholders() {
        let event = stored(
            r#"{"customer_id":"c-1","email":{"$enc":"v1","kid":"k","n":"bm9uY2U=","c":"Y2lwaGVy"},
                "name":{"$forgotten":true},"plan":"gold"}"#,
        );
        let (value, decoded, why) = payload(&event);
        assert!(!decoded);
        assert_eq!(why, None, "an encrypted payload is not a decoding failure");
        assert_eq!(value["email"], ENCRYPTED_PLACEHOLDER);
        assert_eq!(value["name"], FORGOTTEN_PLACEHOLDER);
        assert_eq!(value["plan"], "gold");
        let shown = event_json(&event).to_string();
        assert!(!shown.contains("Y2lwaGVy"), "no ciphertext: {shown}");
    }
}
