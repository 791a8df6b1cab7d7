// `subject` names another field of the struct, one that is not personal itself.
use eventsource::prelude::*;
use eventsource::Personal;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct UnknownSubject {
    customer_id: String,
    #[personal(subject = customer)]
    email: Personal<String>,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct OwnSubject {
    #[personal(subject = email)]
    email: Personal<String>,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct PersonalSubject {
    #[personal(subject = email)]
    name: Personal<String>,
    #[personal(subject = name)]
    email: Personal<String>,
}

fn main() {}
