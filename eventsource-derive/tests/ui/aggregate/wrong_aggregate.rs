// An event that names its aggregate cannot be handled by another one.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "Order")]
struct ItemAdded {
    sku: String,
}

#[derive(Default)]
struct Account;

#[aggregate(name = "BankAccount")]
impl Account {
    #[handles]
    fn item_added(&mut self, _event: &ItemAdded) {}
}

fn main() {}
