//! Tutorial 9: replay and time travel: state as of a date, and read models built from history.
//!
//! ```sh
//! cargo run --example tutorial_09_time_travel      # stores to target/tutorial-09.db
//! ```
//!
//! What it teaches:
//!
//! - Nothing is forgotten: `load_at(id, version)` gives a task as it was after its n-th event,
//!   `load_as_of(id, time)` as it was at a moment (from the events that had occurred by then).
//! - Replay: fold the global log (`read_all`), up to a date, into a fresh read model: the board
//!   as it looked last Tuesday, computed today.
//! - A read model added long after the events happened catches up from the first event, and
//!   `rebuild` builds one again from scratch (after a bug fix, say) with the same result.
//!
//! With `DATABASE_URL=postgres://...` it uses a fresh schema of that database instead.

use eventsource::prelude::*;
use eventsource::subscription::Subscriptions;
use eventsource::{Projection, ReadAll, RecordedEvent};
use futures::TryStreamExt;
use std::collections::BTreeMap;
use std::time::Duration;

// ----- The task domain: events, the aggregate and its commands (examples/shared/task.rs) -----

#[path = "shared/task.rs"]
mod task;
use task::*;

// ----- Read models -----

/// Open tasks per person.
#[derive(Default, Debug, PartialEq, Clone)]
struct OpenTasks {
    assignee_of: BTreeMap<String, String>,
}

#[projection(name = "open_tasks")]
impl OpenTasks {
    #[handles]
    fn assigned(&mut self, e: &TaskAssigned, ctx: &EventContext) {
        self.assignee_of
            .insert(ctx.aggregate_id().to_owned(), e.assignee.clone());
    }

    #[handles]
    fn completed(&mut self, _: &TaskCompleted, ctx: &EventContext) {
        self.assignee_of.remove(ctx.aggregate_id());
    }
}

impl OpenTasks {
    fn per_person(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for person in self.assignee_of.values() {
            *counts.entry(person.clone()).or_default() += 1;
        }
        counts
    }
}

/// Completed tasks per person: a report nobody thought of when the tasks were done.
#[derive(Default, Debug, PartialEq, Clone)]
struct Leaderboard {
    assignee_of: BTreeMap<String, String>,
    completed: BTreeMap<String, u32>,
}

#[projection(name = "leaderboard")]
impl Leaderboard {
    #[handles]
    fn assigned(&mut self, e: &TaskAssigned, ctx: &EventContext) {
        self.assignee_of
            .insert(ctx.aggregate_id().to_owned(), e.assignee.clone());
    }

    #[handles]
    fn completed(&mut self, _: &TaskCompleted, ctx: &EventContext) {
        if let Some(person) = self.assignee_of.get(ctx.aggregate_id()) {
            *self.completed.entry(person.clone()).or_default() += 1;
        }
    }
}

/// Moves the clock on, so that what follows happens strictly later.
async fn later() -> chrono::DateTime<chrono::Utc> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let now = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    now
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = open_store("tutorial-09").await?;
    let tasks = Task::repository(store.clone());

    // Monday: two tasks, for alice.
    let before_anything = later().await;
    let report = Uuid::now_v7();
    let review = Uuid::now_v7();
    for (id, title) in [(report, "Write the report"), (review, "Review the code")] {
        let mut task = tasks.create(id);
        let created = Task::create(&task, title)?;
        task.record(created);
        let assigned = task.assign("alice")?;
        task.record(assigned);
        tasks.save(&mut task).await?;
    }
    let monday = later().await;

    // Tuesday: the review goes to bob, alice completes the report.
    tasks
        .update(review, |t| t.assign("bob").map(|e| t.record(e)))
        .await?;
    tasks
        .update(report, |t| t.complete().map(|e| t.record(e)))
        .await?;
    let tuesday = later().await;

    // Wednesday: bob completes the review.
    tasks
        .update(review, |t| t.complete().map(|e| t.record(e)))
        .await?;

    // Time travel on one task: by version, and by date.
    let now = tasks.load(review).await?;
    let at_v2 = tasks.load_at(review, 2).await?;
    let on_monday = tasks.load_as_of(review, monday).await?;
    let on_tuesday = tasks.load_as_of(review, tuesday).await?;
    println!("the review now:        {:?}", now.state());
    println!("after its 2nd event:   {:?}", at_v2.state());
    println!("as of monday evening:  {:?}", on_monday.state());
    println!("as of tuesday evening: {:?}", on_tuesday.state());
    assert!(now.done);
    assert_eq!(at_v2.assignee.as_deref(), Some("alice"));
    assert_eq!(on_monday.assignee.as_deref(), Some("alice"));
    assert_eq!(
        (on_tuesday.assignee.as_deref(), on_tuesday.done),
        (Some("bob"), false)
    );
    assert!(matches!(
        tasks.load_as_of(review, before_anything).await,
        Err(Error::AggregateNotFound { .. })
    ));
    assert!(matches!(
        tasks.load_at(review, 99).await,
        Err(Error::VersionNotFound { current: 4, .. })
    ));

    // Replay the whole log, up to a date, into a fresh read model.
    let as_of = async |date| -> eventsource::Result<OpenTasks> {
        // (On PostgreSQL the log is readable up to the oldest running transaction: wait.)
        let last = store.log_head().await?.last;
        store.wait_for(last, Duration::from_secs(10)).await?;
        let mut model = OpenTasks::default();
        let events: Vec<RecordedEvent> = store
            .read_all(ReadAll::from_start().event_types(OpenTasks::event_types()))
            .try_collect()
            .await?;
        for event in events.iter().filter(|e| e.occurred_at <= date) {
            model
                .handle(event.view(), &EventContext::of(event))
                .expect("the read model applies every event");
        }
        Ok(model)
    };
    for (day, date) in [("monday", monday), ("tuesday", tuesday)] {
        println!(
            "open tasks per person, {day} evening: {:?}",
            as_of(date).await?.per_person()
        );
    }
    assert_eq!(
        as_of(monday).await?.per_person(),
        BTreeMap::from([("alice".to_owned(), 2)])
    );
    assert_eq!(
        as_of(tuesday).await?.per_person(),
        BTreeMap::from([("bob".to_owned(), 1)])
    );

    // A report added today is built from the whole history; a rebuild gives it again.
    let mut subscriptions = Subscriptions::new(store.clone());
    let leaderboard = subscriptions.add(Leaderboard::default());
    let running = subscriptions.start();
    let head = store.log_head().await?.last;
    running.wait_until(head, Duration::from_secs(10)).await?;
    let built = leaderboard.read().clone();
    println!(
        "completed per person, from the whole history: {:?}",
        built.completed
    );
    assert_eq!(
        built.completed,
        BTreeMap::from([("alice".to_owned(), 1), ("bob".to_owned(), 1)])
    );
    running.rebuild("leaderboard").await?;
    assert_eq!(*leaderboard.read(), built, "a rebuild gives the same model");
    println!("rebuilt from the first event: the same");
    running.shutdown().await;
    println!("\ntutorial 9 OK");
    Ok(())
}

// ----- Plumbing -----

#[path = "shared/store.rs"]
mod store;
use store::open_store;
