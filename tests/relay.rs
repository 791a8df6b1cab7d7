//! The relay: the event log published to a bus, at least once, in order, with nothing invented
//! (only committed appends) and nothing lost (a crash mid-batch, a broker that refuses for a
//! while, a relay that dies and another that takes over). On SQLite and PostgreSQL.

use eventsource::bus::{BusConsumer, ConsumerGroup, EventBus, InMemoryBus, Relay};
use eventsource::prelude::*;
use eventsource::subscription::{RunnerOptions, RunnerState, RunningSubscriptions, Subscriptions};
use eventsource::{CheckpointStore, NewEvent, SqliteEventStore};
use eventsource::{ExpectedVersion, Position, ReadAll, RecordedEvent, StreamId};
use eventsource_tests::buses::{drain, next_within};
use eventsource_tests::databases;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(800);

#[derive(DomainEvent, Serialize, Deserialize, Debug)]
#[event(name = "relay.Deposited")]
struct Deposited {
    cents: i64,
}

fn fast() -> RunnerOptions {
    RunnerOptions::default()
        .batch_size(7)
        .backoff(Duration::from_millis(1), Duration::from_millis(20))
        .poll_interval(Duration::from_millis(200))
        .lease_retry(Duration::from_millis(100))
}

async fn write<S: EventStore>(store: &S, from: usize, count: usize) -> Position {
    let mut last = Position::START;
    for i in from..from + count {
        let stream = StreamId::new("Account", format!("a-{}", i % 5)).unwrap();
        let event = NewEvent::new(&Deposited { cents: i as i64 }).unwrap();
        last = store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .unwrap()
            .last_position;
    }
    last
}

async fn caught_up<S: EventStore>(running: &RunningSubscriptions, store: &S) -> Position {
    let head = store.log_head().await.unwrap();
    store.wait_for(head.last, WAIT).await.unwrap();
    running.wait_until(head.last, WAIT).await.unwrap();
    head.last
}

/// What the store holds, as the ids in position order.
async fn stored_ids<S: EventStore>(store: &S) -> Vec<uuid::Uuid> {
    use futures::TryStreamExt;
    let events: Vec<RecordedEvent> = store
        .read_all(ReadAll::from_start())
        .try_collect()
        .await
        .unwrap();
    events.iter().map(|e| e.event_id).collect()
}

/// Per stream, the versions delivered are 1, 2, 3... once duplicates are dropped.
fn assert_in_stream_order(received: &[RecordedEvent]) {
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, u64> = HashMap::new();
    for event in received {
        if !seen.insert(event.event_id) {
            continue; // a redelivery, for consumers to drop by id
        }
        let previous = last.insert(event.stream.aggregate_id(), event.version);
        assert_eq!(previous.unwrap_or(0) + 1, event.version, "in stream order");
    }
}

/// A bus in front of an in-memory bus that can refuse publishes (the broker down) or publish
/// part of a batch and then hang, never confirming (the relay's process dying mid-batch).
#[derive(Clone, Debug)]
struct FaultyBus {
    inner: InMemoryBus,
    refuse: Arc<AtomicU32>,
    hang_after: Arc<AtomicUsize>,
    published: Arc<AtomicUsize>,
}

impl FaultyBus {
    fn new(inner: InMemoryBus) -> Self {
        FaultyBus {
            inner,
            refuse: Arc::default(),
            hang_after: Arc::new(AtomicUsize::new(usize::MAX)),
            published: Arc::default(),
        }
    }
}

impl EventBus for FaultyBus {
    type Consumer = <InMemoryBus as EventBus>::Consumer;

    async fn publish(&self, events: &[RecordedEvent]) -> eventsource::Result<()> {
        if self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::Bus {
                bus: "faulty",
                operation: "publish",
                source: "connection refused".into(),
            });
        }
        let hang_after = self.hang_after.load(Ordering::SeqCst);
        for event in events {
            if self.published.load(Ordering::SeqCst) >= hang_after {
                std::future::pending::<()>().await;
            }
            self.inner.publish(std::slice::from_ref(event)).await?;
            self.published.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn subscribe(&self, subscription: &ConsumerGroup) -> eventsource::Result<Self::Consumer> {
        self.inner.subscribe(subscription).await
    }
}

