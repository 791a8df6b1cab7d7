//! The benchmark: each workload below through the framework's public API and
//! through hand-written raw sqlx on an equivalent table, in the same process and the same run,
//! on fresh tables for each repetition. Prints events/s, the framework / raw ratio and the
//! process's peak memory per workload; `--json FILE` writes the same for tools.
//!
//! ```sh
//! cargo run --release -p eventsource-bench                     # everything, full sizes
//! cargo run --release -p eventsource-bench -- --backend sqlite --workload w3 --scale small
//! cargo run --release -p eventsource-bench -- --scale tiny --reps 1   # the CI smoke run
//! ```
//!
//! Workloads (full scale):
//! - W1 command path: 10,000 aggregates x 10 events, each event one load -> command -> save.
//! - W2 batch append: one stream, 10,000 events in batches of 100.
//! - W3 load: all 10,000 aggregates of 10 events; and one aggregate of 10,000 events.
//! - W1 and W3 "+1 personal field (vs plain)": the same command path and load with one
//!   `#[personal]` field per event, through a `ProtectedStore` (keys in memory) over the same
//!   store; the ratio is to the plain framework row of the same repetition: the encryption cost.
//! - W4 projection catch-up: fold all 100,000 events in global order into balances. Two extra
//!   rows run the raw fold selecting 7 and 10 columns (`read_all`'s) while using the same four:
//!   what handing over more columns costs by itself.
//! - W5 (PostgreSQL) 8 concurrent writers appending one event at a time to their own streams:
//!   the cost of gap-free global positions. "raw" uses a plain sequence; the extra row "raw +
//!   xid positions" is the same raw SQL with the framework's transaction-id positions.
//! - W5b group commit: 8 and then 64 tasks saving one event at a time to their own streams
//!   (6,400 saves each) through a store with group commit on (`with_group_commit`), against raw
//!   sqlx with one transaction per save: events/s, and the p50 and p99 latency of one save.
//! - Against the minimal table: W1-W3 again on the raw side, on the cheapest correct event table
//!   a person would write by hand (`min_events`: stream, version, type, payload; unique on stream
//!   and version). And W1 through a repository with the aggregate cache (`with_cache`).
//! - W6 (buses) 20,000 events published in batches of 100 and consumed, each acknowledged, by
//!   one consumer, through each bus (memory, Redis, RabbitMQ, NATS, Kafka) and through a raw client of
//!   the same broker doing the same (`bench/src/bus.rs`): events/s, and end-to-end latency p50/p99.
//!
//! The raw side is the least code that stores the same rows in the same transactions: a table
//! with the same columns and constraints, positions from an identity column, payloads
//! deserialized straight into the same event types.

mod bus;

use clap::{Parser, ValueEnum};
use eventsource::NewEvent;
use eventsource::prelude::*;
use eventsource::{EventLocation, ExpectedVersion, ReadAll, Repository, SnapshotStore, StreamId};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

// --- The domain: the bank account of the quickstart. ---

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "bench.AccountOpened")]
struct AccountOpened {
    owner: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "bench.Deposited")]
struct Deposited {
    amount_cents: i64,
}

#[derive(Default, Debug, Clone, Serialize, Deserialize)]
struct Account {
    owner: String,
    balance: i64,
}

#[aggregate(name = "Account", id = String)]
impl Account {
    #[handles]
    fn opened(&mut self, e: &AccountOpened) {
        self.owner.clone_from(&e.owner);
    }

    #[handles]
    fn deposited(&mut self, e: &Deposited) {
        self.balance += e.amount_cents;
    }
}

/// The raw side's fold: what a hand-written loader does with (event_type, payload) rows.
fn raw_apply(state: &mut Account, event_type: &str, payload: &str) {
    if event_type == Deposited::EVENT_TYPE {
        let e: Deposited = serde_json::from_str(payload).expect("raw payload");
        state.balance += e.amount_cents;
    } else if event_type == AccountOpened::EVENT_TYPE {
        let e: AccountOpened = serde_json::from_str(payload).expect("raw payload");
        state.owner = e.owner;
    }
}

// --- The same account with one personal field per event, for the encryption rows. ---

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "bench.PiiAccountOpened")]
struct PiiAccountOpened {
    account_id: String,
    #[personal(subject = account_id)]
    owner: eventsource::Personal<String>,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "bench.PiiDeposited")]
struct PiiDeposited {
    account_id: String,
    #[personal(subject = account_id)]
    reference: eventsource::Personal<String>,
    amount_cents: i64,
}

#[derive(Default, Debug, Serialize, Deserialize)]
struct PiiAccount {
    owner: eventsource::Personal<String>,
    balance: i64,
}

#[aggregate(name = "PiiAccount", id = String)]
impl PiiAccount {
    #[handles]
    fn opened(&mut self, e: &PiiAccountOpened) {
        self.owner.clone_from(&e.owner);
    }

    #[handles]
    fn deposited(&mut self, e: &PiiDeposited) {
        self.balance += e.amount_cents;
    }
}

fn pii_deposit(id: &str) -> PiiDeposited {
    PiiDeposited {
        account_id: id.to_owned(),
        reference: eventsource::Personal::Known(format!("transfer from {id}")),
        amount_cents: 100,
    }
}

async fn fw_pii_w1<S: EventStore>(store: &S, sizes: Sizes) -> usize {
    let repo = PiiAccount::repository(store);
    for i in 0..sizes.aggregates {
        let id = account_id(i);
        let mut account = repo.create(id.clone());
        account.record(PiiAccountOpened {
            owner: eventsource::Personal::Known(format!("owner {i}")),
            account_id: id,
        });
        repo.save(&mut account).await.expect("save");
    }
    for _ in 1..sizes.events_per_aggregate {
        for i in 0..sizes.aggregates {
            let id = account_id(i);
            let mut account = repo.load(id.clone()).await.expect("load");
            account.record(pii_deposit(&id));
            repo.save(&mut account).await.expect("save");
        }
    }
    sizes.aggregates * sizes.events_per_aggregate
}

async fn fw_pii_seed<S: EventStore>(store: &S, sizes: Sizes) {
    for i in 0..sizes.aggregates {
        let id = account_id(i);
        let mut batch = vec![
            NewEvent::new(&PiiAccountOpened {
                owner: eventsource::Personal::Known(format!("owner {i}")),
                account_id: id.clone(),
            })
            .unwrap(),
        ];
        for _ in 1..sizes.events_per_aggregate {
            batch.push(NewEvent::new(&pii_deposit(&id)).unwrap());
        }
        store
            .append(
                &StreamId::new("PiiAccount", id).expect("valid"),
                ExpectedVersion::NoStream,
                batch,
            )
            .await
            .expect("seed");
    }
}

async fn fw_pii_w3<S: EventStore>(store: &S, sizes: Sizes) -> i64 {
    let repo = PiiAccount::repository(store);
    let mut total = 0;
    for i in 0..sizes.aggregates {
        let account = repo.load(account_id(i)).await.expect("load");
        assert!(account.state().owner.known().is_some(), "decrypted");
        total += account.state().balance;
    }
    total
}

/// The store the encryption rows use: the fixture's, protected, keys in memory (the key store's
/// own cost is one lookup per subject, cached).
fn protected<S: EventStore + Clone>(
    store: &S,
) -> eventsource::ProtectedStore<S, eventsource::InMemoryKeyStore> {
    eventsource::ProtectedStore::new(store.clone(), eventsource::InMemoryKeyStore::new())
}

