//! Kafka: one topic per application, keyed by stream, consumer groups that commit offsets only
//! after processing.

use super::wire::check_name;
use super::{BusConsumer, ConsumerGroup, Delivery, EventBus, Filter, Tag};
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use futures::future::Either;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

const BUS: &str = "kafka";

/// The header that carries the event id, for consumers (and tools) to de-duplicate without
/// decoding the payload.
pub const EVENT_ID_HEADER: &str = "event-id";

/// The topic an application's events go to, as it is created when missing: its partitions and
/// replication factor. An existing topic is used as it is.
///
/// ```
/// use eventsource::bus::kafka::TopicSpec;
/// let spec = TopicSpec::new(12).replication(3);
/// assert_eq!(spec.partition_count(), 12);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    partitions: i32,
    replication: i32,
}

impl Default for TopicSpec {
    /// 4 partitions, replication factor 1.
    fn default() -> Self {
        TopicSpec {
            partitions: 4,
            replication: 1,
        }
    }
}

impl TopicSpec {
    /// `partitions` partitions (at least 1), replication factor 1.
    pub fn new(partitions: u16) -> Self {
        TopicSpec {
            partitions: i32::from(partitions.max(1)),
            replication: 1,
        }
    }

    /// The replication factor (at least 1; 3 is usual on a production cluster).
    pub fn replication(mut self, factor: u16) -> Self {
        self.replication = i32::from(factor.max(1));
        self
    }

    /// The number of partitions: how many consumers of one group can work at once.
    pub fn partition_count(&self) -> i32 {
        self.partitions
    }
}

/// A bus on Kafka (feature `kafka`).
///
/// Every event of the application `name` goes to the topic `name` (created with
/// [`TopicSpec`]'s partitions if missing), keyed by its stream (`{aggregate type}/{id}`): the
/// events of one stream share a partition, so they keep their order. The value is the event as
/// JSON (every field and its metadata), and the headers carry `event-id`, `event-type` and
/// `aggregate-type`. The producer is idempotent with `acks=all`;
/// [`publish`](EventBus::publish) returns once every message of the batch is confirmed.
///
/// A [`ConsumerGroup`]'s group is the Kafka consumer group `{name}.{group}`, reading a new
/// group's partitions from the beginning. Its consumers share the partitions; the group's
/// filter is applied in the client (events it does not take are passed over, and count as
/// processed). Offsets are committed by hand, only for processed events: a partition's
/// committed offset is the oldest event handed out and not yet acknowledged (or dead-lettered),
/// so a consumer that stops without acknowledging leaves its events to the next owner of the
/// partition. A [nack](BusConsumer::nack) gives the event back to the same consumer at once,
/// ahead of the events behind it; after [`ConsumerGroup::max_deliveries`] attempts it goes to
/// the topic `{name}.dlq`, with the group in its `group` header, and counts as processed.
///
/// Kafka keeps no delivery count. The consumer counts the attempts it makes itself; what other
/// consumers of the group were handed is noted in a second group, `{name}.{group}.handed`
/// (committed without waiting as each event is handed out, and waiting when the consumer gives
/// up its partitions), so an event that comes back after
/// a consumer stopped without acknowledging it has an attempt of 2 — not more: a consumer that
/// crashes on an event every time is not stopped by `max_deliveries`.
///
/// Each consumer fetches ahead, up to [`ConsumerGroup::prefetch`] events, in a task that also
/// serves the group's rebalances: a consumer whose `next` is not called while its prefetch is
/// full holds up the rebalances of its group. [`subscribe`](EventBus::subscribe) returns once
/// the group has handed the new consumer its partitions.
///
/// ```no_run
/// # async fn run() -> eventsource::Result<()> {
/// use eventsource::bus::kafka::{KafkaBus, TopicSpec};
/// let bus = KafkaBus::connect_with("127.0.0.1:9092", "shop", TopicSpec::new(8)).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KafkaBus {
    servers: String,
    name: String,
    dead_topic: String,
    producer: FutureProducer,
    join_timeout: Duration,
    /// The consumers subscribed through this bus (or its clones), for `destroy` to stop them.
    consumers: Arc<Mutex<Vec<Subscribed>>>,
}

impl fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBus")
            .field("servers", &self.servers)
            .field("topic", &self.name)
            .finish_non_exhaustive()
    }
}

