//! Process managers on every store: a checkout saga (reserve stock, charge, confirm) with its
//! compensations, idempotent commands, redelivery, and a crash between reacting and
//! checkpointing.

use eventsource::CheckpointStore;
use eventsource::prelude::*;
use eventsource::process::{ProcessManager, Reaction};
use eventsource::repository::Once;
use eventsource::subscription::{RunnerOptions, Subscriptions};
use eventsource::{
    ExpectedVersion, HandlerError, Position, ReadAll, Repository, Root, StreamId, StreamQuery,
};
use eventsource_tests::databases;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

// ----- The domain: orders, stock, payments -----

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    sku: String,
    quantity: u32,
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "Order")]
struct OrderConfirmed;

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "Order")]
struct OrderCancelled {
    reason: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
enum Status {
    #[default]
    New,
    Placed,
    Confirmed,
    Cancelled(String),
}

#[derive(Default, Debug)]
struct Order {
    status: Status,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("the order is {0:?}, not placed")]
struct NotPlaced(Status);

#[aggregate(id = String, error = NotPlaced)]
impl Order {
    #[handles]
    fn placed(&mut self, _: &OrderPlaced) {
        self.status = Status::Placed;
    }
    #[handles]
    fn confirmed(&mut self, _: &OrderConfirmed) {
        self.status = Status::Confirmed;
    }
    #[handles]
    fn cancelled(&mut self, e: &OrderCancelled) {
        self.status = Status::Cancelled(e.reason.clone());
    }
}

impl Order {
    fn placed_only(&self) -> Result<(), NotPlaced> {
        match self.status {
            Status::Placed => Ok(()),
            _ => Err(NotPlaced(self.status.clone())),
        }
    }
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "Inventory")]
struct StockAdded {
    quantity: u32,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "Inventory")]
struct StockReserved {
    order: String,
    quantity: u32,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "Inventory")]
struct StockReleased {
    order: String,
    quantity: u32,
}

#[derive(Default, Debug)]
struct Inventory {
    available: u32,
    reserved: BTreeMap<String, u32>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
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
        *self.reserved.entry(e.order.clone()).or_default() += e.quantity;
    }
    #[handles]
    fn released(&mut self, e: &StockReleased) {
        self.available += e.quantity;
        self.reserved.remove(&e.order);
    }
}

impl Inventory {
    fn reserve(&self, order: &str, quantity: u32) -> Result<StockReserved, OutOfStock> {
        if quantity > self.available {
            return Err(OutOfStock {
                wanted: quantity,
                available: self.available,
            });
        }
        Ok(StockReserved {
            order: order.to_owned(),
            quantity,
        })
    }

    fn release(&self, order: &str) -> Option<StockReleased> {
        self.reserved.get(order).map(|&quantity| StockReleased {
            order: order.to_owned(),
            quantity,
        })
    }
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "Payment")]
struct PaymentCharged {
    cents: i64,
}

#[derive(Default, Debug)]
struct Payment {
    charged: i64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("payment of {0} cents declined")]
struct Declined(i64);

/// Payments above this are declined.
const CARD_LIMIT: i64 = 1_000;

#[aggregate(id = String, error = Declined)]
impl Payment {
    #[handles]
    fn charged(&mut self, e: &PaymentCharged) {
        self.charged += e.cents;
    }
}

impl Payment {
    fn charge(&self, cents: i64) -> Result<PaymentCharged, Declined> {
        if self.charged + cents > CARD_LIMIT {
            return Err(Declined(cents));
        }
        Ok(PaymentCharged { cents })
    }
}

// ----- The saga -----

/// Reserve the stock, charge, confirm; on out-of-stock cancel the order, on a declined payment
/// release the stock and cancel. Counts its deliveries, and can hang (as a crash would find it)
/// after one step of one order.
struct Checkout<S> {
    orders: Repository<Order, S>,
    inventory: Repository<Inventory, S>,
    payments: Repository<Payment, S>,
    deliveries: Mutex<BTreeMap<String, usize>>,
    hang_after: Option<(String, &'static str)>,
}

impl<S: EventStore + Clone> Checkout<S> {
    fn new(store: &S) -> Self {
        Checkout {
            orders: Order::repository(store.clone()),
            inventory: Inventory::repository(store.clone()),
            payments: Payment::repository(store.clone()),
            deliveries: Mutex::default(),
            hang_after: None,
        }
    }

