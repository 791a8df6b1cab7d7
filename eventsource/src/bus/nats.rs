//! NATS JetStream: a stream per application, subjects by aggregate and event type, durable pull
//! consumers, de-duplication by event id.

use super::wire::{check_name, token};
use super::{BusConsumer, ConsumerGroup, Delivery, EventBus, Filter, Tag};
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

const BUS: &str = "nats";

/// A bus on NATS JetStream (feature `nats`).
///
/// Events of the application `name` go to the JetStream stream `name` (created if missing),
/// on the subject `{name}.events.{aggregate type}.{event type}` (`.`, `*`, `>` and spaces in
/// the names become `_`), with the event id as `Nats-Msg-Id`: the server drops a second publish
/// of the same event within the stream's duplicate window (default 2 minutes), so a relay that
/// publishes a batch again after a crash adds nothing. [`publish`](EventBus::publish) returns
/// once the server has acknowledged every message.
///
/// A group is a durable pull consumer named after it, filtered by subject where one subject
/// says it (all events, one event type, one aggregate type) and in the client otherwise;
/// explicit acks; a message not acknowledged within [`ack_wait`](Self::ack_wait) (or nacked) is
/// delivered again, and after [`ConsumerGroup::max_deliveries`] attempts it is republished to
/// `{name}.dead.{group}` and terminated.
///
/// ```no_run
/// # async fn run() -> eventsource::Result<()> {
/// use eventsource::bus::nats::NatsBus;
/// use std::time::Duration;
/// let bus = NatsBus::connect("nats://127.0.0.1:4222", "shop")
///     .await?
///     .ack_wait(Duration::from_secs(30));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct NatsBus {
    js: jetstream::Context,
    name: String,
    ack_wait: Duration,
}

impl fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBus")
            .field("stream", &self.name)
            .field("ack_wait", &self.ack_wait)
            .finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects to the NATS server at `url` and makes sure the application's stream `name`
    /// (letters, digits, `-`, `_`) exists.
    pub async fn connect(url: &str, name: &str) -> Result<Self> {
        check_name("name", name)?;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(Error::bus(BUS, "connect"))?;
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{name}.events.>"), format!("{name}.dead.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(Error::bus(BUS, "create stream"))?;
        Ok(NatsBus {
            js,
            name: name.to_owned(),
            ack_wait: Duration::from_secs(30),
        })
    }

    /// How long a delivery may stay unacknowledged before it is delivered again (default
    /// 30 s), for the groups created from now on. Longer than the slowest handler.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// The subject an event is published on.
    pub fn subject_of(&self, event: &RecordedEvent) -> String {
        format!(
            "{}.events.{}.{}",
            self.name,
            token(event.stream.aggregate_type()),
            token(&event.event_type)
        )
    }

    /// The events `group` dead-lettered, oldest first.
    pub async fn dead_letters(&self, group: &str) -> Result<Vec<RecordedEvent>> {
        let stream = self
            .js
            .get_stream(&self.name)
            .await
            .map_err(Error::bus(BUS, "read dead letters"))?;
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: format!("{}.dead.{}", self.name, token(group)),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                ..Default::default()
            })
            .await
            .map_err(Error::bus(BUS, "read dead letters"))?;
        let mut letters = Vec::new();
        let mut batch = consumer
            .fetch()
            .max_messages(10_000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .map_err(Error::bus(BUS, "read dead letters"))?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(Error::bus(BUS, "read dead letters"))?;
            if let Ok(event) = super::wire::decode(&message.payload) {
                letters.push(event);
            }
        }
        Ok(letters)
    }

    /// Deletes the application's stream, with every message and group: for tests and teardown.
    pub async fn destroy(&self) -> Result<()> {
        self.js
            .delete_stream(&self.name)
            .await
            .map(drop)
            .map_err(Error::bus(BUS, "delete stream"))
    }
}

impl NatsBus {
    /// [`EventBus::publish`], without its span and metrics.
    async fn publish_unobserved(&self, events: &[RecordedEvent]) -> Result<()> {
        // Sent back to back, then every acknowledgement awaited: one round trip per batch.
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let publish = PublishMessage::build()
                .payload(super::wire::encode(event).into())
                .message_id(event.event_id.to_string());
            let ack = self
                .js
                .send_publish(self.subject_of(event), publish)
                .await
                .map_err(Error::bus(BUS, "publish"))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(Error::bus(BUS, "publish"))?;
        }
        Ok(())
    }
}

impl EventBus for NatsBus {
    type Consumer = NatsConsumer;

    async fn publish(&self, events: &[RecordedEvent]) -> Result<()> {
        crate::telemetry::publish("nats", events.len(), self.publish_unobserved(events)).await
    }

