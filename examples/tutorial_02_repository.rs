//! Tutorial 2: the repository, optimistic concurrency, and a conflict handled.
//!
//! ```sh
//! cargo run --example tutorial_02_repository      # stores to target/tutorial-02.db
//! ```
//!
//! What it teaches:
//!
//! - The repository's life cycle: `create` a task, `record`, `save`; `load` it later; `exists`
//!   and `try_load` for a task that may not be there.
//! - Optimistic concurrency: a save expects the stream at the version the task was loaded at.
//!   Two people who loaded the same version both change the task; the second save is refused
//!   with `Error::Concurrency`, and nothing of it is stored.
//! - Handling the conflict: load again, run the command again on the fresh state (whose rules
//!   may now refuse it), save again.
//! - `Repository::update` does exactly that for you, retrying up to a limit, and tells a refusal
//!   of the command (`UpdateError::Rejected`, the aggregate's typed error) from a failure of the
//!   store.
//!
//! The task is the one of tutorial 1. With `DATABASE_URL=postgres://...` it uses a fresh schema
//! of that database instead.

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
    let store = open_store("tutorial-02").await?;
    let tasks = Task::repository(store.clone());

    // Create: a new stream. Saving it expects the stream not to exist yet.
    let id = Uuid::now_v7();
    assert!(!tasks.exists(id).await?);
    assert!(tasks.try_load(id).await?.is_none());
    let mut task = tasks.create(id);
    let created = Task::create(&task, "Review the pull request")?;
    task.record(created);
    tasks.save(&mut task).await?;
    println!("created task {id} at version {}", task.version());

    // Creating it a second time is a conflict: the stream exists.
    let mut twin = tasks.create(id);
    twin.record(TaskCreated {
        title: "twin".into(),
    });
    let refused = tasks.save(&mut twin).await.unwrap_err();
    assert!(refused.is_concurrency());
    println!("creating it again: {refused}");

    // Two people open the task at the same version.
    let mut alice_view = tasks.load(id).await?;
    let mut bob_view = tasks.load(id).await?;
    assert_eq!(alice_view.version(), bob_view.version());

    let assign = alice_view.assign("alice")?;
    alice_view.record(assign);
    tasks.save(&mut alice_view).await?;
    println!(
        "alice assigned it to herself: version {}",
        alice_view.version()
    );

    let assign = bob_view.assign("bob")?;
    bob_view.record(assign);
    match tasks.save(&mut bob_view).await {
        Err(Error::Concurrency {
            expected, actual, ..
        }) => {
            println!("bob's save refused: he expected version {expected}, the task is at {actual}");
            assert_eq!(actual, 2);
        }
        other => panic!("expected a concurrency conflict, got {other:?}"),
    }
    assert_eq!(tasks.load(id).await?.assignee.as_deref(), Some("alice"));

    // Handling it: reload, look at the fresh state, decide again, save again.
    let mut bob_view = tasks.load(id).await?;
    println!(
        "bob reloads: the task is assigned to {:?}; he takes it over anyway",
        bob_view.assignee
    );
    let assign = bob_view.assign("bob")?;
    bob_view.record(assign);
    tasks.save(&mut bob_view).await?;
    assert_eq!(tasks.load(id).await?.assignee.as_deref(), Some("bob"));

    // `update` does load, run, save, and retries on a conflict. Eight concurrent reassignments:
    // every one lands, none is lost. Each failed attempt means another writer succeeded, so
    // eight attempts are enough for eight writers (the default limit is 5).
    let mut writers = Vec::new();
    for n in 0..8 {
        let tasks = tasks.clone().with_max_attempts(8);
        writers.push(tokio::spawn(async move {
            tasks
                .update(id, |task| {
                    let event = task.assign(&format!("helper-{n}"))?;
                    task.record(event);
                    Ok(())
                })
                .await
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let task = tasks.load(id).await?;
    println!(
        "after 8 concurrent updates: version {}, assigned to {:?}",
        task.version(),
        task.assignee
    );
    assert_eq!(task.version(), 3 + 8);

    // A command's refusal is not a store failure: `UpdateError::Rejected` carries the typed error.
    tasks
        .update(id, |task| task.complete().map(|event| task.record(event)))
        .await?;
    let again = tasks
        .update(id, |task| task.complete().map(|event| task.record(event)))
        .await;
    match again {
        Err(UpdateError::Rejected(TaskError::Completed)) => {
            println!(
                "completing it twice: refused by the task ({})",
                TaskError::Completed
            );
        }
        other => panic!("expected the task to refuse, got {other:?}"),
    }
    assert_eq!(
        tasks.load(id).await?.version(),
        12,
        "the refusal stored nothing"
    );
    println!("\ntutorial 2 OK");
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
