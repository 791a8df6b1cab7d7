//! The repository's aggregate cache (`Repository::with_cache`): bounded, trusted optimistically,
//! and correct with other writers. Two repositories, each with its own cache, each over its own
//! connection to one database (two processes, as far as the database can tell), write the same
//! aggregates at once: every command is applied exactly once, whatever the caches held.

use eventsource::prelude::*;
use eventsource_tests::databases;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "cache.Opened")]
struct Opened {
    owner: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "cache.Deposited")]
struct Deposited {
    cents: i64,
}

#[derive(Default, Clone, Debug)]
struct Account {
    owner: String,
    balance: i64,
    deposits: u64,
}

#[aggregate(name = "CachedAccount", id = String)]
impl Account {
    #[handles]
    fn opened(&mut self, event: &Opened) {
        self.owner.clone_from(&event.owner);
    }

    #[handles]
    fn deposited(&mut self, event: &Deposited) {
        self.balance += event.cents;
        self.deposits += 1;
    }
}

const ACCOUNTS: usize = 4;
const TASKS_PER_REPOSITORY: usize = 3;
const DEPOSITS_PER_TASK: usize = 20;

fn account(i: usize) -> String {
    format!("acc-{i}")
}

/// A cached load is served from memory and can be behind another writer; the save catches it,
/// the copy is dropped and the command runs again on the fresh stream.
async fn a_stale_copy_is_caught_by_the_save<S: EventStore>(mine: S, theirs: S) {
    let cached = Account::repository(mine).with_cache(16);
    let other = Account::repository(theirs);
    let mut root = cached.create("ada");
    root.record(Opened {
        owner: "Ada".into(),
    });
    cached.save(&mut root).await.unwrap();
    assert_eq!(cached.cached(), 1, "a save fills the cache");

    // Another writer moves the stream on.
    other
        .update("ada", |root| {
            root.record(Deposited { cents: 5 });
            Ok::<_, std::convert::Infallible>(())
        })
        .await
        .unwrap();
    let stale = cached.load("ada").await.unwrap();
    assert_eq!(
        stale.version(),
        1,
        "the cached copy is what this repository saw"
    );
    assert_eq!(
        cached.load_uncached("ada").await.unwrap().version(),
        2,
        "load_uncached reads the store"
    );

    // Put the stale copy back, then run a command on it: the save conflicts, the copy is
    // dropped and the command runs again on the stream as it is.
    let mut stale = stale;
    stale.record(Deposited { cents: 1 });
    assert!(matches!(
        cached.save(&mut stale).await,
        Err(Error::Concurrency { .. })
    ));
    let mut runs = 0;
    cached
        .update("ada", |root| {
            runs += 1;
            root.record(Deposited { cents: 7 });
            Ok::<_, std::convert::Infallible>(())
        })
        .await
        .unwrap();
    assert_eq!(
        runs, 1,
        "the failed save dropped the copy: the command read the store"
    );
    let fresh = other.load("ada").await.unwrap();
    assert_eq!((fresh.version(), fresh.balance), (3, 12));
    assert_eq!(cached.load("ada").await.unwrap().version(), 3);

    // Behind again: `update` retries on its own.
    other
        .update("ada", |root| {
            root.record(Deposited { cents: 100 });
            Ok::<_, std::convert::Infallible>(())
        })
        .await
        .unwrap();
    let mut runs = 0;
    cached
        .update("ada", |root| {
            runs += 1;
            root.record(Deposited { cents: 1 });
            Ok::<_, std::convert::Infallible>(())
        })
        .await
        .unwrap();
    assert_eq!(runs, 2, "one run on the stale copy, one on the fresh load");
    let fresh = other.load("ada").await.unwrap();
    assert_eq!((fresh.version(), fresh.balance), (5, 113));
}

