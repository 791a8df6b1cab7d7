//! Databases for the end-to-end tests: a temporary SQLite file, or a fresh PostgreSQL schema
//! (skipped with a message when the server is down, failed under `CI=true`), and seeded events.

#![allow(dead_code, unreachable_pub)]

use eventsource::{AnyStore, EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use eventsource_tests::databases::{PgSchema, postgres_schema};

/// Which database a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database for one test, removed afterwards.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    _schema: Option<PgSchema>,
}

impl TestDb {
    /// An empty database: no SQLite file yet, or an empty schema. `None`: PostgreSQL is down
    /// (and the test is skipped, having said so).
    pub async fn empty(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let url = format!("sqlite://{}", dir.path().join("events.db").display());
                Some(TestDb {
                    url,
                    _dir: Some(dir),
                    _schema: None,
                })
            }
            Backend::Postgres => {
                let (_, schema) = postgres_schema().await?;
                Some(TestDb {
                    url: schema.url(),
                    _dir: None,
                    _schema: Some(schema),
                })
            }
        }
    }

    /// The SQLite file's path (SQLite only).
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        self._dir.as_ref().map(|dir| dir.path().join("events.db"))
    }

    /// A migrated database holding [`seed`]'s events.
    pub async fn seeded(backend: Backend) -> Option<TestDb> {
        let db = Self::empty(backend).await?;
        let store = db.store().await;
        seed(&store).await;
        close(store).await;
        Some(db)
    }

    /// The store, migrated.
    pub async fn store(&self) -> AnyStore {
        AnyStore::connect(&self.url)
            .await
            .expect("connect to the test store")
    }
}

/// Closes an SQLite store so that another process has the file to itself.
pub async fn close(store: AnyStore) {
    if let AnyStore::Sqlite(store) = &store {
        store.close().await;
    }
}

/// Appends `events` (type, payload, tenant) to `stream`.
pub async fn append(store: &AnyStore, stream: &str, events: &[(&str, &str, Option<&str>)]) {
    let (aggregate_type, aggregate_id) = stream.split_once('/').expect("Type/id");
    let stream = StreamId::new(aggregate_type, aggregate_id).expect("a stream id");
    let events = events
        .iter()
        .map(|(event_type, payload, tenant)| {
            let event = NewEvent::from_json(event_type.to_string(), 1, payload.to_string());
            match tenant {
                Some(tenant) => event.with_metadata(Metadata::new().with_tenant(*tenant)),
                None => event,
            }
        })
        .collect();
    let appended = store
        .append(&stream, ExpectedVersion::Any, events)
        .await
        .expect("append");
    store
        .wait_for(appended.last_position, std::time::Duration::from_secs(10))
        .await
        .expect("readable");
}

/// Four events in three streams: `Order/o-1` (placed for tenant `acme`, then shipped),
/// `Order/o-2` (placed for `globex`), `Customer/c-1` (registered).
pub async fn seed(store: &AnyStore) {
    append(
        store,
        "Order/o-1",
        &[
            ("OrderPlaced", r#"{"total":10}"#, Some("acme")),
            ("OrderShipped", r#"{}"#, Some("acme")),
        ],
    )
    .await;
    append(
        store,
        "Order/o-2",
        &[("OrderPlaced", r#"{"total":20}"#, Some("globex"))],
    )
    .await;
    append(
        store,
        "Customer/c-1",
        &[("CustomerRegistered", r#"{"name":"Ada"}"#, None)],
    )
    .await;
}

/// Each line of `stdout` parsed as JSON.
pub fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}")))
        .collect()
}
