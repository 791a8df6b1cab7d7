// A handler of a type that is not a domain event.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

#[derive(Default)]
struct Balances;

#[projection]
impl Balances {
    #[handles]
    fn deposited(&mut self, _event: &Deposited) {}

    #[handles]
    fn note(&mut self, _event: &String) {}
}

fn main() {}
