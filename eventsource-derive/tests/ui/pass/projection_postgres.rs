// A database read model in PostgreSQL, and one that writes through `sqlx::Transaction` spelled
// out, without a reset method.
use eventsource::prelude::*;
use eventsource::SqlProjection;
use eventsource::projection::PgTx;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Deposited {
    cents: i64,
}

struct Balances;

#[projection(name = "balances", reset = truncate)]
impl Balances {
    #[handles]
    async fn deposited(
        &mut self,
        event: &Deposited,
        ctx: &EventContext<'_>,
        tx: &mut PgTx,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE balances SET cents = cents + $1 WHERE account = $2")
            .bind(event.cents)
            .bind(ctx.aggregate_id())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn truncate(&mut self, tx: &mut PgTx) -> Result<(), sqlx::Error> {
        sqlx::query("TRUNCATE balances").execute(&mut **tx).await?;
        Ok(())
    }
}

#[derive(Default)]
struct Audit {
    rows: u64,
}

#[projection]
impl Audit {
    #[handles]
    async fn deposited(
        &mut self,
        _event: &Deposited,
        _ctx: &EventContext<'_>,
        _tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    ) {
        self.rows += 1;
    }
}

fn assert_sql_projection<P: SqlProjection<Database = sqlx::Postgres>>() {}

fn main() {
    assert_sql_projection::<Balances>();
    assert_sql_projection::<Audit>();
    assert_eq!(<Audit as SqlProjection>::NAME, "Audit");
}
