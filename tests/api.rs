//! The API as a user meets it: ways to build a repository, stores chosen at run time, typed
//! command errors, metadata given once, typed ids, testing a domain without a store, and the
//! error types that keep sqlx out of our semver.

use eventsource::prelude::*;
use eventsource::store::DynEventStore;
use eventsource::{AggregateId, DatabaseError, NewEvent};
use eventsource::{
    AnyStore, ExpectedVersion, Position, ReadAll, RecordedEvent, Repository, Root, SnapshotStore,
    StoreRepository, StreamId, StreamQuery,
};
use eventsource_tests::databases;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

eventsource::typed_id!(
    /// A ticket's id.
    pub struct TicketId;
);

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "api.Opened")]
struct Opened {
    title: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "api.Closed")]
struct Closed;

#[derive(Debug, thiserror::Error, PartialEq)]
enum TicketError {
    #[error("the ticket is already closed")]
    AlreadyClosed,
}

#[derive(Default, Debug)]
struct Ticket {
    title: String,
    closed: bool,
}

#[aggregate(name = "Ticket", id = TicketId, error = TicketError)]
impl Ticket {
    #[handles]
    fn opened(&mut self, e: &Opened) {
        self.title = e.title.clone();
    }

    #[handles]
    fn closed(&mut self, _: &Closed) {
        self.closed = true;
    }
}

impl Ticket {
    fn close(&self) -> Result<Closed, TicketError> {
        if self.closed {
            return Err(TicketError::AlreadyClosed);
        }
        Ok(Closed)
    }
}

/// Open, close, refuse a second close: the same on any `EventStore`.
async fn lifecycle<S: EventStore>(tickets: &Repository<Ticket, S>) {
    let id = TicketId::new();
    let mut ticket = tickets.create(id);
    ticket.record(Opened {
        title: "printer on fire".into(),
    });
    tickets.save(&mut ticket).await.unwrap();
    tickets
        .update(id, |t| {
            let event = t.close()?;
            t.record(event);
            Ok(())
        })
        .await
        .unwrap();
    let again = tickets.update(id, |t| t.close().map(|e| t.record(e))).await;
    assert!(
        matches!(
            again,
            Err(UpdateError::Rejected(TicketError::AlreadyClosed))
        ),
        "{again:?}"
    );
    let ticket = tickets.load(id).await.unwrap();
    assert!(ticket.closed && ticket.title == "printer on fire");
    assert_eq!(ticket.version(), 2);
    assert!(tickets.try_load(TicketId::new()).await.unwrap().is_none());
}

#[tokio::test]
async fn three_ways_to_build_a_repository() {
    let store = InMemoryEventStore::new();
    lifecycle(&Ticket::repository(store.clone())).await;
    lifecycle(&store.clone().repository::<Ticket>()).await;
    let annotated: Repository<Ticket, _> = Repository::new(store.clone());
    lifecycle(&annotated).await;
    assert_eq!(store.len(), 6);
}

#[tokio::test]
async fn a_store_chosen_at_run_time() {
    for url in ["memory:", "sqlite::memory:"] {
        let store = AnyStore::connect(url).await.unwrap();
        lifecycle(&Ticket::repository(store.clone())).await;
        assert_eq!(store.count(ReadAll::from_start()).await.unwrap(), 2);
    }
    if databases::postgres().await.is_some() {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| databases::DEFAULT_DATABASE_URL.to_owned());
        let store = AnyStore::connect(&url).await.unwrap();
        assert_eq!(store.backend(), "postgres");
    }
    match AnyStore::connect("mysql://localhost/db").await {
        Err(Error::UnsupportedUrl { scheme }) => assert_eq!(scheme, "mysql"),
        other => panic!("expected UnsupportedUrl, got {other:?}"),
    }
}

/// A trait object store: what an application holding stores of its own mixes with ours.
#[tokio::test]
async fn a_store_behind_a_trait_object() {
    let stores: Vec<Arc<dyn DynEventStore>> = vec![
        Arc::new(InMemoryEventStore::new()),
        Arc::new(SqliteEventStore::in_memory().await.unwrap()),
    ];
    for store in stores {
        lifecycle(&Ticket::repository(store.clone())).await;
        let head = store.log_head().await.unwrap();
        assert!(head.last > Position::START);
        assert_eq!(store.count(ReadAll::from_start()).await.unwrap(), 2);
    }
}

#[tokio::test]
async fn metadata_given_once_for_every_attempt() {
    let store = InMemoryEventStore::new();
    let tickets = Ticket::repository(store.clone());
    let id = TicketId::new();
    let mut ticket = tickets.create(id);
    ticket.record(Opened { title: "t".into() });
    tickets.save(&mut ticket).await.unwrap();
    let correlation = Uuid::now_v7();
    let mut attempts = 0;
    tickets
        .update_with(
            id,
            Metadata::new()
                .with_actor("ops")
                .with_correlation_id(correlation),
            |t| {
                attempts += 1;
                if attempts == 1 {
                    // A rival write forces a second attempt.
                    let rival = NewEvent::new(&Opened { title: "x".into() }).unwrap();
                    futures::executor::block_on(store.append(
                        t.stream_id(),
                        ExpectedVersion::Any,
                        vec![rival],
                    ))
                    .unwrap();
                }
                t.record(Closed);
                Ok(())
            },
        )
        .await
        .unwrap();
    assert_eq!(attempts, 2);
    let events = store
        .read_stream(&tickets.stream_id(&id), StreamQuery::all())
        .await
        .unwrap();
    let closed = events.iter().find(|e| e.is::<Closed>()).unwrap();
    assert_eq!(closed.metadata.actor_id.as_deref(), Some("ops"));
    assert_eq!(closed.metadata.correlation_id, Some(correlation));
}

