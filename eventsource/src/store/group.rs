//! Group commit: concurrent appends to one SQL store coalesced into one transaction.
//!
//! Each append is a durable commit, and a commit costs far more than the rows it writes (an
//! `fsync` on SQLite, a WAL flush and a round trip on PostgreSQL). With group commit on
//! (`with_group_commit()` on the SQLite and PostgreSQL stores), appends go to one committer task
//! per store. The committer takes the first waiting append, then every other append already
//! waiting (up to [`MAX_GROUP_EVENTS`] events), and writes them together: on SQLite, one
//! `BEGIN IMMEDIATE` ... `COMMIT` around one checked insert per append; on PostgreSQL, one
//! statement for the whole group. While that commit runs, the next appends queue, and they form
//! the next group. A lone writer finds nobody waiting and commits alone, as it would without
//! group commit: nothing waits for a group to fill.
//!
//! The expected-version check stays per append: an append whose check fails is not written,
//! and only its caller hears about it, with the error it would have had on its own (the caller
//! runs the append again without the group, which reports the conflict, or recognises an
//! append that was in fact stored). The same happens to every append of a group whose
//! transaction fails: nothing of it was written, and each append is retried on its own.

use super::{AppendResult, ExpectedVersion, StreamId};
use crate::error::Result;
use crate::event::NewEvent;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The most events in one group (several appends' worth; an append larger than this is never
/// grouped).
pub(crate) const MAX_GROUP_EVENTS: usize = 1_000;

/// The most appends waiting for the committer before callers wait to hand theirs over.
const QUEUE: usize = 4_096;

/// One append waiting for its group.
pub(crate) struct Pending {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Arc<[NewEvent]>,
    reply: oneshot::Sender<Grouped>,
}

/// What became of an append in its group.
pub(crate) enum Grouped {
    /// Done: written, or (an append that was alone in its group, written as the store writes
    /// any append) failed with the store's own error for it.
    Done(Result<AppendResult>),
    /// Not written: the caller appends on its own (a failed version check, a duplicate event id,
    /// a failed transaction), which gives the precise outcome.
    Alone,
}

/// How a store writes a group: all of it in one transaction, each append's outcome in order.
pub(crate) trait GroupWriter: Send + Sync + 'static {
    /// Whether two appends to one stream may share a group (PostgreSQL's one-statement group
    /// reads every stream's version before inserting, so they may not).
    const SAME_STREAM_TWICE: bool;

    /// How many groups may be committing at once. SQLite has one writer: 1. PostgreSQL flushes
    /// the log of concurrent commits together, so a second group in flight keeps a connection
    /// busy while the next group forms (one group at a time lost to plain transactions at 8
    /// writers on this machine, where a commit waited about 4 ms for its `fsync`); more than
    /// two made the groups smaller (see the PostgreSQL store's value).
    const IN_FLIGHT: usize;

    /// Writes `group` (at least two appends) in one transaction.
    fn write_group(&self, group: &[Pending]) -> impl Future<Output = Vec<Grouped>> + Send;

    /// Writes one append on its own (a group of one, or an append without group commit),
    /// retried by the store's policy, wake-up of subscribers included.
    fn append_alone(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> impl Future<Output = Result<AppendResult>> + Send;

    /// Called after a group committed something: wakes the store's subscribers.
    fn committed(&self);
}

/// The handle appends go through: a queue to the store's committer task.
#[derive(Clone, Debug)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the committer task of `writer` on the current runtime (`None` outside one).
    pub(crate) fn start<W: GroupWriter>(writer: W) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (queue, receiver) = mpsc::channel(QUEUE);
        runtime.spawn(commit_groups(writer, receiver));
        Some(GroupCommit { queue })
    }

    /// Appends through the committer. `None`: the append was not written, and the caller must
    /// append on its own (see [`Grouped::Alone`]; also when the committer is gone, as when its
    /// runtime was shut down).
    pub(crate) async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Arc<[NewEvent]>,
    ) -> Option<Result<AppendResult>> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            stream: stream.clone(),
            expected,
            events,
            reply,
        };
        self.queue.send(pending).await.ok()?;
        match answer.await.ok()? {
            Grouped::Done(result) => Some(result),
            Grouped::Alone => None,
        }
    }
}

