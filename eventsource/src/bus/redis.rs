//! Redis Streams: one stream per application, consumer groups, reclaim of a dead consumer's
//! pending messages (`XAUTOCLAIM`), trimming.

use super::wire::check_name;
use super::{BusConsumer, ConsumerGroup, Delivery, EventBus, Filter, Tag};
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId as Entry, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, Value};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

const BUS: &str = "redis";

/// An entry's fields, as `XRANGE` returns them.
type Fields = Vec<(String, Vec<u8>)>;

/// A bus on Redis Streams (feature `redis`).
///
/// Every event goes to one stream, `{name}:events`, as an entry with the fields `event` (the
/// event as JSON), `type` and `aggregate`. A [`ConsumerGroup`]'s group is a Redis consumer
/// group on that stream, created at its first subscription and reading from the stream's first
/// retained entry; its consumers share the entries (`XREADGROUP`), acknowledge them (`XACK`),
/// and claim (`XAUTOCLAIM`) the entries another consumer took and left unacknowledged for
/// longer than [`claim_after`](Self::claim_after): a crashed consumer's events go to the
/// living. An entry delivered [`ConsumerGroup::max_deliveries`] times goes to `{name}:dead` and
/// is acknowledged. Entries of types the group's filter does not take are acknowledged unseen.
///
/// The stream keeps every entry unless [`max_len`](Self::max_len) trims it (`MAXLEN ~`):
/// trimming also drops entries a slow group has not read yet, so size it for the slowest.
///
/// ```no_run
/// # async fn run() -> eventsource::Result<()> {
/// use eventsource::bus::redis::RedisBus;
/// use std::time::Duration;
/// let bus = RedisBus::connect("redis://127.0.0.1:6379", "shop")
///     .await?
///     .claim_after(Duration::from_secs(30))
///     .max_len(Some(1_000_000));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisBus {
    client: Client,
    conn: MultiplexedConnection,
    key: String,
    dead_key: String,
    max_len: Option<usize>,
    claim_after: Duration,
    block: Duration,
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBus")
            .field("key", &self.key)
            .field("max_len", &self.max_len)
            .field("claim_after", &self.claim_after)
            .finish_non_exhaustive()
    }
}

fn redis_error(operation: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
    Error::bus(BUS, operation)
}

impl RedisBus {
    /// Connects to the Redis server at `url` (`redis://host:port/db`), for the application
    /// `name` (letters, digits, `-`, `_`): its stream is `{name}:events`.
    pub async fn connect(url: &str, name: &str) -> Result<Self> {
        check_name("name", name)?;
        let client = Client::open(url).map_err(redis_error("connect"))?;
        let conn = client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new()
                    .set_response_timeout(Some(Duration::from_secs(10)))
                    .set_connection_timeout(Some(Duration::from_secs(5))),
            )
            .await
            .map_err(redis_error("connect"))?;
        Ok(RedisBus {
            client,
            conn,
            key: format!("{name}:events"),
            dead_key: format!("{name}:dead"),
            max_len: None,
            claim_after: Duration::from_secs(30),
            block: Duration::from_secs(1),
        })
    }

    /// Trims the stream to about `max_len` entries at each publish (`None`, the default: keep
    /// every entry).
    pub fn max_len(mut self, max_len: Option<usize>) -> Self {
        self.max_len = max_len;
        self
    }

    /// How long an entry stays with a consumer that does not acknowledge it before another
    /// consumer of the group claims it (default 30 s). Longer than the slowest handler.
    pub fn claim_after(mut self, idle: Duration) -> Self {
        self.claim_after = idle;
        self
    }

    /// The stream's key.
    pub fn stream_key(&self) -> &str {
        &self.key
    }

    /// The dead-letter stream's key: entries that used up their deliveries, with the group
    /// that gave up on them.
    pub fn dead_letter_key(&self) -> &str {
        &self.dead_key
    }

    /// The events of `group` in the dead-letter stream, oldest first.
    pub async fn dead_letters(&self, group: &str) -> Result<Vec<RecordedEvent>> {
        let entries: Vec<(String, Fields)> = redis::cmd("XRANGE")
            .arg(&self.dead_key)
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_error("read dead letters"))?;
        let mut letters = Vec::new();
        for (_, fields) in entries {
            let of_group = fields
                .iter()
                .any(|(k, v)| k == "group" && v.as_slice() == group.as_bytes());
            if !of_group {
                continue;
            }
            if let Some((_, data)) = fields.iter().find(|(k, _)| k == "event")
                && let Ok(event) = super::wire::decode(data)
            {
                letters.push(event);
            }
        }
        Ok(letters)
    }

    /// Deletes the stream, its dead letters and every group: for tests and teardown.
    pub async fn destroy(&self) -> Result<()> {
        redis::cmd("DEL")
            .arg(&self.key)
            .arg(&self.dead_key)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(redis_error("delete"))
    }
}

