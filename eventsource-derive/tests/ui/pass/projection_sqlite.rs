// A database read model in SQLite: async handlers writing through the transaction.
use eventsource::prelude::*;
use eventsource::{EventLocation, SqlProjection};
use eventsource::projection::SqliteTx;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct OrderPlaced {
    customer: String,
}

#[derive(DomainEvent, Serialize, Deserialize)]
struct OrderCancelled;

struct OrdersByCustomer;

#[projection(name = "orders_by_customer", reset = clear)]
impl OrdersByCustomer {
    #[handles]
    async fn placed(
        &mut self,
        event: &OrderPlaced,
        ctx: &EventContext<'_>,
        tx: &mut SqliteTx,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO orders (id, customer) VALUES (?, ?)")
            .bind(ctx.aggregate_id())
            .bind(&event.customer)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    // The location is context enough here.
    #[handles]
    async fn cancelled(&mut self, _event: &OrderCancelled, ctx: &EventLocation<'_>, tx: &mut SqliteTx) {
        let _ = sqlx::query("DELETE FROM orders WHERE id = ?")
            .bind(ctx.aggregate_id())
            .execute(&mut **tx)
            .await;
    }

    async fn clear(&mut self, tx: &mut SqliteTx) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM orders").execute(&mut **tx).await?;
        Ok(())
    }
}

fn assert_sql_projection<P: SqlProjection<Database = sqlx::Sqlite>>() {}

fn main() {
    assert_sql_projection::<OrdersByCustomer>();
    assert_eq!(<OrdersByCustomer as SqlProjection>::NAME, "orders_by_customer");
    assert_eq!(
        <OrdersByCustomer as SqlProjection>::event_types(),
        ["OrderPlaced", "OrderCancelled"]
    );
}
