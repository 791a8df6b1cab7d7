//! The behaviour every [`EventStore`] must have. Each function is one case; `tests/conformance.rs`
//! runs every case against every backend, each on a fresh store.

use chrono::{Duration, Utc};
use eventsource::prelude::*;
use eventsource::{AppendResult, NewEvent};
use eventsource::{
    ExpectedVersion, Position, ReadAll, RecordedEvent, Repository, SnapshotStore, SnapshotStrategy,
    StreamId, StreamQuery,
};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// An event of the suite's small domain.
#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "conformance.Noted", aggregate = "Notebook")]
pub struct Noted {
    /// What was noted.
    pub text: String,
}

/// The suite's aggregate: the notes taken, in order.
#[derive(Default, Debug)]
pub struct Notebook {
    /// The notes.
    pub notes: Vec<String>,
}

#[aggregate(name = "Notebook", id = String)]
impl Notebook {
    #[handles]
    fn noted(&mut self, event: &Noted) {
        self.notes.push(event.text.clone());
    }
}

fn stream(id: &str) -> StreamId {
    StreamId::new("Notebook", id).expect("a valid stream id")
}

fn note(text: &str) -> NewEvent {
    NewEvent::new(&Noted { text: text.into() }).expect("serializable")
}

fn notes(texts: &[&str]) -> Vec<NewEvent> {
    texts.iter().map(|t| note(t)).collect()
}

/// A global read of everything committed so far: waits until the newest event is readable
/// (on PostgreSQL, transactions of other tests running at the same time may hold it back), as a
/// caller reading its own writes does.
pub async fn read_settled<S: EventStore>(store: &S, query: ReadAll) -> Vec<RecordedEvent> {
    let head = store.log_head().await.unwrap();
    store
        .wait_for(head.last, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    store.read_all(query).try_collect().await.unwrap()
}

async fn count_all<S: EventStore>(store: &S) -> usize {
    read_settled(store, ReadAll::from_start()).await.len()
}

async fn texts<S: EventStore>(store: &S, id: &str) -> Vec<String> {
    store
        .read_stream(&stream(id), StreamQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|e| e.decode::<Noted>().unwrap().text)
        .collect()
}

fn assert_conflict(result: Result<AppendResult, Error>, expected: ExpectedVersion, actual: u64) {
    match result {
        Err(Error::Concurrency {
            expected: e,
            actual: a,
            ..
        }) => {
            assert_eq!((e, a), (expected, actual), "conflict details");
        }
        other => panic!("expected a concurrency conflict, got {other:?}"),
    }
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Error>, needle: &str) {
    match result {
        Err(Error::InvalidInput { reason, .. }) => {
            assert!(
                reason.contains(needle),
                "reason {reason:?} should mention {needle:?}"
            )
        }
        other => panic!("expected invalid input ({needle}), got {other:?}"),
    }
}

/// `Any` appends whatever the stream's state, numbering on.
pub async fn expected_any<S: EventStore>(store: &S) {
    let s = stream("any");
    let first = store
        .append(&s, ExpectedVersion::Any, notes(&["a", "b"]))
        .await
        .unwrap();
    assert_eq!(first.stream_version, 2);
    let second = store
        .append(&s, ExpectedVersion::Any, notes(&["c"]))
        .await
        .unwrap();
    assert_eq!(second.stream_version, 3);
    assert!(second.last_position > first.last_position);
    assert_eq!(texts(store, "any").await, ["a", "b", "c"]);
}

/// `NoStream` only creates.
pub async fn expected_no_stream<S: EventStore>(store: &S) {
    let s = stream("new");
    store
        .append(&s, ExpectedVersion::NoStream, notes(&["a", "b"]))
        .await
        .unwrap();
    let again = store
        .append(&s, ExpectedVersion::NoStream, notes(&["c"]))
        .await;
    assert_conflict(again, ExpectedVersion::NoStream, 2);
    let again = store
        .append(&s, ExpectedVersion::NoStream, notes(&["c", "d"]))
        .await;
    assert_conflict(again, ExpectedVersion::NoStream, 2);
    assert_eq!(texts(store, "new").await, ["a", "b"]);
}

/// `StreamExists` only appends to a stream with events.
pub async fn expected_stream_exists<S: EventStore>(store: &S) {
    let s = stream("exists");
    let missing = store
        .append(&s, ExpectedVersion::StreamExists, notes(&["a"]))
        .await;
    assert_conflict(missing, ExpectedVersion::StreamExists, 0);
    // A batch takes another path through the SQL stores: the same outcome.
    let missing = store
        .append(&s, ExpectedVersion::StreamExists, notes(&["a", "b"]))
        .await;
    assert_conflict(missing, ExpectedVersion::StreamExists, 0);
    assert_eq!(store.stream_version(&s).await.unwrap(), 0);
    store
        .append(&s, ExpectedVersion::Any, notes(&["a"]))
        .await
        .unwrap();
    let ok = store
        .append(&s, ExpectedVersion::StreamExists, notes(&["b"]))
        .await
        .unwrap();
    assert_eq!(ok.stream_version, 2);
}

/// `Exact(n)` appends only at version n: stale and future versions conflict.
pub async fn expected_exact<S: EventStore>(store: &S) {
    let s = stream("exact");
    store
        .append(&s, ExpectedVersion::Exact(0), notes(&["a"]))
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::Exact(1), notes(&["b", "c"]))
        .await
        .unwrap();
    assert_conflict(
        store
            .append(&s, ExpectedVersion::Exact(1), notes(&["x"]))
            .await,
        ExpectedVersion::Exact(1),
        3,
    );
    assert_conflict(
        store
            .append(&s, ExpectedVersion::Exact(7), notes(&["x"]))
            .await,
        ExpectedVersion::Exact(7),
        3,
    );
    for expected in [1, 7] {
        assert_conflict(
            store
                .append(&s, ExpectedVersion::Exact(expected), notes(&["x", "y"]))
                .await,
            ExpectedVersion::Exact(expected),
            3,
        );
    }
    assert_eq!(texts(store, "exact").await, ["a", "b", "c"]);
    assert_eq!(store.stream_version(&s).await.unwrap(), 3);
    assert!(store.stream_exists(&s).await.unwrap());
    assert!(!store.stream_exists(&stream("nobody")).await.unwrap());
}

