//! What each command does.

use crate::Registered;
use crate::args::{
    Arguments, Command, EventsArgs, ProjectionsCommand, StatsArgs, StreamsArgs, TailArgs,
};
use crate::error::CliError;
use crate::output::{Output, event_json, note, or_dash, payload, time};
use eventsource::admin::{Inspect, SchemaState, StreamListing};
use eventsource::subscription::{RunnerOptions, RunnerState, RunningSubscriptions};
use eventsource::{
    AnyStore, CheckpointStore, EventStore, Position, ReadAll, RecordedEvent, StreamId, StreamQuery,
};
use futures::StreamExt;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde_json::json;
use std::time::Duration;

type Result<T, E = CliError> = std::result::Result<T, E>;

/// `n thing` or `n things`.
fn plural(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// Runs the parsed command.
pub(crate) async fn run(
    arguments: Arguments,
    projections: Vec<Registered>,
    options: RunnerOptions,
    program: &str,
) -> Result<()> {
    let url = store_url(arguments.db)?;
    let mut out = Output::new(arguments.json);
    match arguments.command {
        Command::Migrate => migrate(&url, &mut out).await,
        Command::Streams(args) => streams(&open(&url).await?, args, &mut out, program).await,
        Command::Events(args) => events(&open(&url).await?, args, &mut out).await,
        Command::Tail(args) => tail(&open(&url).await?, args, &mut out).await,
        Command::Stats(args) => stats(&open(&url).await?, args, &mut out).await,
        Command::Projections(command) => {
            let store = open(&url).await?;
            match command {
                ProjectionsCommand::Status => status(&store, &projections, &mut out).await,
                ProjectionsCommand::DeadLetters(args) => {
                    dead_letters(&store, &projections, &args.name, &mut out).await
                }
                ProjectionsCommand::Rebuild(args) => {
                    let registered = embedded(projections, &args.name, "rebuild")?;
                    rebuild(&store, registered, options, &mut out).await
                }
                ProjectionsCommand::Replay(args) => {
                    let registered = embedded(projections, &args.name, "replay")?;
                    replay(&store, registered, options, &mut out).await
                }
            }
        }
    }
}

/// `--db` as a URL the runtime takes: a bare path is an SQLite file.
pub(crate) fn store_url(db: Option<String>) -> Result<String> {
    let db = db.filter(|db| !db.is_empty()).ok_or_else(|| {
        CliError::Usage(
            "no database given: pass --db <SQLite file or PostgreSQL URL>, or set DATABASE_URL"
                .into(),
        )
    })?;
    let known = ["memory:", "sqlite:", "postgres:", "postgresql:"]
        .iter()
        .any(|scheme| db.starts_with(scheme));
    let url = if known || db.contains("://") {
        db
    } else {
        format!("sqlite://{db}")
    };
    check_url(&url)?;
    Ok(url)
}

/// Checks that `url` parses the way its backend reads it: one that does not is a bad argument
/// ([`exit::USAGE`](crate::exit::USAGE)), not a failure to connect. The parser's reason is
/// given, never the URL (it may hold a password).
fn check_url(url: &str) -> Result<()> {
    use eventsource::sqlx::postgres::PgConnectOptions;
    use eventsource::sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;
    let (backend, parsed) = match url.split(':').next().unwrap_or_default() {
        "postgres" | "postgresql" => ("PostgreSQL", PgConnectOptions::from_str(url).map(drop)),
        "sqlite" => ("SQLite", SqliteConnectOptions::from_str(url).map(drop)),
        _ => return Ok(()),
    };
    parsed.map_err(|error| CliError::Usage(format!("--db is not a valid {backend} URL: {error}")))
}

/// Opens the store as it is: nothing is created, a missing schema is an error.
async fn open(url: &str) -> Result<AnyStore> {
    Ok(AnyStore::open_existing(url).await?)
}

/// `Type/id` as a stream.
pub(crate) fn parse_stream(text: &str) -> Result<StreamId> {
    let (aggregate_type, aggregate_id) = text.split_once('/').ok_or_else(|| {
        CliError::Usage(format!(
            "`{text}` is not a stream: expected AggregateType/id, for example Order/42"
        ))
    })?;
    StreamId::new(aggregate_type, aggregate_id)
        .map_err(|error| CliError::Usage(format!("`{text}` is not a stream: {error}")))
}

/// A progress bar on stderr; hidden when stderr is not a terminal.
fn progress(length: Option<u64>, template: &str) -> ProgressBar {
    let bar = match length {
        Some(length) => ProgressBar::new(length),
        None => ProgressBar::new_spinner(),
    };
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| {
        if length.is_some() {
            ProgressStyle::default_bar()
        } else {
            ProgressStyle::default_spinner()
        }
    });
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

async fn migrate(url: &str, out: &mut Output) -> Result<()> {
    // Opening as it is first reports a wrong URL plainly (connecting with migrations retries
    // until a timeout), and tells whether there is anything to do.
    let before = match AnyStore::open_existing(url).await {
        Ok(_) => SchemaState::Current,
        Err(eventsource::Error::SchemaMissing { .. }) => SchemaState::Missing,
        Err(error) => return Err(error.into()),
    };
    let spinner = progress(None, "{spinner} {msg} ({elapsed})");
    spinner.set_message("creating or upgrading the event store schema");
    let connected = AnyStore::connect(url).await;
    spinner.finish_and_clear();
    let store = connected?;
    let state = store.schema_state().await?;
    let current = state == SchemaState::Current;
    if out.json {
        out.json_line(&json!({
            "backend": store.backend(),
            "migrated": before != SchemaState::Current,
            "schema": if current { "current" } else { "outdated" },
        }))?;
    } else {
        out.line(format!(
            "the {} event store schema {}",
            store.backend(),
            match (before, current) {
                (_, false) => "is not up to date",
                (SchemaState::Current, true) => "was up to date already",
                (_, true) => "is created or upgraded: up to date",
            }
        ))?;
    }
    Ok(())
}

async fn streams(
    store: &AnyStore,
    args: StreamsArgs,
    out: &mut Output,
    program: &str,
) -> Result<()> {
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let mut listing = StreamListing::new().limit(limit);
    if let Some(aggregate_type) = args.aggregate_type {
        listing = listing.aggregate_type(aggregate_type);
    }
    if let Some(tenant) = args.tenant {
        listing = listing.tenant(tenant);
    }
    if let Some(after) = &args.after {
        listing = listing.after(parse_stream(after)?);
    }
    let page = store.list_streams(&listing).await?;
    if out.json {
        for summary in &page {
            out.json_line(&json!({
                "stream": summary.stream.to_string(),
                "aggregate_type": summary.stream.aggregate_type(),
                "aggregate_id": summary.stream.aggregate_id(),
                "version": summary.version,
                "last_event_at": summary.last_event_at,
                "last_position": summary.last_position.get(),
            }))?;
        }
    } else if page.is_empty() {
        note("no streams");
    } else {
        let rows = page
            .iter()
            .map(|summary| {
                vec![
                    summary.stream.to_string(),
                    summary.version.to_string(),
                    time(summary.last_event_at),
                    summary.last_position.to_string(),
                ]
            })
            .collect();
        out.table(&["STREAM", "VERSION", "LAST EVENT", "LAST POSITION"], rows)?;
    }
    if page.len() == limit
        && let Some(last) = page.last()
    {
        note(format_args!(
            "more streams may follow: {program} streams --after {} (with the same filters)",
            last.stream
        ));
    }
    Ok(())
}

async fn events(store: &AnyStore, args: EventsArgs, out: &mut Output) -> Result<()> {
    let stream = parse_stream(&args.stream)?;
    if store.stream_version(&stream).await? == 0 {
        return Err(CliError::StreamNotFound {
            stream: stream.to_string(),
        });
    }
    let mut query = StreamQuery::from_version(args.from);
    if let Some(limit) = args.limit {
        query = query.limit(limit);
    }
    for event in store.read_stream(&stream, query).await? {
        if out.json {
            out.json_line(&event_json(&event))?;
        } else {
            print_event(&event, out)?;
        }
    }
    Ok(())
}

/// An event for people: a header line, its metadata, its payload pretty-printed.
fn print_event(event: &RecordedEvent, out: &mut Output) -> Result<()> {
    let (value, _, decode_error) = payload(event);
    out.line(format!(
        "{} v{}  {} (schema {})  {}  position {}",
        event.stream,
        event.version,
        event.event_type,
        event.schema_version,
        time(event.occurred_at),
        event.position
    ))?;
    if !event.metadata.is_empty() {
        out.line(format!(
            "  metadata: {}",
            serde_json::to_string(&event.metadata).unwrap_or_default()
        ))?;
    }
    if let Some(why) = decode_error {
        out.line(format!("  (as stored: {why})"))?;
    }
    let pretty = serde_json::to_string_pretty(&value).unwrap_or_default();
    for line in pretty.lines() {
        out.line(format!("  {line}"))?;
    }
    out.line("")?;
    Ok(())
}

async fn tail(store: &AnyStore, args: TailArgs, out: &mut Output) -> Result<()> {
    let mut after = match args.from {
        Some(from) => Position::new(from.saturating_sub(1)),
        None => store.log_head().await?.readable,
    };
    let limit = args.limit.unwrap_or(u64::MAX);
    let mut printed = 0;
    if limit == 0 {
        return Ok(());
    }
    let mut appended = store.watch_appends();
    let mut signalled = true;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        // The wake-up is armed before the read, so an append during the read is not missed.
        appended.borrow_and_update();
        let mut events =
            store.read_all(ReadAll::after(after).event_types(args.event_types.clone()));
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    after = event.position;
                    if out.json {
                        out.json_line(&event_json(&event))?;
                    } else {
                        let (value, _, _) = payload(&event);
                        out.line(format!(
                            "{}  {}  {} v{}  {}  {}",
                            event.position,
                            time(event.occurred_at),
                            event.stream,
                            event.version,
                            event.event_type,
                            value
                        ))?;
                    }
                    printed += 1;
                    if printed >= limit {
                        return Ok(());
                    }
                }
                Err(error) => match error.position() {
                    // A damaged row: say so and go on after it.
                    Some(position) => {
                        note(format_args!("warning: {error}"));
                        after = position;
                    }
                    None => return Err(error.into()),
                },
            }
        }
        drop(events);
        if args.no_follow {
            return Ok(());
        }
        // Woken by an append (in process, or through PostgreSQL's NOTIFY), or polling: the
        // in-process signal does not see another process's appends to an SQLite file.
        let poll = tokio::time::sleep(Duration::from_millis(500));
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            changed = appended.changed(), if signalled => signalled = changed.is_ok(),
            () = poll => {}
        }
    }
}

