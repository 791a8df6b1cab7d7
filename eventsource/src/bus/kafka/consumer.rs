//! The Kafka consumer: a group member fetching on its own task, its partitions' offsets
//! committed only after the application acknowledged what came before.

use super::*;

/// A message as fetched: where it is, and its bytes.
pub(super) struct Fetched {
    pub(super) partition: i32,
    pub(super) offset: i64,
    /// The assignment it was fetched under: a message of an older one belongs to whichever
    /// consumer has the partition now.
    pub(super) epoch: u64,
    pub(super) payload: Option<Vec<u8>>,
    /// Set when it comes back after a nack.
    pub(super) attempt: Option<u32>,
}

/// Where a [`KafkaConsumer`]'s delivery sits, to acknowledge it.
#[derive(Debug, Clone)]
pub(crate) struct KafkaTag {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) epoch: u64,
}

/// What a consumer knows of its partitions, shared with the rebalance callbacks.
#[derive(Default)]
pub(super) struct State {
    /// Bumped at every revocation and assignment.
    pub(super) epoch: u64,
    pub(super) partitions: HashMap<i32, Track>,
}

/// One assigned partition.
pub(super) struct Track {
    /// Handed out (or given back by a nack), not yet acknowledged.
    pub(super) outstanding: BTreeSet<i64>,
    /// One past the newest offset handed out or passed over.
    pub(super) next: i64,
    /// The offset last committed by this consumer.
    pub(super) committed: i64,
    /// Offsets below this were handed out before, by some consumer of the group.
    pub(super) handed_before: i64,
    /// The hand-out mark last committed by this consumer.
    pub(super) handed_mark: i64,
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

pub(super) fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The consumer's callbacks: rebalances commit what was processed, and start each assignment
/// afresh.
pub(super) struct GroupContext {
    pub(super) topic: String,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) handed: Arc<BaseConsumer>,
    pub(super) assigned: watch::Sender<u64>,
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
pub(super) async fn fetch(
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
    pub(super) consumer: Arc<StreamConsumer<GroupContext>>,
    pub(super) handed: Arc<BaseConsumer>,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) receiver: mpsc::Receiver<Result<Fetched>>,
    pub(super) backlog: VecDeque<Fetched>,
    pub(super) producer: FutureProducer,
    pub(super) topic: String,
    pub(super) dead_topic: String,
    pub(super) group: String,
    pub(super) filter: Filter,
    pub(super) max_deliveries: u32,
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
pub(super) enum Step {
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
            let event = match fetched.payload.as_deref().map(crate::bus::wire::decode) {
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
            payload: Some(crate::bus::wire::encode(delivery.event())),
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
}