#[test]
fn a_domain_is_tested_without_a_store() {
    let ticket = Root::<Ticket>::new(TicketId::new()).given(Opened { title: "t".into() });
    assert_eq!((ticket.version(), ticket.committed_version()), (1, 1));
    assert!(!ticket.has_pending_events(), "history is not pending");
    let mut ticket = ticket;
    let event = ticket.close().unwrap();
    ticket.record(event);
    assert_eq!(ticket.recorded::<Closed>().collect::<Vec<_>>(), [&Closed]);
    assert_eq!(ticket.recorded::<Opened>().count(), 0);
    let closed = Root::<Ticket>::new(TicketId::new())
        .given(Opened { title: "t".into() })
        .given(Closed);
    assert_eq!(closed.close(), Err(TicketError::AlreadyClosed));
}

#[test]
fn ids_and_positions_are_their_own_types() {
    let id = TicketId::new();
    assert_eq!(id.stream_key(), id.uuid().hyphenated().to_string());
    assert_eq!(id.to_string().parse::<TicketId>().unwrap(), id);
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(serde_json::from_str::<TicketId>(&json).unwrap(), id);
    assert_eq!(Position::new(7).get(), 7);
    assert!(Position::START < Position::new(1));
    assert!(StreamId::new("Ticket", "").is_err());
    let stream = StreamId::new("Ticket", "t-1").unwrap();
    assert_eq!(
        (stream.aggregate_type(), stream.aggregate_id()),
        ("Ticket", "t-1")
    );
}

/// A database error carries our `DatabaseError`, with the database's code, not a sqlx type.
#[tokio::test]
async fn database_errors_are_ours() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("e.db"))
        .await
        .unwrap();
    sqlx::query("DROP TABLE events")
        .execute(store.writer_pool())
        .await
        .unwrap();
    let failed = store
        .append(
            &StreamId::new("Ticket", "t").unwrap(),
            ExpectedVersion::Any,
            vec![NewEvent::new(&Closed).unwrap()],
        )
        .await;
    match failed {
        Err(Error::Database { operation, source }) => {
            let source: &DatabaseError = &source;
            assert_eq!(operation, "append");
            assert_eq!(source.code(), Some("1"), "SQLITE_ERROR: {source}");
            assert!(source.to_string().contains("no such table"), "{source}");
        }
        other => panic!("expected a database error, got {other:?}"),
    }
}

/// A store of one's own that overrides a provided method: every way of holding it (a
/// reference, an `Arc`, a trait object) calls the override.
#[derive(Default)]
struct Counting {
    inner: InMemoryEventStore,
    exists_calls: std::sync::atomic::AtomicUsize,
}

impl EventStore for Counting {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> eventsource::Result<eventsource::AppendResult> {
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        query: StreamQuery,
    ) -> eventsource::Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream, query).await
    }

    fn read_all(
        &self,
        query: ReadAll,
    ) -> futures::stream::BoxStream<'_, eventsource::Result<RecordedEvent>> {
        self.inner.read_all(query)
    }

    async fn stream_version(&self, stream: &StreamId) -> eventsource::Result<u64> {
        self.inner.stream_version(stream).await
    }

    async fn log_head(&self) -> eventsource::Result<eventsource::LogHead> {
        self.inner.log_head().await
    }

    async fn stream_exists(&self, stream: &StreamId) -> eventsource::Result<bool> {
        self.exists_calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.stream_exists(stream).await
    }
}

#[tokio::test]
async fn overrides_survive_every_way_of_holding_a_store() {
    let store = Arc::new(Counting::default());
    let calls = || store.exists_calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        !Ticket::repository(&*store)
            .exists(TicketId::new())
            .await
            .unwrap()
    );
    assert!(
        !Ticket::repository(Arc::clone(&store))
            .exists(TicketId::new())
            .await
            .unwrap()
    );
    let object: Arc<dyn DynEventStore> = store.clone();
    assert!(
        !Ticket::repository(object)
            .exists(TicketId::new())
            .await
            .unwrap()
    );
    assert_eq!(calls(), 3, "each held form reached the override");
}

/// Snapshots in a store other than the events'.
#[tokio::test]
async fn snapshots_in_another_store() {
    #[derive(Default, Serialize, Deserialize)]
    struct Count {
        n: u64,
    }

    #[derive(DomainEvent, Serialize, Deserialize)]
    #[event(name = "api.Counted")]
    struct Counted;

    #[aggregate(name = "Count", snapshot_every = 3)]
    impl Count {
        #[handles]
        fn counted(&mut self, _: &Counted) {
            self.n += 1;
        }
    }

    let events = InMemoryEventStore::new();
    let snapshots = SqliteEventStore::in_memory().await.unwrap();
    let counts = Count::repository(events.clone()).with_snapshot_store(snapshots.clone());
    let id = Uuid::now_v7();
    let mut count = counts.create(id);
    for _ in 0..4 {
        count.record(Counted);
    }
    counts.save(&mut count).await.unwrap();
    let stream = counts.stream_id(&id);
    assert!(events.load_snapshot(&stream).await.unwrap().is_none());
    assert_eq!(
        snapshots
            .load_snapshot(&stream)
            .await
            .unwrap()
            .map(|s| s.version()),
        Some(4)
    );
    let loaded = counts.load(id).await.unwrap();
    assert_eq!((loaded.snapshot_version(), loaded.n), (Some(4), 4));
}
