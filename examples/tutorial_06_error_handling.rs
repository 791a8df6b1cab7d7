//! Tutorial 6: error handling: typed errors, retries, dead letters and a resilient projection.
//!
//! ```sh
//! cargo run --example tutorial_06_error_handling      # stores to target/tutorial-06.db
//! ```
//!
//! What it teaches:
//!
//! - Typed errors: a refused command (`UpdateError::Rejected`, the aggregate's own error) is
//!   told apart from the store's failures (`Error`: not found, concurrency, retries exhausted...),
//!   and `try_load` turns "not found" into `None`.
//! - A projection whose handler fails is retried with exponential backoff
//!   (`RunnerOptions::max_attempts`, `backoff`): a transient failure (a flaky mail server)
//!   heals by itself.
//! - An event that keeps failing is dead-lettered (`dead_letters`: which event, why, how many
//!   attempts) and the projection goes on with the next one (`OnFailure::Skip`): one poison
//!   event does not stop the rest. Once the cause is fixed, `replay_dead_letters` tries again.
//! - `OnFailure::Stop` instead stops a projection at the failing event (state `Failed`), its
//!   checkpoint before it.
//! - A durable projection (`add_durable`) keeps its checkpoint in the database: after a restart
//!   it resumes there instead of starting over.
//!
//! With `DATABASE_URL=postgres://...` it uses a fresh schema of that database instead.

use eventsource::Repository;
use eventsource::prelude::*;
use eventsource::subscription::{OnFailure, RunnerOptions, RunnerState, Subscriptions};
use eventsource::{AnyStore, CheckpointStore};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

// ----- The task domain: events, the aggregate and its commands (examples/shared/task.rs) -----

#[path = "shared/task.rs"]
mod task;
use task::*;

// ----- A projection with side effects: it mails whoever is assigned a task -----

#[derive(Debug, thiserror::Error)]
enum MailError {
    #[error("the mail server is not answering (attempt {0})")]
    Unavailable(u32),
    #[error("no address for {0}")]
    UnknownPerson(String),
}

/// Sends a mail for each assignment. The mail server fails the first two attempts of every
/// mail; nobody knows the address of "mallory" until the directory is fixed.
#[derive(Default)]
struct Notifier {
    attempts: BTreeMap<Uuid, u32>,
    sent: Vec<String>,
    directory_fixed: Arc<AtomicBool>,
}

#[projection(name = "notifier")]
impl Notifier {
    #[handles]
    fn assigned(&mut self, e: &TaskAssigned, ctx: &EventContext) -> Result<(), MailError> {
        if e.assignee == "mallory" && !self.directory_fixed.load(Ordering::SeqCst) {
            return Err(MailError::UnknownPerson(e.assignee.clone()));
        }
        // At least once: the event id tells a retry from a new mail.
        let attempts = self.attempts.entry(ctx.event_id).or_default();
        *attempts += 1;
        if *attempts <= 2 {
            return Err(MailError::Unavailable(*attempts));
        }
        self.sent.push(e.assignee.clone());
        Ok(())
    }
}

/// The same work, strict: it stops at the first event it cannot handle.
#[derive(Default)]
struct StrictNotifier;

