//! The global order on PostgreSQL under concurrent writers: a reader that polls `read_all` from
//! its last position while 8 writers append to their own streams sees every event exactly once,
//! in increasing positions, each stream in version order.
//!
//! With positions from a plain sequence, a transaction that took a lower position but committed
//! later would be skipped by such a reader; the store's transaction-id positions and snapshot
//! fence are what this test holds to account.

use eventsource::NewEvent;
use eventsource::prelude::*;
use eventsource::{ExpectedVersion, Position, ReadAll, RecordedEvent, StreamId};
use eventsource_tests::databases;
use futures::TryStreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const WRITERS: usize = 8;
const APPENDS_PER_WRITER: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_a_polling_reader_see_every_event_once_in_order() {
    let Some(db) = databases::postgres().await else {
        return;
    };
    let store = db.store().clone();
    let done = Arc::new(AtomicBool::new(false));

    let reader = {
        let store = store.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut seen: Vec<RecordedEvent> = Vec::new();
            let mut checkpoint = Position::START;
            loop {
                // Read the flag before reading: a final pass after the writers finished, once
                // everything they committed is readable.
                let finished = done.load(Ordering::Acquire);
                if finished {
                    let head = store.log_head().await.expect("log_head");
                    store
                        .wait_for(head.last, std::time::Duration::from_secs(30))
                        .await
                        .expect("wait_for");
                }
                let page: Vec<RecordedEvent> = store
                    .read_all(ReadAll::after(checkpoint).batch_size(97))
                    .try_collect()
                    .await
                    .expect("read_all");
                if let Some(last) = page.last() {
                    checkpoint = last.position;
                }
                seen.extend(page);
                if finished {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamId::new("Writer", format!("w{w}")).unwrap();
                let mut ids = Vec::new();
                let mut version = 0;
                for i in 0..APPENDS_PER_WRITER {
                    let batch: Vec<NewEvent> = (0..1 + (i + w) % 3)
                        .map(|j| {
                            NewEvent::from_json(
                                "Tick",
                                1,
                                format!(r#"{{"w":{w},"i":{i},"j":{j}}}"#),
                            )
                        })
                        .collect();
                    ids.extend(batch.iter().map(|e| e.event_id));
                    let result = store
                        .append(&stream, ExpectedVersion::Exact(version), batch)
                        .await
                        .expect("append");
                    version = result.stream_version;
                }
                ids
            })
        })
        .collect();

    let mut written = HashSet::new();
    for writer in writers {
        written.extend(writer.await.expect("writer"));
    }
    done.store(true, Ordering::Release);
    let seen = reader.await.expect("reader");

    let mut ids = HashSet::new();
    for event in &seen {
        assert!(
            ids.insert(event.event_id),
            "event {} seen twice",
            event.event_id
        );
    }
    assert_eq!(
        ids.len(),
        written.len(),
        "the reader saw every written event"
    );
    assert_eq!(ids, written);
    assert!(
        seen.windows(2).all(|w| w[0].position < w[1].position),
        "positions increase"
    );
    let mut last_version: HashMap<&StreamId, u64> = HashMap::new();
    for event in &seen {
        let last = last_version.entry(&event.stream).or_insert(0);
        assert_eq!(
            event.version,
            *last + 1,
            "stream {} read in version order",
            event.stream
        );
        *last = event.version;
    }
}
