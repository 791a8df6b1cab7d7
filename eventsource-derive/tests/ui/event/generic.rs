use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Changed<T> {
    value: T,
}

fn main() {}
