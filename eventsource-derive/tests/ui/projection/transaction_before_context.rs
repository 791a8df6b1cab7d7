// The context comes before the transaction.
use eventsource::prelude::*; use eventsource::projection::SqliteTx;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

struct Balances;

#[projection]
impl Balances {
    #[handles]
    async fn deposited(&mut self, _event: &Deposited, _tx: &mut SqliteTx) {}
}

fn main() {}
