//! The subscription manager on every backend: catch-up then live with writers running, crash
//! and restart, retries, dead letters and their replay, rebuilds, and (PostgreSQL) takeover
//! between two managers. The projections are written by hand here, so that these tests check the
//! runner alone; `tests/projection_dispatch.rs` checks what `#[projection]` generates.

use eventsource::checkpoint::TransactionalStore;
use eventsource::prelude::*;
use eventsource::projection::{HandlerError, Transaction};
use eventsource::subscription::{
    OnFailure, RunnerOptions, RunnerState, RunningSubscriptions, Subscriptions,
};
use eventsource::{CheckpointStore, EventView, NewEvent};
use eventsource::{
    EventLocation, ExpectedVersion, Position, Projection, ReadAll, RecordedEvent, SqlProjection,
    StreamId,
};
use eventsource_tests::databases;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[derive(DomainEvent, Serialize, Deserialize, Debug)]
#[event(name = "proj.Deposited")]
struct Deposited {
    cents: i64,
}

const WAIT: Duration = Duration::from_secs(30);

fn deposit(cents: i64) -> NewEvent {
    NewEvent::new(&Deposited { cents }).unwrap()
}

fn account(n: usize) -> StreamId {
    StreamId::new("Account", format!("a{n}")).unwrap()
}

fn fast() -> RunnerOptions {
    RunnerOptions::default()
        .batch_size(7)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .poll_interval(Duration::from_millis(200))
        .lease_retry(Duration::from_millis(100))
}

/// Balances per account, in memory. `fail_on` makes the handler fail for a deposit of that many
/// cents (`failures` times, or always when `None`).
#[derive(Default)]
struct Balances {
    by_account: BTreeMap<String, i64>,
    applied: u64,
    fail_on: Option<(i64, Option<u32>)>,
    failed: Arc<AtomicU32>,
}

impl Projection for Balances {
    const NAME: &'static str = "balances";

    fn event_types() -> Vec<&'static str> {
        vec!["proj.Deposited"]
    }

    fn handle(
        &mut self,
        event: EventView<'_>,
        context: &EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let deposited: Deposited = event.decode()?;
        if let Some((cents, times)) = self.fail_on
            && cents == deposited.cents
            && times.is_none_or(|times| self.failed.load(Ordering::SeqCst) < times)
        {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(format!("cannot apply a deposit of {cents}").into());
        }
        *self
            .by_account
            .entry(context.aggregate_id().to_owned())
            .or_default() += deposited.cents;
        self.applied += 1;
        Ok(())
    }

    fn reset(&mut self) {
        self.by_account.clear();
        self.applied = 0;
    }
}

/// The fold of the whole log: what every read model must equal at the end.
async fn expected_balances<S: EventStore>(store: &S) -> BTreeMap<String, i64> {
    let mut balances = BTreeMap::new();
    for event in eventsource_tests::conformance::read_settled(store, ReadAll::from_start()).await {
        if event.is::<Deposited>() {
            *balances.entry(event.aggregate_id().to_owned()).or_default() +=
                event.decode::<Deposited>().unwrap().cents;
        }
    }
    balances
}

/// Appends `count` deposits spread over 5 accounts; returns the last position.
async fn write<S: EventStore>(store: &S, from: usize, count: usize) -> Position {
    let mut last = Position::START;
    for i in from..from + count {
        let result = store
            .append(
                &account(i % 5),
                ExpectedVersion::Any,
                vec![deposit(i as i64 + 1)],
            )
            .await
            .unwrap();
        last = result.last_position;
    }
    last
}

/// Waits (up to a few seconds) for a projection caught up with the head to say it is live: the
/// runner probes the head once more after its last full page before it calls itself live.
async fn becomes_live(state: impl Fn() -> RunnerState) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while state() != RunnerState::Live {
        assert!(
            std::time::Instant::now() < deadline,
            "still {:?}, not live",
            state()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn caught_up<S: EventStore>(running: &RunningSubscriptions, store: &S) {
    let head = store.log_head().await.unwrap();
    store.wait_for(head.last, WAIT).await.unwrap();
    running.wait_until(head.last, WAIT).await.unwrap();
}

/// Catch-up from the stored events, then live while writers keep appending: the read model
/// equals the fold of the whole log, with no event missed or applied twice at the switch.
async fn catch_up_then_live<S>(store: &S)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    write(store, 0, 40).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let balances = subscriptions.add(Balances::default());
    let running = subscriptions.start();
    let lag = running.lag("balances").await.unwrap();
    assert!(lag <= 40, "{lag}");
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move { write(&store, 1000 * (w + 1), 30).await })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    caught_up(&running, store).await;
    let expected = expected_balances(store).await;
    assert_eq!(balances.read().by_account, expected);
    assert_eq!(balances.read().applied, 130, "each event applied once");
    assert_eq!(running.lag("balances").await.unwrap(), 0);
    becomes_live(|| balances.status().state).await;
    running.shutdown().await;
    assert_eq!(balances.status().state, RunnerState::Stopped);
}