fn account_id(i: usize) -> String {
    format!("acct-{i:06}")
}

// --- Command line. ---

#[derive(Parser, Debug)]
#[command(about = "eventsource vs raw sqlx, every backend, one run")]
struct Args {
    /// Which store to measure.
    #[arg(long, value_enum, default_value_t = BackendArg::All)]
    backend: BackendArg,
    /// Which workload: w1, w2, w3, w4, w5, w5b, w6 or all (comma-separated).
    #[arg(long, default_value = "all")]
    workload: String,
    /// full (the sizes below), small (a tenth), tiny (a smoke run).
    #[arg(long, value_enum, default_value_t = Scale::Full)]
    scale: Scale,
    /// Repetitions per figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// PostgreSQL server (default: DATABASE_URL, else the local test server).
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum BackendArg {
    Memory,
    Sqlite,
    Postgres,
    /// The buses (W6): memory, Redis, RabbitMQ, NATS, Kafka.
    Buses,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Scale {
    /// Ten times the full sizes (100,000 aggregates: 1,000,000 events; a 100,000-event
    /// stream), for peak memory as the log grows.
    Large,
    Full,
    Small,
    Tiny,
}

#[derive(Clone, Copy, Debug)]
struct Sizes {
    aggregates: usize,
    events_per_aggregate: usize,
    w2_events: usize,
    w2_batch: usize,
    long_stream: usize,
    w5_writers: usize,
    w5_appends_per_writer: usize,
    w5b_saves: usize,
    w6_events: usize,
}

impl Scale {
    fn sizes(self) -> Sizes {
        let (aggregates, w2_events, long_stream, w5, w5b, w6) = match self {
            Scale::Large => (100_000, 100_000, 100_000, 2_500, 6_400, 20_000),
            Scale::Full => (10_000, 10_000, 10_000, 250, 6_400, 20_000),
            Scale::Small => (1_000, 10_000, 10_000, 100, 1_280, 5_000),
            Scale::Tiny => (20, 500, 500, 5, 128, 300),
        };
        Sizes {
            aggregates,
            events_per_aggregate: 10,
            w2_events,
            w2_batch: 100,
            long_stream,
            w5_writers: 8,
            w5_appends_per_writer: w5,
            w5b_saves: w5b,
            w6_events: w6,
        }
    }
}

// --- Results. ---

#[derive(Serialize, Debug, Clone)]
struct Figure {
    backend: &'static str,
    workload: &'static str,
    unit: &'static str,
    framework: f64,
    raw: Option<f64>,
    ratio: Option<f64>,
    peak_rss_mb: f64,
}

/// The repetitions of one workload.
#[derive(Default)]
struct Sample {
    unit: &'static str,
    framework: Vec<f64>,
    raw: Vec<f64>,
    peak_rss_mb: f64,
}

/// Every workload's repetitions, by workload.
#[derive(Default)]
struct Samples(HashMap<&'static str, Sample>);

impl Samples {
    fn add(
        &mut self,
        workload: &'static str,
        unit: &'static str,
        framework: f64,
        raw: Option<f64>,
        rss: f64,
    ) {
        let entry = self.0.entry(workload).or_insert_with(|| Sample {
            unit,
            ..Sample::default()
        });
        entry.framework.push(framework);
        entry.raw.extend(raw);
        entry.peak_rss_mb = entry.peak_rss_mb.max(rss);
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Resets the process's peak resident set size (Linux), so each workload reports its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident set size since the last reset, in MB (0 where /proc has none).
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

// --- The fixtures: a fresh framework store and a fresh raw table, side by side. ---

#[derive(Clone)]
enum Raw {
    None,
    /// The writer pool (one connection, as the store's) and a pool of readers.
    Sqlite(SqlitePool, SqlitePool),
    Postgres(PgPool),
}

struct Fixture<S> {
    store: S,
    raw: Raw,
    cleanup: Option<Box<dyn FnOnce()>>,
}

impl<S> Drop for Fixture<S> {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup();
        }
    }
}

const SQLITE_RAW_TABLE: &str = "CREATE TABLE raw_events (
    position INTEGER PRIMARY KEY, event_id BLOB NOT NULL UNIQUE, aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL, version INTEGER NOT NULL, event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL, occurred_at TEXT NOT NULL, tenant_id TEXT, actor_id TEXT,
    correlation_id BLOB, causation_id BLOB, metadata TEXT, payload TEXT NOT NULL,
    UNIQUE (aggregate_type, aggregate_id, version))";

const PG_RAW_TABLE: &str = "CREATE TABLE raw_events (
    position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id UUID NOT NULL UNIQUE,
    aggregate_type TEXT NOT NULL, aggregate_id TEXT NOT NULL, version BIGINT NOT NULL,
    event_type TEXT NOT NULL, schema_version INTEGER NOT NULL, occurred_at TIMESTAMPTZ NOT NULL,
    tenant_id TEXT, actor_id TEXT, correlation_id UUID, causation_id UUID, metadata JSONB,
    payload JSONB NOT NULL, UNIQUE (aggregate_type, aggregate_id, version))";

/// The second raw baseline: the cheapest correct event table a person would write by hand
/// (stream, version, type, payload; unique on stream and version; the row id as position).
const SQLITE_MIN_TABLE: &str = "CREATE TABLE min_events (position INTEGER PRIMARY KEY, \
    stream TEXT NOT NULL, version INTEGER NOT NULL, event_type TEXT NOT NULL, \
    payload TEXT NOT NULL, UNIQUE (stream, version))";

const PG_MIN_TABLE: &str = "CREATE TABLE min_events (\
    position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, stream TEXT NOT NULL, \
    version BIGINT NOT NULL, event_type TEXT NOT NULL, payload JSONB NOT NULL, \
    UNIQUE (stream, version))";

/// The same table with the framework's transaction-id positions, for W5.
const PG_RAW_XID_TABLE: &str =
    "CREATE TABLE raw_xid_events (LIKE raw_events INCLUDING CONSTRAINTS INCLUDING INDEXES)";

async fn sqlite_fixture() -> Fixture<SqliteEventStore> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.db");
    let store = SqliteEventStore::open(&path).await.expect("sqlite store");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let raw = SqlitePoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(options.clone())
        .await
        .expect("raw sqlite pool");
    let readers = SqlitePoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .connect_with(options.read_only(true))
        .await
        .expect("raw sqlite readers");
    for table in [SQLITE_RAW_TABLE, SQLITE_MIN_TABLE] {
        sqlx::query(table).execute(&raw).await.expect("raw table");
    }
    Fixture {
        store,
        raw: Raw::Sqlite(raw, readers),
        cleanup: Some(Box::new(move || drop(dir))),
    }
}

async fn postgres_fixture(url: &str) -> Fixture<PostgresEventStore> {
    let options = PgConnectOptions::from_str(url).expect("a PostgreSQL URL");
    let schema = format!("bench_{}", Uuid::now_v7().simple());
    let mut admin = options.connect().await.expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .expect("schema");
    let scoped = options.clone().options([("search_path", schema.as_str())]);
    let store = PostgresEventStore::connect_with(scoped.clone())
        .await
        .expect("postgres store");
    let raw = PgPoolOptions::new()
        .max_connections(10)
        .test_before_acquire(false)
        .connect_with(scoped)
        .await
        .expect("raw postgres pool");
    for table in [PG_RAW_TABLE, PG_MIN_TABLE] {
        sqlx::query(table).execute(&raw).await.expect("raw table");
    }
    sqlx::query(PG_RAW_XID_TABLE)
        .execute(&raw)
        .await
        .expect("raw xid table");
    let drop_schema = format!("DROP SCHEMA {schema} CASCADE");
    Fixture {
        store,
        raw: Raw::Postgres(raw),
        cleanup: Some(Box::new(move || {
            // Runs outside the runtime's async context: a thread with a runtime of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut conn) = options.connect().await {
                        let _ = sqlx::query(&drop_schema).execute(&mut conn).await;
                    }
                });
            })
            .join();
        })),
    }
}

