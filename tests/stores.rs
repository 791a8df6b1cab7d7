//! The SQL stores beyond what the conformance suite runs on: every constructor the README names,
//! the settings it promises (SQLite's WAL mode, durability across reopening), PostgreSQL's
//! explicit migrations on a pool of the application's own, and what each store does when its
//! database is damaged behind its back (a dropped table, a row written by hand).

use eventsource::prelude::*;
use eventsource::{ContextFields, NewEvent, Snapshot, SnapshotStrategy};
use eventsource::{
    ExpectedVersion, ReadAll, RecordedEvent, Repository, SnapshotStore, StreamId, StreamQuery,
};
use eventsource_tests::{databases, logs};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqlitePool;

#[derive(DomainEvent, Serialize, Deserialize, Debug)]
#[event(name = "stores.Counted")]
struct Counted {
    n: i64,
}

#[derive(Default, Debug, Serialize, Deserialize)]
struct Counter {
    total: i64,
}

#[aggregate(name = "Counter", id = String)]
impl Counter {
    #[handles]
    fn counted(&mut self, e: &Counted) {
        self.total += e.n;
    }
}

fn event(n: i64) -> NewEvent {
    NewEvent::from_json("stores.Counted", 1, format!(r#"{{"n": {n}}}"#))
}

fn stream(id: &str) -> StreamId {
    StreamId::new("Counter", id).expect("a valid stream id")
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
    let all = eventsource_tests::conformance::read_settled(store, ReadAll::from_start()).await;
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
            .save_snapshot(&Snapshot::new(
                stream("kept"),
                2,
                1,
                r#"{"total": 3}"#.into(),
            ))
            .await
            .unwrap();
        store.close().await;
    }
    // Reopened: the events and the snapshot are there, and the migrations are not run twice.
    let store = SqliteEventStore::open(&path).await.unwrap();
    assert_eq!(store.stream_version(&stream("kept")).await.unwrap(), 2);
    let snapshot = store.load_snapshot(&stream("kept")).await.unwrap().unwrap();
    assert_eq!(
        (snapshot.version(), snapshot.state()),
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

/// With its `snapshots` table gone, a store cannot write snapshots: the save that would take one
/// still succeeds, with a warning; an explicit `snapshot(id)` returns the database error.
async fn snapshot_failure_leaves_the_save_alone<S>(store: &S)
where
    S: EventStore + SnapshotStore + Clone + 'static,
{
    let repo = Repository::<Counter, _>::new(store.clone())
        .with_snapshots()
        .with_snapshot_strategy(SnapshotStrategy::every(1));
    let logs = logs::capture();
    let mut root = repo.create("no-table");
    root.record(Counted { n: 5 });
    repo.save(&mut root).await.unwrap();
    assert_eq!(store.stream_version(&stream("no-table")).await.unwrap(), 1);
    let warnings = logs.lines_with("snapshot not taken");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("WARN") && warnings[0].contains("Counter/no-table"));
    let loaded = repo.load("no-table").await.unwrap();
    assert_eq!((loaded.state().total, loaded.snapshot_version()), (5, None));
    let explicit = repo.snapshot("no-table").await;
    assert!(
        matches!(
            explicit,
            Err(Error::Database {
                operation: "save snapshot",
                ..
            })
        ),
        "{explicit:?}"
    );
}

/// A row whose schema version is out of range (-1 or 0, written by hand) is an
/// `Error::Corrupt` naming its stream on every read path (a global read stops there: it cannot
/// skip an event), and spoils no other stream's reads.
async fn corrupt_rows_are_typed_errors<S: EventStore>(store: &S) {
    let bad = stream("bad");
    let result = store.read_stream(&bad, StreamQuery::all()).await;
    assert!(
        matches!(&result, Err(Error::Corrupt { stream, .. }) if *stream == bad),
        "{result:?}"
    );
    let first = store.read_all(ReadAll::from_start()).next().await;
    assert!(
        matches!(&first, Some(Err(Error::Corrupt { stream, .. })) if *stream == bad),
        "{first:?}"
    );
    let loaded = Repository::<Counter, _>::new(store).load("bad").await;
    assert!(
        matches!(&loaded, Err(Error::Corrupt { stream, .. }) if *stream == bad),
        "{loaded:?}"
    );
    let good = stream("good");
    store
        .append(&good, ExpectedVersion::NoStream, vec![event(4)])
        .await
        .unwrap();
    assert_eq!(
        store
            .read_stream(&good, StreamQuery::all())
            .await
            .unwrap()
            .len(),
        1
    );
    let counter = Repository::<Counter, _>::new(store)
        .load("good")
        .await
        .unwrap();
    assert_eq!(counter.state().total, 4);
}

/// A read-write pool on the SQLite file of a store, for damaging it.
async fn sqlite_file_store() -> (tempfile::TempDir, SqliteEventStore, SqlitePool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteEventStore::open(&path).await.unwrap();
    let raw = SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    (dir, store, raw)
}

#[tokio::test]
async fn sqlite_snapshot_failure_leaves_the_save_alone() {
    let (_dir, store, raw) = sqlite_file_store().await;
    sqlx::query("DROP TABLE snapshots")
        .execute(&raw)
        .await
        .unwrap();
    snapshot_failure_leaves_the_save_alone(&store).await;
}

#[tokio::test]
async fn postgres_snapshot_failure_leaves_the_save_alone() {
    let Some(db) = databases::postgres().await else {
        return;
    };
    sqlx::query("DROP TABLE snapshots")
        .execute(db.store().pool())
        .await
        .unwrap();
    snapshot_failure_leaves_the_save_alone(db.store()).await;
}

#[tokio::test]
async fn sqlite_corrupt_rows_are_typed_errors() {
    let (_dir, store, raw) = sqlite_file_store().await;
    sqlx::query(
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
         schema_version, occurred_at, payload) \
         VALUES (?, 'Counter', 'bad', 1, 'stores.Counted', -1, 0, '{\"n\": 1}')",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(&raw)
    .await
    .unwrap();
    corrupt_rows_are_typed_errors(&store).await;
}

/// SQLite reads the rest of a long stream (after its first 64 rows) as one framed text
/// (lengths, then the texts): metadata and payloads holding the framing's own characters come
/// back as written, and a stream with a row whose payload is not UTF-8 is read row by row from
/// there, where that row is `Error::Corrupt`.
#[tokio::test]
async fn sqlite_streams_read_framed_and_row_by_row() {
    let (_dir, store, raw) = sqlite_file_store().await;
    let odd = stream("a:1,2");
    let metadata = Metadata::new().with_extra("note", serde_json::json!("3:4,-1:"));
    let mut events: Vec<NewEvent> = (1..=70).map(event).collect();
    events[66] = NewEvent::from_json("stores.Counted", 1, r#"{"n": 67, "s": "5,6:"}"#);
    events[67] = event(68).with_metadata(metadata);
    store
        .append(&odd, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let read = store.read_stream(&odd, StreamQuery::all()).await.unwrap();
    assert_eq!(read.len(), 70);
    assert_eq!(read[66].payload, r#"{"n": 67, "s": "5,6:"}"#);
    assert_eq!(
        read[67].metadata.extra.get("note"),
        Some(&serde_json::json!("3:4,-1:"))
    );
    assert!(read.iter().zip(1..).all(|(e, v)| e.version == v));
    let repo = Counter::repository(&store);
    assert_eq!(repo.load("a:1,2").await.unwrap().total, 70 * 71 / 2);
    let some = store
        .read_stream(&odd, StreamQuery::from_version(60).to_version(69))
        .await
        .unwrap();
    assert_eq!(some.len(), 10);

    store
        .append(
            &stream("bytes"),
            ExpectedVersion::NoStream,
            (1..=68).map(event).collect(),
        )
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
         schema_version, occurred_at, payload) \
         VALUES (?, 'Counter', 'bytes', 69, 'stores.Counted', 1, 0, CAST(x'ff' AS TEXT))",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(&raw)
    .await
    .unwrap();
    let loaded = repo.load("bytes").await;
    assert!(
        matches!(
            &loaded,
            Err(Error::Corrupt {
                version: Some(69),
                ..
            })
        ),
        "{loaded:?}"
    );
    let before = store
        .read_stream(&stream("bytes"), StreamQuery::all().to_version(68))
        .await
        .unwrap();
    assert_eq!(before.len(), 68);

    // The global log reads the same (framed pages, then row by row from the damaged row), in
    // one page or in pages of 50.
    for batch in [1_000, 50] {
        let items: Vec<Result<RecordedEvent, Error>> = store
            .read_all(ReadAll::from_start().batch_size(batch))
            .collect()
            .await;
        assert_eq!(items.len(), 139, "pages of {batch}");
        let good: Vec<&RecordedEvent> = items[..138].iter().map(|i| i.as_ref().unwrap()).collect();
        assert_eq!(good[66].payload, r#"{"n": 67, "s": "5,6:"}"#);
        assert_eq!(
            good[67].metadata.extra.get("note"),
            Some(&serde_json::json!("3:4,-1:"))
        );
        assert!(good[..70].iter().zip(&read).all(|(a, b)| *a == b));
        assert!(good[70..].iter().zip(&before).all(|(a, b)| *a == b));
        assert!(
            matches!(
                &items[138],
                Err(Error::Corrupt {
                    version: Some(69),
                    ..
                })
            ),
            "{:?}",
            items[138]
        );
    }

    // Longer than one framed text holds (10,000 rows after the first 64).
    let long = stream("long");
    for batch in 0..11 {
        let events = (1..=1_000).map(|n| event(batch * 1_000 + n)).collect();
        store
            .append(&long, ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    let read = store.read_stream(&long, StreamQuery::all()).await.unwrap();
    assert_eq!(read.len(), 11_000);
    assert!(read.iter().zip(1..).all(|(e, v)| e.version == v));
    assert_eq!(repo.load("long").await.unwrap().total, 11_000 * 11_001 / 2);
}

#[tokio::test]
async fn postgres_corrupt_rows_are_typed_errors() {
    let Some(db) = databases::postgres().await else {
        return;
    };
    sqlx::query(
        "INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, \
         event_type, schema_version, occurred_at, payload) \
         VALUES (1, $1, 'Counter', 'bad', 1, 'stores.Counted', 0, now(), '{\"n\": 1}')",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(db.store().pool())
    .await
    .unwrap();
    corrupt_rows_are_typed_errors(db.store()).await;
}

/// A damaged row among good ones (metadata that is JSON of the wrong shape, written by hand)
/// does not stop the global log: the events before it are delivered, then the row's error with
/// its position, stream, version and type, then the events after it; a reader resumes after the
/// position. Every read path of the damaged stream reports the same error.
async fn a_damaged_row_does_not_stop_the_log<S, F, Fut>(store: &S, damage: F)
where
    S: EventStore,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    store
        .append(
            &stream("before"),
            ExpectedVersion::NoStream,
            vec![event(1), event(2)],
        )
        .await
        .unwrap();
    damage().await;
    let after = store
        .append(
            &stream("after"),
            ExpectedVersion::NoStream,
            vec![event(3), event(4)],
        )
        .await
        .unwrap();
    store
        .wait_for(after.last_position, std::time::Duration::from_secs(30))
        .await
        .unwrap();

    let items: Vec<Result<RecordedEvent, Error>> =
        store.read_all(ReadAll::from_start()).collect().await;
    assert_eq!(items.len(), 5, "{items:?}");
    let damaged_at = match &items[2] {
        Err(Error::Corrupt {
            stream: at,
            position: Some(position),
            version: Some(1),
            event_type: Some(event_type),
            reason,
        }) => {
            assert_eq!(*at, stream("bad"));
            assert_eq!(event_type, "stores.Counted");
            assert!(reason.contains("metadata"), "{reason}");
            *position
        }
        other => panic!("expected the damaged row's error, got {other:?}"),
    };
    let message = items[2].as_ref().unwrap_err().to_string();
    assert!(
        message.contains("Counter/bad") && message.contains(&damaged_at.to_string()),
        "{message}"
    );
    let payloads: Vec<&str> = items
        .iter()
        .filter_map(|item| item.as_ref().ok())
        .map(|e| e.payload.as_str())
        .collect();
    assert_eq!(
        payloads,
        [r#"{"n": 1}"#, r#"{"n": 2}"#, r#"{"n": 3}"#, r#"{"n": 4}"#]
    );
    assert_eq!(items[2].as_ref().unwrap_err().position(), Some(damaged_at));

    // Resuming after the damaged row reads the rest; small pages page past it too.
    let rest: Vec<RecordedEvent> = store
        .read_all(ReadAll::after(damaged_at))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    let paged: Vec<Result<RecordedEvent, Error>> = store
        .read_all(ReadAll::from_start().batch_size(1))
        .collect()
        .await;
    assert_eq!(paged.len(), 5);

    // One rule on every read path.
    let read = store.read_stream(&stream("bad"), StreamQuery::all()).await;
    assert!(
        matches!(&read, Err(Error::Corrupt { position: Some(p), .. }) if *p == damaged_at),
        "{read:?}"
    );
    let loaded = Counter::repository(store).load("bad").await;
    assert!(
        matches!(&loaded, Err(Error::Corrupt { position: Some(p), version: Some(1), .. }) if *p == damaged_at),
        "{loaded:?}"
    );
    assert_eq!(
        Counter::repository(store)
            .load("after")
            .await
            .unwrap()
            .total,
        7
    );
}

#[tokio::test]
async fn sqlite_a_damaged_row_does_not_stop_the_log() {
    let (_dir, store, raw) = sqlite_file_store().await;
    a_damaged_row_does_not_stop_the_log(&store, || async {
        sqlx::query(
            "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
             schema_version, occurred_at, metadata, payload) \
             VALUES (?, 'Counter', 'bad', 1, 'stores.Counted', 1, 0, '[1,2]', '{\"n\": 9}')",
        )
        .bind(uuid::Uuid::now_v7())
        .execute(&raw)
        .await
        .unwrap();
    })
    .await;
}

#[tokio::test]
async fn postgres_a_damaged_row_does_not_stop_the_log() {
    let Some(db) = databases::postgres().await else {
        return;
    };
    let pool = db.store().pool().clone();
    a_damaged_row_does_not_stop_the_log(db.store(), || async move {
        sqlx::query(
            "INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, \
             event_type, schema_version, occurred_at, metadata, payload) \
             VALUES (pg_current_xact_id()::TEXT::BIGINT * 65536, $1, 'Counter', 'bad', 1, \
             'stores.Counted', 1, now(), '[1,2]', '{\"n\": 9}')",
        )
        .bind(uuid::Uuid::now_v7())
        .execute(&pool)
        .await
        .unwrap();
    })
    .await;
}

/// Versions 1, 2 and 4 stored (3 deleted behind the store's back): a stream read and a load
/// both report the gap, naming where it is.
async fn a_version_gap_is_reported_by_every_stream_read<S: EventStore>(
    store: &S,
    delete_version_3: impl std::future::Future<Output = ()>,
) {
    store
        .append(
            &stream("gappy"),
            ExpectedVersion::NoStream,
            vec![event(1), event(2), event(3), event(4)],
        )
        .await
        .unwrap();
    delete_version_3.await;
    let read = store
        .read_stream(&stream("gappy"), StreamQuery::all())
        .await;
    assert!(
        matches!(
            &read,
            Err(Error::Corrupt {
                version: Some(4),
                position: Some(_),
                ..
            })
        ),
        "{read:?}"
    );
    let loaded = Counter::repository(store).load("gappy").await;
    assert!(
        matches!(
            &loaded,
            Err(Error::Corrupt {
                version: Some(4),
                position: Some(_),
                ..
            })
        ),
        "{loaded:?}"
    );
    // The part before the gap reads fine.
    let head = store
        .read_stream(&stream("gappy"), StreamQuery::all().to_version(2))
        .await
        .unwrap();
    assert_eq!(head.len(), 2);
}

#[tokio::test]
async fn sqlite_a_version_gap_is_reported_by_every_stream_read() {
    let (_dir, store, raw) = sqlite_file_store().await;
    a_version_gap_is_reported_by_every_stream_read(&store, async {
        sqlx::query("DELETE FROM events WHERE aggregate_id = 'gappy' AND version = 3")
            .execute(&raw)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn postgres_a_version_gap_is_reported_by_every_stream_read() {
    let Some(db) = databases::postgres().await else {
        return;
    };
    let pool = db.store().pool().clone();
    a_version_gap_is_reported_by_every_stream_read(db.store(), async move {
        sqlx::query("DELETE FROM events WHERE aggregate_id = 'gappy' AND version = 3")
            .execute(&pool)
            .await
            .unwrap();
    })
    .await;
}

/// SQLite's tables are STRICT, with metadata checked as JSON: the damage that used to be
/// possible by hand (a version stored as text, a BLOB payload, metadata that is not JSON) is
/// refused by the database itself.
#[tokio::test]
async fn sqlite_refuses_rows_of_the_wrong_type() {
    let (_dir, store, raw) = sqlite_file_store().await;
    for (version, metadata, payload) in [
        ("'three'", "NULL", "'{}'"),
        ("1", "NULL", "X'00FF'"),
        ("1", "'not json'", "'{}'"),
    ] {
        let insert = sqlx::query(&format!(
            "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
             schema_version, occurred_at, metadata, payload) \
             VALUES (?, 'Counter', 'typed', {version}, 'stores.Counted', 1, 0, {metadata}, \
             {payload})"
        ))
        .bind(uuid::Uuid::now_v7())
        .execute(&raw)
        .await;
        assert!(insert.is_err(), "{version} {metadata} {payload} was stored");
    }
    assert_eq!(store.stream_version(&stream("typed")).await.unwrap(), 0);
}

/// Two stores opening the same new SQLite file at the same moment both succeed (they race to
/// switch it to WAL mode and to create the schema).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_stores_can_create_one_file_at_once() {
    for trial in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let (a, b) = tokio::join!(SqliteEventStore::open(&path), SqliteEventStore::open(&path));
        let (a, b) = (
            a.unwrap(),
            b.unwrap_or_else(|e| panic!("trial {trial}: {e}")),
        );
        a.append(&stream("x"), ExpectedVersion::NoStream, vec![event(1)])
            .await
            .unwrap();
        assert_eq!(b.stream_version(&stream("x")).await.unwrap(), 1);
        a.close().await;
        b.close().await;
    }
}

/// When `close()` returns, the database file is released: another connection can take the
/// write lock at once, and the write-ahead log has been checkpointed away.
#[tokio::test]
async fn sqlite_close_releases_the_file() {
    use sqlx::ConnectOptions;
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = SqliteEventStore::open(&path).await.unwrap();
        let events: Vec<NewEvent> = (0..500).map(event).collect();
        store
            .append(&stream("c"), ExpectedVersion::NoStream, events)
            .await
            .unwrap();
        store.close().await;
        let wal = std::fs::metadata(dir.path().join("events.db-wal")).map_or(0, |m| m.len());
        assert_eq!(
            wal, 0,
            "the write-ahead log is checkpointed into the database"
        );
        let mut other = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(std::time::Duration::ZERO)
            .connect()
            .await
            .unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut other)
            .await
            .expect("the file is not locked after close");
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    }
}

/// Waits (at most two seconds) until every connection of `pool` is idle in it; whether they
/// all were.
async fn all_idle<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> bool {
    for _ in 0..200 {
        if pool.num_idle() as u32 == pool.size() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// Saves and loads a counter `n` times, one operation after another.
async fn commands<S: EventStore + Clone>(store: &S, id: &str, n: i64) {
    let repo = Counter::repository(store.clone());
    for i in 0..n {
        let mut counter = if i == 0 {
            repo.create(id.to_owned())
        } else {
            repo.load(id.to_owned()).await.unwrap()
        };
        counter.record(Counted { n: 1 });
        repo.save(&mut counter).await.unwrap();
    }
    assert_eq!(repo.load(id.to_owned()).await.unwrap().state().total, n);
}

/// A store keeps the connection of a finished operation for its next one (README,
/// Performance), but only for moments: soon after the last operation every connection is idle
/// in the pool again, and closing the pool right after an operation does not wait on the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kept_connections_go_back_to_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.db"))
        .await
        .unwrap();
    commands(&store, "kept", 20).await;
    assert!(all_idle(store.pool()).await, "a reader stayed checked out");
    commands(&store, "closed", 3).await;
    tokio::time::timeout(std::time::Duration::from_secs(2), store.pool().close())
        .await
        .expect("closing the pool does not wait for a kept connection");
    let reopened = SqliteEventStore::open(dir.path().join("events.db"))
        .await
        .unwrap();
    commands(&reopened, "after", 2).await;
    tokio::time::timeout(std::time::Duration::from_secs(2), reopened.close())
        .await
        .expect("closing the store does not wait for a kept connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kept_connections_go_back_to_the_pool() {
    let Some(db) = databases::postgres().await else {
        return;
    };
    let store = db.store();
    commands(store, "kept", 20).await;
    assert!(
        all_idle(store.pool()).await,
        "a connection stayed checked out"
    );
    // Ten operations at once: each takes a kept connection or one of the pool's.
    let ids: Vec<String> = (0..10).map(|i| format!("wide-{i}")).collect();
    futures::future::join_all(ids.iter().map(|id| commands(store, id, 3))).await;
    assert!(
        all_idle(store.pool()).await,
        "a connection stayed checked out"
    );
    commands(store, "closed", 3).await;
    tokio::time::timeout(std::time::Duration::from_secs(2), store.pool().close())
        .await
        .expect("closing the pool does not wait for a kept connection");
}

/// An older SQLite file holding a row the STRICT tables refuse (a version stored as text) fails
/// to open with `Error::Migration`, and the file is left as it was.
#[tokio::test]
async fn sqlite_an_old_file_with_a_bad_row_fails_the_strict_migration_whole() {
    let (dir, store, raw) = sqlite_file_store().await;
    store.close().await;
    // Back to the schema before the STRICT migration, with a row it cannot copy.
    for statement in [
        "DROP TABLE events",
        "CREATE TABLE events (position INTEGER PRIMARY KEY, event_id BLOB NOT NULL, \
         aggregate_type TEXT NOT NULL, aggregate_id TEXT NOT NULL, version INTEGER NOT NULL, \
         event_type TEXT NOT NULL, schema_version INTEGER NOT NULL, occurred_at INTEGER NOT NULL, \
         tenant_id TEXT, actor_id TEXT, correlation_id BLOB, causation_id BLOB, metadata TEXT, \
         payload TEXT NOT NULL)",
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
         schema_version, occurred_at, payload) VALUES (x'00', 'Counter', 'old', 'three', \
         'stores.Counted', 1, 0, '{\"n\": 1}')",
        "DELETE FROM _sqlx_migrations WHERE version = 20261125000001",
    ] {
        sqlx::query(statement).execute(&raw).await.unwrap();
    }
    raw.close().await;
    let reopened = SqliteEventStore::open(dir.path().join("events.db")).await;
    assert!(matches!(reopened, Err(Error::Migration(_))), "{reopened:?}");
    let raw = SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("events.db").display()
    ))
    .await
    .unwrap();
    let kept: String = sqlx::query_scalar("SELECT version FROM events WHERE aggregate_id = 'old'")
        .fetch_one(&raw)
        .await
        .unwrap();
    assert_eq!(kept, "three", "the failed migration changed nothing");
}

/// A transaction left open elsewhere: `read_all` answers at once with what is readable (the
/// events after that transaction's start held back, never skipped), `log_head` reports them
/// held back, and `wait_for` times out, until the transaction ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_long_transaction_holds_reads_back_without_blocking_them() {
    use std::time::{Duration, Instant};
    let Some(db) = databases::postgres().await else {
        return;
    };
    let store = db.store();
    let before = store
        .append(&stream("before"), ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    store
        .wait_for(before.last_position, Duration::from_secs(30))
        .await
        .unwrap();
    // Another session takes a transaction id and keeps its transaction open.
    let mut long = store.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *long)
        .await
        .unwrap();
    let after = store
        .append(&stream("after"), ExpectedVersion::NoStream, vec![event(2)])
        .await
        .unwrap();

    let started = Instant::now();
    let read: Vec<RecordedEvent> = store
        .read_all(ReadAll::from_start())
        .try_collect()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "read_all did not wait"
    );
    assert!(read.iter().any(|e| e.position == before.last_position));
    assert!(
        read.iter().all(|e| e.position != after.last_position),
        "the event after the open transaction's start is held back"
    );
    let head = store.log_head().await.unwrap();
    assert_eq!(head.last, after.last_position);
    assert!(head.readable < after.last_position, "{head:?}");
    assert!(head.held_back >= 1, "{head:?}");
    let waited = store
        .wait_for(after.last_position, Duration::from_millis(300))
        .await;
    assert!(matches!(waited, Err(Error::Timeout { .. })), "{waited:?}");

    long.rollback().await.unwrap();
    store
        .wait_for(after.last_position, Duration::from_secs(30))
        .await
        .unwrap();
    let read: Vec<RecordedEvent> = store
        .read_all(ReadAll::from_start())
        .try_collect()
        .await
        .unwrap();
    assert!(read.iter().any(|e| e.position == after.last_position));
}

/// What each read path says of stream `Counter/{id}`, whose row at `version` was damaged by
/// hand: `Ok(reason)` for an `Error::Corrupt` at that row, `Err(what happened instead)`.
async fn every_read_path<S: EventStore>(
    store: &S,
    id: &str,
    version: u64,
) -> Vec<(&'static str, Result<String, String>)> {
    let s = stream(id);
    let corrupt = |error: &Error| match error {
        Error::Corrupt {
            stream: at,
            position: Some(_),
            version: Some(v),
            reason,
            ..
        } if *at == s && *v == version => Ok(reason.clone()),
        other => Err(format!("{other:?}")),
    };
    let of = |result: Result<(), Error>| match result {
        Ok(()) => Err("accepted".to_owned()),
        Err(error) => corrupt(&error),
    };
    let mut paths = Vec::new();
    let repo = Counter::repository(store);
    paths.push(("load", of(repo.load(id).await.map(drop))));
    let update = repo
        .update(id, |counter| {
            counter.record(Counted { n: 1 });
            Ok(())
        })
        .await;
    paths.push((
        "update",
        match update {
            Ok(_) => Err("saved".to_owned()),
            Err(UpdateError::Store(error)) => corrupt(&error),
            Err(other) => Err(format!("{other:?}")),
        },
    ));
    for (path, query) in [
        ("read_stream", StreamQuery::all()),
        ("read_stream backwards", StreamQuery::all().backwards()),
    ] {
        paths.push((path, of(store.read_stream(&s, query).await.map(drop))));
    }
    let all: Vec<Result<RecordedEvent, Error>> =
        store.read_all(ReadAll::from_start()).collect().await;
    let mut read_all = Err("not read".to_owned());
    for item in &all {
        match item {
            Err(error) => read_all = corrupt(error),
            Ok(event) if event.stream == s && event.version == version => {
                read_all = Err("accepted".to_owned())
            }
            Ok(_) => continue,
        }
        break;
    }
    paths.push(("read_all", read_all));
    for (path, context) in [
        ("fold_all", ContextFields::All),
        ("fold_all (location)", ContextFields::Location),
    ] {
        let mut found = Err("not read".to_owned());
        let query = ReadAll::from_start().context(context);
        store
            .fold_all(&query, |item| {
                match item {
                    Err(error) => found = corrupt(error),
                    Ok((event, _)) if *event.stream == s && event.version == version => {
                        found = Err("accepted".to_owned())
                    }
                    Ok(_) => return std::ops::ControlFlow::Continue(()),
                }
                std::ops::ControlFlow::Break(())
            })
            .await
            .unwrap();
        paths.push((path, found));
    }
    paths
}

/// Stores `events` events in `Counter/{id}`, damages the row at `version` with `damage` (given
/// the `WHERE` clause of that row) and returns the read paths that do not report that row as
/// `Error::Corrupt` naming `column` (a save on top of it must fail the same way).
async fn damaged_everywhere<S, F, Fut>(
    store: &S,
    id: &str,
    (events, version): (i64, u64),
    column: &str,
    damage: F,
) -> Vec<String>
where
    S: EventStore,
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let appended = store
        .append(
            &stream(id),
            ExpectedVersion::NoStream,
            (1..=events).map(event).collect(),
        )
        .await
        .unwrap();
    store
        .wait_for(appended.last_position, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    damage(format!(
        "WHERE aggregate_type = 'Counter' AND aggregate_id = '{id}' AND version = {version}"
    ))
    .await;
    let paths = every_read_path(store, id, version).await;
    let mut wrong: Vec<String> = paths
        .into_iter()
        .filter(|(_, said)| !said.as_ref().is_ok_and(|reason| reason.contains(column)))
        .map(|(path, said)| format!("{id} at version {version}, {path}: {said:?}"))
        .collect();
    let now = store.stream_version(&stream(id)).await.unwrap();
    if now != events as u64 {
        wrong.push(format!(
            "{id}: saved on top of the damaged row (version {now})"
        ));
    }
    wrong
}

/// The damages of one column every SQLite read path must report, each as (what the test calls
/// the stream, the column, the `SET` clause).
const SQLITE_DAMAGES: &[(&str, &str, &str)] = &[
    ("null-metadata", "metadata", "metadata = 'null'"),
    ("late", "occurred_at", "occurred_at = 9223372036854775807"),
    ("early", "occurred_at", "occurred_at = -9223372036854775808"),
    (
        "short-correlation",
        "correlation_id",
        "correlation_id = X'0102'",
    ),
    (
        "long-causation",
        "causation_id",
        "causation_id = zeroblob(17)",
    ),
];

/// Metadata stored as JSON `null`, a time out of range, a correlation or causation id that is
/// not 16 bytes: one rule on every SQLite read path (a load reads its rows row by row, then
/// framed, so the damage is tried at version 1 and at version 70 of a 70-event stream).
#[tokio::test]
async fn sqlite_a_damaged_column_is_corrupt_on_every_read_path() {
    let mut wrong = Vec::new();
    for at in [(1, 1), (70, 70)] {
        for (name, column, set) in SQLITE_DAMAGES {
            let (_dir, store, raw) = sqlite_file_store().await;
            wrong.extend(
                damaged_everywhere(&store, name, at, column, |filter| async move {
                    sqlx::query(&format!("UPDATE events SET {set} {filter}"))
                        .execute(&raw)
                        .await
                        .unwrap();
                })
                .await,
            );
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The same on PostgreSQL, whose typed columns leave fewer ways to damage a row: metadata stored
/// as JSON `null`, and times PostgreSQL stores but Rust cannot hold.
#[tokio::test]
async fn postgres_a_damaged_column_is_corrupt_on_every_read_path() {
    let mut wrong = Vec::new();
    for at in [(1, 1), (70, 70)] {
        for (name, column, set) in [
            ("null-metadata", "metadata", "metadata = 'null'::jsonb"),
            ("late", "occurred_at", "occurred_at = 'infinity'"),
            ("early", "occurred_at", "occurred_at = '-infinity'"),
            ("far", "occurred_at", "occurred_at = '294000-01-01'"),
        ] {
            let Some(db) = databases::postgres().await else {
                return;
            };
            let pool = db.store().pool().clone();
            wrong.extend(
                damaged_everywhere(db.store(), name, at, column, |filter| async move {
                    sqlx::query(&format!("UPDATE events SET {set} {filter}"))
                        .execute(&pool)
                        .await
                        .unwrap();
                })
                .await,
            );
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
