//! How a runner reads, retries and fails.

use std::time::Duration;

/// How a runner (a projection, a process manager, a relay) reads, retries and fails: the
/// options a [`Subscriptions`](super::Subscriptions) manager gives every runner added after
/// [`with_options`](super::Subscriptions::with_options).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RunnerOptions {
    /// Events read per round trip (and per transaction, for a database read model).
    pub batch_size: usize,
    /// How many times an event is tried before it is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles with each attempt.
    pub backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// What happens after an event is dead-lettered.
    pub on_failure: OnFailure,
    /// The longest a live runner waits for a wake-up before it reads the store anyway.
    pub poll_interval: Duration,
    /// How often a runner on standby (another process runs it) tries to take over.
    pub lease_retry: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            batch_size: 1000,
            max_attempts: 3,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            on_failure: OnFailure::Skip,
            poll_interval: Duration::from_secs(1),
            lease_retry: Duration::from_secs(1),
        }
    }
}

impl RunnerOptions {
    /// Events read per round trip (at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Attempts per event before it is dead-lettered (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The first retry's wait (doubling, up to `max`).
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max.max(first);
        self
    }

    /// What to do after dead-lettering an event.
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// The safety-net poll of a live runner.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How often a runner on standby tries to take over.
    pub fn lease_retry(mut self, interval: Duration) -> Self {
        self.lease_retry = interval;
        self
    }

    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// What a runner does once an event has failed `max_attempts` times and is dead-lettered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnFailure {
    /// Go on with the next event (the default): one poison event does not hold back the rest.
    Skip,
    /// Stop the runner, with its checkpoint before the event: [`RunnerState::Failed`](super::RunnerState::Failed).
    Stop,
}