// --- Framework side: only the public API. ---

async fn fw_w1<S: EventStore>(store: &S, sizes: Sizes) -> usize {
    fw_w1_on(Account::repository(store), sizes, account_id).await
}

/// W1 through a repository with an aggregate cache large enough for every aggregate, on
/// aggregates of their own (`cached-N`).
async fn fw_w1_cached<S: EventStore>(store: &S, sizes: Sizes) -> usize {
    let repo = Account::repository(store).with_cache(sizes.aggregates);
    fw_w1_on(repo, sizes, |i| format!("cached-{i}")).await
}

async fn fw_w1_on<S: EventStore>(
    repo: Repository<Account, S>,
    sizes: Sizes,
    account_id: impl Fn(usize) -> String,
) -> usize {
    for i in 0..sizes.aggregates {
        let mut account = repo.create(account_id(i));
        account.record(AccountOpened {
            owner: format!("owner {i}"),
        });
        repo.save(&mut account).await.expect("save");
    }
    for _ in 1..sizes.events_per_aggregate {
        for i in 0..sizes.aggregates {
            let mut account = repo.load(account_id(i)).await.expect("load");
            account.record(Deposited { amount_cents: 100 });
            repo.save(&mut account).await.expect("save");
        }
    }
    sizes.aggregates * sizes.events_per_aggregate
}

async fn fw_seed<S: EventStore>(store: &S, sizes: Sizes) {
    for i in 0..sizes.aggregates {
        let mut batch = vec![
            NewEvent::new(&AccountOpened {
                owner: format!("owner {i}"),
            })
            .unwrap(),
        ];
        for _ in 1..sizes.events_per_aggregate {
            batch.push(NewEvent::new(&Deposited { amount_cents: 100 }).unwrap());
        }
        store
            .append(
                &StreamId::new("Account", account_id(i)).expect("valid"),
                ExpectedVersion::NoStream,
                batch,
            )
            .await
            .expect("seed");
    }
}

async fn fw_append_stream<S: EventStore>(store: &S, id: &str, events: usize, batch: usize) {
    let stream = StreamId::new("Account", id).expect("valid");
    let mut version = 0;
    while (version as usize) < events {
        let n = batch.min(events - version as usize);
        let batch: Vec<NewEvent> = (0..n)
            .map(|_| NewEvent::new(&Deposited { amount_cents: 1 }).unwrap())
            .collect();
        version = store
            .append(&stream, ExpectedVersion::Exact(version), batch)
            .await
            .expect("append")
            .stream_version;
    }
}

async fn fw_w3<S: EventStore>(store: &S, sizes: Sizes) -> i64 {
    let repo = Account::repository(store);
    let mut total = 0;
    for i in 0..sizes.aggregates {
        total += repo
            .load(account_id(i))
            .await
            .expect("load")
            .state()
            .balance;
    }
    total
}

/// The snapshot the long stream is loaded from: taken 50 events before its end, the average tail
/// of `snapshot_every = 100`.
const SNAPSHOT_TAIL: u64 = 50;

async fn fw_w3_snapshot<S: EventStore + SnapshotStore + Clone + 'static>(store: &S) {
    let repo = Account::repository(store.clone()).with_snapshots();
    let version = store
        .stream_version(&StreamId::new("Account", "long").expect("valid"))
        .await
        .expect("version");
    let root = repo
        .load_at("long".to_owned(), version.saturating_sub(SNAPSHOT_TAIL))
        .await
        .expect("load");
    repo.snapshot_root(&root).await.expect("snapshot");
}

async fn fw_w3_long_from_snapshot<S: EventStore + SnapshotStore + Clone + 'static>(
    store: &S,
) -> i64 {
    let repo = Account::repository(store.clone()).with_snapshots();
    let root = repo.load("long".to_owned()).await.expect("load");
    assert!(
        root.snapshot_version().is_some(),
        "loaded from the snapshot"
    );
    root.state().balance
}

async fn fw_w3_long<S: EventStore>(store: &S) -> i64 {
    let repo = Account::repository(store);
    repo.load("long".to_owned())
        .await
        .expect("load")
        .state()
        .balance
}

/// W4's read model as a projection, kept by the subscription manager. Its handlers take the
/// `EventLocation` (they read the stream, nothing else of the context), so the manager reads
/// the location's columns only.
#[derive(Default)]
struct BenchBalances {
    balances: HashMap<std::sync::Arc<str>, i64>,
    applied: usize,
}

#[projection(name = "bench_balances")]
impl BenchBalances {
    #[handles]
    fn opened(&mut self, _: &AccountOpened, at: &EventLocation<'_>) {
        self.applied += 1;
        self.balances
            .entry(std::sync::Arc::<str>::from(at.aggregate_id()))
            .or_default();
    }

    #[handles]
    fn deposited(&mut self, e: &Deposited, at: &EventLocation<'_>) {
        self.applied += 1;
        *self
            .balances
            .entry(std::sync::Arc::<str>::from(at.aggregate_id()))
            .or_default() += e.amount_cents;
    }
}

/// W4 through `Subscriptions`: from the start of the manager until the projection has applied
/// every stored event.
async fn fw_w4_subscriptions<S>(store: &S) -> usize
where
    S: EventStore + eventsource::CheckpointStore + Clone + 'static,
{
    let head = store.log_head().await.expect("log_head");
    store
        .wait_for(head.last, Duration::from_secs(60))
        .await
        .expect("wait_for");
    let mut subscriptions = eventsource::subscription::Subscriptions::new(store.clone());
    let balances = subscriptions.add(BenchBalances::default());
    let running = subscriptions.start();
    running
        .wait_until(head.last, Duration::from_secs(600))
        .await
        .expect("the projection catches up");
    running.shutdown().await;
    balances.read().applied
}

/// How many deposits each account received: a second read model over the same events, with
/// no context at all.
#[derive(Default)]
struct BenchDepositCounts {
    counts: HashMap<std::sync::Arc<str>, u32>,
    applied: usize,
}

#[projection(name = "bench_deposit_counts")]
impl BenchDepositCounts {
    #[handles]
    fn opened(&mut self, _: &AccountOpened) {
        self.applied += 1;
    }

    #[handles]
    fn deposited(&mut self, _: &Deposited, at: &EventLocation<'_>) {
        self.applied += 1;
        *self
            .counts
            .entry(std::sync::Arc::<str>::from(at.aggregate_id()))
            .or_default() += 1;
    }
}

/// When each account last moved: a third read model, reading the whole context (the time).
#[derive(Default)]
struct BenchLastActivity {
    last: HashMap<std::sync::Arc<str>, chrono::DateTime<chrono::Utc>>,
    applied: usize,
}

#[projection(name = "bench_last_activity")]
impl BenchLastActivity {
    #[handles]
    fn opened(&mut self, _: &AccountOpened, ctx: &EventContext<'_>) {
        self.touch(ctx);
    }

