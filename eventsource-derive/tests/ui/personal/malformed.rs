// A missing or unknown key, a duplicate attribute or key, and a field not of type `Personal<T>`
// are all reported in one run.
use eventsource::prelude::*;
use eventsource::Personal;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Registered {
    customer_id: String,
    #[personal]
    name: Personal<String>,
    #[personal(subject = customer_id, key = "k")]
    email: Personal<String>,
    #[personal(subject = customer_id)]
    #[personal(subject = customer_id)]
    phone: Personal<String>,
    #[personal(subject = customer_id, subject = customer_id)]
    city: Personal<String>,
    #[personal(subject = customer_id)]
    street: String,
}

fn main() {}
