use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    amount: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct Withdrawn {
    amount: i64,
}

#[derive(Default)]
struct Account {
    balance: i64,
}

#[aggregate]
impl Account {
    #[handles]
    async fn deposited(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }

    #[handles]
    fn withdrawn<T>(&mut self, event: &Withdrawn) {
        self.balance -= event.amount;
    }
}

fn main() {}
