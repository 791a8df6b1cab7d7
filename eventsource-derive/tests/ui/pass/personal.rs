// Personal fields: the derive records them, with their subject, for the `ProtectedStore`.
use eventsource::prelude::*;
use eventsource::protection::{PersonalData, PersonalEventType};
use eventsource::{Personal, PersonalField};
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Registered {
    r#customer_id: u64,
    #[personal(subject = customer_id)]
    email: eventsource::Personal<String>,
    #[personal(subject = r#customer_id)]
    r#type: Personal<Option<String>>,
    plan: String,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct Plain {
    plan: String,
}

fn main() {
    assert_eq!(
        <Registered as PersonalData>::FIELDS,
        &[
            PersonalField::new("email", "customer_id"),
            PersonalField::new("type", "customer_id"),
        ]
    );
    // Only the event with personal fields is in the registry the `ProtectedStore` reads.
    let names: Vec<&str> = PersonalEventType::all().map(|t| t.name()).collect();
    assert_eq!(names, ["Registered"]);
    let _ = Plain { plan: String::new() }.plan;
}
