//! What the runtime reports while it works: `tracing` spans and `metrics` counters, gauges and
//! histograms. The library only emits them; the application installs a `tracing` subscriber (an
//! OpenTelemetry layer, a log formatter) and a `metrics` recorder (Prometheus, StatsD) to export
//! them. Without either, a disabled span costs a check of its level, and a metric a call into
//! the no-op recorder.
//!
//! # Spans
//!
//! Every span is named `eventsource.<operation>` and carries identifiers, versions, positions
//! and counts, never an event's payload. Correlation and causation ids come from the events'
//! [`Metadata`]; the tenant too.
//!
//! | span | level | fields |
//! | --- | --- | --- |
//! | `eventsource.append` | debug | `stream`, `aggregate_type`, `expected`, `events`, `tenant`, `correlation_id`, `causation_id`, then `stream_version`, `last_position` |
//! | `eventsource.load` | debug | `aggregate_type`, `stream`, then `version`, `from_snapshot` |
//! | `eventsource.save` | debug | `aggregate_type`, `stream`, `events`, `tenant`, `correlation_id`, `causation_id`, then `version` |
//! | `eventsource.update` | debug | `aggregate_type`, `stream`, `attempt` (one span per attempt) |
//! | `eventsource.snapshot.save` | debug | `aggregate_type`, `stream`, `version` |
//! | `eventsource.projection.batch` | debug | `projection`, `from`, then `to` (a relay's batch too) |
//! | `eventsource.relay.publish` | debug | `relay`, `events`, `from`, `to` |
//! | `eventsource.bus.publish` | debug | `bus`, `events` |
//! | `eventsource.bus.consume` | info | `bus`, `group`, `event_id`, `event_type`, `attempt`, `tenant`, `correlation_id`, `causation_id`: [`Delivery::span`](crate::bus::Delivery::span), entered by the handler |
//!
//! # Metrics
//!
//! The names below are constants of this module. Labels hold names (of aggregate types,
//! projections, buses and groups), never ids.
//!
//! | metric | type | labels | what |
//! | --- | --- | --- | --- |
//! | `eventsource_events_appended_total` | counter | `aggregate_type` | events stored |
//! | `eventsource_append_seconds` | histogram | `aggregate_type` | time of a store append, conflicts included |
//! | `eventsource_concurrency_conflicts_total` | counter | `aggregate_type` | appends refused for an unexpected version |
//! | `eventsource_command_retries_total` | counter | `aggregate_type` | commands run again by `Repository::update*` after a conflict |
//! | `eventsource_load_seconds` | histogram | `aggregate_type` | `Repository::load*` (snapshot and events) |
//! | `eventsource_save_seconds` | histogram | `aggregate_type` | `Repository::save` |
//! | `eventsource_snapshot_loads_total` | counter | `aggregate_type`, `outcome` = `hit`, `miss`, `stale` | snapshot look-ups of a repository with snapshots |
//! | `eventsource_cache_loads_total` | counter | `aggregate_type`, `outcome` = `hit`, `miss` | loads of a repository with an aggregate cache (`with_cache`) |
//! | `eventsource_group_commit_size` | histogram | - | appends per group of a store with group commit (`with_group_commit`) |
//! | `eventsource_projection_lag` | gauge | `projection` | events a projection or relay has still to apply, as of the last `lag`/`health` call (0 once live) |
//! | `eventsource_dead_letters_total` | counter | `projection` | events dead-lettered by a projection, process manager or relay |
//! | `eventsource_bus_published_total` | counter | `bus` | events a bus's broker took |
//! | `eventsource_bus_consumed_total` | counter | `bus`, `group` | deliveries handed to consumers (redeliveries included) |
//! | `eventsource_bus_dead_lettered_total` | counter | `bus`, `group` | deliveries dead-lettered after their last attempt |

use crate::error::{Error, Result};
use crate::event::Metadata;
use crate::stream::{AppendResult, ExpectedVersion, StreamId};
use std::future::Future;
use std::time::Instant;
use tracing::Instrument;

/// Counter: events stored, by `aggregate_type`.
pub const EVENTS_APPENDED: &str = "eventsource_events_appended_total";
/// Histogram (seconds): one store append, by `aggregate_type`.
pub const APPEND_SECONDS: &str = "eventsource_append_seconds";
/// Counter: appends refused for an unexpected version, by `aggregate_type`.
pub const CONCURRENCY_CONFLICTS: &str = "eventsource_concurrency_conflicts_total";
/// Counter: commands run again after a conflict, by `aggregate_type`.
pub const COMMAND_RETRIES: &str = "eventsource_command_retries_total";
/// Histogram (seconds): one repository load, by `aggregate_type`.
pub const LOAD_SECONDS: &str = "eventsource_load_seconds";
/// Histogram (seconds): one repository save, by `aggregate_type`.
pub const SAVE_SECONDS: &str = "eventsource_save_seconds";
/// Counter: snapshot look-ups, by `aggregate_type` and `outcome` (`hit`, `miss`, `stale`).
pub const SNAPSHOT_LOADS: &str = "eventsource_snapshot_loads_total";
/// Counter: loads answered by the repository's aggregate cache, by `aggregate_type` and
/// `outcome` (`hit`, `miss`).
pub const CACHE_LOADS: &str = "eventsource_cache_loads_total";
/// Histogram: appends per group of a store with group commit (`with_group_commit`).
pub const GROUP_COMMIT_SIZE: &str = "eventsource_group_commit_size";
/// Counter: pages of the log read for the in-process projections of one manager together
/// (they share their reads), by `outcome`: `read` (read from the store) or `reused` (a page
/// another projection read, joined while in flight or kept).
pub const SHARED_PAGES: &str = "eventsource_shared_pages_total";
/// Gauge: events a projection (or relay) has still to apply, by `projection`.
pub const PROJECTION_LAG: &str = "eventsource_projection_lag";
/// Counter: events dead-lettered, by `projection` (or process manager, or relay).
pub const DEAD_LETTERS: &str = "eventsource_dead_letters_total";
/// Counter: events published, by `bus`.
pub const BUS_PUBLISHED: &str = "eventsource_bus_published_total";
/// Counter: deliveries handed to consumers, by `bus` and `group`.
pub const BUS_CONSUMED: &str = "eventsource_bus_consumed_total";
/// Counter: deliveries dead-lettered after their last attempt, by `bus` and `group`.
pub const BUS_DEAD_LETTERED: &str = "eventsource_bus_dead_lettered_total";