impl RedisBus {
    /// [`EventBus::publish`], without its span and metrics.
    async fn publish_unobserved(&self, events: &[RecordedEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for event in events {
            let cmd = pipe.cmd("XADD").arg(&self.key);
            if let Some(max_len) = self.max_len {
                cmd.arg("MAXLEN").arg("~").arg(max_len);
            }
            cmd.arg("*")
                .arg("event")
                .arg(super::wire::encode(event))
                .arg("type")
                .arg(&event.event_type)
                .arg("aggregate")
                .arg(event.stream.aggregate_type());
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(redis_error("publish"))
    }
}

impl EventBus for RedisBus {
    type Consumer = RedisConsumer;

    async fn publish(&self, events: &[RecordedEvent]) -> Result<()> {
        crate::telemetry::publish("redis", events.len(), self.publish_unobserved(events)).await
    }

    async fn subscribe(&self, subscription: &ConsumerGroup) -> Result<RedisConsumer> {
        let group = subscription.checked_group()?.to_owned();
        let name = subscription.consumer_name();
        // The consumer's own connection: its blocking reads do not hold up the publisher's, nor
        // its acknowledgements.
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new()
                    .set_response_timeout(Some(self.block + Duration::from_secs(10)))
                    .set_connection_timeout(Some(Duration::from_secs(5))),
            )
            .await
            .map_err(redis_error("connect"))?;
        let mut reader = Reader {
            conn,
            key: self.key.clone(),
            dead_key: self.dead_key.clone(),
            group,
            name,
            filter: subscription.filter().clone(),
            max_deliveries: subscription.max_delivery_count(),
            count: subscription.prefetch_count(),
            claim_after: self.claim_after,
            block: self.block,
        };
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&reader.key)
            .arg(&reader.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut reader.conn)
            .await;
        match created {
            Ok(()) => {}
            Err(error) if error.code() == Some("BUSYGROUP") => {}
            Err(error) => return Err(redis_error("create group")(error)),
        }
        Ok(RedisConsumer {
            reader: reader.clone(),
            control: Reader {
                conn: self.conn.clone(),
                ..reader
            },
            buffer: VecDeque::new(),
            fetch: None,
            last_claim: None,
            claim_cursor: "0-0".to_owned(),
            own_pending: Some("0".to_owned()),
        })
    }
}

/// A consumer of a [`RedisBus`] group.
///
/// Its reads from Redis outlive a cancelled [`next`](BusConsumer::next): the reply of a read
/// whose `next()` was dropped is kept and handed out by the next call, so entries Redis handed
/// to this consumer are never thrown away (they would come back only when claimed, after the
/// claim timeout and behind later events).
pub struct RedisConsumer {
    /// Reads, and what reading needs to settle an entry (filtered out, dead-lettered).
    reader: Reader,
    /// The same, on the bus's connection: acknowledgements do not wait behind a blocking read.
    control: Reader,
    buffer: VecDeque<Result<Delivery>>,
    /// The read in progress, kept across cancelled calls to `next()`.
    fetch: Option<Fetch>,
    last_claim: Option<Instant>,
    claim_cursor: String,
    /// Where re-reading this consumer's own unacknowledged entries stands (`None`: done). Set
    /// at the start, and after a failed read, which may have handed out entries unseen.
    own_pending: Option<String>,
}

/// A read in progress: its deliveries, and where the next read of its kind starts.
type Fetch = Pin<Box<dyn Future<Output = Result<(Round, Vec<Result<Delivery>>)>> + Send>>;

/// Which kind of read a [`Fetch`] is, and what it leaves for the next one.
enum Round {
    /// This consumer's own pending entries, up to and including this id (`None`: none left).
    OwnPending(Option<String>),
    /// Entries claimed from other consumers; the cursor to claim from next.
    Claimed(String),
    /// New entries.
    New,
}

impl fmt::Debug for RedisConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConsumer")
            .field("key", &self.reader.key)
            .field("group", &self.reader.group)
            .field("name", &self.reader.name)
            .finish_non_exhaustive()
    }
}

/// What reading and settling entries needs: owned, so that a read can outlive a call.
#[derive(Clone)]
struct Reader {
    conn: MultiplexedConnection,
    key: String,
    dead_key: String,
    group: String,
    name: String,
    filter: Filter,
    max_deliveries: u32,
    count: usize,
    claim_after: Duration,
    block: Duration,
}

