//! One read of the log for several projections: the pages a manager's in-process projections
//! read are shared among those at the same position.
//!
//! With two or more in-process projections under one [`Subscriptions`](super::Subscriptions),
//! each reads its pages through a [`SharedLog`]: a page is read once for every event type any
//! of them handles (and the whole context if any needs it), kept as owned rows, and each
//! projection folds the rows of its own types. Two projections at the same position therefore
//! cost one query, not two:
//! - a read in flight is joined by every projection asking for the same page, as long as no
//!   append was signalled since it started (a page read before an append the projection was
//!   woken for must not stand in for its own read);
//! - a full page (as many rows as the batch size) can never change, so the last few are kept
//!   for projections a little behind.
//!
//! A projection alone in its manager reads on its own, through the store's lean fold.

use crate::error::{Error, Result};
use crate::event::{EventView, Metadata};
use crate::projection::{ContextFields, EventContext};
use crate::store::{EventStore, FoldEnd, FoldItem, ReadAll};
use crate::stream::{Position, StreamId};
use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::OnceCell;

/// Full pages kept per member, for members a little behind the others.
const PAGES_KEPT_PER_MEMBER: usize = 2;

/// A page's key: where it starts and how many rows it holds at most.
type Key = (Position, usize);

/// One row of a shared page, owned.
struct Row {
    position: Position,
    item: std::result::Result<Event, Damaged>,
}

struct Event {
    stream: StreamId,
    version: u64,
    event_type: Box<str>,
    schema_version: u32,
    payload: Box<str>,
    event_id: uuid::Uuid,
    occurred_at: chrono::DateTime<chrono::Utc>,
    metadata: Option<Box<Metadata>>,
}

/// A row that could not be read ([`Error::Corrupt`], the only error a fold feeds): its members
/// see it as the same error (and read it again on their own to dead-letter it).
struct Damaged {
    stream: StreamId,
    version: Option<u64>,
    event_type: Option<String>,
    reason: String,
}

impl Damaged {
    fn of(error: &Error) -> Self {
        match error {
            Error::Corrupt {
                stream,
                version,
                event_type,
                reason,
                ..
            } => Damaged {
                stream: stream.clone(),
                version: *version,
                event_type: event_type.clone(),
                reason: reason.clone(),
            },
            other => Damaged {
                stream: StreamId::unchecked("?", "?"),
                version: None,
                event_type: None,
                reason: other.to_string(),
            },
        }
    }

    fn error(&self, position: Position) -> Error {
        Error::corrupt(&self.stream, self.reason.clone()).at_row(
            Some(position),
            self.version,
            self.event_type.as_deref(),
        )
    }
}

/// A page read once: its rows, how many rows the read returned, and the last position it read
/// (rows a filter passed over included).
struct Page {
    rows: Vec<Row>,
    read: usize,
    last: Option<Position>,
}

/// A read in flight, joined by the members that ask for the same page meanwhile.
struct InFlight {
    key: Key,
    page: Arc<OnceCell<Option<Arc<Page>>>>,
}

#[derive(Default)]
struct State {
    /// The union of the members' event types.
    event_types: Option<Vec<String>>,
    /// Whether a member reads every type (then the page does too).
    all_types: bool,
    /// The context the most demanding member reads.
    context: ContextFields,
    members: usize,
    /// The last full pages, oldest first.
    full_pages: VecDeque<(Key, Arc<Page>)>,
    in_flight: Vec<InFlight>,
}

/// The pages several projections of one manager share.
pub(crate) struct SharedLog<S> {
    store: S,
    state: Mutex<State>,
}

impl<S: EventStore> SharedLog<S> {
    pub(crate) fn new(store: S) -> Self {
        SharedLog {
            store,
            state: Mutex::new(State::default()),
        }
    }

