//! Tutorial 5: testing an event-sourced domain with the fixture: given / when / then.
//!
//! ```sh
//! cargo run --example tutorial_05_testing
//! ```
//!
//! What it teaches:
//!
//! - `AggregateFixture`: *given* a history of events, *when* a command runs, *then* it recorded
//!   exactly these events (`then_events`), nothing (`then_no_events`), or refused with this typed
//!   error (`then_error`). No database, no async: a test of a business rule reads like the rule.
//! - `ProjectionFixture`: given these events (as stored in these streams), then the read model
//!   equals this value.
//! - A failing expectation panics with both sides, events as `Type {json}` lines.
//! - An integration test on the in-memory store: the repository round trip, still without a
//!   database.
//!
//! In your crate these are `#[test]` functions (`cargo test`); here `main` runs them one after
//! the other, so that the example is a program. Each one is plain code you can paste into
//! `tests/`.

use eventsource::Root;
use eventsource::prelude::*;
use eventsource::testing::{AggregateFixture, ProjectionFixture, event};
use std::collections::BTreeMap;

// ----- The task domain: events, the aggregate and its commands (examples/shared/task.rs) -----

#[path = "shared/task.rs"]
mod task;
use task::*;

// ----- A read model (tutorial 3's workload) -----

/// Who has how many open tasks.
#[derive(Default, Debug, PartialEq)]
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

// ----- The tests -----

fn a_task_is_created_with_a_title() {
    AggregateFixture::<Task>::new()
        .when(|task| {
            let event = Task::create(task, "Write tests")?;
            task.record(event);
            Ok(())
        })
        .then_events([event(TaskCreated {
            title: "Write tests".into(),
        })]);
}

fn a_task_needs_a_title() {
    AggregateFixture::<Task>::new()
        .when(|task| Task::create(task, "  ").map(|e| task.record(e)))
        .then_error(TaskError::NoTitle);
}

fn an_assigned_task_can_be_completed() {
    let task = AggregateFixture::<Task>::new()
        .given([
            event(TaskCreated {
                title: "Write tests".into(),
            }),
            event(TaskAssigned {
                assignee: "alice".into(),
            }),
        ])
        .when(|task| task.complete().map(|e| task.record(e)))
        .then_events([event(TaskCompleted)]);
    // `then_events` hands the aggregate back for checks of the state.
    assert!(task.done);
    assert_eq!(task.version(), 3);
}

fn an_unassigned_task_cannot_be_completed() {
    AggregateFixture::<Task>::new()
        .given([event(TaskCreated {
            title: "Write tests".into(),
        })])
        .when(|task| task.complete().map(|e| task.record(e)))
        .then_error(TaskError::Unassigned);
}

fn a_completed_task_cannot_be_reassigned() {
    AggregateFixture::<Task>::new()
        .given([
            event(TaskCreated { title: "t".into() }),
            event(TaskAssigned {
                assignee: "alice".into(),
            }),
            event(TaskCompleted),
        ])
        .when(|task| task.assign("bob").map(|e| task.record(e)))
        .then_error(TaskError::Completed);
}

/// Assigns the task, unless it is already this person's: then there is nothing to record.
fn assign_once(task: &mut Root<Task>, assignee: &str) -> Result<(), TaskError> {
    if task.assignee.as_deref() == Some(assignee) {
        return Ok(());
    }
    let event = task.assign(assignee)?;
    task.record(event);
    Ok(())
}

fn assigning_to_the_same_person_again_records_nothing() {
    AggregateFixture::<Task>::new()
        .given([
            event(TaskCreated { title: "t".into() }),
            event(TaskAssigned {
                assignee: "alice".into(),
            }),
        ])
        .when(|task| assign_once(task, "alice"))
        .then_no_events();
}

fn the_workload_follows_reassignments_and_completions() {
    ProjectionFixture::new(Workload::default())
        .given(
            "Task",
            "t-1",
            TaskAssigned {
                assignee: "alice".into(),
            },
        )
        .given(
            "Task",
            "t-2",
            TaskAssigned {
                assignee: "alice".into(),
            },
        )
        .given(
            "Task",
            "t-1",
            TaskAssigned {
                assignee: "bob".into(),
            },
        )
        .given("Task", "t-2", TaskCompleted)
        .then_equals(&Workload {
            assignee_of: BTreeMap::from([("t-1".into(), "bob".into())]),
            open: BTreeMap::from([("alice".into(), 0), ("bob".into(), 1)]),
        });
}

/// What a failing expectation says: both lists of events, side by side.
fn a_failure_shows_both_sides() {
    // The expected panic is printed below, not by the default hook.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let failure = std::panic::catch_unwind(|| {
        AggregateFixture::<Task>::new()
            .given([event(TaskCreated { title: "t".into() })])
            .when(|task| task.assign("alice").map(|e| task.record(e)))
            .then_events([event(TaskAssigned {
                assignee: "bob".into(),
            })]);
    })
    .expect_err("the expectation is wrong, so it fails");
    std::panic::set_hook(hook);
    let message = failure
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    println!("    (a failing expectation reads:)\n{message}");
    assert!(message.contains(r#"TaskAssigned {"assignee":"bob"}"#));
    assert!(message.contains(r#"TaskAssigned {"assignee":"alice"}"#));
}

/// An integration test: the repository round trip on the in-memory store.
async fn a_saved_task_loads_the_same() -> eventsource::Result<()> {
    let tasks = Task::repository(InMemoryEventStore::new());
    let id = Uuid::now_v7();
    let mut task = tasks.create(id);
    task.record(TaskCreated { title: "t".into() });
    task.record(TaskAssigned {
        assignee: "alice".into(),
    });
    tasks.save(&mut task).await?;
    let loaded = tasks.load(id).await?;
    assert_eq!(loaded.version(), 2);
    assert_eq!(loaded.assignee.as_deref(), Some("alice"));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tests: [(&str, fn()); 8] = [
        (
            "a_task_is_created_with_a_title",
            a_task_is_created_with_a_title,
        ),
        ("a_task_needs_a_title", a_task_needs_a_title),
        (
            "an_assigned_task_can_be_completed",
            an_assigned_task_can_be_completed,
        ),
        (
            "an_unassigned_task_cannot_be_completed",
            an_unassigned_task_cannot_be_completed,
        ),
        (
            "a_completed_task_cannot_be_reassigned",
            a_completed_task_cannot_be_reassigned,
        ),
        (
            "assigning_to_the_same_person_again_records_nothing",
            assigning_to_the_same_person_again_records_nothing,
        ),
        (
            "the_workload_follows_reassignments_and_completions",
            the_workload_follows_reassignments_and_completions,
        ),
        ("a_failure_shows_both_sides", a_failure_shows_both_sides),
    ];
    for (name, test) in tests {
        test();
        println!("test {name} ... ok");
    }
    a_saved_task_loads_the_same().await?;
    println!("test a_saved_task_loads_the_same ... ok");
    println!("\ntutorial 5 OK");
    Ok(())
}
