// The event is borrowed for the call only: no lifetime on its reference.
use eventsource::prelude::*; use eventsource::Root;
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
    fn deposited(&mut self, event: &'static Deposited) {
        self.balance += event.amount;
    }
}

fn main() {
    let mut account = Root::<Account>::new(Uuid::nil());
    account.record(Deposited { amount: 1 });
}
