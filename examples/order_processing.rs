//! The order-processing exercises of the PostgreSQL learning project, on eventsource:
//! create orders, add and remove items, pay, cancel, a deliberate version conflict handled by a
//! retry, the full history of one order, and an order's state as of an earlier time.
//!
//! Needs PostgreSQL: `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`). The
//! example works in a schema of its own, `order_processing_example`.
//!
//! Run it with `cargo run --example order_processing`.

use eventsource::prelude::*;
use eventsource::{Repository, StreamQuery};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;
use std::collections::BTreeMap;
use std::str::FromStr;

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Order")]
struct OrderCreated {
    customer_id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Order")]
struct ItemAdded {
    sku: String,
    quantity: u32,
    unit_price_cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Order")]
struct ItemRemoved {
    sku: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Order")]
struct OrderPaid {
    amount_cents: i64,
    payment_ref: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Order")]
struct OrderCancelled {
    reason: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum Status {
    #[default]
    New,
    Open,
    Paid,
    Cancelled,
}

#[derive(Default, Debug)]
struct Order {
    customer_id: String,
    items: BTreeMap<String, (u32, i64)>,
    status: Status,
}

#[aggregate(name = "Order", id = String, error = OrderError)]
impl Order {
    #[handles]
    fn created(&mut self, e: &OrderCreated) {
        self.customer_id = e.customer_id.clone();
        self.status = Status::Open;
    }

    #[handles]
    fn item_added(&mut self, e: &ItemAdded) {
        let line = self
            .items
            .entry(e.sku.clone())
            .or_insert((0, e.unit_price_cents));
        line.0 += e.quantity;
    }

    #[handles]
    fn item_removed(&mut self, e: &ItemRemoved) {
        self.items.remove(&e.sku);
    }

    #[handles]
    fn paid(&mut self, _: &OrderPaid) {
        self.status = Status::Paid;
    }

    #[handles]
    fn cancelled(&mut self, _: &OrderCancelled) {
        self.status = Status::Cancelled;
    }
}

/// Why an order refuses a command.
#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error("order is {0:?}, not open")]
    NotOpen(Status),
    #[error("no item {0} in the order")]
    NoSuchItem(String),
    #[error("cannot pay an empty order")]
    Empty,
}

impl Order {
    fn total_cents(&self) -> i64 {
        self.items
            .values()
            .map(|(qty, price)| i64::from(*qty) * price)
            .sum()
    }

    fn ensure_open(&self) -> Result<(), OrderError> {
        match self.status {
            Status::Open => Ok(()),
            other => Err(OrderError::NotOpen(other)),
        }
    }

    fn add_item(
        &self,
        sku: &str,
        quantity: u32,
        unit_price_cents: i64,
    ) -> Result<ItemAdded, OrderError> {
        self.ensure_open()?;
        Ok(ItemAdded {
            sku: sku.into(),
            quantity,
            unit_price_cents,
        })
    }

    fn remove_item(&self, sku: &str) -> Result<ItemRemoved, OrderError> {
        self.ensure_open()?;
        if !self.items.contains_key(sku) {
            return Err(OrderError::NoSuchItem(sku.into()));
        }
        Ok(ItemRemoved { sku: sku.into() })
    }

    fn pay(&self, payment_ref: &str) -> Result<OrderPaid, OrderError> {
        self.ensure_open()?;
        if self.items.is_empty() {
            return Err(OrderError::Empty);
        }
        Ok(OrderPaid {
            amount_cents: self.total_cents(),
            payment_ref: payment_ref.into(),
        })
    }

