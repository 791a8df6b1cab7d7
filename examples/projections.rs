//! Read models kept live while commands run: an order system's orders by customer, daily sales
//! totals and low-inventory alerts, the three kinds of projection side by side.
//!
//! ```sh
//! cargo run --example projections                       # SQLite in a temporary file
//! DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run --example projections
//! ```
//!
//! - `OrdersByCustomer`: an in-memory read model (state in process, rebuilt at every start).
//! - `DailySales`: a database read model: a `daily_sales` table in the event store's own
//!   database, written in the transaction that moves its checkpoint (exactly once).
//! - `LowStockAlerts`: a durable projection with a side effect (here: an alert log), its
//!   checkpoint in the database, at least once with the event id to de-duplicate.
//!
//! The manager catches each one up from its checkpoint, then keeps it live while several tasks
//! place, pay and cancel orders; at the end every read model equals a fold of the whole log.

use eventsource::prelude::*;
use eventsource::projection::{PgTx, SqliteTx};
use eventsource::subscription::{RunnerState, Subscriptions};
use eventsource::{ReadAll, RecordedEvent, SqlProjection};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

// ----- The write side: orders and stock. -----

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer: String,
    sku: String,
    quantity: u32,
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "Order")]
struct OrderPaid {
    cents: i64,
    day: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "Order")]
struct OrderCancelled {
    reason: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "Stock")]
struct StockReceived {
    quantity: u32,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "Stock")]
struct StockReserved {
    quantity: u32,
    left: u32,
}

/// Why a command is refused.
#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error("the order is not open")]
    NotOpen,
    #[error("only {left} left")]
    OutOfStock { left: u32 },
}

#[derive(Default, Debug)]
struct Order {
    open: bool,
    cents: i64,
}

#[aggregate(name = "Order", id = String, error = OrderError)]
impl Order {
    #[handles]
    fn placed(&mut self, e: &OrderPlaced) {
        self.open = true;
        self.cents = e.cents;
    }

    #[handles]
    fn paid(&mut self, _: &OrderPaid) {
        self.open = false;
    }

    #[handles]
    fn cancelled(&mut self, _: &OrderCancelled) {
        self.open = false;
    }
}

impl Order {
    fn pay(&self, day: &str) -> Result<OrderPaid, OrderError> {
        if !self.open {
            return Err(OrderError::NotOpen);
        }
        Ok(OrderPaid {
            cents: self.cents,
            day: day.into(),
        })
    }
}

#[derive(Default, Debug)]
struct Stock {
    left: u32,
}

#[aggregate(name = "Stock", id = String, error = OrderError)]
impl Stock {
    #[handles]
    fn received(&mut self, e: &StockReceived) {
        self.left += e.quantity;
    }

    #[handles]
    fn reserved(&mut self, e: &StockReserved) {
        self.left = e.left;
    }
}

impl Stock {
    fn reserve(&self, quantity: u32) -> Result<StockReserved, OrderError> {
        if quantity > self.left {
            return Err(OrderError::OutOfStock { left: self.left });
        }
        Ok(StockReserved {
            quantity,
            left: self.left - quantity,
        })
    }
}

// ----- The read side. -----

/// In memory: each customer's orders and their status.
#[derive(Default)]
struct OrdersByCustomer {
    orders: BTreeMap<String, BTreeMap<String, &'static str>>,
    customer_of: BTreeMap<String, String>,
}

#[projection(name = "orders_by_customer")]
impl OrdersByCustomer {
    #[handles]
    fn placed(&mut self, e: &OrderPlaced, ctx: &EventContext) {
        let order = ctx.aggregate_id().to_owned();
        self.customer_of.insert(order.clone(), e.customer.clone());
        self.orders
            .entry(e.customer.clone())
            .or_default()
            .insert(order, "placed");
    }

    #[handles]
    fn paid(&mut self, _: &OrderPaid, ctx: &EventContext) {
        self.set(ctx.aggregate_id(), "paid");
    }

    #[handles]
    fn cancelled(&mut self, _: &OrderCancelled, ctx: &EventContext) {
        self.set(ctx.aggregate_id(), "cancelled");
    }
}

impl OrdersByCustomer {
    fn set(&mut self, order: &str, status: &'static str) {
        if let Some(customer) = self.customer_of.get(order)
            && let Some(orders) = self.orders.get_mut(customer)
        {
            orders.insert(order.to_owned(), status);
        }
    }
}

/// In the database: sales per day, written with the checkpoint (exactly once). One type per
/// database, because the SQL differs.
struct DailySales;

