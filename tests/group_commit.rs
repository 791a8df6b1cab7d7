//! Group commit (`with_group_commit` on the SQLite and PostgreSQL stores): many concurrent
//! appends, each stored exactly once, each version check its own; a conflict or a taken event id
//! fails that append alone; a committer that is gone leaves appends to go on alone; two grouped
//! stores on one database (two processes, as far as the database can tell) racing for one
//! stream. The whole
//! conformance suite also runs on grouped stores (`tests/conformance.rs`), and killed connections
//! under grouped saves in `tests/resilience.rs`.

use eventsource::prelude::*;
use eventsource::{ExpectedVersion, RecordedEvent, StreamId};
use eventsource::{NewEvent, ReadAll};
use eventsource_tests::databases;
use futures::TryStreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const WRITERS: usize = 64;
const APPENDS: u64 = 10;

fn event(n: u64) -> NewEvent {
    NewEvent::from_json("group.Ticked", 1, format!(r#"{{"n":{n}}}"#))
}

/// 64 writers appending one event at a time to their own streams, and to one stream they all
/// share with exact expected versions: every own append succeeds, and of the shared ones exactly
/// those the stream's version counts; nothing is stored twice, and the global order keeps each
/// stream's order.
async fn many_writers<S: EventStore + Clone + 'static>(store: S) -> Vec<RecordedEvent> {
    many_writers_across(&[store]).await
}

/// [`many_writers`] through several stores on one database, each with its own connections and
/// its own committer, as several processes would be: writer `w` uses store `w % n`. Their groups
/// race each other for the shared stream (a group whose statement loses its version check to
/// the other store's commit is appended again one by one).
async fn many_writers_across<S: EventStore + Clone + 'static>(stores: &[S]) -> Vec<RecordedEvent> {
    let store = stores[0].clone();
    let shared = StreamId::new("Shared", "one").unwrap();
    let won = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = stores[w % stores.len()].clone();
            let (shared, won) = (shared.clone(), Arc::clone(&won));
            tokio::spawn(async move {
                let own = StreamId::new("Writer", format!("w-{w}")).unwrap();
                for v in 0..APPENDS {
                    let done = store
                        .append(&own, ExpectedVersion::Exact(v), vec![event(v)])
                        .await
                        .unwrap_or_else(|e| panic!("writer {w}, append {v}: {e:?}"));
                    assert_eq!(done.stream_version, v + 1);
                    let seen = store.stream_version(&shared).await.unwrap();
                    match store
                        .append(&shared, ExpectedVersion::Exact(seen), vec![event(v)])
                        .await
                    {
                        Ok(done) => {
                            assert_eq!(done.stream_version, seen + 1);
                            won.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(Error::Concurrency { actual, .. }) => assert!(actual > seen),
                        Err(other) => panic!("a conflict or a success, not {other:?}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // read_all reads what is readable now; other sessions of the server (other tests) may hold
    // the horizon back for a moment: read our own writes as the README says, after wait_for.
    let head = store.log_head().await.unwrap();
    store
        .wait_for(head.last, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let all: Vec<RecordedEvent> = store
        .read_all(ReadAll::from_start())
        .try_collect()
        .await
        .unwrap();
    let shared_version = store.stream_version(&shared).await.unwrap();
    assert_eq!(shared_version as usize, won.load(Ordering::SeqCst));
    assert_eq!(
        all.len(),
        WRITERS * APPENDS as usize + shared_version as usize
    );
    let ids: HashSet<_> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), all.len(), "no event stored twice");
    let mut versions: HashMap<&StreamId, u64> = HashMap::new();
    for event in &all {
        let last = versions.entry(&event.stream).or_default();
        assert_eq!(
            event.version,
            *last + 1,
            "per-stream order in the global order"
        );
        *last = event.version;
    }
    all
}

/// A duplicate event id and a stale expected version in the middle of concurrent appends fail
/// those appends alone, with their own errors, and store nothing of them; a retried append whose
/// events are stored is recognised.
async fn failures_stay_alone<S: EventStore + Clone + 'static>(store: S) {
    let taken = event(0);
    let first = StreamId::new("Alone", "first").unwrap();
    store
        .append(&first, ExpectedVersion::NoStream, vec![taken.clone()])
        .await
        .unwrap();
    for round in 0..20 {
        let neighbours: Vec<_> = (0..8)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let own = StreamId::new("Neighbour", format!("r{round}-w{w}")).unwrap();
                    store
                        .append(&own, ExpectedVersion::NoStream, vec![event(w)])
                        .await
                        .unwrap()
                })
            })
            .collect();
        let duplicate = {
            let store = store.clone();
            let taken = taken.clone();
            tokio::spawn(async move {
                let other = StreamId::new("Alone", format!("dup-{round}")).unwrap();
                store
                    .append(&other, ExpectedVersion::NoStream, vec![taken])
                    .await
            })
        };
        let stale = {
            let store = store.clone();
            let first = first.clone();
            tokio::spawn(async move {
                store
                    .append(&first, ExpectedVersion::NoStream, vec![event(1)])
                    .await
            })
        };
        for neighbour in neighbours {
            neighbour.await.unwrap();
        }
        assert!(matches!(
            duplicate.await.unwrap(),
            Err(Error::DuplicateEvent { .. })
        ));
        assert!(matches!(
            stale.await.unwrap(),
            Err(Error::Concurrency { actual: 1, .. })
        ));
    }
    // The same append again (its answer lost, say): recognised, the same result.
    let again = store
        .append(&first, ExpectedVersion::NoStream, vec![taken])
        .await
        .unwrap();
    assert_eq!(again.stream_version, 1);
    assert_eq!(store.stream_version(&first).await.unwrap(), 1);
    let count = store.count(ReadAll::from_start()).await.unwrap();
    assert_eq!(count, 1 + 20 * 8, "nothing of the failed appends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_many_writers() {
    let db = databases::sqlite_grouped().await.unwrap();
    many_writers(db.store().clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_failures_stay_alone() {
    let db = databases::sqlite_grouped().await.unwrap();
    failures_stay_alone(db.store().clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_many_writers_share_transactions() {
    let Some(db) = databases::postgres_grouped().await else {
        return;
    };
    let all = many_writers(db.store().clone()).await;
    // A PostgreSQL position is the transaction id × 65,536 plus the row's index: events of
    // different streams with one transaction id were committed together.
    let mut streams_per_transaction: HashMap<u64, HashSet<&StreamId>> = HashMap::new();
    for event in &all {
        streams_per_transaction
            .entry(event.position.get() >> 16)
            .or_default()
            .insert(&event.stream);
    }
    assert!(
        streams_per_transaction
            .values()
            .any(|streams| streams.len() > 1),
        "64 concurrent writers were grouped at least once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failures_stay_alone() {
    let Some(db) = databases::postgres_grouped().await else {
        return;
    };
    failures_stay_alone(db.store().clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_processes_grouping_on_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let first = SqliteEventStore::open(&path)
        .await
        .unwrap()
        .with_group_commit();
    let second = SqliteEventStore::open(&path)
        .await
        .unwrap()
        .with_group_commit();
    many_writers_across(&[first, second]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_processes_grouping_on_one_database() {
    let Some((options, _schema)) = databases::postgres_schema().await else {
        return;
    };
    let first = PostgresEventStore::connect_with(options.clone())
        .await
        .unwrap()
        .with_group_commit();
    let second = PostgresEventStore::connect_with(options)
        .await
        .unwrap()
        .with_group_commit();
    many_writers_across(&[first, second]).await;
}

/// The committer is a task of the runtime the store was set up on: with that runtime gone,
/// appends from another runtime go on alone, each stored once.
#[test]
fn appends_go_on_alone_when_the_committer_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let first = tokio::runtime::Runtime::new().unwrap();
    let store = first
        .block_on(async {
            SqliteEventStore::open(&path)
                .await
                .map(|s| s.with_group_commit())
        })
        .unwrap();
    first.shutdown_background();
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let stream = StreamId::new("Orphan", "one").unwrap();
        for v in 0..5 {
            let done = store
                .append(&stream, ExpectedVersion::Exact(v), vec![event(v)])
                .await
                .unwrap();
            assert_eq!(done.stream_version, v + 1);
        }
        assert_eq!(store.count(ReadAll::from_start()).await.unwrap(), 5);
    });
}
