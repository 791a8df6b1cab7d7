//! Buses for tests, each under a fresh application name, and the behaviour every bus must have
//! (the conformance suite `tests/bus.rs` runs against each).
//!
//! Redis, RabbitMQ, NATS and Kafka are the real servers on this machine (`REDIS_URL`,
//! `AMQP_URL`, `NATS_URL`, `KAFKA_BOOTSTRAP_SERVERS`, defaulting to the local ports; Kafka is
//! `tansu`, started by `.ci/kafka.sh`). When one cannot be reached, its tests are skipped with a
//! message on the terminal, unless `CI` is set, where they fail.

use eventsource::bus::kafka::KafkaBus;
use eventsource::bus::nats::NatsBus;
use eventsource::bus::rabbitmq::RabbitMqBus;
use eventsource::bus::redis::RedisBus;
use eventsource::bus::{BusConsumer, ConsumerGroup, Delivery, EventBus, InMemoryBus};
use eventsource::prelude::*;
use eventsource::{Metadata, NewEvent};
use eventsource::{Position, RecordedEvent, StreamId};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::Write;
use std::time::Duration;

/// A bus under test: the bus, and what the suite needs that the trait does not say (dead
/// letters, teardown).
pub trait TestBus: EventBus + Clone {
    /// The events `group` dead-lettered.
    fn dead_letters(&self, group: &str) -> impl Future<Output = Vec<RecordedEvent>> + Send;
    /// Removes what the test created on the server.
    fn teardown(&self, groups: &[&str]) -> impl Future<Output = ()> + Send;
    /// How long a crashed consumer's delivery may take to come back.
    fn redelivery_within(&self) -> Duration;
    /// Whether a group receives the events of different streams in the order they were
    /// published (true but for Kafka, whose partitions each keep their own order only).
    fn orders_across_streams(&self) -> bool {
        true
    }
}

impl TestBus for InMemoryBus {
    async fn dead_letters(&self, group: &str) -> Vec<RecordedEvent> {
        InMemoryBus::dead_letters(self, group)
    }
    async fn teardown(&self, _: &[&str]) {}
    fn redelivery_within(&self) -> Duration {
        Duration::from_secs(1)
    }
}

impl TestBus for RedisBus {
    async fn dead_letters(&self, group: &str) -> Vec<RecordedEvent> {
        RedisBus::dead_letters(self, group).await.unwrap()
    }
    async fn teardown(&self, _: &[&str]) {
        self.destroy().await.unwrap();
    }
    fn redelivery_within(&self) -> Duration {
        Duration::from_secs(10)
    }
}

