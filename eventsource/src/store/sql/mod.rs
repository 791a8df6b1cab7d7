//! What every SQL backend shares, written once: row decoding and its checks, the retry policy
//! for transient errors, the statements that differ only by dialect.

/// The statement that saves a snapshot, `$state` the dialect's form of parameter `$5` (the state
/// as JSON text): it replaces the stored snapshot unless that one is newer for the same state
/// version.
macro_rules! save_snapshot {
    ($state:literal) => {
        concat!(
            "INSERT INTO snapshots (aggregate_type, aggregate_id, version, state_version, state, \
             taken_at) VALUES ($1, $2, $3, $4, ",
            $state,
            ", $6) ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
             version = excluded.version, state_version = excluded.state_version, \
             state = excluded.state, taken_at = excluded.taken_at \
             WHERE excluded.version >= snapshots.version \
             OR excluded.state_version <> snapshots.state_version"
        )
    };
}
pub(crate) use save_snapshot;

pub(crate) mod checkpoint;
pub(crate) mod dialect;
mod retry;
mod rows;

pub(crate) use retry::*;
pub(crate) use rows::*;

use super::*;

impl StreamQuery {
    /// The limit as an SQL `LIMIT` value (-1: none; SQLite and PostgreSQL both read a negative
    /// or NULL limit as "all", we use `i64::MAX` to be explicit).
    pub(crate) fn sql_limit(&self) -> i64 {
        self.limit
            .map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX))
    }

    /// The version range as SQL bounds.
    pub(crate) fn sql_versions(&self) -> (i64, i64) {
        let from = i64::try_from(self.from_version).unwrap_or(i64::MAX);
        let to = self
            .to_version
            .map_or(i64::MAX, |v| i64::try_from(v).unwrap_or(i64::MAX));
        (from, to)
    }
}

/// The free-form part of the metadata as JSON, `None` when there is none.
pub(crate) fn extra_json(metadata: &crate::event::Metadata) -> Option<String> {
    if metadata.extra.is_empty() {
        None
    } else {
        serde_json::to_string(&metadata.extra).ok()
    }
}
