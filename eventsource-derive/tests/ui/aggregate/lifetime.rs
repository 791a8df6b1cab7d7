use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Renamed {
    name: String,
}

#[derive(Default)]
struct Account<'a> {
    name: &'a str,
}

#[aggregate]
impl<'a> Account<'a> {
    #[handles]
    fn renamed(&mut self, _event: &Renamed) {
        self.name = "renamed";
    }
}

fn main() {}