async fn stats(store: &AnyStore, args: StatsArgs, out: &mut Output) -> Result<()> {
    let stats = store.stats().await?;
    let counts = |counts: &[eventsource::admin::NamedCount]| {
        counts
            .iter()
            .map(|c| json!({"name": c.name, "events": c.events}))
            .collect::<Vec<_>>()
    };
    if out.json {
        out.json_line(&json!({
            "backend": store.backend(),
            "events": stats.events,
            "streams": stats.streams,
            "size_bytes": stats.size_bytes,
            "by_event_type": counts(&stats.by_event_type),
            "by_aggregate_type": counts(&stats.by_aggregate_type),
            "by_day": stats.by_day.iter()
                .map(|d| json!({"day": d.day.to_string(), "events": d.events}))
                .collect::<Vec<_>>(),
        }))?;
        return Ok(());
    }
    out.line(format!(
        "{} in {}; store size {}",
        plural(stats.events, "event"),
        plural(stats.streams, "stream"),
        stats
            .size_bytes
            .map_or_else(|| "-".to_owned(), |size| HumanBytes(size).to_string())
    ))?;
    let rows = |counts: &[eventsource::admin::NamedCount]| {
        counts
            .iter()
            .map(|c| vec![c.name.clone(), c.events.to_string()])
            .collect::<Vec<_>>()
    };
    out.table(&["EVENT TYPE", "EVENTS"], rows(&stats.by_event_type))?;
    out.table(
        &["AGGREGATE TYPE", "EVENTS"],
        rows(&stats.by_aggregate_type),
    )?;
    let skip = stats.by_day.len().saturating_sub(args.days);
    let days = stats.by_day[skip..]
        .iter()
        .map(|d| vec![d.day.to_string(), d.events.to_string()])
        .collect();
    out.table(&["DAY (UTC)", "EVENTS"], days)?;
    Ok(())
}