    #[handles]
    fn deposited(&mut self, _: &Deposited, ctx: &EventContext<'_>) {
        self.touch(ctx);
    }
}

impl BenchLastActivity {
    fn touch(&mut self, ctx: &EventContext<'_>) {
        self.applied += 1;
        self.last.insert(
            std::sync::Arc::<str>::from(ctx.aggregate_id()),
            ctx.occurred_at,
        );
    }
}

/// W4 with three read models, until all have applied every stored event: under one manager
/// (`shared`: its projections share their reads), or each under a manager of its own, the three
/// managers running side by side. Returns the events applied, all three together.
async fn fw_w4_three<S>(store: &S, shared: bool) -> usize
where
    S: EventStore + eventsource::CheckpointStore + Clone + 'static,
{
    use eventsource::subscription::Subscriptions;
    let head = store.log_head().await.expect("log_head");
    store
        .wait_for(head.last, Duration::from_secs(60))
        .await
        .expect("wait_for");
    let mut managers = vec![Subscriptions::new(store.clone())];
    if !shared {
        managers.push(Subscriptions::new(store.clone()));
        managers.push(Subscriptions::new(store.clone()));
    }
    let balances = managers[0].add(BenchBalances::default());
    let counts = managers[if shared { 0 } else { 1 }].add(BenchDepositCounts::default());
    let last = managers[if shared { 0 } else { 2 }].add(BenchLastActivity::default());
    let running: Vec<_> = managers.into_iter().map(Subscriptions::start).collect();
    for manager in &running {
        manager
            .wait_until(head.last, Duration::from_secs(600))
            .await
            .expect("the projections catch up");
    }
    for manager in &running {
        manager.shutdown().await;
    }
    balances.read().applied + counts.read().applied + last.read().applied
}

async fn fw_w4<S: EventStore>(store: &S) -> usize {
    // Everything written before the catch-up is readable (a transaction elsewhere may still be
    // finishing on PostgreSQL).
    let head = store.log_head().await.expect("log_head");
    store
        .wait_for(head.last, std::time::Duration::from_secs(60))
        .await
        .expect("wait_for");
    let mut balances: HashMap<std::sync::Arc<str>, i64> = HashMap::new();
    let mut events = store.read_all(ReadAll::from_start());
    let mut count = 0;
    while let Some(event) = events.try_next().await.expect("read_all") {
        count += 1;
        if event.is::<Deposited>() {
            let e: Deposited = event.decode().expect("decode");
            *balances
                .entry(std::sync::Arc::<str>::from(event.stream.aggregate_id()))
                .or_default() += e.amount_cents;
        } else if event.is::<AccountOpened>() {
            event.decode::<AccountOpened>().expect("decode");
            balances
                .entry(std::sync::Arc::<str>::from(event.stream.aggregate_id()))
                .or_default();
        }
    }
    count
}

