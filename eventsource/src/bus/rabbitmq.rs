//! RabbitMQ: a topic exchange routed by aggregate and event type, a durable quorum queue per
//! group, publisher confirms, manual acks, a dead-letter exchange.

use super::wire::{check_name, token};
use super::{BusConsumer, ConsumerGroup, Delivery, EventBus, Filter, Tag};
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::fmt;
use std::sync::Arc;
use tokio::sync::Mutex;

const BUS: &str = "rabbitmq";

/// A bus on RabbitMQ (feature `rabbitmq`).
///
/// Events of the application `name` are published, persistent and with publisher confirms, to
/// the topic exchange `{name}.events` with the routing key `{aggregate type}.{event type}`
/// (`.`, `*`, `#` and spaces in the names become `_`), the event id as the message id.
/// [`publish`](EventBus::publish) returns once the broker has confirmed every message.
///
/// A group is the durable quorum queue `{name}.{group}`, bound by its filter (`#`, `*.{type}`
/// or `{aggregate}.*`). Its consumers take deliveries with manual acks (at most
/// [`ConsumerGroup::prefetch`] unacknowledged each). A delivery not acknowledged when its
/// consumer's channel closes (a crash), or nacked, is queued again; the queue counts the
/// attempts (`x-delivery-count`), and a delivery nacked at its last attempt is rejected into
/// the dead-letter exchange `{name}.dead`, which routes it to the queue `{name}.{group}.dead`.
///
/// ```no_run
/// # async fn run() -> eventsource::Result<()> {
/// use eventsource::bus::rabbitmq::RabbitMqBus;
/// let bus = RabbitMqBus::connect("amqp://guest:guest@127.0.0.1:5672/%2f", "shop").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RabbitMqBus {
    connection: Arc<Connection>,
    publisher: Arc<Mutex<Channel>>,
    name: String,
}

impl fmt::Debug for RabbitMqBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqBus")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn short(s: impl Into<String>) -> ShortString {
    s.into().into()
}

impl RabbitMqBus {
    /// Connects to the broker at `url` (`amqp://user:password@host:port/vhost`) and declares the
    /// application's exchanges (`name`: letters, digits, `-`, `_`).
    pub async fn connect(url: &str, name: &str) -> Result<Self> {
        check_name("name", name)?;
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(Error::bus(BUS, "connect"))?;
        let publisher = connection
            .create_channel()
            .await
            .map_err(Error::bus(BUS, "open channel"))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(Error::bus(BUS, "enable confirms"))?;
        let bus = RabbitMqBus {
            connection: Arc::new(connection),
            publisher: Arc::new(Mutex::new(publisher)),
            name: name.to_owned(),
        };
        let channel = bus.publisher.lock().await;
        for (exchange, kind) in [
            (bus.exchange(), ExchangeKind::Topic),
            (bus.dead_exchange(), ExchangeKind::Direct),
        ] {
            channel
                .exchange_declare(
                    short(exchange),
                    kind,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(Error::bus(BUS, "declare exchange"))?;
        }
        drop(channel);
        Ok(bus)
    }

    fn exchange(&self) -> String {
        format!("{}.events", self.name)
    }

    fn dead_exchange(&self) -> String {
        format!("{}.dead", self.name)
    }

    /// The queue of `group`.
    pub fn queue_of(&self, group: &str) -> String {
        format!("{}.{group}", self.name)
    }

    /// The dead-letter queue of `group`.
    pub fn dead_letter_queue_of(&self, group: &str) -> String {
        format!("{}.{group}.dead", self.name)
    }

    /// The routing key an event is published with.
    pub fn routing_key_of(event: &RecordedEvent) -> String {
        format!(
            "{}.{}",
            token(event.stream.aggregate_type()),
            token(&event.event_type)
        )
    }

    /// Takes the events in `group`'s dead-letter queue (acknowledging them), oldest first.
    pub async fn take_dead_letters(&self, group: &str) -> Result<Vec<RecordedEvent>> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(Error::bus(BUS, "open channel"))?;
        let mut letters = Vec::new();
        while let Some(message) = channel
            .basic_get(
                short(self.dead_letter_queue_of(group)),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .map_err(Error::bus(BUS, "read dead letters"))?
        {
            if let Ok(event) = super::wire::decode(&message.delivery.data) {
                letters.push(event);
            }
        }
        let _ = channel.close(200, short("done")).await;
        Ok(letters)
    }

    /// Deletes the exchanges and the queues of `groups`: for tests and teardown.
    pub async fn destroy(&self, groups: &[&str]) -> Result<()> {
        let channel = self.publisher.lock().await;
        for group in groups {
            for queue in [self.queue_of(group), self.dead_letter_queue_of(group)] {
                channel
                    .queue_delete(short(queue), QueueDeleteOptions::default())
                    .await
                    .map_err(Error::bus(BUS, "delete queue"))?;
            }
        }
        for exchange in [self.exchange(), self.dead_exchange()] {
            channel
                .exchange_delete(short(exchange), ExchangeDeleteOptions::default())
                .await
                .map_err(Error::bus(BUS, "delete exchange"))?;
        }
        Ok(())
    }
}

impl RabbitMqBus {
    /// [`EventBus::publish`], without its span and metrics.
    async fn publish_unobserved(&self, events: &[RecordedEvent]) -> Result<()> {
        let exchange = self.exchange();
        // One batch at a time on the channel: its messages go out in order.
        let channel = self.publisher.lock().await;
        let mut confirms = Vec::with_capacity(events.len());
        for event in events {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(short(event.event_id.to_string()))
                .with_type(short(event.event_type.clone()))
                .with_content_type(short("application/json"));
            let confirm = channel
                .basic_publish(
                    short(exchange.clone()),
                    short(Self::routing_key_of(event)),
                    BasicPublishOptions::default(),
                    &super::wire::encode(event),
                    properties,
                )
                .await
                .map_err(Error::bus(BUS, "publish"))?;
            confirms.push(confirm);
        }
        drop(channel);
        for confirm in confirms {
            let confirmation = confirm.await.map_err(Error::bus(BUS, "publish"))?;
            if confirmation.is_nack() {
                return Err(Error::Bus {
                    bus: BUS,
                    operation: "publish",
                    source: "the broker refused a message (nack)".into(),
                });
            }
        }
        Ok(())
    }
}

impl EventBus for RabbitMqBus {
    type Consumer = RabbitMqConsumer;