impl TestBus for RabbitMqBus {
    async fn dead_letters(&self, group: &str) -> Vec<RecordedEvent> {
        // Dead-lettering is asynchronous in the broker: give it a moment.
        let mut letters = Vec::new();
        for _ in 0..20 {
            letters.extend(self.take_dead_letters(group).await.unwrap());
            if !letters.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        letters
    }
    async fn teardown(&self, groups: &[&str]) {
        self.destroy(groups).await.unwrap();
    }
    fn redelivery_within(&self) -> Duration {
        Duration::from_secs(10)
    }
}

impl TestBus for NatsBus {
    async fn dead_letters(&self, group: &str) -> Vec<RecordedEvent> {
        NatsBus::dead_letters(self, group).await.unwrap()
    }
    async fn teardown(&self, _: &[&str]) {
        self.destroy().await.unwrap();
    }
    fn redelivery_within(&self) -> Duration {
        Duration::from_secs(10)
    }
}

impl TestBus for KafkaBus {
    async fn dead_letters(&self, group: &str) -> Vec<RecordedEvent> {
        KafkaBus::dead_letters(self, group).await.unwrap()
    }
    async fn teardown(&self, groups: &[&str]) {
        self.destroy(groups).await.unwrap();
    }
    fn redelivery_within(&self) -> Duration {
        Duration::from_secs(20)
    }
    fn orders_across_streams(&self) -> bool {
        false
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Whether the server at `host:port` answers; if not, skip (or fail under CI).
fn reachable(service: &str, url: &str, host_port: &str) -> bool {
    let addr = host_port
        .parse()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => true,
        Err(err) if in_ci() => {
            panic!("{service} is unreachable at {url} and CI is set, so this test fails: {err}")
        }
        Err(err) => {
            let test = std::thread::current().name().unwrap_or("?").to_owned();
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED {test}: {service} is unreachable at {url} ({err}); set CI=true to fail instead"
            );
            false
        }
    }
}

/// A fresh application name.
pub fn fresh_name() -> String {
    format!("es-test-{}", uuid::Uuid::now_v7().simple())
}

/// An in-memory bus.
pub async fn memory_bus() -> Option<InMemoryBus> {
    Some(InMemoryBus::new(256))
}

/// The Redis URL tests use.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A Redis bus under a fresh name, claiming idle deliveries after half a second.
pub async fn redis_bus() -> Option<RedisBus> {
    let url = redis_url();
    if !reachable("Redis", &url, "127.0.0.1:6379") {
        return None;
    }
    Some(
        RedisBus::connect(&url, &fresh_name())
            .await
            .expect("connect to Redis")
            .claim_after(Duration::from_millis(500)),
    )
}

/// The AMQP URL tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A RabbitMQ bus under a fresh name.
pub async fn rabbitmq_bus() -> Option<RabbitMqBus> {
    let url = amqp_url();
    if !reachable("RabbitMQ", &url, "127.0.0.1:5672") {
        return None;
    }
    Some(
        RabbitMqBus::connect(&url, &fresh_name())
            .await
            .expect("connect to RabbitMQ"),
    )
}

/// The NATS URL tests use.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A NATS bus under a fresh name, redelivering after a second.
pub async fn nats_bus() -> Option<NatsBus> {
    let url = nats_url();
    if !reachable("NATS", &url, "127.0.0.1:4222") {
        return None;
    }
    Some(
        NatsBus::connect(&url, &fresh_name())
            .await
            .expect("connect to NATS")
            .ack_wait(Duration::from_secs(1)),
    )
}

/// The Kafka bootstrap servers tests use.
pub fn kafka_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A Kafka bus under a fresh name (4 partitions).
pub async fn kafka_bus() -> Option<KafkaBus> {
    let servers = kafka_servers();
    let first = servers.split(',').next().unwrap_or_default().to_owned();
    if !reachable("Kafka", &servers, &first) {
        return None;
    }
    Some(
        KafkaBus::connect(&servers, &fresh_name())
            .await
            .expect("connect to Kafka"),
    )
}

// --- the suite's events ---------------------------------------------------------------------

/// An order was placed.
#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "bus.OrderPlaced", aggregate = "BusOrder", version = 2, upcast(from_version = 1, json = placed_v1))]
pub struct OrderPlaced {
    /// Amount in cents.
    pub cents: i64,
    /// Currency (added in version 2).
    pub currency: String,
}

fn placed_v1(mut v: serde_json::Value) -> Result<serde_json::Value, String> {
    v["currency"] = "EUR".into();
    Ok(v)
}

/// An order was shipped.
#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "bus.OrderShipped", aggregate = "BusOrder")]
pub struct OrderShipped {
    /// Carrier.
    pub carrier: String,
}

/// A user signed up.
#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "bus.UserSignedUp", aggregate = "BusUser")]
pub struct UserSignedUp {
    /// Email.
    pub email: String,
}

/// A read model fed by deliveries: the typed path.
#[derive(Default, Debug)]
pub struct Revenue {
    /// Cents by currency.
    pub by_currency: HashMap<String, i64>,
}

#[projection(name = "bus.revenue")]
impl Revenue {
    #[handles]
    fn placed(&mut self, e: &OrderPlaced) {
        *self.by_currency.entry(e.currency.clone()).or_default() += e.cents;
    }
}

/// A stored event at `position`, as the relay would publish it.
pub fn recorded(
    aggregate: &str,
    id: &str,
    version: u64,
    position: u64,
    event: NewEvent,
) -> RecordedEvent {
    RecordedEvent::new(
        StreamId::new(aggregate, id).unwrap(),
        version,
        Position::new(position),
        event,
    )
}

fn placed(cents: i64) -> NewEvent {
    NewEvent::new(&OrderPlaced {
        cents,
        currency: "USD".into(),
    })
    .unwrap()
}

/// Waits for the next delivery, or `None` after `within`.
pub async fn next_within<C: BusConsumer>(consumer: &mut C, within: Duration) -> Option<Delivery> {
    match tokio::time::timeout(within, consumer.next()).await {
        Ok(delivery) => Some(delivery.expect("a delivery")),
        Err(_) => None,
    }
}

/// Takes and acknowledges deliveries until none comes for `quiet`.
pub async fn drain<C: BusConsumer>(consumer: &mut C, quiet: Duration) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    while let Some(delivery) = next_within(consumer, quiet).await {
        consumer.ack(&delivery).await.unwrap();
        events.push(delivery.event().clone());
    }
    events
}