/// A batch that conflicts or holds a taken event id stores none of its events.
pub async fn batch_is_atomic<S: EventStore>(store: &S) {
    let s = stream("atomic");
    store
        .append(&s, ExpectedVersion::NoStream, notes(&["a"]))
        .await
        .unwrap();
    let conflicting = store
        .append(&s, ExpectedVersion::NoStream, notes(&["x", "y", "z"]))
        .await;
    assert_conflict(conflicting, ExpectedVersion::NoStream, 1);

    let taken = store.read_stream(&s, StreamQuery::all()).await.unwrap()[0].event_id;
    let mut batch = notes(&["b", "c"]);
    batch.push(note("d").with_event_id(taken));
    match store.append(&s, ExpectedVersion::Exact(1), batch).await {
        Err(Error::DuplicateEvent { event_id, .. }) => assert_eq!(event_id, taken),
        other => panic!("expected a duplicate event, got {other:?}"),
    }
    // The same id in another stream is refused too: ids are unique in the whole store.
    let elsewhere = store
        .append(
            &stream("other"),
            ExpectedVersion::Any,
            vec![note("e").with_event_id(taken)],
        )
        .await;
    assert!(
        matches!(elsewhere, Err(Error::DuplicateEvent { .. })),
        "{elsewhere:?}"
    );

    let twice = note("f");
    let dup = twice.clone();
    let within = store
        .append(&s, ExpectedVersion::Exact(1), vec![twice, dup])
        .await;
    assert!(
        matches!(within, Err(Error::DuplicateEvent { .. })),
        "{within:?}"
    );

    assert_eq!(texts(store, "atomic").await, ["a"]);
    assert_eq!(count_all(store).await, 1);
}

/// A retried append (same event ids) cannot store its events twice; retrying an append whose
/// outcome was lost (all its events stored, same ids, same stream, same versions) reports the
/// first attempt's result.
pub async fn retried_append_is_idempotent<S: EventStore>(store: &S) {
    let s = stream("retry");
    let batch = notes(&["a", "b"]);
    let first = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    let again = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(again, first, "the retry reports the first attempt's result");
    store
        .append(&s, ExpectedVersion::Exact(2), notes(&["c"]))
        .await
        .unwrap();
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Any] {
        let late = store.append(&s, expected, batch.clone()).await.unwrap();
        assert_eq!(
            late, first,
            "a late retry ({expected}) is still the same append"
        );
    }
    assert_eq!(texts(store, "retry").await, ["a", "b", "c"]);

    // Not the same append: part of it is new, its order differs, another stream, or an
    // expected version the stored events do not satisfy.
    let partly_new = vec![batch[0].clone(), note("new")];
    let reordered = vec![batch[1].clone(), batch[0].clone()];
    for attempt in [partly_new, reordered] {
        let result = store.append(&s, ExpectedVersion::Any, attempt).await;
        assert!(
            matches!(result, Err(Error::DuplicateEvent { .. })),
            "{result:?}"
        );
    }
    let elsewhere = store
        .append(&stream("retry-other"), ExpectedVersion::Any, batch.clone())
        .await;
    assert!(
        matches!(elsewhere, Err(Error::DuplicateEvent { .. })),
        "{elsewhere:?}"
    );
    let wrong = store.append(&s, ExpectedVersion::Exact(1), batch).await;
    assert!(matches!(wrong, Err(Error::Concurrency { .. })), "{wrong:?}");
    assert_eq!(texts(store, "retry").await, ["a", "b", "c"]);
    assert_eq!(count_all(store).await, 3);
}

/// Stream reads: ranges, backwards, limits, and by time.
pub async fn read_stream_queries<S: EventStore>(store: &S) {
    let s = stream("ranges");
    let texts_of = |events: Vec<RecordedEvent>| -> Vec<String> {
        events
            .iter()
            .map(|e| e.decode::<Noted>().unwrap().text)
            .collect()
    };
    let start = Utc::now() - Duration::hours(10);
    let batch: Vec<NewEvent> = (1..=6)
        .map(|i| note(&i.to_string()).with_occurred_at(start + Duration::hours(i)))
        .collect();
    store
        .append(&s, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();

    let read = |q: StreamQuery| store.read_stream(&s, q);
    assert_eq!(
        texts_of(read(StreamQuery::all()).await.unwrap()),
        ["1", "2", "3", "4", "5", "6"]
    );
    assert_eq!(
        texts_of(read(StreamQuery::from_version(4)).await.unwrap()),
        ["4", "5", "6"]
    );
    assert_eq!(
        texts_of(
            read(StreamQuery::from_version(2).to_version(3))
                .await
                .unwrap()
        ),
        ["2", "3"]
    );
    assert_eq!(
        texts_of(read(StreamQuery::all().limit(2)).await.unwrap()),
        ["1", "2"]
    );
    assert_eq!(
        texts_of(read(StreamQuery::last(2)).await.unwrap()),
        ["6", "5"]
    );
    assert_eq!(
        texts_of(
            read(StreamQuery::all().to_version(4).backwards())
                .await
                .unwrap()
        ),
        ["4", "3", "2", "1"]
    );
    assert_eq!(
        texts_of(
            read(StreamQuery::all().until(start + Duration::hours(3)))
                .await
                .unwrap()
        ),
        ["1", "2", "3"]
    );
    assert!(read(StreamQuery::from_version(7)).await.unwrap().is_empty());
    assert!(
        store
            .read_stream(&stream("none"), StreamQuery::all())
            .await
            .unwrap()
            .is_empty()
    );
    let versions: Vec<u64> = read(StreamQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
}

/// Every field of a stored event, metadata included, reads back as written.
pub async fn metadata_round_trips<S: EventStore>(store: &S) {
    let s = stream("meta");
    let correlation = Uuid::now_v7();
    let causation = Uuid::now_v7();
    let metadata = Metadata::new()
        .with_tenant("acme")
        .with_actor("user-7")
        .with_correlation_id(correlation)
        .with_causation_id(causation)
        .with_extra("ip", "10.0.0.1")
        .with_extra("attempt", 2);
    let event = note("hello").with_metadata(metadata.clone());
    let (id, occurred_at) = (event.event_id, event.occurred_at);
    let result = store
        .append(&s, ExpectedVersion::NoStream, vec![event, note("plain")])
        .await
        .unwrap();
    let read = store.read_stream(&s, StreamQuery::all()).await.unwrap();
    assert_eq!(read[0].event_id, id);
    assert_eq!(read[0].stream, s);
    assert_eq!(read[0].aggregate_type(), "Notebook");
    assert_eq!(read[0].aggregate_id(), "meta");
    assert_eq!(read[0].event_type, "conformance.Noted");
    assert_eq!(read[0].schema_version, 1);
    assert_eq!(read[0].occurred_at, occurred_at);
    assert_eq!(read[0].metadata, metadata);
    assert!(read[1].metadata.is_empty());
    assert_eq!(read[1].position, result.last_position);
    assert!(read[0].position < read[1].position);
    // A one-event append takes its own path through the SQL stores: the same metadata.
    let solo = note("solo").with_metadata(metadata.clone());
    store
        .append(&s, ExpectedVersion::Exact(2), vec![solo])
        .await
        .unwrap();
    let read = store.read_stream(&s, StreamQuery::all()).await.unwrap();
    assert_eq!(read[2].metadata, metadata);
    // read_all returns the same events as read_stream.
    let all = read_settled(store, ReadAll::from_start()).await;
    assert_eq!(all, read);
}

/// Global reads: order, resuming after a position, paging, filters.
pub async fn read_all_order_and_filters<S: EventStore>(store: &S) {
    for i in 0..5 {
        let s = StreamId::new(
            if i % 2 == 0 { "Notebook" } else { "Diary" },
            format!("s{i}"),
        )
        .unwrap();
        let mut batch = Vec::new();
        for j in 0..7 {
            let mut event = note(&format!("{i}.{j}"));
            if j % 3 == 0 {
                event = NewEvent::from_json("conformance.Other", 1, "{}");
            }
            batch.push(event.with_metadata(Metadata::new().with_tenant(if i < 2 {
                "t1"
            } else {
                "t2"
            })));
        }
        store
            .append(&s, ExpectedVersion::NoStream, batch)
            .await
            .unwrap();
    }
    let read = |q: ReadAll| read_settled(store, q);
    let all = read(ReadAll::from_start()).await;
    assert_eq!(all.len(), 35);
    assert!(
        all.windows(2).all(|w| w[0].position < w[1].position),
        "strictly increasing positions"
    );
    // Within a stream, global order is version order: a batch's positions follow its versions.
    for i in 0..5 {
        let versions: Vec<u64> = all
            .iter()
            .filter(|e| e.stream.aggregate_id() == format!("s{i}"))
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, (1..=7).collect::<Vec<u64>>(), "stream s{i}");
    }
    let ids: HashSet<Uuid> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), 35);

    // Small pages give the same result.
    assert_eq!(read(ReadAll::from_start().batch_size(3)).await, all);
    // Resuming after any position gives exactly the rest.
    for cut in [0, 1, 13, 34] {
        let rest = read(ReadAll::after(all[cut].position).batch_size(4)).await;
        assert_eq!(rest, all[cut + 1..]);
    }
    assert!(read(ReadAll::after(all[34].position)).await.is_empty());

    let noted = read(ReadAll::from_start().event_types(["conformance.Noted"])).await;
    assert_eq!(noted.len(), 20);
    assert!(noted.iter().all(|e| e.event_type == "conformance.Noted"));
    let diaries = read(
        ReadAll::from_start()
            .aggregate_types(["Diary"])
            .batch_size(2),
    )
    .await;
    assert_eq!(diaries.len(), 14);
    let t1 = read(ReadAll::from_start().tenant("t1")).await;
    assert_eq!(t1.len(), 14);
    assert!(
        t1.iter()
            .all(|e| e.metadata.tenant_id.as_deref() == Some("t1"))
    );
    let combined = read(
        ReadAll::from_start()
            .tenant("t2")
            .aggregate_types(["Notebook"])
            .event_types(["conformance.Other", "nothing"]),
    )
    .await;
    assert_eq!(combined.len(), 6);
}

