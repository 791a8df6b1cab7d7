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

use eventsource::prelude::*;

// ----- The task domain: events, the aggregate and its commands (examples/shared/task.rs) -----

#[path = "shared/task.rs"]
mod task;
use task::*;

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

#[path = "shared/store.rs"]
mod store;
use store::open_store;
