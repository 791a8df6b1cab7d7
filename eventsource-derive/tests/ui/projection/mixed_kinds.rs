// In-memory and database handlers in one projection: reported on the odd one.
use eventsource::prelude::*; use eventsource::projection::SqliteTx;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct Withdrawn {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct Closed;

#[derive(Default)]
struct Balances;

#[projection]
impl Balances {
    #[handles]
    fn deposited(&mut self, _event: &Deposited) {}

    #[handles]
    fn closed(&mut self, _event: &Closed, _ctx: &EventContext) {}

    #[handles]
    async fn withdrawn(&mut self, _event: &Withdrawn, _ctx: &EventContext<'_>, _tx: &mut SqliteTx) {}
}

fn main() {}