/// A 1 MB payload and text in many scripts survive the round trip.
pub async fn large_and_unicode_payloads<S: EventStore>(store: &S) {
    let big = "x".repeat(1 << 20);
    let unicode = "Grüße, 日本語, العربية, emoji 🦀👩‍💻, \"quotes\", back\\slash, \ttab\nnewline";
    let s = StreamId::new("Notebook", "ünïcødé-🦀").unwrap();
    store
        .append(&s, ExpectedVersion::NoStream, notes(&[&big, unicode]))
        .await
        .unwrap();
    let read = store.read_stream(&s, StreamQuery::all()).await.unwrap();
    assert_eq!(read[0].decode::<Noted>().unwrap().text, big);
    assert_eq!(read[1].decode::<Noted>().unwrap().text, unicode);
    assert_eq!(read[1].aggregate_id(), "ünïcødé-🦀");
    // A backslash followed by "u0000" is text, not a NUL.
    store
        .append(&s, ExpectedVersion::Exact(2), notes(&["\\u0000"]))
        .await
        .unwrap();
}

/// A stream of 10,000 events, appended in batches, reads back whole and in order.
pub async fn ten_thousand_events<S: EventStore>(store: &S) {
    let s = stream("long");
    for batch in 0..20 {
        let events = (0..500)
            .map(|i| note(&(batch * 500 + i).to_string()))
            .collect();
        store
            .append(&s, ExpectedVersion::Exact(batch * 500), events)
            .await
            .unwrap();
    }
    assert_eq!(store.stream_version(&s).await.unwrap(), 10_000);
    let read = store.read_stream(&s, StreamQuery::all()).await.unwrap();
    assert_eq!(read.len(), 10_000);
    for (i, event) in read.iter().enumerate() {
        assert_eq!(event.version, i as u64 + 1);
        assert_eq!(event.decode::<Noted>().unwrap().text, i.to_string());
    }
    let repo = Repository::<Notebook, _>::new(store);
    assert_eq!(repo.load("long").await.unwrap().state().notes.len(), 10_000);
}

/// Many writers, one stream, each appending at the version it read: exactly one wins each
/// version, nothing is lost or stored twice.
pub async fn concurrent_writers_one_stream<S: EventStore + Clone + 'static>(store: &S) {
    const WRITERS: usize = 8;
    const EACH: usize = 10;
    let s = stream("contended");
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            let mut conflicts = 0;
            while won.len() < EACH {
                let version = store.stream_version(&s).await.unwrap();
                let event = note(&format!("{w}.{}", won.len()));
                let id = event.event_id;
                match store
                    .append(&s, ExpectedVersion::Exact(version), vec![event])
                    .await
                {
                    Ok(result) => {
                        assert_eq!(result.stream_version, version + 1);
                        won.push((version + 1, id));
                    }
                    Err(Error::Concurrency { actual, .. }) => {
                        assert!(actual > version, "a conflict means someone else got ahead");
                        conflicts += 1;
                    }
                    Err(other) => panic!("unexpected error: {other}"),
                }
            }
            (won, conflicts)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        winners.extend(task.await.unwrap().0);
    }
    winners.sort();
    let versions: Vec<u64> = winners.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions,
        (1..=(WRITERS * EACH) as u64).collect::<Vec<_>>(),
        "one winner per version"
    );
    let stored = store.read_stream(&s, StreamQuery::all()).await.unwrap();
    let stored: Vec<(u64, Uuid)> = stored.iter().map(|e| (e.version, e.event_id)).collect();
    assert_eq!(
        stored, winners,
        "the store holds exactly the winners' events"
    );
}