async fn fw_w5<S: EventStore + Clone + 'static>(store: &S, sizes: Sizes) -> usize {
    let tasks: Vec<_> = (0..sizes.w5_writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamId::new("Account", format!("writer-{w}")).expect("valid");
                for v in 0..sizes.w5_appends_per_writer as u64 {
                    let event = NewEvent::new(&Deposited { amount_cents: 1 }).unwrap();
                    store
                        .append(&stream, ExpectedVersion::Exact(v), vec![event])
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    sizes.w5_writers * sizes.w5_appends_per_writer
}

/// The store with group commit on (the in-memory store has no commits to group).
trait GroupCommitted: Sized {
    fn grouped(&self) -> Self;
}

impl GroupCommitted for InMemoryEventStore {
    fn grouped(&self) -> Self {
        self.clone()
    }
}

impl GroupCommitted for SqliteEventStore {
    fn grouped(&self) -> Self {
        self.clone().with_group_commit()
    }
}

impl GroupCommitted for PostgresEventStore {
    fn grouped(&self) -> Self {
        self.clone().with_group_commit()
    }
}

/// Events/s and each save's latency (ms) of `writers` tasks saving one event at a time to their
/// own streams, `saves` in all; `save` does one save.
async fn concurrent_saves<F, Fut>(writers: usize, saves: usize, save: F) -> (f64, Vec<f64>)
where
    F: Fn(String, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per_writer = saves / writers;
    let t = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let save = save.clone();
            tokio::spawn(async move {
                let id = format!("w5b-{writers}-{w}");
                let mut latencies = Vec::with_capacity(per_writer);
                for v in 0..per_writer as u64 {
                    let started = Instant::now();
                    save(id.clone(), v).await;
                    latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(saves);
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    (per_second(per_writer * writers, t.elapsed()), latencies)
}

/// The `q` quantile (0..1) of `values`.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

// --- Raw side: hand-written sqlx, one module per dialect. ---

mod raw_sqlite {
    use super::*;

    pub(super) async fn insert(
        pool: &SqlitePool,
        id: &str,
        first_version: i64,
        events: &[(&str, String)],
    ) {
        let mut sql = String::from(
            "INSERT INTO raw_events (event_id, aggregate_type, aggregate_id, version, event_type, \
             schema_version, occurred_at, payload) VALUES ",
        );
        for i in 0..events.len() {
            sql.push_str(if i == 0 {
                "(?,?,?,?,?,?,?,?)"
            } else {
                ",(?,?,?,?,?,?,?,?)"
            });
        }
        let mut query = sqlx::query(&sql);
        for (i, (event_type, payload)) in events.iter().enumerate() {
            query = query
                .bind(Uuid::now_v7())
                .bind("Account")
                .bind(id)
                .bind(first_version + i as i64)
                .bind(*event_type)
                .bind(1_i64)
                .bind(chrono::Utc::now())
                .bind(payload);
        }
        query.execute(pool).await.expect("raw insert");
    }

    pub(super) async fn insert_min(
        pool: &SqlitePool,
        id: &str,
        first_version: i64,
        events: &[(&str, String)],
    ) {
        let mut sql =
            String::from("INSERT INTO min_events (stream, version, event_type, payload) VALUES ");
        for i in 0..events.len() {
            sql.push_str(if i == 0 { "(?,?,?,?)" } else { ",(?,?,?,?)" });
        }
        let mut query = sqlx::query(&sql);
        for (i, (event_type, payload)) in events.iter().enumerate() {
            query = query
                .bind(id)
                .bind(first_version + i as i64)
                .bind(*event_type)
                .bind(payload);
        }
        query.execute(pool).await.expect("minimal insert");
    }

    pub(super) async fn load(pool: &SqlitePool, table: Table, id: &str) -> (Account, i64) {
        let sql = match table {
            Table::Full => {
                "SELECT event_type, payload, version FROM raw_events \
                 WHERE aggregate_type = 'Account' AND aggregate_id = ? ORDER BY version"
            }
            Table::Minimal => {
                "SELECT event_type, payload, version FROM min_events WHERE stream = ? \
                 ORDER BY version"
            }
        };
        let rows = sqlx::query(sql)
            .bind(id)
            .fetch_all(pool)
            .await
            .expect("raw load");
        let mut state = Account::default();
        let mut version = 0;
        for row in &rows {
            raw_apply(&mut state, row.get(0), row.get(1));
            version = row.get(2);
        }
        (state, version)
    }

    /// `read_all`'s packed metadata column, as the SQLite store selects it.
    pub(super) const METADATA: &str = "CASE WHEN tenant_id IS NULL AND actor_id IS NULL \
         AND correlation_id IS NULL AND causation_id IS NULL AND metadata IS NULL THEN NULL \
         ELSE json_array(tenant_id, actor_id, lower(hex(correlation_id)), \
         lower(hex(causation_id)), json(metadata)) END";

    pub(super) async fn fold_all(pool: &SqlitePool, columns: W4Columns) -> usize {
        let (mut after, mut count) = (0_i64, 0);
        let mut balances: HashMap<String, Account> = HashMap::new();
        let sql = format!(
            "SELECT position, aggregate_id, event_type, payload{} FROM raw_events \
             WHERE position > ? ORDER BY position LIMIT 1000",
            columns.extra(METADATA)
        );
        loop {
            let rows = sqlx::query(&sql)
                .bind(after)
                .fetch_all(pool)
                .await
                .expect("raw read");
            let Some(last) = rows.last() else {
                return count;
            };
            after = last.get(0);
            for row in &rows {
                raw_apply(
                    balances.entry(row.get(1)).or_default(),
                    row.get(2),
                    row.get(3),
                );
                count += 1;
            }
        }
    }
}

mod raw_pg {
    use super::*;

    pub(super) async fn insert(
        pool: &PgPool,
        table: &str,
        id: &str,
        first_version: i64,
        events: &[(&str, String)],
    ) {
        // Positions: the identity column, or (raw_xid_events) the framework's xid-based ones.
        let position = if table == "raw_xid_events" {
            "pg_current_xact_id()::TEXT::BIGINT * 65536 + e.ord - 1, "
        } else {
            ""
        };
        let columns = if position.is_empty() {
            ""
        } else {
            "position, "
        };
        let sql = format!(
            "INSERT INTO {table} ({columns}event_id, aggregate_type, aggregate_id, version, event_type, \
             schema_version, occurred_at, payload) SELECT {position}e.id, 'Account', $1, $2 + e.ord - 1, \
             e.t, 1, now(), e.p::JSONB FROM UNNEST($3::UUID[], $4::TEXT[], $5::TEXT[]) \
             WITH ORDINALITY AS e(id, t, p, ord)"
        );
        let ids: Vec<Uuid> = events.iter().map(|_| Uuid::now_v7()).collect();
        let types: Vec<&str> = events.iter().map(|(t, _)| *t).collect();
        let payloads: Vec<&str> = events.iter().map(|(_, p)| p.as_str()).collect();
        sqlx::query(&sql)
            .bind(id)
            .bind(first_version)
            .bind(&ids)
            .bind(&types)
            .bind(&payloads)
            .execute(pool)
            .await
            .expect("raw insert");
    }

    pub(super) async fn insert_min(
        pool: &PgPool,
        id: &str,
        first_version: i64,
        events: &[(&str, String)],
    ) {
        let types: Vec<&str> = events.iter().map(|(t, _)| *t).collect();
        let payloads: Vec<&str> = events.iter().map(|(_, p)| p.as_str()).collect();
        sqlx::query(
            "INSERT INTO min_events (stream, version, event_type, payload) \
             SELECT $1, $2 + e.ord - 1, e.t, e.p::JSONB \
             FROM UNNEST($3::TEXT[], $4::TEXT[]) WITH ORDINALITY AS e(t, p, ord)",
        )
        .bind(id)
        .bind(first_version)
        .bind(&types)
        .bind(&payloads)
        .execute(pool)
        .await
        .expect("minimal insert");
    }

    pub(super) async fn load(pool: &PgPool, table: Table, id: &str) -> (Account, i64) {
        let sql = match table {
            Table::Full => {
                "SELECT event_type, payload::TEXT, version FROM raw_events \
                 WHERE aggregate_type = 'Account' AND aggregate_id = $1 ORDER BY version"
            }
            Table::Minimal => {
                "SELECT event_type, payload::TEXT, version FROM min_events WHERE stream = $1 \
                 ORDER BY version"
            }
        };
        let rows = sqlx::query(sql)
            .bind(id)
            .fetch_all(pool)
            .await
            .expect("raw load");
        let mut state = Account::default();
        let mut version = 0;
        for row in &rows {
            raw_apply(&mut state, row.get(0), row.get(1));
            version = row.get(2);
        }
        (state, version)
    }

    /// `read_all`'s packed metadata column, as the PostgreSQL store selects it.
    pub(super) const METADATA: &str = "CASE WHEN tenant_id IS NULL AND actor_id IS NULL \
         AND correlation_id IS NULL AND causation_id IS NULL AND metadata IS NULL THEN NULL \
         ELSE json_build_array(tenant_id, actor_id, correlation_id, causation_id, metadata)::TEXT END";

    pub(super) async fn fold_all(pool: &PgPool, columns: W4Columns) -> usize {
        let (mut after, mut count) = (0_i64, 0);
        let mut balances: HashMap<String, Account> = HashMap::new();
        let sql = format!(
            "SELECT position, aggregate_id, event_type, payload::TEXT{} FROM raw_events \
             WHERE position > $1 ORDER BY position LIMIT 1000",
            columns.extra(METADATA)
        );
        loop {
            let rows = sqlx::query(&sql)
                .bind(after)
                .fetch_all(pool)
                .await
                .expect("raw read");
            let Some(last) = rows.last() else {
                return count;
            };
            after = last.get(0);
            for row in &rows {
                raw_apply(
                    balances.entry(row.get(1)).or_default(),
                    row.get(2),
                    row.get(3),
                );
                count += 1;
            }
        }
    }
}

/// The columns the raw W4 fold selects. It always uses the first four; the wider sets are
/// selected and left unread, to show what handing over more columns costs by itself (sqlx
/// copies every column of every row): `Lean`, the least a projection runner must hand over
/// (position, stream, version, type, schema version, payload), and `ReadAll`, the ten that
/// `read_all` selects.
#[derive(Clone, Copy)]
enum W4Columns {
    Used,
    Lean,
    ReadAll,
}

impl W4Columns {
    /// The columns after the four used ones; `metadata` is the backend's packed metadata.
    fn extra(self, metadata: &str) -> String {
        match self {
            W4Columns::Used => String::new(),
            W4Columns::Lean => ", aggregate_type, version, schema_version".to_owned(),
            W4Columns::ReadAll => format!(
                ", aggregate_type, version, schema_version, event_id, occurred_at, {metadata}"
            ),
        }
    }
}

fn opened(i: usize) -> (&'static str, String) {
    (
        AccountOpened::EVENT_TYPE,
        serde_json::to_string(&AccountOpened {
            owner: format!("owner {i}"),
        })
        .unwrap(),
    )
}

fn deposited(amount_cents: i64) -> (&'static str, String) {
    (
        Deposited::EVENT_TYPE,
        serde_json::to_string(&Deposited { amount_cents }).unwrap(),
    )
}

/// Which raw table: the framework's columns and constraints, or the minimal hand-written one.
#[derive(Clone, Copy)]
enum Table {
    Full,
    Minimal,
}

impl Raw {
    async fn insert(&self, table: Table, id: &str, first_version: i64, events: &[(&str, String)]) {
        match (self, table) {
            (Raw::None, _) => {}
            (Raw::Sqlite(pool, _), Table::Full) => {
                raw_sqlite::insert(pool, id, first_version, events).await
            }
            (Raw::Sqlite(pool, _), Table::Minimal) => {
                raw_sqlite::insert_min(pool, id, first_version, events).await
            }
            (Raw::Postgres(pool), Table::Full) => {
                raw_pg::insert(pool, "raw_events", id, first_version, events).await
            }
            (Raw::Postgres(pool), Table::Minimal) => {
                raw_pg::insert_min(pool, id, first_version, events).await
            }
        }
    }

    async fn load(&self, table: Table, id: &str) -> (Account, i64) {
        match self {
            Raw::None => unreachable!("no raw side"),
            Raw::Sqlite(_, readers) => raw_sqlite::load(readers, table, id).await,
            Raw::Postgres(pool) => raw_pg::load(pool, table, id).await,
        }
    }

    async fn w1(&self, table: Table, sizes: Sizes) -> usize {
        for i in 0..sizes.aggregates {
            self.insert(table, &account_id(i), 1, &[opened(i)]).await;
        }
        for _ in 1..sizes.events_per_aggregate {
            for i in 0..sizes.aggregates {
                let id = account_id(i);
                let (_state, version) = self.load(table, &id).await;
                self.insert(table, &id, version + 1, &[deposited(100)])
                    .await;
            }
        }
        sizes.aggregates * sizes.events_per_aggregate
    }

    async fn seed(&self, table: Table, sizes: Sizes) {
        for i in 0..sizes.aggregates {
            let mut batch = vec![opened(i)];
            batch.extend((1..sizes.events_per_aggregate).map(|_| deposited(100)));
            self.insert(table, &account_id(i), 1, &batch).await;
        }
    }

    async fn append_stream(&self, table: Table, id: &str, events: usize, batch: usize) {
        let mut version = 0;
        while version < events {
            let n = batch.min(events - version);
            let rows: Vec<_> = (0..n).map(|_| deposited(1)).collect();
            self.insert(table, id, version as i64 + 1, &rows).await;
            version += n;
        }
    }

    async fn w3(&self, table: Table, sizes: Sizes) -> i64 {
        let mut total = 0;
        for i in 0..sizes.aggregates {
            total += self.load(table, &account_id(i)).await.0.balance;
        }
        total
    }

    async fn w4(&self, columns: W4Columns) -> usize {
        match self {
            Raw::None => unreachable!("no raw side"),
            Raw::Sqlite(pool, _) => raw_sqlite::fold_all(pool, columns).await,
            Raw::Postgres(pool) => raw_pg::fold_all(pool, columns).await,
        }
    }

    async fn w5(&self, table: &'static str, sizes: Sizes) -> usize {
        let Raw::Postgres(pool) = self else {
            unreachable!("W5 is PostgreSQL only")
        };
        let tasks: Vec<_> = (0..sizes.w5_writers)
            .map(|w| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let id = format!("writer-{w}");
                    for v in 0..sizes.w5_appends_per_writer as i64 {
                        raw_pg::insert(&pool, table, &id, v + 1, &[deposited(1)]).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        sizes.w5_writers * sizes.w5_appends_per_writer
    }
}

// --- Running it all. ---

struct Run<'a> {
    sizes: Sizes,
    selected: &'a dyn Fn(&str) -> bool,
}

impl Run<'_> {
    /// One repetition of every selected workload on a fresh fixture.
    async fn repetition<
        S: EventStore
            + SnapshotStore
            + eventsource::CheckpointStore
            + GroupCommitted
            + Clone
            + 'static,
    >(
        &self,
        fx: &Fixture<S>,
        samples: &mut Samples,
    ) {
        let sizes = self.sizes;
        let has_raw = !matches!(fx.raw, Raw::None);
        let events = sizes.aggregates * sizes.events_per_aggregate;
        // The plain W1 and W3 figures, for the encryption rows at the end.
        let mut w1_plain = None;
        let mut w1_raw = None;
        let mut w3_plain = None;

        reset_peak_rss();
        if (self.selected)("w1") {
            let t = Instant::now();
            let n = fw_w1(&fx.store, sizes).await;
            let framework = per_second(n, t.elapsed());
            let raw = |table| async move {
                if has_raw {
                    let t = Instant::now();
                    let n = fx.raw.w1(table, sizes).await;
                    Some(per_second(n, t.elapsed()))
                } else {
                    None
                }
            };
            let (full, minimal) = (raw(Table::Full).await, raw(Table::Minimal).await);
            let rss = peak_rss_mb();
            samples.add("W1 command path", "events/s", framework, full, rss);
            samples.add(W1_MIN, "events/s", framework, minimal, rss);
            w1_raw = full;
            w1_plain = Some(framework);
        } else if (self.selected)("w3") || (self.selected)("w4") {
            fw_seed(&fx.store, sizes).await;
            if has_raw {
                fx.raw.seed(Table::Full, sizes).await;
                fx.raw.seed(Table::Minimal, sizes).await;
            }
        }

        if (self.selected)("w3") {
            reset_peak_rss();
            let t = Instant::now();
            let total = fw_w3(&fx.store, sizes).await;
            let framework = per_second(sizes.aggregates, t.elapsed());
            let raw = |table| async move {
                if has_raw {
                    let t = Instant::now();
                    assert_eq!(
                        fx.raw.w3(table, sizes).await,
                        total,
                        "both sides fold the same balances"
                    );
                    Some(per_second(sizes.aggregates, t.elapsed()))
                } else {
                    None
                }
            };
            let (full, minimal) = (raw(Table::Full).await, raw(Table::Minimal).await);
            let rss = peak_rss_mb();
            samples.add(
                "W3 load 10-event aggregates",
                "aggregates/s",
                framework,
                full,
                rss,
            );
            samples.add(W3_MIN, "aggregates/s", framework, minimal, rss);
            w3_plain = Some((framework, total));
        }

        if (self.selected)("w4") {
            // Each variant three times, interleaved, so that a slow spell of this shared machine
            // falls on all of them alike.
            for _ in 0..W4_ROUNDS {
                reset_peak_rss();
                let raw = if has_raw {
                    let t = Instant::now();
                    assert_eq!(fx.raw.w4(W4Columns::Used).await, events);
                    Some(per_second(events, t.elapsed()))
                } else {
                    None
                };
                let t = Instant::now();
                let n = fw_w4(&fx.store).await;
                assert_eq!(n, events);
                let framework = per_second(n, t.elapsed());
                let rss = peak_rss_mb();
                samples.add("W4 projection catch-up", "events/s", framework, raw, rss);
                reset_peak_rss();
                let t = Instant::now();
                let n = fw_w4_subscriptions(&fx.store).await;
                assert_eq!(n, events);
                let managed = per_second(n, t.elapsed());
                samples.add(
                    "W4 through the subscription manager",
                    "events/s",
                    managed,
                    raw,
                    peak_rss_mb(),
                );
                if let Some(raw) = raw {
                    for (workload, columns) in [
                        ("W4 raw, 7 columns (vs raw)", W4Columns::Lean),
                        ("W4 raw, read_all's 10 columns (vs raw)", W4Columns::ReadAll),
                    ] {
                        let t = Instant::now();
                        assert_eq!(fx.raw.w4(columns).await, events);
                        let wide = per_second(events, t.elapsed());
                        samples.add(workload, "events/s", wide, Some(raw), rss);
                    }
                }
                // Three projections: one manager sharing its reads, against three managers
                // reading on their own, side by side.
                let t = Instant::now();
                let n = fw_w4_three(&fx.store, true).await;
                assert_eq!(n, 3 * events);
                let shared = per_second(n, t.elapsed());
                let t = Instant::now();
                let n = fw_w4_three(&fx.store, false).await;
                assert_eq!(n, 3 * events);
                let apart = per_second(n, t.elapsed());
                samples.add(W4_SHARED, "events/s", shared, Some(apart), peak_rss_mb());
            }
        }

        if (self.selected)("w3") {
            fw_append_stream(&fx.store, "long", sizes.long_stream, 1000).await;
            if has_raw {
                for table in [Table::Full, Table::Minimal] {
                    fx.raw
                        .append_stream(table, "long", sizes.long_stream, 1000)
                        .await;
                }
            }
            reset_peak_rss();
            let t = Instant::now();
            let balance = fw_w3_long(&fx.store).await;
            let framework = t.elapsed().as_secs_f64() * 1000.0;
            let raw = |table| async move {
                if has_raw {
                    let t = Instant::now();
                    assert_eq!(fx.raw.load(table, "long").await.0.balance, balance);
                    Some(t.elapsed().as_secs_f64() * 1000.0)
                } else {
                    None
                }
            };
            let (full, minimal) = (raw(Table::Full).await, raw(Table::Minimal).await);
            let rss = peak_rss_mb();
            samples.add(
                "W3 one aggregate, long stream, no snapshot",
                "ms (lower is better)",
                framework,
                full,
                rss,
            );
            samples.add(W3_LONG_MIN, "ms (lower is better)", framework, minimal, rss);

            fw_w3_snapshot(&fx.store).await;
            reset_peak_rss();
            let t = Instant::now();
            assert_eq!(fw_w3_long_from_snapshot(&fx.store).await, balance);
            let from_snapshot = t.elapsed().as_secs_f64() * 1000.0;
            samples.add(
                "W3 same, from a snapshot (vs no snapshot)",
                "ms (lower is better)",
                from_snapshot,
                Some(framework),
                peak_rss_mb(),
            );
        }

        if (self.selected)("w2") {
            reset_peak_rss();
            let t = Instant::now();
            fw_append_stream(&fx.store, "w2", sizes.w2_events, sizes.w2_batch).await;
            let framework = per_second(sizes.w2_events, t.elapsed());
            let raw = |table| async move {
                if has_raw {
                    let t = Instant::now();
                    fx.raw
                        .append_stream(table, "w2", sizes.w2_events, sizes.w2_batch)
                        .await;
                    Some(per_second(sizes.w2_events, t.elapsed()))
                } else {
                    None
                }
            };
            let (full, minimal) = (raw(Table::Full).await, raw(Table::Minimal).await);
            let rss = peak_rss_mb();
            samples.add("W2 batch append", "events/s", framework, full, rss);
            samples.add(W2_MIN, "events/s", framework, minimal, rss);
        }

        if (self.selected)("w5") && matches!(fx.raw, Raw::Postgres(_)) {
            reset_peak_rss();
            let t = Instant::now();
            let n = fw_w5(&fx.store, sizes).await;
            let framework = per_second(n, t.elapsed());
            let t = Instant::now();
            let n = fx.raw.w5("raw_events", sizes).await;
            let raw_seq = per_second(n, t.elapsed());
            let t = Instant::now();
            let n = fx.raw.w5("raw_xid_events", sizes).await;
            let raw_xid = per_second(n, t.elapsed());
            let rss = peak_rss_mb();
            samples.add(
                "W5 8 concurrent writers",
                "events/s",
                framework,
                Some(raw_seq),
                rss,
            );
            samples.add(
                "W5 raw + xid positions (vs raw)",
                "events/s",
                raw_xid,
                Some(raw_seq),
                rss,
            );
        }

        if (self.selected)("w5b") && has_raw {
            let grouped = fx.store.grouped();
            for writers in [8, 64] {
                reset_peak_rss();
                let store = grouped.clone();
                let (framework, mut fw_latency) =
                    concurrent_saves(writers, sizes.w5b_saves, move |id, v| {
                        let store = store.clone();
                        async move {
                            let stream = StreamId::new("Account", id).expect("valid");
                            let event = NewEvent::new(&Deposited { amount_cents: 1 }).unwrap();
                            store
                                .append(&stream, ExpectedVersion::Exact(v), vec![event])
                                .await
                                .expect("append");
                        }
                    })
                    .await;
                let raw_side = fx.raw.clone();
                let (raw, mut raw_latency) =
                    concurrent_saves(writers, sizes.w5b_saves, move |id, v| {
                        let raw = raw_side.clone();
                        async move {
                            raw.insert(Table::Full, &id, v as i64 + 1, &[deposited(1)])
                                .await;
                        }
                    })
                    .await;
                let rss = peak_rss_mb();
                let (rate, p50, p99) = W5B[usize::from(writers == 64)];
                samples.add(rate, "events/s", framework, Some(raw), rss);
                samples.add(
                    p50,
                    "ms (lower is better)",
                    quantile(&mut fw_latency, 0.5),
                    Some(quantile(&mut raw_latency, 0.5)),
                    rss,
                );
                samples.add(
                    p99,
                    "ms (lower is better)",
                    quantile(&mut fw_latency, 0.99),
                    Some(quantile(&mut raw_latency, 0.99)),
                    rss,
                );
            }
        }

        // The cached command path, the encryption rows last: their events go to the same store,
        // and the catch-up rows (W4) must read only the plain workload's.
        if w1_plain.is_some() {
            reset_peak_rss();
            let t = Instant::now();
            let n = fw_w1_cached(&fx.store, sizes).await;
            let cached = per_second(n, t.elapsed());
            samples.add(W1_CACHED, "events/s", cached, w1_raw, peak_rss_mb());
        }
        // The same keys for both encryption rows (W3 loads what W1 wrote).
        let pii = protected(&fx.store);
        if let Some(plain) = w1_plain {
            reset_peak_rss();
            let t = Instant::now();
            let n = fw_pii_w1(&pii, sizes).await;
            samples.add(
                PII_W1,
                "events/s",
                per_second(n, t.elapsed()),
                Some(plain),
                peak_rss_mb(),
            );
        }
        if let Some((plain, total)) = w3_plain {
            if w1_plain.is_none() {
                fw_pii_seed(&pii, sizes).await;
            }
            reset_peak_rss();
            let t = Instant::now();
            assert_eq!(fw_pii_w3(&pii, sizes).await, total, "the same balances");
            samples.add(
                PII_W3,
                "aggregates/s",
                per_second(sizes.aggregates, t.elapsed()),
                Some(plain),
                peak_rss_mb(),
            );
        }
    }
}

/// The rows against the minimal hand-written table (`min_events`): the same framework figure,
/// the ratio to the cheapest correct event table.
/// W5b: concurrent saves through a store with group commit, against raw one transaction per
/// save: the rate, and the p50 and p99 save latency, for 8 and for 64 writers.
const W5B: [(&str, &str, &str); 2] = [
    (
        "W5b 8 writers, group commit",
        "W5b 8 writers, p50 save latency",
        "W5b 8 writers, p99 save latency",
    ),
    (
        "W5b 64 writers, group commit",
        "W5b 64 writers, p50 save latency",
        "W5b 64 writers, p99 save latency",
    ),
];
const W1_CACHED: &str = "W1 with the aggregate cache (vs raw)";
const W1_MIN: &str = "W1 command path (vs minimal table)";
const W2_MIN: &str = "W2 batch append (vs minimal table)";
const W3_MIN: &str = "W3 load 10-event aggs (vs minimal table)";
const W3_LONG_MIN: &str = "W3 long stream (vs minimal table)";

/// W4 with three projections: one manager (shared reads) against three managers.
const W4_SHARED: &str = "W4 3 projections, 1 manager (vs 3 managers)";
/// Interleaved rounds of the W4 variants per repetition.
const W4_ROUNDS: usize = 3;

/// The encryption rows: the ratio is to the plain framework row.
const PII_W1: &str = "W1 +1 personal field (vs plain)";
const PII_W3: &str = "W3 +1 personal field (vs plain)";

fn report(backend: &'static str, samples: Samples, figures: &mut Vec<Figure>) {
    let order = [
        "W1 command path",
        W1_MIN,
        W1_CACHED,
        PII_W1,
        "W2 batch append",
        W2_MIN,
        "W3 load 10-event aggregates",
        W3_MIN,
        PII_W3,
        "W3 one aggregate, long stream, no snapshot",
        W3_LONG_MIN,
        "W3 same, from a snapshot (vs no snapshot)",
        "W4 projection catch-up",
        "W4 through the subscription manager",
        "W4 raw, 7 columns (vs raw)",
        "W4 raw, read_all's 10 columns (vs raw)",
        W4_SHARED,
        "W5 8 concurrent writers",
        "W5 raw + xid positions (vs raw)",
        W5B[0].0,
        W5B[0].1,
        W5B[0].2,
        W5B[1].0,
        W5B[1].1,
        W5B[1].2,
        "W6 publish -> consume",
        "W6 latency p50",
        "W6 latency p99",
    ];
    let mut samples = samples.0;
    for workload in order {
        let Some(Sample {
            unit,
            framework: mut fw,
            mut raw,
            peak_rss_mb: rss,
        }) = samples.remove(workload)
        else {
            continue;
        };
        let framework = median(&mut fw);
        let raw = (!raw.is_empty()).then(|| median(&mut raw));
        let lower_is_better = unit.starts_with("ms");
        let ratio = raw.map(|raw| {
            if lower_is_better {
                raw / framework
            } else {
                framework / raw
            }
        });
        figures.push(Figure {
            backend,
            workload,
            unit,
            framework,
            raw,
            ratio,
            peak_rss_mb: rss,
        });
    }
}

fn print_table(figures: &[Figure], sizes: Sizes, reps: usize) {
    println!(
        "\n{} aggregates x {} events, W2 {} events in batches of {}, long stream {} events; median of {reps}",
        sizes.aggregates,
        sizes.events_per_aggregate,
        sizes.w2_events,
        sizes.w2_batch,
        sizes.long_stream
    );
    println!(
        "{:<9} {:<44} {:>14} {:>14} {:>7} {:>9}  unit",
        "backend", "workload", "framework", "raw", "ratio", "peak MB"
    );
    for f in figures {
        let raw = f.raw.map_or("-".to_owned(), |r| format!("{r:.1}"));
        let ratio = f.ratio.map_or("-".to_owned(), |r| format!("{r:.2}"));
        println!(
            "{:<9} {:<44} {:>14.1} {:>14} {:>7} {:>9.1}  {}",
            f.backend, f.workload, f.framework, raw, ratio, f.peak_rss_mb, f.unit
        );
    }
    println!(
        "ratio = framework / raw for rates, raw / framework for times: 1.00 is the database's own speed"
    );
    println!(
        "W3 from a snapshot: the snapshot is {SNAPSHOT_TAIL} events behind the end; its ratio is the speed-up over a full replay"
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let sizes = args.scale.sizes();
    let workload = args.workload.to_lowercase();
    let selected = |w: &str| workload == "all" || workload.split(',').any(|x| x == w);
    let run = Run {
        sizes,
        selected: &selected,
    };
    let url = args
        .database_url
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let wants = |b: BackendArg| args.backend == b || args.backend == BackendArg::All;
    let reps = args.reps.max(1);
    let mut figures = Vec::new();

    if wants(BackendArg::Memory) {
        let mut samples = Samples::default();
        for _ in 0..reps {
            let fx = Fixture {
                store: InMemoryEventStore::new(),
                raw: Raw::None,
                cleanup: None,
            };
            run.repetition(&fx, &mut samples).await;
        }
        report("memory", samples, &mut figures);
    }
    if wants(BackendArg::Sqlite) {
        let mut samples = Samples::default();
        for _ in 0..reps {
            run.repetition(&sqlite_fixture().await, &mut samples).await;
        }
        report("sqlite", samples, &mut figures);
    }
    if wants(BackendArg::Postgres) {
        let mut samples = Samples::default();
        for _ in 0..reps {
            run.repetition(&postgres_fixture(&url).await, &mut samples)
                .await;
        }
        report("postgres", samples, &mut figures);
    }

    if wants(BackendArg::Buses) && selected("w6") {
        bus_workloads(sizes.w6_events, reps, &mut figures).await;
    }

    print_table(&figures, sizes, reps);
    if let Some(path) = &args.json {
        let json =
            serde_json::json!({ "sizes": format!("{sizes:?}"), "reps": reps, "results": figures });
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).expect("create the JSON file's directory");
        }
        std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()).expect("write JSON");
        println!("wrote {}", path.display());
    }
}

/// Adds a W6 repetition's figures to `samples`.
fn add_w6(samples: &mut Samples, framework: bus::Measured, raw: bus::Measured) {
    let rss = peak_rss_mb();
    samples.add(
        "W6 publish -> consume",
        "events/s",
        framework.per_second,
        Some(raw.per_second),
        rss,
    );
    samples.add(
        "W6 latency p50",
        "ms",
        framework.p50_ms,
        Some(raw.p50_ms),
        rss,
    );
    samples.add(
        "W6 latency p99",
        "ms",
        framework.p99_ms,
        Some(raw.p99_ms),
        rss,
    );
}

/// W6 on every bus whose server answers, each beside its raw client.
async fn bus_workloads(n: usize, reps: usize, figures: &mut Vec<Figure>) {
    let events = bus::events(n);
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let redis_url = env("REDIS_URL", "redis://127.0.0.1:6379");
    let amqp_url = env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let nats_url = env("NATS_URL", "nats://127.0.0.1:4222");
    let kafka_servers = env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092");

    let mut samples = Samples::default();
    for _ in 0..reps {
        reset_peak_rss();
        let framework = bus::framework(&bus::memory_bus(), &events).await;
        add_w6(&mut samples, framework, bus::raw_memory(&events).await);
    }
    report("memory", samples, figures);

    // One broker: `reps` runs of the bus and its raw client, while the server answers.
    macro_rules! broker {
        ($name:literal, $address:expr, $connect:path, $raw:path, |$bus:ident| $clean_up:expr) => {{
            let mut samples = Samples::default();
            for _ in 0..reps {
                let Some($bus) = $connect(&$address).await else {
                    println!("W6 {} skipped: no server at {}", $name, $address);
                    break;
                };
                reset_peak_rss();
                let framework = bus::framework(&$bus, &events).await;
                $clean_up.await.expect("clean up");
                add_w6(&mut samples, framework, $raw(&$address, &events).await);
            }
            report($name, samples, figures);
        }};
    }
    broker!("redis", redis_url, bus::redis_bus, bus::raw_redis, |b| b
        .destroy());
    broker!(
        "rabbitmq",
        amqp_url,
        bus::rabbitmq_bus,
        bus::raw_rabbitmq,
        |b| b.destroy(&["bench"])
    );
    broker!("nats", nats_url, bus::nats_bus, bus::raw_nats, |b| b
        .destroy());
    broker!(
        "kafka",
        kafka_servers,
        bus::kafka_bus,
        bus::raw_kafka,
        |b| b.destroy(&["bench"])
    );
}
