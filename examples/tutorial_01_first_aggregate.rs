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
//! With `DATABASE_URL=postgres://...` it uses a fresh schema of that database instead.

use eventsource::AnyStore;
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

// ----- Events: facts, in the past tense -----

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "Task")]
struct TaskCreated {
    title: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "Task")]
struct TaskAssigned {
    assignee: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "Task")]
struct TaskCompleted;

// ----- The aggregate: state, and one handler per event -----

#[derive(Default, Debug)]
struct Task {
    title: String,
    assignee: Option<String>,
    done: bool,
}

/// Why a command refuses: the aggregate's own, typed error.
#[derive(Debug, thiserror::Error, PartialEq)]
enum TaskError {
    #[error("the task already exists")]
    AlreadyCreated,
    #[error("a task needs a title")]
    NoTitle,
    #[error("the task is completed")]
    Completed,
    #[error("nobody is assigned to the task")]
    Unassigned,
}

#[aggregate(error = TaskError)]
impl Task {
    #[handles]
    fn created(&mut self, event: &TaskCreated) {
        self.title = event.title.clone();
    }

    #[handles]
    fn assigned(&mut self, event: &TaskAssigned) {
        self.assignee = Some(event.assignee.clone());
    }

    #[handles]
    fn completed(&mut self, _: &TaskCompleted) {
        self.done = true;
    }
}

// ----- Commands: check the rules, say what happened -----

impl Task {
    fn create(root: &Root<Task>, title: &str) -> Result<TaskCreated, TaskError> {
        if root.version() > 0 {
            return Err(TaskError::AlreadyCreated);
        }
        if title.trim().is_empty() {
            return Err(TaskError::NoTitle);
        }
        Ok(TaskCreated {
            title: title.to_owned(),
        })
    }

    fn assign(&self, assignee: &str) -> Result<TaskAssigned, TaskError> {
        if self.done {
            return Err(TaskError::Completed);
        }
        Ok(TaskAssigned {
            assignee: assignee.to_owned(),
        })
    }

    fn complete(&self) -> Result<TaskCompleted, TaskError> {
        if self.done {
            return Err(TaskError::Completed);
        }
        if self.assignee.is_none() {
            return Err(TaskError::Unassigned);
        }
        Ok(TaskCompleted)
    }
}

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

/// A fresh store: with `DATABASE_URL=postgres://...`, a new schema `name` of that database;
/// otherwise the SQLite file `target/<name>.db`, replaced, and kept after the run.
async fn open_store(name: &str) -> Result<AnyStore, Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        use std::str::FromStr;
        let schema = name.replace('-', "_");
        let admin = sqlx::PgPool::connect(&url).await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&admin)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await?;
        let options = sqlx::postgres::PgConnectOptions::from_str(&url)?
            .options([("search_path", schema.as_str())]);
        println!("event store: PostgreSQL, schema {schema}");
        return Ok(PostgresEventStore::connect_with(options).await?.into());
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    println!("event store: {}", path.display());
    Ok(SqliteEventStore::open(&path).await?.into())
}
