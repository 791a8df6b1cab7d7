//! Decoding arbitrary input: stored payloads of any schema version through the generated decoder
//! and its upcast chain, the registry's decode-any-event, stream ids and metadata. Whatever the
//! bytes, the answer is a value or a typed error, never a panic. Round trips where one is the
//! invariant: personal fields and sealed snapshots through a `ProtectedStore`, metadata through
//! SQLite's packed column, events through the bus's wire envelope. Run with the test suite (a
//! couple of thousand cases each, fewer for the round trips through a store);
//! `PROPTEST_CASES=100000 cargo test --test fuzz` runs longer. The coverage-guided targets of
//! the same parsers are in `fuzz/` (fuzz/README.md); `write_seed_corpus` below writes their
//! seeds.

use eventsource::__fuzz;
use eventsource::prelude::*;
use eventsource::{
    EventRegistry, InMemoryKeyStore, Metadata, NewEvent, Personal, ProtectedStore, Snapshot,
    SnapshotStore,
};
use eventsource::{ExpectedVersion, Position, ReadAll, RecordedEvent, StreamId, StreamQuery};
use futures::TryStreamExt;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[path = "support/fuzz_events.rs"]
mod fuzz_events;
use fuzz_events::{Noted, Paid};

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

/// An event with personal fields: a text, and a map whose keys may look like the store's own
/// markers.
#[derive(DomainEvent, Serialize, Deserialize, Debug, PartialEq, Clone)]
#[event(name = "fuzz.Registered")]
struct Registered {
    customer_id: String,
    #[personal(subject = customer_id)]
    name: Personal<String>,
    #[personal(subject = customer_id)]
    details: Personal<BTreeMap<String, String>>,
    note: serde_json::Value,
}

/// Keys that collide with the markers the protection layer writes, and any others.
fn marker_keys() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("$enc".to_owned()),
        Just("$forgotten".to_owned()),
        Just("$sealed".to_owned()),
        Just("kid".to_owned()),
        ".{0,6}",
    ]
}

