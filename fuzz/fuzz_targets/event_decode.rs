//! Event decoding with upcasters: arbitrary bytes as the payload of a derived event at each
//! schema version (a JSON upcast from 1 to 2, a `via` upcast from 2 to 3), and through the
//! registry's decode-any-event under its name, its alias, another type's and an unknown one.
//! The first byte picks the version, the second the name.
#![no_main]

use eventsource::{DomainEvent, EventRegistry, NewEvent, Position, RecordedEvent, StreamId};
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/fuzz_events.rs"]
mod fuzz_events;
use fuzz_events::{Noted, Paid};

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
