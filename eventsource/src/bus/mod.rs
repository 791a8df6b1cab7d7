//! Event buses: stored events delivered to other processes, at least once.
//!
//! An [`EventBus`] carries [`RecordedEvent`]s (stored events, with their ids, versions and
//! positions) from a publisher to consumer groups. Every bus behaves the same way, and one
//! conformance suite proves it for each:
//!
//! - **Groups share, groups copy.** Each [`ConsumerGroup`] names a group: every group receives
//!   every event its filter takes; the consumers of one group share them, each event going to
//!   one consumer at a time.
//! - **Acknowledged, or delivered again.** A consumer [`ack`](BusConsumer::ack)s an event once
//!   its effect is done. An event not acknowledged (the consumer crashed, or
//!   [`nack`](BusConsumer::nack)ed it) is delivered again, to it or to another consumer of the
//!   group, with [`Delivery::attempt`] counting up; after
//!   [`ConsumerGroup::max_deliveries`] attempts it is dead-lettered instead, so that one poisoned
//!   event does not block the group.
//! - **Per-stream order.** Events of one stream reach a group in their version order (a
//!   redelivery may repeat an earlier one), also when [`BusConsumer::next`] is cancelled (a
//!   `timeout`, a `select!`): what a dropped call had taken comes from the next call, first.
//!   Consumers de-duplicate by [`RecordedEvent::event_id`].
//! - **Typed delivery.** [`Delivery::decode`] decodes (and upcasts) the payload as on load;
//!   [`Delivery::dispatch`] hands it to a `#[projection]` type's handlers.
//!
//! What gets published is decided by the [relay](crate::subscription::Subscriptions::add_relay):
//! a checkpointed reader of the event log that publishes each batch and moves its checkpoint
//! only once the broker has confirmed it. The buses:
//!
//! | bus | feature | groups | redelivery of an unacknowledged event | dead letters |
//! |---|---|---|---|---|
//! | [`InMemoryBus`] | always | in process | when its consumer is dropped, or nacked | [`InMemoryBus::dead_letters`] |
//! | `redis::RedisBus` | `redis` | Redis Streams consumer groups | claimed (`XAUTOCLAIM`) after the claim timeout | a `…:dead` stream |
//! | `rabbitmq::RabbitMqBus` | `rabbitmq` | one durable quorum queue per group | when the consumer's channel closes, or nacked | a dead-letter exchange |
//! | `nats::NatsBus` | `nats` | JetStream durable pull consumers | after the ack wait, or nacked | a `….dead.…` subject |
//! | `kafka::KafkaBus` | `kafka` | Kafka consumer groups (partitions keyed by stream) | to the partition's next owner (offsets are committed after the ack), or nacked | a `….dlq` topic |

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
pub(crate) mod relay;
pub(crate) mod wire;

pub use memory::InMemoryBus;
pub use relay::Relay;

use crate::error::Result;
use crate::event::{DomainEvent, Metadata, RecordedEvent};
use crate::projection::{EventContext, HandlerError, Projection};
use std::future::Future;

/// A message broker that carries stored events to consumer groups. See the [module
/// documentation](self) for the guarantees every bus keeps.
pub trait EventBus: Send + Sync + 'static {
    /// What [`subscribe`](Self::subscribe) returns: one consumer of a group.
    type Consumer: BusConsumer;

    /// Publishes `events`, in order, and returns once the broker has taken all of them (its
    /// confirmation, where it gives one). On an error, some may have been published: publish
    /// them again (consumers de-duplicate by event id).
    fn publish(&self, events: &[RecordedEvent]) -> impl Future<Output = Result<()>> + Send;

    /// Joins `subscription`'s group (creating it the first time) as one more consumer.
    fn subscribe(
        &self,
        subscription: &ConsumerGroup,
    ) -> impl Future<Output = Result<Self::Consumer>> + Send;
}

