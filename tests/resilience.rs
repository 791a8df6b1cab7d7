//! Resilience to a failing database: the PostgreSQL store's connections are killed
//! (`pg_terminate_backend`) again and again while commands save and load and while projections
//! catch up. Every caller is answered, no event is lost and none is written twice.

use eventsource::prelude::*;
use eventsource::projection::PgTx;
use eventsource::subscription::{RunnerOptions, Subscriptions};
use eventsource::{CheckpointStore, EventContext, HandlerError, NewEvent, PostgresEventStore};
use eventsource::{ExpectedVersion, ReadAll, RecordedEvent, StreamId};
use eventsource_tests::databases;
use serde::{Deserialize, Serialize};
use sqlx::ConnectOptions;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[derive(DomainEvent, Serialize, Deserialize, Debug)]
#[event(name = "resilience.Incremented", aggregate = "Counter")]
struct Incremented {
    by: i64,
}

#[derive(Default, Debug)]
struct Counter {
    total: i64,
}

#[aggregate(name = "Counter", id = String)]
impl Counter {
    #[handles]
    fn incremented(&mut self, e: &Incremented) {
        self.total += e.by;
    }
}

/// Kills every backend of the store (found by its application name) every `every`, until
/// dropped; counts the kills.
struct Killer {
    stop: Arc<AtomicBool>,
    kills: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Killer {
    async fn start(
        options: sqlx::postgres::PgConnectOptions,
        victim: String,
        every: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let kills = Arc::new(AtomicU64::new(0));
        let mut conn = options
            .application_name("es-killer")
            .connect()
            .await
            .unwrap();
        let task = {
            let (stop, kills) = (Arc::clone(&stop), Arc::clone(&kills));
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let killed: Vec<bool> = sqlx::query_scalar(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = $1",
                    )
                    .bind(&victim)
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                    kills.fetch_add(
                        killed.iter().filter(|k| **k).count() as u64,
                        Ordering::SeqCst,
                    );
                    tokio::time::sleep(every).await;
                }
            })
        };
        Killer {
            stop,
            kills,
            task: Some(task),
        }
    }

    async fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        self.kills.load(Ordering::SeqCst)
    }
}

/// A store whose connections carry a name of their own, for the killer to find.
async fn victim_store() -> Option<(
    PostgresEventStore,
    sqlx::postgres::PgConnectOptions,
    String,
    databases::PgSchema,
)> {
    let (options, schema) = databases::postgres_schema().await?;
    let name = format!("es-victim-{}", Uuid::now_v7().simple());
    let store = PostgresEventStore::connect_with(options.clone().application_name(&name))
        .await
        .unwrap();
    Some((store, options, name, schema))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_and_loads_survive_killed_connections() {
    saves_and_loads_survive(false).await;
}

/// The same with group commit: a group whose statement dies with its connection wrote nothing,
/// and each of its appends goes on alone (where a lost answer is recognised as stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_saves_survive_killed_connections() {
    saves_and_loads_survive(true).await;
}

async fn saves_and_loads_survive(grouped: bool) {
    let Some((store, options, victim, _schema)) = victim_store().await else {
        return;
    };
    let store = if grouped {
        store.with_group_commit()
    } else {
        store
    };
    let killer = Killer::start(options, victim, Duration::from_millis(100)).await;
    let repo = Counter::repository(store.clone());
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let repo = repo.clone();
            tokio::spawn(async move {
                let id = format!("c-{w}");
                for n in 0..25 {
                    if n == 0 {
                        let mut counter = repo.create(id.clone());
                        counter.record(Incremented { by: 1 });
                        repo.save(&mut counter)
                            .await
                            .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
                    } else {
                        repo.update(id.clone(), |counter| {
                            counter.record(Incremented { by: 1 });
                            Ok(())
                        })
                        .await
                        .unwrap_or_else(|e| panic!("update {n} of {id}: {e:?}"));
                    }
                    let loaded = repo.load(id.clone()).await.expect("a load");
                    assert_eq!(loaded.total, n + 1, "every save is in, once");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let kills = killer.stop().await;
    assert!(kills > 0, "connections were killed");

    // Nothing lost, nothing twice.
    let head = store.log_head().await.unwrap();
    store
        .wait_for(head.last, Duration::from_secs(10))
        .await
        .unwrap();
    use futures::TryStreamExt;
    let all: Vec<RecordedEvent> = store
        .read_all(ReadAll::from_start())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 6 * 25);
    let ids: HashSet<_> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), all.len());
    for w in 0..6 {
        assert_eq!(repo.load(format!("c-{w}")).await.unwrap().version(), 25);
    }
}

