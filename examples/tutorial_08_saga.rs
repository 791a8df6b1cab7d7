//! Tutorial 8: a saga coordinating an order, its payment and the inventory, with compensation.
//!
//! ```sh
//! cargo run --example tutorial_08_saga          # stores to target/tutorial-saga.db
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example tutorial_08_saga
//! ```
//!
//! What it teaches:
//!
//! - A process manager (`ProcessManager`): it reacts to events (an order placed, stock
//!   reserved, a payment charged) by sending commands to other aggregates, run by the same
//!   subscription manager as the projections, with a checkpoint in the database.
//! - Its own state, event-sourced: a `Checkout` aggregate per order records where the saga is,
//!   so a later step (charging after the stock is reserved) knows the amount.
//! - Compensation: out of stock, the order is cancelled; payment declined, the reserved stock is
//!   released first, then the order is cancelled.
//! - Idempotence: each command is sent with `Reaction::send` under a step name, so its events
//!   get ids derived from the triggering event; the saga is stopped and every event is
//!   delivered to it again (as after a crash before its checkpoint), and nothing happens twice.
//!
//! The database is kept: inspect it afterwards with the command line (see docs/cli.md).

use eventsource::prelude::*;
use eventsource::process::{ProcessManager, Reaction};
use eventsource::subscription::Subscriptions;
use eventsource::{AnyStore, CheckpointStore};
use eventsource::{HandlerError, ReadAll, Repository, StreamId, StreamQuery};
use serde::{Deserialize, Serialize};
use std::time::Duration;

// ----- The aggregates the saga coordinates -----

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    sku: String,
    quantity: u32,
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Order")]
struct OrderConfirmed;

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Order")]
struct OrderCancelled {
    reason: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
enum OrderStatus {
    #[default]
    New,
    Placed,
    Confirmed,
    Cancelled(String),
}

#[derive(Default, Debug)]
struct Order {
    status: OrderStatus,
}

#[derive(Debug, thiserror::Error)]
#[error("the order is {0:?}, no longer placed")]
struct NotPlaced(OrderStatus);

#[aggregate(error = NotPlaced)]
impl Order {
    #[handles]
    fn placed(&mut self, _: &OrderPlaced) {
        self.status = OrderStatus::Placed;
    }
    #[handles]
    fn confirmed(&mut self, _: &OrderConfirmed) {
        self.status = OrderStatus::Confirmed;
    }
    #[handles]
    fn cancelled(&mut self, e: &OrderCancelled) {
        self.status = OrderStatus::Cancelled(e.reason.clone());
    }
}

impl Order {
    fn confirm(&self) -> Result<OrderConfirmed, NotPlaced> {
        match self.status {
            OrderStatus::Placed => Ok(OrderConfirmed),
            _ => Err(NotPlaced(self.status.clone())),
        }
    }

    fn cancel(&self, reason: &str) -> Result<OrderCancelled, NotPlaced> {
        match self.status {
            OrderStatus::Placed => Ok(OrderCancelled {
                reason: reason.to_owned(),
            }),
            _ => Err(NotPlaced(self.status.clone())),
        }
    }
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Inventory")]
struct StockAdded {
    quantity: u32,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Inventory")]
struct StockReserved {
    order: Uuid,
    quantity: u32,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Inventory")]
struct StockReleased {
    order: Uuid,
    quantity: u32,
}

#[derive(Default, Debug)]
struct Inventory {
    available: u32,
    reserved: std::collections::BTreeMap<Uuid, u32>,
}

#[derive(Debug, thiserror::Error)]
#[error("out of stock: {wanted} wanted, {available} available")]
struct OutOfStock {
    wanted: u32,
    available: u32,
}

#[aggregate(id = String, error = OutOfStock)]
impl Inventory {
    #[handles]
    fn added(&mut self, e: &StockAdded) {
        self.available += e.quantity;
    }
    #[handles]
    fn reserved(&mut self, e: &StockReserved) {
        self.available -= e.quantity;
        self.reserved.insert(e.order, e.quantity);
    }
    #[handles]
    fn released(&mut self, e: &StockReleased) {
        self.available += e.quantity;
        self.reserved.remove(&e.order);
    }
}

impl Inventory {
    fn reserve(&self, order: Uuid, quantity: u32) -> Result<StockReserved, OutOfStock> {
        if quantity > self.available {
            return Err(OutOfStock {
                wanted: quantity,
                available: self.available,
            });
        }
        Ok(StockReserved { order, quantity })
    }