/// Input no store accepts is refused with a typed error, and nothing is stored.
pub async fn bad_input_is_refused<S: EventStore>(store: &S) {
    let ok = stream("fine");
    assert_invalid(
        store
            .append(
                &ok,
                ExpectedVersion::Any,
                vec![NewEvent::from_json("T", 1, "{not json")],
            )
            .await,
        "not JSON",
    );
    assert_invalid(
        store
            .append(
                &ok,
                ExpectedVersion::Any,
                vec![NewEvent::from_json("T", 1, "")],
            )
            .await,
        "not JSON",
    );
    assert_invalid(
        store
            .append(&ok, ExpectedVersion::Any, notes(&["nul \0 inside"]))
            .await,
        "NUL",
    );
    assert_invalid(
        store
            .append(
                &ok,
                ExpectedVersion::Any,
                vec![NewEvent::from_json("", 1, "{}")],
            )
            .await,
        "empty",
    );
    assert_invalid(
        store
            .append(
                &ok,
                ExpectedVersion::Any,
                vec![NewEvent::from_json("T\0", 1, "{}")],
            )
            .await,
        "NUL",
    );
    assert_invalid(
        store
            .append(
                &ok,
                ExpectedVersion::Any,
                vec![NewEvent::from_json("T", 0, "{}")],
            )
            .await,
        "schema version",
    );
    // A stream id no store accepts cannot be built...
    assert_invalid(
        StreamId::new("Notebook", "x".repeat(1024)).map(drop),
        "1024 bytes",
    );
    assert_invalid(StreamId::new("Notebook", "a\0b").map(drop), "NUL");
    assert_invalid(StreamId::new("", "x").map(drop), "empty");
    // ...and an aggregate id that makes one is refused by the store at save.
    let repo = Repository::<Notebook, _>::new(store);
    for (id, reason) in [
        ("x".repeat(1024), "1024 bytes"),
        ("a\0b".into(), "NUL"),
        (String::new(), "empty"),
    ] {
        let mut root = repo.create(id);
        root.record(Noted { text: "a".into() });
        assert_invalid(repo.save(&mut root).await.map(drop), reason);
    }
    assert_eq!(count_all(store).await, 0);
    // A good append still works after all of that.
    store
        .append(&ok, ExpectedVersion::NoStream, notes(&["a"]))
        .await
        .unwrap();
    assert_eq!(count_all(store).await, 1);
}

/// An aggregate id no store accepts (too long, holding a NUL byte, empty) is refused by every
/// read as by a save, with the same `Error::InvalidInput` on every backend (never a database
/// error: it does not reach the database); metadata holding a NUL byte is refused at append; a
/// read filter holding one matches nothing (nothing stored can hold it).
pub async fn ids_no_store_accepts_are_refused_by_every_read<S: EventStore>(store: &S) {
    store
        .append(&stream("fine"), ExpectedVersion::NoStream, notes(&["a"]))
        .await
        .unwrap();
    let repo = Repository::<Notebook, _>::new(store);
    for (id, reason) in [
        ("x".repeat(1024), "1024 bytes"),
        ("a\0b".into(), "NUL"),
        (String::new(), "empty"),
    ] {
        let bad = repo.stream_id(&id);
        assert_invalid(repo.load(id.clone()).await.map(drop), reason);
        assert_invalid(repo.load_at(id.clone(), 1).await.map(drop), reason);
        assert_invalid(
            repo.load_as_of(id.clone(), Utc::now()).await.map(drop),
            reason,
        );
        assert_invalid(repo.exists(id.clone()).await, reason);
        let update = repo
            .update(id.clone(), |notebook| {
                notebook.record(Noted { text: "b".into() });
                Ok(())
            })
            .await;
        match update {
            Err(UpdateError::Store(error)) => assert_invalid(Err::<(), _>(error), reason),
            other => panic!("update of {id:?}: {other:?}"),
        }
        assert_invalid(store.read_stream(&bad, StreamQuery::all()).await, reason);
        assert_invalid(store.stream_version(&bad).await, reason);
        assert_invalid(store.stream_exists(&bad).await, reason);
        assert_invalid(
            store
                .fold_stream(&bad, StreamQuery::all(), |_| Ok(()))
                .await,
            reason,
        );
    }
    for (tenant, actor) in [(Some("t\0"), None), (None, Some("a\0"))] {
        let mut metadata = Metadata::new();
        metadata.tenant_id = tenant.map(str::to_owned);
        metadata.actor_id = actor.map(str::to_owned);
        let event = note("nul in metadata").with_metadata(metadata);
        assert_invalid(
            store
                .append(&stream("fine"), ExpectedVersion::Any, vec![event])
                .await,
            "NUL",
        );
    }
    let matching = |query: ReadAll| async move {
        let read = read_settled(store, query.clone()).await.len();
        let counted = store.count(query.clone()).await.unwrap();
        let mut folded = 0;
        store
            .fold_all(&query, |item| {
                folded += usize::from(item.is_ok());
                std::ops::ControlFlow::Continue(())
            })
            .await
            .unwrap();
        (read, counted as usize, folded)
    };
    for query in [
        ReadAll::from_start().event_types(["conformance.Noted\0"]),
        ReadAll::from_start().aggregate_types(["Notebook\0"]),
        ReadAll::from_start().tenant("t\0"),
        ReadAll::from_start()
            .event_types(["conformance.Noted\0"])
            .context(eventsource::ContextFields::Location),
    ] {
        assert_eq!(matching(query.clone()).await, (0, 0, 0), "{query:?}");
    }
    let some_good = ReadAll::from_start().event_types(["x\0", "conformance.Noted"]);
    assert_eq!(matching(some_good).await, (1, 1, 1));
}

/// What the store holds but the code cannot read is a typed error at load, naming the event.
pub async fn undecodable_events_are_typed_errors<S: EventStore>(store: &S) {
    let repo = Repository::<Notebook, _>::new(store);
    let s = stream("broken");
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![
                note("a"),
                NewEvent::from_json("conformance.Noted", 1, r#"{"txt":"typo"}"#),
            ],
        )
        .await
        .unwrap();
    match repo.load("broken").await {
        Err(Error::Decode {
            stream,
            version,
            event_type,
            schema_version,
            ..
        }) => {
            assert_eq!(
                (
                    stream.aggregate_id(),
                    version,
                    event_type.as_str(),
                    schema_version
                ),
                ("broken", 2, "conformance.Noted", 1)
            );
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    let s = stream("retired");
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![
                note("a"),
                NewEvent::from_json("conformance.Retired", 3, "{}"),
            ],
        )
        .await
        .unwrap();
    match repo.load("retired").await {
        Err(Error::UnknownEventType {
            version,
            event_type,
            schema_version,
            ..
        }) => {
            assert_eq!(
                (version, event_type.as_str(), schema_version),
                (2, "conformance.Retired", 3)
            );
        }
        other => panic!("expected an unknown event type, got {other:?}"),
    }
    let s = stream("future");
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![NewEvent::from_json(
                "conformance.Noted",
                9,
                r#"{"text":"from the future"}"#,
            )],
        )
        .await
        .unwrap();
    match repo.load("future").await {
        Err(Error::Decode {
            source: eventsource::DecodeError::UnsupportedSchemaVersion { stored, current },
            ..
        }) => {
            assert_eq!((stored, current), (9, 1));
        }
        other => panic!("expected an unsupported schema version, got {other:?}"),
    }
}

