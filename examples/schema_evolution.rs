//! An application reading what its older releases wrote, and loading a long history from a
//! snapshot. On SQLite, in a temporary file: no server needed.
//!
//! Release 1 stored `Deposited` as `{"amount": 12}` (whole euros, field `amount`); release 2
//! renamed the field to `euros`; release 3 (this code) stores cents and a currency. Release 1
//! also called the event `MoneyDeposited`, and recorded `StatementPrinted` events that no longer
//! exist. The events are written here as those releases wrote them, then loaded by the current
//! code, which only ever sees the current `Deposited`.
//!
//! Run it with `cargo run --example schema_evolution`.

use eventsource::prelude::*;
use eventsource::{ExpectedVersion, StreamId, StreamQuery};
use eventsource::{NewEvent, SnapshotStrategy};
use serde::{Deserialize, Serialize};
use std::time::Instant;

// --- The events, as the current release defines them. ---

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "AccountOpened")]
struct AccountOpened {
    owner: String,
}

/// Schema version 2 of `Deposited`: whole euros.
#[derive(Deserialize, Debug)]
struct DepositedV2 {
    euros: i64,
}

/// Version 2 to version 3: euros become cents. A `TryFrom` could refuse a payload instead; its
/// error would come back as a typed `DecodeError::Upcast` naming both versions.
impl From<DepositedV2> for Deposited {
    fn from(v2: DepositedV2) -> Self {
        Deposited {
            cents: v2.euros * 100,
            currency: "EUR".into(),
        }
    }
}

/// Version 1 to version 2, at the JSON level: a field rename that no Rust type needs to exist
/// for.
fn rename_amount(mut v1: serde_json::Value) -> Result<serde_json::Value, String> {
    let amount = v1
        .as_object_mut()
        .and_then(|fields| fields.remove("amount"))
        .ok_or("a version 1 deposit without `amount`")?;
    Ok(serde_json::json!({ "euros": amount }))
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(
    name = "Deposited",
    version = 3,
    alias = "MoneyDeposited",
    upcast(from_version = 1, json = rename_amount),
    upcast(from_version = 2, via = DepositedV2)
)]
struct Deposited {
    cents: i64,
    currency: String,
}

// --- The aggregate. Its state is snapshotted, so it is serializable and versioned. ---

#[derive(Default, Serialize, Deserialize, Debug)]
struct Account {
    owner: String,
    balance_cents: i64,
    deposits: u64,
}

#[aggregate(
    name = "Account",
    id = String,
    retired = ["StatementPrinted"],
    snapshot_every = 100,
    state_version = 1
)]
impl Account {
    #[handles]
    fn opened(&mut self, event: &AccountOpened) {
        self.owner.clone_from(&event.owner);
    }

    #[handles]
    fn deposited(&mut self, event: &Deposited) {
        self.balance_cents += event.cents;
        self.deposits += 1;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = SqliteEventStore::open(dir.path().join("bank.db")).await?;

    // What releases 1 and 2 left in the store.
    let stream = StreamId::new("Account", "acct-1")?;
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![
                NewEvent::from_json("AccountOpened", 1, r#"{"owner": "Ada"}"#),
                NewEvent::from_json("MoneyDeposited", 1, r#"{"amount": 12}"#),
                NewEvent::from_json("StatementPrinted", 1, r#"{"month": "2024-01"}"#),
                NewEvent::from_json("Deposited", 2, r#"{"euros": 30}"#),
            ],
        )
        .await?;

    println!("Event types this release decodes:");
    let mut types: Vec<_> = eventsource::EventRegistry::global()
        .iter()
        .filter(|t| ["AccountOpened", "Deposited"].contains(&t.name()))
        .collect();
    types.sort_by_key(|t| t.name());
    for t in types {
        println!(
            "  {:<14} current version {}, decodes versions {:?}, also stored as {:?}",
            t.name(),
            t.schema_version(),
            t.versions(),
            t.aliases()
        );
    }

    let repo = Account::repository(store.clone()).with_snapshots();
    let mut account = repo.load("acct-1").await?;
    println!(
        "\nLoaded acct-1 at version {}: {} deposits, balance {} cents (12 EUR from release 1, 30 EUR from release 2)",
        account.version(),
        account.state().deposits,
        account.state().balance_cents
    );
    assert_eq!(account.state().balance_cents, 4_200);

    // New events are stored at the current version; the old ones stay as they were written.
    account.record(Deposited {
        cents: 550,
        currency: "EUR".into(),
    });
    repo.save(&mut account).await?;
    println!("\nThe stream as stored (reading rewrote nothing):");
    for event in store.read_stream(&stream, StreamQuery::all()).await? {
        println!(
            "  v{} {:<16} schema {} {}",
            event.version, event.event_type, event.schema_version, event.payload
        );
    }

    // Snapshots: a long history, saved in batches; `snapshot_every = 100` snapshots each save
    // that crosses a multiple of 100.
    let mut long = repo.create("acct-long");
    long.record(AccountOpened {
        owner: "Grace".into(),
    });
    for batch in 0..100 {
        for i in 0..100 {
            long.record(Deposited {
                cents: batch * 100 + i,
                currency: "EUR".into(),
            });
        }
        repo.save(&mut long).await?;
    }
    let plain = Account::repository(store.clone());
    let t = Instant::now();
    let replayed = plain.load("acct-long").await?;
    let replay_time = t.elapsed();
    let t = Instant::now();
    let snapshotted = repo.load("acct-long").await?;
    let snapshot_time = t.elapsed();
    assert_eq!(
        replayed.state().balance_cents,
        snapshotted.state().balance_cents
    );
    println!(
        "\nacct-long has {} events. Full replay: {:.1} ms; from the snapshot at version {} plus the events after it: {:.1} ms",
        replayed.version(),
        replay_time.as_secs_f64() * 1000.0,
        snapshotted.snapshot_version().unwrap_or(0),
        snapshot_time.as_secs_f64() * 1000.0,
    );

    // Snapshots written in the background do not delay the save.
    let background = repo
        .clone()
        .with_snapshot_strategy(SnapshotStrategy::every(100).in_background());
    let mut more = background.load("acct-long").await?;
    for i in 0..150 {
        more.record(Deposited {
            cents: i,
            currency: "EUR".into(),
        });
    }
    background.save(&mut more).await?;
    background.flush_snapshots().await;
    println!(
        "After 150 more deposits (snapshotted in the background), the load starts from version {:?}",
        background.load("acct-long").await?.snapshot_version()
    );
    Ok(())
}