/// Committed events, and only those, reach the bus in position order; the relay reports its
/// checkpoint and a backlog of zero.
async fn publishes_committed_events_in_order<S>(store: &S)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    let bus = InMemoryBus::new(1024);
    let mut consumer = bus.subscribe(&ConsumerGroup::new("audit")).await.unwrap();
    write(store, 0, 30).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let relay = subscriptions.add_relay(Relay::new("outbox", bus.clone()));
    let running = subscriptions.start();
    write(store, 30, 20).await;
    // An append refused for its expected version stores nothing, so publishes nothing.
    let refused = store
        .append(
            &StreamId::new("Account", "a-0").unwrap(),
            ExpectedVersion::Exact(1),
            vec![NewEvent::new(&Deposited { cents: -1 }).unwrap()],
        )
        .await;
    assert!(matches!(refused, Err(Error::Concurrency { .. })));
    let head = caught_up(&running, store).await;

    let received = drain(&mut consumer, QUIET).await;
    let ids: Vec<_> = received.iter().map(|e| e.event_id).collect();
    assert_eq!(
        ids,
        stored_ids(store).await,
        "every committed event, once, in position order"
    );
    assert!(received.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(relay.status().checkpoint, Some(head));
    assert_eq!(running.lag("outbox").await.unwrap(), 0);
    assert_eq!(store.checkpoint("outbox").await.unwrap(), Some(head));
    running.shutdown().await;
}

/// The relay dies in the middle of a batch (part published, nothing confirmed): a new relay
/// publishes the batch again from the checkpoint, and the consumer, dropping repeated ids,
/// sees every event once, each stream in order.
async fn crash_mid_batch_loses_nothing<S>(store: &S)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    let inner = InMemoryBus::new(1024);
    let mut consumer = inner.subscribe(&ConsumerGroup::new("audit")).await.unwrap();
    write(store, 0, 30).await;

    let faulty = FaultyBus::new(inner.clone());
    faulty.hang_after.store(10, Ordering::SeqCst); // the second batch of 7, part way
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    subscriptions.add_relay(Relay::new("outbox", faulty.clone()));
    let first = subscriptions.start();
    let mut received = Vec::new();
    while received.len() < 10 {
        let delivery = next_within(&mut consumer, WAIT).await.expect("published");
        consumer.ack(&delivery).await.unwrap();
        received.push(delivery.event().clone());
    }
    first.abort(); // the crash: the batch in flight was never confirmed
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        store.checkpoint("outbox").await.unwrap(),
        Some(received[6].position),
        "the checkpoint stays before the unconfirmed batch"
    );

    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    subscriptions.add_relay(Relay::new("outbox", inner.clone()));
    let second = subscriptions.start();
    caught_up(&second, store).await;
    received.extend(drain(&mut consumer, QUIET).await);

    let unique: HashSet<_> = received.iter().map(|e| e.event_id).collect();
    assert_eq!(unique.len(), 30, "nothing lost");
    assert_eq!(
        received.len(),
        33,
        "the 3 unconfirmed events of the batch, again"
    );
    assert_in_stream_order(&received);
    second.shutdown().await;
}

/// The broker refuses for a while: the relay keeps its checkpoint and tries again, and once the
/// broker is back everything is published, once.
async fn broker_refusing_then_back<S>(store: &S)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    let inner = InMemoryBus::new(1024);
    let mut consumer = inner.subscribe(&ConsumerGroup::new("audit")).await.unwrap();
    let faulty = FaultyBus::new(inner.clone());
    faulty.refuse.store(4, Ordering::SeqCst);
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    subscriptions.add_relay(Relay::new("outbox", faulty.clone()));
    let running = subscriptions.start();
    write(store, 0, 12).await;
    caught_up(&running, store).await;
    let received = drain(&mut consumer, QUIET).await;
    assert_eq!(
        faulty.refuse.load(Ordering::SeqCst),
        0,
        "it was refused, and retried"
    );
    assert_eq!(
        received.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        stored_ids(store).await
    );
    running.shutdown().await;
}

