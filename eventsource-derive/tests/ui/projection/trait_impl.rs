// On a trait impl.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

#[derive(Default)]
struct Balances;

trait Named {}

#[projection]
impl Named for Balances {}

fn main() {}
