// Unknown keys, duplicates, bad values and bad names: all reported together.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

#[derive(Default)]
struct Balances;

#[projection(nme = "balances", name = "a", name = "b", reset = "clear", crate = "not a path")]
impl Balances {
    #[handles]
    fn deposited(&mut self, _event: &Deposited) {}
}

#[derive(Default)]
struct Empty;

#[projection(name = " padded ")]
impl Empty {
    #[handles]
    fn deposited(&mut self, _event: &Deposited) {}
}

#[derive(Default)]
struct Control;

#[projection(name = "line\nbreak")]
impl Control {
    #[handles]
    fn deposited(&mut self, _event: &Deposited) {}
}

fn main() {}