    async fn publish(&self, events: &[RecordedEvent]) -> Result<()> {
        crate::telemetry::publish("rabbitmq", events.len(), self.publish_unobserved(events)).await
    }

    async fn subscribe(&self, subscription: &ConsumerGroup) -> Result<RabbitMqConsumer> {
        let group = subscription.checked_group()?.to_owned();
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(Error::bus(BUS, "open channel"))?;
        let queue = self.queue_of(&group);
        let dead_queue = self.dead_letter_queue_of(&group);
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut quorum = FieldTable::default();
        quorum.insert(
            short("x-queue-type"),
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(short(dead_queue.clone()), durable, quorum.clone())
            .await
            .map_err(Error::bus(BUS, "declare queue"))?;
        channel
            .queue_bind(
                short(dead_queue),
                short(self.dead_exchange()),
                short(group.clone()),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(Error::bus(BUS, "bind queue"))?;
        let mut arguments = quorum;
        arguments.insert(
            short("x-dead-letter-exchange"),
            AMQPValue::LongString(self.dead_exchange().into()),
        );
        arguments.insert(
            short("x-dead-letter-routing-key"),
            AMQPValue::LongString(group.clone().into()),
        );
        // The broker's own limit, for a consumer that crashes on a message every time (it never
        // gets to nack): past it the queue dead-letters the message itself.
        arguments.insert(
            short("x-delivery-limit"),
            AMQPValue::LongInt(
                i32::try_from(subscription.max_delivery_count()).unwrap_or(i32::MAX),
            ),
        );
        channel
            .queue_declare(short(queue.clone()), durable, arguments)
            .await
            .map_err(Error::bus(BUS, "declare queue"))?;
        let keys: Vec<String> = match subscription.filter() {
            Filter::EventTypes(types) => types.iter().map(|t| format!("*.{}", token(t))).collect(),
            Filter::AggregateTypes(types) => {
                types.iter().map(|t| format!("{}.*", token(t))).collect()
            }
            _ => vec!["#".to_owned()],
        };
        for key in keys {
            channel
                .queue_bind(
                    short(queue.clone()),
                    short(self.exchange()),
                    short(key),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(Error::bus(BUS, "bind queue"))?;
        }
        channel
            .basic_qos(
                u16::try_from(subscription.prefetch_count()).unwrap_or(u16::MAX),
                BasicQosOptions::default(),
            )
            .await
            .map_err(Error::bus(BUS, "set prefetch"))?;
        let consumer = channel
            .basic_consume(
                short(queue),
                short(subscription.consumer_name()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(Error::bus(BUS, "consume"))?;
        Ok(RabbitMqConsumer {
            channel,
            consumer,
            group,
            filter: subscription.filter().clone(),
            max_deliveries: subscription.max_delivery_count(),
        })
    }
}

/// A consumer of a [`RabbitMqBus`] group. Dropping it closes its channel: what it had not
/// acknowledged is queued again, for the group's other consumers.
pub struct RabbitMqConsumer {
    channel: Channel,
    consumer: lapin::Consumer,
    group: String,
    filter: Filter,
    max_deliveries: u32,
}

impl fmt::Debug for RabbitMqConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqConsumer")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl RabbitMqConsumer {
    fn acker(delivery: &Delivery) -> Result<&lapin::Acker> {
        match &delivery.tag {
            Tag::RabbitMq(acker) => Ok(acker),
            #[allow(unreachable_patterns)]
            _ => Err(Error::InvalidConfig(
                "this delivery came from another bus".into(),
            )),
        }
    }

    /// Closes the channel now (instead of when dropped): its unacknowledged deliveries go back
    /// to the queue.
    pub async fn close(self) -> Result<()> {
        self.channel
            .close(200, short("consumer closed"))
            .await
            .map_err(Error::bus(BUS, "close"))
    }
}

/// Attempts before this one, as a quorum queue counts them.
fn previous_attempts(properties: &BasicProperties) -> u32 {
    let Some(headers) = properties.headers() else {
        return 0;
    };
    match headers.inner().get(&short("x-delivery-count")) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

impl BusConsumer for RabbitMqConsumer {
    async fn next(&mut self) -> Result<Delivery> {
        loop {
            let Some(message) = self.consumer.next().await else {
                return Err(Error::Bus {
                    bus: BUS,
                    operation: "receive",
                    source: "the consumer was cancelled".into(),
                });
            };
            let message = message.map_err(Error::bus(BUS, "receive"))?;
            let event = match super::wire::decode(&message.data) {
                Ok(event) => event,
                Err(reason) => {
                    message
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await
                        .map_err(Error::bus(BUS, "dead-letter"))?;
                    return Err(Error::MalformedMessage {
                        bus: BUS,
                        message: message.delivery_tag.to_string(),
                        reason,
                    });
                }
            };
            if !self
                .filter
                .matches(&event.event_type, event.stream.aggregate_type())
            {
                message
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(Error::bus(BUS, "ack"))?;
                continue;
            }
            let attempt = previous_attempts(&message.properties).saturating_add(1);
            return Ok(Delivery::new(
                event,
                attempt,
                Tag::RabbitMq(message.acker),
                &self.group,
            ));
        }
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<()> {
        Self::acker(delivery)?
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(Error::bus(BUS, "ack"))
    }

    async fn nack(&mut self, delivery: &Delivery) -> Result<()> {
        let acker = Self::acker(delivery)?;
        if delivery.attempt() >= self.max_deliveries {
            tracing::warn!(event_id = %delivery.event().event_id, attempt = delivery.attempt(), group = %self.group, "bus delivery dead-lettered after its last attempt");
            crate::telemetry::bus_dead_lettered("rabbitmq", &self.group);
            return acker
                .reject(BasicRejectOptions { requeue: false })
                .await
                .map(drop)
                .map_err(Error::bus(BUS, "dead-letter"));
        }
        acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(Error::bus(BUS, "nack"))
    }
}

impl Drop for RabbitMqConsumer {
    fn drop(&mut self) {
        // A channel left open would keep its deliveries: close it, as a crash would.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let channel = self.channel.clone();
            runtime.spawn(async move {
                let _ = channel.close(200, short("consumer dropped")).await;
            });
        }
    }
}