    fn hanging_after(mut self, order: &str, step: &'static str) -> Self {
        self.hang_after = Some((order.to_owned(), step));
        self
    }

    fn deliveries(&self) -> BTreeMap<String, usize> {
        self.deliveries.lock().unwrap().clone()
    }

    /// Never returns if the saga is set to hang after this step of this order.
    async fn step_done(&self, order: &str, step: &str) {
        if self
            .hang_after
            .as_ref()
            .is_some_and(|(o, s)| o == order && *s == step)
        {
            std::future::pending::<()>().await;
        }
    }
}

impl<S: EventStore + Clone + 'static> ProcessManager for Checkout<S> {
    const NAME: &'static str = "checkout";

    fn event_types() -> Vec<&'static str> {
        vec![OrderPlaced::EVENT_TYPE]
    }

    async fn react(&self, reaction: &Reaction<'_>) -> Result<(), HandlerError> {
        let Some(placed) = reaction.decode::<OrderPlaced>()? else {
            return Ok(());
        };
        let order = reaction.event().aggregate_id().to_owned();
        *self
            .deliveries
            .lock()
            .unwrap()
            .entry(order.clone())
            .or_default() += 1;

        let reserved = reaction
            .send(&self.inventory, placed.sku.clone(), "reserve", |stock| {
                let event = stock.reserve(&order, placed.quantity)?;
                stock.record(event);
                Ok(())
            })
            .await;
        match reserved {
            Ok(_) => {}
            Err(UpdateError::Rejected(out_of_stock)) => {
                let reason = out_of_stock.to_string();
                return self.cancel(reaction, &order, reason).await;
            }
            Err(other) => return Err(other.into()),
        }
        self.step_done(&order, "reserve").await;

        let charged = reaction
            .send(&self.payments, order.clone(), "charge", |payment| {
                let event = payment.charge(placed.cents)?;
                payment.record(event);
                Ok(())
            })
            .await;
        match charged {
            Ok(_) => {}
            Err(UpdateError::Rejected(declined)) => {
                // Compensation: give the stock back, then cancel.
                reaction
                    .send(&self.inventory, placed.sku.clone(), "release", |stock| {
                        if let Some(event) = stock.release(&order) {
                            stock.record(event);
                        }
                        Ok(())
                    })
                    .await?;
                return self.cancel(reaction, &order, declined.to_string()).await;
            }
            Err(other) => return Err(other.into()),
        }
        self.step_done(&order, "charge").await;

        reaction
            .send(&self.orders, order.clone(), "confirm", |o| {
                o.placed_only()?;
                o.record(OrderConfirmed);
                Ok(())
            })
            .await?;
        self.step_done(&order, "confirm").await;
        Ok(())
    }
}

impl<S: EventStore + Clone + 'static> Checkout<S> {
    async fn cancel(
        &self,
        reaction: &Reaction<'_>,
        order: &str,
        reason: String,
    ) -> Result<(), HandlerError> {
        reaction
            .send(&self.orders, order.to_owned(), "cancel", |o| {
                o.placed_only()?;
                o.record(OrderCancelled {
                    reason: reason.clone(),
                });
                Ok(())
            })
            .await?;
        Ok(())
    }
}

// ----- Helpers -----

fn fast() -> RunnerOptions {
    RunnerOptions::default()
        .backoff(Duration::from_millis(1), Duration::from_millis(10))
        .poll_interval(Duration::from_millis(50))
        .lease_retry(Duration::from_millis(20))
}

async fn stock<S: EventStore + Clone>(store: &S, sku: &str, quantity: u32) {
    let repo = Inventory::repository(store.clone());
    let mut item = repo.create(sku);
    item.record(StockAdded { quantity });
    repo.save(&mut item).await.unwrap();
}

async fn place<S: EventStore + Clone>(
    store: &S,
    order: &str,
    sku: &str,
    quantity: u32,
    cents: i64,
) -> Position {
    let repo = Order::repository(store.clone());
    let mut root = repo.create(order);
    root.record(OrderPlaced {
        sku: sku.to_owned(),
        quantity,
        cents,
    });
    repo.save(&mut root).await.unwrap().last_position
}

async fn status<S: EventStore + Clone>(store: &S, order: &str) -> Status {
    Order::repository(store.clone())
        .load(order)
        .await
        .unwrap()
        .status
        .clone()
}