    /// What releasing an order's reservation records: nothing if it holds none.
    fn release(&self, order: Uuid) -> Option<StockReleased> {
        let quantity = *self.reserved.get(&order)?;
        Some(StockReleased { order, quantity })
    }
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Payment")]
struct PaymentCharged {
    cents: i64,
}

/// A payment per order (same id as the order).
#[derive(Default, Debug)]
struct Payment {
    charged: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("card declined for {0} cents")]
struct Declined(i64);

/// The payment provider declines anything above this.
const CARD_LIMIT: i64 = 50_00;

#[aggregate(error = Declined)]
impl Payment {
    #[handles]
    fn charged(&mut self, e: &PaymentCharged) {
        self.charged += e.cents;
    }
}

impl Payment {
    fn charge(&self, cents: i64) -> Result<PaymentCharged, Declined> {
        if cents > CARD_LIMIT {
            return Err(Declined(cents));
        }
        Ok(PaymentCharged { cents })
    }
}

// ----- The saga's own state: one `Checkout` stream per order -----

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Checkout")]
struct CheckoutStarted {
    sku: String,
    quantity: u32,
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Checkout")]
struct CheckoutCompleted;

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Checkout")]
struct CheckoutCompensated {
    reason: String,
}

#[derive(Default, Debug)]
struct Checkout {
    sku: String,
    quantity: u32,
    cents: i64,
    finished: bool,
}

#[aggregate]
impl Checkout {
    #[handles]
    fn started(&mut self, e: &CheckoutStarted) {
        (self.sku, self.quantity, self.cents) = (e.sku.clone(), e.quantity, e.cents);
    }
    #[handles]
    fn completed(&mut self, _: &CheckoutCompleted) {
        self.finished = true;
    }
    #[handles]
    fn compensated(&mut self, _: &CheckoutCompensated) {
        self.finished = true;
    }
}

// ----- The process manager -----

/// Place -> reserve stock -> charge -> confirm, each step a reaction to the previous step's
/// event; a refusal undoes what was done before it.
struct CheckoutSaga {
    orders: Repository<Order, AnyStore>,
    inventory: Repository<Inventory, AnyStore>,
    payments: Repository<Payment, AnyStore>,
    checkouts: Repository<Checkout, AnyStore>,
}

impl ProcessManager for CheckoutSaga {
    const NAME: &'static str = "checkout_saga";

    fn event_types() -> Vec<&'static str> {
        vec![
            OrderPlaced::EVENT_TYPE,
            StockReserved::EVENT_TYPE,
            PaymentCharged::EVENT_TYPE,
        ]
    }