/// Repository time travel through the store: by version and by date.
pub async fn time_travel<S: EventStore>(store: &S) {
    let repo = Repository::<Notebook, _>::new(store);
    let start = Utc::now() - Duration::days(3);
    let events = (1..=3)
        .map(|day| note(&format!("day {day}")).with_occurred_at(start + Duration::days(day - 1)))
        .collect();
    store
        .append(&stream("travel"), ExpectedVersion::NoStream, events)
        .await
        .unwrap();

    let at_2 = repo.load_at("travel", 2).await.unwrap();
    assert_eq!(
        (at_2.version(), at_2.state().notes.clone()),
        (2, vec!["day 1".to_owned(), "day 2".to_owned()])
    );
    assert!(matches!(
        repo.load_at("travel", 4).await,
        Err(Error::VersionNotFound {
            requested: 4,
            current: 3,
            ..
        })
    ));

    let noon_day_1 = start + Duration::hours(12);
    assert_eq!(
        repo.load_as_of("travel", noon_day_1)
            .await
            .unwrap()
            .state()
            .notes,
        ["day 1"]
    );
    assert_eq!(
        repo.load_as_of("travel", Utc::now())
            .await
            .unwrap()
            .version(),
        3
    );
    assert!(matches!(
        repo.load_as_of("travel", start - Duration::hours(1)).await,
        Err(Error::AggregateNotFound { .. })
    ));
}

/// The repository's optimistic concurrency, end to end through the store.
pub async fn repository_conflict_and_retry<S: EventStore + Clone + 'static>(store: &S) {
    let repo = Repository::<Notebook, _>::new(store.clone());
    let mut first = repo.create("shared");
    first.record(Noted {
        text: "created".into(),
    });
    repo.save(&mut first).await.unwrap();

    let mut a = repo.load("shared").await.unwrap();
    let mut b = repo.load("shared").await.unwrap();
    a.record(Noted { text: "a".into() });
    b.record(Noted { text: "b".into() });
    repo.save(&mut a).await.unwrap();
    match repo.save(&mut b).await {
        Err(Error::Concurrency {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (ExpectedVersion::Exact(1), 2))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        b.pending_events().len(),
        1,
        "a refused save keeps the pending events"
    );

    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let repo = Repository::<Notebook, _>::new(store.clone()).with_max_attempts(50);
            tokio::spawn(async move {
                repo.update("shared", |nb| {
                    nb.record(Noted {
                        text: format!("update {i}"),
                    });
                    Ok(())
                })
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let loaded = repo.load("shared").await.unwrap();
    assert_eq!(loaded.version(), 8);
    assert_eq!(
        loaded
            .state()
            .notes
            .iter()
            .filter(|n| n.starts_with("update"))
            .count(),
        6
    );
}

// --- Schema evolution: what older releases stored, read by the current code. ---

/// Schema version 2 of `conformance.Paid`: whole euros. (Version 1 named the field `amount`; a
/// JSON step renames it.)
#[derive(Deserialize, Debug)]
pub struct PaidV2 {
    /// Whole euros.
    pub euros: i64,
}

/// Schema version 3: cents and a currency.
#[derive(Deserialize, Debug)]
pub struct PaidV3 {
    /// The amount in cents.
    pub cents: i64,
    /// ISO currency code.
    pub currency: String,
}

impl From<PaidV2> for PaidV3 {
    fn from(v2: PaidV2) -> Self {
        PaidV3 {
            cents: v2.euros * 100,
            currency: "EUR".into(),
        }
    }
}

/// Why a version 3 payment cannot become a version 4 one.
#[derive(Debug, thiserror::Error)]
#[error("a payment of {0} cents is negative")]
pub struct NegativePayment(pub i64);

impl TryFrom<PaidV3> for Paid {
    type Error = NegativePayment;
    fn try_from(v3: PaidV3) -> Result<Self, NegativePayment> {
        if v3.cents < 0 {
            return Err(NegativePayment(v3.cents));
        }
        Ok(Paid {
            cents: v3.cents,
            currency: v3.currency,
            method: "unknown".into(),
        })
    }
}

/// Version 1 stored `{"amount": n}`; version 2 calls it `euros`.
pub fn rename_amount(
    mut v1: serde_json::Value,
) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
    let amount = v1
        .as_object_mut()
        .and_then(|o| o.remove("amount"))
        .ok_or("a version 1 payment has an `amount`")?;
    Ok(serde_json::json!({ "euros": amount }))
}

/// The current (version 4) payment. Was stored as `conformance.PaymentMade` before a rename.
#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(
    name = "conformance.Paid",
    version = 4,
    alias = "conformance.PaymentMade",
    upcast(from_version = 1, json = rename_amount),
    upcast(from_version = 2, via = PaidV2),
    upcast(from_version = 3, via = PaidV3)
)]
pub struct Paid {
    /// The amount in cents.
    pub cents: i64,
    /// ISO currency code.
    pub currency: String,
    /// How it was paid.
    pub method: String,
}

/// An aggregate whose history spans four schema versions, a rename and a retired event.
#[derive(Default, Debug)]
pub struct Ledger {
    /// Payments, as the current code sees them.
    pub payments: Vec<Paid>,
}

#[aggregate(name = "Ledger", id = String, retired = ["conformance.Audited"])]
impl Ledger {
    #[handles]
    fn paid(&mut self, event: &Paid) {
        self.payments.push(event.clone());
    }
}