async fn available<S: EventStore + Clone>(store: &S, sku: &str) -> u32 {
    Inventory::repository(store.clone())
        .load(sku)
        .await
        .unwrap()
        .available
}

async fn charged<S: EventStore + Clone>(store: &S, order: &str) -> Option<i64> {
    Payment::repository(store.clone())
        .try_load(order)
        .await
        .unwrap()
        .map(|p| p.charged)
}

/// Every stored event, as (stream, type): what a duplicate effect would add to.
async fn log<S: EventStore>(store: &S) -> Vec<(String, String)> {
    use futures::StreamExt;
    // PostgreSQL reads up to the oldest transaction still running anywhere: wait for ours.
    let last = store.log_head().await.unwrap().last;
    store.wait_for(last, Duration::from_secs(10)).await.unwrap();
    store
        .read_all(ReadAll::from_start())
        .map(|e| {
            let e = e.unwrap();
            (e.stream.to_string(), e.event_type)
        })
        .collect()
        .await
}

/// Starts the saga on `store`, waits until it has reacted to everything up to `until`.
async fn run<S>(
    store: &S,
    saga: Checkout<S>,
    until: Position,
) -> (
    eventsource::subscription::RunningSubscriptions,
    eventsource::subscription::Handle<Checkout<S>>,
)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let handle = subscriptions.add_process(saga);
    let running = subscriptions.start();
    running
        .wait_until(until, Duration::from_secs(10))
        .await
        .unwrap();
    (running, handle)
}

// ----- The cases, on every store -----

/// Stock reserved, payment charged, order confirmed; the commands' events are caused by the
/// order's event and in its correlation.
async fn happy_path<S: EventStore + CheckpointStore + Clone + 'static>(store: &S) {
    stock(store, "sku-1", 10).await;
    let placed = place(store, "o-1", "sku-1", 2, 500).await;
    let (running, _) = run(store, Checkout::new(store), placed).await;
    running.shutdown().await;

    assert_eq!(status(store, "o-1").await, Status::Confirmed);
    assert_eq!(available(store, "sku-1").await, 8);
    assert_eq!(charged(store, "o-1").await, Some(500));

    let order_events = store
        .read_stream(&StreamId::new("Order", "o-1").unwrap(), StreamQuery::all())
        .await
        .unwrap();
    let trigger = &order_events[0];
    let reserved = store
        .read_stream(
            &StreamId::new("Inventory", "sku-1").unwrap(),
            StreamQuery::all(),
        )
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(reserved.event_type, StockReserved::EVENT_TYPE);
    assert_eq!(reserved.metadata.causation_id, Some(trigger.event_id));
    assert_eq!(reserved.metadata.correlation_id, Some(trigger.event_id));
    assert_eq!(
        reserved.event_id,
        eventsource::event::derived_event_id(
            Reaction::new("checkout", trigger).step_key("reserve"),
            0
        ),
        "the command's event id is derived from the trigger and the step"
    );
}

/// Out of stock: the order is cancelled, nothing charged. Payment declined: the reserved stock
/// is released and the order cancelled.
async fn compensation<S: EventStore + CheckpointStore + Clone + 'static>(store: &S) {
    stock(store, "sku-1", 3).await;
    place(store, "too-many", "sku-1", 5, 100).await;
    let last = place(store, "too-dear", "sku-1", 2, CARD_LIMIT + 1).await;
    let (running, _) = run(store, Checkout::new(store), last).await;
    running.shutdown().await;

    assert_eq!(
        status(store, "too-many").await,
        Status::Cancelled("out of stock: 5 wanted, 3 available".into())
    );
    assert_eq!(
        status(store, "too-dear").await,
        Status::Cancelled(format!("payment of {} cents declined", CARD_LIMIT + 1))
    );
    assert_eq!(
        available(store, "sku-1").await,
        3,
        "the reservation released"
    );
    assert_eq!(charged(store, "too-many").await, None);
    assert_eq!(charged(store, "too-dear").await, None);
    let inventory: Vec<_> = log(store)
        .await
        .into_iter()
        .filter(|(s, _)| s.starts_with("Inventory"))
        .map(|(_, t)| t)
        .collect();
    assert_eq!(
        inventory,
        ["StockAdded", "StockReserved", "StockReleased"],
        "reserved, then released by the compensation"
    );
}

