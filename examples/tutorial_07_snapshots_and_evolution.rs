//! Tutorial 7: snapshots and schema evolution.
//!
//! ```sh
//! cargo run --example tutorial_07_snapshots_and_evolution      # stores to target/tutorial-07.db
//! ```
//!
//! What it teaches:
//!
//! - Events are never rewritten; their types change. An older release stored `TaskAppended`
//!   events at schema version 1 (a title only). This release calls the event `TaskAdded`, at
//!   version 2 with a priority: `alias = "TaskAppended"` reads the old name, and
//!   `upcast(from_version = 1, via = TaskAddedV1)` converts old payloads with `From`. Every
//!   reader (aggregates, projections, `RecordedEvent::decode`) only ever sees the current type.
//! - Snapshots: a long-lived project with hundreds of events is loaded from its latest snapshot
//!   plus the events after it (`with_snapshots`, `#[aggregate(snapshot_every = 100)]`), and the
//!   result equals a full replay.
//! - A snapshot is never trusted blindly: the older release's snapshot has another state version
//!   (`#[aggregate(state_version = 2)]` here), so it is ignored, the state is rebuilt from the
//!   events, and a new snapshot replaces it.
//!
//! With `DATABASE_URL=postgres://...` it uses a fresh schema of that database instead.

use eventsource::NewEvent;
use eventsource::prelude::*;
use eventsource::snapshot::Snapshot;
use eventsource::{ExpectedVersion, SnapshotStore, StreamId, StreamQuery};
use serde::{Deserialize, Serialize};

// ----- The event, version 2, and how version 1 reaches it -----

/// Version 1, as the older release stored it (under the name `TaskAppended`).
#[derive(Deserialize)]
struct TaskAddedV1 {
    title: String,
}

/// Old tasks had no priority: they get the normal one.
impl From<TaskAddedV1> for TaskAdded {
    fn from(v1: TaskAddedV1) -> Self {
        TaskAdded {
            title: v1.title,
            priority: Priority::Normal,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
enum Priority {
    High,
    Normal,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(
    name = "TaskAdded",
    version = 2,
    aggregate = "Project",
    alias = "TaskAppended",
    upcast(from_version = 1, via = TaskAddedV1)
)]
struct TaskAdded {
    title: String,
    priority: Priority,
}

// ----- A long-lived aggregate, snapshotted -----

#[derive(Default, Debug, PartialEq, Serialize, Deserialize)]
struct Project {
    tasks: u32,
    high_priority: u32,
}

#[aggregate(snapshot_every = 100, state_version = 2)]
impl Project {
    #[handles]
    fn added(&mut self, e: &TaskAdded) {
        self.tasks += 1;
        if e.priority == Priority::High {
            self.high_priority += 1;
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = open_store("tutorial-07").await?;
    let id = Uuid::now_v7();
    let stream = StreamId::new("Project", id.to_string())?;

    // What the older release left: 120 `TaskAppended` v1 events and a snapshot of its own
    // state (state version 1, another shape).
    let old_events = (1..=120)
        .map(|n| NewEvent::from_json("TaskAppended", 1, format!(r#"{{"title":"task {n}"}}"#)))
        .collect();
    store
        .append(&stream, ExpectedVersion::NoStream, old_events)
        .await?;
    store
        .save_snapshot(&Snapshot::new(
            stream.clone(),
            120,
            1,
            r#"{"count":120}"#.to_owned(),
        ))
        .await?;
    println!("the older release stored 120 TaskAppended v1 events and a v1 snapshot");

    // This release reads them as `TaskAdded` v2.
    let first = &store
        .read_stream(&stream, StreamQuery::all().limit(1))
        .await?[0];
    let upcast: TaskAdded = first.decode()?;
    println!(
        "stored: {} v{} {}  ->  read: {upcast:?}",
        first.event_type, first.schema_version, first.payload
    );
    assert_eq!(upcast.priority, Priority::Normal);
    assert_eq!(first.event_type, "TaskAppended", "reading never rewrites");

    // The old snapshot has another state version: ignored, rebuilt from the events, replaced.
    let projects = Project::repository(store.clone()).with_snapshots();
    let project = projects.load(id).await?;
    println!(
        "first load: {:?} from snapshot {:?} (the v1 snapshot ignored)",
        project.state(),
        project.snapshot_version()
    );
    assert_eq!(project.snapshot_version(), None);
    assert_eq!(project.tasks, 120);
    let project = projects.load(id).await?;
    assert_eq!(
        project.snapshot_version(),
        Some(120),
        "replaced by a v2 snapshot"
    );
    println!(
        "second load: from snapshot {:?}",
        project.snapshot_version()
    );

    // This release adds more, some of high priority, ten at a time.
    for batch in 0..13 {
        projects
            .update(id, |project| {
                for n in 0..10 {
                    project.record(TaskAdded {
                        title: format!("new task {batch}.{n}"),
                        priority: if n == 0 {
                            Priority::High
                        } else {
                            Priority::Normal
                        },
                    });
                }
                Ok(())
            })
            .await?;
    }

    // Loading reads the latest snapshot and the events after it; a full replay agrees.
    let snapshotted = projects.load(id).await?;
    let replayed = Project::repository(store.clone()).load(id).await?;
    println!(
        "{} events: snapshot at {:?} + {} events = {:?}",
        snapshotted.version(),
        snapshotted.snapshot_version(),
        snapshotted.version() - snapshotted.snapshot_version().unwrap_or(0),
        snapshotted.state()
    );
    assert_eq!(snapshotted.version(), 250);
    assert_eq!(snapshotted.snapshot_version(), Some(200));
    assert_eq!(snapshotted.state(), replayed.state());
    assert_eq!(
        *replayed.state(),
        Project {
            tasks: 250,
            high_priority: 13
        }
    );
    println!("a full replay gives the same state");
    println!("\ntutorial 7 OK");
    Ok(())
}

// ----- Plumbing -----

#[path = "shared/store.rs"]
mod store;
use store::open_store;