/// One consumer of a group: takes deliveries one at a time and acknowledges them.
pub trait BusConsumer: Send + 'static {
    /// Waits for the next delivery. Cancel-safe: dropping the future before it completes (a
    /// `timeout`, a `select!` branch not taken) loses nothing and keeps the order; what the
    /// broker had handed out to it comes from the next call.
    fn next(&mut self) -> impl Future<Output = Result<Delivery>> + Send;

    /// The delivery's effect is done: the group will not see it again.
    fn ack(&mut self, delivery: &Delivery) -> impl Future<Output = Result<()>> + Send;

    /// The delivery failed: deliver it again, or dead-letter it if it has had
    /// [`ConsumerGroup::max_deliveries`] attempts.
    fn nack(&mut self, delivery: &Delivery) -> impl Future<Output = Result<()>> + Send;
}

/// Which events a group receives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Filter {
    /// Every event.
    #[default]
    All,
    /// Events stored under these type names.
    EventTypes(Vec<String>),
    /// Events of aggregates of these types.
    AggregateTypes(Vec<String>),
}

impl Filter {
    /// Whether an event of `event_type`, in a stream of `aggregate_type`, passes.
    pub fn matches(&self, event_type: &str, aggregate_type: &str) -> bool {
        match self {
            Filter::All => true,
            Filter::EventTypes(types) => types.iter().any(|t| t == event_type),
            Filter::AggregateTypes(types) => types.iter().any(|t| t == aggregate_type),
        }
    }
}

/// A consumer group, what it receives, and how often an event is tried before it is
/// dead-lettered.
///
/// ```
/// use eventsource::bus::ConsumerGroup;
/// let all = ConsumerGroup::new("audit");
/// let orders = ConsumerGroup::new("notifications").aggregate_types(["Order"]);
/// let paid = ConsumerGroup::new("billing").event_types(["OrderPaid"]).max_deliveries(3);
/// assert!(paid.filter().matches("OrderPaid", "Order"));
/// assert!(!orders.filter().matches("UserCreated", "User"));
/// # let _ = all;
/// ```
#[derive(Clone, Debug)]
pub struct ConsumerGroup {
    group: String,
    consumer: Option<String>,
    filter: Filter,
    max_deliveries: u32,
    prefetch: usize,
}

impl ConsumerGroup {
    /// The group `group`, receiving every event, tried 5 times.
    pub fn new(group: impl Into<String>) -> Self {
        ConsumerGroup {
            group: group.into(),
            consumer: None,
            filter: Filter::All,
            max_deliveries: 5,
            prefetch: 64,
        }
    }

    /// Receives only events stored under these names.
    pub fn event_types<I, T>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.filter = Filter::EventTypes(types.into_iter().map(Into::into).collect());
        self
    }

    /// Receives only events of `E` (under its name or an alias), with the other types given so
    /// far: `ConsumerGroup::new("g").event::<Paid>().event::<Shipped>()`.
    pub fn event<E: DomainEvent>(mut self) -> Self {
        let mut types = match self.filter {
            Filter::EventTypes(types) => types,
            _ => Vec::new(),
        };
        types.push(E::EVENT_TYPE.to_owned());
        types.extend(E::ALIASES.iter().map(|alias| (*alias).to_owned()));
        self.filter = Filter::EventTypes(types);
        self
    }

    /// Receives only events of aggregates of these types.
    pub fn aggregate_types<I, T>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.filter = Filter::AggregateTypes(types.into_iter().map(Into::into).collect());
        self
    }

    /// Names this consumer within its group (default: a new name per consumer). A consumer that
    /// restarts under the same name gets back what it had not acknowledged at once, where the
    /// broker keeps that per consumer (Redis).
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// Attempts before an event is dead-lettered (at least 1; default 5).
    pub fn max_deliveries(mut self, attempts: u32) -> Self {
        self.max_deliveries = attempts.max(1);
        self
    }

    /// How many unacknowledged deliveries a consumer may hold (default 64).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The filter.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// The attempts before an event is dead-lettered.
    pub fn max_delivery_count(&self) -> u32 {
        self.max_deliveries
    }
}

