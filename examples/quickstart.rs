//! The bank account of the README, end to end: events, a compile-checked aggregate, commands
//! that check invariants, a repository with optimistic concurrency, and the stored history, in
//! an SQLite file (the embedded default: no server needed).
//!
//! Run it with `cargo run --example quickstart`.

use eventsource::StreamQuery;
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

// Events: facts, named and versioned, stored as JSON.

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "BankAccount")]
struct AccountOpened {
    owner: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "BankAccount")]
struct Deposited {
    amount_cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "BankAccount")]
struct Withdrawn {
    amount_cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "BankAccount")]
struct AccountClosed;

// The aggregate: plain state, one handler per event. Recording an event without a handler here
// would not compile.

#[derive(Default, Debug)]
struct BankAccount {
    owner: String,
    balance_cents: i64,
    open: bool,
}

#[aggregate(name = "BankAccount", error = AccountError)]
impl BankAccount {
    #[handles]
    fn opened(&mut self, event: &AccountOpened) {
        self.owner = event.owner.clone();
        self.open = true;
    }

    #[handles]
    fn deposited(&mut self, event: &Deposited) {
        self.balance_cents += event.amount_cents;
    }

    #[handles]
    fn withdrawn(&mut self, event: &Withdrawn) {
        self.balance_cents -= event.amount_cents;
    }

    #[handles]
    fn closed(&mut self, _event: &AccountClosed) {
        self.open = false;
    }
}

// Commands: ordinary methods that check invariants and decide which event happens.

/// Why the bank refuses a command.
#[derive(Debug, thiserror::Error)]
enum AccountError {
    /// The account is closed.
    #[error("the account is closed")]
    Closed,
    /// Not enough money.
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    InsufficientFunds { balance: i64, asked: i64 },
}

impl BankAccount {
    fn deposit(&self, amount_cents: i64) -> Result<Deposited, AccountError> {
        if !self.open {
            return Err(AccountError::Closed);
        }
        Ok(Deposited { amount_cents })
    }

    fn withdraw(&self, amount_cents: i64) -> Result<Withdrawn, AccountError> {
        if !self.open {
            return Err(AccountError::Closed);
        }
        if amount_cents > self.balance_cents {
            return Err(AccountError::InsufficientFunds {
                balance: self.balance_cents,
                asked: amount_cents,
            });
        }
        Ok(Withdrawn { amount_cents })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A fresh database file in the temporary directory; the schema is created on connect.
    let path = std::env::temp_dir().join("eventsource-quickstart.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let store = SqliteEventStore::open(&path).await?;
    println!("event store: {}", path.display());
    let repo = BankAccount::repository(store.clone());

    // Open an account: create, record, save (the stream must not exist yet).
    let id = Uuid::now_v7();
    let mut account = repo.create(id);
    account.set_metadata(
        Metadata::new()
            .with_actor("teller-7")
            .with_correlation_id(Uuid::now_v7()),
    );
    account.record(AccountOpened {
        owner: "Ada".into(),
    });
    account.record(Deposited {
        amount_cents: 10_000,
    });
    repo.save(&mut account).await?;

    // Commands through `update`: load, run, save; retried if another writer got there first.
    repo.update(id, |account| {
        let event = account.withdraw(2_500)?;
        account.record(event);
        Ok(())
    })
    .await?;
    repo.update(id, |account| {
        let event = account.deposit(1_200)?;
        account.record(event);
        Ok(())
    })
    .await?;

    // A command that breaks an invariant records nothing; its error is the domain's, apart from
    // the store's.
    let refused = repo
        .update(id, |account| {
            let event = account.withdraw(1_000_000)?;
            account.record(event);
            Ok(())
        })
        .await;
    match refused {
        Err(UpdateError::Rejected(reason)) => println!("refused:  {reason}"),
        other => panic!("the withdrawal should be refused, got {other:?}"),
    }

    // Optimistic concurrency: two copies loaded at the same version, only the first save wins.
    let mut first = repo.load(id).await?;
    let mut second = repo.load(id).await?;
    first.record(first.deposit(100)?);
    second.record(second.deposit(200)?);
    repo.save(&mut first).await?;
    println!("conflict: {}", repo.save(&mut second).await.unwrap_err());

    // The stored history, with its metadata.
    println!("\nhistory of {}:", account.stream_id());
    for event in store
        .read_stream(account.stream_id(), StreamQuery::all())
        .await?
    {
        println!(
            "  v{} @{} {:<14} {}  actor={}",
            event.version,
            event.position,
            event.event_type,
            event.payload,
            event.metadata.actor_id.as_deref().unwrap_or("-"),
        );
    }

    // Time travel: the account as it was after its second event.
    let then = repo.load_at(id, 2).await?;
    let now = repo.load(id).await?;
    println!("\nat version {}: {:?}", then.version(), then.state());
    println!("now (version {}): {:?}", now.version(), now.state());
    Ok(())
}