    async fn react(&self, reaction: &Reaction<'_>) -> Result<(), HandlerError> {
        let stream_id = reaction.event().aggregate_id();
        if let Some(placed) = reaction.decode::<OrderPlaced>()? {
            let order: Uuid = stream_id.parse()?;
            self.on_placed(reaction, order, placed).await
        } else if let Some(reserved) = reaction.decode::<StockReserved>()? {
            self.on_reserved(reaction, reserved).await
        } else if reaction.decode::<PaymentCharged>()?.is_some() {
            let order: Uuid = stream_id.parse()?;
            self.on_charged(reaction, order).await
        } else {
            Ok(())
        }
    }
}

impl CheckoutSaga {
    async fn on_placed(
        &self,
        reaction: &Reaction<'_>,
        order: Uuid,
        placed: OrderPlaced,
    ) -> Result<(), HandlerError> {
        // Remember what the later steps need, in the saga's own stream.
        reaction
            .send(&self.checkouts, order, "start", |checkout| {
                checkout.record(CheckoutStarted {
                    sku: placed.sku.clone(),
                    quantity: placed.quantity,
                    cents: placed.cents,
                });
                Ok(())
            })
            .await?;
        let reserved = reaction
            .send(&self.inventory, placed.sku.clone(), "reserve", |stock| {
                let event = stock.reserve(order, placed.quantity)?;
                stock.record(event);
                Ok(())
            })
            .await;
        match reserved {
            Ok(_) => Ok(()),
            // Nothing was done yet: cancelling the order is the whole compensation.
            Err(UpdateError::Rejected(refused)) => {
                self.compensate(reaction, order, &refused.to_string()).await
            }
            Err(store) => Err(store.into()),
        }
    }

    async fn on_reserved(
        &self,
        reaction: &Reaction<'_>,
        reserved: StockReserved,
    ) -> Result<(), HandlerError> {
        let order = reserved.order;
        let checkout = self.checkouts.load(order).await?;
        let charged = reaction
            .send(&self.payments, order, "charge", |payment| {
                let event = payment.charge(checkout.cents)?;
                payment.record(event);
                Ok(())
            })
            .await;
        match charged {
            Ok(_) => Ok(()),
            Err(UpdateError::Rejected(declined)) => {
                // Undo the reservation, then cancel.
                reaction
                    .send(&self.inventory, checkout.sku.clone(), "release", |stock| {
                        if let Some(event) = stock.release(order) {
                            stock.record(event);
                        }
                        Ok(())
                    })
                    .await?;
                self.compensate(reaction, order, &declined.to_string())
                    .await
            }
            Err(store) => Err(store.into()),
        }
    }

