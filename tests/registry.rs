//! Stored names that several event types claim. Two aggregates may each have a `Deposited`; the
//! registry, which decodes by stored name alone, must then refuse to pick one. This binary links
//! its own event types only, so the clashes below do not reach the other test binaries.

use eventsource::prelude::*;
use eventsource::{EventRegistry, NewEvent, RecordedEvent};
use eventsource::{ExpectedVersion, StreamId, StreamQuery};
use eventsource_tests::logs;
use serde::{Deserialize, Serialize};

mod accounts {
    use super::*;

    #[derive(DomainEvent, Serialize, Deserialize)]
    pub(crate) struct Deposited {
        pub(crate) amount: i64,
    }
}

mod wallets {
    use super::*;

    #[derive(DomainEvent, Serialize, Deserialize)]
    pub(crate) struct Deposited {
        pub(crate) amount: i64,
        pub(crate) currency: String,
    }

    /// Its alias is another type's name: ambiguous too.
    #[derive(DomainEvent, Serialize, Deserialize)]
    #[event(name = "registry.Withdrawn", alias = "registry.Closed")]
    pub(crate) struct Withdrawn {
        pub(crate) amount: i64,
    }

    #[derive(DomainEvent, Serialize, Deserialize)]
    #[event(name = "registry.Closed")]
    pub(crate) struct Closed;
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(name = "registry.Opened")]
struct Opened {
    owner: String,
}

/// The events as a store returns them: one per `(name, payload)`, in one stream.
async fn recorded(events: &[(&'static str, &'static str)]) -> Vec<RecordedEvent> {
    let store = InMemoryEventStore::new();
    let stream = StreamId::new("Account", "a-1").unwrap();
    let new = events
        .iter()
        .map(|(name, payload)| NewEvent::from_json(*name, 1, *payload))
        .collect();
    store
        .append(&stream, ExpectedVersion::NoStream, new)
        .await
        .unwrap();
    store
        .read_stream(&stream, StreamQuery::all())
        .await
        .unwrap()
}

// One test: the clash is logged once, when the registry is first used, and the capture must be in
// place on this thread before that.
#[tokio::test(flavor = "current_thread")]
async fn an_ambiguous_name_never_decodes() {
    let logs = logs::capture();
    let registry = EventRegistry::global();
    let stored = recorded(&[
        ("Deposited", r#"{"amount": 5}"#),
        ("registry.Closed", "null"),
        ("registry.Opened", r#"{"owner": "Ada"}"#),
    ])
    .await;

    let logged = logs.lines_with("several event types share the stored name `Deposited`");
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(
        logged[0].contains("registry::accounts::Deposited")
            && logged[0].contains("registry::wallets::Deposited"),
        "{logged:?}"
    );

    // The one-line check for a test suite names every clash and both types of each.
    let message = registry.check().unwrap_err().to_string();
    for expected in [
        "`Deposited`",
        "registry::accounts::Deposited",
        "registry::wallets::Deposited",
        "`registry.Closed`",
        "registry::wallets::Closed",
        "registry::wallets::Withdrawn",
        "#[event(name = \"...\")]",
    ] {
        assert!(message.contains(expected), "{expected} in: {message}");
    }
    assert_eq!(registry.conflicts().len(), 2, "{:?}", registry.conflicts());

    // Neither lookup nor decoding picks one of the types.
    assert!(registry.get("Deposited").is_none());
    assert!(registry.get("registry.Closed").is_none());
    match registry.decode_json(&stored[0]) {
        Err(Error::AmbiguousEventType {
            event_type,
            rust_types,
            other_clashes,
        }) => {
            assert_eq!(event_type, "Deposited");
            assert_eq!(
                rust_types,
                [
                    "registry::accounts::Deposited",
                    "registry::wallets::Deposited"
                ]
            );
            assert!(other_clashes.is_empty());
        }
        other => panic!("expected AmbiguousEventType, got {other:?}"),
    }
    assert!(matches!(
        registry.decode_json(&stored[1]),
        Err(Error::AmbiguousEventType { .. })
    ));

    // Names that one type claims still decode, and every type is still listed.
    let opened = registry.decode_json(&stored[2]).unwrap();
    assert_eq!(opened["owner"], "Ada");
    assert_eq!(
        registry.get("registry.Withdrawn").unwrap().rust_type(),
        "registry::wallets::Withdrawn"
    );
    assert_eq!(
        registry.iter().filter(|t| t.name() == "Deposited").count(),
        2
    );
    let _ = (accounts::Deposited { amount: 1 }.amount, wallets::Closed);
    let _ = wallets::Deposited {
        amount: 1,
        currency: String::new(),
    };
    let _ = wallets::Withdrawn { amount: 1 }.amount;
    let _ = Opened {
        owner: String::new(),
    }
    .owner;
}