/// Payloads of every older schema version, an old event name and a retired event decode into
/// the current types; failures name both versions; reading rewrites nothing.
pub async fn old_schema_versions_are_upcast<S: EventStore>(store: &S) {
    let repo = Repository::<Ledger, _>::new(store);
    let s = StreamId::new("Ledger", "history").unwrap();
    let old = vec![
        NewEvent::from_json("conformance.Paid", 1, r#"{"amount": 12}"#),
        NewEvent::from_json("conformance.Paid", 2, r#"{"euros": 3}"#),
        NewEvent::from_json("conformance.Audited", 1, r#"{"by": "auditor"}"#),
        NewEvent::from_json(
            "conformance.Paid",
            3,
            r#"{"cents": 250, "currency": "USD"}"#,
        ),
        NewEvent::from_json(
            "conformance.PaymentMade",
            4,
            r#"{"cents": 5, "currency": "EUR", "method": "card"}"#,
        ),
    ];
    store
        .append(&s, ExpectedVersion::NoStream, old)
        .await
        .unwrap();
    let mut ledger = repo.load("history").await.unwrap();
    let cents: Vec<(i64, &str, &str)> = ledger
        .state()
        .payments
        .iter()
        .map(|p| (p.cents, p.currency.as_str(), p.method.as_str()))
        .collect();
    assert_eq!(
        cents,
        [
            (1200, "EUR", "unknown"),
            (300, "EUR", "unknown"),
            (250, "USD", "unknown"),
            (5, "EUR", "card")
        ]
    );
    assert_eq!(ledger.version(), 5);

    // New events are written at the current version, and read back the same.
    ledger.record(Paid {
        cents: 1,
        currency: "EUR".into(),
        method: "cash".into(),
    });
    repo.save(&mut ledger).await.unwrap();
    let stored = store.read_stream(&s, StreamQuery::all()).await.unwrap();
    let versions: Vec<(&str, u32)> = stored
        .iter()
        .map(|e| (e.event_type.as_str(), e.schema_version))
        .collect();
    assert_eq!(
        versions,
        [
            ("conformance.Paid", 1),
            ("conformance.Paid", 2),
            ("conformance.Audited", 1),
            ("conformance.Paid", 3),
            ("conformance.PaymentMade", 4),
            ("conformance.Paid", 4)
        ],
        "reading rewrites nothing"
    );
    assert!(
        stored[0].payload.contains("amount"),
        "the version 1 payload is as it was written"
    );
    // The registry lists the type with every version it decodes, and its old name.
    let paid = eventsource::EventRegistry::global()
        .get("conformance.Paid")
        .unwrap();
    assert_eq!(
        (paid.schema_version(), paid.versions(), paid.aliases()),
        (4, &[1, 2, 3, 4][..], &["conformance.PaymentMade"][..])
    );
    // Every read path decodes the same way: the registry too, and RecordedEvent::decode.
    assert_eq!(stored[0].decode::<Paid>().unwrap().cents, 1200);
    assert_eq!(
        eventsource::EventRegistry::global()
            .decode_json(&stored[4])
            .unwrap()["method"],
        "card"
    );

    let s = StreamId::new("Ledger", "broken").unwrap();
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![NewEvent::from_json(
                "conformance.Paid",
                3,
                r#"{"cents": -5, "currency": "EUR"}"#,
            )],
        )
        .await
        .unwrap();
    match repo.load("broken").await {
        Err(Error::Decode {
            stream,
            version,
            event_type,
            schema_version,
            source:
                eventsource::DecodeError::Upcast {
                    from,
                    to,
                    current,
                    source,
                },
        }) => {
            assert_eq!(
                (
                    stream.aggregate_id(),
                    version,
                    event_type.as_str(),
                    schema_version
                ),
                ("broken", 1, "conformance.Paid", 3)
            );
            assert_eq!((from, to, current), (3, 4, 4));
            assert_eq!(source.to_string(), "a payment of -5 cents is negative");
        }
        other => panic!("expected an upcast failure, got {other:?}"),
    }
    let s = StreamId::new("Ledger", "bad-v1").unwrap();
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![NewEvent::from_json("conformance.Paid", 1, r#"{"sum": 1}"#)],
        )
        .await
        .unwrap();
    assert!(matches!(
        repo.load("bad-v1").await,
        Err(Error::Decode {
            source: eventsource::DecodeError::Upcast { from: 1, to: 2, .. },
            ..
        })
    ));
    let s = StreamId::new("Ledger", "newer").unwrap();
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![NewEvent::from_json("conformance.Paid", 5, "{}")],
        )
        .await
        .unwrap();
    match repo.load("newer").await {
        Err(Error::Decode {
            schema_version: 5,
            source: eventsource::DecodeError::UnsupportedSchemaVersion { stored, current },
            ..
        }) => assert_eq!((stored, current), (5, 4)),
        other => panic!("expected an unsupported version, got {other:?}"),
    }
}

// --- Snapshots: a shortcut that must never change what a load returns. ---

/// Adds to a [`Tally`].
#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "conformance.Added")]
pub struct Added {
    /// What is added.
    pub n: i64,
}

/// Multiplies a [`Tally`]: with [`Added`], order matters, so a snapshot that skipped or repeated
/// an event would show.
#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "conformance.Multiplied")]
pub struct Multiplied {
    /// The factor.
    pub by: i64,
}

/// A snapshotted aggregate: a running total and the history of operations.
#[derive(Default, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Tally {
    /// The total, with wrapping arithmetic.
    pub total: i64,
    /// The operations applied, in order.
    pub ops: Vec<String>,
}

#[aggregate(name = "Tally", id = String, snapshot_every = 5)]
impl Tally {
    #[handles]
    fn added(&mut self, event: &Added) {
        self.total = self.total.wrapping_add(event.n);
        self.ops.push(format!("+{}", event.n));
    }

    #[handles]
    fn multiplied(&mut self, event: &Multiplied) {
        self.total = self.total.wrapping_mul(event.by);
        self.ops.push(format!("*{}", event.by));
    }
}

/// The same aggregate after a release changed the shape of its state: its snapshots carry state
/// schema version 2, and version 1 snapshots must not be trusted. (A version 1 state would even
/// decode as this one, with `count` 0: exactly the silent error the state version prevents.)
#[derive(Default, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TallyV2 {
    /// The total.
    pub total: i64,
    /// How many operations were applied (version 1 kept the list).
    #[serde(default)]
    pub count: usize,
}

#[aggregate(name = "Tally", id = String, snapshot_every = 5, state_version = 2)]
impl TallyV2 {
    #[handles]
    fn added(&mut self, event: &Added) {
        self.total = self.total.wrapping_add(event.n);
        self.count += 1;
    }

    #[handles]
    fn multiplied(&mut self, event: &Multiplied) {
        self.total = self.total.wrapping_mul(event.by);
        self.count += 1;
    }
}

fn tally(id: &str) -> StreamId {
    StreamId::new("Tally", id).expect("a valid stream id")
}