/// The projections of the store and of this binary, by name, with their event types when the
/// binary has the projection.
async fn status(store: &AnyStore, projections: &[Registered], out: &mut Output) -> Result<()> {
    let mut records = store.projections().await?;
    for registered in projections {
        if !records.iter().any(|r| r.name == registered.name) {
            records.push(eventsource::admin::ProjectionRecord::new(registered.name));
        }
    }
    records.sort_by(|a, b| a.name.cmp(&b.name));
    let head = store.log_head().await?.readable;
    let mut rows = Vec::new();
    for record in records {
        let registered = projections.iter().find(|p| p.name == record.name);
        let mut query = ReadAll::after(record.checkpoint.unwrap_or(Position::START));
        if let Some(registered) = registered {
            query = query.event_types(registered.event_types.iter().copied());
        }
        let lag = store.count(query).await?;
        if out.json {
            out.json_line(&json!({
                "name": record.name,
                "checkpoint": record.checkpoint.map(Position::get),
                "updated_at": record.updated_at,
                "lag": lag,
                "dead_letters": record.dead_letters,
                "in_this_binary": registered.is_some(),
                "head": head.get(),
            }))?;
        } else {
            rows.push(vec![
                record.name,
                or_dash(record.checkpoint),
                or_dash(record.updated_at.map(time)),
                lag.to_string(),
                record.dead_letters.to_string(),
                if registered.is_some() { "yes" } else { "no" }.to_owned(),
            ]);
        }
    }
    if !out.json {
        if rows.is_empty() {
            note("no projection has a checkpoint or dead letters in this store");
            return Ok(());
        }
        out.table(
            &[
                "PROJECTION",
                "CHECKPOINT",
                "UPDATED",
                "LAG",
                "DEAD LETTERS",
                "IN THIS BINARY",
            ],
            rows,
        )?;
        out.line(format!(
            "log head: position {head}. LAG counts the events after the checkpoint: of the \
             projection's types when it is in this binary, of every type otherwise."
        ))?;
    }
    Ok(())
}