/// Every event delivered again (the checkpoint rewound to the start, as a lost checkpoint
/// table would): every reaction runs again, and nothing is stored twice, the compensated orders
/// included. The last unit of stock is reserved, so the second `reserve` of that order is
/// refused, and must still count as done rather than cancel the order.
async fn redelivery_does_not_act_twice<S: EventStore + CheckpointStore + Clone + 'static>(
    store: &S,
) {
    stock(store, "sku-1", 3).await;
    place(store, "a", "sku-1", 1, 100).await;
    place(store, "too-many", "sku-1", 9, 100).await;
    place(store, "too-dear", "sku-1", 1, CARD_LIMIT + 1).await;
    let last = place(store, "last-unit", "sku-1", 2, 100).await;
    let (running, first) = run(store, Checkout::new(store), last).await;
    running.shutdown().await;
    let before = log(store).await;
    assert_eq!(first.manager().deliveries().values().sum::<usize>(), 4);
    assert_eq!(available(store, "sku-1").await, 0);
    assert_eq!(status(store, "last-unit").await, Status::Confirmed);

    store.delete_checkpoint("checkout").await.unwrap();
    let (running, second) = run(store, Checkout::new(store), last).await;
    running.shutdown().await;
    assert_eq!(
        second.manager().deliveries(),
        first.manager().deliveries(),
        "each order delivered again"
    );
    assert_eq!(log(store).await, before, "no event stored twice");
    assert_eq!(status(store, "a").await, Status::Confirmed);
    assert_eq!(status(store, "last-unit").await, Status::Confirmed);
    assert_eq!(available(store, "sku-1").await, 0);
    assert_eq!(charged(store, "last-unit").await, Some(100));
}

/// The crash: the saga has sent its commands for an order (all of them, or only the first) and
/// the process dies before the checkpoint moves past the order's event. After the restart the
/// event is delivered again, the one before it is not, and no command acts twice.
async fn crash_between_reacting_and_checkpointing<S>(store: &S, hang_after: &'static str)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    stock(store, "sku-1", 3).await;
    let first = place(store, "first", "sku-1", 1, 100).await;
    // The last two units: a second `reserve` would be refused (out of stock).
    let crashed = place(store, "crashed", "sku-1", 2, 300).await;

    let saga = Checkout::new(store).hanging_after("crashed", hang_after);
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast());
    let handle = subscriptions.add_process(saga);
    let running = subscriptions.start();
    // Wait until the step's effect is stored, while the reaction hangs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while available(store, "sku-1").await != 0
        || (hang_after == "confirm" && status(store, "crashed").await != Status::Confirmed)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the saga did not react"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        store.checkpoint("checkout").await.unwrap(),
        Some(first),
        "the checkpoint is before the crashed order's event"
    );
    running.abort();
    assert_eq!(handle.manager().deliveries()["crashed"], 1);
    let stored_before_restart = log(store).await;

    let (running, restarted) = run(store, Checkout::new(store), crashed).await;
    running.shutdown().await;
    assert_eq!(
        restarted.manager().deliveries(),
        BTreeMap::from([("crashed".to_owned(), 1)]),
        "the crashed order's event delivered again, and only it"
    );
    assert_eq!(store.checkpoint("checkout").await.unwrap(), Some(crashed));
    assert_eq!(status(store, "crashed").await, Status::Confirmed);
    assert_eq!(available(store, "sku-1").await, 0, "stock reserved once");
    assert_eq!(charged(store, "crashed").await, Some(300), "charged once");
    let after = log(store).await;
    if hang_after == "confirm" {
        assert_eq!(after, stored_before_restart, "nothing stored twice");
    }
    let count = |t: &str| after.iter().filter(|(_, e)| e == t).count();
    assert_eq!(count("StockReserved"), 2);
    assert_eq!(count("PaymentCharged"), 2);
    assert_eq!(count("OrderConfirmed"), 2);
}

async fn crash_after_the_last_step<S: EventStore + CheckpointStore + Clone + 'static>(store: &S) {
    crash_between_reacting_and_checkpointing(store, "confirm").await;
}

async fn crash_after_the_first_step<S: EventStore + CheckpointStore + Clone + 'static>(store: &S) {
    crash_between_reacting_and_checkpointing(store, "reserve").await;
}

