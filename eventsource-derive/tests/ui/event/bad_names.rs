// Names no store accepts: too long, holding NUL or a control character, padded with whitespace.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(name = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")]
struct TooLong;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(name = "Deposited\0", alias = "Old\tDeposited")]
struct Control;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(name = " Deposited", alias = "OldDeposited ")]
struct Padded;

fn main() {}
