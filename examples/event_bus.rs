//! An order service publishing its events through the relay, and two services consuming them
//! over a bus: notifications (every order event) and inventory (only placed orders).
//!
//! What it teaches: the event log as the outbox (the relay publishes only committed events, at
//! least once, in order), consumer groups, acknowledgements, de-duplication by event id, typed
//! delivery through `#[projection]` handlers.
//!
//! Run it with `cargo run --example event_bus --features brokers` (the in-process bus), or name a broker:
//! `cargo run --example event_bus --features brokers -- --bus redis` (or `rabbitmq`, `nats`, `kafka`; the servers at
//! `REDIS_URL`, `AMQP_URL`, `NATS_URL`, `KAFKA_BOOTSTRAP_SERVERS`, defaulting to the local
//! ports).

use eventsource::bus::kafka::KafkaBus;
use eventsource::bus::nats::NatsBus;
use eventsource::bus::rabbitmq::RabbitMqBus;
use eventsource::bus::redis::RedisBus;
use eventsource::bus::{BusConsumer, ConsumerGroup, EventBus, InMemoryBus, Relay};
use eventsource::prelude::*;
use eventsource::subscription::Subscriptions;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "shop.OrderPlaced", aggregate = "Order")]
struct OrderPlaced {
    email: String,
    sku: String,
    quantity: u32,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "shop.OrderShipped", aggregate = "Order")]
struct OrderShipped {
    carrier: String,
}

#[derive(Default, Debug)]
struct Order {
    placed: bool,
    shipped: bool,
}

#[aggregate(name = "Order", id = String)]
impl Order {
    #[handles]
    fn placed(&mut self, _: &OrderPlaced) {
        self.placed = true;
    }
    #[handles]
    fn shipped(&mut self, _: &OrderShipped) {
        self.shipped = true;
    }
}

/// The inventory service's state: units reserved per SKU, fed by typed handlers.
#[derive(Default, Debug)]
struct Reservations {
    units: BTreeMap<String, u32>,
}

#[projection(name = "inventory")]
impl Reservations {
    #[handles]
    fn placed(&mut self, e: &OrderPlaced) {
        *self.units.entry(e.sku.clone()).or_default() += e.quantity;
    }
}

/// The notification service: one email per order event, never two for one event.
async fn notifications<C: BusConsumer>(mut consumer: C, expected: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut sent = Vec::new();
    while sent.len() < expected {
        let delivery = consumer.next().await.expect("a delivery");
        // At least once: a redelivered event is acknowledged again and not acted on twice.
        if seen.insert(delivery.event().event_id) {
            let text = if let Ok(placed) = delivery.decode::<OrderPlaced>() {
                format!(
                    "to {}: we got your order of {} x {}",
                    placed.email, placed.quantity, placed.sku
                )
            } else if let Ok(shipped) = delivery.decode::<OrderShipped>() {
                format!(
                    "order {} left with {}",
                    delivery.event().aggregate_id(),
                    shipped.carrier
                )
            } else {
                format!("(no template for {})", delivery.event().event_type)
            };
            sent.push(text);
        }
        consumer.ack(&delivery).await.expect("acknowledged");
    }
    sent
}

/// The inventory service: reservations per SKU.
async fn inventory<C: BusConsumer>(mut consumer: C, expected: usize) -> Reservations {
    let mut seen = HashSet::new();
    let mut reservations = Reservations::default();
    while seen.len() < expected {
        let delivery = consumer.next().await.expect("a delivery");
        if seen.insert(delivery.event().event_id) {
            delivery.dispatch(&mut reservations).expect("handled");
        }
        consumer.ack(&delivery).await.expect("acknowledged");
    }
    reservations
}

async fn run<B: EventBus + Clone>(bus: B) -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("eventsource-event-bus-{}.db", Uuid::now_v7()));
    let store = SqliteEventStore::open(&path).await?;
    println!("event store: {}", path.display());

    // The consuming services join their groups (a group receives what is published after).
    let notify = bus
        .subscribe(&ConsumerGroup::new("notifications").aggregate_types(["Order"]))
        .await?;
    let stock = bus
        .subscribe(&ConsumerGroup::new("inventory").event::<OrderPlaced>())
        .await?;

    // The order service: the relay publishes what its repository commits.
    let mut subscriptions = Subscriptions::new(store.clone());
    let relay = subscriptions.add_relay(Relay::new("order-relay", bus.clone()));
    let running = subscriptions.start();
    let orders = Order::repository(store.clone());
    let items = [
        ("ada@example.com", "kettle", 1),
        ("bob@example.com", "mug", 4),
        ("cy@example.com", "mug", 2),
    ];
    for (n, (email, sku, quantity)) in items.iter().enumerate() {
        let id = format!("order-{}", n + 1);
        let mut order = orders.create(id.clone());
        order.record(OrderPlaced {
            email: (*email).into(),
            sku: (*sku).into(),
            quantity: *quantity,
        });
        orders.save(&mut order).await?;
        if n == 0 {
            orders
                .update(id, |order| {
                    order.record(OrderShipped {
                        carrier: "DHL".into(),
                    });
                    Ok(())
                })
                .await?;
        }
    }

    let (sent, reserved) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(notifications(notify, 4), inventory(stock, 3))
    })
    .await?;
    // Every committed event confirmed by the broker: the relay's checkpoint is at the head.
    let head = store.log_head().await?.last;
    running.wait_until(head, Duration::from_secs(10)).await?;
    for line in &sent {
        println!("notifications: {line}");
    }
    println!("inventory:     reserved {:?}", reserved.units);
    println!("relay:         {:?}", relay.status());
    assert_eq!(sent.len(), 4, "three placed, one shipped");
    assert_eq!(relay.status().checkpoint, Some(head));
    assert_eq!(reserved.units.get("mug"), Some(&6));
    assert_eq!(reserved.units.get("kettle"), Some(&1));
    running.shutdown().await;
    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let bus = match args.iter().position(|a| a == "--bus") {
        Some(i) => args.get(i + 1).map(String::as_str).unwrap_or("memory"),
        None => "memory",
    };
    // A fresh application name per run, so that runs do not see each other's events.
    let app = format!("shop-{}", Uuid::now_v7().simple());
    println!("bus: {bus}");
    match bus {
        "memory" => run(InMemoryBus::new(1024)).await,
        "redis" => {
            let bus =
                RedisBus::connect(&env_or("REDIS_URL", "redis://127.0.0.1:6379"), &app).await?;
            let result = run(bus.clone()).await;
            bus.destroy().await?;
            result
        }
        "rabbitmq" => {
            let url = env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
            let bus = RabbitMqBus::connect(&url, &app).await?;
            let result = run(bus.clone()).await;
            bus.destroy(&["notifications", "inventory"]).await?;
            result
        }
        "nats" => {
            let bus = NatsBus::connect(&env_or("NATS_URL", "nats://127.0.0.1:4222"), &app).await?;
            let result = run(bus.clone()).await;
            bus.destroy().await?;
            result
        }
        "kafka" => {
            let servers = env_or("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092");
            let bus = KafkaBus::connect(&servers, &app).await?;
            let result = run(bus.clone()).await;
            bus.destroy(&["notifications", "inventory"]).await?;
            result
        }
        other => {
            Err(format!("unknown bus `{other}`: use memory, redis, rabbitmq, nats or kafka").into())
        }
    }
}