/// A reaction that keeps failing is dead-lettered, the saga goes on, and replaying the dead
/// letter once the cause is gone reacts to it.
async fn failing_reaction_is_dead_lettered<S: EventStore + CheckpointStore + Clone + 'static>(
    store: &S,
) {
    // An order event whose payload the saga cannot decode.
    let stream = StreamId::new("Order", "broken").unwrap();
    let bad = eventsource::NewEvent::from_json(OrderPlaced::EVENT_TYPE, 1, r#"{"sku": 7}"#);
    store
        .append(&stream, ExpectedVersion::NoStream, vec![bad])
        .await
        .unwrap();
    stock(store, "sku-1", 1).await;
    let last = place(store, "fine", "sku-1", 1, 100).await;
    let mut subscriptions = Subscriptions::new(store.clone()).with_options(fast().max_attempts(2));
    subscriptions.add_process(Checkout::new(store));
    let running = subscriptions.start();
    running
        .wait_until(last, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(status(store, "fine").await, Status::Confirmed);
    let letters = store.dead_letters("checkout").await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 2);
    assert_eq!(running.replay_dead_letters("checkout").await.unwrap(), 1);
    assert!(running.rebuild("checkout").await.is_err(), "not rebuilt");
    running.shutdown().await;
}

macro_rules! backend_tests {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = databases::$backend().await else { return };
                    super::$case(db.store()).await;
                }
            )*
        }
    };
}

macro_rules! every_backend {
    ($($case:ident),* $(,)?) => {
        backend_tests!(memory: $($case),*);
        backend_tests!(sqlite: $($case),*);
        backend_tests!(postgres: $($case),*);
    };
}

every_backend!(
    happy_path,
    compensation,
    redelivery_does_not_act_twice,
    crash_after_the_last_step,
    crash_after_the_first_step,
    failing_reaction_is_dead_lettered,
);

// ----- Without the runner -----

/// A process manager is unit-tested by calling `react` itself: twice, for a redelivery.
#[tokio::test]
async fn reacting_directly_twice_acts_once() {
    let store = InMemoryEventStore::new();
    stock(&store, "sku-1", 5).await;
    place(&store, "o-1", "sku-1", 2, 100).await;
    let trigger = store
        .read_stream(&StreamId::new("Order", "o-1").unwrap(), StreamQuery::all())
        .await
        .unwrap()
        .remove(0);
    let saga = Checkout::new(&store);
    for _ in 0..2 {
        saga.react(&Reaction::new(
            Checkout::<InMemoryEventStore>::NAME,
            &trigger,
        ))
        .await
        .unwrap();
    }
    assert_eq!(saga.deliveries()["o-1"], 2);
    assert_eq!(status(&store, "o-1").await, Status::Confirmed);
    assert_eq!(available(&store, "sku-1").await, 3);
    assert_eq!(charged(&store, "o-1").await, Some(100));
    assert_eq!(
        log(&store).await.len(),
        5,
        "stock, order, reserved, charged, confirmed"
    );
}

// ----- update_once on its own -----

#[tokio::test]
async fn update_once_applies_a_key_once() {
    let store = InMemoryEventStore::new();
    stock(&store, "sku-1", 1).await;
    let repo = Inventory::repository(store.clone());
    let key = Uuid::now_v7();
    let reserve = |stock: &mut Root<Inventory>| {
        let event = stock.reserve("o", 1)?;
        stock.record(event);
        Ok(())
    };
    let first = repo
        .update_once("sku-1", key, Metadata::new(), reserve)
        .await
        .unwrap();
    assert_eq!(first, Once::Applied(()));
    // Again under the same key: refused by the state (no stock left), still recognised.
    let again = repo
        .update_once("sku-1", key, Metadata::new(), reserve)
        .await
        .unwrap();
    assert_eq!(again, Once::AlreadyApplied);
    // Under another key, the refusal is the command's.
    let other = repo
        .update_once("sku-1", Uuid::now_v7(), Metadata::new(), reserve)
        .await;
    assert!(matches!(
        other,
        Err(UpdateError::Rejected(OutOfStock { .. }))
    ));
    assert_eq!(repo.load("sku-1").await.unwrap().version(), 2);
}