#[projection(name = "strict_notifier")]
impl StrictNotifier {
    #[handles]
    fn assigned(&mut self, e: &TaskAssigned) -> Result<(), MailError> {
        if e.assignee == "mallory" {
            return Err(MailError::UnknownPerson(e.assignee.clone()));
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = open_store("tutorial-06").await?;
    let tasks = Task::repository(store.clone());

    // 1. Typed errors from the write side.
    let missing = Uuid::now_v7();
    match tasks.load(missing).await {
        Err(Error::AggregateNotFound { stream }) => println!("load: no task {stream}"),
        other => panic!("expected not found, got {other:?}"),
    }
    assert!(tasks.try_load(missing).await?.is_none());
    assigned_task(&tasks, "Ship it", "alice").await?;
    let id = Uuid::now_v7();
    let mut task = tasks.create(id);
    let created = Task::create(&task, "Nobody's job")?;
    task.record(created);
    tasks.save(&mut task).await?;
    let refused = tasks
        .update(id, |task| task.complete().map(|event| task.record(event)))
        .await;
    match refused {
        Err(UpdateError::Rejected(TaskError::Unassigned)) => {
            println!("update: refused by the task: {}", TaskError::Unassigned);
        }
        Err(UpdateError::Store(error)) => panic!("the store failed: {error}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // 2. Retries and dead letters.
    assigned_task(&tasks, "Audit the logs", "mallory").await?;
    assigned_task(&tasks, "Write the report", "bob").await?;
    let directory_fixed = Arc::new(AtomicBool::new(false));
    let options = RunnerOptions::default()
        .max_attempts(3)
        .backoff(Duration::from_millis(10), Duration::from_millis(100));
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(options.clone());
    let notifier = subscriptions.add_durable(Notifier {
        directory_fixed: Arc::clone(&directory_fixed),
        ..Notifier::default()
    });
    let strict = {
        let mut strict = Subscriptions::new(store.clone())
            .with_options(options.clone().on_failure(OnFailure::Stop));
        let handle = strict.add_durable(StrictNotifier);
        (strict.start(), handle)
    };
    let running = subscriptions.start();
    let head = store.log_head().await?.last;
    running.wait_until(head, Duration::from_secs(10)).await?;

    println!("\nmails sent after retries: {:?}", notifier.read().sent);
    assert_eq!(
        notifier.read().sent,
        ["alice", "bob"],
        "the transient failures healed"
    );
    let letters = store.dead_letters("notifier").await?;
    for letter in &letters {
        println!(
            "dead letter: {} at position {} of {}, {} attempts: {}",
            letter.event_type.as_deref().unwrap_or("?"),
            letter.position,
            letter.stream,
            letter.attempts,
            letter.error
        );
    }
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(letters[0].error, "no address for mallory");

    // The strict one stopped at mallory's assignment, before bob's.
    strict.0.wait_until(head, Duration::from_secs(10)).await?;
    let status = strict.1.status();
    println!(
        "strict notifier: {:?}, checkpoint {:?}",
        status.state, status.checkpoint
    );
    assert!(matches!(status.state, RunnerState::Failed(_)));
    assert!(status.checkpoint < Some(letters[0].position));
    strict.0.shutdown().await;

    // 3. Fix the cause, replay the dead letters.
    directory_fixed.store(true, Ordering::SeqCst);
    let mut left = running.replay_dead_letters("notifier").await?;
    for _ in 0..5 {
        if left == 0 {
            break;
        }
        // The mail server fails the first attempts again: replay again, as an operator would.
        left = running.replay_dead_letters("notifier").await?;
    }
    assert_eq!(left, 0);
    println!(
        "after the fix and a replay: sent {:?}",
        notifier.read().sent
    );
    assert_eq!(notifier.read().sent, ["alice", "bob", "mallory"]);
    assert!(store.dead_letters("notifier").await?.is_empty());
    running.shutdown().await;

    // 4. A restart resumes at the durable checkpoint: only the new assignment is mailed.
    assigned_task(&tasks, "Celebrate", "carol").await?;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(options);
    let restarted = subscriptions.add_durable(Notifier::default());
    let running = subscriptions.start();
    let head = store.log_head().await?.last;
    running.wait_until(head, Duration::from_secs(10)).await?;
    println!("after a restart: sent {:?}", restarted.read().sent);
    assert_eq!(restarted.read().sent, ["carol"]);
    running.shutdown().await;
    println!("\ntutorial 6 OK");
    Ok(())
}

/// Creates a task assigned to `assignee`; returns its id.
async fn assigned_task(
    tasks: &Repository<Task, AnyStore>,
    title: &str,
    assignee: &str,
) -> Result<Uuid, Box<dyn std::error::Error>> {
    let id = Uuid::now_v7();
    let mut task = tasks.create(id);
    let created = Task::create(&task, title)?;
    task.record(created);
    let assigned = task.assign(assignee)?;
    task.record(assigned);
    tasks.save(&mut task).await?;
    Ok(id)
}

// ----- Plumbing -----

#[path = "shared/store.rs"]
mod store;
use store::open_store;
