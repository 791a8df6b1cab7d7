//! The command line embedded in an application, end to end on SQLite and PostgreSQL: the
//! application's projection is rebuilt and its dead letters replayed, and events are decoded
//! with the application's event types.
//!
//! Not a libtest harness (`harness = false`): this binary is both the tests and, started with
//! `--as-cli`, the application's command line, which the tests run as a child process.

mod common;

use common::{Backend, TestDb, json_lines};
use eventsource::AnyStore;
use eventsource::prelude::*;
use eventsource::projection::{PgTx, SqliteTx};
use eventsource::subscription::RunnerOptions;
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

/// A read model in the SQLite event store's database: one row per order.
struct OrderTable;

#[projection(name = "order_table", reset = clear)]
impl OrderTable {
    #[handles]
    async fn placed(
        &mut self,
        event: &OrderPlaced,
        ctx: &EventContext<'_>,
        tx: &mut SqliteTx,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO order_totals (order_id, total) VALUES (?, ?)")
            .bind(ctx.aggregate_id())
            .bind(event.total)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn clear(&mut self, tx: &mut SqliteTx) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM order_totals")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// [`OrderTable`] for PostgreSQL.
struct OrderTablePg;

#[projection(name = "order_table_pg", reset = clear)]
impl OrderTablePg {
    #[handles]
    async fn placed(
        &mut self,
        event: &OrderPlaced,
        ctx: &EventContext<'_>,
        tx: &mut PgTx,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO order_totals (order_id, total) VALUES ($1, $2)")
            .bind(ctx.aggregate_id())
            .bind(event.total)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn clear(&mut self, tx: &mut PgTx) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM order_totals")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The application's command line, as the README shows it.
async fn application_cli(args: Vec<String>) -> ExitCode {
    eventsource_cli::Cli::new()
        .projection(Revenue::default())
        .sql_projection(OrderTable)
        .sql_projection(OrderTablePg)
        .options(RunnerOptions::default().max_attempts(1))
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
    let names: Vec<&str> = status.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["order_table", "order_table_pg", "revenue"]);
    let status = &status[2..];
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
    assert_eq!(status[2]["lag"], 0);
    assert_eq!(status[2]["dead_letters"], 0);

    // The application knows its event types: events are decoded through its registry.
    let events = ok(app(&db, &["events", "Order/o-1", "--json"], &[]));
    assert_eq!(events[0]["decoded"], true);
    assert_eq!(events[0]["payload"]["total"], 10);

    let unknown = app(&db, &["projections", "rebuild", "nope"], &[]);
    assert_eq!(unknown.status.code(), Some(3), "{unknown:?}");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(
        stderr.trim_end(),
        "error: no projection named `nope` (known: revenue, order_table, order_table_pg)"
    );
}

/// A database read model rebuilt in its table; the other database's is refused.
async fn sql_projection_rebuild(backend: Backend) {
    let Some(db) = TestDb::seeded(backend).await else {
        return;
    };
    let store = db.store().await;
    let (mine, other) = match backend {
        Backend::Sqlite => ("order_table", "order_table_pg"),
        Backend::Postgres => ("order_table_pg", "order_table"),
    };
    let create = "CREATE TABLE order_totals (order_id TEXT PRIMARY KEY, total BIGINT NOT NULL)";
    let totals = "SELECT COUNT(*), SUM(total)";
    match &store {
        AnyStore::Sqlite(s) => {
            sqlx::query(create).execute(s.writer_pool()).await.unwrap();
        }
        AnyStore::Postgres(s) => {
            sqlx::query(create).execute(s.pool()).await.unwrap();
        }
        _ => unreachable!(),
    }
    common::close(store).await;

    let rebuilt = ok(app(&db, &["projections", "rebuild", mine, "--json"], &[]));
    assert_eq!(rebuilt[0]["dead_letters"], 0);
    let store = db.store().await;
    let (rows, sum): (i64, i64) = match &store {
        AnyStore::Sqlite(s) => sqlx::query_as(&format!("{totals} FROM order_totals"))
            .fetch_one(s.pool())
            .await
            .unwrap(),
        // PostgreSQL sums BIGINTs as NUMERIC.
        AnyStore::Postgres(s) => sqlx::query_as(&format!("{totals}::BIGINT FROM order_totals"))
            .fetch_one(s.pool())
            .await
            .unwrap(),
        _ => unreachable!(),
    };
    common::close(store).await;
    assert_eq!((rows, sum), (2, 30));

    let refused = app(&db, &["projections", "rebuild", other], &[]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("but --db names a"),
        "{refused:?}"
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
    type Scenario = fn(Backend) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;
    let scenarios: [(&str, Scenario); 2] = [
        ("rebuild_replay_and_decode", |b| {
            Box::pin(rebuild_replay_and_decode(b))
        }),
        ("sql_projection_rebuild", |b| {
            Box::pin(sql_projection_rebuild(b))
        }),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (scenario, run) in scenarios {
        for (name, backend) in [("sqlite", Backend::Sqlite), ("postgres", Backend::Postgres)] {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runtime.block_on(run(backend))
            }));
            let verdict = if result.is_ok() {
                passed += 1;
                "ok"
            } else {
                failed += 1;
                "FAILED"
            };
            println!("test {name}::{scenario} ... {verdict}");
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