async fn dead_letters(
    store: &AnyStore,
    projections: &[Registered],
    name: &str,
    out: &mut Output,
) -> Result<()> {
    let letters = store.dead_letters(name).await?;
    if letters.is_empty()
        && !projections.iter().any(|p| p.name == name)
        && store.checkpoint(name).await?.is_none()
    {
        let mut known: Vec<String> = store
            .projections()
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect();
        known.extend(projections.iter().map(|p| p.name.to_owned()));
        known.sort();
        known.dedup();
        return Err(CliError::UnknownProjection {
            name: name.to_owned(),
            known,
        });
    }
    if out.json {
        for letter in &letters {
            out.json_line(&json!({
                "projection": letter.projection,
                "position": letter.position.get(),
                "event_id": letter.event_id,
                "stream": letter.stream.to_string(),
                "version": letter.version,
                "event_type": letter.event_type,
                "error": letter.error,
                "attempts": letter.attempts,
                "failed_at": letter.failed_at,
            }))?;
        }
        return Ok(());
    }
    if letters.is_empty() {
        note(format_args!("projection `{name}` has no dead letters"));
        return Ok(());
    }
    let rows = letters
        .into_iter()
        .map(|letter| {
            vec![
                letter.position.to_string(),
                letter.stream.to_string(),
                or_dash(letter.version),
                or_dash(letter.event_type),
                letter.attempts.to_string(),
                time(letter.failed_at),
                letter.error,
            ]
        })
        .collect();
    out.table(
        &[
            "POSITION",
            "STREAM",
            "VERSION",
            "EVENT TYPE",
            "ATTEMPTS",
            "FAILED AT",
            "ERROR",
        ],
        rows,
    )?;
    Ok(())
}