    fn cancel(&self, reason: &str) -> Result<OrderCancelled, OrderError> {
        self.ensure_open()?;
        Ok(OrderCancelled {
            reason: reason.into(),
        })
    }
}

type Orders = Repository<Order, PostgresEventStore>;

async fn command<E: DomainEvent + eventsource::AppliesTo<Order>>(
    orders: &Orders,
    id: &str,
    decide: impl Fn(&Order) -> Result<E, OrderError>,
) -> Result<(), UpdateError<OrderError>> {
    orders
        .update(id.to_owned(), |order| {
            let event = decide(order)?;
            order.record(event);
            Ok(())
        })
        .await
        .map(drop)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let admin = sqlx::PgPool::connect(&url)
        .await
        .inspect_err(|_| eprintln!("PostgreSQL is needed at {url} (set DATABASE_URL)"))?;
    sqlx::query("CREATE SCHEMA IF NOT EXISTS order_processing_example")
        .execute(&admin)
        .await?;
    let options =
        PgConnectOptions::from_str(&url)?.options([("search_path", "order_processing_example")]);
    let store = PostgresEventStore::connect_with(options).await?;
    let orders = Orders::new(store.clone());
    // A UUID v7 starts with a timestamp; its random tail tells this run's orders apart.
    let run = &Uuid::now_v7().simple().to_string()[24..];

    // Exercise 1: create several orders.
    let ids: Vec<String> = (1..=3).map(|n| format!("order-{run}-{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let mut order = orders.create(id.clone());
        order.record(OrderCreated {
            customer_id: format!("customer-{}", 456 + n),
        });
        orders.save(&mut order).await?;
    }
    println!("created {}", ids.join(", "));
    let id = ids[0].as_str();

    // Exercises 2 and 3: a cart, with items added and removed.
    command(&orders, id, |o| o.add_item("book", 2, 1_500)).await?;
    command(&orders, id, |o| o.add_item("pen", 10, 120)).await?;
    command(&orders, id, |o| o.add_item("lamp", 1, 4_200)).await?;
    let before_changes = chrono::Utc::now();
    command(&orders, id, |o| o.remove_item("lamp")).await?;
    command(&orders, id, |o| o.add_item("pen", 5, 120)).await?;
    match command(&orders, id, |o| o.remove_item("sofa")).await {
        Err(refused) => println!("refused: {refused}"),
        Ok(()) => unreachable!("the order has no sofa"),
    }

    // Exercise 6: a version conflict. Two clerks load the same version; the second save fails,
    // stores nothing, and `update` (which reloads and retries) gets the change through.
    let mut clerk_a = orders.load(id.to_owned()).await?;
    let mut clerk_b = orders.load(id.to_owned()).await?;
    clerk_a.record(clerk_a.state().add_item("stapler", 1, 900)?);
    clerk_b.record(clerk_b.state().add_item("paper", 3, 450)?);
    orders.save(&mut clerk_a).await?;
    match orders.save(&mut clerk_b).await {
        Err(conflict @ eventsource::Error::Concurrency { .. }) => println!("conflict: {conflict}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    command(&orders, id, |o| o.add_item("paper", 3, 450)).await?;

    // Exercise 4: pay. Exercise 7: cancel another order; a paid order cannot be cancelled.
    command(&orders, id, |o| o.pay("PAY-7781")).await?;
    command(&orders, &ids[1], |o| o.add_item("mug", 1, 800)).await?;
    command(&orders, &ids[1], |o| {
        o.cancel("customer changed their mind")
    })
    .await?;
    if let Err(refused) = command(&orders, id, |o| o.cancel("too late")).await {
        println!("refused: {refused}");
    }

    // Exercise 5: the full history of one order.
    let order = orders.load(id.to_owned()).await?;
    println!("\nhistory of {}:", order.stream_id());
    for event in store
        .read_stream(order.stream_id(), StreamQuery::all())
        .await?
    {
        println!(
            "  v{:<2} {:<14} {}",
            event.version, event.event_type, event.payload
        );
    }
    println!(
        "\n{id}: {:?}, {} lines, total {:.2} EUR (version {})",
        order.state().status,
        order.state().items.len(),
        order.state().total_cents() as f64 / 100.0,
        order.version()
    );

    // Challenge: time travel. The order as it was before the lamp was removed, and at version 2.
    let then = orders.load_as_of(id.to_owned(), before_changes).await?;
    let items: Vec<&String> = then.state().items.keys().collect();
    println!(
        "as of {before_changes}: {:?}, items {items:?}",
        then.state().status
    );
    let v2 = orders.load_at(id.to_owned(), 2).await?;
    println!("at version 2: {:?}", v2.state().items);
    let cancelled = orders.load(ids[1].clone()).await?;
    println!("{}: {:?}", ids[1], cancelled.state().status);
    Ok(())
}
