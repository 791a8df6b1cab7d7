//! Personal data in an immutable log: a customer's name and email are encrypted with a key of
//! their own (crypto-shredding), readable on every path, and erased by destroying the key. The
//! events stay; what they said about the person can no longer be read, by anyone.
//!
//! Run it with `cargo run --example personal_data` (SQLite, in a temporary directory; the master
//! key comes from `EVENTSOURCE_MASTER_KEY` when it is set, else a fresh one is generated).

use eventsource::prelude::*;
use eventsource::protection::{Erasure, SqliteKeyStore};
use eventsource::{MasterKey, Personal, ProtectedStore};
use eventsource::{ReadAll, RecordedEvent, Root};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "Customer")]
struct CustomerRegistered {
    customer_id: String,
    #[personal(subject = customer_id)]
    name: Personal<String>,
    #[personal(subject = customer_id)]
    email: Personal<String>,
    plan: String,
}

#[derive(Default, Debug, Serialize, Deserialize)]
struct Customer {
    name: Personal<String>,
    plan: String,
}

#[aggregate(id = String)]
impl Customer {
    #[handles]
    fn registered(&mut self, event: &CustomerRegistered) {
        self.name = event.name.clone();
        self.plan = event.plan.clone();
    }
}

fn greeting(customer: &Customer) -> String {
    match &customer.name {
        Personal::Known(name) => format!("Dear {name}"),
        Personal::Forgotten => "Dear customer".to_owned(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let events = SqliteEventStore::open(dir.path().join("events.db")).await?;
    let master = match MasterKey::from_env() {
        Ok(key) => key,
        Err(_) => MasterKey::generate().0,
    };
    // The keys in the same file here; in production, in a database of their own, backed up
    // apart from the events.
    let keys = SqliteKeyStore::new(events.writer_pool().clone(), master).await?;

    // A read model of the application's own, in the same file: the erasure hook deletes the
    // subject's rows from it.
    sqlx::query("CREATE TABLE mailing_list (customer_id TEXT PRIMARY KEY, email TEXT NOT NULL)")
        .execute(events.writer_pool())
        .await?;
    let pool = events.writer_pool().clone();
    let store =
        ProtectedStore::new(events.clone(), keys).with_erasure_hook(move |erasure: Erasure| {
            let pool = pool.clone();
            async move {
                sqlx::query("DELETE FROM mailing_list WHERE customer_id = ?")
                    .bind(&erasure.subject)
                    .execute(&pool)
                    .await
                    .map_err(|e| Error::InvalidConfig(e.to_string()))?;
                Ok(())
            }
        });

    for (id, name) in [("c-1", "Ada Lovelace"), ("c-2", "Alan Turing")] {
        let mut root = Root::<Customer>::new(id.to_owned());
        let email = format!("{}@example.org", id);
        root.record(CustomerRegistered {
            customer_id: id.to_owned(),
            name: name.to_owned().into(),
            email: email.clone().into(),
            plan: "gold".to_owned(),
        });
        Customer::repository(store.clone()).save(&mut root).await?;
        sqlx::query("INSERT INTO mailing_list VALUES (?, ?)")
            .bind(id)
            .bind(&email)
            .execute(store.inner().writer_pool())
            .await?;
    }

    // What the database holds: envelopes, not names.
    let (raw,): (String,) = sqlx::query_as("SELECT payload FROM events ORDER BY position LIMIT 1")
        .fetch_one(store.inner().pool())
        .await?;
    println!("stored payload: {raw}");
    assert!(!raw.contains("Ada"));

    let customers = Customer::repository(store.clone()).with_snapshots();
    let ada = customers.load("c-1".to_owned()).await?;
    println!("{}: {}", ada.id(), greeting(ada.state()));
    assert_eq!(greeting(ada.state()), "Dear Ada Lovelace");
    customers.snapshot("c-1".to_owned()).await?; // a snapshot holds the plain state

    // Ada asks to be forgotten.
    let erasure = store.forget("c-1").await?;
    println!(
        "forgot {}: {} key(s) destroyed, snapshots of {:?} deleted, read models cleared by the hook",
        erasure.subject, erasure.keys_destroyed, erasure.streams
    );

    let ada = customers.load("c-1".to_owned()).await?;
    println!(
        "{}: {} (plan {})",
        ada.id(),
        greeting(ada.state()),
        ada.state().plan
    );
    assert_eq!(greeting(ada.state()), "Dear customer");
    assert_eq!(ada.state().plan, "gold", "what is not personal stays");
    let alan = customers.load("c-2".to_owned()).await?;
    assert_eq!(greeting(alan.state()), "Dear Alan Turing");

    // What a tool or a bus consumer sees of the forgotten fields.
    let all: Vec<RecordedEvent> = store.read_all(ReadAll::from_start()).try_collect().await?;
    println!("read_all after forget: {}", all[0].payload);
    assert!(all[0].payload.contains(r#""email":{"$forgotten":true}"#));
    let (left,): (i64,) = sqlx::query_as("SELECT count(*) FROM mailing_list")
        .fetch_one(store.inner().pool())
        .await?;
    assert_eq!(left, 1, "only Alan is still on the mailing list");
    Ok(())
}