const QUIET: Duration = Duration::from_millis(1500);
const PATIENCE: Duration = Duration::from_secs(10);

// --- the cases ------------------------------------------------------------------------------

/// Every field of the event and its metadata arrives as published; typed decoding upcasts.
pub async fn round_trip_every_field<B: TestBus>(bus: B) {
    let mut consumer = bus.subscribe(&ConsumerGroup::new("audit")).await.unwrap();
    let mut metadata = Metadata::new()
        .with_tenant("tenant-7")
        .with_actor("alice")
        .with_correlation_id(uuid::Uuid::now_v7())
        .with_causation_id(uuid::Uuid::now_v7());
    metadata.extra.insert(
        "source".into(),
        serde_json::json!({"ip": "10.0.0.1", "n": [1, 2]}),
    );
    // Stored at schema version 1 by an older release: no currency.
    let old =
        NewEvent::from_json("bus.OrderPlaced", 1, r#"{"cents":1250}"#).with_metadata(metadata);
    let event = recorded("BusOrder", "o-1", 3, 41, old);
    bus.publish(std::slice::from_ref(&event)).await.unwrap();

    let delivery = next_within(&mut consumer, PATIENCE)
        .await
        .expect("delivered");
    assert_eq!(delivery.event(), &event, "every field round-trips");
    assert_eq!(delivery.attempt(), 1);
    assert!(!delivery.is_redelivery());
    let typed: OrderPlaced = delivery.decode().unwrap();
    assert_eq!(
        typed,
        OrderPlaced {
            cents: 1250,
            currency: "EUR".into()
        },
        "decoded and upcast as on load"
    );
    let mut revenue = Revenue::default();
    delivery.dispatch(&mut revenue).unwrap();
    assert_eq!(revenue.by_currency["EUR"], 1250);
    assert_eq!(delivery.context().position, Position::new(41));
    consumer.ack(&delivery).await.unwrap();
    assert!(
        next_within(&mut consumer, QUIET).await.is_none(),
        "acknowledged: not again"
    );
    bus.teardown(&["audit"]).await;
}

/// Groups by event type, by aggregate type, and for everything each get exactly theirs.
pub async fn filters<B: TestBus>(bus: B) {
    let mut shipping = bus
        .subscribe(&ConsumerGroup::new("shipping").event::<OrderShipped>())
        .await
        .unwrap();
    let mut users = bus
        .subscribe(&ConsumerGroup::new("users").aggregate_types(["BusUser"]))
        .await
        .unwrap();
    let mut all = bus.subscribe(&ConsumerGroup::new("all")).await.unwrap();
    let events = vec![
        recorded("BusOrder", "o-1", 1, 1, placed(10)),
        recorded(
            "BusUser",
            "u-1",
            1,
            2,
            NewEvent::new(&UserSignedUp {
                email: "a@example.com".into(),
            })
            .unwrap(),
        ),
        recorded(
            "BusOrder",
            "o-1",
            2,
            3,
            NewEvent::new(&OrderShipped {
                carrier: "dhl".into(),
            })
            .unwrap(),
        ),
    ];
    bus.publish(&events).await.unwrap();
    let types =
        |events: Vec<RecordedEvent>| events.into_iter().map(|e| e.event_type).collect::<Vec<_>>();
    assert_eq!(
        types(drain(&mut shipping, QUIET).await),
        ["bus.OrderShipped"]
    );
    assert_eq!(types(drain(&mut users, QUIET).await), ["bus.UserSignedUp"]);
    let everything = drain(&mut all, QUIET).await;
    if bus.orders_across_streams() {
        assert_eq!(
            types(everything),
            ["bus.OrderPlaced", "bus.UserSignedUp", "bus.OrderShipped"]
        );
    } else {
        assert_in_stream_order(&everything, &events);
    }
    bus.teardown(&["shipping", "users", "all"]).await;
}

/// Two consumers of one group share the events, none twice; another group gets them all.
pub async fn consumers_share_groups_copy<B: TestBus>(bus: B) {
    let subscription = ConsumerGroup::new("workers").prefetch(1);
    let first = bus.subscribe(&subscription).await.unwrap();
    let second = bus.subscribe(&subscription).await.unwrap();
    let mut audit = bus.subscribe(&ConsumerGroup::new("audit")).await.unwrap();
    let events: Vec<_> = (1..=30)
        .map(|n| recorded("BusOrder", &format!("o-{n}"), 1, n, placed(n as i64)))
        .collect();
    bus.publish(&events).await.unwrap();

    let work = |mut consumer: B::Consumer| async move {
        let mut seen = Vec::new();
        while let Some(delivery) = next_within(&mut consumer, QUIET).await {
            // Slow enough that the other consumer gets its share.
            tokio::time::sleep(Duration::from_millis(10)).await;
            consumer.ack(&delivery).await.unwrap();
            seen.push(delivery.event().event_id);
        }
        seen
    };
    let (a, b) = tokio::join!(work(first), work(second));
    let ids: HashSet<_> = a.iter().chain(&b).copied().collect();
    assert_eq!(a.len() + b.len(), 30, "no event twice");
    assert_eq!(ids.len(), 30, "every event once");
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both consumers worked: {} and {}",
        a.len(),
        b.len()
    );
    assert_eq!(
        drain(&mut audit, QUIET).await.len(),
        30,
        "the other group got all"
    );
    bus.teardown(&["workers", "audit"]).await;
}

