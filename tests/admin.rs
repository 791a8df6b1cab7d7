//! `eventsource::admin`: store inspection (streams, statistics, projections, schema state) on
//! every store, and `AnyStore::open_existing`, which creates nothing.

use eventsource::admin::{Inspect, SchemaState, StreamListing};
use eventsource::checkpoint::DeadLetter;
use eventsource::prelude::*;
use eventsource::{AnyStore, ExpectedVersion, Position, StreamId, StreamQuery};
use eventsource::{Metadata, NewEvent};
use eventsource_tests::databases;

macro_rules! every_backend {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    let Some(db) = databases::memory().await else { return };
                    super::$case(db.store(), false).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let Some(db) = databases::sqlite().await else { return };
                    super::$case(db.store(), true).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let Some(db) = databases::postgres().await else { return };
                    super::$case(db.store(), true).await;
                }
            }
        )*
    };
}

every_backend!(
    streams_are_listed,
    stats_count_events,
    projections_are_listed
);

fn stream(text: &str) -> StreamId {
    let (aggregate_type, id) = text.split_once('/').unwrap();
    StreamId::new(aggregate_type, id).unwrap()
}

/// `Order/o-1` (two events, tenant `acme`), `Order/o-2` (`globex`), `Customer/c-1`.
async fn seed<S: EventStore>(store: &S) -> Vec<Position> {
    let mut positions = Vec::new();
    for (name, events) in [
        (
            "Order/o-1",
            &[
                ("OrderPlaced", Some("acme")),
                ("OrderShipped", Some("acme")),
            ][..],
        ),
        ("Order/o-2", &[("OrderPlaced", Some("globex"))]),
        ("Customer/c-1", &[("CustomerRegistered", None)]),
    ] {
        let events = events
            .iter()
            .map(|(event_type, tenant)| {
                let event = NewEvent::from_json(*event_type, 1, "{}");
                match tenant {
                    Some(tenant) => event.with_metadata(Metadata::new().with_tenant(*tenant)),
                    None => event,
                }
            })
            .collect();
        let appended = store
            .append(&stream(name), ExpectedVersion::Any, events)
            .await
            .unwrap();
        store
            .wait_for(appended.last_position, std::time::Duration::from_secs(10))
            .await
            .unwrap();
        positions.push(appended.last_position);
    }
    positions
}

fn names(page: &[eventsource::admin::StreamSummary]) -> Vec<String> {
    page.iter().map(|s| s.stream.to_string()).collect()
}

async fn streams_are_listed<S: Inspect>(store: &S, _: bool) {
    assert_eq!(store.schema_state().await.unwrap(), SchemaState::Current);
    assert!(
        store
            .list_streams(&StreamListing::new())
            .await
            .unwrap()
            .is_empty()
    );
    let positions = seed(store).await;

    let all = store.list_streams(&StreamListing::new()).await.unwrap();
    assert_eq!(names(&all), ["Customer/c-1", "Order/o-1", "Order/o-2"]);
    let o1 = &all[1];
    assert_eq!(o1.version, 2);
    assert_eq!(o1.last_position, positions[0]);
    let events = store
        .read_stream(&o1.stream, StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(o1.last_event_at, events[1].occurred_at);

    let orders = StreamListing::new().aggregate_type("Order");
    assert_eq!(
        names(&store.list_streams(&orders).await.unwrap()),
        ["Order/o-1", "Order/o-2"]
    );
    let globex = StreamListing::new().tenant("globex");
    assert_eq!(
        names(&store.list_streams(&globex).await.unwrap()),
        ["Order/o-2"]
    );
    let nobody = StreamListing::new().tenant("nobody");
    assert!(store.list_streams(&nobody).await.unwrap().is_empty());

    // Pages of one, each after the last of the previous.
    let mut seen = Vec::new();
    let mut listing = StreamListing::new().limit(1);
    loop {
        let page = store.list_streams(&listing).await.unwrap();
        let Some(last) = page.last() else { break };
        assert_eq!(page.len(), 1);
        seen.push(last.stream.to_string());
        listing = listing.after(last.stream.clone());
    }
    assert_eq!(seen, names(&all));
}

async fn stats_count_events<S: Inspect>(store: &S, on_disk: bool) {
    let empty = store.stats().await.unwrap();
    assert_eq!((empty.events, empty.streams), (0, 0));
    seed(store).await;
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.events, stats.streams), (4, 3));
    let counts = |counts: &[eventsource::admin::NamedCount]| {
        counts
            .iter()
            .map(|c| (c.name.clone(), c.events))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        counts(&stats.by_event_type),
        [
            ("OrderPlaced".to_owned(), 2),
            ("CustomerRegistered".to_owned(), 1),
            ("OrderShipped".to_owned(), 1)
        ]
    );
    assert_eq!(
        counts(&stats.by_aggregate_type),
        [("Order".to_owned(), 3), ("Customer".to_owned(), 1)]
    );
    assert_eq!(stats.by_day.len(), 1);
    assert_eq!(stats.by_day[0].events, 4);
    // Seeded just now (yesterday, if the test ran across midnight UTC).
    let today = chrono::Utc::now().date_naive();
    assert!([today, today.pred_opt().unwrap()].contains(&stats.by_day[0].day));
    assert_eq!(stats.size_bytes.is_some_and(|size| size > 0), on_disk);
}

