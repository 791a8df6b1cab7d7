// An async handler without a transaction, and a transactional one that is not async.
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

struct Balances;

#[projection]
impl Balances {
    #[handles]
    async fn deposited(&mut self, _event: &Deposited, _ctx: &EventContext<'_>) {}

    #[handles]
    fn withdrawn(&mut self, _event: &Withdrawn, _ctx: &EventContext<'_>, _tx: &mut SqliteTx) {}
}

fn main() {}