/// A consumer that dies before acknowledging: the event goes to another consumer of the group.
pub async fn unacknowledged_is_delivered_again<B: TestBus>(bus: B) {
    let subscription = ConsumerGroup::new("mailer");
    let mut doomed = bus.subscribe(&subscription).await.unwrap();
    let event = recorded("BusOrder", "o-9", 1, 9, placed(99));
    bus.publish(std::slice::from_ref(&event)).await.unwrap();
    let taken = next_within(&mut doomed, PATIENCE).await.expect("delivered");
    assert_eq!(taken.event().event_id, event.event_id);
    drop(taken);
    drop(doomed); // the crash: nothing acknowledged

    let mut survivor = bus.subscribe(&subscription).await.unwrap();
    let again = next_within(&mut survivor, bus.redelivery_within())
        .await
        .expect("delivered again after the crash");
    assert_eq!(again.event(), &event);
    assert!(
        again.is_redelivery(),
        "counted as a redelivery: attempt {}",
        again.attempt()
    );
    survivor.ack(&again).await.unwrap();
    assert!(next_within(&mut survivor, QUIET).await.is_none());
    bus.teardown(&["mailer"]).await;
}

/// A nacked event comes back with its attempt counted, and after the last attempt it is
/// dead-lettered, while the events behind it go on.
pub async fn nack_retries_then_dead_letters<B: TestBus>(bus: B) {
    let mut consumer = bus
        .subscribe(&ConsumerGroup::new("fragile").max_deliveries(2))
        .await
        .unwrap();
    let poison = recorded("BusOrder", "o-1", 1, 1, placed(-1));
    let fine = recorded("BusOrder", "o-2", 1, 2, placed(5));
    bus.publish(&[poison.clone(), fine.clone()]).await.unwrap();

    let mut attempts = Vec::new();
    let mut acked = Vec::new();
    while let Some(delivery) =
        next_within(&mut consumer, bus.redelivery_within().min(QUIET * 2)).await
    {
        if delivery.event().event_id == poison.event_id {
            attempts.push(delivery.attempt());
            consumer.nack(&delivery).await.unwrap();
        } else {
            consumer.ack(&delivery).await.unwrap();
            acked.push(delivery.event().event_id);
        }
    }
    assert_eq!(attempts, [1, 2], "tried twice, then no more");
    assert_eq!(acked, [fine.event_id], "the next event was not blocked");
    let dead = bus.dead_letters("fragile").await;
    assert_eq!(
        dead.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        [poison.event_id],
        "dead-lettered, whole"
    );
    assert_eq!(dead[0], poison);
    bus.teardown(&["fragile"]).await;
}

