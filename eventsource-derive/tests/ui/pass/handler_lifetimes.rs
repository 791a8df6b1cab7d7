// Lifetimes that change nothing are accepted: `&'_ E` is `&E`, and a handler may name the
// lifetime of its borrows.
use eventsource::prelude::*;
use eventsource::Root;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    amount: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct Withdrawn {
    amount: i64,
}

#[derive(Default)]
struct Account {
    balance: i64,
}

#[aggregate]
impl Account {
    #[handles]
    fn deposited(&mut self, event: &'_ Deposited) {
        self.balance += event.amount;
    }

    #[handles]
    fn withdrawn<'a>(&'a mut self, event: &'a Withdrawn) {
        self.balance -= event.amount;
    }
}

#[derive(Default)]
struct Balance(i64);

#[projection]
impl Balance {
    #[handles]
    fn deposited(&mut self, event: &'_ Deposited) {
        self.0 += event.amount;
    }

    #[handles]
    fn withdrawn<'e>(&mut self, event: &'e Withdrawn, _ctx: &EventContext<'_>) {
        self.0 -= event.amount;
    }
}

fn main() {
    let mut account = Root::<Account>::new(Uuid::nil());
    account.record(Deposited { amount: 5 });
    account.record(Withdrawn { amount: 2 });
    assert_eq!(account.state().balance, 3);
    let _ = Balance::default().0;
}
