// Every unknown key is reported in one pass, each on its own span.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(nmae = "Deposited", verison = 2, aggregate = "BankAccount", upcast_from(Old))]
struct Deposited {
    amount: i64,
}

fn main() {}
