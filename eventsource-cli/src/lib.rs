//! The `eventsource` command line, as a library: what the `eventsource` binary runs, and what an
//! application embeds to run the same commands with its own projections and event types.
//!
//! The plain binary inspects any store: `migrate`, `streams`, `events`, `tail`, `stats`, and
//! `projections status | dead-letters` from the checkpoint and dead-letter tables. Rebuilding a
//! projection or replaying its dead letters runs the projection's code, and decoding events
//! into their current schema needs the event types: both live in the application. So an
//! application adds a binary (or a subcommand) of its own that embeds the command line:
//!
//! ```no_run
//! use eventsource::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(DomainEvent, Serialize, Deserialize)]
//! struct OrderPlaced { total: i64 }
//!
//! #[derive(Default)]
//! struct OrderCount { orders: u64 }
//!
//! #[projection(name = "order_count")]
//! impl OrderCount {
//!     #[handles]
//!     fn placed(&mut self, _: &OrderPlaced) { self.orders += 1; }
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     eventsource_cli::Cli::new()
//!         .projection(OrderCount::default())
//!         .run()
//!         .await
//! }
//! ```
//!
//! Every command takes `--db` (or `DATABASE_URL`) and `--json`; exit codes are in [`exit`].
//! Only `migrate` creates or changes the schema: the other commands open the database as it
//! is and fail with [`exit::SCHEMA`] when it has no schema.

mod args;
mod commands;
mod error;
mod output;

pub use error::{CliError, exit};

/// The command line's parsing of its arguments and `--db`, reached by the fuzz targets in
/// `fuzz/` (feature `fuzzing`). Not API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz {
    use crate::args::{Arguments, Command};
    use crate::commands::{parse_stream, store_url};
    use std::ffi::OsString;

    /// Parses `args` (the first is the program's name) as `run_from` does, then `--db` as the URL
    /// the store would open (without opening it) and the stream `events` names: `Ok` if all of
    /// it parses, else the message the command line would print.
    pub fn parse(args: &[OsString]) -> Result<(), String> {
        use clap::Parser;
        let usage = |error: crate::CliError| error.one_line("eventsource");
        let parsed = Arguments::try_parse_from(args).map_err(|error| error.render().to_string())?;
        let url = store_url(parsed.db).map_err(usage)?;
        store_options(&url)?;
        if let Command::Events(events) = &parsed.command {
            parse_stream(&events.stream).map_err(usage)?;
        }
        Ok(())
    }

    /// `url` parsed into the options of the store it names, as `AnyStore::open_existing` parses
    /// it before it connects.
    fn store_options(url: &str) -> Result<(), String> {
        use eventsource::sqlx::{postgres::PgConnectOptions, sqlite::SqliteConnectOptions};
        use std::str::FromStr;
        match url.split(':').next().unwrap_or_default() {
            "memory" => Ok(()),
            "sqlite" => SqliteConnectOptions::from_str(url)
                .map(drop)
                .map_err(|e| e.to_string()),
            "postgres" | "postgresql" => PgConnectOptions::from_str(url)
                .map(drop)
                .map_err(|e| e.to_string()),
            scheme => Err(format!("unsupported scheme `{scheme}`")),
        }
    }
}

use eventsource::AnyStore;
use eventsource::checkpoint::TransactionalStore;
use eventsource::subscription::{RunnerOptions, RunningSubscriptions, Subscriptions};
use eventsource::{Projection, SqlProjection};
use std::ffi::OsString;
use std::process::ExitCode;

/// The command line, with the projections of the application that embeds it.
///
/// Build it with [`new`](Self::new), add projections, then [`run`](Self::run) it from `main`.
pub struct Cli {
    projections: Vec<Registered>,
    options: RunnerOptions,
}

/// A projection the binary can run: its name, the event types it reads, and how to start it.
pub(crate) struct Registered {
    pub(crate) name: &'static str,
    pub(crate) event_types: Vec<&'static str>,
    pub(crate) start: StartFn,
}

type StartFn =
    Box<dyn FnOnce(&AnyStore, RunnerOptions) -> Result<RunningSubscriptions, CliError> + Send>;

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field(
                "projections",
                &self.projections.iter().map(|p| p.name).collect::<Vec<_>>(),
            )
            .field("options", &self.options)
            .finish()
    }
}

impl Default for Cli {
    fn default() -> Self {
        Self::new()
    }
}

