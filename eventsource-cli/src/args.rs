//! The command line's arguments, parsed by clap.

use clap::{Args, Parser, Subcommand};

/// Operate an eventsource event store: migrate it, list its streams, read and follow its
/// events, count them, and look after its projections.
#[derive(Debug, Parser)]
#[command(
    version,
    long_about = None,
    propagate_version = true,
    after_help = "Exit codes: 0 success; 1 database or runtime error; 2 usage error; \
                  3 not found (stream, projection); 4 no schema or an older one (run `migrate`)."
)]
pub(crate) struct Arguments {
    /// The event store: an SQLite file (`./app.db`, `sqlite://app.db`) or a PostgreSQL URL
    /// (`postgres://user@host/db`).
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) db: Option<String>,

    /// Print JSON Lines instead of tables: one JSON object per line.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the schema, or upgrade it to this version's.
    Migrate,
    /// List streams with their version and the time of their last event, a page at a time.
    Streams(StreamsArgs),
    /// Print the events of one stream.
    Events(EventsArgs),
    /// Print the events of the global log as they are appended, until Ctrl-C.
    Tail(TailArgs),
    /// Count events per type, per aggregate type and per day, and measure the store.
    Stats(StatsArgs),
    /// Projections: their checkpoints and dead letters; rebuild and replay.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
}

#[derive(Debug, Args)]
pub(crate) struct StreamsArgs {
    /// Only streams of this aggregate type.
    #[arg(long = "type", value_name = "AGGREGATE_TYPE")]
    pub(crate) aggregate_type: Option<String>,
    /// Only streams with events of this tenant.
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// Streams per page.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) limit: u64,
    /// The page after this stream (`AggregateType/id`, as the previous page ended).
    #[arg(long, value_name = "STREAM")]
    pub(crate) after: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// The stream: `AggregateType/id` (for example `Order/42`).
    pub(crate) stream: String,
    /// The first version to print.
    #[arg(long, default_value_t = 1)]
    pub(crate) from: u64,
    /// At most this many events.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// Start at this global position (inclusive; `0`: from the first event). Without it, only
    /// events appended from now on.
    #[arg(long, value_name = "POSITION")]
    pub(crate) from: Option<u64>,
    /// Only events of this type (repeat for several).
    #[arg(long = "type", value_name = "EVENT_TYPE")]
    pub(crate) event_types: Vec<String>,
    /// Exit after this many events.
    #[arg(long)]
    pub(crate) limit: Option<u64>,
    /// Exit at the head of the log instead of waiting for new events.
    #[arg(long)]
    pub(crate) no_follow: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// Show the most recent days only, this many (the JSON output has every day).
    #[arg(long, default_value_t = 14)]
    pub(crate) days: usize,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectionsCommand {
    /// Each projection's checkpoint, lag behind the log and dead letters.
    Status,
    /// Reset a projection and rebuild it from the first event (needs the projection's code:
    /// embed the command line in your application).
    Rebuild(NameArgs),
    /// List a projection's dead letters.
    DeadLetters(NameArgs),
    /// Try a projection's dead letters again (needs the projection's code).
    Replay(NameArgs),
}

#[derive(Debug, Args)]
pub(crate) struct NameArgs {
    /// The projection's name.
    pub(crate) name: String,
}
