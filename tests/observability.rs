//! Observability and operations: the spans the runtime opens (with their fields, never a
//! payload), correlation and causation ids from a command to its events and from a consumed
//! event to the events recorded in reaction, the metrics that move, health reports on every
//! store, and shutdown on a signal.

use eventsource::bus::{BusConsumer, ConsumerGroup, EventBus, InMemoryBus, Relay};
use eventsource::health::{HealthOptions, HealthReport, Status};
use eventsource::prelude::*;
use eventsource::projection::HandlerError;
use eventsource::subscription::{
    OnFailure, RunnerOptions, RunnerState, RunningSubscriptions, Subscriptions,
};
use eventsource::{CheckpointStore, EventView, NewEvent};
use eventsource::{ExpectedVersion, Position, Projection, StreamId, StreamQuery};
use eventsource_tests::databases;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};

const WAIT: Duration = Duration::from_secs(20);
/// Written into every payload: no span may show it.
const SECRET: &str = "card-4111-1111";

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "obs.Opened")]
struct Opened {
    note: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "obs.Deposited")]
struct Deposited {
    cents: i64,
    note: String,
}

#[derive(Default, Debug, Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[aggregate(name = "ObsAccount", id = String, snapshot_every = 2)]
impl Account {
    #[handles]
    fn opened(&mut self, _: &Opened) {}

    #[handles]
    fn deposited(&mut self, event: &Deposited) {
        self.balance += event.cents;
    }
}

/// An aggregate loaded through a repository's aggregate cache.
#[derive(Default, Debug, Clone)]
struct Cached {
    deposits: u64,
}

#[aggregate(name = "ObsCached", id = String)]
impl Cached {
    #[handles]
    fn deposited(&mut self, _: &Deposited) {
        self.deposits += 1;
    }
}

/// Another aggregate, written in reaction to an account's events.
#[derive(Default, Debug)]
struct Ledger {
    entries: u64,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "obs.Entered")]
struct Entered {
    cents: i64,
}

#[aggregate(name = "ObsLedger", id = String)]
impl Ledger {
    #[handles]
    fn entered(&mut self, _: &Entered) {
        self.entries += 1;
    }
}

/// Counts deposits; fails for `fail_on` cents.
#[derive(Default)]
struct Deposits<const FAIL: i64> {
    seen: u64,
}

impl<const FAIL: i64> Projection for Deposits<FAIL> {
    const NAME: &'static str = if FAIL == 0 {
        "obs_deposits"
    } else {
        "obs_poisoned"
    };

    fn event_types() -> Vec<&'static str> {
        vec!["obs.Deposited"]
    }

    fn handle(&mut self, event: EventView<'_>, _: &EventContext<'_>) -> Result<(), HandlerError> {
        let deposited: Deposited = event.decode()?;
        if FAIL != 0 && deposited.cents == FAIL {
            return Err(format!("cannot apply a deposit of {FAIL}").into());
        }
        self.seen += 1;
        Ok(())
    }

    fn reset(&mut self) {
        self.seen = 0;
    }
}

/// Two more read models of deposits, beside `Deposits`, to share their reads with it.
#[derive(Default)]
struct SharedA {
    seen: u64,
}

#[projection(name = "obs_shared_a")]
impl SharedA {
    #[handles]
    fn deposited(&mut self, _: &Deposited) {
        self.seen += 1;
    }
}

#[derive(Default)]
struct SharedB {
    seen: u64,
}

#[projection(name = "obs_shared_b")]
impl SharedB {
    #[handles]
    fn deposited(&mut self, _: &Deposited, ctx: &EventContext<'_>) {
        assert!(
            !ctx.event_id.is_nil(),
            "the whole context is read for this one"
        );
        self.seen += 1;
    }
}

fn fast() -> RunnerOptions {
    RunnerOptions::default()
        .max_attempts(1)
        .backoff(Duration::from_millis(1), Duration::from_millis(20))
        .poll_interval(Duration::from_millis(100))
        .lease_retry(Duration::from_millis(100))
}

fn deposit(cents: i64) -> Deposited {
    Deposited {
        cents,
        note: SECRET.into(),
    }
}