/// Two cached repositories over two connections to one database, several tasks each, all
/// depositing into the same few accounts: no deposit is lost or applied twice.
async fn two_cached_writers_lose_nothing<S: EventStore + Clone + 'static>(a: S, b: S) {
    let first = Account::repository(a.clone()).with_cache(ACCOUNTS);
    let second = Account::repository(b).with_cache(ACCOUNTS);
    for i in 0..ACCOUNTS {
        let mut root = first.create(account(i));
        root.record(Opened {
            owner: format!("owner {i}"),
        });
        first.save(&mut root).await.unwrap();
    }
    let mut tasks = Vec::new();
    for repo in [first.clone(), second.clone()] {
        for t in 0..TASKS_PER_REPOSITORY {
            let repo = repo.clone().with_max_attempts(1000);
            tasks.push(tokio::spawn(async move {
                for n in 0..DEPOSITS_PER_TASK {
                    repo.update(account((t + n) % ACCOUNTS), |root| {
                        root.record(Deposited { cents: 1 });
                        Ok::<_, std::convert::Infallible>(())
                    })
                    .await
                    .expect("every deposit is saved, after retries if need be");
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = 2 * TASKS_PER_REPOSITORY * DEPOSITS_PER_TASK;
    let uncached = Account::repository(a);
    let mut deposits = 0;
    for i in 0..ACCOUNTS {
        let root = uncached.load(account(i)).await.unwrap();
        assert_eq!(root.version(), 1 + root.deposits, "one event per version");
        assert_eq!(root.balance as u64, root.deposits);
        deposits += root.deposits;
    }
    assert_eq!(deposits as usize, total, "every deposit once");
    assert!(first.cached() <= ACCOUNTS && second.cached() <= ACCOUNTS);
}

#[tokio::test]
async fn the_cache_is_bounded_least_recently_used_first_out() {
    let store = InMemoryEventStore::new();
    let repo = Account::repository(store.clone()).with_cache(2);
    for i in 0..3 {
        let mut root = repo.create(account(i));
        root.record(Opened {
            owner: format!("owner {i}"),
        });
        repo.save(&mut root).await.unwrap();
    }
    assert_eq!(repo.cached(), 2);
    // acc-0 was evicted; loading it brings it back and evicts acc-1 (least recently used).
    repo.load(account(0)).await.unwrap();
    repo.load(account(2)).await.unwrap();
    assert_eq!(repo.cached(), 2);
    // A cached copy carries no pending events and no command metadata.
    let mut root = repo.load(account(2)).await.unwrap();
    root.set_metadata(eventsource::Metadata::new().with_actor("someone"));
    root.record(Deposited { cents: 1 });
    drop(root);
    let root = repo.load(account(2)).await.unwrap();
    assert!(!root.has_pending_events());
    assert!(root.metadata().is_empty());
    assert_eq!(root.version(), 1);
    let off = Account::repository(store).with_cache(0);
    off.load(account(0)).await.unwrap();
    assert_eq!(off.cached(), 0, "capacity 0 turns the cache off");
}

#[tokio::test]
async fn memory_stale_copy() {
    let store = InMemoryEventStore::new();
    a_stale_copy_is_caught_by_the_save(store.clone(), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_two_cached_writers() {
    let store = InMemoryEventStore::new();
    two_cached_writers_lose_nothing(store.clone(), store).await;
}

/// Two stores opened on one SQLite file: two connections' worth of everything.
async fn two_sqlite_stores() -> (tempfile::TempDir, SqliteEventStore, SqliteEventStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let a = SqliteEventStore::open(&path).await.unwrap();
    let b = SqliteEventStore::open(&path).await.unwrap();
    (dir, a, b)
}

#[tokio::test]
async fn sqlite_stale_copy() {
    let (_dir, a, b) = two_sqlite_stores().await;
    a_stale_copy_is_caught_by_the_save(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_cached_writers() {
    let (_dir, a, b) = two_sqlite_stores().await;
    two_cached_writers_lose_nothing(a, b).await;
}

async fn two_postgres_stores()
-> Option<(databases::PgSchema, PostgresEventStore, PostgresEventStore)> {
    let (options, schema) = databases::postgres_schema().await?;
    let a = PostgresEventStore::connect_with(options.clone())
        .await
        .unwrap();
    let b = PostgresEventStore::connect_with(options).await.unwrap();
    Some((schema, a, b))
}

#[tokio::test]
async fn postgres_stale_copy() {
    if let Some((_schema, a, b)) = two_postgres_stores().await {
        a_stale_copy_is_caught_by_the_save(a, b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_cached_writers() {
    if let Some((_schema, a, b)) = two_postgres_stores().await {
        two_cached_writers_lose_nothing(a, b).await;
    }
}
