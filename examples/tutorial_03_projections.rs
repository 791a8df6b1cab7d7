//! Tutorial 3: projections, several read models built from one log.
//!
//! ```sh
//! cargo run --example tutorial_03_projections      # stores to target/tutorial-03.db
//! ```
//!
//! What it teaches:
//!
//! - The write side (the task aggregate of tutorial 1) stores events; read models are built from
//!   them, each shaped for one question: the task board (every task and its state), each
//!   person's open tasks, and completion statistics.
//! - A projection is a struct and a `#[projection]` impl block whose `#[handles]` methods take an
//!   event (and, if they need it, its `EventContext`: which task, when, at which position).
//! - The subscription manager keeps every projection current in the background: catch-up from
//!   the log, then live. `wait_until` reads your own writes; `status` and `lag` say where each
//!   one is; `rebuild` builds one again from the first event.
//!
//! With `DATABASE_URL=postgres://...` it uses a fresh schema of that database instead.

use eventsource::AnyStore;
use eventsource::Repository;
use eventsource::prelude::*;
use eventsource::subscription::Subscriptions;
use std::collections::BTreeMap;
use std::time::Duration;

// ----- The task domain: events, the aggregate and its commands (examples/shared/task.rs) -----

#[path = "shared/task.rs"]
mod task;
use task::*;

// ----- Read models: one per question -----

/// Every task with its title, assignee and state: the board.
#[derive(Default, Debug)]
struct TaskBoard {
    tasks: BTreeMap<String, (String, Option<String>, bool)>,
}

#[projection(name = "task_board")]
impl TaskBoard {
    #[handles]
    fn created(&mut self, e: &TaskCreated, ctx: &EventContext) {
        let id = ctx.aggregate_id().to_owned();
        self.tasks.insert(id, (e.title.clone(), None, false));
    }

    #[handles]
    fn assigned(&mut self, e: &TaskAssigned, ctx: &EventContext) {
        if let Some(task) = self.tasks.get_mut(ctx.aggregate_id()) {
            task.1 = Some(e.assignee.clone());
        }
    }

    #[handles]
    fn completed(&mut self, _: &TaskCompleted, ctx: &EventContext) {
        if let Some(task) = self.tasks.get_mut(ctx.aggregate_id()) {
            task.2 = true;
        }
    }
}

/// Who has how many open tasks.
#[derive(Default, Debug)]
struct Workload {
    assignee_of: BTreeMap<String, String>,
    open: BTreeMap<String, u32>,
}

#[projection(name = "workload")]
impl Workload {
    #[handles]
    fn assigned(&mut self, e: &TaskAssigned, ctx: &EventContext) {
        let task = ctx.aggregate_id().to_owned();
        if let Some(previous) = self.assignee_of.insert(task, e.assignee.clone()) {
            *self.open.entry(previous).or_default() -= 1;
        }
        *self.open.entry(e.assignee.clone()).or_default() += 1;
    }

    #[handles]
    fn completed(&mut self, _: &TaskCompleted, ctx: &EventContext) {
        if let Some(assignee) = self.assignee_of.remove(ctx.aggregate_id()) {
            *self.open.entry(assignee).or_default() -= 1;
        }
    }
}

/// How many tasks were created and completed.
#[derive(Default, Debug, PartialEq)]
struct Stats {
    created: u32,
    completed: u32,
}

#[projection(name = "stats")]
impl Stats {
    #[handles]
    fn created(&mut self, _: &TaskCreated) {
        self.created += 1;
    }

    #[handles]
    fn completed(&mut self, _: &TaskCompleted) {
        self.completed += 1;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = open_store("tutorial-03").await?;
    let tasks = Task::repository(store.clone());

    // Some history before the projections start: they catch up from the first event.
    let write_docs = new_task(&tasks, "Write the docs", Some("alice")).await?;
    new_task(&tasks, "Fix the build", Some("bob")).await?;

    let mut subscriptions = Subscriptions::new(store.clone());
    let board = subscriptions.add(TaskBoard::default());
    let workload = subscriptions.add(Workload::default());
    let stats = subscriptions.add(Stats::default());
    let running = subscriptions.start();

    // More work while they run live.
    new_task(&tasks, "Plan the release", Some("alice")).await?;
    new_task(&tasks, "Triage issues", None).await?;
    tasks
        .update(write_docs, |task| task.complete().map(|e| task.record(e)))
        .await?;

    // Read your own writes: wait until every projection has applied the log up to its head.
    let head = store.log_head().await?.last;
    running.wait_until(head, Duration::from_secs(10)).await?;

    println!("\nthe board:");
    for (title, assignee, done) in board.read().tasks.values() {
        let state = if *done { "done" } else { "open" };
        println!(
            "  [{state}] {title} ({})",
            assignee.as_deref().unwrap_or("unassigned")
        );
    }
    println!("open tasks per person: {:?}", workload.read().open);
    println!("statistics: {:?}", *stats.read());
    assert_eq!(board.read().tasks.len(), 4);
    assert_eq!(
        workload.read().open,
        BTreeMap::from([("alice".to_owned(), 1), ("bob".to_owned(), 1)])
    );
    assert_eq!(
        *stats.read(),
        Stats {
            created: 4,
            completed: 1
        }
    );

    // Where each projection is, and how far behind.
    for status in running.status() {
        println!(
            "{}: {:?} at {:?}, lag {}",
            status.name,
            status.state,
            status.checkpoint,
            running.lag(&status.name).await?
        );
        assert_eq!(running.lag(&status.name).await?, 0);
    }

    // A read model is disposable: rebuild it from the log, and it is the same.
    running.rebuild("stats").await?;
    assert_eq!(
        *stats.read(),
        Stats {
            created: 4,
            completed: 1
        }
    );
    println!("stats rebuilt from the first event: {:?}", *stats.read());
    running.shutdown().await;
    println!("\ntutorial 3 OK");
    Ok(())
}

/// Creates a task, assigned if `assignee` is given; returns its id.
async fn new_task(
    tasks: &Repository<Task, AnyStore>,
    title: &str,
    assignee: Option<&str>,
) -> Result<Uuid, Box<dyn std::error::Error>> {
    let id = Uuid::now_v7();
    let mut task = tasks.create(id);
    let created = Task::create(&task, title)?;
    task.record(created);
    if let Some(assignee) = assignee {
        let assigned = task.assign(assignee)?;
        task.record(assigned);
    }
    tasks.save(&mut task).await?;
    println!("task {title:?} created");
    Ok(id)
}

// ----- Plumbing -----

#[path = "shared/store.rs"]
mod store;
use store::open_store;