/// `received` is `published`, each stream's events in their published order (the streams
/// interleaved in any way).
pub fn assert_in_stream_order(received: &[RecordedEvent], published: &[RecordedEvent]) {
    let by_stream = |events: &[RecordedEvent]| {
        let mut streams: HashMap<String, Vec<uuid::Uuid>> = HashMap::new();
        for event in events {
            streams
                .entry(event.stream.to_string())
                .or_default()
                .push(event.event_id);
        }
        streams
    };
    assert_eq!(received.len(), published.len(), "every event, once");
    assert_eq!(
        by_stream(received),
        by_stream(published),
        "every stream whole and in order"
    );
}

/// Events of a stream arrive in version order, interleaved with other streams.
pub async fn per_stream_order<B: TestBus>(bus: B) {
    let mut consumer = bus.subscribe(&ConsumerGroup::new("ordered")).await.unwrap();
    let mut events = Vec::new();
    let mut position = 0;
    for version in 1..=20 {
        for stream in ["a", "b", "c"] {
            position += 1;
            events.push(recorded("BusOrder", stream, version, position, placed(1)));
        }
    }
    for batch in events.chunks(7) {
        bus.publish(batch).await.unwrap();
    }
    let received = drain(&mut consumer, QUIET).await;
    assert_eq!(received.len(), 60);
    let mut last: HashMap<String, u64> = HashMap::new();
    for event in received {
        let previous = last.insert(event.stream.aggregate_id().to_owned(), event.version);
        assert_eq!(
            previous.unwrap_or(0) + 1,
            event.version,
            "in order, none missing"
        );
    }
    bus.teardown(&["ordered"]).await;
}

/// A consumer whose `next()` is cancelled again and again (the usual `timeout` or `select!`
/// loop) still gets every event of a stream, in version order, at once: a cancelled `next()`
/// loses nothing.
pub async fn cancelled_next_loses_nothing<B: TestBus>(bus: B) {
    const EVENTS: u64 = 300;
    let mut consumer = bus
        .subscribe(&ConsumerGroup::new("impatient"))
        .await
        .unwrap();
    let events: Vec<_> = (1..=EVENTS)
        .map(|version| recorded("BusOrder", "o-1", version, version, placed(1)))
        .collect();
    // Published as a relay does, batch by batch, while the consumer is waiting.
    let publisher = tokio::spawn({
        let bus = bus.clone();
        async move {
            for batch in events.chunks(5) {
                bus.publish(batch).await.unwrap();
                // Longer than the consumer's timeout: most replies come to a cancelled call.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut last = 0;
    while last < EVENTS && tokio::time::Instant::now() < deadline {
        let Ok(delivery) = tokio::time::timeout(Duration::from_millis(20), consumer.next()).await
        else {
            continue; // cancelled: the next call must pick up where this one stopped
        };
        let delivery = delivery.expect("a delivery");
        let version = delivery.event().version;
        if version <= last {
            assert!(
                delivery.is_redelivery(),
                "version {version} again after {last}, not as a redelivery"
            );
        } else {
            assert_eq!(version, last + 1, "in version order, none skipped");
            last = version;
        }
        consumer.ack(&delivery).await.unwrap();
    }
    publisher.await.unwrap();
    assert_eq!(last, EVENTS, "every event within the deadline");
    bus.teardown(&["impatient"]).await;
}
