//! The in-process bus: bounded queues, one per group, with back-pressure.

use super::{BusConsumer, ConsumerGroup, Delivery, EventBus, Filter, Tag};
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

/// A bus inside one process, for modules of one application (and for tests).
///
/// Each group has a bounded queue: [`publish`](EventBus::publish) waits while a group it
/// delivers to holds `capacity` events not yet acknowledged (back-pressure), so memory never
/// grows without bound; a slow group slows the publisher instead. A consumer that fails
/// (nacks, or is dropped with deliveries unacknowledged) sends them back to the front of its
/// group's queue, and never holds up the other groups' consumers. A group receives the events
/// published after it was first subscribed.
///
/// ```
/// use eventsource::bus::{BusConsumer, EventBus, InMemoryBus, ConsumerGroup};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> eventsource::Result<()> {
/// # use eventsource::prelude::*;
/// # use eventsource::{ExpectedVersion, StreamId};
/// # use eventsource::NewEvent;
/// # let store = InMemoryEventStore::new();
/// # let stream = StreamId::new("Order", "o-1")?;
/// # store.append(&stream, ExpectedVersion::Any, vec![NewEvent::from_json("Placed", 1, "{}")]).await?;
/// # let events = store.read_stream(&stream, eventsource::StreamQuery::all()).await?;
/// let bus = InMemoryBus::new(1024);
/// let mut mailer = bus.subscribe(&ConsumerGroup::new("mailer")).await?;
/// bus.publish(&events).await?;
/// let delivery = mailer.next().await?;
/// assert_eq!(delivery.event().event_type, "Placed");
/// mailer.ack(&delivery).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct InMemoryBus {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    groups: Mutex<HashMap<String, Arc<Group>>>,
}

/// One group's queue.
struct Group {
    name: String,
    filter: Filter,
    max_deliveries: u32,
    capacity: usize,
    state: Mutex<GroupState>,
    /// Wakes a consumer: something was queued.
    queued: Notify,
    /// Wakes a publisher: something was acknowledged or dead-lettered.
    freed: Notify,
}

#[derive(Default)]
struct GroupState {
    /// Waiting for a consumer: the event and how many attempts it has had.
    queue: VecDeque<(RecordedEvent, u32)>,
    /// Handed out and not acknowledged, by tag.
    in_flight: HashMap<u64, (RecordedEvent, u32)>,
    dead: Vec<RecordedEvent>,
    next_tag: u64,
}

impl GroupState {
    fn held(&self) -> usize {
        self.queue.len() + self.in_flight.len()
    }
}

