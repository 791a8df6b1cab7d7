// Wrong handler signatures: each reported on the parameter at fault.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct Withdrawn;

#[derive(DomainEvent, Serialize, Deserialize)]
struct Closed;

#[derive(DomainEvent, Serialize, Deserialize)]
struct Opened;

#[derive(DomainEvent, Serialize, Deserialize)]
struct Renamed;

#[derive(DomainEvent, Serialize, Deserialize)]
struct Frozen;

#[derive(Default)]
struct Balances;

#[projection]
impl Balances {
    #[handles]
    fn by_ref_self(&self, _event: &Deposited) {}

    #[handles]
    fn by_value(&mut self, _event: Withdrawn) {}

    #[handles]
    fn by_mut(&mut self, _event: &mut Closed) {}

    #[handles]
    fn missing_event(&mut self) {}

    #[handles]
    fn extra(&mut self, _event: &Opened, _ctx: &EventContext, _count: u32) {}

    #[handles]
    fn context_first(&mut self, _ctx: &EventContext, _event: &Renamed) {}

    #[handles]
    fn context_by_value(&mut self, _event: &Frozen, _ctx: EventContext) {}
}

fn main() {}