    async fn on_charged(&self, reaction: &Reaction<'_>, order: Uuid) -> Result<(), HandlerError> {
        reaction
            .send(&self.orders, order, "confirm", |o| {
                let event = o.confirm()?;
                o.record(event);
                Ok(())
            })
            .await?;
        reaction
            .send(&self.checkouts, order, "complete", |checkout| {
                checkout.record(CheckoutCompleted);
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn compensate(
        &self,
        reaction: &Reaction<'_>,
        order: Uuid,
        reason: &str,
    ) -> Result<(), HandlerError> {
        let cancelled = reaction
            .send(&self.orders, order, "cancel", |o| {
                let event = o.cancel(reason)?;
                o.record(event);
                Ok(())
            })
            .await?;
        if cancelled.already_applied() {
            println!("  order {order}: cancelled already (a redelivered event), nothing done");
        } else {
            println!("  order {order} cancelled: {reason}");
        }
        reaction
            .send(&self.checkouts, order, "compensated", |checkout| {
                checkout.record(CheckoutCompensated {
                    reason: reason.to_owned(),
                });
                Ok(())
            })
            .await?;
        Ok(())
    }
}

fn saga(store: &AnyStore) -> CheckoutSaga {
    CheckoutSaga {
        orders: Order::repository(store.clone()),
        inventory: Inventory::repository(store.clone()),
        payments: Payment::repository(store.clone()),
        checkouts: Checkout::repository(store.clone()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = open_store("tutorial-saga").await?;
    let orders = Order::repository(store.clone());
    let inventory = Inventory::repository(store.clone());

    // Three keyboards in stock.
    let mut keyboards = inventory.create("keyboard");
    keyboards.record(StockAdded { quantity: 3 });
    inventory.save(&mut keyboards).await?;

    // The saga runs in the background, like a projection.
    let mut subscriptions = Subscriptions::new(store.clone());
    subscriptions.add_process(saga(&store));
    let running = subscriptions.start();

    // Three customers order: one is served, one asks for more than is left, one's card declines.
    let mut placed = Vec::new();
    for (name, quantity, cents) in [
        ("served", 2, 30_00),
        ("out of stock", 5, 20_00),
        ("card declined", 1, 80_00),
    ] {
        let id = Uuid::now_v7();
        let mut order = orders.create(id);
        order.record(OrderPlaced {
            sku: "keyboard".into(),
            quantity,
            cents,
        });
        orders.save(&mut order).await?;
        println!("order {id} placed ({name}): {quantity} keyboard(s), {cents} cents");
        placed.push((name, id));
    }

    // Wait until every order has reached its end: confirmed or cancelled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for (_, id) in &placed {
        while orders.load(*id).await?.status == OrderStatus::Placed {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the saga did not finish"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    running.shutdown().await;

    let status = async |i: usize| -> eventsource::Result<OrderStatus> {
        Ok(orders.load(placed[i].1).await?.status.clone())
    };
    println!("\nwhere each order ended:");
    for (i, (name, id)) in placed.iter().enumerate() {
        println!("  {name:>13}: {id} {:?}", status(i).await?);
    }
    assert_eq!(status(0).await?, OrderStatus::Confirmed);
    assert_eq!(
        status(1).await?,
        OrderStatus::Cancelled("out of stock: 5 wanted, 1 available".into())
    );
    assert_eq!(
        status(2).await?,
        OrderStatus::Cancelled("card declined for 8000 cents".into())
    );
    let keyboards = inventory.load("keyboard").await?;
    println!(
        "  keyboards available: {} (the declined order's reservation released)",
        keyboards.available
    );
    assert_eq!(keyboards.available, 1);
    let checkouts = Checkout::repository(store.clone());
    for (_, id) in &placed {
        assert!(checkouts.load(*id).await?.finished, "each checkout ends");
    }

    // Every event was handled once. Now deliver them all again, as a crash between the saga's
    // commands and its checkpoint would: the saga reacts again, and every step finds its events
    // already stored under their derived ids.
    // (On PostgreSQL the log is readable up to the oldest running transaction: wait for ours.)
    let last = store.log_head().await?.last;
    store.wait_for(last, Duration::from_secs(10)).await?;
    let before = store.count(ReadAll::from_start()).await?;
    store.delete_checkpoint(CheckoutSaga::NAME).await?;
    let mut subscriptions = Subscriptions::new(store.clone());
    subscriptions.add_process(saga(&store));
    let running = subscriptions.start();
    let head = store.log_head().await?.last;
    running.wait_until(head, Duration::from_secs(10)).await?;
    running.shutdown().await;
    let last = store.log_head().await?.last;
    store.wait_for(last, Duration::from_secs(10)).await?;
    let after = store.count(ReadAll::from_start()).await?;
    println!("\nevery event delivered again: {before} events stored before, {after} after");
    assert_eq!(before, after, "a redelivered event acted twice");
    assert_eq!(inventory.load("keyboard").await?.available, 1);

    // The saga's commands carry where they came from.
    let confirmed = store
        .read_stream(
            &StreamId::new("Order", placed[0].1.to_string())?,
            StreamQuery::all(),
        )
        .await?;
    let (trigger, confirmation) = (&confirmed[0], confirmed.last().unwrap());
    assert_eq!(confirmation.event_type, "OrderConfirmed");
    assert_eq!(
        confirmation.metadata.correlation_id,
        Some(trigger.event_id),
        "the whole checkout shares the order's correlation id"
    );
    println!(
        "the confirmation of order {} is in correlation {}",
        placed[0].1, trigger.event_id
    );
    println!("\nsaga example OK");
    Ok(())
}

// ----- Plumbing -----

#[path = "shared/store.rs"]
mod store;
use store::open_store;