/// Property: for random event sequences, saved in random batches with a random snapshot
/// interval, loading from the snapshot and the events after it gives exactly the state and
/// version of a full replay, after every save.
pub async fn snapshot_plus_tail_equals_replay<S>(store: &S)
where
    S: EventStore + SnapshotStore + Clone + 'static,
{
    use rand::{Rng, SeedableRng};
    let replay = Repository::<Tally, _>::new(store.clone());
    for seed in 0..12u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let every = rng.gen_range(1..=9);
        let strategy = if seed % 3 == 0 {
            SnapshotStrategy::every(every).in_background()
        } else {
            SnapshotStrategy::every(every)
        };
        let repo = Repository::<Tally, _>::new(store.clone())
            .with_snapshots()
            .with_snapshot_strategy(strategy);
        let id = format!("prop-{seed}");
        let mut root = repo.create(id.clone());
        let mut used_a_snapshot = false;
        for _ in 0..rng.gen_range(1..=12) {
            for _ in 0..rng.gen_range(1..=7) {
                if rng.gen_bool(0.7) {
                    root.record(Added {
                        n: rng.gen_range(-50..=50),
                    });
                } else {
                    root.record(Multiplied {
                        by: rng.gen_range(-3..=3),
                    });
                }
            }
            let before = root.committed_version();
            repo.save(&mut root).await.unwrap();
            repo.flush_snapshots().await;
            let fast = repo.load(id.clone()).await.unwrap();
            let slow = replay.load(id.clone()).await.unwrap();
            assert_eq!(
                (fast.version(), fast.state()),
                (slow.version(), slow.state()),
                "seed {seed}"
            );
            assert_eq!(fast.version(), root.version(), "seed {seed}");
            let stored = store_snapshot_version(store, &id).await;
            if before / every < root.version() / every {
                assert_eq!(
                    stored,
                    Some(root.version()),
                    "seed {seed}: a save from {before} crossing a multiple of {every} snapshots"
                );
            }
            assert_eq!(
                fast.snapshot_version(),
                stored,
                "seed {seed}: the load starts from the stored snapshot"
            );
            used_a_snapshot |= fast.snapshot_version().is_some();
            // Keep recording on the freshly loaded root, as an application would.
            root = fast;
        }
        let stored = store_snapshot_version(store, &id).await;
        assert!(
            stored.is_none_or(|v| v <= root.version()),
            "seed {seed}: a snapshot never runs ahead of its stream"
        );
        assert_eq!(
            used_a_snapshot,
            stored.is_some(),
            "seed {seed}: loads used the snapshot once there was one"
        );
    }
}

async fn store_snapshot_version<S: SnapshotStore>(store: &S, id: &str) -> Option<u64> {
    store
        .load_snapshot(&tally(id))
        .await
        .unwrap()
        .map(|snapshot| snapshot.version())
}

/// Snapshots are taken when a save crosses a multiple of the interval, at the version it
/// reaches; on demand with a manual strategy; never from a root with unsaved events.
pub async fn snapshot_strategies<S>(store: &S)
where
    S: EventStore + SnapshotStore + Clone + 'static,
{
    // `#[aggregate(snapshot_every = 5)]` is the default.
    let repo = Repository::<Tally, _>::new(store.clone()).with_snapshots();
    assert_eq!(repo.snapshot_strategy(), Some(SnapshotStrategy::every(5)));
    let mut root = repo.create("crossing");
    for n in 1..=4 {
        root.record(Added { n });
    }
    repo.save(&mut root).await.unwrap();
    assert_eq!(store_snapshot_version(store, "crossing").await, None);
    for n in 5..=7 {
        root.record(Added { n });
    }
    repo.save(&mut root).await.unwrap();
    assert_eq!(
        store_snapshot_version(store, "crossing").await,
        Some(7),
        "4 -> 7 crosses 5: the snapshot holds the state at 7"
    );
    let loaded = repo.load("crossing").await.unwrap();
    assert_eq!(loaded.snapshot_version(), Some(7));
    assert_eq!(loaded.state().total, 28);

    let manual = Repository::<Tally, _>::new(store.clone())
        .with_snapshots()
        .with_snapshot_strategy(SnapshotStrategy::manual());
    let mut root = manual.create("manual");
    for n in 1..=12 {
        root.record(Added { n });
    }
    manual.save(&mut root).await.unwrap();
    assert_eq!(store_snapshot_version(store, "manual").await, None);
    let snapshot = manual.snapshot("manual").await.unwrap();
    assert_eq!((snapshot.version(), snapshot.state_version()), (12, 1));
    assert_eq!(
        manual.load("manual").await.unwrap().snapshot_version(),
        Some(12)
    );
    root.record(Added { n: 13 });
    assert!(matches!(
        manual.snapshot_root(&root).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        manual.snapshot("missing").await,
        Err(Error::AggregateNotFound { .. })
    ));

    // An older snapshot never replaces a newer one of the same state schema.
    let stale = store
        .load_snapshot(&tally("manual"))
        .await
        .unwrap()
        .unwrap();
    let stale = eventsource::Snapshot::new(
        stale.stream().clone(),
        3,
        stale.state_version(),
        r#"{"total": 6, "ops": ["+1", "+2", "+3"]}"#.into(),
    );
    store.save_snapshot(&stale).await.unwrap();
    assert_eq!(store_snapshot_version(store, "manual").await, Some(12));
    assert!(store.delete_snapshot(&tally("manual")).await.unwrap());
    assert!(!store.delete_snapshot(&tally("manual")).await.unwrap());
    assert_eq!(store_snapshot_version(store, "manual").await, None);
}

