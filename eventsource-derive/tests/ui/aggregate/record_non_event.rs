// Recording something that is not a DomainEvent at all.
use eventsource::prelude::*; use eventsource::Root;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Opened;

#[derive(Default)]
struct Account;

#[aggregate]
impl Account {
    #[handles]
    fn opened(&mut self, _event: &Opened) {}
}

fn main() {
    let mut account = Root::<Account>::new(Uuid::nil());
    account.record("opened");
}