/// A handler that fails twice on an event, then succeeds: retried with backoff, applied once,
/// nothing dead-lettered.
async fn retries_then_succeeds<S>(store: &S)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    write(store, 0, 10).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast().max_attempts(3));
    let failed = Arc::new(AtomicU32::new(0));
    let balances = subscriptions.add_durable(Balances {
        fail_on: Some((4, Some(2))),
        failed: Arc::clone(&failed),
        ..Balances::default()
    });
    let running = subscriptions.start();
    caught_up(&running, store).await;
    assert_eq!(failed.load(Ordering::SeqCst), 2);
    assert_eq!(balances.read().applied, 10);
    let expected = expected_balances(store).await;
    assert_eq!(balances.read().by_account, expected);
    assert!(store.dead_letters("balances").await.unwrap().is_empty());
    running.shutdown().await;
    let checkpoint = store.checkpoint("balances").await.unwrap();
    assert_eq!(checkpoint, balances.status().checkpoint);
    assert!(checkpoint.is_some());
}

/// A poison event goes to the dead-letter table while the events after it still apply; once
/// the cause is gone, replaying the dead letters applies it and empties the table. With
/// `OnFailure::Stop`, the projection stops before it instead.
async fn poison_event_is_dead_lettered<S>(store: &S)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    write(store, 0, 10).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast().max_attempts(2));
    let failed = Arc::new(AtomicU32::new(0));
    let balances = subscriptions.add_durable(Balances {
        fail_on: Some((5, Some(2))),
        failed: Arc::clone(&failed),
        ..Balances::default()
    });
    let running = subscriptions.start();
    caught_up(&running, store).await;
    assert_eq!(balances.read().applied, 9, "every event but the poison one");
    let letters = store.dead_letters("balances").await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].attempts, 2);
    assert_eq!(letters[0].event_type.as_deref(), Some("proj.Deposited"));
    assert!(
        letters[0].error.contains("deposit of 5"),
        "{}",
        letters[0].error
    );
    assert_eq!(letters[0].stream, account(4));
    // Later events are still applied live.
    write(store, 10, 3).await;
    caught_up(&running, store).await;
    assert_eq!(balances.read().applied, 12);
    // The handler works now (it failed twice): the replay applies the event and clears it.
    assert_eq!(running.replay_dead_letters("balances").await.unwrap(), 0);
    assert!(store.dead_letters("balances").await.unwrap().is_empty());
    assert_eq!(balances.read().applied, 13);
    let expected = expected_balances(store).await;
    assert_eq!(balances.read().by_account, expected);
    running.shutdown().await;

    // The same poison with OnFailure::Stop: the projection fails at it.
    let mut subscriptions = Subscriptions::new(store.clone())
        .with_options(fast().max_attempts(1).on_failure(OnFailure::Stop));
    let stopping = subscriptions.add(Balances {
        fail_on: Some((7, None)),
        ..Balances::default()
    });
    let running = subscriptions.start();
    let _ = running
        .wait_until(Position::new(u64::MAX), Duration::from_secs(10))
        .await;
    match stopping.status().state {
        RunnerState::Failed(reason) => assert!(reason.contains("deposit of 7"), "{reason}"),
        other => panic!("expected the projection to fail, got {other:?}"),
    }
    assert_eq!(
        stopping.read().applied,
        6,
        "stopped before the poison event"
    );
    running.shutdown().await;
}

/// A rebuild resets the model and the checkpoint and ends equal to the original.
async fn rebuild_equals_original<S>(store: &S)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    write(store, 0, 25).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let balances = subscriptions.add_durable(Balances::default());
    let running = subscriptions.start();
    caught_up(&running, store).await;
    let before = balances.read().by_account.clone();
    running.rebuild("balances").await.unwrap();
    assert_eq!(balances.read().by_account, before);
    assert_eq!(balances.read().applied, 25, "rebuilt from zero, not on top");
    assert!(matches!(
        running.rebuild("nope").await,
        Err(Error::UnknownProjection { .. })
    ));
    running.shutdown().await;
}

/// A durable projection resumes from its checkpoint after a restart.
async fn restart_resumes_from_the_checkpoint<S>(store: &S)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    write(store, 0, 20).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let first = subscriptions.add_durable(Balances::default());
    let running = subscriptions.start();
    caught_up(&running, store).await;
    running.shutdown().await;
    assert_eq!(first.read().applied, 20);

    write(store, 20, 5).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let second = subscriptions.add_durable(Balances::default());
    let running = subscriptions.start();
    caught_up(&running, store).await;
    assert_eq!(
        second.read().applied,
        5,
        "only the events after the checkpoint"
    );
    running.shutdown().await;
}

