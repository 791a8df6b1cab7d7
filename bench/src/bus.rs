//! W6: publish -> consume through each bus, beside a raw client of the same broker doing the
//! same work in the same run: the event's fields serialised as JSON and published in batches of
//! 100 (with the broker's confirmation where it gives one), one consumer parsing each message
//! and acknowledging it. Reports throughput (events/s, first publish to last ack) and
//! end-to-end latency (publish call to delivery), p50 and p99.

use eventsource::NewEvent;
use eventsource::bus::kafka::KafkaBus;
use eventsource::bus::nats::NatsBus;
use eventsource::bus::rabbitmq::RabbitMqBus;
use eventsource::bus::redis::RedisBus;
use eventsource::bus::{BusConsumer, ConsumerGroup, EventBus, InMemoryBus};
use eventsource::prelude::*;
use eventsource::{Position, RecordedEvent, StreamId};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BATCH: usize = 100;

/// One run's result: throughput and latency percentiles.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Measured {
    pub(crate) per_second: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// When each event (by index) was handed to publish, in nanoseconds from the start.
struct Clock {
    start: Instant,
    sent: Vec<AtomicU64>,
}

impl Clock {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Clock {
            start: Instant::now(),
            sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
        })
    }
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn mark_sent(&self, range: std::ops::Range<usize>) {
        let now = self.now();
        for i in range {
            self.sent[i].store(now, Ordering::Relaxed);
        }
    }
    fn latency(&self, i: usize) -> f64 {
        (self
            .now()
            .saturating_sub(self.sent[i].load(Ordering::Relaxed))) as f64
            / 1e6
    }
}

fn summarize(n: usize, elapsed: Duration, mut latencies: Vec<f64>) -> Measured {
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Measured {
        per_second: n as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

/// The events: `n` small events over 100 streams, positions 1..=n.
pub(crate) fn events(n: usize) -> Vec<RecordedEvent> {
    (0..n)
        .map(|i| {
            let event = NewEvent::from_json("bench.Tick", 1, format!("{{\"n\":{i}}}"));
            RecordedEvent::new(
                StreamId::new("Bench", format!("s-{}", i % 100)).unwrap(),
                (i / 100 + 1) as u64,
                Position::new(i as u64 + 1),
                event,
            )
        })
        .collect()
}

/// The index of a delivered event (its position - 1).
fn index_of(event: &RecordedEvent) -> usize {
    event.position.get() as usize - 1
}

/// Through the framework's bus.
pub(crate) async fn framework<B: EventBus>(bus: &B, events: &[RecordedEvent]) -> Measured {
    let n = events.len();
    let mut consumer = bus
        .subscribe(&ConsumerGroup::new("bench").prefetch(256))
        .await
        .expect("subscribe");
    let clock = Clock::new(n);
    let consuming = {
        let clock = Arc::clone(&clock);
        async move {
            let mut latencies = Vec::with_capacity(n);
            while latencies.len() < n {
                let delivery = consumer.next().await.expect("a delivery");
                latencies.push(clock.latency(index_of(delivery.event())));
                consumer.ack(&delivery).await.expect("ack");
            }
            latencies
        }
    };
    let publishing = async {
        for (b, batch) in events.chunks(BATCH).enumerate() {
            clock.mark_sent(b * BATCH..b * BATCH + batch.len());
            bus.publish(batch).await.expect("publish");
        }
    };
    let started = Instant::now();
    let (latencies, ()) = tokio::join!(consuming, publishing);
    summarize(n, started.elapsed(), latencies)
}

/// What a hand-written client would put on the wire: the event's fields as JSON, serialised
/// in the timed loop as the framework's publish does.
#[derive(serde::Serialize)]
struct RawEnvelope<'a> {
    event_id: Uuid,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    version: u64,
    position: u64,
    event_type: &'a str,
    schema_version: u32,
    occurred_at: chrono::DateTime<chrono::Utc>,
    metadata: &'a eventsource::Metadata,
    payload: &'a str,
}

fn wire(e: &RecordedEvent) -> Vec<u8> {
    serde_json::to_vec(&RawEnvelope {
        event_id: e.event_id,
        aggregate_type: e.stream.aggregate_type(),
        aggregate_id: e.stream.aggregate_id(),
        version: e.version,
        position: e.position.get(),
        event_type: &e.event_type,
        schema_version: e.schema_version,
        occurred_at: e.occurred_at,
        metadata: &e.metadata,
        payload: &e.payload,
    })
    .unwrap()
}

/// The position a raw consumer reads back from a message (a full parse, as a consumer would).
fn position_in(bytes: &[u8]) -> usize {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    value["position"].as_u64().unwrap() as usize
}

/// The raw in-process baseline: a bounded tokio channel carrying the events.
pub(crate) async fn raw_memory(events: &[RecordedEvent]) -> Measured {
    let n = events.len();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordedEvent>(1024);
    let clock = Clock::new(n);
    let consuming = {
        let clock = Arc::clone(&clock);
        async move {
            let mut latencies = Vec::with_capacity(n);
            while let Some(event) = rx.recv().await {
                latencies.push(clock.latency(index_of(&event)));
            }
            latencies
        }
    };
    let publishing = async move {
        for (b, batch) in events.chunks(BATCH).enumerate() {
            clock.mark_sent(b * BATCH..b * BATCH + batch.len());
            for event in batch {
                tx.send(event.clone()).await.unwrap();
            }
        }
    };
    let started = Instant::now();
    let (latencies, ()) = tokio::join!(consuming, publishing);
    summarize(n, started.elapsed(), latencies)
}

/// The raw Redis client: XADD in pipelines, XREADGROUP, XACK per message.
pub(crate) async fn raw_redis(url: &str, events: &[RecordedEvent]) -> Measured {
    let n = events.len();
    let key = format!("bench-raw-{}", Uuid::now_v7().simple());
    let client = redis::Client::open(url).unwrap();
    let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let clock = Clock::new(n);
    let consuming = {
        let clock = Arc::clone(&clock);
        let key = key.clone();
        async move {
            let mut latencies = Vec::with_capacity(n);
            while latencies.len() < n {
                let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("g")
                    .arg("c")
                    .arg("COUNT")
                    .arg(256)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                    let Some(redis::Value::BulkString(data)) = entry.map.get("event") else {
                        panic!("an event field");
                    };
                    let position = position_in(data);
                    latencies.push(clock.latency(position - 1));
                    let _: () = redis::cmd("XACK")
                        .arg(&key)
                        .arg("g")
                        .arg(&entry.id)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                }
            }
            latencies
        }
    };
    let publishing = async {
        for (b, batch) in events.chunks(BATCH).enumerate() {
            clock.mark_sent(b * BATCH..b * BATCH + batch.len());
            let mut pipe = redis::pipe();
            for event in batch {
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("*")
                    .arg("event")
                    .arg(wire(event))
                    .arg("type")
                    .arg(&event.event_type)
                    .arg("aggregate")
                    .arg(event.stream.aggregate_type());
            }
            let _: () = pipe.query_async(&mut publisher).await.unwrap();
        }
    };
    let started = Instant::now();
    let (latencies, ()) = tokio::join!(consuming, publishing);
    let elapsed = started.elapsed();
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut publisher)
        .await
        .unwrap();
    summarize(n, elapsed, latencies)
}