#[tokio::test]
async fn update_once_recognises_events_recorded_again() {
    let store = InMemoryEventStore::new();
    let repo = Payment::repository(store.clone());
    let key = Uuid::now_v7();
    // Creates the aggregate on first use.
    for expected in [
        Once::Applied(()),
        Once::AlreadyApplied,
        Once::AlreadyApplied,
    ] {
        let outcome = repo
            .update_once("p", key, Metadata::new(), |payment| {
                payment.record(PaymentCharged { cents: 10 });
                payment.record(PaymentCharged { cents: 20 });
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(outcome, expected);
    }
    let payment = repo.load("p").await.unwrap();
    assert_eq!((payment.charged, payment.version()), (30, 2));
}

#[test]
fn step_keys_are_deterministic_and_distinct() {
    let event = eventsource::RecordedEvent::new(
        StreamId::new("Order", "o").unwrap(),
        1,
        Position::new(1),
        eventsource::NewEvent::from_json("OrderPlaced", 1, "{}"),
    );
    let a = Reaction::new("checkout", &event);
    assert_eq!(a.step_key("reserve"), a.step_key("reserve"));
    assert_ne!(a.step_key("reserve"), a.step_key("charge"));
    assert_ne!(
        a.step_key("reserve"),
        Reaction::new("shipping", &event).step_key("reserve")
    );
    // Stable across releases: a stored id must be derived the same way after an upgrade.
    let fixed = eventsource::event::derived_event_id(Uuid::nil(), 0);
    assert_eq!(fixed.get_version_num(), 5);
    assert_eq!(
        fixed.to_string(),
        "d3399b72-62fb-56cb-9ed0-53d68db9291c",
        "UUID v5 of index 0 (8 bytes, big-endian) in the nil namespace"
    );
}

/// A process that acts on one event in twenty: it stores its checkpoint after that reaction
/// and at the end of each page, not after every event it ignores.
struct OneInTwenty {
    reacted: Mutex<u32>,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(name = "proc.Tick")]
struct Tick {
    n: u32,
}

impl ProcessManager for OneInTwenty {
    const NAME: &'static str = "one_in_twenty";

    fn event_types() -> Vec<&'static str> {
        vec![Tick::EVENT_TYPE]
    }

    async fn react(&self, reaction: &Reaction<'_>) -> Result<(), HandlerError> {
        let Some(tick) = reaction.decode::<Tick>()? else {
            return Ok(());
        };
        if tick.n % 20 == 19 {
            let _key = reaction.step_key("act");
            *self.reacted.lock().unwrap() += 1;
        }
        Ok(())
    }
}

#[tokio::test]
async fn ignored_events_cost_no_checkpoint_each() {
    let db = databases::sqlite().await.unwrap();
    let store = db.store().clone();
    sqlx::raw_sql(
        "CREATE TABLE checkpoint_writes (n INTEGER NOT NULL); \
         INSERT INTO checkpoint_writes VALUES (0); \
         CREATE TRIGGER count_checkpoint_inserts AFTER INSERT ON checkpoints \
         BEGIN UPDATE checkpoint_writes SET n = n + 1; END; \
         CREATE TRIGGER count_checkpoint_updates AFTER UPDATE ON checkpoints \
         BEGIN UPDATE checkpoint_writes SET n = n + 1; END;",
    )
    .execute(store.writer_pool())
    .await
    .unwrap();
    let ticks: Vec<eventsource::NewEvent> = (0..40)
        .map(|n| eventsource::NewEvent::new(&Tick { n }).unwrap())
        .collect();
    let appended = store
        .append(
            &StreamId::new("Clock", "c").unwrap(),
            ExpectedVersion::NoStream,
            ticks,
        )
        .await
        .unwrap();
    let mut subscriptions =
        Subscriptions::new(store.clone()).with_options(RunnerOptions::default().batch_size(100));
    let handle = subscriptions.add_process(OneInTwenty {
        reacted: Mutex::new(0),
    });
    let running = subscriptions.start();
    running
        .wait_until(appended.last_position, Duration::from_secs(10))
        .await
        .unwrap();
    running.shutdown().await;
    assert_eq!(*handle.manager().reacted.lock().unwrap(), 2);
    let (writes,): (i64,) = sqlx::query_as("SELECT n FROM checkpoint_writes")
        .fetch_one(store.writer_pool())
        .await
        .unwrap();
    // One after each of the two reactions that acted, at most one at the end of the page.
    assert!(writes <= 3, "{writes} checkpoint writes for 40 events");
    assert_eq!(
        store.checkpoint(OneInTwenty::NAME).await.unwrap(),
        Some(appended.last_position)
    );
}
