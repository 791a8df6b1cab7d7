// `#[personal]` is for the named fields of a struct: not a tuple struct's, not an enum's.
use eventsource::prelude::*;
use eventsource::Personal;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Tuple(String, #[personal(subject = customer_id)] Personal<String>);

#[derive(DomainEvent, Serialize, Deserialize)]
enum Changed {
    Email {
        customer_id: String,
        #[personal(subject = customer_id)]
        email: Personal<String>,
    },
}

fn main() {}
