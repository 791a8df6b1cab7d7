use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    amount: i64,
}

#[derive(Default)]
struct Account;

#[aggregate]
impl Account {
    #[handles]
    fn deposited(event: &Deposited) {
        let _ = event.amount;
    }
}

fn main() {}