/// One projection type run under names built at run time (per region, say), beside a relay
/// named at run time: each has its own checkpoint, status and rebuild, under its own name.
async fn names_built_at_run_time<S>(store: &S)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    write(store, 0, 12).await;
    let names: Vec<String> = ["eu", "us"]
        .iter()
        .map(|r| format!("balances-{r}"))
        .collect();
    let relay = format!("outbox-{}", names.len());
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let handles: Vec<_> = names
        .iter()
        .map(|name| subscriptions.add_durable_named(name.clone(), Balances::default()))
        .collect();
    let outbox = subscriptions.add_relay(eventsource::bus::Relay::new(
        relay.clone(),
        eventsource::bus::InMemoryBus::new(64),
    ));
    let running = subscriptions.start();
    caught_up(&running, store).await;
    let head = store.log_head().await.unwrap().last;
    for (name, handle) in names.iter().zip(&handles) {
        assert_eq!(&handle.status().name, name);
        assert_eq!(handle.read().applied, 12);
        assert_eq!(store.checkpoint(name).await.unwrap(), Some(head));
    }
    assert_eq!(outbox.status().name, relay);
    assert_eq!(store.checkpoint("balances").await.unwrap(), None);
    let mut reported: Vec<_> = running.status().into_iter().map(|s| s.name).collect();
    reported.sort();
    assert_eq!(reported, [names[0].clone(), names[1].clone(), relay]);

    running.rebuild(&names[1]).await.unwrap();
    assert_eq!(
        handles[1].read().applied,
        12,
        "rebuilt from zero, not on top"
    );
    assert_eq!(handles[0].read().applied, 12);
    running.shutdown().await;
}

/// What a handler that takes the `EventLocation` sees of each event.
#[derive(Default)]
struct Locations {
    seen: Vec<(StreamId, u64, Position, String)>,
}

#[projection(name = "locations")]
impl Locations {
    #[handles]
    fn deposited(&mut self, _: &Deposited, at: &EventLocation<'_>) {
        self.seen.push((
            at.stream.clone(),
            at.version,
            at.position,
            at.event_type.to_owned(),
        ));
    }
}

/// What a handler that takes the whole `EventContext` sees of each event.
#[derive(Default)]
struct Contexts {
    seen: Vec<(
        Uuid,
        Position,
        Option<String>,
        chrono::DateTime<chrono::Utc>,
    )>,
}

#[projection(name = "contexts")]
impl Contexts {
    #[handles]
    fn deposited(&mut self, _: &Deposited, ctx: &EventContext<'_>) {
        self.seen.push((
            ctx.event_id,
            ctx.position,
            ctx.metadata.actor_id.clone(),
            ctx.occurred_at,
        ));
    }
}

/// A projection whose handlers take the `EventLocation` is read without the event id, time and
/// metadata, and still sees each event's true stream, version, position and type (streams with
/// unusual names among them); one that takes the whole context, beside it, sees the id, time and
/// metadata as stored.
async fn context_fields_follow_the_handlers<S>(store: &S)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    use eventsource::ContextFields;
    assert_eq!(<Locations as Projection>::CONTEXT, ContextFields::Location);
    assert_eq!(<Contexts as Projection>::CONTEXT, ContextFields::All);
    // Streams whose names hold the unit separator the SQLite store packs a lean row's stream
    // with: in the aggregate type (such a row is read whole, mid-page) and in the id.
    let odd = [
        StreamId::new("Acc\u{1f}ount", "a\u{1f}0").unwrap(),
        StreamId::new("Account", "a\u{1f}1\u{1f}").unwrap(),
    ];
    for i in 0..12 {
        let mut metadata = Metadata::new();
        metadata.actor_id = Some(format!("actor-{i}"));
        let stream = match i {
            4 | 5 => odd[0].clone(),
            9 => odd[1].clone(),
            _ => account(i % 3),
        };
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![deposit(i as i64).with_metadata(metadata)],
            )
            .await
            .unwrap();
    }
    // Each alone in its manager: read through the store's own fold, with the columns it needs.
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let locations = subscriptions.add(Locations::default());
    let running = subscriptions.start();
    caught_up(&running, store).await;
    running.shutdown().await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let contexts = subscriptions.add(Contexts::default());
    let running = subscriptions.start();
    caught_up(&running, store).await;
    running.shutdown().await;
    let stored = eventsource_tests::conformance::read_settled(store, ReadAll::from_start()).await;
    let expected: Vec<_> = stored
        .iter()
        .map(|e| {
            (
                e.stream.clone(),
                e.version,
                e.position,
                e.event_type.clone(),
            )
        })
        .collect();
    assert_eq!(locations.read().seen, expected);
    let expected: Vec<_> = stored
        .iter()
        .map(|e| {
            (
                e.event_id,
                e.position,
                e.metadata.actor_id.clone(),
                e.occurred_at,
            )
        })
        .collect();
    assert_eq!(contexts.read().seen, expected);
}

