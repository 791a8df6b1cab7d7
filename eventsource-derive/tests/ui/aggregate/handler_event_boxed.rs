// An event behind a pointer: the handler borrows the event itself.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use std::sync::Arc;

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    amount: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct Withdrawn {
    amount: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct Closed;

#[derive(Default)]
struct Account {
    balance: i64,
}

#[aggregate]
impl Account {
    #[handles]
    fn deposited(&mut self, event: Box<Deposited>) {
        self.balance += event.amount;
    }

    #[handles]
    fn withdrawn(&mut self, event: Arc<Withdrawn>) {
        self.balance -= event.amount;
    }

    #[handles]
    fn closed(&mut self, _event: &Rc<Closed>) {}
}

fn main() {}
