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

mod consumer;

pub use consumer::KafkaConsumer;
pub(crate) use consumer::KafkaTag;
use consumer::*;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_specs_have_at_least_one_partition_and_replica() {
        let spec = TopicSpec::new(0).replication(0);
        assert_eq!((spec.partitions, spec.replication), (1, 1));
        assert_eq!(TopicSpec::default().partition_count(), 4);
    }
}
