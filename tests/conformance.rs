//! The conformance suite (`tests/support/conformance.rs`), run against every store: each case on
//! a fresh in-memory store, a fresh SQLite file and a fresh PostgreSQL schema, and the two SQL
//! stores again with group commit on.

use eventsource_tests::{conformance, databases};

macro_rules! suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = databases::$backend().await else { return };
                    conformance::$case(db.store()).await;
                }
            )*
        }
    };
}

macro_rules! every_backend {
    ($($case:ident),* $(,)?) => {
        suite!(memory: $($case),*);
        suite!(sqlite: $($case),*);
        suite!(postgres: $($case),*);
        suite!(sqlite_grouped: $($case),*);
        suite!(postgres_grouped: $($case),*);
    };
}

every_backend!(
    expected_any,
    expected_no_stream,
    expected_stream_exists,
    expected_exact,
    batch_is_atomic,
    retried_append_is_idempotent,
    read_stream_queries,
    metadata_round_trips,
    read_all_order_and_filters,
    large_and_unicode_payloads,
    ten_thousand_events,
    concurrent_writers_one_stream,
    bad_input_is_refused,
    ids_no_store_accepts_are_refused_by_every_read,
    undecodable_events_are_typed_errors,
    time_travel,
    repository_conflict_and_retry,
    old_schema_versions_are_upcast,
    snapshot_plus_tail_equals_replay,
    snapshot_strategies,
    snapshot_schema_change_rebuilds,
    corrupt_snapshot_is_ignored,
    snapshot_time_travel,
    concurrent_save_and_snapshot,
    expected_any_under_contention,
    log_head_and_wait_for,
);