async fn projections_are_listed<S: Inspect>(store: &S, _: bool) {
    assert!(store.projections().await.unwrap().is_empty());
    let positions = seed(store).await;
    store
        .save_checkpoint("orders", None, positions[1])
        .await
        .unwrap();
    for (projection, position) in [("orders", positions[2]), ("mailer", positions[0])] {
        let letter = DeadLetter::new(projection, position, stream("Order/o-1"), "boom", 3);
        store.add_dead_letter(&letter).await.unwrap();
    }
    let letter = DeadLetter::new("mailer", positions[1], stream("Order/o-2"), "boom", 1);
    store.add_dead_letter(&letter).await.unwrap();

    let records = store.projections().await.unwrap();
    let summary: Vec<_> = records
        .iter()
        .map(|r| (r.name.as_str(), r.checkpoint, r.dead_letters))
        .collect();
    // `mailer` has dead letters but no checkpoint.
    assert_eq!(
        summary,
        [("mailer", None, 2), ("orders", Some(positions[1]), 1)]
    );
}

#[tokio::test]
async fn open_existing_creates_no_sqlite_file_and_no_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let url = format!("sqlite://{}", path.display());
    let missing = AnyStore::open_existing(&url).await.unwrap_err();
    assert!(
        matches!(&missing, Error::SchemaMissing { reason } if reason.contains("no database file")),
        "{missing}"
    );
    assert!(!path.exists());

    // A file without the schema (another program's database, say).
    std::fs::write(&path, b"").unwrap();
    let empty = AnyStore::open_existing(&url).await.unwrap_err();
    assert!(matches!(empty, Error::SchemaMissing { .. }), "{empty}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "the file was written to"
    );

    let store = SqliteEventStore::open(&path).await.unwrap();
    assert_eq!(store.schema_state().await.unwrap(), SchemaState::Current);
    // One migration forgotten: the schema is out of date.
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)",
    )
    .execute(store.writer_pool())
    .await
    .unwrap();
    assert_eq!(
        store.schema_state().await.unwrap(),
        SchemaState::Outdated { pending: 1 }
    );
    store.close().await;
    let outdated = AnyStore::open_existing(&url).await.unwrap_err();
    assert!(
        matches!(outdated, Error::SchemaMissing { .. }),
        "{outdated}"
    );

    SqliteEventStore::open(&path).await.unwrap().close().await;
    let store = AnyStore::open_existing(&url).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
}

#[tokio::test]
async fn open_existing_on_postgres_needs_the_schema() {
    let Some((options, schema)) = databases::postgres_schema().await else {
        return;
    };
    let missing = AnyStore::open_existing(&schema.url()).await.unwrap_err();
    assert!(matches!(missing, Error::SchemaMissing { .. }), "{missing}");
    let store = PostgresEventStore::connect_with(options).await.unwrap();
    assert_eq!(store.schema_state().await.unwrap(), SchemaState::Current);
    let opened = AnyStore::open_existing(&schema.url()).await.unwrap();
    assert_eq!(opened.schema_state().await.unwrap(), SchemaState::Current);
    assert_eq!(opened.backend(), "postgres");
}
