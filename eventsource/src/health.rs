//! Health reports: is the store reachable, and how far behind is each projection and relay.
//!
//! One [`HealthReport`] covers the store (a cheap read of the log's head, with a timeout), and
//! each projection, process manager and relay of a [`RunningSubscriptions`]: its state,
//! checkpoint and lag (a relay's lag is its backlog: events stored and not yet published). Its
//! [`Status`] maps to the HTTP status a health endpoint returns, and it serializes to JSON for
//! the body.
//!
//! | status | when | HTTP |
//! | --- | --- | --- |
//! | `healthy` | the store answers; every projection runs within its lag limit | 200 |
//! | `degraded` | the store answers, but a projection failed, stopped, or lags past [`HealthOptions::max_lag`] | 200 (the body says which) |
//! | `unhealthy` | the store does not answer within [`HealthOptions::store_timeout`] | 503 |
//!
//! A degraded service still takes commands: only reads of the lagging read models are stale, so
//! a load balancer should keep routing to it (200), while an operator's alert reads `status`.
//!
//! ```
//! use eventsource::health::{HealthOptions, Status};
//! use eventsource::subscription::Subscriptions;
//! use eventsource::InMemoryEventStore;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = InMemoryEventStore::new();
//! let running = Subscriptions::new(store.clone()).start();
//! let report = running.health(&store, &HealthOptions::default()).await;
//! assert_eq!(report.status, Status::Healthy);
//! assert_eq!(report.http_status(), 200);
//! println!("{}", report.to_json());
//! # running.shutdown().await;
//! # }
//! ```

use crate::store::EventStore;
use crate::subscription::{RunnerState, RunningSubscriptions};
use serde::Serialize;
use std::time::{Duration, Instant};

/// The overall verdict of a [`HealthReport`], worst first when ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Status {
    /// Everything works.
    Healthy,
    /// Commands work; some read model is stale or stopped.
    Degraded,
    /// The store cannot be reached: nothing works.
    Unhealthy,
}

impl Status {
    /// The HTTP status a health endpoint returns: 200 for healthy and degraded, 503 for
    /// unhealthy.
    pub fn http_status(self) -> u16 {
        match self {
            Status::Healthy | Status::Degraded => 200,
            Status::Unhealthy => 503,
        }
    }
}

/// What a health check allows: how long the store may take to answer, and how far behind a
/// projection may be before the report says degraded.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HealthOptions {
    /// How long the store's answer (and each lag count) may take. Default 2 seconds.
    pub store_timeout: Duration,
    /// How many events a projection or relay may have still to apply before it degrades the
    /// report. Default 10,000.
    pub max_lag: u64,
}

impl Default for HealthOptions {
    fn default() -> Self {
        HealthOptions {
            store_timeout: Duration::from_secs(2),
            max_lag: 10_000,
        }
    }
}

impl HealthOptions {
    /// Sets how long the store may take to answer.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// Sets the lag past which a projection degrades the report.
    pub fn max_lag(mut self, events: u64) -> Self {
        self.max_lag = events;
        self
    }
}

/// The store's part of a [`HealthReport`].
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct StoreHealth {
    /// Healthy if it answered in time, unhealthy otherwise.
    pub status: Status,
    /// How long it took to answer (or to give up), in milliseconds.
    pub latency_ms: u64,
    /// The position of the newest committed event, if it answered.
    pub head: Option<u64>,
    /// Why it is unhealthy.
    pub error: Option<String>,
}

/// One projection's (process manager's, relay's) part of a [`HealthReport`].
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct ComponentHealth {
    /// Its name.
    pub name: String,
    /// Its state: `starting`, `catching_up`, `live`, `standby`, `stopped` or `failed`.
    pub state: &'static str,
    /// Healthy, or degraded (failed, stopped, or lagging past the limit).
    pub status: Status,
    /// Every event up to this position is applied.
    pub checkpoint: Option<u64>,
    /// How many events it has still to apply (a relay: to publish), if they could be counted.
    pub lag: Option<u64>,
    /// Why it is degraded: its failure, or why the lag could not be counted.
    pub error: Option<String>,
}

/// The health of the store and of every projection and relay; see the [module
/// documentation](self).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// The worst status of its parts.
    pub status: Status,
    /// The store.
    pub store: StoreHealth,
    /// Each projection, process manager and relay, in the order they were added.
    pub components: Vec<ComponentHealth>,
}

impl HealthReport {
    /// Checks `store` alone (no projections): what a service without a manager reports.
    pub async fn of_store<S: EventStore>(store: &S, options: &HealthOptions) -> HealthReport {
        let store = check_store(store, options.store_timeout).await;
        HealthReport {
            status: store.status,
            store,
            components: Vec::new(),
        }
    }

    /// The HTTP status for this report ([`Status::http_status`]).
    pub fn http_status(&self) -> u16 {
        self.status.http_status()
    }

    /// The report as JSON, the body of a health endpoint.
    pub fn to_json(&self) -> String {
        // Strings, numbers and options only: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl RunningSubscriptions {
    /// Checks `store` (the store the projections read) and every projection, process manager
    /// and relay: see [`HealthReport`]. Also sets each one's `eventsource_projection_lag` gauge.
    pub async fn health<S: EventStore>(&self, store: &S, options: &HealthOptions) -> HealthReport {
        let store = check_store(store, options.store_timeout).await;
        let mut components = Vec::new();
        for status in self.status() {
            let (lag, lag_error) = if store.status == Status::Healthy {
                match tokio::time::timeout(options.store_timeout, self.lag(&status.name)).await {
                    Ok(Ok(lag)) => (Some(lag), None),
                    Ok(Err(error)) => (None, Some(error.to_string())),
                    Err(_) => (None, Some("counting the lag timed out".to_owned())),
                }
            } else {
                (None, None)
            };
            let (state, failure) = match &status.state {
                RunnerState::Starting => ("starting", None),
                RunnerState::CatchingUp => ("catching_up", None),
                RunnerState::Live => ("live", None),
                RunnerState::Standby => ("standby", None),
                RunnerState::Stopped => ("stopped", None),
                RunnerState::Failed(error) => ("failed", Some(error.clone())),
                #[allow(unreachable_patterns)]
                _ => ("unknown", None),
            };
            let degraded = failure.is_some()
                || state == "stopped"
                || lag_error.is_some()
                || lag.is_some_and(|lag| lag > options.max_lag);
            components.push(ComponentHealth {
                name: status.name,
                state,
                status: if degraded {
                    Status::Degraded
                } else {
                    Status::Healthy
                },
                checkpoint: status.checkpoint.map(|position| position.get()),
                lag,
                error: failure.or(lag_error),
            });
        }
        let worst = components
            .iter()
            .map(|component| component.status)
            .max()
            .unwrap_or(Status::Healthy);
        HealthReport {
            status: store.status.max(worst),
            store,
            components,
        }
    }
}

/// Reads the log's head, at most `timeout`.
async fn check_store<S: EventStore>(store: &S, timeout: Duration) -> StoreHealth {
    let started = Instant::now();
    let answer = tokio::time::timeout(timeout, store.log_head()).await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (head, error) = match answer {
        Ok(Ok(head)) => (Some(head.last.get()), None),
        Ok(Err(error)) => (None, Some(error.to_string())),
        Err(_) => (None, Some(format!("no answer within {timeout:?}"))),
    };
    if let Some(error) = &error {
        tracing::warn!(%error, "health check: the store does not answer");
    }
    StoreHealth {
        status: if error.is_none() {
            Status::Healthy
        } else {
            Status::Unhealthy
        },
        latency_ms,
        head,
        error,
    }
}