    /// Registers a member that handles `event_types` (empty: all) and reads `context`.
    pub(crate) fn join(&self, event_types: &[&'static str], context: ContextFields) {
        let mut state = self.lock();
        state.members += 1;
        state.context = state.context.and(context);
        if event_types.is_empty() {
            state.all_types = true;
        }
        let types = state.event_types.get_or_insert_with(Vec::new);
        for name in event_types {
            if !types.iter().any(|known| known == name) {
                types.push((*name).to_owned());
            }
        }
    }

    /// Whether reads are shared: there are two members or more.
    pub(crate) fn shared(&self) -> bool {
        self.lock().members > 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The page of at most `batch_size` rows after `after`, read for every member, folded for
    /// one whose types are `event_types`: rows of other types move the fold's end without being
    /// fed. What [`EventStore::fold_all`] is for a projection alone. `None`: nothing was fed,
    /// the member reads on its own (see [`page`](Self::page)).
    pub(crate) async fn fold<F>(
        &self,
        after: Position,
        batch_size: usize,
        event_types: &[&'static str],
        apply: &mut F,
    ) -> Result<Option<FoldEnd>>
    where
        F: for<'e> FnMut(FoldItem<'e>) -> ControlFlow<()> + Send,
    {
        let Some(page) = self.page((after, batch_size)).await? else {
            return Ok(None);
        };
        let mut end = FoldEnd {
            last: page.last,
            rows: page.read,
            stopped: false,
        };
        static EMPTY: std::sync::OnceLock<Metadata> = std::sync::OnceLock::new();
        for row in &page.rows {
            let wanted =
                |event_type: &str| event_types.is_empty() || event_types.contains(&event_type);
            let flow = match &row.item {
                Ok(event) if wanted(&event.event_type) => {
                    let view = EventView::new(
                        &event.stream,
                        row.position,
                        event.version,
                        &event.event_type,
                        event.schema_version,
                        &event.payload,
                    );
                    let context = EventContext {
                        event_id: event.event_id,
                        stream: &event.stream,
                        version: event.version,
                        position: row.position,
                        event_type: &event.event_type,
                        occurred_at: event.occurred_at,
                        metadata: event
                            .metadata
                            .as_deref()
                            .unwrap_or_else(|| EMPTY.get_or_init(Metadata::new)),
                    };
                    apply(Ok((view, &context)))
                }
                Ok(_) => ControlFlow::Continue(()),
                Err(damaged) if damaged.event_type.as_deref().is_none_or(wanted) => {
                    apply(Err(&damaged.error(row.position)))
                }
                Err(_) => ControlFlow::Continue(()),
            };
            if flow.is_break() {
                end.last = Some(row.position);
                end.stopped = true;
                break;
            }
        }
        Ok(Some(end))
    }

    /// The page at `key`: a full page kept or read by another member (joined while in flight),
    /// or the page this member reads now. `None`: another member's read came back short (it
    /// reached the head, and may have started before what this member was woken for), so this
    /// member reads on its own.
    async fn page(&self, key: Key) -> Result<Option<Arc<Page>>> {
        let cell = {
            let mut state = self.lock();
            if let Some((_, page)) = state.full_pages.iter().find(|(k, _)| *k == key) {
                crate::telemetry::shared_page("reused");
                return Ok(Some(Arc::clone(page)));
            }
            match state.in_flight.iter().find(|read| read.key == key) {
                Some(read) => Arc::clone(&read.page),
                None => {
                    let page = Arc::new(OnceCell::new());
                    state.in_flight.push(InFlight {
                        key,
                        page: Arc::clone(&page),
                    });
                    page
                }
            }
        };
        // The first to get here reads; the others wait for its page. A failed read is `None`
        // for the others, who then read on their own.
        let mut failure = None;
        let mut read_here = false;
        let page = cell
            .get_or_init(|| async {
                read_here = true;
                match self.read(key).await {
                    Ok(page) => Some(Arc::new(page)),
                    Err(error) => {
                        failure = Some(error);
                        None
                    }
                }
            })
            .await
            .clone();
        let full = page.as_ref().is_some_and(|page| page.read >= key.1);
        {
            let mut state = self.lock();
            state
                .in_flight
                .retain(|read| !Arc::ptr_eq(&read.page, &cell));
            if let Some(page) = &page
                && full
                && !state.full_pages.iter().any(|(k, _)| *k == key)
            {
                state.full_pages.push_back((key, Arc::clone(page)));
                let kept = state.members.max(1) * PAGES_KEPT_PER_MEMBER;
                while state.full_pages.len() > kept {
                    state.full_pages.pop_front();
                }
            }
        }
        match (page, failure) {
            (_, Some(error)) => Err(error),
            (Some(page), None) if full || read_here => {
                crate::telemetry::shared_page(if read_here { "read" } else { "reused" });
                Ok(Some(page))
            }
            _ => Ok(None),
        }
    }

    /// Reads a page for every member, into owned rows.
    async fn read(&self, (after, batch_size): Key) -> Result<Page> {
        let query = {
            let state = self.lock();
            let mut query = ReadAll::after(after)
                .batch_size(batch_size)
                .context(state.context);
            if !state.all_types {
                query.event_types = state.event_types.clone().unwrap_or_default();
            }
            query
        };
        let mut rows = Vec::with_capacity(batch_size.min(ReadAll::DEFAULT_BATCH_SIZE));
        let details = query.context == ContextFields::All;
        let end = self
            .store
            .fold_all(&query, |item| {
                match item {
                    Ok((view, context)) => rows.push(Row {
                        position: context.position,
                        item: Ok(Event {
                            stream: context.stream.clone(),
                            version: context.version,
                            event_type: context.event_type.into(),
                            schema_version: view.schema_version,
                            payload: view.payload.into(),
                            event_id: context.event_id,
                            occurred_at: context.occurred_at,
                            metadata: (details && !context.metadata.is_empty())
                                .then(|| Box::new(context.metadata.clone())),
                        }),
                    }),
                    Err(error) => rows.push(Row {
                        position: error.position().unwrap_or(Position::START),
                        item: Err(Damaged::of(error)),
                    }),
                }
                ControlFlow::Continue(())
            })
            .await?;
        Ok(Page {
            rows,
            read: end.rows,
            last: end.last,
        })
    }
}
