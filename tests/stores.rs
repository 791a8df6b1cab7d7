//! How the SQL stores are opened, beyond what the conformance suite runs on: every constructor
//! the README names, the settings it promises (SQLite's WAL mode, durability across reopening),
//! and PostgreSQL's explicit migrations on a pool of the application's own.

use eventsource::prelude::*;
use eventsource::{NewEvent, Snapshot};
use eventsource_tests::databases;
use futures::TryStreamExt;
use sqlx::postgres::PgPoolOptions;

fn event(n: i64) -> NewEvent {
    NewEvent::from_json("stores.Counted", 1, format!(r#"{{"n": {n}}}"#))
}

fn stream(id: &str) -> StreamId {
    StreamId::new("Counter", id)
}

/// Appends two events, then reads them back through a stream read and a global read.
async fn round_trip<S: EventStore>(store: &S, id: &str) {
    let s = stream(id);
    store
        .append(&s, ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .unwrap();
    let read = store.read_stream(&s, StreamQuery::all()).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.payload.as_str()).collect::<Vec<_>>(),
        [r#"{"n": 1}"#, r#"{"n": 2}"#]
    );
    let all: Vec<_> = store
        .read_all(ReadAll::from_start())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.iter().filter(|e| e.stream == s).count(), 2);
    assert_eq!(store.stream_version(&s).await.unwrap(), 2);
}

#[tokio::test]
async fn sqlite_in_memory_is_one_database_shared_by_clones() {
    let store = SqliteEventStore::in_memory().await.unwrap();
    round_trip(&store, "a").await;
    // Reads and writes go through one connection: a clone sees what the original wrote.
    let clone = store.clone();
    assert_eq!(clone.stream_version(&stream("a")).await.unwrap(), 2);
    // Another in-memory store is another database.
    let other = SqliteEventStore::in_memory().await.unwrap();
    assert_eq!(other.stream_version(&stream("a")).await.unwrap(), 0);
}

#[tokio::test]
async fn sqlite_file_store_is_in_wal_mode_and_keeps_its_events_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let url = format!("sqlite://{}", path.display());
    {
        let store = SqliteEventStore::connect(&url).await.unwrap();
        assert!(path.exists(), "connect creates the file");
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        round_trip(&store, "kept").await;
        store
            .save_snapshot(&Snapshot {
                stream: stream("kept"),
                version: 2,
                state_version: 1,
                state: r#"{"total": 3}"#.into(),
                taken_at: chrono::Utc::now(),
            })
            .await
            .unwrap();
        store.close().await;
    }
    // Reopened: the events and the snapshot are there, and the migrations are not run twice.
    let store = SqliteEventStore::open(&path).await.unwrap();
    assert_eq!(store.stream_version(&stream("kept")).await.unwrap(), 2);
    let snapshot = store.load_snapshot(&stream("kept")).await.unwrap().unwrap();
    assert_eq!(
        (snapshot.version, snapshot.state.as_str()),
        (2, r#"{"total": 3}"#)
    );
    let conflict = store
        .append(&stream("kept"), ExpectedVersion::NoStream, vec![event(3)])
        .await;
    assert!(
        matches!(conflict, Err(Error::Concurrency { actual: 2, .. })),
        "{conflict:?}"
    );
}

#[tokio::test]
async fn sqlite_connect_refuses_a_url_that_is_not_sqlite() {
    let result = SqliteEventStore::connect("postgres://localhost/db").await;
    assert!(
        matches!(
            result,
            Err(Error::Database {
                operation: "connect",
                ..
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn postgres_from_pool_needs_migrate_and_migrate_is_repeatable() {
    let Some((options, _schema)) = databases::postgres_schema().await else {
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let store = PostgresEventStore::from_pool(pool);

    // Before the migrations there is no table: a typed error, not a panic.
    let early = store
        .append(&stream("p"), ExpectedVersion::NoStream, vec![event(1)])
        .await;
    assert!(
        matches!(
            early,
            Err(Error::Database {
                operation: "append",
                ..
            })
        ),
        "{early:?}"
    );

    // Concurrent and repeated runs are safe.
    let (a, b) = tokio::join!(store.migrate(), store.migrate());
    a.unwrap();
    b.unwrap();
    store.migrate().await.unwrap();
    round_trip(&store, "p").await;

    // The pool is the application's: its own queries see the same tables.
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(count, 2);
}

#[tokio::test]
async fn postgres_connect_takes_a_url_and_migrates() {
    let Some((options, _schema)) = databases::postgres_schema().await else {
        return;
    };
    // The URL form of the test schema's options: the schema travels as a search_path option.
    let schema: String = {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let base = databases::database_url();
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    let store = PostgresEventStore::connect(&url).await.unwrap();
    round_trip(&store, "u").await;
    let bad = PostgresEventStore::connect("not a url").await;
    assert!(
        matches!(
            bad,
            Err(Error::Database {
                operation: "connect",
                ..
            })
        ),
        "{bad:?}"
    );
}
