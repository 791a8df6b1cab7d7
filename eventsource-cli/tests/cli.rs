//! The `eventsource` binary end to end, on SQLite and on PostgreSQL: every command run as a
//! process against a real database, its output (JSON Lines parsed as JSON), stderr and exit
//! code checked.

mod common;

use assert_cmd::Command;
use common::{Backend, TestDb, append, close, json_lines};
use eventsource::checkpoint::{CheckpointStore, DeadLetter};
use eventsource::{EventStore, ReadAll, StreamId};
use futures::StreamExt;
use predicates::prelude::*;
use std::time::Duration;

/// The binary, on `url`, with no `DATABASE_URL` from the environment.
fn cli(url: &str) -> Command {
    let mut command = Command::cargo_bin("eventsource").expect("the eventsource binary");
    command.env_remove("DATABASE_URL").arg("--db").arg(url);
    command
}

/// Runs `scenario` on SQLite and on PostgreSQL, as two tests.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $scenario() {
                    super::$scenario(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $scenario() {
                    super::$scenario(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both!(
    migrate_creates_the_schema,
    streams_lists_filters_and_pages,
    events_prints_a_stream,
    stats_counts,
    tail_reads_the_log,
    tail_follows_new_appends,
    projections_from_the_tables,
    missing_schema_is_reported,
    unknown_stream_is_reported,
    control_characters_are_escaped,
);

async fn migrate_creates_the_schema(backend: Backend) {
    let Some(db) = TestDb::empty(backend).await else {
        return;
    };
    cli(&db.url)
        .arg("migrate")
        .assert()
        .success()
        .stdout(predicate::str::contains("up to date"));
    let output = cli(&db.url).args(["--json", "migrate"]).output().unwrap();
    assert!(output.status.success());
    let lines = json_lines(&output.stdout);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["schema"], "current");
    assert_eq!(
        lines[0]["migrated"], false,
        "the second run has nothing to do"
    );
    // The schema is usable: the other commands open it.
    cli(&db.url).arg("streams").assert().success();
}

async fn streams_lists_filters_and_pages(backend: Backend) {
    let Some(db) = TestDb::seeded(backend).await else {
        return;
    };
    let all = json_lines(
        &cli(&db.url)
            .args(["streams", "--json"])
            .output()
            .unwrap()
            .stdout,
    );
    let names: Vec<&str> = all.iter().map(|s| s["stream"].as_str().unwrap()).collect();
    assert_eq!(names, ["Customer/c-1", "Order/o-1", "Order/o-2"]);
    assert_eq!(all[1]["version"], 2);
    assert!(all[1]["last_event_at"].is_string());

    let orders = json_lines(
        &cli(&db.url)
            .args(["streams", "--json", "--type", "Order"])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(orders.len(), 2);

    let acme = json_lines(
        &cli(&db.url)
            .args(["streams", "--json", "--tenant", "acme"])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(acme.len(), 1);
    assert_eq!(acme[0]["stream"], "Order/o-1");

    // Paging: a page of one says where the next starts, and --after goes on from there.
    cli(&db.url)
        .args(["streams", "--limit", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Customer/c-1"))
        .stderr(predicate::str::contains("--after Customer/c-1"));
    let next = json_lines(
        &cli(&db.url)
            .args([
                "streams",
                "--json",
                "--limit",
                "1",
                "--after",
                "Customer/c-1",
            ])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(next.len(), 1);
    assert_eq!(next[0]["stream"], "Order/o-1");
}

async fn events_prints_a_stream(backend: Backend) {
    let Some(db) = TestDb::seeded(backend).await else {
        return;
    };
    let events = json_lines(
        &cli(&db.url)
            .args(["events", "Order/o-1", "--json"])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event_type"], "OrderPlaced");
    assert_eq!(events[0]["version"], 1);
    assert_eq!(events[0]["payload"]["total"], 10);
    assert_eq!(events[0]["metadata"]["tenant_id"], "acme");
    // This binary has no event types of its own: payloads as stored.
    assert_eq!(events[0]["decoded"], false);
    assert_eq!(events[1]["event_type"], "OrderShipped");

    let from_two = json_lines(
        &cli(&db.url)
            .args(["events", "Order/o-1", "--from", "2", "--json"])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(from_two.len(), 1);
    assert_eq!(from_two[0]["version"], 2);

    cli(&db.url)
        .args(["events", "Order/o-2"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Order/o-2 v1  OrderPlaced"))
        .stdout(predicate::str::contains("\"total\": 20"));
}

async fn stats_counts(backend: Backend) {
    let Some(db) = TestDb::seeded(backend).await else {
        return;
    };
    let stats = json_lines(
        &cli(&db.url)
            .args(["stats", "--json"])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(stats.len(), 1);
    let stats = &stats[0];
    assert_eq!(stats["events"], 4);
    assert_eq!(stats["streams"], 3);
    assert_eq!(stats["by_event_type"][0]["name"], "OrderPlaced");
    assert_eq!(stats["by_event_type"][0]["events"], 2);
    assert_eq!(stats["by_aggregate_type"][0]["name"], "Order");
    assert_eq!(stats["by_aggregate_type"][0]["events"], 3);
    assert_eq!(stats["by_day"].as_array().unwrap().len(), 1);
    assert_eq!(stats["by_day"][0]["events"], 4);
    assert!(stats["size_bytes"].as_u64().unwrap() > 0);
    cli(&db.url)
        .arg("stats")
        .assert()
        .success()
        .stdout(predicate::str::contains("4 events in 3 streams"))
        .stdout(predicate::str::contains("CustomerRegistered"));
}

async fn tail_reads_the_log(backend: Backend) {
    let Some(db) = TestDb::seeded(backend).await else {
        return;
    };
    let first_three = json_lines(
        &cli(&db.url)
            .args(["tail", "--from", "0", "--limit", "3", "--json"])
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(first_three.len(), 3);
    let positions: Vec<u64> = first_three
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");

    // --from is inclusive: starting at the third event's position reads it again.
    let from_third = json_lines(
        &cli(&db.url)
            .args(["tail", "--no-follow", "--json", "--from"])
            .arg(positions[2].to_string())
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(from_third.len(), 2);
    assert_eq!(from_third[0]["position"], positions[2]);

    let placed = json_lines(
        &cli(&db.url)
            .args([
                "tail",
                "--from",
                "0",
                "--no-follow",
                "--type",
                "OrderPlaced",
                "--json",
            ])
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(placed.len(), 2);
    assert!(placed.iter().all(|e| e["event_type"] == "OrderPlaced"));
}

async fn tail_follows_new_appends(backend: Backend) {
    let Some(db) = TestDb::seeded(backend).await else {
        return;
    };
    // From the head: only what is appended after it starts.
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("eventsource"))
        .env_remove("DATABASE_URL")
        .args(["--db", &db.url, "tail", "--limit", "2", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tail");
    // Let it connect and read the head before anything is appended.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let store = db.store().await;
    append(
        &store,
        "Order/o-3",
        &[("OrderPlaced", r#"{"total":30}"#, None)],
    )
    .await;
    append(&store, "Order/o-3", &[("OrderShipped", r#"{}"#, None)]).await;
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("tail exits after its two events")
    .unwrap()
    .unwrap();
    close(store).await;
    assert!(output.status.success(), "{output:?}");
    let events = json_lines(&output.stdout);
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["OrderPlaced", "OrderShipped"]);
    assert!(events.iter().all(|e| e["stream"] == "Order/o-3"));
}

async fn projections_from_the_tables(backend: Backend) {
    let Some(db) = TestDb::seeded(backend).await else {
        return;
    };
    let store = db.store().await;
    let events: Vec<_> = store
        .read_all(ReadAll::from_start())
        .map(|e| e.unwrap())
        .collect()
        .await;
    // `orders` has applied the first two events and gave up on the third.
    store
        .save_checkpoint("orders", None, events[1].position)
        .await
        .unwrap();
    let letter = DeadLetter::new(
        "orders",
        events[2].position,
        StreamId::new("Order", "o-2").unwrap(),
        "handler failed: boom",
        3,
    )
    .with_event(
        Some(events[2].event_id),
        Some(1),
        Some("OrderPlaced".into()),
    );
    store.add_dead_letter(&letter).await.unwrap();
    close(store).await;

    let status = json_lines(
        &cli(&db.url)
            .args(["projections", "status", "--json"])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(status.len(), 1);
    assert_eq!(status[0]["name"], "orders");
    assert_eq!(status[0]["checkpoint"], events[1].position.get());
    assert_eq!(status[0]["dead_letters"], 1);
    // This binary does not have the projection: the lag counts every event after the checkpoint.
    assert_eq!(status[0]["lag"], 2);
    assert_eq!(status[0]["in_this_binary"], false);
    cli(&db.url)
        .args(["projections", "status"])
        .assert()
        .success()
        .stdout(predicate::str::contains("orders"));

    let letters = json_lines(
        &cli(&db.url)
            .args(["projections", "dead-letters", "orders", "--json"])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["position"], events[2].position.get());
    assert_eq!(letters[0]["stream"], "Order/o-2");
    assert_eq!(letters[0]["error"], "handler failed: boom");
    assert_eq!(letters[0]["attempts"], 3);

    cli(&db.url)
        .args(["projections", "dead-letters", "nope"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains(
            "no projection named `nope` (known: orders)",
        ));
    // Rebuild and replay run the projection's code: not in this binary.
    for operation in ["rebuild", "replay"] {
        cli(&db.url)
            .args(["projections", operation, "orders"])
            .assert()
            .code(2)
            .stderr(predicate::str::starts_with(
                "error: projection `orders` is not part of this binary",
            ))
            .stderr(predicate::str::contains("embed the command line"));
    }
}

async fn missing_schema_is_reported(backend: Backend) {
    let Some(db) = TestDb::empty(backend).await else {
        return;
    };
    for args in [
        &["streams"][..],
        &["events", "Order/o-1"],
        &["stats"],
        &["tail", "--no-follow"],
        &["projections", "status"],
    ] {
        let output = cli(&db.url).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(4), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains("run `eventsource migrate`"), "{stderr}");
        assert!(output.stdout.is_empty());
    }
    // Nothing was created: still no file, still no schema.
    if let Some(path) = db.sqlite_path() {
        assert!(!path.exists(), "a read created {}", path.display());
    }
    cli(&db.url).arg("streams").assert().code(4);
}

async fn unknown_stream_is_reported(backend: Backend) {
    let Some(db) = TestDb::seeded(backend).await else {
        return;
    };
    cli(&db.url)
        .args(["events", "Order/nope"])
        .assert()
        .code(3)
        .stdout("")
        .stderr("error: stream Order/nope does not exist (it has no events)\n");
    cli(&db.url)
        .args(["events", "no-slash"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "is not a stream: expected AggregateType/id",
        ));
}

/// A stored name that holds terminal control characters (an OSC title sequence, a carriage
/// return, a newline that would fake a line, a C1 control, a bidi override) is shown escaped by
/// every human output, on stdout and stderr: no raw control character reaches the terminal.
async fn control_characters_are_escaped(backend: Backend) {
    let Some(db) = TestDb::empty(backend).await else {
        return;
    };
    let store = db.store().await;
    let stream = "Order/o\x1b]0;pwned\x07";
    append(
        &store,
        stream,
        &[(
            "Evil\r\nFAKE LINE",
            r#"{"note":"\u009b31m \u202eright to left"}"#,
            Some("t\x1b[2J"),
        )],
    )
    .await;
    append(&store, "Order/ok", &[("Fine", "{}", None)]).await;
    close(store).await;
    let raw = |c: char| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    for args in [
        vec!["streams"],
        vec!["streams", "--limit", "1"],
        vec!["streams", "--tenant", "t\x1b[2J"],
        vec!["events", stream],
        vec!["tail", "--from", "0", "--no-follow"],
        vec!["stats"],
    ] {
        let output = cli(&db.url)
            .args(&args)
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        for (what, text) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
            let text = String::from_utf8_lossy(text);
            assert!(
                !text.chars().any(raw),
                "{args:?}: raw control characters on {what}: {text:?}"
            );
            assert!(
                !text
                    .lines()
                    .any(|line| line.trim_start().starts_with("FAKE LINE")),
                "{args:?}: a faked line on {what}: {text}"
            );
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        if args[0] != "stats" {
            assert!(
                stdout.contains(r"o\u{1b}]0;pwned\u{7}"),
                "{args:?}: {stdout}"
            );
        }
    }
    // JSON Lines keep the names exactly (JSON escapes them).
    let lines = json_lines(
        &cli(&db.url)
            .args(["--json", "events", stream])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(lines[0]["event_type"], "Evil\r\nFAKE LINE");
    assert_eq!(lines[0]["aggregate_id"], "o\x1b]0;pwned\x07");
}

#[test]
fn wrong_urls_are_one_line_errors() {
    // Nothing listens on port 1.
    cli("postgres://nobody@127.0.0.1:1/none")
        .arg("streams")
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with(
            "error: database error during connect: ",
        ))
        .stderr(predicate::function(|s: &str| s.lines().count() == 1));
    cli("mysql://localhost/db")
        .arg("streams")
        .assert()
        .code(2)
        .stderr(predicate::str::starts_with(
            "error: no event store for URL scheme `mysql`",
        ));
    Command::cargo_bin("eventsource")
        .unwrap()
        .env_remove("DATABASE_URL")
        .arg("streams")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no database given"));
    // clap's own usage errors keep clap's exit code.
    cli("memory:").arg("no-such-command").assert().code(2);
    // A URL that does not parse is a bad argument too (and its password is not repeated).
    for url in [
        "postgres://[::1",
        "postgresql://user:secret@[::1/db",
        "postgres://user:secret@host:notaport/db",
        "sqlite://events.db?mode=bogus",
    ] {
        cli(url)
            .arg("streams")
            .timeout(Duration::from_secs(30))
            .assert()
            .code(2)
            .stderr(predicate::str::starts_with("error: "))
            .stderr(predicate::str::contains("secret").not())
            .stderr(predicate::function(|s: &str| s.lines().count() == 1));
    }
}

#[test]
fn a_bare_path_is_an_sqlite_file_and_database_url_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let bare = path.to_str().unwrap();
    Command::cargo_bin("eventsource")
        .unwrap()
        .env("DATABASE_URL", bare)
        .arg("migrate")
        .assert()
        .success();
    assert!(path.exists());
    cli(bare).arg("stats").assert().success();
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn tail_stops_on_ctrl_c() {
    let Some(db) = TestDb::seeded(Backend::Sqlite).await else {
        return;
    };
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("eventsource"))
        .env_remove("DATABASE_URL")
        .args(["--db", &db.url, "tail", "--from", "0", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start tail");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(interrupted.success());
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("tail stops on Ctrl-C")
    .unwrap()
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(json_lines(&output.stdout).len(), 4, "the log, then waiting");
}
