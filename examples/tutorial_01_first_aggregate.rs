//! Tutorial 1: your first events and your first aggregate, a task in a task manager.
//!
//! ```sh
//! cargo run --example tutorial_01_first_aggregate      # stores to target/tutorial-01.db
//! ```
//!
//! What it teaches:
//!
//! - An event is a plain struct that names a fact in the past tense (`TaskCreated`,
//!   `TaskAssigned`, `TaskCompleted`), stored as JSON under a name and a schema version:
//!   `#[derive(DomainEvent, Serialize, Deserialize)]`.
//! - An aggregate is a plain struct (its state) and an `#[aggregate]` impl block whose
//!   `#[handles]` methods apply events to it. The state is never set directly: it is what the
//!   events say.
//! - Commands are ordinary methods that check the rules against the state and return the event
//!   to record, or the aggregate's typed error. `Root::record` applies the event and keeps it to
//!   be saved.
//! - Saved events are the truth: loading the task replays them and gives the same state.
//!
//! The events, the aggregate and its commands are in `examples/shared/task.rs` (the later
//! tutorials use them too): read that file first.
//!
//! With `DATABASE_URL=postgres://...` it uses a fresh schema of that database instead.

use eventsource::prelude::*;
use eventsource::{Root, StreamQuery};

// ----- The task domain: events, the aggregate and its commands (examples/shared/task.rs) -----

#[path = "shared/task.rs"]
mod task;
use task::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // An aggregate in memory first: no database yet.
    let id = Uuid::now_v7();
    let mut task = Root::<Task>::new(id);
    let created = Task::create(&task, "Write the tutorial")?;
    task.record(created);
    println!("created: {:?} (version {})", task.state(), task.version());

    // A rule at work: completing an unassigned task is refused, and nothing is recorded.
    assert_eq!(task.complete(), Err(TaskError::Unassigned));
    println!(
        "complete before assigning: refused ({})",
        TaskError::Unassigned
    );

    let assigned = task.assign("alice")?;
    task.record(assigned);
    let completed = task.complete()?;
    task.record(completed);
    assert!(task.done);
    assert_eq!(task.complete(), Err(TaskError::Completed));

    // What will be stored: each pending event's name and JSON.
    println!("\n{} events to save:", task.pending_events().len());
    for pending in task.pending_events() {
        println!("  {} (id {})", pending.event_type(), pending.event_id());
    }
    println!(
        "  TaskCreated as JSON: {}",
        serde_json::to_string(&TaskCreated {
            title: "Write the tutorial".into()
        })?
    );

    // Save, then load: the state is rebuilt from the events alone.
    let store = open_store("tutorial-01").await?;
    let tasks = Task::repository(store.clone());
    tasks.save(&mut task).await?;
    let loaded = tasks.load(id).await?;
    println!(
        "\nloaded from the store: {:?} (version {})",
        loaded.state(),
        loaded.version()
    );
    assert_eq!(loaded.version(), 3);
    assert_eq!(loaded.title, "Write the tutorial");
    assert_eq!(loaded.assignee.as_deref(), Some("alice"));
    assert!(loaded.done);

    // The stored history, oldest first.
    let stream = loaded.stream_id().clone();
    println!("\nthe stream {stream}:");
    for event in store.read_stream(&stream, StreamQuery::all()).await? {
        println!(
            "  v{} {} {}",
            event.version, event.event_type, event.payload
        );
    }
    println!("\ntutorial 1 OK");
    Ok(())
}

// ----- Plumbing -----

#[path = "shared/store.rs"]
mod store;
use store::open_store;
