use eventsource::prelude::*;

#[aggregate]
#[derive(Default)]
struct Account {
    balance: i64,
}

fn main() {}
