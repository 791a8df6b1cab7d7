// A JSON upcaster has one signature: `fn(Value) -> Result<Value, E>`.
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

fn takes_text(v1: String) -> Result<serde_json::Value, String> {
    Ok(serde_json::Value::String(v1))
}

fn returns_value(v1: serde_json::Value) -> serde_json::Value {
    v1
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(version = 2, upcast(from_version = 1, json = takes_text))]
struct Deposited {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(version = 2, upcast(from_version = 1, json = returns_value))]
struct Withdrawn {
    cents: i64,
}

fn not_an_error(v1: serde_json::Value) -> Result<serde_json::Value, i32> {
    Ok(v1)
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(version = 2, upcast(from_version = 1, json = not_an_error))]
struct Closed {
    cents: i64,
}

fn main() {}