/// Several projections under one manager share their reads of the log, with writers running
/// through catch-up and live: each read model still sees every event of its types once, in
/// order, with its true location and context.
async fn shared_reads_miss_nothing<S>(store: &S)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    // Events of a type none of them handles, between theirs.
    #[derive(DomainEvent, Serialize, Deserialize, Debug)]
    #[event(name = "proj.Noted")]
    struct Noted;
    for i in 0..30 {
        write(store, i, 1).await;
        store
            .append(
                &account(i % 5),
                ExpectedVersion::Any,
                vec![NewEvent::new(&Noted).unwrap()],
            )
            .await
            .unwrap();
    }
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let balances = subscriptions.add(Balances::default());
    let locations = subscriptions.add(Locations::default());
    let contexts = subscriptions.add(Contexts::default());
    let running = subscriptions.start();
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move { write(&store, 1000 * (w + 1), 25).await })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    caught_up(&running, store).await;
    running.shutdown().await;
    let expected = expected_balances(store).await;
    assert_eq!(balances.read().by_account, expected);
    assert_eq!(balances.read().applied, 105, "each event applied once");
    let deposits: Vec<RecordedEvent> =
        eventsource_tests::conformance::read_settled(store, ReadAll::from_start())
            .await
            .into_iter()
            .filter(|e| e.is::<Deposited>())
            .collect();
    let expected: Vec<_> = deposits
        .iter()
        .map(|e| {
            (
                e.stream.clone(),
                e.version,
                e.position,
                e.event_type.clone(),
            )
        })
        .collect();
    assert_eq!(locations.read().seen, expected);
    let expected: Vec<_> = deposits
        .iter()
        .map(|e| {
            (
                e.event_id,
                e.position,
                e.metadata.actor_id.clone(),
                e.occurred_at,
            )
        })
        .collect();
    assert_eq!(contexts.read().seen, expected);
}

macro_rules! backend_tests {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = databases::$backend().await else { return };
                    super::$case(db.store()).await;
                }
            )*
        }
    };
}

macro_rules! every_backend {
    ($($case:ident),* $(,)?) => {
        backend_tests!(memory: $($case),*);
        backend_tests!(sqlite: $($case),*);
        backend_tests!(postgres: $($case),*);
    };
}

every_backend!(
    checkpoints_are_compare_and_set,
    context_fields_follow_the_handlers,
    shared_reads_miss_nothing,
    catch_up_then_live,
    retries_then_succeeds,
    poison_event_is_dead_lettered,
    rebuild_equals_original,
    restart_resumes_from_the_checkpoint,
    names_built_at_run_time,
);

// ----- Database read models: exactly once -----

/// Balances in a table of the event store's database, written in the checkpoint's transaction.
/// `fail_on` makes the handler fail on a deposit of that many cents; `slow` makes each event
/// take that long (so that a crash lands in the middle of a batch).
struct SqlBalances<DB> {
    fail_on: Option<i64>,
    slow: Duration,
    _db: std::marker::PhantomData<DB>,
}

impl<DB> SqlBalances<DB> {
    fn new(fail_on: Option<i64>) -> Self {
        SqlBalances {
            fail_on,
            slow: Duration::ZERO,
            _db: std::marker::PhantomData,
        }
    }

    fn slow(mut self, per_event: Duration) -> Self {
        self.slow = per_event;
        self
    }
}

const UPSERT_SQLITE: &str = "INSERT INTO sql_balances (account, total, events) VALUES (?, ?, 1) \
     ON CONFLICT (account) DO UPDATE SET total = total + excluded.total, events = events + 1";
const UPSERT_PG: &str = "INSERT INTO sql_balances (account, total, events) VALUES ($1, $2, 1) \
     ON CONFLICT (account) DO UPDATE SET total = sql_balances.total + excluded.total, \
     events = sql_balances.events + 1";