/// An event handed to a consumer: the stored event, and how many times it was handed out.
#[derive(Debug)]
pub struct Delivery {
    event: RecordedEvent,
    attempt: u32,
    group: String,
    pub(crate) tag: Tag,
}

/// How the bus finds the message again to acknowledge it.
#[derive(Debug, Clone)]
pub(crate) enum Tag {
    Memory(u64),
    #[cfg(feature = "redis")]
    Redis(String),
    #[cfg(feature = "rabbitmq")]
    RabbitMq(lapin::Acker),
    #[cfg(feature = "nats")]
    Nats(std::sync::Arc<async_nats::jetstream::Message>),
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaTag),
}

impl Delivery {
    pub(crate) fn new(event: RecordedEvent, attempt: u32, tag: Tag, group: &str) -> Self {
        let delivery = Delivery {
            event,
            attempt: attempt.max(1),
            group: group.to_owned(),
            tag,
        };
        crate::telemetry::consumed(delivery.bus(), group);
        tracing::trace!(bus = delivery.bus(), group, event_id = %delivery.event.event_id, attempt = delivery.attempt, "delivery handed to a consumer");
        delivery
    }

    /// The kind of bus this came through: `memory`, `redis`, `rabbitmq`, `nats` or `kafka`.
    pub fn bus(&self) -> &'static str {
        match self.tag {
            Tag::Memory(_) => "memory",
            #[cfg(feature = "redis")]
            Tag::Redis(_) => "redis",
            #[cfg(feature = "rabbitmq")]
            Tag::RabbitMq(_) => "rabbitmq",
            #[cfg(feature = "nats")]
            Tag::Nats(_) => "nats",
            #[cfg(feature = "kafka")]
            Tag::Kafka(_) => "kafka",
        }
    }

    /// The consumer group this was delivered to.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The span of handling this delivery, `eventsource.bus.consume` (level info): bus, group,
    /// event id and type, attempt, tenant, correlation and causation ids; never the payload.
    /// Run the handler in it, so that what it records and logs is tied to the event:
    /// `handle(&delivery).instrument(delivery.span()).await`.
    pub fn span(&self) -> tracing::Span {
        let span = tracing::info_span!(
            "eventsource.bus.consume",
            bus = self.bus(),
            group = %self.group,
            event_id = %self.event.event_id,
            event_type = %self.event.event_type,
            attempt = self.attempt,
            tenant = tracing::field::Empty,
            correlation_id = tracing::field::Empty,
            causation_id = tracing::field::Empty,
        );
        if !span.is_disabled() {
            crate::telemetry::record_ids(&span, Some(&self.event.metadata));
        }
        span
    }

    /// The metadata for the events a handler records in reaction to this delivery
    /// ([`Metadata::caused_by`]): the same tenant, actor and correlation id, and this event as
    /// the cause. Pass it to [`Repository::update_with`](crate::Repository::update_with) or
    /// [`Root::set_metadata`](crate::Root::set_metadata).
    pub fn reaction_metadata(&self) -> Metadata {
        Metadata::caused_by(&self.event)
    }

    /// The stored event.
    pub fn event(&self) -> &RecordedEvent {
        &self.event
    }

    /// Which attempt this is: 1 the first time, more when delivered again.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the event was handed out before (and not acknowledged).
    pub fn is_redelivery(&self) -> bool {
        self.attempt > 1
    }

    /// Decodes the payload as `E`, upcasting older schema versions, as a load does.
    pub fn decode<E: DomainEvent>(&self) -> Result<E> {
        self.event.decode()
    }

    /// The event's context, as a projection's handler receives it.
    pub fn context(&self) -> EventContext<'_> {
        EventContext::of(&self.event)
    }

    /// Hands the event to a `#[projection]` type's handler for its type (decoded and upcast);
    /// an event of a type it does not handle is skipped.
    pub fn dispatch<P: Projection>(
        &self,
        handler: &mut P,
    ) -> std::result::Result<(), HandlerError> {
        handler.handle(self.event.view(), &self.context())
    }
}
