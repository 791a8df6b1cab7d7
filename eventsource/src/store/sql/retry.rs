//! One retry policy for transient errors, for every SQL backend.

use super::*;

/// How often a store tries an operation that failed with a retryable error
/// ([`is_retryable`]), and the first wait between attempts (it doubles, up to a second).
pub(crate) const TRANSIENT_ATTEMPTS: u32 = 10;
pub(super) const TRANSIENT_FIRST_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// Whether `error` is worth another attempt: a transient error ([`Error::is_transient`]), or
/// SQLite's "database is busy" or "locked" (`SQLITE_BUSY`, `SQLITE_LOCKED` and their extended
/// codes), which another connection's write lock causes and its commit ends. SQLite's codes are
/// numbers and PostgreSQL's five-character SQLSTATEs, so one test serves every backend.
pub(crate) fn is_retryable(error: &Error) -> bool {
    if error.is_transient() {
        return true;
    }
    let Error::Database { source, .. } = error else {
        return false;
    };
    matches!(
        source.code(),
        Some("5" | "261" | "517" | "773" | "6" | "262" | "518")
    )
}

/// Runs `attempt` again while it fails with a transient error, with backoff, up to
/// [`TRANSIENT_ATTEMPTS`] times; `recover` runs after each wait, before the next attempt (a
/// PostgreSQL store closes the idle connections the server dropped). Only for operations that
/// are safe to repeat: reads, and appends (idempotent by their event ids: see
/// [`retried_append`]).
pub(crate) async fn retrying<T, F, Fut, R, RFut>(
    operation: &'static str,
    mut recover: R,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T>>,
    R: FnMut() -> RFut,
    RFut: Future<Output = ()>,
{
    let mut retries = Retries::new(operation);
    loop {
        match attempt(retries.attempt).await {
            Err(error) if retries.again(&error).await => recover().await,
            result => return result,
        }
    }
}

/// The attempts of one operation retried on transient errors (see [`retrying`]), for loops that
/// decide themselves whether an attempt may be repeated.
pub(crate) struct Retries {
    operation: &'static str,
    /// The attempt being made, from 1.
    attempt: u32,
    delay: Duration,
}

impl Retries {
    pub(crate) fn new(operation: &'static str) -> Self {
        Retries {
            operation,
            attempt: 1,
            delay: TRANSIENT_FIRST_DELAY,
        }
    }

    /// After `error`: whether to try again, having waited if so (a transient error, attempts
    /// left).
    pub(crate) async fn again(&mut self, error: &Error) -> bool {
        if !is_retryable(error) || self.attempt >= TRANSIENT_ATTEMPTS {
            return false;
        }
        let (operation, attempt) = (self.operation, self.attempt);
        tracing::warn!(operation, attempt, %error, "transient database error; trying again");
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(1));
        self.attempt += 1;
        true
    }
}