/// How long a broker request (metadata, topic creation, a synchronous commit) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaBus {
    /// Connects to the Kafka cluster at `bootstrap_servers` (`host:port[,host:port…]`) for the
    /// application `name` (letters, digits, `-`, `_`), whose topic gets the default
    /// [`TopicSpec`] (4 partitions) if it is created.
    pub async fn connect(bootstrap_servers: &str, name: &str) -> Result<Self> {
        Self::connect_with(bootstrap_servers, name, TopicSpec::default()).await
    }

    /// [`connect`](Self::connect), creating the topics (if missing) as `topic` says.
    pub async fn connect_with(
        bootstrap_servers: &str,
        name: &str,
        topic: TopicSpec,
    ) -> Result<Self> {
        check_name("name", name)?;
        let producer: FutureProducer = client_config(bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(Error::bus(BUS, "connect"))?;
        let bus = KafkaBus {
            servers: bootstrap_servers.to_owned(),
            name: name.to_owned(),
            dead_topic: format!("{name}.dlq"),
            producer,
            join_timeout: Duration::from_secs(30),
            consumers: Arc::default(),
        };
        let admin = bus.admin()?;
        let topics = [
            NewTopic::new(
                &bus.name,
                topic.partitions,
                TopicReplication::Fixed(topic.replication),
            ),
            NewTopic::new(
                &bus.dead_topic,
                1,
                TopicReplication::Fixed(topic.replication),
            ),
        ];
        let results = admin
            .create_topics(&topics, &admin_options())
            .await
            .map_err(Error::bus(BUS, "create topic"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::Bus {
                        bus: BUS,
                        operation: "create topic",
                        source: format!("{topic}: {code}").into(),
                    });
                }
            }
        }
        // The producer learns the new topic's partitions before the first publish needs them.
        let producer = bus.producer.clone();
        let topic_name = bus.name.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic_name), REQUEST_TIMEOUT)
                .map(drop)
        })
        .await
        .map_err(Error::bus(BUS, "connect"))?
        .map_err(Error::bus(BUS, "connect"))?;
        Ok(bus)
    }

    /// How long [`subscribe`](EventBus::subscribe) waits for the group to hand the new consumer
    /// its partitions (default 30 s).
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// The topic the events go to.
    pub fn topic(&self) -> &str {
        &self.name
    }

    /// The dead-letter topic.
    pub fn dead_letter_topic(&self) -> &str {
        &self.dead_topic
    }

    /// The Kafka consumer group of the bus's group `group`.
    pub fn group_id(&self, group: &str) -> String {
        format!("{}.{}", self.name, group)
    }

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>> {
        client_config(&self.servers)
            .create()
            .map_err(Error::bus(BUS, "connect"))
    }

    /// The events `group` dead-lettered, oldest first.
    pub async fn dead_letters(&self, group: &str) -> Result<Vec<RecordedEvent>> {
        let servers = self.servers.clone();
        let topic = self.dead_topic.clone();
        let group = group.to_owned();
        tokio::task::spawn_blocking(move || read_dead_letters(&servers, &topic, &group))
            .await
            .map_err(Error::bus(BUS, "read dead letters"))?
    }

    /// Deletes the topic and its dead letters, and (as far as the broker allows) the consumer
    /// groups of `groups`: for tests and teardown. The consumers subscribed through this bus
    /// are stopped first (they receive nothing more): a consumer still fetching from a topic
    /// that `tansu` deletes crashes its process (see docs/buses.md, Kafka).
    pub async fn destroy(&self, groups: &[&str]) -> Result<()> {
        self.stop_consumers().await;
        let admin = self.admin()?;
        let results = admin
            .delete_topics(&[&self.name, &self.dead_topic], &admin_options())
            .await
            .map_err(Error::bus(BUS, "delete topic"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => {
                    return Err(Error::Bus {
                        bus: BUS,
                        operation: "delete topic",
                        source: format!("{topic}: {code}").into(),
                    });
                }
            }
        }
        let ids: Vec<String> = groups
            .iter()
            .flat_map(|group| {
                let id = self.group_id(group);
                [format!("{id}.handed"), id]
            })
            .collect();
        if !ids.is_empty() {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            // Best effort: groups also expire on their own once empty.
            if let Err(error) = admin.delete_groups(&ids, &admin_options()).await {
                tracing::debug!(%error, "kafka bus: consumer groups not deleted");
            }
        }
        Ok(())
    }
}

