use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    amount: i64,
}

#[derive(Default)]
struct Account {
    balance: i64,
}

#[aggregate]
impl Account {
    #[handles]
    fn deposited(&mut self, event: &Deposited) -> Result<(), String> {
        self.balance += event.amount;
        Ok(())
    }
}

fn main() {}
