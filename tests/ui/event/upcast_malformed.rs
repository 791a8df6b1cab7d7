// An upcast needs a version and exactly one of `from` / `json`; a JSON step cannot follow a typed one.
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
#[event(version = 2, upcast(from = V1), upcast(version = 1))]
struct Deposited {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(version = 2, upcast(from = V1, json = rewrite, version = 1, into = V1))]
struct Withdrawn {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(version = 3, upcast(from = V1, version = 1), upcast(json = rewrite, version = 2))]
struct Closed {
    cents: i64,
}

fn main() {}