macro_rules! sql_balances {
    ($db:ty, $upsert:expr) => {
        impl SqlProjection for SqlBalances<$db> {
            const NAME: &'static str = "sql_balances";
            type Database = $db;

            fn event_types() -> Vec<&'static str> {
                vec!["proj.Deposited"]
            }

            fn handle<'a>(
                &'a mut self,
                event: EventView<'a>,
                context: &'a EventContext<'a>,
                tx: &'a mut Transaction<$db>,
            ) -> BoxFuture<'a, Result<(), HandlerError>> {
                Box::pin(async move {
                    let deposited: Deposited = event.decode()?;
                    if self.fail_on == Some(deposited.cents) {
                        return Err(format!("cannot apply a deposit of {}", deposited.cents).into());
                    }
                    if !self.slow.is_zero() {
                        tokio::time::sleep(self.slow).await;
                    }
                    sqlx::query($upsert)
                        .bind(context.aggregate_id())
                        .bind(deposited.cents)
                        .execute(&mut **tx)
                        .await?;
                    Ok(())
                })
            }

            fn reset<'a>(
                &'a mut self,
                tx: &'a mut Transaction<$db>,
            ) -> BoxFuture<'a, Result<(), HandlerError>> {
                Box::pin(async move {
                    sqlx::query("DELETE FROM sql_balances")
                        .execute(&mut **tx)
                        .await?;
                    Ok(())
                })
            }
        }
    };
}

sql_balances!(sqlx::Sqlite, UPSERT_SQLITE);
sql_balances!(sqlx::Postgres, UPSERT_PG);

