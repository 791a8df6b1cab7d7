// Recording an event the aggregate has no #[handles] method for does not compile.
use eventsource::prelude::*; use eventsource::Root;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Opened;

#[derive(DomainEvent, Serialize, Deserialize)]
struct Frozen;

#[derive(Default)]
struct Account;

#[aggregate]
impl Account {
    #[handles]
    fn opened(&mut self, _event: &Opened) {}
}

fn main() {
    let mut account = Root::<Account>::new(Uuid::nil());
    account.record(Opened);
    account.record(Frozen);
}