/// After the server dropped every connection of a full pool, the pool's idle connections are
/// all dead; a read finds one, and the retry closes the rest instead of meeting one dead
/// connection per attempt (ten of them would outlast its ten attempts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_dropped_connections_is_swept() {
    let Some((store, options, victim, _schema)) = victim_store().await else {
        return;
    };
    let repo = Counter::repository(store.clone());
    let mut counter = repo.create("swept".to_owned());
    counter.record(Incremented { by: 1 });
    repo.save(&mut counter).await.unwrap();

    // Ten idle connections, the pool's limit, then all of them killed.
    let held: Vec<_> = futures::future::try_join_all((0..10).map(|_| store.pool().acquire()))
        .await
        .unwrap();
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.pool().num_idle(), 10);
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&victim)
    .fetch_all(&mut options.connect().await.unwrap())
    .await
    .unwrap();
    assert_eq!(killed.iter().filter(|k| **k).count(), 10);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let loaded = repo.load("swept".to_owned()).await.unwrap();
    assert_eq!(loaded.total, 1);
    assert!(
        store.pool().num_idle() <= 1,
        "the dead idle connections were closed"
    );
}

/// Counts the events it applied, in a table of the events' database, exactly once.
struct Applied;

#[projection(name = "resilience.applied")]
impl Applied {
    #[handles]
    async fn incremented(
        &mut self,
        e: &Incremented,
        ctx: &EventContext<'_>,
        tx: &mut PgTx,
    ) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO applied (event_id, by) VALUES ($1, $2)")
            .bind(ctx.event_id)
            .bind(e.by)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_batches_survive_killed_connections() {
    let Some((store, options, victim, _schema)) = victim_store().await else {
        return;
    };
    sqlx::query("CREATE TABLE applied (event_id UUID PRIMARY KEY, by BIGINT NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    for i in 0..400 {
        let stream = StreamId::new("Counter", format!("c-{}", i % 7)).unwrap();
        let event = NewEvent::new(&Incremented { by: 1 }).unwrap();
        store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
    }
    let head = store.log_head().await.unwrap().last;

    let killer = Killer::start(options, victim, Duration::from_millis(100)).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(
        RunnerOptions::default()
            .batch_size(25)
            .backoff(Duration::from_millis(5), Duration::from_millis(50)),
    );
    subscriptions.add_sql(Applied);
    let running = subscriptions.start();
    running
        .wait_until(head, Duration::from_secs(60))
        .await
        .unwrap();
    let kills = killer.stop().await;
    running.shutdown().await;
    assert!(kills > 0, "connections were killed");

    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM applied")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(applied, 400, "every event applied exactly once");
    assert!(
        store
            .dead_letters("resilience.applied")
            .await
            .unwrap()
            .is_empty(),
        "a dropped connection is not the event's fault: nothing dead-lettered"
    );
}

/// The PostgreSQL store applies a stream's rows as they arrive, so a connection killed part way
/// through a long stream fails that attempt after some events were applied: the repository
/// starts the load over, and every load returns the whole stream, never part of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_loads_survive_killed_connections() {
    let Some((store, options, victim, _schema)) = victim_store().await else {
        return;
    };
    let stream = StreamId::new("Counter", "long").unwrap();
    for batch in 0..20u64 {
        let events: Vec<NewEvent> = (0..1_000)
            .map(|_| NewEvent::new(&Incremented { by: 1 }).unwrap())
            .collect();
        store
            .append(&stream, ExpectedVersion::Exact(batch * 1_000), events)
            .await
            .unwrap();
    }
    let repo = Counter::repository(store.clone());
    let killer = Killer::start(options, victim, Duration::from_millis(100)).await;
    for _ in 0..40 {
        let loaded = repo.load("long".to_owned()).await.expect("a load");
        assert_eq!(loaded.version(), 20_000);
        assert_eq!(loaded.total, 20_000, "every event applied once");
    }
    let kills = killer.stop().await;
    assert!(kills > 0, "connections were killed");
}

/// The connections a store keeps for its next operation (README, Pool settings) die with the
/// rest. After the first attempt meets a dead one, the store gives back every connection it
/// kept, and the pool's test closes them: the retry does not meet the next dead kept one.
#[tokio::test]
async fn kept_connections_are_given_back_after_a_transient_error() {
    let Some((store, options, victim, _schema)) = victim_store().await else {
        return;
    };
    let repo = Counter::repository(store.clone());
    let mut counter = repo.create("kept".to_owned());
    counter.record(Incremented { by: 1 });
    repo.save(&mut counter).await.unwrap();
    // Ten loads at once leave five connections kept (half the pool), for 100 ms.
    let loads = futures::future::join_all((0..10).map(|_| repo.load("kept".to_owned()))).await;
    assert!(loads.iter().all(Result::is_ok));
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&victim)
    .fetch_all(&mut options.connect().await.unwrap())
    .await
    .unwrap();
    assert!(killed.iter().filter(|k| **k).count() >= 5);

    let logs = eventsource_tests::logs::capture();
    let loaded = repo.load("kept".to_owned()).await.unwrap();
    assert_eq!(loaded.total, 1);
    let retries = logs.lines_with("transient database error; trying again");
    assert_eq!(
        retries.len(),
        1,
        "one dead connection met, not one per kept one: {retries:?}"
    );
}
