//! Reading the global log a page at a time, as every runner does: damaged rows come back as
//! their errors (to be dead-lettered), a failing database as the read's error.

use crate::error::Result;
use crate::event::RecordedEvent;
use crate::store::{EventStore, ReadAll};
use crate::stream::Position;
use futures::StreamExt;

/// One page of the global log after `after`, filtered to `event_types`: the events, and the
/// damaged rows as their errors. An error that is not about a row (the database failing) fails
/// the whole read.
pub(crate) async fn read_page<S: EventStore>(
    store: &S,
    after: Option<Position>,
    event_types: &[&'static str],
    batch_size: usize,
) -> Result<Vec<Result<RecordedEvent>>> {
    let query = ReadAll::after(after.unwrap_or(Position::START))
        .event_types(event_types.iter().copied())
        .batch_size(batch_size);
    let mut page = Vec::new();
    let mut events = store.read_all(query).take(batch_size);
    while let Some(item) = events.next().await {
        match item {
            Err(error) if error.position().is_none() => return Err(error),
            item => page.push(item),
        }
    }
    Ok(page)
}

/// The event (or damaged row) at `position`, if the store has one there.
pub(crate) async fn event_at<S: EventStore>(
    store: &S,
    position: Position,
) -> Result<Option<Result<RecordedEvent>>> {
    let before = Position::new(position.get().saturating_sub(1));
    match store
        .read_all(ReadAll::after(before).batch_size(1))
        .next()
        .await
    {
        Some(Err(error)) if error.position().is_none() => Err(error),
        Some(item) if item_position(&item) == position => Ok(Some(item)),
        _ => Ok(None),
    }
}

/// The position of a page item.
pub(crate) fn item_position(item: &Result<RecordedEvent>) -> Position {
    match item {
        Ok(event) => event.position,
        Err(error) => error.position().unwrap_or(Position::START),
    }
}
