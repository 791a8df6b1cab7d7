// An upcast needs `from_version` and exactly one of `via` / `json`; a JSON step cannot follow a typed one.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct V1 {
    amount: i64,
}

fn rewrite(v: serde_json::Value) -> Result<serde_json::Value, String> {
    Ok(v)
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(version = 2, upcast(via = V1), upcast(from_version = 1))]
struct Deposited {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(version = 2, upcast(from_version = 1, via = V1, json = rewrite, into = V1))]
struct Withdrawn {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(version = 3, upcast(from_version = 1, via = V1), upcast(from_version = 2, json = rewrite))]
struct Closed {
    cents: i64,
}

fn main() {}
