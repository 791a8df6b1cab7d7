// An event whose name is refused is still an event: its handler and `record` raise nothing more.
use eventsource::prelude::*; use eventsource::Root;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(name = "Opened\0")]
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
    account.record(Opened);
}
