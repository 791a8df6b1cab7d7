// The happy path: struct, unit and enum events, defaults and explicit names, commands as methods.
use eventsource::prelude::*;
use eventsource::{Aggregate, Root};
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize, Debug, PartialEq)]
#[event(aggregate = "BankAccount")]
pub struct AccountOpened {
    pub owner: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, PartialEq)]
#[event(name = "MoneyDeposited", version = 3)]
pub struct Deposited {
    pub cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, PartialEq)]
pub struct Frozen;

#[derive(DomainEvent, Serialize, Deserialize, Debug, PartialEq)]
pub enum Closed {
    ByOwner,
    ByBank { reason: String },
}

#[derive(Default, Debug)]
pub struct BankAccount {
    owner: String,
    balance: i64,
    frozen: bool,
    open: bool,
}

#[aggregate]
impl BankAccount {
    #[handles]
    fn opened(&mut self, event: &AccountOpened) {
        self.owner = event.owner.clone();
        self.open = true;
    }

    #[handles]
    fn deposited(&mut self, event: &Deposited) {
        self.balance += event.cents;
    }

    #[handles]
    fn frozen(&mut self, _: &Frozen) {
        self.frozen = true;
    }

    #[eventsource::handles]
    fn closed(&mut self, _event: &Closed) -> () {
        self.open = false;
    }

    /// Ordinary methods stay as they are.
    pub fn balance(&self) -> i64 {
        self.balance
    }
}

fn main() {
    assert_eq!(<AccountOpened as DomainEvent>::EVENT_TYPE, "AccountOpened");
    assert_eq!(<AccountOpened as DomainEvent>::SCHEMA_VERSION, 1);
    assert_eq!(<AccountOpened as DomainEvent>::AGGREGATE_TYPE, Some("BankAccount"));
    assert_eq!(<Deposited as DomainEvent>::EVENT_TYPE, "MoneyDeposited");
    assert_eq!(<Deposited as DomainEvent>::SCHEMA_VERSION, 3);
    assert_eq!(<BankAccount as Aggregate>::TYPE, "BankAccount");
    assert_eq!(
        <BankAccount as Aggregate>::HANDLED_EVENTS,
        &["AccountOpened", "MoneyDeposited", "Frozen", "Closed"]
    );

    let mut account = Root::<BankAccount>::new(Uuid::now_v7());
    account.record(AccountOpened { owner: "Ada".into() });
    account.record(Deposited { cents: 250 });
    account.record(Frozen);
    account.record(Closed::ByBank { reason: "audit".into() });
    assert_eq!(account.version(), 4);
    assert_eq!(account.state().balance(), 250);
    assert!(account.state().frozen && !account.state().open);
    assert_eq!(account.state().owner, "Ada");
}