impl Reader {
    async fn xack(&mut self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("XACK")
            .arg(&self.key)
            .arg(&self.group)
            .arg(ids)
            .query_async::<()>(&mut self.conn)
            .await
            .map_err(redis_error("ack"))
    }

    /// Moves an entry to the dead-letter stream and acknowledges it.
    async fn dead_letter(&mut self, id: &str, data: &[u8], reason: &str) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XADD")
            .arg(&self.dead_key)
            .arg("*")
            .arg("event")
            .arg(data)
            .arg("group")
            .arg(&self.group)
            .arg("id")
            .arg(id)
            .arg("reason")
            .arg(reason)
            .ignore()
            .cmd("XACK")
            .arg(&self.key)
            .arg(&self.group)
            .arg(id)
            .ignore();
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(redis_error("dead-letter"))
    }

    /// How many times each of `ids` (pending with this consumer) was delivered.
    async fn delivery_counts(
        &mut self,
        first: &str,
        last: &str,
        n: usize,
    ) -> Result<Vec<(String, u32)>> {
        let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&self.key)
            .arg(&self.group)
            .arg(first)
            .arg(last)
            .arg(n)
            .arg(&self.name)
            .query_async(&mut self.conn)
            .await
            .map_err(redis_error("read pending"))?;
        Ok(rows
            .into_iter()
            .map(|(id, _, _, count)| (id, u32::try_from(count).unwrap_or(u32::MAX)))
            .collect())
    }

    /// Turns entries into deliveries (or acknowledges, dead-letters and reports them).
    async fn take(&mut self, entries: Vec<Entry>, counted: bool) -> Result<Vec<Result<Delivery>>> {
        let counts = match (counted, entries.first(), entries.last()) {
            (true, Some(first), Some(last)) => {
                let (first, last) = (first.id.clone(), last.id.clone());
                self.delivery_counts(&first, &last, entries.len()).await?
            }
            _ => Vec::new(),
        };
        let mut deliveries = Vec::with_capacity(entries.len());
        let mut skipped = Vec::new();
        for entry in entries {
            let attempt = counts
                .iter()
                .find(|(id, _)| *id == entry.id)
                .map_or(1, |(_, count)| *count);
            let Some(Value::BulkString(data)) = entry.map.get("event") else {
                // Trimmed away, or not ours: nothing to deliver.
                self.dead_letter(&entry.id, b"", "entry has no `event` field")
                    .await?;
                deliveries.push(Err(Error::MalformedMessage {
                    bus: BUS,
                    message: entry.id.clone(),
                    reason: "the entry has no `event` field".into(),
                }));
                continue;
            };
            let event = match super::wire::decode(data) {
                Ok(event) => event,
                Err(reason) => {
                    self.dead_letter(&entry.id, data, &reason).await?;
                    deliveries.push(Err(Error::MalformedMessage {
                        bus: BUS,
                        message: entry.id.clone(),
                        reason,
                    }));
                    continue;
                }
            };
            if !self
                .filter
                .matches(&event.event_type, event.stream.aggregate_type())
            {
                skipped.push(entry.id);
                continue;
            }
            if attempt > self.max_deliveries {
                tracing::warn!(event_id = %event.event_id, attempt, group = %self.group, "bus delivery dead-lettered after its last attempt");
                crate::telemetry::bus_dead_lettered("redis", &self.group);
                let data = data.clone();
                self.dead_letter(&entry.id, &data, "no attempts left")
                    .await?;
                continue;
            }
            deliveries.push(Ok(Delivery::new(
                event,
                attempt,
                Tag::Redis(entry.id),
                &self.group,
            )));
        }
        self.xack(&skipped).await?;
        Ok(deliveries)
    }

    /// Claims entries other consumers left unacknowledged for too long, from `cursor`.
    async fn claim(mut self, cursor: String) -> Result<(Round, Vec<Result<Delivery>>)> {
        let min_idle = u64::try_from(self.claim_after.as_millis()).unwrap_or(u64::MAX);
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&self.name)
            .arg(min_idle)
            .arg(&cursor)
            .arg("COUNT")
            .arg(self.count)
            .query_async(&mut self.conn)
            .await
            .map_err(redis_error("claim"))?;
        if !reply.deleted_ids.is_empty() {
            // Trimmed while pending: nothing is left to deliver.
            self.xack(&reply.deleted_ids).await?;
        }
        let deliveries = self.take(reply.claimed, true).await?;
        Ok((Round::Claimed(reply.next_stream_id), deliveries))
    }

    /// This consumer's own pending entries after `after`: what it was handed (before a restart,
    /// or by a read that failed) and never acknowledged.
    async fn own_pending(mut self, after: String) -> Result<(Round, Vec<Result<Delivery>>)> {
        let entries = self.read(&after, None).await?;
        let last = entries.last().map(|entry| entry.id.clone());
        let deliveries = self.take(entries, true).await?;
        Ok((Round::OwnPending(last), deliveries))
    }

    /// New entries, waiting up to `block` for some.
    async fn new_entries(mut self) -> Result<(Round, Vec<Result<Delivery>>)> {
        let block = self
            .block
            .min(self.claim_after / 2)
            .max(Duration::from_millis(10));
        let entries = self.read(">", Some(block)).await?;
        let deliveries = self.take(entries, false).await?;
        Ok((Round::New, deliveries))
    }

    async fn read(&mut self, from: &str, block: Option<Duration>) -> Result<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.name)
            .arg("COUNT")
            .arg(self.count);
        if let Some(block) = block {
            cmd.arg("BLOCK")
                .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX));
        }
        cmd.arg("STREAMS").arg(&self.key).arg(from);
        let reply: Option<StreamReadReply> = cmd
            .query_async(&mut self.conn)
            .await
            .map_err(redis_error("read"))?;
        Ok(reply
            .map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect())
            .unwrap_or_default())
    }
}

