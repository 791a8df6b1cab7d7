//! Where the tutorials store their events: a fresh SQLite file under `target/`, or a fresh
//! schema of the PostgreSQL database at `DATABASE_URL`.

use eventsource::prelude::*;
use eventsource::{AnyStore, PostgresEventStore};

/// A fresh store: with `DATABASE_URL=postgres://...`, a new schema `name` of that database;
/// otherwise the SQLite file `target/<name>.db`, replaced, and kept after the run.
pub(crate) async fn open_store(name: &str) -> Result<AnyStore, Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        use std::str::FromStr;
        let schema = name.replace('-', "_");
        let admin = sqlx::PgPool::connect(&url).await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&admin)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await?;
        let options = sqlx::postgres::PgConnectOptions::from_str(&url)?
            .options([("search_path", schema.as_str())]);
        println!("event store: PostgreSQL, schema {schema}");
        return Ok(PostgresEventStore::connect_with(options).await?.into());
    }
    // The workspace's `target/` (the examples package is `examples/`, one level down).
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join(format!("{name}.db"));
    // `target/` is not there in a fresh clone built with CARGO_TARGET_DIR elsewhere.
    std::fs::create_dir_all(path.parent().expect("target/"))?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    println!("event store: {}", path.display());
    Ok(SqliteEventStore::open(&path).await?.into())
}
