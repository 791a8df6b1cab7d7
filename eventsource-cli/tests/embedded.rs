//! The command line embedded in an application, end to end on SQLite and PostgreSQL: the
//! application's projection is rebuilt and its dead letters replayed, and events are decoded
//! with the application's event types.
//!
//! Not a libtest harness (`harness = false`): this binary is both the tests and, started with
//! `--as-cli`, the application's command line, which the tests run as a child process.

mod common;

use common::{Backend, TestDb, json_lines};
use eventsource::prelude::*;
use eventsource::subscription::ProjectionOptions;
use serde::{Deserialize, Serialize};
use std::process::{Command, ExitCode, Output};

#[derive(DomainEvent, Serialize, Deserialize)]
struct OrderPlaced {
    total: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct OrderShipped {}

#[derive(DomainEvent, Serialize, Deserialize)]
struct CustomerRegistered {
    name: String,
}

/// The application's projection. With `REVENUE_REFUSES=20` in the environment it fails on an
/// order of that total (a bug, later fixed), which dead-letters the event.
#[derive(Default)]
struct Revenue {
    total: i64,
}

#[projection(name = "revenue")]
impl Revenue {
    #[handles]
    fn placed(&mut self, event: &OrderPlaced) -> Result<(), String> {
        if std::env::var("REVENUE_REFUSES").is_ok_and(|refused| refused == event.total.to_string())
        {
            return Err(format!("refusing an order of {}", event.total));
        }
        self.total += event.total;
        Ok(())
    }
}

/// The application's command line, as the README shows it.
async fn application_cli(args: Vec<String>) -> ExitCode {
    eventsource_cli::Cli::new()
        .projection(Revenue::default())
        .options(ProjectionOptions::default().max_attempts(1))
        .run_from(args)
        .await
}

/// Runs the application's command line on `db`.
fn app(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Output {
    let exe = std::env::current_exe().expect("this test binary");
    let mut command = Command::new(exe);
    command
        .env_remove("DATABASE_URL")
        .env_remove("REVENUE_REFUSES")
        .arg("--as-cli")
        .args(["--db", &db.url])
        .args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .output()
        .expect("run the application's command line")
}

fn ok(output: Output) -> Vec<serde_json::Value> {
    assert!(output.status.success(), "{output:?}");
    json_lines(&output.stdout)
}

async fn rebuild_replay_and_decode(backend: Backend) {
    let Some(db) = TestDb::seeded(backend).await else {
        return;
    };
    let status = ok(app(&db, &["projections", "status", "--json"], &[]));
    assert_eq!(status.len(), 1);
    assert_eq!(status[0]["name"], "revenue");
    assert_eq!(status[0]["in_this_binary"], true);
    assert_eq!(status[0]["checkpoint"], serde_json::Value::Null);
    // The projection's lag counts only the events it reads: the two orders placed.
    assert_eq!(status[0]["lag"], 2);

    // The rebuild meets the bug: the order of 20 goes to the dead letters.
    let rebuilt = ok(app(
        &db,
        &["projections", "rebuild", "revenue", "--json"],
        &[("REVENUE_REFUSES", "20")],
    ));
    assert_eq!(rebuilt[0]["rebuilt"], true);
    assert_eq!(rebuilt[0]["dead_letters"], 1);
    assert!(rebuilt[0]["checkpoint"].is_u64());

    let letters = ok(app(
        &db,
        &["projections", "dead-letters", "revenue", "--json"],
        &[],
    ));
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["stream"], "Order/o-2");
    assert_eq!(letters[0]["event_type"], "OrderPlaced");
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap()
            .contains("refusing an order of 20")
    );

    // The bug fixed, the dead letter is replayed and leaves the table.
    let replayed = ok(app(
        &db,
        &["projections", "replay", "revenue", "--json"],
        &[],
    ));
    assert_eq!(replayed[0]["applied"], 1);
    assert_eq!(replayed[0]["left"], 0);
    assert!(
        ok(app(
            &db,
            &["projections", "dead-letters", "revenue", "--json"],
            &[]
        ))
        .is_empty()
    );

    let status = ok(app(&db, &["projections", "status", "--json"], &[]));
    assert_eq!(status[0]["lag"], 0);
    assert_eq!(status[0]["dead_letters"], 0);

    // The application knows its event types: events are decoded through its registry.
    let events = ok(app(&db, &["events", "Order/o-1", "--json"], &[]));
    assert_eq!(events[0]["decoded"], true);
    assert_eq!(events[0]["payload"]["total"], 10);

    let unknown = app(&db, &["projections", "rebuild", "nope"], &[]);
    assert_eq!(unknown.status.code(), Some(3), "{unknown:?}");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(
        stderr.trim_end(),
        "error: no projection named `nope` (known: revenue)"
    );
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--as-cli") {
        let cli_args = std::iter::once("app".to_owned())
            .chain(args[2..].iter().cloned())
            .collect();
        return runtime.block_on(application_cli(cli_args));
    }
    let mut failed = 0;
    let mut passed = 0;
    for (name, backend) in [("sqlite", Backend::Sqlite), ("postgres", Backend::Postgres)] {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(rebuild_replay_and_decode(backend))
        }));
        let verdict = if result.is_ok() {
            passed += 1;
            "ok"
        } else {
            failed += 1;
            "FAILED"
        };
        println!("test {name}::rebuild_replay_and_decode ... {verdict}");
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
