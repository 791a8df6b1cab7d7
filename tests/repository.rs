//! The repository and the root, beyond what every store's conformance suite checks: missing
//! aggregates, the unknown-event policies, command errors, exhausted retries, metadata, pending
//! events and the registry.

use eventsource::prelude::*;
use eventsource::{EventRegistry, NewEvent};
use eventsource::{
    ExpectedVersion, Repository, SnapshotStore, SnapshotStrategy, StreamId, StreamQuery,
};
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "repo.Opened", aggregate = "Account")]
struct Opened {
    owner: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "repo.Deposited", version = 2, aggregate = "Account")]
struct Deposited {
    cents: i64,
}

#[derive(Default, Debug)]
struct Account {
    owner: String,
    balance: i64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
enum AccountError {
    #[error("a deposit must be positive, got {0}")]
    NotPositive(i64),
}

#[aggregate(name = "Account", id = String, error = AccountError)]
impl Account {
    #[handles]
    fn opened(&mut self, event: &Opened) {
        self.owner.clone_from(&event.owner);
    }

    #[handles]
    fn deposited(&mut self, event: &Deposited) {
        self.balance += event.cents;
    }
}

impl Account {
    fn deposit(&self, cents: i64) -> Result<Deposited, AccountError> {
        if cents <= 0 {
            return Err(AccountError::NotPositive(cents));
        }
        Ok(Deposited { cents })
    }
}

/// The same stream read by aggregates that only know `Opened`, with each policy for the rest.
#[derive(Default, Debug)]
struct Lenient {
    owner: String,
}

#[aggregate(name = "Account", id = String, unknown_events = "ignore")]
impl Lenient {
    #[handles]
    fn opened(&mut self, event: &Opened) {
        self.owner.clone_from(&event.owner);
    }
}

#[derive(Default, Debug)]
struct Watchful {
    owner: String,
}

#[aggregate(name = "Account", id = String, unknown_events = "warn")]
impl Watchful {
    #[handles]
    fn opened(&mut self, event: &Opened) {
        self.owner.clone_from(&event.owner);
    }
}

#[derive(Default, Debug)]
struct Strict;

#[aggregate(name = "Account", id = String)]
impl Strict {
    #[handles]
    fn opened(&mut self, _event: &Opened) {}
}

async fn opened_account(store: &InMemoryEventStore, id: &str, deposits: &[i64]) {
    let repo = Account::repository(store.clone());
    let mut root = repo.create(id);
    root.record(Opened {
        owner: "Ada".into(),
    });
    for cents in deposits {
        root.record(Deposited { cents: *cents });
    }
    repo.save(&mut root).await.unwrap();
}

#[tokio::test]
async fn a_missing_aggregate_is_a_typed_error() {
    let store = InMemoryEventStore::new();
    let repo = Account::repository(store.clone());
    match repo.load("nobody").await {
        Err(Error::AggregateNotFound { stream }) => {
            assert_eq!(stream.to_string(), "Account/nobody");
        }
        other => panic!("expected AggregateNotFound, got {other:?}"),
    }
    assert!(!repo.exists("nobody").await.unwrap());
    assert!(matches!(
        repo.update("nobody", |_| Ok(())).await,
        Err(UpdateError::Store(Error::AggregateNotFound { .. }))
    ));
    assert!(repo.try_load("nobody").await.unwrap().is_none());
    assert!(store.is_empty(), "a failed update wrote nothing");

    opened_account(&store, "ada", &[5]).await;
    assert!(repo.exists("ada").await.unwrap());
    assert_eq!(repo.load("ada").await.unwrap().state().balance, 5);
}

#[tokio::test]
async fn a_second_create_of_one_id_conflicts() {
    let store = InMemoryEventStore::new();
    opened_account(&store, "ada", &[]).await;
    let repo = Account::repository(store.clone());
    let mut again = repo.create("ada");
    again.record(Opened {
        owner: "Impostor".into(),
    });
    match repo.save(&mut again).await {
        Err(Error::Concurrency {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (ExpectedVersion::NoStream, 1)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(repo.load("ada").await.unwrap().state().owner, "Ada");
}

#[tokio::test]
async fn unknown_events_follow_the_aggregate_policy() {
    let store = InMemoryEventStore::new();
    opened_account(&store, "ada", &[7, 8]).await;
    let logs = eventsource_tests::logs::capture();
    const SKIPPED: &str = "skipping a stored event the aggregate has no handler for";

    let lenient = Repository::<Lenient, _>::new(store.clone())
        .load("ada")
        .await
        .unwrap();
    assert_eq!(
        (lenient.state().owner.as_str(), lenient.version()),
        ("Ada", 3),
        "skipped events still count as versions"
    );
    assert!(
        logs.lines_with(SKIPPED).is_empty(),
        "\"ignore\" logs nothing"
    );
    let watchful = Repository::<Watchful, _>::new(store.clone())
        .load("ada")
        .await
        .unwrap();
    assert_eq!(watchful.version(), 3);
    let warnings = logs.lines_with(SKIPPED);
    assert_eq!(
        warnings.len(),
        2,
        "one warning per skipped event: {warnings:?}"
    );
    for (line, version) in warnings.iter().zip([2, 3]) {
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("event_type=repo.Deposited"), "{line}");
        assert!(line.contains(&format!("version={version}")), "{line}");
    }
    match Repository::<Strict, _>::new(store.clone())
        .load("ada")
        .await
    {
        Err(Error::UnknownEventType {
            stream,
            version,
            event_type,
            schema_version,
        }) => assert_eq!(
            (
                stream.aggregate_id(),
                version,
                event_type.as_str(),
                schema_version
            ),
            ("ada", 2, "repo.Deposited", 2)
        ),
        other => panic!("expected UnknownEventType, got {other:?}"),
    }
}

#[tokio::test]
async fn a_command_error_saves_nothing_and_comes_back_typed() {
    let store = InMemoryEventStore::new();
    opened_account(&store, "ada", &[10]).await;
    let repo = Account::repository(store.clone());

    let result = repo
        .update("ada", |root| {
            let event = root.deposit(-3)?;
            root.record(event);
            Ok(())
        })
        .await;
    match result {
        Err(UpdateError::Rejected(error)) => assert_eq!(error, AccountError::NotPositive(-3)),
        other => panic!("expected the domain's error, got {other:?}"),
    }

    // Events recorded before the refusal are not saved either.
    let result = repo
        .update("ada", |root| {
            root.record(Deposited { cents: 1 });
            let event = root.deposit(0)?;
            root.record(event);
            Ok(())
        })
        .await;
    assert!(
        matches!(&result, Err(e) if e.rejected() == Some(&AccountError::NotPositive(0))),
        "{result:?}"
    );
    assert_eq!(store.len(), 2, "neither update stored anything");

    let updated = repo
        .update("ada", |root| {
            let event = root.deposit(5)?;
            root.record(event);
            Ok(root.balance)
        })
        .await
        .unwrap();
    assert_eq!(updated.output, 15, "update returns the command's output");
    // ... and where it stored: the stream's new version and the event's global position.
    let head = store.log_head().await.unwrap();
    assert_eq!(updated.stream_version, 3);
    assert_eq!(updated.last_position, head.last);
    let stored = store
        .read_stream(&repo.stream_id(&"ada".to_owned()), StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(stored.last().unwrap().position, updated.last_position);

    // A command that records nothing is stored nowhere new: where the stream already ends.
    let unchanged = repo.update("ada", |root| Ok(root.balance)).await.unwrap();
    assert_eq!(
        (unchanged.stream_version, unchanged.last_position),
        (3, updated.last_position)
    );
}

#[tokio::test]
async fn retries_are_bounded() {
    let store = InMemoryEventStore::new();
    opened_account(&store, "ada", &[]).await;
    let repo = Account::repository(store.clone()).with_max_attempts(3);
    let stream = StreamId::new("Account", "ada").unwrap();
    let mut runs = 0;
    let result = repo
        .update("ada", |root| {
            runs += 1;
            // A rival writer gets in between every load and save. (The in-memory store's
            // append completes without awaiting anything, so it can run inside the command.)
            let rival = NewEvent::new(&Deposited { cents: 1000 }).unwrap();
            futures::executor::block_on(store.append(&stream, ExpectedVersion::Any, vec![rival]))
                .unwrap();
            root.record(Deposited { cents: 1 });
            Ok(())
        })
        .await;
    match result {
        Err(UpdateError::Store(Error::RetriesExhausted {
            stream,
            attempts,
            last,
        })) => {
            assert_eq!((stream.to_string().as_str(), attempts), ("Account/ada", 3));
            assert!(last.is_concurrency(), "the last error was {last}");
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert_eq!(runs, 3);
    let account = repo.load("ada").await.unwrap();
    assert_eq!(
        (account.version(), account.state().balance),
        (4, 3000),
        "only the rivals' events were stored"
    );
}

#[tokio::test]
async fn metadata_flows_onto_recorded_events() {
    let store = InMemoryEventStore::new();
    let repo = Account::repository(store.clone());
    let correlation = Uuid::now_v7();
    let mut root = repo.create("ada");
    root.set_metadata(
        Metadata::new()
            .with_tenant("acme")
            .with_actor("user-7")
            .with_correlation_id(correlation),
    );
    root.record(Opened {
        owner: "Ada".into(),
    });
    let cause_id = root.pending_events()[0].event_id();
    root.record_with(
        Deposited { cents: 3 },
        Metadata::new().with_extra("channel", "atm"),
    );

    let pending = root.pending_events();
    assert_eq!(pending.len(), 2);
    assert_eq!(
        pending[0].downcast_ref::<Opened>(),
        Some(&Opened {
            owner: "Ada".into()
        })
    );
    assert_eq!(pending[0].downcast_ref::<Deposited>(), None);
    assert_eq!(
        (pending[1].event_type(), pending[1].schema_version()),
        ("repo.Deposited", 2)
    );
    repo.save(&mut root).await.unwrap();
    assert!(!root.has_pending_events());

    let stored = store
        .read_stream(root.stream_id(), StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(stored[0].event_id, cause_id, "ids are fixed when recorded");
    assert_eq!(stored[0].metadata.tenant_id.as_deref(), Some("acme"));
    assert_eq!(stored[0].metadata.actor_id.as_deref(), Some("user-7"));
    assert_eq!(stored[0].metadata.correlation_id, Some(correlation));
    assert_eq!(stored[1].metadata.tenant_id, None, "record_with replaces");
    assert_eq!(stored[1].metadata.extra["channel"], "atm");

    let reaction = Metadata::caused_by(&stored[0]);
    assert_eq!(reaction.causation_id, Some(stored[0].event_id));
    assert_eq!(reaction.correlation_id, Some(correlation));
    assert_eq!(reaction.tenant_id.as_deref(), Some("acme"));
}

#[test]
fn the_registry_lists_every_derived_event() {
    let registry = EventRegistry::global();
    let deposited = registry.get("repo.Deposited").expect("registered");
    assert_eq!(deposited.schema_version(), 2);
    assert_eq!(deposited.aggregate(), Some("Account"));
    assert!(deposited.rust_type().ends_with("Deposited"));
    assert!(deposited.versions().contains(&2));
    let names: Vec<_> = registry.iter().map(|t| t.name()).collect();
    assert!(names.contains(&"repo.Opened") && names.contains(&"repo.Deposited"));
    assert_eq!(registry.len(), names.len());
    assert!(
        registry.conflicts().is_empty(),
        "{:?}",
        registry.conflicts()
    );
    registry.check().unwrap();
    assert!(registry.get("repo.Nothing").is_none());
}

/// Serializes as an error: an event or a state that cannot be encoded.
fn refuse<T, S: serde::Serializer>(_: &T, _: S) -> Result<S::Ok, S::Error> {
    Err(serde::ser::Error::custom(
        "this value refuses to be serialized",
    ))
}

#[derive(DomainEvent, Serialize, Deserialize, Debug)]
#[event(name = "repo.Unencodable")]
struct Unencodable {
    #[serde(serialize_with = "refuse")]
    value: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug)]
#[event(name = "repo.Noted")]
struct Noted;

/// Serializes `false`, and refuses `true`.
fn refuse_true<S: serde::Serializer>(poisoned: &bool, serializer: S) -> Result<S::Ok, S::Error> {
    if *poisoned {
        refuse(poisoned, serializer)
    } else {
        serializer.serialize_bool(false)
    }
}

/// A state that cannot be snapshotted once it holds a poisoned event.
#[derive(Default, Debug, Serialize, Deserialize)]
struct Fragile {
    #[serde(serialize_with = "refuse_true")]
    poisoned: bool,
    notes: u32,
}

#[aggregate(name = "Fragile", id = String)]
impl Fragile {
    #[handles]
    fn unencodable(&mut self, _e: &Unencodable) {
        self.poisoned = true;
    }

    #[handles]
    fn noted(&mut self, _e: &Noted) {
        self.notes += 1;
    }
}

#[tokio::test]
async fn an_event_that_does_not_serialize_fails_the_save_and_stores_nothing() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Fragile, _>::new(store.clone());
    let mut root = repo.create("f");
    root.record(Noted);
    root.record(Unencodable { value: 1 });
    match repo.save(&mut root).await {
        Err(Error::Encode {
            stream, event_type, ..
        }) => assert_eq!(
            (stream.to_string(), event_type.as_str()),
            ("Fragile/f".to_owned(), "repo.Unencodable")
        ),
        other => panic!("expected Error::Encode, got {other:?}"),
    }
    assert!(!repo.exists("f").await.unwrap(), "not even the first event");
    assert_eq!(root.pending_events().len(), 2, "the root keeps its events");
}

#[tokio::test]
async fn a_state_that_does_not_serialize_is_a_snapshot_error_never_a_failed_save() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Fragile, _>::new(store.clone())
        .with_snapshots()
        .with_snapshot_strategy(SnapshotStrategy::every(1));
    let mut root = repo.create("g");
    root.record(Noted);
    let logs = eventsource_tests::logs::capture();
    repo.save(&mut root).await.unwrap();
    assert!(logs.lines_with("snapshot not taken").is_empty());

    // A root with unsaved events cannot be snapshotted.
    let mut root = repo.load("g").await.unwrap();
    assert_eq!(root.snapshot_version(), Some(1));
    root.record(Noted);
    assert!(matches!(
        repo.snapshot_root(&root).await,
        Err(Error::InvalidInput { .. })
    ));
    repo.save(&mut root).await.unwrap();

    // Poisoned: a save that crosses the interval stores its events and logs the snapshot.
    let mut root = repo.load("g").await.unwrap();
    let poison = NewEvent::from_json("repo.Unencodable", 1, r#"{"value": 1}"#);
    store
        .append(root.stream_id(), ExpectedVersion::Exact(2), vec![poison])
        .await
        .unwrap();
    root = repo.load("g").await.unwrap();
    assert!(root.state().poisoned);
    root.record(Noted);
    repo.save(&mut root).await.unwrap();
    assert_eq!(store.stream_version(root.stream_id()).await.unwrap(), 4);
    let warnings = logs.lines_with("snapshot not taken");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("cannot encode the state of Fragile/g"),
        "{}",
        warnings[0]
    );
    match repo.snapshot("g").await {
        Err(Error::SnapshotEncode { stream, .. }) => assert_eq!(stream.to_string(), "Fragile/g"),
        other => panic!("expected Error::SnapshotEncode, got {other:?}"),
    }
}

#[derive(Default, Debug, Serialize, Deserialize)]
struct Ticking {
    ticks: u32,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "repo.Ticked", aggregate = "Ticking")]
struct Ticked;

#[aggregate(name = "Ticking", id = String, snapshot_every = 2)]
impl Ticking {
    #[handles]
    fn ticked(&mut self, _event: &Ticked) {
        self.ticks += 1;
    }
}

/// `snapshot_every` (or a strategy) on a repository without a snapshot store is said, once,
/// not silently ignored; a strategy set before `with_snapshots` applies once the store is there.
#[tokio::test(flavor = "current_thread")]
async fn snapshots_asked_for_without_a_store_are_warned_about() {
    let logs = eventsource_tests::logs::capture();
    let store = SqliteEventStore::in_memory().await.unwrap();
    let plain = Ticking::repository(store.clone());
    for id in ["a", "b"] {
        let mut root = plain.create(id.to_owned());
        root.record(Ticked);
        root.record(Ticked);
        plain.save(&mut root).await.unwrap();
    }
    assert_eq!(
        logs.lines_with("no snapshot store").len(),
        1,
        "once per repository"
    );
    assert!(
        store
            .load_snapshot(&plain.stream_id(&"a".to_owned()))
            .await
            .unwrap()
            .is_none()
    );

    let ordered = Ticking::repository(store.clone())
        .with_snapshot_strategy(SnapshotStrategy::every(3))
        .with_snapshots();
    assert_eq!(
        ordered.snapshot_strategy(),
        Some(SnapshotStrategy::every(3))
    );
    let mut root = ordered.create("c".to_owned());
    for _ in 0..3 {
        root.record(Ticked);
    }
    ordered.save(&mut root).await.unwrap();
    assert!(
        store
            .load_snapshot(&ordered.stream_id(&"c".to_owned()))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(logs.lines_with("no snapshot store").len(), 1);
}