/// A failure in the middle of a batch, then a crash (the task killed mid-transaction), then a
/// restart: every event's effect is in the table exactly once.
async fn exactly_once_across_a_crash<S>(
    store: &S,
    read: impl AsyncFn(&S) -> BTreeMap<String, (i64, i64)>,
) where
    S: TransactionalStore,
    SqlBalances<S::Database>: SqlProjection<Database = S::Database>,
{
    let applied = async |store: &S| -> i64 { read(store).await.values().map(|(_, e)| e).sum() };
    write(store, 0, 30).await;
    // The handler fails on the 12th deposit: its batch (8..=14 with batches of 7) is rolled
    // back and applied one event per transaction up to the failure, where the projection stops.
    let mut subscriptions = Subscriptions::new(store.clone())
        .with_options(fast().max_attempts(1).on_failure(OnFailure::Stop));
    let failing = subscriptions.add_sql(SqlBalances::<S::Database>::new(Some(12)));
    let running = subscriptions.start();
    let _ = running
        .wait_until(Position::new(u64::MAX), Duration::from_secs(10))
        .await;
    assert!(matches!(failing.status().state, RunnerState::Failed(_)));
    running.shutdown().await;
    assert_eq!(
        applied(store).await,
        11,
        "the events before the failure, once each"
    );
    let letters = store.dead_letters("sql_balances").await.unwrap();
    assert_eq!(letters.len(), 1);
    store
        .remove_dead_letter("sql_balances", letters[0].position)
        .await
        .unwrap();

    // A slow manager killed in the middle of a batch: its open transaction is lost whole.
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    subscriptions.add_sql(SqlBalances::<S::Database>::new(None).slow(Duration::from_millis(5)));
    let running = subscriptions.start();
    tokio::time::sleep(Duration::from_millis(60)).await;
    running.abort();
    let after_crash = applied(store).await;
    assert!(
        (11..30).contains(&after_crash) && (after_crash - 11) % 7 == 0,
        "whole batches only, got {after_crash}"
    );

    write(store, 30, 10).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let model = subscriptions.add_sql(SqlBalances::<S::Database>::new(None));
    let running = subscriptions.start();
    caught_up(&running, store).await;
    becomes_live(|| model.status().state).await;
    let table = read(store).await;
    let totals: BTreeMap<String, i64> = table.iter().map(|(a, (t, _))| (a.clone(), *t)).collect();
    assert_eq!(totals, expected_balances(store).await);
    assert_eq!(applied(store).await, 40, "each event applied exactly once");

    // Rebuild: the same table again, built in one transaction.
    running.rebuild("sql_balances").await.unwrap();
    assert_eq!(read(store).await, table);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_exactly_once_across_a_crash() {
    let Some(db) = databases::sqlite().await else {
        return;
    };
    sqlx::query(
        "CREATE TABLE sql_balances (account TEXT PRIMARY KEY, total INTEGER NOT NULL, \
         events INTEGER NOT NULL)",
    )
    .execute(db.store().writer_pool())
    .await
    .unwrap();
    exactly_once_across_a_crash(db.store(), async |store: &SqliteEventStore| {
        sqlx::query_as::<_, (String, i64, i64)>("SELECT account, total, events FROM sql_balances")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|(a, t, e)| (a, (t, e)))
            .collect()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_exactly_once_across_a_crash() {
    let Some(db) = databases::postgres().await else {
        return;
    };
    sqlx::query(
        "CREATE TABLE sql_balances (account TEXT PRIMARY KEY, total BIGINT NOT NULL, \
         events BIGINT NOT NULL)",
    )
    .execute(db.store().pool())
    .await
    .unwrap();
    exactly_once_across_a_crash(db.store(), async |store: &PostgresEventStore| {
        sqlx::query_as::<_, (String, i64, i64)>("SELECT account, total, events FROM sql_balances")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|(a, t, e)| (a, (t, e)))
            .collect()
    })
    .await;
}

/// Two managers run the same database projection: one processes, the other stands by and takes
/// over within seconds when the first dies, with writers running; nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_takeover_between_two_managers() {
    let Some(db) = databases::postgres().await else {
        return;
    };
    let store = db.store().clone();
    sqlx::query(
        "CREATE TABLE sql_balances (account TEXT PRIMARY KEY, total BIGINT NOT NULL, \
         events BIGINT NOT NULL)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    write(&store, 0, 20).await;

    let mut first = Subscriptions::new(store.clone()).with_options(fast());
    let first_model = first.add_sql(SqlBalances::<sqlx::Postgres>::new(None));
    let first = first.start();
    caught_up(&first, &store).await;
    becomes_live(|| first_model.status().state).await;

    let mut second = Subscriptions::new(store.clone()).with_options(fast());
    let second_model = second.add_sql(SqlBalances::<sqlx::Postgres>::new(None));
    let second = second.start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(second_model.status().state, RunnerState::Standby);

    let writer = {
        let store = store.clone();
        tokio::spawn(async move { write(&store, 20, 40).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The first manager dies (its task killed mid-work, its lease connection dropped).
    first.abort();
    writer.await.unwrap();
    let started = std::time::Instant::now();
    caught_up(&second, &store).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took over in time"
    );
    becomes_live(|| second_model.status().state).await;

    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT account, total, events FROM sql_balances")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let totals: BTreeMap<String, i64> = rows.iter().map(|(a, t, _)| (a.clone(), *t)).collect();
    assert_eq!(totals, expected_balances(&store).await);
    assert_eq!(rows.iter().map(|(_, _, e)| e).sum::<i64>(), 60);
    second.shutdown().await;
}

/// Two instances run the same database projection against one database: one holds the lease,
/// the other stands by. Each reads its own writes (`wait_until`) and reports lag 0 once the
/// event is applied: the one on standby reads the checkpoint as stored. `other` is the second
/// instance's store (its own connections, as another process would have).
async fn a_standby_reads_the_stored_checkpoint<S>(store: &S, other: &S)
where
    S: TransactionalStore,
    SqlBalances<S::Database>: SqlProjection<Database = S::Database>,
{
    write(store, 0, 10).await;
    let mut live = Subscriptions::new(store.clone()).with_options(fast());
    let live_model = live.add_sql(SqlBalances::<S::Database>::new(None));
    let live = live.start();
    caught_up(&live, store).await;
    becomes_live(|| live_model.status().state).await;
    let mut standby = Subscriptions::new(other.clone()).with_options(fast());
    let standby_model = standby.add_sql(SqlBalances::<S::Database>::new(None));
    let standby = standby.start();
    for _ in 0..100 {
        if standby_model.status().state == RunnerState::Standby {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(standby_model.status().state, RunnerState::Standby);

    for (round, event) in [deposit(7), NewEvent::from_json("proj.Unhandled", 1, "{}")]
        .into_iter()
        .enumerate()
    {
        let appended = store
            .append(&account(round), ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
        for (instance, running) in [("live", &live), ("standby", &standby)] {
            let started = std::time::Instant::now();
            running
                .wait_until(appended.last_position, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("the {instance} instance reads its writes: {e}"));
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "the {instance} instance waited {:?}",
                started.elapsed()
            );
            assert_eq!(running.lag("sql_balances").await.unwrap(), 0, "{instance}");
        }
    }
    let status = standby_model.status();
    assert_eq!(status.state, RunnerState::Standby);
    assert_eq!(status.checkpoint, live_model.status().checkpoint);
    live.shutdown().await;
    standby.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_standby_reads_the_stored_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteEventStore::open(&path).await.unwrap();
    sqlx::query(
        "CREATE TABLE sql_balances (account TEXT PRIMARY KEY, total INTEGER NOT NULL, \
         events INTEGER NOT NULL)",
    )
    .execute(store.writer_pool())
    .await
    .unwrap();
    let other = SqliteEventStore::open(&path).await.unwrap();
    a_standby_reads_the_stored_checkpoint(&store, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_standby_reads_the_stored_checkpoint() {
    let Some(db) = databases::postgres().await else {
        return;
    };
    sqlx::query(
        "CREATE TABLE sql_balances (account TEXT PRIMARY KEY, total BIGINT NOT NULL, \
         events BIGINT NOT NULL)",
    )
    .execute(db.store().pool())
    .await
    .unwrap();
    let options = (*db.store().pool().connect_options()).clone();
    let other = PostgresEventStore::from_pool(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap(),
    );
    a_standby_reads_the_stored_checkpoint(db.store(), &other).await;
}

/// Live means woken by the store, not by the poll: with a poll of a minute, an append is
/// applied within seconds. `writer` appends (on PostgreSQL: another store with a pool of its
/// own, as another process would, so the wake-up travels through LISTEN/NOTIFY).
async fn woken_by_appends<S, W>(store: &S, writer: &W)
where
    S: EventStore + CheckpointStore + Clone + 'static,
    W: EventStore,
{
    let mut subscriptions = Subscriptions::new(store.clone())
        .with_options(fast().poll_interval(Duration::from_secs(60)));
    let balances = subscriptions.add(Balances::default());
    let running = subscriptions.start();
    running
        .wait_until(Position::START, Duration::from_secs(10))
        .await
        .unwrap();
    // Let the projection go to sleep at the head (and the LISTEN connection start).
    tokio::time::sleep(Duration::from_millis(500)).await;
    becomes_live(|| balances.status().state).await;
    for round in 0..3 {
        let started = std::time::Instant::now();
        let appended = writer
            .append(&account(round), ExpectedVersion::Any, vec![deposit(10)])
            .await
            .unwrap();
        running
            .wait_until(appended.last_position, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woken in {:?}",
            started.elapsed()
        );
        assert_eq!(balances.read().applied, round as u64 + 1);
    }
    // A burst: appends closer together than PostgreSQL's notifier sends (at most one NOTIFY
    // every 5 ms). The last ones are covered by the notification sent after the burst.
    let started = std::time::Instant::now();
    let mut last = Position::START;
    for i in 0..20 {
        last = writer
            .append(&account(3 + i), ExpectedVersion::Any, vec![deposit(10)])
            .await
            .unwrap()
            .last_position;
    }
    running
        .wait_until(last, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "burst applied in {:?}",
        started.elapsed()
    );
    assert_eq!(balances.read().applied, 23);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_woken_by_appends() {
    let store = InMemoryEventStore::new();
    woken_by_appends(&store, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_woken_by_appends() {
    let Some(db) = databases::sqlite().await else {
        return;
    };
    woken_by_appends(db.store(), db.store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_woken_by_appends_of_another_process() {
    let Some(db) = databases::postgres().await else {
        return;
    };
    let options = (*db.store().pool().connect_options()).clone();
    let other = PostgresEventStore::from_pool(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .unwrap(),
    );
    woken_by_appends(db.store(), &other).await;
}

/// A stored row that cannot be read (metadata of the wrong shape, written by hand) is
/// dead-lettered like a failing event, and the projection goes on past it.
async fn damaged_row_is_dead_lettered<S, F, Fut>(store: &S, damage: F)
where
    S: EventStore + CheckpointStore + Clone + 'static,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    write(store, 0, 5).await;
    damage().await;
    write(store, 5, 5).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let balances = subscriptions.add_durable(Balances::default());
    let running = subscriptions.start();
    caught_up(&running, store).await;
    assert_eq!(balances.read().applied, 10, "every readable event applied");
    let letters = store.dead_letters("balances").await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].stream, account(99));
    assert_eq!(letters[0].event_id, None);
    assert!(
        letters[0].error.contains("metadata"),
        "{}",
        letters[0].error
    );
    becomes_live(|| balances.status().state).await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_damaged_row_is_dead_lettered() {
    let Some(db) = databases::sqlite().await else {
        return;
    };
    let pool = db.store().writer_pool().clone();
    damaged_row_is_dead_lettered(db.store(), || async move {
        sqlx::query(
            "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
             schema_version, occurred_at, metadata, payload) \
             VALUES (?, 'Account', 'a99', 1, 'proj.Deposited', 1, 0, '[1,2]', '{\"cents\": 1}')",
        )
        .bind(Uuid::now_v7())
        .execute(&pool)
        .await
        .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_damaged_row_is_dead_lettered() {
    let Some(db) = databases::postgres().await else {
        return;
    };
    let pool = db.store().pool().clone();
    damaged_row_is_dead_lettered(db.store(), || async move {
        sqlx::query(
            "INSERT INTO events (position, event_id, aggregate_type, aggregate_id, version, \
             event_type, schema_version, occurred_at, metadata, payload) \
             VALUES (pg_current_xact_id()::TEXT::BIGINT * 65536, $1, 'Account', 'a99', 1, \
             'proj.Deposited', 1, now(), '[1,2]', '{\"cents\": 1}')",
        )
        .bind(Uuid::now_v7())
        .execute(&pool)
        .await
        .unwrap();
    })
    .await;
}

/// On SQLite a fold of locations reads a page as one framed text. A page holding a row whose
/// text is not UTF-8 is read row by row instead; that row and one whose version is out of range
/// are dead-lettered, and every other event is applied once, in order, with its true location.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_damaged_rows_in_a_fold_of_locations() {
    let Some(db) = databases::sqlite().await else {
        return;
    };
    let store = db.store();
    let pool = store.writer_pool().clone();
    let damage = |aggregate_id: &'static str, version: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query(&format!(
                "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, \
                 event_type, schema_version, occurred_at, payload) VALUES (?, 'Account', \
                 {aggregate_id}, ?, 'proj.Deposited', 1, 0, '{{\"cents\": 1}}')"
            ))
            .bind(Uuid::now_v7())
            .bind(version)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let mut expected = Vec::new();
    for i in 0..20 {
        match i {
            3 => damage("CAST(x'ff' AS TEXT)", 1).await,
            11 => damage("'no-version'", 0).await,
            _ => {}
        }
        // Ids and payloads holding the framing's own characters.
        let stream = StreamId::new("Account", format!("a:{},{}", i % 3, i % 2)).unwrap();
        let appended = store
            .append(&stream, ExpectedVersion::Any, vec![deposit(i)])
            .await
            .unwrap();
        expected.push((
            stream,
            appended.stream_version,
            appended.last_position,
            "proj.Deposited".to_owned(),
        ));
    }
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let locations = subscriptions.add_durable(Locations::default());
    let running = subscriptions.start();
    caught_up(&running, store).await;
    running.shutdown().await;
    assert_eq!(locations.read().seen, expected);
    let letters = store.dead_letters("locations").await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
}

/// Checkpoints move by compare-and-set: a runner that finds the checkpoint elsewhere than it
/// left it gets `CheckpointConflict`, and the checkpoint stays where the other runner put it.
async fn checkpoints_are_compare_and_set<S: CheckpointStore>(store: &S) {
    assert_eq!(store.checkpoint("cas").await.unwrap(), None);
    store
        .save_checkpoint("cas", None, Position::new(5))
        .await
        .unwrap();
    let stale = store.save_checkpoint("cas", None, Position::new(9)).await;
    assert!(
        matches!(&stale, Err(Error::CheckpointConflict { expected: None, found: Some(p), .. }) if *p == Position::new(5)),
        "{stale:?}"
    );
    let wrong = store
        .save_checkpoint("cas", Some(Position::new(4)), Position::new(9))
        .await;
    assert!(
        matches!(wrong, Err(Error::CheckpointConflict { .. })),
        "{wrong:?}"
    );
    store
        .save_checkpoint("cas", Some(Position::new(5)), Position::new(9))
        .await
        .unwrap();
    assert_eq!(
        store.checkpoint("cas").await.unwrap(),
        Some(Position::new(9))
    );
    store.delete_checkpoint("cas").await.unwrap();
    assert_eq!(store.checkpoint("cas").await.unwrap(), None);
}

/// `wait_until_for` waits for one projection: the one a request is about to read, even when
/// another of the manager is stopped far behind; an unknown name is a typed error.
#[tokio::test]
async fn wait_until_for_one_projection() {
    let store = InMemoryEventStore::new();
    let mut subscriptions = Subscriptions::new(store.clone());
    let locations = subscriptions.add(Locations::default());
    let running = subscriptions.start();
    let stream = StreamId::new("Account", "w-1").unwrap();
    let appended = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![deposit(5), deposit(6)],
        )
        .await
        .unwrap();
    running
        .wait_until_for("locations", appended.last_position, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(locations.read().seen.len(), 2);
    assert!(matches!(
        running
            .wait_until_for("nowhere", appended.last_position, Duration::from_secs(1))
            .await,
        Err(Error::UnknownProjection { .. })
    ));
    running.shutdown().await;
}

/// A projection name holding NUL is refused by every store with the same error, before any
/// I/O; a handler's error text holding NUL is dead-lettered on every store, NUL shown as U+FFFD.
#[tokio::test]
async fn nul_in_bookkeeping_is_answered_alike() {
    async fn check<S: CheckpointStore>(store: &S) {
        for result in [
            store.checkpoint("a\0b").await.map(drop),
            store
                .save_checkpoint("a\0b", None, eventsource::Position::new(1))
                .await,
            store.delete_checkpoint("a\0b").await,
            store.dead_letters("a\0b").await.map(drop),
            store
                .remove_dead_letter("a\0b", eventsource::Position::new(1))
                .await
                .map(drop),
            store.lease("a\0b").await.map(drop),
        ] {
            assert!(matches!(result, Err(Error::InvalidConfig(_))), "{result:?}");
        }
        let letter = eventsource::DeadLetter::new(
            "nul",
            eventsource::Position::new(7),
            StreamId::new("Account", "n").unwrap(),
            "bad\0byte",
            1,
        );
        store.add_dead_letter(&letter).await.unwrap();
        let letters = store.dead_letters("nul").await.unwrap();
        assert_eq!(letters[0].error, "bad\u{FFFD}byte");
    }
    check(databases::memory().await.unwrap().store()).await;
    check(databases::sqlite().await.unwrap().store()).await;
    if let Some(db) = databases::postgres().await {
        check(db.store()).await;
    }
}