/// A consumer subscribed through a bus: the consumer while it lives, and its partitions while
/// it (or its closing, after it was dropped) still holds them.
struct Subscribed {
    consumer: Weak<StreamConsumer<GroupContext>>,
    state: Weak<Mutex<State>>,
}

impl KafkaBus {
    /// Makes every consumer of this bus leave its group, and waits until each has given up its
    /// partitions (a dropped one closes in the background) and its last fetch is answered.
    async fn stop_consumers(&self) {
        let states: Vec<Arc<Mutex<State>>> = {
            let mut consumers = self
                .consumers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            consumers.retain(|subscribed| subscribed.state.strong_count() > 0);
            for subscribed in consumers.iter() {
                if let Some(consumer) = subscribed.consumer.upgrade() {
                    consumer.unsubscribe();
                }
            }
            consumers
                .iter()
                .filter_map(|subscribed| subscribed.state.upgrade())
                .collect()
        };
        if states.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        while tokio::time::Instant::now() < deadline
            && states
                .iter()
                .any(|state| !lock(state).partitions.is_empty())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(states);
        tokio::time::sleep(FETCH_WAIT * 2).await;
    }
}

/// How long the broker may hold a fetch that has nothing to return.
const FETCH_WAIT: Duration = Duration::from_millis(100);

fn client_config(servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", servers)
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("log_level", "4");
    config
}

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(REQUEST_TIMEOUT))
        .request_timeout(Some(REQUEST_TIMEOUT))
}

fn header<'a>(message: &'a impl Message, name: &str) -> Option<&'a [u8]> {
    message
        .headers()?
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| header.value)
}

/// Reads the dead-letter topic from its start to its end (blocking).
fn read_dead_letters(servers: &str, topic: &str, group: &str) -> Result<Vec<RecordedEvent>> {
    let error = |operation| Error::bus(BUS, operation);
    // A group id is needed to assign partitions; it never joins the group nor commits.
    let consumer: BaseConsumer = client_config(servers)
        .set("group.id", format!("{topic}.reader"))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(error("read dead letters"))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, REQUEST_TIMEOUT)
        .map_err(error("read dead letters"))?;
    let mut letters = Vec::new();
    if high <= low {
        return Ok(letters);
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(low))
        .map_err(error("read dead letters"))?;
    consumer
        .assign(&assignment)
        .map_err(error("read dead letters"))?;
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    while std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.map_err(error("read dead letters"))?;
        if header(&message, "group") == Some(group.as_bytes())
            && let Some(event) = message.payload().and_then(|p| super::wire::decode(p).ok())
        {
            letters.push(event);
        }
        if message.offset() + 1 >= high {
            return Ok(letters);
        }
    }
    Err(Error::Bus {
        bus: BUS,
        operation: "read dead letters",
        source: format!("{topic} not read to its end within {REQUEST_TIMEOUT:?}").into(),
    })
}

impl KafkaBus {
    /// [`EventBus::publish`], without its span and metrics.
    async fn publish_unobserved(&self, events: &[RecordedEvent]) -> Result<()> {
        // Queued in order (the idempotent producer keeps each partition's order through
        // retries), then every delivery report awaited.
        let mut reports: Vec<DeliveryFuture> = Vec::with_capacity(events.len());
        for event in events {
            let key = event.stream.to_string();
            let payload = super::wire::encode(event);
            let id = event.event_id.to_string();
            let headers = OwnedHeaders::new_with_capacity(3)
                .insert(Header {
                    key: EVENT_ID_HEADER,
                    value: Some(&id),
                })
                .insert(Header {
                    key: "event-type",
                    value: Some(&event.event_type),
                })
                .insert(Header {
                    key: "aggregate-type",
                    value: Some(event.stream.aggregate_type()),
                });
            let mut record = FutureRecord::to(&self.name)
                .key(&key)
                .payload(&payload)
                .headers(headers);
            loop {
                match self.producer.send_result(record) {
                    Ok(report) => {
                        reports.push(report);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: wait for the oldest report, then queue again.
                        record = back;
                        if reports.is_empty() {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        } else {
                            let oldest = reports.remove(0);
                            delivered(oldest.await)?;
                        }
                    }
                    Err((error, _)) => return Err(Error::bus(BUS, "publish")(error)),
                }
            }
        }
        for report in reports {
            delivered(report.await)?;
        }
        Ok(())
    }
}

