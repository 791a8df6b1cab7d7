//! An application's own command line: the `eventsource` commands, plus the application's event
//! types (so `events` shows them decoded to their current schema) and its projection (so
//! `projections rebuild` and `projections replay` can run it).
//!
//! Run `cargo run --example quickstart` first (it prints where its SQLite file is), then:
//!
//! ```sh
//! cargo run -p eventsource-cli --example bank_ops -- --db /tmp/eventsource-quickstart.db streams
//! cargo run -p eventsource-cli --example bank_ops -- --db /tmp/eventsource-quickstart.db projections rebuild balances
//! cargo run -p eventsource-cli --example bank_ops -- --db /tmp/eventsource-quickstart.db projections status
//! ```

use eventsource::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

// The quickstart's events, as the application declares them.

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "BankAccount")]
struct AccountOpened {
    owner: String,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "BankAccount")]
struct Deposited {
    amount_cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "BankAccount")]
struct Withdrawn {
    amount_cents: i64,
}

/// Balances per account: a projection the application runs with `add_durable` (its checkpoint
/// is in the event store).
#[derive(Default)]
struct Balances {
    cents: HashMap<String, i64>,
}

#[projection(name = "balances")]
impl Balances {
    #[handles]
    fn deposited(&mut self, event: &Deposited, ctx: &EventContext) {
        *self.cents.entry(ctx.aggregate_id().to_owned()).or_default() += event.amount_cents;
    }

    #[handles]
    fn withdrawn(&mut self, event: &Withdrawn, ctx: &EventContext) {
        *self.cents.entry(ctx.aggregate_id().to_owned()).or_default() -= event.amount_cents;
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    eventsource_cli::Cli::new()
        .projection(Balances::default())
        .run()
        .await
}
