//! Fresh, isolated stores for tests: in memory, SQLite in a temporary directory, PostgreSQL in a
//! schema of its own (dropped afterwards, even when the test panics).
//!
//! PostgreSQL is the real server at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it cannot be reached, the test is skipped
//! with a message on the terminal, unless `CI` is set, where it fails.

use eventsource::{InMemoryEventStore, PostgresEventStore, SqliteEventStore};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::io::Write;
use std::str::FromStr;

/// The local test server, unless `DATABASE_URL` names another.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A store for one test, with whatever must be cleaned up after it.
pub struct TestStore<S> {
    store: S,
    _cleanup: Cleanup,
}

/// Held for its `Drop`: removes the test's database when the test ends.
enum Cleanup {
    Nothing,
    Directory(#[allow(dead_code)] tempfile::TempDir),
    Schema(#[allow(dead_code)] Box<PgSchema>),
}

impl<S> TestStore<S> {
    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for TestStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestStore")
            .field("store", &self.store)
            .finish()
    }
}

/// A fresh in-memory store.
pub async fn memory() -> Option<TestStore<InMemoryEventStore>> {
    Some(TestStore {
        store: InMemoryEventStore::new(),
        _cleanup: Cleanup::Nothing,
    })
}

/// A fresh SQLite store in a file of a temporary directory (removed afterwards).
pub async fn sqlite() -> Option<TestStore<SqliteEventStore>> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteEventStore::open(dir.path().join("events.db"))
        .await
        .expect("open an SQLite store");
    Some(TestStore {
        store,
        _cleanup: Cleanup::Directory(dir),
    })
}

/// A fresh SQLite store with group commit on (`with_group_commit`).
pub async fn sqlite_grouped() -> Option<TestStore<SqliteEventStore>> {
    let TestStore { store, _cleanup } = sqlite().await?;
    Some(TestStore {
        store: store.with_group_commit(),
        _cleanup,
    })
}

/// A fresh PostgreSQL store with group commit on (`with_group_commit`).
pub async fn postgres_grouped() -> Option<TestStore<PostgresEventStore>> {
    let TestStore { store, _cleanup } = postgres().await?;
    Some(TestStore {
        store: store.with_group_commit(),
        _cleanup,
    })
}

/// The PostgreSQL URL tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// Whether unreachable services must fail tests instead of skipping them.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Options for a connection to the test server, or `None` (after saying so) if it is down.
pub async fn postgres_options() -> Option<PgConnectOptions> {
    let url = database_url();
    let options = PgConnectOptions::from_str(&url).expect("DATABASE_URL is a PostgreSQL URL");
    match options.connect().await {
        Ok(conn) => {
            drop(conn);
            Some(options)
        }
        Err(err) if in_ci() => {
            panic!("PostgreSQL is unreachable at {url} and CI is set, so this test fails: {err}")
        }
        Err(err) => {
            let test = std::thread::current().name().unwrap_or("?").to_owned();
            // Written to the terminal, not through the test harness's captured output.
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED {test}: PostgreSQL is unreachable at {url} ({err}); set CI=true to fail instead"
            );
            None
        }
    }
}

/// A fresh PostgreSQL store in a new schema of the test database (dropped afterwards).
pub async fn postgres() -> Option<TestStore<PostgresEventStore>> {
    let (options, schema) = postgres_schema().await?;
    let store = PostgresEventStore::connect_with(options)
        .await
        .expect("connect and migrate a PostgreSQL store");
    Some(TestStore {
        store,
        _cleanup: Cleanup::Schema(Box::new(schema)),
    })
}

/// A new, empty schema and connection options whose `search_path` is that schema.
pub async fn postgres_schema() -> Option<(PgConnectOptions, PgSchema)> {
    let options = postgres_options().await?;
    let name = format!("es_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = options.connect().await.expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE SCHEMA {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test schema");
    let scoped = options.clone().options([("search_path", name.as_str())]);
    Some((scoped, PgSchema { options, name }))
}

/// A schema dropped (with everything in it) when this is dropped.
#[derive(Debug)]
pub struct PgSchema {
    options: PgConnectOptions,
    name: String,
}

impl PgSchema {
    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL of the test database whose connections use this schema (for tools that take a
    /// URL, such as the command line).
    pub fn url(&self) -> String {
        let url = database_url();
        let joiner = if url.contains('?') { '&' } else { '?' };
        format!("{url}{joiner}options=-c%20search_path%3D{}", self.name)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let options = self.options.clone();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on; use a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                if let Ok(mut conn) = options.connect().await {
                    let _ = sqlx::query(&sql)
                        .execute(&mut conn as &mut PgConnection)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A PostgreSQL role a test creates (an application's role, under row-level security), dropped
/// with what it owns when the test ends, panicking or not.
#[derive(Debug)]
pub struct TestRole {
    /// How to connect as an administrator (to drop the role).
    pub options: PgConnectOptions,
    /// The role's name.
    pub name: String,
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let options = self.options.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                if let Ok(mut conn) = options.connect().await {
                    let _ =
                        sqlx::raw_sql(&format!("DROP OWNED BY {name}; DROP ROLE IF EXISTS {name}"))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}