/// Opens account `id` with one deposit of `cents`, under `metadata`.
async fn open<S: EventStore>(store: &S, id: &str, cents: i64, metadata: Metadata) -> Position {
    let accounts = Account::repository(store);
    let mut account = accounts.create(id.to_owned());
    account.set_metadata(metadata);
    account.record(Opened {
        note: SECRET.into(),
    });
    account.record(deposit(cents));
    accounts.save(&mut account).await.unwrap().last_position
}

// --- capturing spans ------------------------------------------------------------------------

/// One span as a subscriber saw it: its name and every field recorded on it.
#[derive(Clone, Debug)]
struct SpanRecord {
    name: &'static str,
    fields: HashMap<&'static str, String>,
}

/// Every span seen, and where each live span id is in the list.
#[derive(Default)]
struct Seen {
    spans: Vec<SpanRecord>,
    by_id: HashMap<u64, usize>,
}

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Seen>>);

struct Fields<'a>(&'a mut HashMap<&'static str, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut record = SpanRecord {
            name: attrs.metadata().name(),
            fields: HashMap::new(),
        };
        attrs.record(&mut Fields(&mut record.fields));
        let mut seen = self.0.lock().unwrap();
        let index = seen.spans.len();
        seen.spans.push(record);
        seen.by_id.insert(id.into_u64(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut seen = self.0.lock().unwrap();
        if let Some(&index) = seen.by_id.get(&id.into_u64()) {
            values.record(&mut Fields(&mut seen.spans[index].fields));
        }
    }
}

impl Spans {
    /// Captures this thread's spans (a current-thread test runtime runs every task here).
    fn capture() -> (Spans, tracing::subscriber::DefaultGuard) {
        let spans = Spans::default();
        let subscriber = tracing_subscriber::registry().with(spans.clone());
        (spans, tracing::subscriber::set_default(subscriber))
    }

