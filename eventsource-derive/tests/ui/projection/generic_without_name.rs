// A generic projection names its checkpoint.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

#[derive(Default)]
struct Totals<T> {
    seen: Vec<T>,
}

#[projection]
impl<T: Default + Send + 'static> Totals<T> {
    #[handles]
    fn deposited(&mut self, _event: &Deposited) {}
}

fn main() {}