/// The projection `name` of this binary, for an operation that runs its code.
fn embedded(
    mut projections: Vec<Registered>,
    name: &str,
    operation: &'static str,
) -> Result<Registered> {
    match projections.iter().position(|p| p.name == name) {
        Some(index) => Ok(projections.swap_remove(index)),
        None if projections.is_empty() => Err(CliError::NotEmbedded {
            name: name.to_owned(),
            operation,
        }),
        None => Err(CliError::UnknownProjection {
            name: name.to_owned(),
            known: projections.iter().map(|p| p.name.to_owned()).collect(),
        }),
    }
}

/// Starts the projection, and waits until it runs here (it may be on standby: another process
/// holds its lease).
async fn start(
    store: &AnyStore,
    registered: Registered,
    options: RunnerOptions,
) -> Result<RunningSubscriptions> {
    let name = registered.name;
    let running = (registered.start)(store, options)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = running
            .status()
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.state);
        match state {
            Some(RunnerState::Starting) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(RunnerState::Standby) => {
                running.shutdown().await;
                return Err(CliError::ProjectionBusy {
                    name: name.to_owned(),
                });
            }
            _ => return Ok(running),
        }
    }
}

async fn rebuild(
    store: &AnyStore,
    registered: Registered,
    options: RunnerOptions,
    out: &mut Output,
) -> Result<()> {
    let name = registered.name;
    let head = store.log_head().await?.readable.get();
    let running = start(store, registered, options).await?;
    // Progress by position: the checkpoint moves from the first event to the head.
    let bar = progress(
        Some(head.max(1)),
        "rebuilding {msg} [{wide_bar}] {percent}% ({elapsed})",
    );
    bar.set_message(name);
    let watcher = {
        let (store, bar) = (store.clone(), bar.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(Some(checkpoint)) = store.checkpoint(name).await {
                    bar.set_position(checkpoint.get().min(head));
                }
            }
        })
    };
    let rebuilt = running.rebuild(name).await;
    watcher.abort();
    bar.finish_and_clear();
    running.shutdown().await;
    rebuilt?;
    let checkpoint = store.checkpoint(name).await?;
    let dead_letters = store.dead_letters(name).await?.len();
    if out.json {
        out.json_line(&json!({
            "projection": name,
            "rebuilt": true,
            "checkpoint": checkpoint.map(Position::get),
            "dead_letters": dead_letters,
        }))?;
    } else {
        out.line(format!(
            "rebuilt `{name}`: checkpoint {}, {}",
            or_dash(checkpoint),
            plural(dead_letters as u64, "dead letter")
        ))?;
    }
    Ok(())
}

async fn replay(
    store: &AnyStore,
    registered: Registered,
    options: RunnerOptions,
    out: &mut Output,
) -> Result<()> {
    let name = registered.name;
    let before = store.dead_letters(name).await?.len();
    let running = start(store, registered, options).await?;
    let replayed = running.replay_dead_letters(name).await;
    running.shutdown().await;
    let left = replayed?;
    let applied = before.saturating_sub(left);
    if out.json {
        out.json_line(&json!({
            "projection": name,
            "dead_letters_before": before,
            "applied": applied,
            "left": left,
        }))?;
    } else {
        out.line(format!(
            "replayed the dead letters of `{name}`: {applied} applied, {left} left"
        ))?;
    }
    Ok(())
}