    fn named(&self, name: &str) -> Vec<SpanRecord> {
        let seen = self.0.lock().unwrap();
        seen.spans
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<SpanRecord> {
        self.0.lock().unwrap().spans.clone()
    }
}

/// The first span named `name` whose `field` is `value`.
fn span_with(spans: &Spans, name: &str, field: &str, value: &str) -> SpanRecord {
    spans
        .named(name)
        .into_iter()
        .find(|s| s.fields.get(field).map(String::as_str) == Some(value))
        .unwrap_or_else(|| panic!("no span {name} with {field} = {value}: {:#?}", spans.all()))
}

#[tokio::test]
async fn spans_carry_ids_versions_and_counts_and_never_a_payload() {
    let (spans, _guard) = Spans::capture();
    let store = InMemoryEventStore::new();
    let correlation = Uuid::now_v7();
    let causation = Uuid::now_v7();
    let metadata = Metadata::new()
        .with_tenant("t-obs")
        .with_correlation_id(correlation)
        .with_causation_id(causation);
    open(&store, "a-1", 5, metadata.clone()).await;
    let accounts = Account::repository(store.clone()).with_snapshots();
    accounts
        .update_with("a-1".to_owned(), metadata, |account| {
            account.record(deposit(7));
            account.record(deposit(8));
            Ok(())
        })
        .await
        .unwrap();
    accounts.flush_snapshots().await;

    let append = span_with(&spans, "eventsource.append", "stream_version", "2");
    assert_eq!(append.fields["stream"], "ObsAccount/a-1");
    assert_eq!(append.fields["aggregate_type"], "ObsAccount");
    assert_eq!(append.fields["events"], "2");
    assert_eq!(append.fields["expected"], "NoStream");
    assert_eq!(append.fields["tenant"], "t-obs");
    assert_eq!(append.fields["correlation_id"], correlation.to_string());
    assert_eq!(append.fields["causation_id"], causation.to_string());
    assert_eq!(append.fields["last_position"], "2");

    let save = span_with(&spans, "eventsource.save", "version", "4");
    assert_eq!(save.fields["events"], "2");
    assert_eq!(save.fields["correlation_id"], correlation.to_string());
    let load = span_with(&spans, "eventsource.load", "version", "2");
    assert_eq!(load.fields["from_snapshot"], "false");
    let update = span_with(&spans, "eventsource.update", "attempt", "1");
    assert_eq!(update.fields["stream"], "ObsAccount/a-1");
    span_with(&spans, "eventsource.snapshot.save", "version", "4");

    // A projection's batch, the relay's publish and the bus's consume.
    let bus = InMemoryBus::new(64);
    let mut consumer = bus
        .subscribe(&ConsumerGroup::new("obs-spans"))
        .await
        .unwrap();
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    subscriptions.add(Deposits::<0>::default());
    subscriptions.add_relay(Relay::new("obs_relay", bus.clone()));
    let running = subscriptions.start();
    let delivery = tokio::time::timeout(WAIT, consumer.next())
        .await
        .unwrap()
        .unwrap();
    running
        .wait_until(Position::new(4), WAIT)
        .await
        .expect("caught up");
    // The consumer opens the span to run its handler in.
    drop(delivery.span());
    consumer.ack(&delivery).await.unwrap();
    running.shutdown().await;

    let batch = span_with(&spans, "eventsource.projection.batch", "to", "4");
    assert!(
        batch.fields["projection"] == "obs_deposits" || batch.fields["projection"] == "obs_relay"
    );
    let relay = span_with(&spans, "eventsource.relay.publish", "relay", "obs_relay");
    assert_eq!(relay.fields["from"], "1");
    span_with(&spans, "eventsource.bus.publish", "bus", "memory");
    let consumed = span_with(&spans, "eventsource.bus.consume", "group", "obs-spans");
    assert_eq!(consumed.fields["bus"], "memory");
    assert_eq!(consumed.fields["attempt"], "1");
    assert_eq!(consumed.fields["event_type"], "obs.Opened");
    assert_eq!(consumed.fields["correlation_id"], correlation.to_string());
    assert_eq!(
        consumed.fields["event_id"],
        delivery.event().event_id.to_string()
    );

    for span in spans.all() {
        for value in span.fields.values() {
            assert!(!value.contains(SECRET), "payload in {span:?}");
        }
    }
}

#[tokio::test]
async fn correlation_flows_from_a_command_and_from_a_consumed_event() {
    let store = InMemoryEventStore::new();
    let correlation = Uuid::now_v7();
    let command = Metadata::new()
        .with_tenant("t-flow")
        .with_correlation_id(correlation);
    let accounts = Account::repository(&store);
    let mut account = accounts.create("a-flow".to_owned());
    account.record(Opened { note: "x".into() });
    accounts.save(&mut account).await.unwrap();
    accounts
        .update_with("a-flow".to_owned(), command, |account| {
            account.record(deposit(3));
            Ok(())
        })
        .await
        .unwrap();
    let stream = accounts.stream_id(&"a-flow".to_owned());
    let events = store
        .read_stream(&stream, StreamQuery::all())
        .await
        .unwrap();
    let deposited = events.last().unwrap();
    assert_eq!(deposited.metadata.correlation_id, Some(correlation));
    assert_eq!(deposited.metadata.tenant_id.as_deref(), Some("t-flow"));

    // Consumed from the bus, the deposit causes a ledger entry.
    let bus = InMemoryBus::new(8);
    let mut consumer = bus
        .subscribe(&ConsumerGroup::new("obs-flow").event::<Deposited>())
        .await
        .unwrap();
    bus.publish(&events).await.unwrap();
    let delivery = consumer.next().await.unwrap();
    let ledgers = Ledger::repository(&store);
    let mut ledger = ledgers.create("l-1".to_owned());
    ledger.set_metadata(delivery.reaction_metadata());
    ledger.record(Entered { cents: 3 });
    ledgers.save(&mut ledger).await.unwrap();
    consumer.ack(&delivery).await.unwrap();

    let entry = &store
        .read_stream(ledger.stream_id(), StreamQuery::all())
        .await
        .unwrap()[0];
    assert_eq!(entry.metadata.correlation_id, Some(correlation));
    assert_eq!(entry.metadata.causation_id, Some(deposited.event_id));
    assert_eq!(entry.metadata.tenant_id.as_deref(), Some("t-flow"));

    // The same from a projection's or process manager's context.
    let context = EventContext::of(deposited);
    let reaction = context.reaction_metadata();
    assert_eq!(reaction.correlation_id, Some(correlation));
    assert_eq!(reaction.causation_id, Some(deposited.event_id));
    // An event without a correlation id starts one: its own id.
    let first = EventContext::of(&events[0]).reaction_metadata();
    assert_eq!(first.correlation_id, Some(events[0].event_id));
}

// --- metrics ---------------------------------------------------------------------------------

/// The process's recorder, installed once.
fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this test binary");
        snapshotter
    })
}