/// Correlation, causation and tenant of a batch, for span fields: taken from its first event
/// (the events of one command share their metadata).
pub(crate) fn ids(metadata: Option<&Metadata>) -> (Option<String>, Option<String>, Option<&str>) {
    match metadata {
        Some(m) => (
            m.correlation_id.map(|id| id.to_string()),
            m.causation_id.map(|id| id.to_string()),
            m.tenant_id.as_deref(),
        ),
        None => (None, None, None),
    }
}

/// A store append being observed: its span, and what its metrics need.
pub(crate) struct Append<'a> {
    stream: &'a StreamId,
    events: usize,
    span: tracing::Span,
}

impl<'a> Append<'a> {
    /// Opens the span of appending `events` to `stream` (their ids only if the span is enabled:
    /// nothing is allocated otherwise).
    pub(crate) fn start(
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: &[crate::event::NewEvent],
    ) -> Self {
        let span = tracing::debug_span!(
            "eventsource.append",
            stream = %stream,
            aggregate_type = stream.aggregate_type(),
            expected = ?expected,
            events = events.len(),
            tenant = tracing::field::Empty,
            correlation_id = tracing::field::Empty,
            causation_id = tracing::field::Empty,
            stream_version = tracing::field::Empty,
            last_position = tracing::field::Empty,
        );
        if !span.is_disabled() {
            record_ids(&span, events.first().map(|event| &event.metadata));
        }
        Append {
            stream,
            events: events.len(),
            span,
        }
    }

    /// Runs the append inside the span, and counts what it did.
    pub(crate) async fn run<F>(self, append: F) -> Result<AppendResult>
    where
        F: Future<Output = Result<AppendResult>>,
    {
        let started = Instant::now();
        let result = append.traced(self.span.clone()).await;
        let aggregate_type = self.stream.aggregate_type().to_owned();
        metrics::histogram!(APPEND_SECONDS, "aggregate_type" => aggregate_type.clone())
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(done) => {
                self.span.record("stream_version", done.stream_version);
                self.span.record("last_position", done.last_position.get());
                metrics::counter!(EVENTS_APPENDED, "aggregate_type" => aggregate_type)
                    .increment(self.events as u64);
            }
            Err(Error::Concurrency { .. }) => {
                metrics::counter!(CONCURRENCY_CONFLICTS, "aggregate_type" => aggregate_type)
                    .increment(1);
            }
            Err(_) => {}
        }
        result
    }
}

/// Fills a span's `tenant`, `correlation_id` and `causation_id` from `metadata`.
pub(crate) fn record_ids(span: &tracing::Span, metadata: Option<&Metadata>) {
    let (correlation, causation, tenant) = ids(metadata);
    if let Some(tenant) = tenant {
        span.record("tenant", tenant);
    }
    if let Some(id) = correlation {
        span.record("correlation_id", id);
    }
    if let Some(id) = causation {
        span.record("causation_id", id);
    }
}

/// Counts an event dead-lettered by `projection` (or process manager, or relay).
pub(crate) fn dead_lettered(projection: &str) {
    metrics::counter!(DEAD_LETTERS, "projection" => projection.to_owned()).increment(1);
}

/// Counts a page of the log read for several projections (`read`) or used again (`reused`).
pub(crate) fn shared_page(outcome: &'static str) {
    metrics::counter!(SHARED_PAGES, "outcome" => outcome).increment(1);
}

/// Sets `projection`'s lag gauge.
pub(crate) fn lag(projection: &str, events: u64) {
    metrics::gauge!(PROJECTION_LAG, "projection" => projection.to_owned()).set(events as f64);
}

/// Runs a bus publish inside its span, and counts what the broker took.
pub(crate) async fn publish<F>(bus: &'static str, events: usize, publish: F) -> Result<()>
where
    F: Future<Output = Result<()>>,
{
    let span = tracing::debug_span!("eventsource.bus.publish", bus, events);
    let result = publish.traced(span).await;
    if result.is_ok() {
        metrics::counter!(BUS_PUBLISHED, "bus" => bus).increment(events as u64);
    }
    result
}

/// Counts a delivery handed to a consumer of `group`.
pub(crate) fn consumed(bus: &'static str, group: &str) {
    metrics::counter!(BUS_CONSUMED, "bus" => bus, "group" => group.to_owned()).increment(1);
}

/// Counts a delivery dead-lettered by `group`.
pub(crate) fn bus_dead_lettered(bus: &'static str, group: &str) {
    metrics::counter!(BUS_DEAD_LETTERED, "bus" => bus, "group" => group.to_owned()).increment(1);
}

/// `.traced(span)`: runs a future inside `span` when a subscriber wants the span, and as it is
/// otherwise (no span entered and left at every poll on the hot paths).
pub(crate) trait Traced: Future + Sized {
    fn traced(self, span: tracing::Span) -> impl Future<Output = Self::Output> {
        async move {
            if span.is_disabled() {
                self.await
            } else {
                self.instrument(span).await
            }
        }
    }
}

impl<F: Future> Traced for F {}