/// Arbitrary metadata: any texts, ids or none, free-form JSON.
fn metadata() -> impl Strategy<Value = Metadata> {
    let id = prop::option::of(any::<u128>().prop_map(eventsource::Uuid::from_u128));
    (
        prop::option::of(".{0,8}"),
        prop::option::of(".{0,8}"),
        id.clone(),
        id,
        prop::collection::btree_map(".{0,6}", json(), 0..3),
    )
        .prop_map(|(tenant, actor, correlation, causation, extra)| {
            let mut metadata = Metadata::new();
            metadata.tenant_id = tenant;
            metadata.actor_id = actor;
            metadata.correlation_id = correlation;
            metadata.causation_id = causation;
            metadata.extra = extra.into_iter().collect();
            metadata
        })
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever a personal field holds, it is stored as an envelope and read back as it was, on
    /// the stream read and the global read; a snapshot of the stream is sealed and opens to the
    /// state it was given.
    #[test]
    fn personal_fields_and_sealed_snapshots_round_trip(
        customer in "[a-z0-9-]{1,12}",
        name in any::<String>(),
        details in prop::collection::btree_map(marker_keys(), any::<String>(), 0..3),
        note in json(),
        state in any::<String>(),
    ) {
        block_on(async {
            let inner = InMemoryEventStore::new();
            let store = ProtectedStore::new(inner.clone(), InMemoryKeyStore::new());
            let stream = StreamId::new("Customer", customer.clone()).unwrap();
            let event = Registered {
                customer_id: customer,
                name: Personal::Known(name),
                details: Personal::Known(details),
                note,
            };
            let appended = store
                .append(&stream, ExpectedVersion::NoStream, vec![NewEvent::new(&event).unwrap()])
                .await;
            if let Err(error) = appended {
                // Stores refuse NUL in a payload: here only a plain field can hold one, as the
                // personal ones are encrypted.
                prop_assert!(event.note.to_string().contains("\\u0000"), "{error}");
                return Ok(());
            }
            let raw = inner.read_stream(&stream, StreamQuery::all()).await.unwrap();
            let stored: serde_json::Value = serde_json::from_str(&raw[0].payload).unwrap();
            for field in ["name", "details"] {
                prop_assert!(eventsource::protection::is_envelope(&stored[field]), "{field} stored as {}", stored[field]);
            }
            let read = store.read_stream(&stream, StreamQuery::all()).await.unwrap();
            prop_assert_eq!(read[0].decode::<Registered>().unwrap(), event.clone());
            let all: Vec<RecordedEvent> = store.read_all(ReadAll::from_start()).try_collect().await.unwrap();
            prop_assert_eq!(all[0].decode::<Registered>().unwrap(), event);

            store.save_snapshot(&Snapshot::new(stream.clone(), 1, 1, state.clone())).await.unwrap();
            let sealed = inner.load_snapshot(&stream).await.unwrap().unwrap();
            prop_assert!(__fuzz::sealed_open(sealed.state(), &stream, 1, 1).is_some(), "not sealed: {}", sealed.state());
            let loaded = store.load_snapshot(&stream).await.unwrap().unwrap();
            prop_assert_eq!(loaded.state(), state.as_str());
            Ok(())
        })?;
    }

    /// Metadata of any content is read back as written through SQLite's packed column, on the
    /// stream read, the global read and a fold's page (the framed text).
    #[test]
    fn metadata_round_trips_through_sqlite(metadata in metadata()) {
        block_on(async {
            let store = SqliteEventStore::connect("sqlite::memory:").await.unwrap();
            let stream = StreamId::new("Fuzz", "f-1").unwrap();
            let event = NewEvent::from_json("fuzz.Noted", 1, r#"{"text":"","tags":[]}"#)
                .with_metadata(metadata.clone());
            if store.append(&stream, ExpectedVersion::Any, vec![event]).await.is_err() {
                // Refused before it is stored (a tenant the store does not take): nothing to read.
                return Ok(());
            }
            let read = store.read_stream(&stream, StreamQuery::all()).await.unwrap();
            prop_assert_eq!(&read[0].metadata, &metadata);
            let all: Vec<RecordedEvent> = store.read_all(ReadAll::from_start()).try_collect().await.unwrap();
            prop_assert_eq!(&all[0].metadata, &metadata);
            let page = __fuzz::sqlite_page_text(&store, 0, true).await.unwrap().unwrap();
            prop_assert_eq!(__fuzz::sqlite_page(&page, 0, true), vec![Ok(1), Ok(1)]);
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any event is read back from its bus message as it was sent.
    #[test]
    fn bus_envelope_round_trips(
        aggregate_type in "[A-Za-z][A-Za-z0-9.]{0,8}",
        aggregate_id in ".{1,12}",
        version in 1u64..,
        position in 1u64..,
        event_type in ".{0,12}",
        schema_version in any::<u32>(),
        micros in -62_135_596_800_000_000i64..253_402_300_799_000_000,
        metadata in metadata(),
        payload in any::<String>(),
    ) {
        let Ok(stream) = StreamId::new(aggregate_type, aggregate_id) else {
            return Ok(());
        };
        let mut new = NewEvent::from_json(event_type, schema_version, payload)
            .with_metadata(metadata)
            .with_occurred_at(eventsource::chrono::DateTime::from_timestamp_micros(micros).unwrap());
        new.event_id = eventsource::Uuid::now_v7();
        let event = RecordedEvent::new(stream, version, Position::new(position), new);
        prop_assert_eq!(__fuzz::bus_decode(&__fuzz::bus_encode(&event)), Ok(event));
    }

    /// Any text as a packed metadata column: metadata or a reason, never a panic.
    #[test]
    fn packed_metadata_never_panics(packed in any::<String>(), value in json()) {
        let _ = __fuzz::unpack_metadata(&packed);
        let _ = __fuzz::unpack_metadata(&value.to_string());
    }
}

/// Writes the seed corpus of the fuzz targets (`fuzz/corpus/<target>/`) from real encodings:
/// the framed texts SQLite gives for stored events, their packed metadata, their bus messages,
/// envelopes and sealed snapshots under the fuzz key. Run it after changing one of those
/// formats: `cargo test --test fuzz -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let with_mode = |mode: u8, text: &str| [&[mode], text.as_bytes()].concat();
    block_on(async {
        let store = SqliteEventStore::connect("sqlite::memory:").await.unwrap();
        let order = StreamId::new("Order", "o-1:2,3").unwrap();
        // Fixed ids and times, so that the seeds change only when a format does.
        let at =
            eventsource::chrono::DateTime::from_timestamp_micros(1_767_225_600_123_456).unwrap();
        let mut events = Vec::new();
        for (i, payload) in [
            r#"{"euros":" 12 "}"#,
            r#"{"cents":1200}"#,
            r#"{"amount":{"cents":1200,"currency":"EUR"},"note":"caf\u00e9 \"déjà\" 1,2:3"}"#,
        ]
        .into_iter()
        .enumerate()
        {
            let metadata = match i {
                0 => Metadata::new(),
                1 => Metadata::new().with_tenant("t-1").with_actor("ada"),
                _ => Metadata::new()
                    .with_correlation_id(eventsource::Uuid::from_u128(7))
                    .with_causation_id(eventsource::Uuid::from_u128(8))
                    .with_extra("trace", serde_json::json!({"id": [1, 2.5, "x"]})),
            };
            events.push(
                NewEvent::from_json("fuzz.Paid", i as u32 + 1, payload)
                    .with_metadata(metadata)
                    .with_event_id(eventsource::Uuid::from_u128(0x5eed_0000 + i as u128))
                    .with_occurred_at(at),
            );
        }
        store
            .append(&order, ExpectedVersion::NoStream, events)
            .await
            .unwrap();
        let note = StreamId::new("Note", "n-1").unwrap();
        let noted = NewEvent::from_json("fuzz.Noted", 1, r#"{"text":"hi","tags":["a","b"]}"#)
            .with_event_id(eventsource::Uuid::from_u128(0x5eed_0003))
            .with_occurred_at(at);
        store
            .append(&note, ExpectedVersion::NoStream, vec![noted])
            .await
            .unwrap();

        let lean = __fuzz::sqlite_page_text(&store, 0, false)
            .await
            .unwrap()
            .unwrap();
        let whole = __fuzz::sqlite_page_text(&store, 0, true)
            .await
            .unwrap()
            .unwrap();
        let stream = __fuzz::sqlite_stream_text(&store, &order, 1)
            .await
            .unwrap()
            .unwrap();
        // The mode byte: `0` a lean page, `1` a page with the whole context, `2` a stream read.
        write("sqlite_framed", "page-lean", &with_mode(b'0', &lean));
        write("sqlite_framed", "page-whole", &with_mode(b'1', &whole));
        write("sqlite_framed", "stream", &with_mode(b'2', &stream));
        assert_eq!(__fuzz::sqlite_page(&whole, 0, true).len(), 8);
        assert_eq!(__fuzz::sqlite_stream(&stream, 1), vec![Ok(1), Ok(2), Ok(3)]);

        // The store's packed column (`packed_metadata!()` in the SQLite store), of the rows that
        // have metadata.
        let packed: Vec<String> = eventsource::sqlx::query_scalar(
            "SELECT json_array(tenant_id, actor_id, lower(hex(correlation_id)), \
             lower(hex(causation_id)), json(coalesce(metadata, '{}'))) FROM events \
             WHERE NOT (tenant_id IS NULL AND actor_id IS NULL AND correlation_id IS NULL \
             AND causation_id IS NULL AND metadata IS NULL) ORDER BY position",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        for (i, packed) in packed.iter().enumerate() {
            assert!(__fuzz::unpack_metadata(packed).is_ok(), "{packed}");
            write("metadata_unpack", &format!("packed-{i}"), packed.as_bytes());
        }

        let all: Vec<RecordedEvent> = store
            .read_all(ReadAll::from_start())
            .try_collect()
            .await
            .unwrap();
        for event in &all {
            let message = __fuzz::bus_encode(event);
            write(
                "bus_envelope",
                &format!("event-{}", event.position.get()),
                &message,
            );
        }

        // Version byte then name byte, both as digits: `1`..`3` the versions (`0`, `4`, `5` none),
        // `0` fuzz.Paid, `1` its alias, `2` fuzz.Noted, `3` an unknown type.
        for (i, event) in all.iter().enumerate() {
            let name = if event.event_type == "fuzz.Noted" {
                b'2'
            } else {
                b'0' + (i % 2) as u8
            };
            let input = [
                &[b'0' + event.schema_version as u8, name],
                event.payload.as_bytes(),
            ]
            .concat();
            write(
                "event_decode",
                &format!("event-{}", event.position.get()),
                &input,
            );
        }
    });

    // The mode byte: `0` a field's envelope, `1` a sealed snapshot's state.
    let envelope = __fuzz::envelope_seal("email", br#""ada@example.com""#);
    assert_eq!(
        __fuzz::envelope_open("email", &envelope),
        Ok(Some(br#""ada@example.com""#.to_vec()))
    );
    write(
        "personal_envelope",
        "envelope",
        &with_mode(b'0', &envelope.to_string()),
    );
    let customer = StreamId::new("Customer", "c-1").unwrap();
    for shares in [1, 2] {
        let state = __fuzz::sealed_seal(shares, &customer, 3, 1, r#"{"name":"Ada"}"#);
        assert_eq!(
            __fuzz::sealed_open(&state, &customer, 3, 1),
            Some(Some(r#"{"name":"Ada"}"#.to_owned()))
        );
        write(
            "personal_envelope",
            &format!("sealed-{shares}"),
            &with_mode(b'1', &state),
        );
    }

    // The arguments after the program's name, separated by NUL.
    let cli: [(&str, &[&str]); 7] = [
        (
            "streams",
            &[
                "streams", "--db", "app.db", "--type", "Order", "--limit", "10", "--after",
                "Order/7",
            ],
        ),
        (
            "events-postgres",
            &[
                "--db",
                "postgres://user:pw@localhost:5432/db?sslmode=disable",
                "events",
                "Order/42",
                "--from",
                "3",
            ],
        ),
        (
            "tail-json",
            &[
                "--json",
                "--db",
                "sqlite://x.db?mode=ro",
                "tail",
                "--from",
                "0",
                "--type",
                "A",
                "--type",
                "B",
                "--no-follow",
            ],
        ),
        (
            "status-memory",
            &["projections", "status", "--db", "memory:"],
        ),
        (
            "stats-ipv6",
            &[
                "stats",
                "--days",
                "3",
                "--db",
                "postgresql://[::1]:5432/test",
            ],
        ),
        (
            "rebuild",
            &["projections", "rebuild", "balances", "--db=target/x.db"],
        ),
        (
            "migrate",
            &[
                "migrate",
                "--db",
                "postgres://localhost/test?options=-c%20search_path%3Dtenant",
            ],
        ),
    ];
    for (name, args) in cli {
        write("cli_args", name, args.join("\0").as_bytes());
    }
}

/// Found by `personal_fields_and_sealed_snapshots_round_trip`: a known map whose one key was
/// `$forgotten` read back as `Personal::Forgotten`, in a plain store and through a protected one.
#[test]
fn a_known_value_shaped_like_a_marker_reads_back_known() {
    for details in [
        BTreeMap::from([("$forgotten".to_owned(), String::new())]),
        BTreeMap::from([("$known".to_owned(), "x".to_owned())]),
    ] {
        let known = Personal::Known(details);
        let json = serde_json::to_string(&known).unwrap();
        assert_eq!(
            serde_json::from_str::<Personal<BTreeMap<String, String>>>(&json).unwrap(),
            known
        );
        block_on(async {
            let store = ProtectedStore::new(InMemoryEventStore::new(), InMemoryKeyStore::new());
            let stream = StreamId::new("Customer", "0").unwrap();
            let event = Registered {
                customer_id: "0".into(),
                name: Personal::Known(String::new()),
                details: known.clone(),
                note: serde_json::Value::Null,
            };
            store
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new(&event).unwrap()],
                )
                .await
                .unwrap();
            let read = store
                .read_stream(&stream, StreamQuery::all())
                .await
                .unwrap();
            assert_eq!(read[0].decode::<Registered>().unwrap(), event);
        });
    }
    let forgotten: Personal<BTreeMap<String, String>> = Personal::Forgotten;
    let json = serde_json::to_string(&forgotten).unwrap();
    assert_eq!(
        serde_json::from_str::<Personal<BTreeMap<String, String>>>(&json).unwrap(),
        forgotten
    );
}

/// Found by `bus_envelope_round_trips` and `metadata_round_trips_through_sqlite`: a number in
/// the free-form metadata read back one unit in the last place off (serde_json's default float
/// parser), after a bus hop or from SQLite.
#[test]
fn numbers_in_metadata_read_back_exactly() {
    for number in [6.295353319600786e-237, 1.3442791886450377e153] {
        let metadata = Metadata::new().with_extra("cents", number);
        let new = NewEvent::from_json("fuzz.Noted", 1, "{}").with_metadata(metadata.clone());
        let event = RecordedEvent::new(StreamId::new("A", " ").unwrap(), 1, Position::new(1), new);
        assert_eq!(__fuzz::bus_decode(&__fuzz::bus_encode(&event)), Ok(event));
        block_on(async {
            let store = SqliteEventStore::connect("sqlite::memory:").await.unwrap();
            let stream = StreamId::new("Fuzz", "f-1").unwrap();
            let new = NewEvent::from_json("fuzz.Noted", 1, "{}").with_metadata(metadata.clone());
            store
                .append(&stream, ExpectedVersion::Any, vec![new])
                .await
                .unwrap();
            let read = store
                .read_stream(&stream, StreamQuery::all())
                .await
                .unwrap();
            assert_eq!(read[0].metadata, metadata);
        });
    }
}
