use eventsource::prelude::*;

#[derive(Default)]
struct Account {
    balance: i64,
}

#[aggregate]
impl Account {
    #[handles]
    fn deposited(&mut self) {
        self.balance += 1;
    }
}

fn main() {}
