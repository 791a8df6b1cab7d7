// An alias is an older name: the event's own name (given or defaulted) is not one, and each
// alias is given once.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(alias = "Opened")]
struct Opened;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(name = "MoneyDeposited", alias = "Deposited", alias = "MoneyDeposited")]
struct Deposited;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(alias = "Shut", alias = "Shut")]
struct Closed;

fn main() {}