    async fn subscribe(&self, subscription: &ConsumerGroup) -> Result<NatsConsumer> {
        let group = subscription.checked_group()?.to_owned();
        let prefix = format!("{}.events", self.name);
        let filter_subject = match subscription.filter() {
            Filter::EventTypes(types) if types.len() == 1 => {
                format!("{prefix}.*.{}", token(&types[0]))
            }
            Filter::AggregateTypes(types) if types.len() == 1 => {
                format!("{prefix}.{}.*", token(&types[0]))
            }
            _ => format!("{prefix}.>"),
        };
        let stream = self
            .js
            .get_stream(&self.name)
            .await
            .map_err(Error::bus(BUS, "subscribe"))?;
        let prefetch = i64::try_from(subscription.prefetch_count()).unwrap_or(i64::MAX);
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &group,
                pull::Config {
                    durable_name: Some(group.clone()),
                    filter_subject,
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    max_ack_pending: prefetch.max(1) * 16,
                    ..Default::default()
                },
            )
            .await
            .map_err(Error::bus(BUS, "subscribe"))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(subscription.prefetch_count())
            .messages()
            .await
            .map_err(Error::bus(BUS, "subscribe"))?;
        Ok(NatsConsumer {
            js: self.js.clone(),
            messages,
            dead_subject: format!("{}.dead.{}", self.name, token(&group)),
            group,
            filter: subscription.filter().clone(),
            max_deliveries: subscription.max_delivery_count(),
            held: None,
        })
    }
}

/// A consumer of a [`NatsBus`] group.
pub struct NatsConsumer {
    js: jetstream::Context,
    messages: pull::Stream,
    dead_subject: String,
    group: String,
    filter: Filter,
    max_deliveries: u32,
    /// The message taken from the stream and not yet handed out or settled.
    held: Option<jetstream::Message>,
}

impl fmt::Debug for NatsConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConsumer")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl NatsConsumer {
    fn message(delivery: &Delivery) -> Result<&jetstream::Message> {
        match &delivery.tag {
            Tag::Nats(message) => Ok(message),
            #[allow(unreachable_patterns)]
            _ => Err(Error::InvalidConfig(
                "this delivery came from another bus".into(),
            )),
        }
    }

    /// Republishes a message to the group's dead letters, then terminates it.
    async fn dead_letter(&self, message: &jetstream::Message) -> Result<()> {
        self.js
            .publish(self.dead_subject.clone(), message.payload.clone())
            .await
            .map_err(Error::bus(BUS, "dead-letter"))?
            .await
            .map_err(Error::bus(BUS, "dead-letter"))?;
        message
            .ack_with(AckKind::Term)
            .await
            .map_err(Error::bus(BUS, "dead-letter"))
    }
}

impl BusConsumer for NatsConsumer {
    async fn next(&mut self) -> Result<Delivery> {
        loop {
            if self.held.is_none() {
                let Some(message) = self.messages.next().await else {
                    return Err(Error::Bus {
                        bus: BUS,
                        operation: "receive",
                        source: "the consumer's message stream ended".into(),
                    });
                };
                self.held = Some(message.map_err(Error::bus(BUS, "receive"))?);
            }
            // Held until settled, so that a `next()` dropped while it is being dead-lettered or
            // passed over takes it up again instead of losing it until the ack wait runs out.
            let Some(message) = self.held.as_ref() else {
                continue;
            };
            let attempt = message
                .info()
                .map(|info| u32::try_from(info.delivered).unwrap_or(1))
                .unwrap_or(1);
            let event = match super::wire::decode(&message.payload) {
                Ok(event) => event,
                Err(reason) => {
                    let id = message.subject.to_string();
                    self.dead_letter(message).await?;
                    self.held = None;
                    return Err(Error::MalformedMessage {
                        bus: BUS,
                        message: id,
                        reason,
                    });
                }
            };
            if !self
                .filter
                .matches(&event.event_type, event.stream.aggregate_type())
            {
                message.ack().await.map_err(Error::bus(BUS, "ack"))?;
                self.held = None;
                continue;
            }
            if attempt > self.max_deliveries {
                tracing::warn!(event_id = %event.event_id, attempt, group = %self.group, "bus delivery dead-lettered after its last attempt");
                crate::telemetry::bus_dead_lettered("nats", &self.group);
                self.dead_letter(message).await?;
                self.held = None;
                continue;
            }
            let Some(message) = self.held.take() else {
                continue;
            };
            return Ok(Delivery::new(
                event,
                attempt,
                Tag::Nats(Arc::new(message)),
                &self.group,
            ));
        }
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<()> {
        // A plain ack: if it is lost, the event comes again, which at-least-once allows.
        Self::message(delivery)?
            .ack()
            .await
            .map_err(Error::bus(BUS, "ack"))
    }

    async fn nack(&mut self, delivery: &Delivery) -> Result<()> {
        let message = Self::message(delivery)?;
        if delivery.attempt() >= self.max_deliveries {
            tracing::warn!(event_id = %delivery.event().event_id, attempt = delivery.attempt(), group = %self.group, "bus delivery dead-lettered after its last attempt");
            crate::telemetry::bus_dead_lettered("nats", &self.group);
            return self.dead_letter(message).await;
        }
        message
            .ack_with(AckKind::Nak(None))
            .await
            .map_err(Error::bus(BUS, "nack"))
    }
}