impl Cli {
    /// The command line with no projections of its own: what the `eventsource` binary runs.
    pub fn new() -> Self {
        Cli {
            projections: Vec::new(),
            options: RunnerOptions::default(),
        }
    }

    /// Adds a [`Projection`] whose checkpoint is in the event store (one your application runs
    /// with [`Subscriptions::add_durable`]): `rebuild` resets it and applies every event again,
    /// `replay` tries its dead letters again.
    pub fn projection<P: Projection + Sync>(mut self, projection: P) -> Self {
        self.projections.push(Registered {
            name: P::NAME,
            event_types: P::event_types(),
            start: Box::new(move |store, options| {
                let mut subscriptions = Subscriptions::new(store.clone()).with_options(options);
                subscriptions.add_durable(projection);
                Ok(subscriptions.start())
            }),
        });
        self
    }

    /// Adds a [`SqlProjection`] (a read model in the event store's database, run with
    /// [`Subscriptions::add_sql`]). Its database must be the one `--db` names: an SQLite
    /// projection with an SQLite store, a PostgreSQL one with PostgreSQL.
    pub fn sql_projection<P>(mut self, projection: P) -> Self
    where
        P: SqlProjection,
        P::Database: SqlBackend,
    {
        self.projections.push(Registered {
            name: P::NAME,
            event_types: P::event_types(),
            start: Box::new(move |store, options| {
                let Some(store) = <P::Database as SqlBackend>::store(store) else {
                    return Err(CliError::Usage(format!(
                        "projection `{}` keeps its read model in {}, but --db names a {} store",
                        P::NAME,
                        <P::Database as SqlBackend>::NAME,
                        store.backend()
                    )));
                };
                let mut subscriptions = Subscriptions::new(store).with_options(options);
                subscriptions.add_sql(projection);
                Ok(subscriptions.start())
            }),
        });
        self
    }

    /// The options `rebuild` and `replay` run projections with (retries, batch size): give the
    /// ones your application uses. Default: [`RunnerOptions::default`].
    pub fn options(mut self, options: RunnerOptions) -> Self {
        self.options = options;
        self
    }

    /// Parses the process's arguments, runs the command, reports an error on stderr in one line,
    /// and returns the exit code (see [`exit`]). Call it from a tokio runtime.
    pub async fn run(self) -> ExitCode {
        self.run_from(std::env::args_os()).await
    }

    /// [`run`](Self::run) with these arguments (the first is the program's name).
    pub async fn run_from<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        use clap::Parser;
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let program = args
            .first()
            .and_then(|arg| std::path::Path::new(arg).file_stem())
            .map_or_else(
                || "eventsource".to_owned(),
                |s| s.to_string_lossy().into_owned(),
            );
        let parsed = match args::Arguments::try_parse_from(&args) {
            Ok(parsed) => parsed,
            Err(error) => {
                let _ = error.print();
                return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(exit::USAGE));
            }
        };
        match commands::run(parsed, self.projections, self.options, &program).await {
            Ok(()) => ExitCode::from(exit::OK),
            // `eventsource tail | head`: the reader went away, which is not an error.
            Err(CliError::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                ExitCode::from(exit::OK)
            }
            Err(error) => {
                output::note(format_args!("error: {}", error.one_line(&program)));
                ExitCode::from(error.exit_code())
            }
        }
    }
}

/// A database an [`SqlProjection`] can keep its read model in, and the event store of that
/// database: implemented for `sqlx::Sqlite` and `sqlx::Postgres`.
pub trait SqlBackend: eventsource::sqlx::Database {
    /// The event store of this database.
    type Store: TransactionalStore<Database = Self>;
    /// The database's name, for messages.
    const NAME: &'static str;
    /// The store inside `store`, if it is of this database.
    fn store(store: &AnyStore) -> Option<Self::Store>;
}

impl SqlBackend for eventsource::sqlx::Sqlite {
    type Store = eventsource::SqliteEventStore;
    const NAME: &'static str = "SQLite";
    fn store(store: &AnyStore) -> Option<Self::Store> {
        match store {
            AnyStore::Sqlite(store) => Some(store.clone()),
            _ => None,
        }
    }
}

impl SqlBackend for eventsource::sqlx::Postgres {
    type Store = eventsource::PostgresEventStore;
    const NAME: &'static str = "PostgreSQL";
    fn store(store: &AnyStore) -> Option<Self::Store> {
        match store {
            AnyStore::Postgres(store) => Some(store.clone()),
            _ => None,
        }
    }
}