/// Two relays of one name on one database (two processes): one publishes, the other stands by,
/// and takes over when the first dies; every event is published once.
async fn one_relay_at_a_time<S, T>(store: &S, other_process: &T)
where
    S: EventStore + CheckpointStore + Clone + 'static,
    T: EventStore + CheckpointStore + Clone + 'static,
{
    let bus = InMemoryBus::new(1024);
    let mut consumer = bus.subscribe(&ConsumerGroup::new("audit")).await.unwrap();
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let first_relay = subscriptions.add_relay(Relay::new("outbox", bus.clone()));
    let first = subscriptions.start();
    write(store, 0, 20).await;
    caught_up(&first, store).await;

    let mut subscriptions = Subscriptions::new(other_process.clone()).with_options(fast());
    let second_relay = subscriptions.add_relay(Relay::new("outbox", bus.clone()));
    let second = subscriptions.start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(first_relay.status().state, RunnerState::Live);
    assert_eq!(second_relay.status().state, RunnerState::Standby);
    write(store, 20, 10).await;
    caught_up(&first, store).await;

    first.abort(); // dies; its lease goes with it
    write(other_process, 30, 10).await;
    caught_up(&second, other_process).await;
    // Caught up may be seen a moment before the runner reads the head once more and says Live.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while second_relay.status().state != RunnerState::Live && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(second_relay.status().state, RunnerState::Live);

    let received = drain(&mut consumer, QUIET).await;
    assert_eq!(
        received.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        stored_ids(store).await,
        "each event once, in order, across the takeover"
    );
    second.shutdown().await;
}

macro_rules! on_sqlite_and_postgres {
    ($($case:ident),*) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = super::databases::sqlite().await.unwrap();
                super::$case(db.store()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = super::databases::postgres().await {
                    super::$case(db.store()).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                let db = super::databases::memory().await.unwrap();
                super::$case(db.store()).await;
            }
        }
    )*};
}