/// A metric's name and sorted labels.
type MetricKey = (String, Vec<(String, String)>);
type Metrics = HashMap<MetricKey, DebugValue>;

/// Every metric's values, by name and sorted labels (a snapshot resets counters: take one).
fn metrics_now() -> Metrics {
    recorder()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let mut labels: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            ((key.key().name().to_owned(), labels), value)
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    labels
}

fn counter(metrics: &Metrics, name: &str, pairs: &[(&str, &str)]) -> u64 {
    match metrics.get(&(name.to_owned(), labels(pairs))) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {pairs:?}: {other:?}"),
    }
}

fn observations(metrics: &Metrics, name: &str, pairs: &[(&str, &str)]) -> usize {
    match metrics.get(&(name.to_owned(), labels(pairs))) {
        Some(DebugValue::Histogram(values)) => values.len(),
        other => panic!("{name} {pairs:?}: {other:?}"),
    }
}

#[tokio::test]
async fn metrics_count_appends_conflicts_retries_snapshots_dead_letters_and_the_bus() {
    use eventsource::telemetry::*;
    recorder();
    let store = InMemoryEventStore::new();
    // Ledger is written by this test alone: its counts are exact.
    let ledgers = Ledger::repository(&store).with_max_attempts(3);
    let mut ledger = ledgers.create("l-m".to_owned());
    ledger.record(Entered { cents: 1 });
    ledger.record(Entered { cents: 2 });
    ledgers.save(&mut ledger).await.unwrap();
    // A conflict: two writers from version 2.
    let mut first = ledgers.load("l-m".to_owned()).await.unwrap();
    let mut second = ledgers.load("l-m".to_owned()).await.unwrap();
    first.record(Entered { cents: 3 });
    second.record(Entered { cents: 4 });
    ledgers.save(&mut first).await.unwrap();
    assert!(matches!(
        ledgers.save(&mut second).await,
        Err(Error::Concurrency { .. })
    ));
    // A retry: a concurrent write during the first attempt of a command.
    let stream = ledgers.stream_id(&"l-m".to_owned());
    let mut attempts = 0;
    ledgers
        .update("l-m".to_owned(), |ledger| {
            attempts += 1;
            if attempts == 1 {
                let event = NewEvent::new(&Entered { cents: 5 }).unwrap();
                futures::executor::block_on(store.append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![event],
                ))
                .unwrap();
            }
            ledger.record(Entered { cents: 6 });
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(attempts, 2);

    // Snapshots: a miss, then a hit.
    let accounts = Account::repository(store.clone()).with_snapshots();
    open(&store, "a-m", 1, Metadata::new()).await;
    accounts.load("a-m".to_owned()).await.unwrap();
    accounts.snapshot("a-m".to_owned()).await.unwrap();
    accounts.load("a-m".to_owned()).await.unwrap();

    // A dead letter, the relay, the bus.
    open(&store, "a-poison", 13, Metadata::new()).await;
    let bus = InMemoryBus::new(64);
    let mut consumer = bus
        .subscribe(&ConsumerGroup::new("obs-metrics"))
        .await
        .unwrap();
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    subscriptions.add(Deposits::<13>::default());
    subscriptions.add_relay(Relay::new("obs_metrics_relay", bus.clone()));
    let running = subscriptions.start();
    let head = store.log_head().await.unwrap().last;
    running.wait_until(head, WAIT).await.unwrap();
    let delivery = consumer.next().await.unwrap();
    consumer.ack(&delivery).await.unwrap();
    assert_eq!(running.lag("obs_poisoned").await.unwrap(), 0);
    running.shutdown().await;

    // Three projections of one manager share their reads: a page one of them read is used by
    // the others.
    let shared_store = InMemoryEventStore::new();
    for i in 0..60 {
        open(&shared_store, &format!("a-shared-{i}"), 1, Metadata::new()).await;
    }
    let mut subscriptions =
        Subscriptions::new(shared_store.clone()).with_options(fast().batch_size(10));
    let deposits = subscriptions.add(Deposits::<0>::default());
    let a = subscriptions.add(SharedA::default());
    let b = subscriptions.add(SharedB::default());
    let running = subscriptions.start();
    let head = shared_store.log_head().await.unwrap().last;
    running.wait_until(head, WAIT).await.unwrap();
    running.shutdown().await;
    assert_eq!(
        (deposits.read().seen, a.read().seen, b.read().seen),
        (60, 60, 60)
    );

    // The aggregate cache: a load after a save is a hit; one after `with_cache` dropped the
    // entry (a failed save) is a miss.
    let cached = Cached::repository(&store).with_cache(4);
    let mut root = cached.create("c-1".to_owned());
    root.record(Deposited {
        cents: 1,
        note: String::new(),
    });
    cached.save(&mut root).await.unwrap();
    for _ in 0..3 {
        cached
            .update("c-1".to_owned(), |root| {
                root.record(Deposited {
                    cents: 1,
                    note: String::new(),
                });
                Ok(())
            })
            .await
            .unwrap();
    }
    let mut stale = cached.create("c-1".to_owned());
    stale.record(Deposited {
        cents: 1,
        note: String::new(),
    });
    assert!(cached.save(&mut stale).await.is_err(), "the stream exists");
    assert_eq!(cached.load("c-1".to_owned()).await.unwrap().deposits, 4);

    // Group commit: 32 appends at once through a grouped SQLite store share transactions.
    let grouped = SqliteEventStore::in_memory()
        .await
        .unwrap()
        .with_group_commit();
    let appends: Vec<_> = (0..32)
        .map(|i| {
            let grouped = grouped.clone();
            tokio::spawn(async move {
                let stream = StreamId::new("ObsGrouped", format!("g-{i}")).unwrap();
                let event = NewEvent::new(&Deposited {
                    cents: 1,
                    note: String::new(),
                })
                .unwrap();
                grouped
                    .append(&stream, ExpectedVersion::NoStream, vec![event])
                    .await
                    .unwrap()
            })
        })
        .collect();
    for append in appends {
        append.await.unwrap();
    }

    let metrics = metrics_now();
    let cache = |outcome| [("aggregate_type", "ObsCached"), ("outcome", outcome)];
    assert_eq!(counter(&metrics, CACHE_LOADS, &cache("hit")), 3);
    assert_eq!(counter(&metrics, CACHE_LOADS, &cache("miss")), 1);
    let Some(DebugValue::Histogram(sizes)) =
        metrics.get(&(GROUP_COMMIT_SIZE.to_owned(), Vec::new()))
    else {
        panic!("no group sizes recorded");
    };
    assert_eq!(
        sizes.iter().map(|size| size.into_inner()).sum::<f64>(),
        32.0,
        "every append in one group"
    );
    assert!(
        sizes.iter().any(|size| size.into_inner() > 1.0),
        "some appends shared a transaction: {sizes:?}"
    );
    let read = counter(&metrics, SHARED_PAGES, &[("outcome", "read")]);
    let reused = counter(&metrics, SHARED_PAGES, &[("outcome", "reused")]);
    assert!(
        read >= 6 && reused >= 1 && read < 3 * 7,
        "60 events in pages of 10 for three projections: {read} pages read, {reused} reused"
    );
    let ledger = [("aggregate_type", "ObsLedger")];
    assert_eq!(counter(&metrics, EVENTS_APPENDED, &ledger), 2 + 1 + 1 + 1);
    assert_eq!(counter(&metrics, CONCURRENCY_CONFLICTS, &ledger), 2);
    assert_eq!(counter(&metrics, COMMAND_RETRIES, &ledger), 1);
    assert_eq!(observations(&metrics, SAVE_SECONDS, &ledger), 5);
    assert_eq!(observations(&metrics, LOAD_SECONDS, &ledger), 4);
    assert_eq!(observations(&metrics, APPEND_SECONDS, &ledger), 6);
    let account = |outcome| [("aggregate_type", "ObsAccount"), ("outcome", outcome)];
    assert!(counter(&metrics, SNAPSHOT_LOADS, &account("miss")) >= 1);
    assert!(counter(&metrics, SNAPSHOT_LOADS, &account("hit")) >= 1);
    assert_eq!(
        counter(&metrics, DEAD_LETTERS, &[("projection", "obs_poisoned")]),
        1
    );
    assert!(counter(&metrics, BUS_PUBLISHED, &[("bus", "memory")]) >= 1);
    assert_eq!(
        counter(
            &metrics,
            BUS_CONSUMED,
            &[("bus", "memory"), ("group", "obs-metrics")]
        ),
        1
    );
    assert!(matches!(
        metrics.get(&(
            PROJECTION_LAG.to_owned(),
            labels(&[("projection", "obs_poisoned")])
        )),
        Some(DebugValue::Gauge(_))
    ));
}

// --- health and shutdown ---------------------------------------------------------------------

/// A projection and a relay on `store`, caught up: the report is healthy; a failed projection
/// makes it degraded, still 200.
async fn health_of<S>(store: &S)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    let position = open(store, "a-h", 2, Metadata::new()).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    subscriptions.add(Deposits::<0>::default());
    subscriptions.add_relay(Relay::new("obs_health_relay", InMemoryBus::new(64)));
    let running = subscriptions.start();
    running.wait_until(position, WAIT).await.unwrap();
    let report = running.health(store, &HealthOptions::default()).await;
    assert_eq!(report.status, Status::Healthy, "{report:?}");
    assert_eq!(report.http_status(), 200);
    assert_eq!(report.store.head, Some(position.get()));
    assert_eq!(report.components.len(), 2);
    for component in &report.components {
        assert_eq!(component.lag, Some(0), "{component:?}");
        assert_eq!(component.status, Status::Healthy);
    }
    assert!(report.to_json().contains(r#""status":"healthy""#));
    running.shutdown().await;

    let mut subscriptions =
        Subscriptions::new(store.clone()).with_options(fast().on_failure(OnFailure::Stop));
    let poisoned = subscriptions.add(Deposits::<2>::default());
    let running = subscriptions.start();
    let _ = running.wait_until(position, WAIT).await;
    assert!(matches!(poisoned.status().state, RunnerState::Failed(_)));
    let report = running.health(store, &HealthOptions::default()).await;
    assert_eq!(report.status, Status::Degraded, "{report:?}");
    assert_eq!(report.http_status(), 200);
    let component = &report.components[0];
    assert_eq!(component.state, "failed");
    assert_eq!(component.lag, Some(1));
    assert!(component.error.as_deref().unwrap().contains("deposit of 2"));
    let json = report.to_json();
    assert!(json.contains(r#""status":"degraded""#), "{json}");
    running.shutdown().await;
}

#[tokio::test]
async fn health_on_memory() {
    health_of(&InMemoryEventStore::new()).await;
}

#[tokio::test]
async fn health_on_sqlite() {
    let store = databases::sqlite().await.unwrap();
    health_of(store.store()).await;
}

#[tokio::test]
async fn health_on_postgres() {
    let Some(store) = databases::postgres().await else {
        return;
    };
    health_of(store.store()).await;
}

#[tokio::test]
async fn a_store_that_cannot_connect_is_unhealthy() {
    let Some(options) = databases::postgres_options().await else {
        return;
    };
    // Nothing listens on port 1.
    let pool = eventsource::sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.port(1));
    let store = PostgresEventStore::from_pool(pool);
    let options = HealthOptions::default().store_timeout(Duration::from_millis(500));
    let report = HealthReport::of_store(&store, &options).await;
    assert_eq!(report.status, Status::Unhealthy, "{report:?}");
    assert_eq!(report.http_status(), 503);
    assert!(report.store.error.is_some());
    let running = Subscriptions::new(store.clone()).start();
    let report = running.health(&store, &options).await;
    assert_eq!(report.status, Status::Unhealthy);
    running.shutdown().await;
}

/// On a signal, every projection stops after its batch with its checkpoint stored.
#[tokio::test]
async fn shutdown_on_a_signal_stores_checkpoints() {
    let store = databases::sqlite().await.unwrap();
    let store = store.store().clone();
    let position = open(&store, "a-s", 4, Metadata::new()).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let deposits = subscriptions.add_durable(Deposits::<0>::default());
    let running: RunningSubscriptions = subscriptions.start();
    running.wait_until(position, WAIT).await.unwrap();
    let (signal, received) = tokio::sync::oneshot::channel::<()>();
    let stopping = async {
        running
            .shutdown_on(async {
                let _ = received.await;
            })
            .await;
    };
    let send = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        signal.send(()).unwrap();
    };
    tokio::time::timeout(WAIT, futures::future::join(stopping, send))
        .await
        .expect("stopped on the signal");
    assert_eq!(deposits.status().state, RunnerState::Stopped);
    assert_eq!(
        store.checkpoint("obs_deposits").await.unwrap(),
        Some(position)
    );
}