/// The committer: up to `IN_FLIGHT` groups at a time, each made of what is waiting when a
/// commit slot is free.
async fn commit_groups<W: GroupWriter>(writer: W, mut queue: mpsc::Receiver<Pending>) {
    let writer = Arc::new(writer);
    let slots = Arc::new(tokio::sync::Semaphore::new(W::IN_FLIGHT));
    let mut next: Option<Pending> = None;
    loop {
        let first = match next.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        // While every slot is busy, more appends queue: they join this group.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut events = first.events.len();
        let mut group = vec![first];
        while events < MAX_GROUP_EVENTS {
            let Ok(pending) = queue.try_recv() else {
                break;
            };
            let repeated =
                !W::SAME_STREAM_TWICE && group.iter().any(|other| other.stream == pending.stream);
            if repeated || events + pending.events.len() > MAX_GROUP_EVENTS {
                next = Some(pending);
                break;
            }
            events += pending.events.len();
            group.push(pending);
        }
        let writer = Arc::clone(&writer);
        tokio::spawn(async move {
            write(&*writer, group).await;
            drop(slot);
        });
    }
}

/// Writes one group and answers its appends.
async fn write<W: GroupWriter>(writer: &W, mut group: Vec<Pending>) {
    metrics::histogram!(crate::telemetry::GROUP_COMMIT_SIZE).record(group.len() as f64);
    if group.len() == 1 {
        let pending = group.pop().expect("one append");
        // The store's own append, retries and conflict reporting included: its outcome is final.
        let outcome = writer
            .append_alone(&pending.stream, pending.expected, &pending.events)
            .await;
        let _ = pending.reply.send(Grouped::Done(outcome));
        return;
    }
    let outcomes = writer.write_group(&group).await;
    if outcomes
        .iter()
        .any(|outcome| matches!(outcome, Grouped::Done(Ok(_))))
    {
        writer.committed();
    }
    for (pending, outcome) in group.into_iter().zip(outcomes) {
        let _ = pending.reply.send(outcome);
    }
}

/// A batch to append alone: as the caller gave it, or shared with a group that did not take it.
pub(crate) enum Alone {
    Owned(Vec<NewEvent>),
    Shared(Arc<[NewEvent]>),
}

impl std::ops::Deref for Alone {
    type Target = [NewEvent];

    fn deref(&self) -> &[NewEvent] {
        match self {
            Alone::Owned(events) => events,
            Alone::Shared(events) => events,
        }
    }
}

/// Every SQL store's append (without its telemetry): checked, then through `group`'s committer
/// when it is on and takes the batch, else on its own.
pub(crate) async fn append<W: GroupWriter>(
    store: &W,
    group: Option<&GroupCommit>,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<AppendResult> {
    super::validate_append(stream, &events)?;
    match route(group, stream, expected, events).await {
        Ok(result) => result,
        Err(events) => store.append_alone(stream, expected, &events).await,
    }
}

/// Through `group`'s committer when it is on and takes the batch (its result), else the batch
/// back, to append alone.
async fn route(
    group: Option<&GroupCommit>,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> std::result::Result<Result<AppendResult>, Alone> {
    let Some(group) = group.filter(|_| !events.is_empty() && events.len() <= MAX_GROUP_EVENTS)
    else {
        return Err(Alone::Owned(events));
    };
    let events: Arc<[NewEvent]> = events.into();
    match group.append(stream, expected, events.clone()).await {
        Some(result) => Ok(result),
        None => Err(Alone::Shared(events)),
    }
}

/// `store` with group commit on: a committer task writing through a clone of it without one.
/// Outside a Tokio runtime, `store` as it is.
pub(crate) fn turn_on<W: GroupWriter + Clone>(
    mut store: W,
    group: impl Fn(&mut W) -> &mut Option<GroupCommit>,
) -> W {
    let mut writer = store.clone();
    *group(&mut writer) = None;
    *group(&mut store) = GroupCommit::start(writer);
    store
}

/// What every store's `with_group_commit` says of the runtime and of clones.
macro_rules! runtime_note {
    () => {
        "Needs a Tokio runtime (the committer is a task of the runtime this is called on); \
         outside one, the store is returned as it is. Clones made after this share the committer."
    };
}
pub(crate) use runtime_note;
