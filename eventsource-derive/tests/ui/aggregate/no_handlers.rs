use eventsource::prelude::*;

#[derive(Default)]
struct Account {
    balance: i64,
}

#[aggregate]
impl Account {
    fn balance(&self) -> i64 {
        self.balance
    }
}

fn main() {}