/// The raw RabbitMQ client: persistent publishes with confirms to a topic exchange, a quorum
/// queue, manual acks per message.
pub(crate) async fn raw_rabbitmq(url: &str, events: &[RecordedEvent]) -> Measured {
    use lapin::options::*;
    use lapin::types::{AMQPValue, FieldTable};
    let n = events.len();
    let name = format!("bench-raw-{}", Uuid::now_v7().simple());
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let publisher = conn.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publisher
        .exchange_declare(
            name.clone().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            name.clone().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            quorum,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            name.clone().into(),
            name.clone().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_qos(256, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            name.clone().into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let clock = Clock::new(n);
    let consuming = {
        let clock = Arc::clone(&clock);
        async move {
            let mut latencies = Vec::with_capacity(n);
            while latencies.len() < n {
                let delivery = consumer.next().await.unwrap().unwrap();
                let position = position_in(&delivery.data);
                latencies.push(clock.latency(position - 1));
                delivery.ack(BasicAckOptions::default()).await.unwrap();
            }
            latencies
        }
    };
    let publishing = async {
        for (b, batch) in events.chunks(BATCH).enumerate() {
            clock.mark_sent(b * BATCH..b * BATCH + batch.len());
            let mut confirms = Vec::new();
            for event in batch {
                let key = format!("{}.{}", event.stream.aggregate_type(), event.event_type);
                confirms.push(
                    publisher
                        .basic_publish(
                            name.clone().into(),
                            key.into(),
                            BasicPublishOptions::default(),
                            &wire(event),
                            lapin::BasicProperties::default()
                                .with_delivery_mode(2)
                                .with_message_id(event.event_id.to_string().into()),
                        )
                        .await
                        .unwrap(),
                );
            }
            for confirm in confirms {
                assert!(confirm.await.unwrap().is_ack());
            }
        }
    };
    let started = Instant::now();
    let (latencies, ()) = tokio::join!(consuming, publishing);
    let elapsed = started.elapsed();
    let _ = publisher
        .queue_delete(name.clone().into(), QueueDeleteOptions::default())
        .await;
    let _ = publisher
        .exchange_delete(name.into(), ExchangeDeleteOptions::default())
        .await;
    summarize(n, elapsed, latencies)
}

/// The raw NATS client: JetStream publishes with `Nats-Msg-Id`, a durable pull consumer, an ack
/// per message.
pub(crate) async fn raw_nats(url: &str, events: &[RecordedEvent]) -> Measured {
    use async_nats::jetstream::{self, consumer::pull};
    let n = events.len();
    let name = format!("bench-raw-{}", Uuid::now_v7().simple());
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            "c",
            pull::Config {
                durable_name: Some("c".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 4096,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(256)
        .messages()
        .await
        .unwrap();
    let clock = Clock::new(n);
    let consuming = {
        let clock = Arc::clone(&clock);
        async move {
            let mut latencies = Vec::with_capacity(n);
            while latencies.len() < n {
                let message = messages.next().await.unwrap().unwrap();
                let position = position_in(&message.payload);
                latencies.push(clock.latency(position - 1));
                message.ack().await.unwrap();
            }
            latencies
        }
    };
    let publishing = async {
        for (b, batch) in events.chunks(BATCH).enumerate() {
            clock.mark_sent(b * BATCH..b * BATCH + batch.len());
            let mut acks = Vec::new();
            for event in batch {
                let subject = format!(
                    "{name}.{}.{}",
                    event.stream.aggregate_type(),
                    event.event_type.replace('.', "_")
                );
                let publish = jetstream::message::PublishMessage::build()
                    .payload(wire(event).into())
                    .message_id(event.event_id.to_string());
                acks.push(js.send_publish(subject, publish).await.unwrap());
            }
            for ack in acks {
                ack.await.unwrap();
            }
        }
    };
    let started = Instant::now();
    let (latencies, ()) = tokio::join!(consuming, publishing);
    let elapsed = started.elapsed();
    let _ = js.delete_stream(&name).await;
    summarize(n, elapsed, latencies)
}

/// The raw Kafka client (rdkafka): an idempotent producer with `acks=all` awaiting every
/// delivery report of a batch, a topic of 4 partitions keyed by stream, one consumer of a group
/// (fetches waiting at most 100 ms, as the bus's) committing each message's offset
/// (asynchronously) after parsing it.
pub(crate) async fn raw_kafka(servers: &str, events: &[RecordedEvent]) -> Measured {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let n = events.len();
    let topic = format!("bench-raw-{}", Uuid::now_v7().simple());
    let config = |extra: &[(&str, &str)]| {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", servers);
        for (k, v) in extra {
            config.set(*k, *v);
        }
        config
    };
    let admin: AdminClient<DefaultClientContext> = config(&[]).create().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    admin
        .create_topics(
            &[NewTopic::new(&topic, 4, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .unwrap();
    let producer: FutureProducer = config(&[
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("linger.ms", "2"),
    ])
    .create()
    .unwrap();
    let consumer: StreamConsumer = config(&[
        ("group.id", topic.as_str()),
        ("enable.auto.commit", "false"),
        ("auto.offset.reset", "earliest"),
        ("fetch.wait.max.ms", "100"),
    ])
    .create()
    .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    // Joined, with the partitions assigned, before the clock starts (as the bus's subscribe).
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
    let clock = Clock::new(n);
    let consuming = {
        let clock = Arc::clone(&clock);
        let topic = topic.clone();
        async move {
            let mut latencies = Vec::with_capacity(n);
            while latencies.len() < n {
                let message = consumer.recv().await.unwrap();
                let position = position_in(message.payload().unwrap());
                latencies.push(clock.latency(position - 1));
                let mut offsets = TopicPartitionList::new();
                offsets
                    .add_partition_offset(
                        &topic,
                        message.partition(),
                        Offset::Offset(message.offset() + 1),
                    )
                    .unwrap();
                consumer.commit(&offsets, CommitMode::Async).unwrap();
            }
            latencies
        }
    };
    let publishing = async {
        for (b, batch) in events.chunks(BATCH).enumerate() {
            clock.mark_sent(b * BATCH..b * BATCH + batch.len());
            let mut reports = Vec::new();
            for event in batch {
                let key = event.stream.to_string();
                let payload = wire(event);
                let record = FutureRecord::to(&topic).key(&key).payload(&payload);
                reports.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
            }
            for report in reports {
                report.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
        }
    };
    let started = Instant::now();
    let (latencies, ()) = tokio::join!(consuming, publishing);
    let elapsed = started.elapsed();
    let _ = admin.delete_topics(&[&topic], &options).await;
    summarize(n, elapsed, latencies)
}

/// A Kafka bus under a fresh name (4 partitions).
pub(crate) async fn kafka_bus(servers: &str) -> Option<KafkaBus> {
    let name = format!("bench-{}", Uuid::now_v7().simple());
    KafkaBus::connect(servers, &name).await.ok()
}

/// The framework's buses under fresh names (`None`: the server is unreachable).
pub(crate) async fn redis_bus(url: &str) -> Option<RedisBus> {
    let name = format!("bench-{}", Uuid::now_v7().simple());
    RedisBus::connect(url, &name).await.ok()
}

/// A RabbitMQ bus under a fresh name.
pub(crate) async fn rabbitmq_bus(url: &str) -> Option<RabbitMqBus> {
    let name = format!("bench-{}", Uuid::now_v7().simple());
    RabbitMqBus::connect(url, &name).await.ok()
}

/// A NATS bus under a fresh name.
pub(crate) async fn nats_bus(url: &str) -> Option<NatsBus> {
    let name = format!("bench-{}", Uuid::now_v7().simple());
    NatsBus::connect(url, &name).await.ok()
}

/// An in-memory bus.
pub(crate) fn memory_bus() -> InMemoryBus {
    InMemoryBus::new(1024)
}
