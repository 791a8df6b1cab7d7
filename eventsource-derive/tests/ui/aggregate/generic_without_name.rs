// A generic aggregate must name its stored type: all instances share it.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Incremented;

#[derive(Default)]
struct Counter<T> {
    value: u32,
    unit: T,
}

#[aggregate]
impl<T: Default + Send + Sync + 'static> Counter<T> {
    #[handles]
    fn incremented(&mut self, _event: &Incremented) {
        self.value += 1;
    }
}

fn main() {}