#[projection(name = "daily_sales", reset = clear)]
impl DailySales {
    #[handles]
    async fn paid(
        &mut self,
        e: &OrderPaid,
        _: &EventContext<'_>,
        tx: &mut SqliteTx,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO daily_sales (day, orders, cents) VALUES (?, 1, ?) ON CONFLICT (day) \
             DO UPDATE SET orders = orders + 1, cents = cents + excluded.cents",
        )
        .bind(&e.day)
        .bind(e.cents)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn clear(&mut self, tx: &mut SqliteTx) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM daily_sales")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// [`DailySales`] for PostgreSQL.
struct DailySalesPg;

#[projection(name = "daily_sales", reset = clear)]
impl DailySalesPg {
    #[handles]
    async fn paid(
        &mut self,
        e: &OrderPaid,
        _: &EventContext<'_>,
        tx: &mut PgTx,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO daily_sales (day, orders, cents) VALUES ($1, 1, $2) ON CONFLICT (day) \
             DO UPDATE SET orders = daily_sales.orders + 1, \
             cents = daily_sales.cents + excluded.cents",
        )
        .bind(&e.day)
        .bind(e.cents)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn clear(&mut self, tx: &mut PgTx) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM daily_sales")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// A side effect: alert when a product's stock runs low, once per event even if the event is
/// delivered again after a crash (at least once, de-duplicated by event id).
#[derive(Default)]
struct LowStockAlerts {
    sent: BTreeSet<Uuid>,
    alerts: Vec<String>,
}

#[projection(name = "low_stock_alerts")]
impl LowStockAlerts {
    #[handles]
    fn reserved(&mut self, e: &StockReserved, ctx: &EventContext) {
        if e.left < 20 && self.sent.insert(ctx.event_id) {
            self.alerts
                .push(format!("{} is low: {} left", ctx.aggregate_id(), e.left));
        }
    }
}

// ----- Running it. -----

const CUSTOMERS: [&str; 3] = ["ada", "grace", "linus"];
const SKUS: [&str; 2] = ["keyboard", "mouse"];

/// Places, pays or cancels orders from `tasks` concurrent tasks.
async fn run_commands<S: EventStore + Clone + 'static>(
    store: &S,
    round: &'static str,
    tasks: usize,
    per_task: usize,
) {
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let orders = Order::repository(store.clone());
            let stock = Stock::repository(store.clone());
            tokio::spawn(async move {
                for i in 0..per_task {
                    let sku = SKUS[(t + i) % SKUS.len()];
                    let quantity = 1 + (i % 3) as u32;
                    let reserved = stock
                        .update(sku.to_owned(), |s| s.reserve(quantity).map(|e| s.record(e)))
                        .await;
                    if reserved.is_err() {
                        continue; // out of stock: no order
                    }
                    let id = format!("order-{round}{t}-{i}");
                    let mut order = orders.create(id.clone());
                    order.record(OrderPlaced {
                        customer: CUSTOMERS[(t + i) % CUSTOMERS.len()].into(),
                        sku: sku.into(),
                        quantity,
                        cents: 1_999 * i64::from(quantity),
                    });
                    orders.save(&mut order).await.expect("save");
                    if i % 4 == 3 {
                        orders
                            .update(id, |o| {
                                o.record(OrderCancelled {
                                    reason: "changed my mind".into(),
                                });
                                Ok(())
                            })
                            .await
                            .expect("cancel");
                    } else {
                        let day = format!("2026-11-{:02}", 20 + i % 3);
                        orders
                            .update(id, |o| o.pay(&day).map(|e| o.record(e)))
                            .await
                            .expect("pay");
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("a command task");
    }
}

/// The daily sales a fold of the whole log gives: what the table must hold.
async fn daily_sales_from_the_log<S: EventStore>(store: &S) -> BTreeMap<String, (i64, i64)> {
    use futures::TryStreamExt;
    let head = store.log_head().await.expect("head");
    store
        .wait_for(head.last, Duration::from_secs(30))
        .await
        .expect("readable");
    let events: Vec<RecordedEvent> = store
        .read_all(ReadAll::from_start().event_types([OrderPaid::EVENT_TYPE]))
        .try_collect()
        .await
        .expect("read_all");
    let mut sales = BTreeMap::new();
    for event in events {
        let paid: OrderPaid = event.decode().expect("decode");
        let day: &mut (i64, i64) = sales.entry(paid.day).or_default();
        day.0 += 1;
        day.1 += paid.cents;
    }
    sales
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            use sqlx::postgres::PgConnectOptions;
            use std::str::FromStr;
            let admin = sqlx::PgPool::connect(&url).await?;
            sqlx::query("DROP SCHEMA IF EXISTS projections_example CASCADE")
                .execute(&admin)
                .await?;
            sqlx::query("CREATE SCHEMA projections_example")
                .execute(&admin)
                .await?;
            let options =
                PgConnectOptions::from_str(&url)?.options([("search_path", "projections_example")]);
            let store = PostgresEventStore::connect_with(options).await?;
            sqlx::query(
                "CREATE TABLE daily_sales (day TEXT PRIMARY KEY, orders BIGINT NOT NULL, \
                 cents BIGINT NOT NULL)",
            )
            .execute(store.pool())
            .await?;
            println!("event store: PostgreSQL, schema projections_example");
            let sales_table = async |store: &PostgresEventStore| {
                sqlx::query_as::<_, (String, i64, i64)>(
                    "SELECT day, orders, cents FROM daily_sales ORDER BY day",
                )
                .fetch_all(store.pool())
                .await
            };
            run(store.clone(), DailySalesPg, sales_table).await
        }
        _ => {
            let dir = tempfile::tempdir()?;
            let store = SqliteEventStore::open(dir.path().join("orders.db")).await?;
            sqlx::query(
                "CREATE TABLE daily_sales (day TEXT PRIMARY KEY, orders INTEGER NOT NULL, \
                 cents INTEGER NOT NULL)",
            )
            .execute(store.writer_pool())
            .await?;
            println!(
                "event store: SQLite, {}",
                dir.path().join("orders.db").display()
            );
            let sales_table = async |store: &SqliteEventStore| {
                sqlx::query_as::<_, (String, i64, i64)>(
                    "SELECT day, orders, cents FROM daily_sales ORDER BY day",
                )
                .fetch_all(store.pool())
                .await
            };
            run(store.clone(), DailySales, sales_table).await
        }
    }
}

async fn run<S, P>(
    store: S,
    daily_sales: P,
    sales_table: impl AsyncFn(&S) -> Result<Vec<(String, i64, i64)>, sqlx::Error>,
) -> Result<(), Box<dyn std::error::Error>>
where
    S: eventsource::checkpoint::TransactionalStore,
    P: SqlProjection<Database = S::Database>,
{
    // Some history before the read models start: they catch up on it.
    let stock = Stock::repository(store.clone());
    for sku in SKUS {
        let mut item = stock.create(sku.to_owned());
        item.record(StockReceived { quantity: 60 });
        stock.save(&mut item).await?;
    }
    run_commands(&store, "a", 2, 8).await;

    let mut subscriptions = Subscriptions::new(store.clone());
    let by_customer = subscriptions.add(OrdersByCustomer::default());
    let sales = subscriptions.add_sql(daily_sales);
    let alerts = subscriptions.add_durable(LowStockAlerts::default());
    let running = subscriptions.start();

    // Commands keep running while the read models go live.
    run_commands(&store, "b", 4, 12).await;
    let head = store.log_head().await?;
    store.wait_for(head.last, Duration::from_secs(30)).await?;
    running
        .wait_until(head.last, Duration::from_secs(30))
        .await?;

    println!("\norders by customer (in memory):");
    for (customer, orders) in &by_customer.read().orders {
        let paid = orders.values().filter(|s| **s == "paid").count();
        let cancelled = orders.values().filter(|s| **s == "cancelled").count();
        println!(
            "  {customer:<6} {} orders: {paid} paid, {cancelled} cancelled",
            orders.len()
        );
    }

    println!("\ndaily sales (table daily_sales, exactly once):");
    let table = sales_table(&store).await?;
    for (day, orders, cents) in &table {
        println!(
            "  {day}  {orders:>3} orders  {:>9.2}",
            *cents as f64 / 100.0
        );
    }
    let expected = daily_sales_from_the_log(&store).await;
    let as_map: BTreeMap<String, (i64, i64)> = table
        .iter()
        .map(|(day, orders, cents)| (day.clone(), (*orders, *cents)))
        .collect();
    assert_eq!(as_map, expected, "the table equals a fold of the whole log");

    println!("\nlow-stock alerts (durable, at least once, de-duplicated):");
    for alert in &alerts.read().alerts {
        println!("  {alert}");
    }

    println!("\nstatus:");
    for status in running.status() {
        let lag = running.lag(&status.name).await?;
        println!(
            "  {:<18} {:?}, checkpoint {}, lag {lag}",
            status.name,
            status.state,
            status.checkpoint.map_or("-".into(), |c| c.to_string())
        );
        assert_eq!(status.state, RunnerState::Live);
    }

    // Rebuild the table from zero, in one transaction: readers see the old table until then.
    running.rebuild("daily_sales").await?;
    assert_eq!(
        sales_table(&store).await?,
        table,
        "a rebuild gives the same table"
    );
    println!("\nrebuilt daily_sales: same {} days", table.len());

    running.shutdown().await;
    println!("stopped: {:?}", sales.status().state);
    Ok(())
}