/// A snapshot taken under another state schema version is ignored: the state is rebuilt from
/// the events and re-snapshotted under the current version. Going back to the old code ignores
/// the new snapshot the same way.
pub async fn snapshot_schema_change_rebuilds<S>(store: &S)
where
    S: EventStore + SnapshotStore + Clone + 'static,
{
    let v1 = Repository::<Tally, _>::new(store.clone()).with_snapshots();
    let mut root = v1.create("evolving");
    for n in 1..=6 {
        root.record(Added { n });
    }
    v1.save(&mut root).await.unwrap();
    let old = store
        .load_snapshot(&tally("evolving"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((old.version(), old.state_version()), (6, 1));

    let v2 = Repository::<TallyV2, _>::new(store.clone()).with_snapshots();
    let loaded = v2.load("evolving").await.unwrap();
    assert_eq!(
        loaded.snapshot_version(),
        None,
        "a v1 snapshot is not trusted"
    );
    assert_eq!(
        loaded.state(),
        &TallyV2 {
            total: 21,
            count: 6
        },
        "rebuilt from the events"
    );
    let new = store
        .load_snapshot(&tally("evolving"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (new.version(), new.state_version()),
        (6, 2),
        "re-snapshotted under the new state version"
    );
    assert_eq!(
        v2.load("evolving").await.unwrap().snapshot_version(),
        Some(6)
    );

    let back = v1.load("evolving").await.unwrap();
    assert_eq!(back.snapshot_version(), None);
    assert_eq!(back.state().ops.len(), 6);
}

/// A snapshot that does not decode is ignored (and logged), the state rebuilt from the events,
/// and the snapshot replaced; it never fails the load and is never used.
pub async fn corrupt_snapshot_is_ignored<S>(store: &S)
where
    S: EventStore + SnapshotStore + Clone + 'static,
{
    let repo = Repository::<Tally, _>::new(store.clone()).with_snapshots();
    let mut root = repo.create("corrupt");
    for n in 1..=7 {
        root.record(Added { n });
    }
    repo.save(&mut root).await.unwrap();
    let logs = crate::logs::capture();
    for (seen, state) in [
        r#"{"total": "not a number", "ops": []}"#,
        r#"{"total": 1}"#,
        r#"[1, 2, 3]"#,
    ]
    .into_iter()
    .enumerate()
    {
        let forged = eventsource::Snapshot::new(tally("corrupt"), 7, 1, state.into());
        // A newer forged version, so that it replaces the good snapshot.
        store
            .save_snapshot(&eventsource::Snapshot::new(
                tally("corrupt"),
                7,
                9,
                state.into(),
            ))
            .await
            .unwrap();
        store.save_snapshot(&forged).await.unwrap();
        let loaded = repo.load("corrupt").await.unwrap();
        assert_eq!(loaded.snapshot_version(), None, "{state} is not used");
        assert_eq!((loaded.version(), loaded.state().total), (7, 28));
        let warnings = logs.lines_with("corrupt snapshot ignored");
        assert_eq!(warnings.len(), seen + 1, "one warning per corrupt snapshot");
        let stream = format!("stream={}", tally("corrupt"));
        assert!(
            warnings[seen].contains("WARN") && warnings[seen].contains(&stream),
            "a warning that names the stream: {}",
            warnings[seen]
        );
        let replaced = store
            .load_snapshot(&tally("corrupt"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Tally>(replaced.state())
                .unwrap()
                .total,
            28,
            "the corrupt snapshot was replaced by a good one"
        );
    }
}

/// Time travel uses a snapshot only when it lies at or before the requested point.
pub async fn snapshot_time_travel<S>(store: &S)
where
    S: EventStore + SnapshotStore + Clone + 'static,
{
    let repo = Repository::<Tally, _>::new(store.clone()).with_snapshots();
    let mut root = repo.create("travel");
    for n in 1..=10 {
        root.record(Added { n });
    }
    repo.save(&mut root).await.unwrap();
    let taken = store
        .load_snapshot(&tally("travel"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.version(), 10);
    root.record(Multiplied { by: 2 });
    repo.save(&mut root).await.unwrap();

    let at_4 = repo.load_at("travel", 4).await.unwrap();
    assert_eq!(
        (at_4.snapshot_version(), at_4.version(), at_4.state().total),
        (None, 4, 10)
    );
    let at_10 = repo.load_at("travel", 10).await.unwrap();
    assert_eq!(
        (at_10.snapshot_version(), at_10.state().total),
        (Some(10), 55)
    );
    let at_11 = repo.load_at("travel", 11).await.unwrap();
    assert_eq!(
        (at_11.snapshot_version(), at_11.state().total),
        (Some(10), 110)
    );
    let before = repo
        .load_as_of("travel", taken.time() - Duration::microseconds(1))
        .await
        .unwrap();
    assert_eq!(before.snapshot_version(), None, "taken after that time");
    assert_eq!(before.version(), 10);
    let now = repo.load_as_of("travel", Utc::now()).await.unwrap();
    assert_eq!((now.snapshot_version(), now.version()), (Some(10), 11));
}

/// Concurrent commands on one aggregate, with snapshots written in the background: every
/// command lands once, and the snapshotted load equals a full replay.
pub async fn concurrent_save_and_snapshot<S>(store: &S)
where
    S: EventStore + SnapshotStore + Clone + 'static,
{
    let repo = Repository::<Tally, _>::new(store.clone())
        .with_snapshots()
        .with_snapshot_strategy(SnapshotStrategy::every(3).in_background())
        .with_max_attempts(100);
    let mut root = repo.create("busy");
    root.record(Added { n: 0 });
    repo.save(&mut root).await.unwrap();
    let tasks: Vec<_> = (1..=8)
        .map(|task| {
            let repo = repo.clone();
            tokio::spawn(async move {
                for i in 0..5 {
                    repo.update("busy", |tally| {
                        tally.record(Added { n: task * 10 + i });
                        Ok(())
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    repo.flush_snapshots().await;
    let fast = repo.load("busy").await.unwrap();
    let slow = Repository::<Tally, _>::new(store.clone())
        .load("busy")
        .await
        .unwrap();
    assert_eq!(fast.version(), 41);
    assert_eq!(
        (fast.version(), fast.state()),
        (slow.version(), slow.state())
    );
    assert!(fast.snapshot_version().is_some());
    let mut ops = slow.state().ops.clone();
    ops.sort();
    ops.dedup();
    assert_eq!(ops.len(), 41, "every command applied exactly once");
}

/// `ExpectedVersion::Any` always succeeds, however many writers append to one stream at once:
/// every append lands, each at versions of its own.
pub async fn expected_any_under_contention<S: EventStore + Clone + 'static>(store: &S) {
    const TASKS: usize = 16;
    const APPENDS: usize = 15;
    let s = stream("contended");
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            let s = s.clone();
            tokio::spawn(async move {
                let mut versions = Vec::new();
                for i in 0..APPENDS {
                    let result = store
                        .append(&s, ExpectedVersion::Any, notes(&[&format!("{task}.{i}")]))
                        .await
                        .expect("an append with ExpectedVersion::Any never fails");
                    versions.push(result.stream_version);
                }
                versions
            })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.extend(task.await.unwrap());
    }
    versions.sort_unstable();
    let expected: Vec<u64> = (1..=(TASKS * APPENDS) as u64).collect();
    assert_eq!(versions, expected, "every append got a version of its own");
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        (TASKS * APPENDS) as u64
    );
    let read = store.read_stream(&s, StreamQuery::all()).await.unwrap();
    assert_eq!(read.len(), TASKS * APPENDS);
}

/// `log_head` reports the newest position, and `wait_for` returns once it is readable.
pub async fn log_head_and_wait_for<S: EventStore>(store: &S) {
    let empty = store.log_head().await.unwrap();
    assert_eq!(empty.last, Position::START);
    let result = store
        .append(
            &stream("head"),
            ExpectedVersion::NoStream,
            notes(&["a", "b"]),
        )
        .await
        .unwrap();
    store
        .wait_for(result.last_position, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let head = store.log_head().await.unwrap();
    assert_eq!(head.last, result.last_position);
    assert!(head.readable >= result.last_position, "{head:?}");
    let read: Vec<RecordedEvent> = store
        .read_all(ReadAll::from_start())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(read.last().map(|e| e.position), Some(result.last_position));
    // count: what read_all would return.
    assert_eq!(store.count(ReadAll::from_start()).await.unwrap(), 2);
    assert_eq!(
        store.count(ReadAll::after(read[0].position)).await.unwrap(),
        1
    );
    let other = ReadAll::from_start().event_types(["conformance.Other"]);
    assert_eq!(store.count(other).await.unwrap(), 0);
    // An empty append reports where the stream is.
    let empty_append = store
        .append(&stream("head"), ExpectedVersion::Exact(2), Vec::new())
        .await
        .unwrap();
    assert_eq!(empty_append, result);
}
