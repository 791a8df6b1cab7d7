// In-memory projections: handlers with and without the context, one returning a `Result`, the
// default reset (`Default`), a named one, and none (a durable projection that is not `Default`).
use eventsource::prelude::*;
use eventsource::{EventLocation, Position, Projection};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct Withdrawn {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct Closed;

#[derive(Debug)]
struct Overdrawn;

impl std::fmt::Display for Overdrawn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("overdrawn")
    }
}

impl std::error::Error for Overdrawn {}

#[derive(Default)]
struct Balances {
    by_account: HashMap<String, i64>,
    closed: u32,
}

#[projection(name = "balances")]
impl Balances {
    #[handles]
    fn deposited(&mut self, event: &Deposited, ctx: &EventContext) {
        *self.by_account.entry(ctx.aggregate_id().to_owned()).or_default() += event.cents;
    }

    #[handles]
    fn withdrawn(&mut self, event: &Withdrawn, ctx: &EventContext<'_>) -> Result<(), Overdrawn> {
        let balance = self.by_account.entry(ctx.aggregate_id().to_owned()).or_default();
        if *balance < event.cents {
            return Err(Overdrawn);
        }
        *balance -= event.cents;
        Ok(())
    }

    #[handles]
    fn closed(&mut self, _event: &Closed) {
        self.closed += 1;
    }
}

// Not `Default`: it names its reset method. Its name is the type's.
struct Counter {
    seen: u64,
}

#[projection(reset = clear)]
impl Counter {
    #[handles]
    fn deposited(&mut self, _event: &Deposited) -> Result<(), std::io::Error> {
        self.seen += 1;
        Ok(())
    }

    fn clear(&mut self) {
        self.seen = 0;
    }
}

// Handlers that read where an event sits, and no more: read without the id, time and metadata.
#[derive(Default)]
struct Located {
    last: Option<(String, u64, Position)>,
}

#[projection]
impl Located {
    #[handles]
    fn deposited(&mut self, _event: &Deposited, at: &EventLocation) {
        self.last = Some((at.aggregate_id().to_owned(), at.version, at.position));
    }

    #[handles]
    fn closed(&mut self, _event: &Closed, at: &eventsource::EventLocation<'_>) {
        let _ = at.event_type;
    }
}

// Its effects live elsewhere: run with `add_durable`, it needs neither `Default` nor a reset.
struct Forwarder {
    sent: u64,
}

#[projection]
impl Forwarder {
    #[handles]
    fn deposited(&mut self, _event: &Deposited) {
        self.sent += 1;
    }
}

fn assert_projection<P: Projection>() {}

fn main() {
    assert_projection::<Balances>();
    assert_eq!(<Balances as Projection>::NAME, "balances");
    assert_eq!(
        <Balances as Projection>::event_types(),
        ["Deposited", "Withdrawn", "Closed"]
    );
    assert_eq!(<Counter as Projection>::NAME, "Counter");
    // A handler that takes the `EventContext` makes the manager read all of it.
    assert_eq!(<Balances as Projection>::CONTEXT, eventsource::ContextFields::All);
    assert_eq!(<Counter as Projection>::CONTEXT, eventsource::ContextFields::Location);
    assert_eq!(<Located as Projection>::CONTEXT, eventsource::ContextFields::Location);
    let mut counter = Counter { seen: 3 };
    Projection::reset(&mut counter);
    assert_eq!(counter.seen, 0);
    assert!(!<Forwarder as Projection>::RESETS);
    let mut subscriptions =
        eventsource::subscription::Subscriptions::new(eventsource::InMemoryEventStore::new());
    subscriptions.add_durable(Forwarder { sent: 0 });
}
