//! The given/when/then fixture: passing cases, and failures that say what differs.

use eventsource::prelude::*;
use eventsource::testing::{AggregateFixture, ProjectionFixture, event};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "fx.Opened")]
struct Opened {
    owner: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "fx.Withdrawn")]
struct Withdrawn {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "fx.Deposited")]
struct Deposited {
    cents: i64,
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum AccountError {
    #[error("insufficient funds: {balance} < {asked}")]
    Insufficient { balance: i64, asked: i64 },
}

#[derive(Default, Debug)]
struct Account {
    balance: i64,
}

#[aggregate(name = "FxAccount", error = AccountError)]
impl Account {
    #[handles]
    fn opened(&mut self, _: &Opened) {}
    #[handles]
    fn deposited(&mut self, e: &Deposited) {
        self.balance += e.cents;
    }
    #[handles]
    fn withdrawn(&mut self, e: &Withdrawn) {
        self.balance -= e.cents;
    }
}

impl Account {
    fn withdraw(&self, cents: i64) -> Result<Withdrawn, AccountError> {
        if cents > self.balance {
            return Err(AccountError::Insufficient {
                balance: self.balance,
                asked: cents,
            });
        }
        Ok(Withdrawn { cents })
    }
}

fn history() -> Vec<eventsource::testing::FixtureEvent<Account>> {
    vec![
        event(Opened {
            owner: "ada".into(),
        }),
        event(Deposited { cents: 100 }),
    ]
}

#[test]
fn then_events_and_then_error() {
    let account = AggregateFixture::<Account>::new()
        .given(history())
        .when(|a| a.withdraw(30).map(|e| a.record(e)))
        .then_events([event(Withdrawn { cents: 30 })]);
    assert_eq!(account.balance, 70);
    assert_eq!(account.version(), 3);

    AggregateFixture::<Account>::new()
        .given(history())
        .when(|a| a.withdraw(300).map(|e| a.record(e)))
        .then_error(AccountError::Insufficient {
            balance: 100,
            asked: 300,
        });

    AggregateFixture::<Account>::new()
        .given(history())
        .when(|_| Ok(()))
        .then_no_events();
}

fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let payload = std::panic::catch_unwind(f).expect_err("the check should fail");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn a_failed_check_shows_both_sides() {
    let message = panic_message(|| {
        AggregateFixture::<Account>::new()
            .given(history())
            .when(|a| a.withdraw(30).map(|e| a.record(e)))
            .then_events([event(Withdrawn { cents: 31 })]);
    });
    assert!(message.contains("expected:"), "{message}");
    assert!(
        message.contains(r#"fx.Withdrawn {"cents":31}"#),
        "{message}"
    );
    assert!(
        message.contains(r#"fx.Withdrawn {"cents":30}"#),
        "{message}"
    );

    let message = panic_message(|| {
        AggregateFixture::<Account>::new()
            .given(history())
            .when(|a| a.withdraw(30).map(|e| a.record(e)))
            .then_error(AccountError::Insufficient {
                balance: 0,
                asked: 0,
            });
    });
    assert!(
        message.contains("the command succeeded and recorded"),
        "{message}"
    );
    assert!(message.contains("fx.Withdrawn"), "{message}");

    let message = panic_message(|| {
        AggregateFixture::<Account>::new()
            .when(|a| a.withdraw(1).map(|e| a.record(e)))
            .then_events([event(Withdrawn { cents: 1 })]);
    });
    assert!(
        message.contains("it failed: insufficient funds"),
        "{message}"
    );
}

/// A projection under test: deposits and withdrawals per owner's account.
#[derive(Default, Debug, PartialEq)]
struct Balances {
    by_account: BTreeMap<String, i64>,
}

#[projection(name = "fx_balances")]
impl Balances {
    #[handles]
    fn deposited(&mut self, e: &Deposited, ctx: &EventContext) {
        *self
            .by_account
            .entry(ctx.aggregate_id().to_owned())
            .or_default() += e.cents;
    }

    #[handles]
    fn withdrawn(&mut self, e: &Withdrawn, ctx: &EventContext) -> Result<(), String> {
        let balance = self
            .by_account
            .get_mut(ctx.aggregate_id())
            .ok_or("withdrawal from an unknown account")?;
        *balance -= e.cents;
        Ok(())
    }
}

#[test]
fn projection_fixture() {
    let expected = Balances {
        by_account: BTreeMap::from([("a".into(), 70), ("b".into(), 5)]),
    };
    ProjectionFixture::new(Balances::default())
        .given("FxAccount", "a", Deposited { cents: 100 })
        .given("FxAccount", "b", Deposited { cents: 5 })
        .given("FxAccount", "a", Withdrawn { cents: 30 })
        .then_equals(&expected);

    let message = panic_message(|| {
        ProjectionFixture::new(Balances::default())
            .given("FxAccount", "a", Deposited { cents: 1 })
            .then_equals(&expected);
    });
    assert!(message.contains("the read model differs"), "{message}");

    let message = panic_message(|| {
        ProjectionFixture::new(Balances::default()).given("FxAccount", "z", Withdrawn { cents: 1 });
    });
    assert!(message.contains("unknown account"), "{message}");
}