fn delivered(
    report: std::result::Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<()> {
    match report {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(Error::bus(BUS, "publish")(error)),
        Err(canceled) => Err(Error::bus(BUS, "publish")(canceled)),
    }
}

impl EventBus for KafkaBus {
    type Consumer = KafkaConsumer;

    async fn publish(&self, events: &[RecordedEvent]) -> Result<()> {
        crate::telemetry::publish(BUS, events.len(), self.publish_unobserved(events)).await
    }

    async fn subscribe(&self, subscription: &ConsumerGroup) -> Result<KafkaConsumer> {
        let group = subscription.checked_group()?.to_owned();
        let group_id = self.group_id(&group);
        let state = Arc::new(Mutex::new(State::default()));
        let (assigned, mut assignments) = watch::channel(0u64);
        let handed: BaseConsumer = client_config(&self.servers)
            .set("group.id", format!("{group_id}.handed"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(Error::bus(BUS, "subscribe"))?;
        let handed = Arc::new(handed);
        let context = GroupContext {
            topic: self.name.clone(),
            state: state.clone(),
            handed: handed.clone(),
            assigned,
        };
        let consumer: StreamConsumer<GroupContext> = client_config(&self.servers)
            .set("group.id", &group_id)
            .set("client.id", subscription.consumer_name())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "roundrobin")
            .set("fetch.wait.max.ms", FETCH_WAIT.as_millis().to_string())
            .create_with_context(context)
            .map_err(Error::bus(BUS, "subscribe"))?;
        consumer
            .subscribe(&[&self.name])
            .map_err(Error::bus(BUS, "subscribe"))?;
        let consumer = Arc::new(consumer);
        {
            let mut consumers = self
                .consumers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            consumers.retain(|subscribed| subscribed.state.strong_count() > 0);
            consumers.push(Subscribed {
                consumer: Arc::downgrade(&consumer),
                state: Arc::downgrade(&state),
            });
        }
        let (sender, receiver) = mpsc::channel(subscription.prefetch_count());
        tokio::spawn(fetch(consumer.clone(), state.clone(), sender));
        let joined =
            tokio::time::timeout(self.join_timeout, assignments.wait_for(|n| *n > 0)).await;
        if !matches!(joined, Ok(Ok(_))) {
            return Err(Error::Bus {
                bus: BUS,
                operation: "subscribe",
                source: format!(
                    "group {group_id}: no partitions assigned within {:?}",
                    self.join_timeout
                )
                .into(),
            });
        }
        Ok(KafkaConsumer {
            consumer,
            handed,
            state,
            receiver,
            backlog: VecDeque::new(),
            producer: self.producer.clone(),
            topic: self.name.clone(),
            dead_topic: self.dead_topic.clone(),
            group,
            filter: subscription.filter().clone(),
            max_deliveries: subscription.max_delivery_count(),
        })
    }
}

/// A message as fetched: where it is, and its bytes.
struct Fetched {
    partition: i32,
    offset: i64,
    /// The assignment it was fetched under: a message of an older one belongs to whichever
    /// consumer has the partition now.
    epoch: u64,
    payload: Option<Vec<u8>>,
    /// Set when it comes back after a nack.
    attempt: Option<u32>,
}

/// Where a [`KafkaConsumer`]'s delivery sits, to acknowledge it.
#[derive(Debug, Clone)]
pub(crate) struct KafkaTag {
    partition: i32,
    offset: i64,
    epoch: u64,
}

/// What a consumer knows of its partitions, shared with the rebalance callbacks.
#[derive(Default)]
struct State {
    /// Bumped at every revocation and assignment.
    epoch: u64,
    partitions: HashMap<i32, Track>,
}

/// One assigned partition.
struct Track {
    /// Handed out (or given back by a nack), not yet acknowledged.
    outstanding: BTreeSet<i64>,
    /// One past the newest offset handed out or passed over.
    next: i64,
    /// The offset last committed by this consumer.
    committed: i64,
    /// Offsets below this were handed out before, by some consumer of the group.
    handed_before: i64,
    /// The hand-out mark last committed by this consumer.
    handed_mark: i64,
}

impl Track {
    fn new(handed_before: i64) -> Self {
        Track {
            outstanding: BTreeSet::new(),
            next: -1,
            committed: -1,
            handed_before,
            handed_mark: handed_before,
        }
    }

    /// The offset the group may resume from: the oldest not processed.
    fn committable(&self) -> Option<i64> {
        self.outstanding
            .first()
            .copied()
            .or((self.next >= 0).then_some(self.next))
    }

    /// The offset to commit now, if it moved.
    fn take_commit(&mut self) -> Option<i64> {
        let offset = self.committable()?;
        (offset > self.committed).then(|| {
            self.committed = offset;
            offset
        })
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The consumer's callbacks: rebalances commit what was processed, and start each assignment
/// afresh.
struct GroupContext {
    topic: String,
    state: Arc<Mutex<State>>,
    handed: Arc<BaseConsumer>,
    assigned: watch::Sender<u64>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            let mut offsets = TopicPartitionList::new();
            let mut marks = TopicPartitionList::new();
            {
                let mut state = lock(&self.state);
                state.epoch += 1;
                for (partition, track) in &mut state.partitions {
                    if let Some(offset) = track.take_commit() {
                        let _ = offsets.add_partition_offset(
                            &self.topic,
                            *partition,
                            Offset::Offset(offset),
                        );
                    }
                    if track.handed_mark > track.handed_before {
                        let _ = marks.add_partition_offset(
                            &self.topic,
                            *partition,
                            Offset::Offset(track.handed_mark),
                        );
                    }
                }
                state.partitions.clear();
            }
            if offsets.count() > 0
                && let Err(error) = consumer.commit(&offsets, CommitMode::Sync)
            {
                tracing::warn!(%error, "kafka bus: offsets not committed before a rebalance; their events come again");
            }
            // The next owner learns what this consumer handed out (the marks were sent without
            // waiting as it went).
            if marks.count() > 0
                && let Err(error) = self.handed.commit(&marks, CommitMode::Sync)
            {
                tracing::debug!(%error, "kafka bus: hand-out marks not committed before a rebalance");
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assignment) => {
                // Where other consumers had got to handing events out.
                let mut marks = HashMap::new();
                let mut query = TopicPartitionList::new();
                for element in assignment.elements() {
                    let _ = query.add_partition(element.topic(), element.partition());
                }
                match self.handed.committed_offsets(query, REQUEST_TIMEOUT) {
                    Ok(committed) => {
                        for element in committed.elements() {
                            if let Offset::Offset(offset) = element.offset() {
                                marks.insert(element.partition(), offset);
                            }
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "kafka bus: hand-out marks not read");
                    }
                }
                let mut state = lock(&self.state);
                state.epoch += 1;
                state.partitions = assignment
                    .elements()
                    .iter()
                    .map(|element| {
                        let partition = element.partition();
                        let mark = marks.get(&partition).copied().unwrap_or(-1);
                        (partition, Track::new(mark))
                    })
                    .collect();
                drop(state);
                self.assigned.send_modify(|n| *n += 1);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(%error, "kafka bus: rebalance failed");
            }
        }
    }
}

/// Fetches messages into the consumer's channel (and so serves the group's rebalances) until
/// the consumer is dropped.
async fn fetch(
    consumer: Arc<StreamConsumer<GroupContext>>,
    state: Arc<Mutex<State>>,
    sender: mpsc::Sender<Result<Fetched>>,
) {
    loop {
        let received = {
            let closed = std::pin::pin!(sender.closed());
            let received = std::pin::pin!(consumer.recv());
            match futures::future::select(closed, received).await {
                Either::Left(_) => break,
                Either::Right((received, _)) => received,
            }
        };
        let fetched = match received {
            Ok(message) => Ok(Fetched {
                partition: message.partition(),
                offset: message.offset(),
                epoch: lock(&state).epoch,
                payload: message.payload().map(<[u8]>::to_vec),
                attempt: None,
            }),
            Err(error) => {
                tracing::warn!(%error, "kafka bus: consumer error");
                Err(Error::bus(BUS, "receive")(error))
            }
        };
        let failed = fetched.is_err();
        if sender.send(fetched).await.is_err() {
            break;
        }
        if failed {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A consumer of a [`KafkaBus`] group.
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer<GroupContext>>,
    handed: Arc<BaseConsumer>,
    state: Arc<Mutex<State>>,
    receiver: mpsc::Receiver<Result<Fetched>>,
    backlog: VecDeque<Fetched>,
    producer: FutureProducer,
    topic: String,
    dead_topic: String,
    group: String,
    filter: Filter,
    max_deliveries: u32,
}

impl fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// What to do with a fetched message.
enum Step {
    Stale,
    Deliver(u32),
    Skip,
}

impl KafkaConsumer {
    fn tag(delivery: &Delivery) -> Result<&KafkaTag> {
        match &delivery.tag {
            Tag::Kafka(tag) => Ok(tag),
            #[allow(unreachable_patterns)]
            _ => Err(Error::InvalidConfig(
                "this delivery came from another bus".into(),
            )),
        }
    }

    /// Commits `partition`'s offset if it moved (without waiting: a lost commit only means the
    /// events come again).
    fn commit(&self, partition: i32, offset: Option<i64>) -> Result<()> {
        let Some(offset) = offset else {
            return Ok(());
        };
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&self.topic, partition, Offset::Offset(offset))
            .map_err(Error::bus(BUS, "commit"))?;
        self.consumer
            .commit(&offsets, CommitMode::Async)
            .map_err(Error::bus(BUS, "commit"))
    }

    /// The message at `offset` is done with (processed, passed over or dead-lettered).
    fn done(&self, partition: i32, offset: i64, epoch: u64) -> Result<()> {
        let to_commit = {
            let mut state = lock(&self.state);
            if state.epoch != epoch {
                // The partition went to another consumer: it resumes from the last commit.
                return Ok(());
            }
            let Some(track) = state.partitions.get_mut(&partition) else {
                return Ok(());
            };
            track.outstanding.remove(&offset);
            track.next = track.next.max(offset + 1);
            track.take_commit()
        };
        self.commit(partition, to_commit)
    }

    /// Sends the message's bytes to the dead-letter topic, with the group and the reason.
    async fn dead_letter(&self, fetched: &Fetched, reason: &str) -> Result<()> {
        let source = format!("{}/{}@{}", self.topic, fetched.partition, fetched.offset);
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "group",
                value: Some(&self.group),
            })
            .insert(Header {
                key: "reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "source",
                value: Some(&source),
            });
        let payload = fetched.payload.as_deref().unwrap_or_default();
        let record = FutureRecord::to(&self.dead_topic)
            .key(&self.group)
            .payload(payload)
            .headers(headers);
        self.producer
            .send(record, REQUEST_TIMEOUT)
            .await
            .map(drop)
            .map_err(|(error, _)| Error::bus(BUS, "dead-letter")(error))
    }

    /// Dead-letters `fetched`, then marks it done. It waits at the front of the backlog
    /// meanwhile: a `next()` dropped (or failed) before the end takes it up again instead of
    /// passing over it.
    async fn dead_letter_first(&mut self, fetched: Fetched, reason: &str) -> Result<()> {
        self.backlog.push_front(fetched);
        if let Some(fetched) = self.backlog.front() {
            self.dead_letter(fetched, reason).await?;
        }
        match self.backlog.pop_front() {
            Some(fetched) => self.done(fetched.partition, fetched.offset, fetched.epoch),
            None => Ok(()),
        }
    }

    /// Where `fetched` stands: stale, to deliver (as which attempt), or to pass over.
    fn step(&self, fetched: &Fetched, take: bool) -> Step {
        let mut state = lock(&self.state);
        if state.epoch != fetched.epoch {
            return Step::Stale;
        }
        let Some(track) = state.partitions.get_mut(&fetched.partition) else {
            return Step::Stale;
        };
        if !take {
            return Step::Skip;
        }
        let attempt = fetched
            .attempt
            .unwrap_or(if fetched.offset < track.handed_before {
                2
            } else {
                1
            });
        if attempt > self.max_deliveries {
            return Step::Skip;
        }
        track.outstanding.insert(fetched.offset);
        track.next = track.next.max(fetched.offset + 1);
        Step::Deliver(attempt)
    }

    /// Notes in the group's hand-out marks that `offset` was handed out.
    fn mark_handed(&self, partition: i32, offset: i64) {
        let moved = {
            let mut state = lock(&self.state);
            match state.partitions.get_mut(&partition) {
                Some(track) if track.handed_mark <= offset => {
                    track.handed_mark = offset + 1;
                    true
                }
                _ => false,
            }
        };
        if moved {
            let mut marks = TopicPartitionList::new();
            if marks
                .add_partition_offset(&self.topic, partition, Offset::Offset(offset + 1))
                .is_ok()
                && let Err(error) = self.handed.commit(&marks, CommitMode::Async)
            {
                tracing::debug!(%error, "kafka bus: hand-out mark not committed");
            }
            // Serves the results of earlier mark commits.
            let _ = self.handed.poll(Duration::ZERO);
        }
    }
}

impl BusConsumer for KafkaConsumer {
    async fn next(&mut self) -> Result<Delivery> {
        loop {
            let fetched = match self.backlog.pop_front() {
                Some(fetched) => fetched,
                None => match self.receiver.recv().await {
                    Some(fetched) => fetched?,
                    None => {
                        return Err(Error::Bus {
                            bus: BUS,
                            operation: "receive",
                            source: "the consumer's fetch loop ended".into(),
                        });
                    }
                },
            };
            let event = match fetched.payload.as_deref().map(super::wire::decode) {
                Some(Ok(event)) => event,
                failed => {
                    if let Step::Stale = self.step(&fetched, false) {
                        continue;
                    }
                    let reason = match failed {
                        Some(Err(reason)) => reason,
                        _ => "the message has no value".to_owned(),
                    };
                    let message =
                        format!("{}/{}@{}", self.topic, fetched.partition, fetched.offset);
                    self.dead_letter_first(fetched, &reason).await?;
                    return Err(Error::MalformedMessage {
                        bus: BUS,
                        message,
                        reason,
                    });
                }
            };
            let take = self
                .filter
                .matches(&event.event_type, event.stream.aggregate_type());
            match self.step(&fetched, take) {
                Step::Stale => continue,
                Step::Skip if !take => {
                    self.done(fetched.partition, fetched.offset, fetched.epoch)?;
                }
                Step::Skip => {
                    tracing::warn!(event_id = %event.event_id, group = %self.group, "bus delivery dead-lettered after its last attempt");
                    crate::telemetry::bus_dead_lettered(BUS, &self.group);
                    self.dead_letter_first(fetched, "no attempts left").await?;
                }
                Step::Deliver(attempt) => {
                    self.mark_handed(fetched.partition, fetched.offset);
                    let tag = KafkaTag {
                        partition: fetched.partition,
                        offset: fetched.offset,
                        epoch: fetched.epoch,
                    };
                    return Ok(Delivery::new(event, attempt, Tag::Kafka(tag), &self.group));
                }
            }
        }
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<()> {
        let tag = Self::tag(delivery)?;
        self.done(tag.partition, tag.offset, tag.epoch)
    }

    async fn nack(&mut self, delivery: &Delivery) -> Result<()> {
        let tag = Self::tag(delivery)?.clone();
        let fetched = Fetched {
            partition: tag.partition,
            offset: tag.offset,
            epoch: tag.epoch,
            payload: Some(super::wire::encode(delivery.event())),
            attempt: Some(delivery.attempt() + 1),
        };
        if delivery.attempt() >= self.max_deliveries {
            if lock(&self.state).epoch != tag.epoch {
                // No longer this consumer's: the partition's new owner decides.
                return Ok(());
            }
            tracing::warn!(event_id = %delivery.event().event_id, attempt = delivery.attempt(), group = %self.group, "bus delivery dead-lettered after its last attempt");
            crate::telemetry::bus_dead_lettered(BUS, &self.group);
            self.dead_letter(&fetched, "no attempts left").await?;
            return self.done(tag.partition, tag.offset, tag.epoch);
        }
        // Handed out again first, ahead of the events behind it; its offset stays uncommitted.
        self.backlog.push_front(fetched);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_commits_up_to_its_oldest_unacknowledged_event() {
        let mut track = Track::new(-1);
        assert_eq!(track.take_commit(), None, "nothing seen, nothing to commit");
        for offset in 10..13 {
            track.outstanding.insert(offset);
            track.next = offset + 1;
        }
        // 11 and 12 acknowledged, 10 not: the group must resume at 10.
        track.outstanding.remove(&11);
        track.outstanding.remove(&12);
        assert_eq!(track.take_commit(), Some(10));
        assert_eq!(track.take_commit(), None, "committed once");
        track.outstanding.remove(&10);
        assert_eq!(track.take_commit(), Some(13), "all three done");
    }

    #[test]
    fn passed_over_events_move_the_offset() {
        let mut track = Track::new(-1);
        track.next = 5;
        assert_eq!(track.take_commit(), Some(5));
    }

    #[test]
    fn topic_specs_have_at_least_one_partition_and_replica() {
        let spec = TopicSpec::new(0).replication(0);
        assert_eq!((spec.partitions, spec.replication), (1, 1));
        assert_eq!(TopicSpec::default().partition_count(), 4);
    }
}
