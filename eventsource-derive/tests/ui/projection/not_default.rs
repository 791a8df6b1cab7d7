// An in-memory projection must empty itself for a rebuild: `Default`, or `reset = ...`. (A
// durable one, added with `add_durable`, needs neither: see `pass/projection_in_memory.rs`.)
use eventsource::prelude::*;
use eventsource::subscription::Subscriptions;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

struct Balances {
    total: i64,
}

#[projection]
impl Balances {
    #[handles]
    fn deposited(&mut self, event: &Deposited) {
        self.total += event.cents;
    }
}

fn main() {
    let mut subscriptions = Subscriptions::new(InMemoryEventStore::new());
    subscriptions.add(Balances { total: 0 });
}