impl RedisConsumer {
    /// This consumer's name in its group.
    pub fn name(&self) -> &str {
        &self.reader.name
    }

    fn entry_id(delivery: &Delivery) -> Result<&str> {
        match &delivery.tag {
            Tag::Redis(id) => Ok(id),
            #[allow(unreachable_patterns)]
            _ => Err(Error::InvalidConfig(
                "this delivery came from another bus".into(),
            )),
        }
    }

    /// The read to make next: own pending entries first, then claims when due, then new ones.
    fn start(&mut self) -> Fetch {
        let reader = self.reader.clone();
        if let Some(after) = self.own_pending.clone() {
            return Box::pin(reader.own_pending(after));
        }
        let claim_due = self
            .last_claim
            .is_none_or(|at| at.elapsed() >= self.reader.claim_after / 2);
        if claim_due {
            self.last_claim = Some(Instant::now());
            return Box::pin(reader.claim(self.claim_cursor.clone()));
        }
        Box::pin(reader.new_entries())
    }
}

impl BusConsumer for RedisConsumer {
    async fn next(&mut self) -> Result<Delivery> {
        loop {
            if let Some(delivery) = self.buffer.pop_front() {
                return delivery;
            }
            if self.fetch.is_none() {
                self.fetch = Some(self.start());
            }
            let Some(fetch) = self.fetch.as_mut() else {
                continue;
            };
            // Dropped here, `next()` leaves the read in `self.fetch`, to be finished next time.
            let fetched = fetch.await;
            self.fetch = None;
            let (round, deliveries) = match fetched {
                Ok(fetched) => fetched,
                Err(error) => {
                    self.own_pending = Some("0".to_owned());
                    return Err(error);
                }
            };
            match round {
                Round::OwnPending(last) => self.own_pending = last,
                Round::Claimed(cursor) => self.claim_cursor = cursor,
                Round::New => {}
            }
            self.buffer.extend(deliveries);
        }
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<()> {
        let id = Self::entry_id(delivery)?.to_owned();
        self.control.xack(&[id]).await
    }

    async fn nack(&mut self, delivery: &Delivery) -> Result<()> {
        let id = Self::entry_id(delivery)?.to_owned();
        if delivery.attempt() >= self.control.max_deliveries {
            tracing::warn!(event_id = %delivery.event().event_id, attempt = delivery.attempt(), group = %self.control.group, "bus delivery dead-lettered after its last attempt");
            crate::telemetry::bus_dead_lettered("redis", &self.control.group);
            return self
                .control
                .dead_letter(
                    &id,
                    &super::wire::encode(delivery.event()),
                    "no attempts left",
                )
                .await;
        }
        // Handed out first (queued before the claim, so a cancelled nack still retries it), and
        // claimed again by this consumer, which counts a delivery and keeps others off it.
        self.buffer.push_front(Ok(Delivery::new(
            delivery.event().clone(),
            delivery.attempt() + 1,
            Tag::Redis(id.clone()),
            &self.control.group,
        )));
        redis::cmd("XCLAIM")
            .arg(&self.control.key)
            .arg(&self.control.group)
            .arg(&self.control.name)
            .arg(0)
            .arg(&id)
            .query_async::<Value>(&mut self.control.conn)
            .await
            .map_err(redis_error("nack"))?;
        Ok(())
    }
}
