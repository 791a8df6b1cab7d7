use eventsource::prelude::*;

#[derive(DomainEvent)]
union Amount {
    cents: i64,
    ratio: f64,
}

fn main() {}
