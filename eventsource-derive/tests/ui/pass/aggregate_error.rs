// `#[aggregate(error = Type)]` names the domain error of the commands; without it, `Infallible`.
use eventsource::prelude::*;
use eventsource::{Aggregate, Root};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(DomainEvent, Serialize, Deserialize)]
struct Withdrawn {
    amount: i64,
}

#[derive(Debug, PartialEq)]
enum AccountError {
    InsufficientFunds,
}

impl fmt::Display for AccountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("insufficient funds")
    }
}

impl std::error::Error for AccountError {}

#[derive(Default)]
struct Account {
    balance: i64,
}

#[aggregate(error = AccountError)]
impl Account {
    #[handles]
    fn withdrawn(&mut self, event: &Withdrawn) {
        self.balance -= event.amount;
    }
}

impl Account {
    fn withdraw(&self, amount: i64) -> Result<Withdrawn, <Self as Aggregate>::Error> {
        if amount > self.balance {
            return Err(AccountError::InsufficientFunds);
        }
        Ok(Withdrawn { amount })
    }
}

#[derive(Default)]
struct Counter;

#[aggregate]
impl Counter {
    #[handles]
    fn withdrawn(&mut self, _event: &Withdrawn) {}
}

fn main() {
    let account = Root::<Account>::new(Uuid::nil());
    assert_eq!(
        account.state().withdraw(5).err(),
        Some(AccountError::InsufficientFunds)
    );
    let _: fn(<Counter as Aggregate>::Error) -> std::convert::Infallible = |never| never;
}
