//! Event decoding with upcasters: arbitrary bytes as the payload of a derived event at each
//! schema version (a JSON upcast from 1 to 2, a `via` upcast from 2 to 3), and through the
//! registry's decode-any-event under its name, its alias, another type's and an unknown one.
//! The first byte picks the version, the second the name.
#![no_main]

use eventsource::prelude::*;
use eventsource::{EventRegistry, NewEvent};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

/// Version 1 to 2 at the JSON level: whole euros as a string become cents.
fn v1_to_v2(v: serde_json::Value) -> Result<serde_json::Value, String> {
    let euros = v.get("euros").and_then(|e| e.as_str()).ok_or("no euros")?;
    let euros: i64 = euros.trim().parse().map_err(|e| format!("euros: {e}"))?;
    let cents = euros.checked_mul(100).ok_or("euros out of range")?;
    Ok(serde_json::json!({ "cents": cents }))
}

#[derive(Deserialize)]
struct PaidV2 {
    cents: i64,
}

#[derive(Debug)]
struct Negative;

impl std::fmt::Display for Negative {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a negative payment")
    }
}

impl std::error::Error for Negative {}

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

const NAMES: [&str; 4] = ["fuzz.Paid", "fuzz.OldPaid", "fuzz.Noted", "fuzz.Unknown"];

fuzz_target!(|data: &[u8]| {
    let [version, name, payload @ ..] = data else {
        return;
    };
    let Ok(payload) = std::str::from_utf8(payload) else {
        return;
    };
    let version = u32::from(*version % 6);
    if let Ok(paid) = Paid::decode(version, payload) {
        assert!(
            (1..=3).contains(&version),
            "decoded at version {version}: {paid:?}"
        );
    }
    let _ = Noted::decode(version, payload);
    let event = RecordedEvent::new(
        StreamId::new("Fuzz", "f-1").expect("a valid stream"),
        1,
        Position::new(1),
        NewEvent::from_json(
            NAMES[usize::from(*name) % NAMES.len()].to_owned(),
            version,
            payload.to_owned(),
        ),
    );
    let _ = EventRegistry::global().decode_json(&event);
    let _ = event.decode::<Paid>();
});
