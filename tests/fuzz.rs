//! Decoding arbitrary input: stored payloads of any schema version through the generated decoder
//! and its upcast chain, the registry's decode-any-event, stream ids and metadata. Whatever the
//! bytes, the answer is a value or a typed error, never a panic. Run with the test suite (a
//! couple of thousand cases each); `PROPTEST_CASES=100000 cargo test --test fuzz` runs longer.

use eventsource::prelude::*;
use eventsource::{EventRegistry, NewEvent};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// Version 1 to 2 at the JSON level: whole euros, stored as a string by an older release,
/// become cents; what does not parse is refused (a typed upcast error).
fn v1_to_v2(v: serde_json::Value) -> Result<serde_json::Value, String> {
    let euros = v.get("euros").and_then(|e| e.as_str()).ok_or("no euros")?;
    let euros: i64 = euros.trim().parse().map_err(|e| format!("euros: {e}"))?;
    let cents = euros.checked_mul(100).ok_or("euros out of range")?;
    Ok(serde_json::json!({ "cents": cents }))
}

/// Version 2: cents, no currency.
#[derive(Deserialize)]
struct PaidV2 {
    cents: i64,
}

/// Why version 2 does not become version 3.
#[derive(Debug, thiserror::Error)]
#[error("a negative payment")]
struct Negative;

/// Version 2 to 3: refuses negative amounts.
impl TryFrom<PaidV2> for Paid {
    type Error = Negative;
    fn try_from(v2: PaidV2) -> Result<Self, Negative> {
        if v2.cents < 0 {
            return Err(Negative);
        }
        Ok(Paid {
            amount: Amount {
                cents: v2.cents,
                currency: "EUR".into(),
            },
        })
    }
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, PartialEq)]
#[event(
    name = "fuzz.Paid",
    version = 3,
    alias = "fuzz.OldPaid",
    upcast(from_version = 1, json = v1_to_v2),
    upcast(from_version = 2, via = PaidV2)
)]
struct Paid {
    amount: Amount,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Amount {
    cents: i64,
    currency: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, PartialEq)]
#[event(name = "fuzz.Noted")]
struct Noted {
    text: String,
    tags: Vec<String>,
}

/// Arbitrary JSON, nested a few levels.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        ".{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("cents"),
            Just("euros"),
            Just("amount"),
            Just("currency"),
            Just("text"),
            Just("tags")
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("cents".to_owned()),
                    Just("euros".to_owned()),
                    Just("amount".to_owned()),
                    Just("currency".to_owned()),
                    Just("text".to_owned()),
                    Just("tags".to_owned()),
                    ".{0,6}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn stored(event_type: &str, schema_version: u32, payload: String) -> RecordedEvent {
    RecordedEvent::new(
        StreamId::new("Fuzz", "f-1").unwrap(),
        1,
        Position::new(1),
        NewEvent::from_json(event_type.to_owned(), schema_version, payload),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any text as a payload of any version: a value or a typed error.
    #[test]
    fn arbitrary_text_never_panics(version in 0u32..6, payload in any::<String>()) {
        let _ = Paid::decode(version, &payload);
        let _ = Noted::decode(version, &payload);
    }

    /// Any bytes, as the store would hand them over when they are UTF-8.
    #[test]
    fn arbitrary_bytes_never_panic(version in 0u32..6, bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(payload) = std::str::from_utf8(&bytes) {
            let _ = Paid::decode(version, payload);
        }
    }

    /// JSON of any shape through the upcast chain (both kinds of step), at every version.
    #[test]
    fn arbitrary_json_through_the_upcast_chain(version in 0u32..6, value in json()) {
        let payload = value.to_string();
        match Paid::decode(version, &payload) {
            Ok(paid) => prop_assert!((1..=3).contains(&version), "decoded at version {version}: {paid:?}"),
            Err(error) => { let _ = error.to_string(); }
        }
    }

    /// The registry's decode-any-event, for a known name, an alias and an unknown one.
    #[test]
    fn registry_decodes_or_refuses(
        name in prop_oneof![
            Just("fuzz.Paid".to_owned()),
            Just("fuzz.OldPaid".to_owned()),
            Just("fuzz.Noted".to_owned()),
            ".{0,10}",
        ],
        version in 0u32..6,
        value in json(),
    ) {
        let event = stored(&name, version, value.to_string());
        let _ = EventRegistry::global().decode_json(&event);
        let _ = event.decode::<Paid>();
    }

    /// Stream ids and metadata from arbitrary text.
    #[test]
    fn stream_ids_and_metadata(aggregate in any::<String>(), id in any::<String>(), metadata in json()) {
        if let Ok(stream) = StreamId::new(aggregate, id) {
            prop_assert!(!stream.aggregate_type().is_empty());
        }
        let _ = serde_json::from_value::<eventsource::Metadata>(metadata);
    }
}

/// The cases above can fail: a well-formed payload of each version decodes to the current type.
#[test]
fn every_version_decodes() {
    let v1 = Paid::decode(1, r#"{"euros":" 12 "}"#).unwrap();
    let v2 = Paid::decode(2, r#"{"cents":1200}"#).unwrap();
    let v3 = Paid::decode(3, r#"{"amount":{"cents":1200,"currency":"EUR"}}"#).unwrap();
    assert_eq!(v1, v3);
    assert_eq!(v2, v3);
    assert!(Paid::decode(1, r#"{"euros":"99999999999999999999"}"#).is_err());
    assert!(Paid::decode(2, r#"{"cents":-1}"#).is_err());
}