impl fmt::Debug for InMemoryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups = lock(&self.inner.groups);
        f.debug_struct("InMemoryBus")
            .field("capacity", &self.inner.capacity)
            .field("groups", &groups.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl InMemoryBus {
    /// A bus whose groups each hold at most `capacity` unacknowledged events (at least 1).
    pub fn new(capacity: usize) -> Self {
        InMemoryBus {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                groups: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The events of `group` that were dead-lettered after their last attempt, oldest first.
    pub fn dead_letters(&self, group: &str) -> Vec<RecordedEvent> {
        let groups = lock(&self.inner.groups);
        groups
            .get(group)
            .map(|g| lock(&g.state).dead.clone())
            .unwrap_or_default()
    }

    /// How many events `group` holds: queued, or handed out and not acknowledged.
    pub fn backlog(&self, group: &str) -> usize {
        let groups = lock(&self.inner.groups);
        groups.get(group).map_or(0, |g| lock(&g.state).held())
    }

    fn groups(&self) -> Vec<Arc<Group>> {
        lock(&self.inner.groups).values().cloned().collect()
    }
}

impl Default for InMemoryBus {
    /// A bus of capacity 1024 per group.
    fn default() -> Self {
        InMemoryBus::new(1024)
    }
}

impl InMemoryBus {
    /// [`EventBus::publish`], without its span and metrics.
    async fn publish_unobserved(&self, events: &[RecordedEvent]) -> Result<()> {
        let groups = self.groups();
        for event in events {
            let aggregate_type = event.stream.aggregate_type();
            for group in groups
                .iter()
                .filter(|g| g.filter.matches(&event.event_type, aggregate_type))
            {
                loop {
                    // Registered before the check, so a release in between is not missed.
                    let freed = group.freed.notified();
                    {
                        let mut state = lock(&group.state);
                        if state.held() < group.capacity {
                            state.queue.push_back((event.clone(), 0));
                            break;
                        }
                    }
                    freed.await;
                }
                group.queued.notify_one();
            }
        }
        Ok(())
    }
}

impl EventBus for InMemoryBus {
    type Consumer = InMemoryConsumer;

    async fn publish(&self, events: &[RecordedEvent]) -> Result<()> {
        crate::telemetry::publish("memory", events.len(), self.publish_unobserved(events)).await
    }

    async fn subscribe(&self, subscription: &ConsumerGroup) -> Result<InMemoryConsumer> {
        let group = {
            let mut groups = lock(&self.inner.groups);
            let group = groups
                .entry(subscription.group().to_owned())
                .or_insert_with(|| {
                    Arc::new(Group {
                        name: subscription.group().to_owned(),
                        filter: subscription.filter().clone(),
                        max_deliveries: subscription.max_delivery_count(),
                        capacity: self.inner.capacity,
                        state: Mutex::new(GroupState::default()),
                        queued: Notify::new(),
                        freed: Notify::new(),
                    })
                });
            if group.filter != *subscription.filter() {
                return Err(Error::InvalidConfig(format!(
                    "bus group `{}` exists with another filter ({:?}, not {:?})",
                    subscription.group(),
                    group.filter,
                    subscription.filter()
                )));
            }
            Arc::clone(group)
        };
        Ok(InMemoryConsumer {
            group,
            mine: Vec::new(),
        })
    }
}

/// A consumer of an [`InMemoryBus`] group. Dropping it sends what it had not acknowledged back
/// to its group, as a crash would.
pub struct InMemoryConsumer {
    group: Arc<Group>,
    /// The tags this consumer holds.
    mine: Vec<u64>,
}

impl fmt::Debug for InMemoryConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryConsumer")
            .field("unacknowledged", &self.mine.len())
            .finish()
    }
}

impl InMemoryConsumer {
    fn tag(delivery: &Delivery) -> Result<u64> {
        match delivery.tag {
            Tag::Memory(tag) => Ok(tag),
            #[allow(unreachable_patterns)]
            _ => Err(Error::InvalidConfig(
                "this delivery came from another bus".into(),
            )),
        }
    }

    /// Takes a delivery back from this consumer's hold.
    fn release(&mut self, tag: u64) -> Option<(RecordedEvent, u32)> {
        self.mine.retain(|t| *t != tag);
        lock(&self.group.state).in_flight.remove(&tag)
    }
}

impl BusConsumer for InMemoryConsumer {
    async fn next(&mut self) -> Result<Delivery> {
        loop {
            let queued = self.group.queued.notified();
            {
                let mut state = lock(&self.group.state);
                if let Some((event, attempts)) = state.queue.pop_front() {
                    let tag = state.next_tag;
                    state.next_tag += 1;
                    state.in_flight.insert(tag, (event.clone(), attempts + 1));
                    let more = !state.queue.is_empty();
                    drop(state);
                    self.mine.push(tag);
                    if more {
                        // Pass the wake-up on to another consumer of the group.
                        self.group.queued.notify_one();
                    }
                    return Ok(Delivery::new(
                        event,
                        attempts + 1,
                        Tag::Memory(tag),
                        &self.group.name,
                    ));
                }
            }
            queued.await;
        }
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<()> {
        let tag = Self::tag(delivery)?;
        self.release(tag);
        self.group.freed.notify_waiters();
        Ok(())
    }

    async fn nack(&mut self, delivery: &Delivery) -> Result<()> {
        let tag = Self::tag(delivery)?;
        if let Some((event, attempts)) = self.release(tag) {
            let mut state = lock(&self.group.state);
            if attempts >= self.group.max_deliveries {
                tracing::warn!(
                    event_id = %event.event_id,
                    attempts,
                    "bus delivery dead-lettered after its last attempt"
                );
                state.dead.push(event);
                crate::telemetry::bus_dead_lettered("memory", &self.group.name);
                drop(state);
                self.group.freed.notify_waiters();
            } else {
                state.queue.push_front((event, attempts));
                drop(state);
                self.group.queued.notify_one();
            }
        }
        Ok(())
    }
}

impl Drop for InMemoryConsumer {
    fn drop(&mut self) {
        if self.mine.is_empty() {
            return;
        }
        let mut state = lock(&self.group.state);
        // Back to the front, in the order they were handed out.
        for tag in self.mine.drain(..).rev() {
            if let Some(held) = state.in_flight.remove(&tag) {
                state.queue.push_front(held);
            }
        }
        drop(state);
        self.group.queued.notify_one();
    }
}