on_sqlite_and_postgres!(
    publishes_committed_events_in_order,
    crash_mid_batch_loses_nothing,
    broker_refusing_then_back
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_at_a_time_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteEventStore::open(&path).await.unwrap();
    let other_process = SqliteEventStore::open(&path).await.unwrap();
    one_relay_at_a_time(&store, &other_process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_at_a_time_on_postgres() {
    let Some((options, _schema)) = databases::postgres_schema().await else {
        return;
    };
    let store = eventsource::PostgresEventStore::connect_with(options.clone())
        .await
        .unwrap();
    let other_process = eventsource::PostgresEventStore::connect_with(options)
        .await
        .unwrap();
    one_relay_at_a_time(&store, &other_process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_at_a_time_in_memory() {
    let store = eventsource::InMemoryEventStore::new();
    one_relay_at_a_time(&store, &store.clone()).await;
}

/// The relay in front of each real broker: an SQLite log published through it reaches a
/// consumer whole and in order.
async fn through<B: eventsource_tests::buses::TestBus>(bus: B) {
    let db = databases::sqlite().await.unwrap();
    let store = db.store();
    let mut consumer = bus.subscribe(&ConsumerGroup::new("audit")).await.unwrap();
    write(store, 0, 25).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    subscriptions.add_relay(Relay::new("outbox", bus.clone()));
    let running = subscriptions.start();
    write(store, 25, 10).await;
    caught_up(&running, store).await;
    let received = drain(&mut consumer, Duration::from_secs(2)).await;
    if bus.orders_across_streams() {
        assert_eq!(
            received.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            stored_ids(store).await
        );
    } else {
        use futures::TryStreamExt;
        let stored: Vec<RecordedEvent> = store
            .read_all(ReadAll::from_start())
            .try_collect()
            .await
            .unwrap();
        eventsource_tests::buses::assert_in_stream_order(&received, &stored);
    }
    running.shutdown().await;
    bus.teardown(&["audit"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_redis() {
    if let Some(bus) = eventsource_tests::buses::redis_bus().await {
        through(bus).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_rabbitmq() {
    if let Some(bus) = eventsource_tests::buses::rabbitmq_bus().await {
        through(bus).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_nats() {
    if let Some(bus) = eventsource_tests::buses::nats_bus().await {
        through(bus).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_kafka() {
    if let Some(bus) = eventsource_tests::buses::kafka_bus().await {
        through(bus).await;
    }
}

/// A NATS server of the test's own (a port and a storage directory of its own), so that it can
/// be stopped and started again while other tests use the shared one.
struct OwnNats {
    child: Option<std::process::Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl OwnNats {
    /// Starts one, or `None` (with a message; a failure under CI) where `nats-server` is missing.
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = OwnNats {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        if !nats.spawn() {
            assert!(
                std::env::var("CI").is_err(),
                "nats-server is not installed and CI is set, so this test fails"
            );
            eprintln!("SKIPPED: nats-server is not installed");
            return None;
        }
        Some(nats)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> bool {
        let child = std::process::Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            return false;
        };
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The broker is stopped while events are committed and started again: the relay keeps trying
/// the same batch, and once the broker is back every committed event is in it, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_a_broker_restart() {
    use eventsource::bus::nats::NatsBus;
    let Some(mut server) = OwnNats::start() else {
        return;
    };
    let db = databases::sqlite().await.unwrap();
    let store = db.store();
    let bus = NatsBus::connect(&server.url(), "restart").await.unwrap();
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    subscriptions.add_relay(Relay::new("outbox", bus.clone()));
    let running = subscriptions.start();
    write(store, 0, 20).await;
    caught_up(&running, store).await;

    server.stop();
    write(store, 20, 20).await; // committed while the broker is down
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        running.lag("outbox").await.unwrap() > 0,
        "not published yet"
    );
    server.spawn();
    let head = store.log_head().await.unwrap().last;
    running
        .wait_until(head, Duration::from_secs(60))
        .await
        .unwrap();

    // A consumer of a fresh connection reads the stream the restarted server kept.
    let reader = NatsBus::connect(&server.url(), "restart").await.unwrap();
    let mut consumer = reader
        .subscribe(&ConsumerGroup::new("audit"))
        .await
        .unwrap();
    let received = drain(&mut consumer, Duration::from_secs(2)).await;
    assert_eq!(
        received.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        stored_ids(store).await,
        "every committed event, once (NATS drops repeats by Nats-Msg-Id), in order"
    );
    running.shutdown().await;
}

/// An in-memory SQLite database has no file to lock beside: its leases lock in the process,
/// and nothing is written to the working directory.
#[tokio::test]
async fn in_memory_sqlite_leases_lock_in_the_process() {
    let store = SqliteEventStore::in_memory().await.unwrap();
    let first = store.lease("outbox").await.unwrap();
    assert!(first.is_some());
    assert!(store.lease("outbox").await.unwrap().is_none(), "held");
    drop(first);
    assert!(store.lease("outbox").await.unwrap().is_some(), "released");
    let strays: Vec<_> = std::fs::read_dir(".")
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("file:"))
        .collect();
    assert!(
        strays.is_empty(),
        "no lock file beside a database that has no file: {strays:?}"
    );
}

/// A stored row that cannot be read is not published: it goes to the relay's dead letters and
/// the events after it are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_row_is_dead_lettered_not_published() {
    let db = databases::sqlite().await.unwrap();
    let store = db.store();
    let bus = InMemoryBus::new(1024);
    let mut consumer = bus.subscribe(&ConsumerGroup::new("audit")).await.unwrap();
    write(store, 0, 3).await;
    sqlx::query(
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
         schema_version, occurred_at, metadata, payload) \
         VALUES (?, 'Account', 'damaged', 1, 'relay.Deposited', 1, 0, '[1,2]', '{\"cents\": 1}')",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(store.writer_pool())
    .await
    .unwrap();
    write(store, 3, 3).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    subscriptions.add_relay(Relay::new("outbox", bus.clone()));
    let running = subscriptions.start();
    caught_up(&running, store).await;
    let received = drain(&mut consumer, QUIET).await;
    assert_eq!(received.len(), 6, "every readable event, and only those");
    assert!(
        received
            .iter()
            .all(|e| e.stream.aggregate_id() != "damaged")
    );
    let letters = store.dead_letters("outbox").await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].stream.aggregate_id(), "damaged");
    running.shutdown().await;
}
