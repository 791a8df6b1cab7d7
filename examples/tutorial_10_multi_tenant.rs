//! Tutorial 10: a multi-tenant invoicing service, traced.
//!
//! ```sh
//! cargo run --example tutorial_10_multi_tenant       # stores to target/tutorial-10.db
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example tutorial_10_multi_tenant
//! ```
//!
//! What it teaches:
//!
//! - One store, several tenants: each request scopes the store to its tenant
//!   (`store.for_tenant(..)`, a `TenantStore`), and the repository, the commands and the
//!   projections work on the scoped store unchanged. A save stamps every event with the tenant.
//! - Isolation: an invoice of another tenant is not found, never read, even by its id; an event
//!   stamped with another tenant is refused with a typed error (`Error::TenantMismatch`).
//! - A read model per tenant: the subscription manager over a tenant's store sees that tenant's
//!   events only, and keeps its checkpoint under `<tenant>/<projection>`.
//! - Cross-tenant reports through the unscoped store only, on purpose.
//! - Tracing: every request runs in a span that names its tenant and command (printed by
//!   `tracing-subscriber` when it closes, with its duration); the runtime's own events
//!   (`eventsource` target, debug level and up) appear inside them.
//! - On PostgreSQL, the second wall: the service connects as a role that does not own the
//!   tables, so row-level security limits every statement to the tenant its transaction set,
//!   which a raw SQL query through that role shows.
//!
//! The SQLite file is kept: inspect it afterwards with the command line
//! (`cargo run -p eventsource-cli -- --db target/tutorial-10.db streams`).

use eventsource::prelude::*;
use eventsource::subscription::Subscriptions;
use eventsource::tenant::{Tenancy, TenantStore};
use eventsource::{AnyStore, NewEvent};
use eventsource::{ExpectedVersion, Position, ReadAll, RecordedEvent, StreamId, StreamQuery};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::Instrument;

// ----- The domain: invoices -----

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Invoice")]
struct InvoiceIssued {
    customer: String,
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(aggregate = "Invoice")]
struct InvoicePaid;

#[derive(Default, Debug)]
struct Invoice {
    customer: String,
    cents: i64,
    paid: bool,
}

#[derive(Debug, thiserror::Error)]
enum InvoiceError {
    #[error("the invoice is already paid")]
    AlreadyPaid,
    #[error("an invoice needs a positive amount")]
    NotPositive,
}

#[aggregate(error = InvoiceError)]
impl Invoice {
    #[handles]
    fn issued(&mut self, event: &InvoiceIssued) {
        self.customer = event.customer.clone();
        self.cents = event.cents;
    }

    #[handles]
    fn paid(&mut self, _: &InvoicePaid) {
        self.paid = true;
    }
}

impl Invoice {
    fn pay(&self) -> Result<InvoicePaid, InvoiceError> {
        if self.paid {
            return Err(InvoiceError::AlreadyPaid);
        }
        Ok(InvoicePaid)
    }
}

// ----- A read model, one per tenant -----

/// What each customer still owes.
#[derive(Default, Debug)]
struct Receivables {
    owed: BTreeMap<String, i64>,
    /// Each invoice's customer and amount, for its payment.
    invoices: BTreeMap<String, (String, i64)>,
}

#[projection(name = "receivables")]
impl Receivables {
    #[handles]
    fn issued(&mut self, e: &InvoiceIssued, ctx: &EventContext) {
        *self.owed.entry(e.customer.clone()).or_default() += e.cents;
        self.invoices
            .insert(ctx.aggregate_id().to_owned(), (e.customer.clone(), e.cents));
    }

    #[handles]
    fn paid(&mut self, _: &InvoicePaid, ctx: &EventContext) {
        if let Some((customer, cents)) = self.invoices.get(ctx.aggregate_id()) {
            *self.owed.entry(customer.clone()).or_default() -= cents;
        }
    }
}

// ----- The service: one scoped store per request -----

/// The service: a store shared by every tenant, scoped per request.
struct Service {
    store: AnyStore,
}

impl Service {
    /// The store as `tenant` may see it.
    fn scoped(&self, tenant: &str) -> Result<TenantStore<AnyStore>, Error> {
        self.store.for_tenant(tenant)
    }

    /// Issues an invoice for `tenant`; returns its id and the event's position.
    async fn issue(
        &self,
        tenant: &str,
        customer: &str,
        cents: i64,
    ) -> Result<(Uuid, Position), Box<dyn std::error::Error>> {
        let span = tracing::info_span!("request", tenant, command = "issue");
        async {
            if cents <= 0 {
                return Err(InvoiceError::NotPositive.into());
            }
            let invoices = Invoice::repository(self.scoped(tenant)?);
            let id = Uuid::now_v7();
            let mut invoice = invoices.create(id);
            invoice.record(InvoiceIssued {
                customer: customer.to_owned(),
                cents,
            });
            let saved = invoices.save(&mut invoice).await?;
            tracing::info!(invoice = %id, customer, cents, "issued");
            Ok((id, saved.last_position))
        }
        .instrument(span)
        .await
    }

    /// Marks `tenant`'s invoice `id` paid.
    async fn pay(&self, tenant: &str, id: Uuid) -> Result<Position, UpdateError<InvoiceError>> {
        let span = tracing::info_span!("request", tenant, command = "pay", invoice = %id);
        async {
            let invoices = Invoice::repository(self.scoped(tenant)?);
            invoices
                .update(id, |invoice| {
                    let event = invoice.pay()?;
                    invoice.record(event);
                    Ok(())
                })
                .await?;
            tracing::info!("paid");
            let stream = invoices.stream_id(&id);
            let last = invoices
                .store()
                .read_stream(&stream, StreamQuery::last(1))
                .await?;
            Ok(last[0].position)
        }
        .instrument(span.clone())
        .await
        .inspect_err(|error| span.in_scope(|| tracing::warn!(%error, "refused")))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Spans print when they close, with their duration; this example's events at info, the
    // runtime's (target `eventsource`) from debug, the database driver's warnings only.
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("eventsource", tracing::Level::DEBUG)
        .with_target("sqlx", tracing::Level::WARN)
        .with_default(tracing::Level::INFO);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE),
        )
        .with(filter)
        .init();

    let Stores {
        service: store,
        operator,
        role,
    } = open_stores("tutorial-10").await?;
    let service = Service { store };

    // Two tenants, same service, same store.
    println!("\n--- requests");
    let (a1, _) = service.issue("acme", "Wile E.", 12_000).await?;
    let (a2, _) = service.issue("acme", "Road Runner", 3_000).await?;
    let (g1, _) = service.issue("globex", "Hank", 50_000).await?;
    let paid_at = service.pay("acme", a1).await?;
    println!("acme issued {a1} and {a2} and was paid {a1}; globex issued {g1}");

    // Every event carries its tenant, stamped by the save.
    let acme = service.scoped("acme")?;
    let stored = acme
        .read_stream(
            &StreamId::new("Invoice", a1.to_string())?,
            StreamQuery::all(),
        )
        .await?;
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .all(|e| e.metadata.tenant_id.as_deref() == Some("acme"))
    );

    // ----- Isolation -----
    println!("\n--- isolation");
    let globex_invoices = Invoice::repository(service.scoped("globex")?);
    let peek = globex_invoices.load(a1).await;
    println!(
        "globex loads acme's invoice by its id: {}",
        peek.as_ref()
            .map(|_| "found?!".to_owned())
            .unwrap_or_else(|e| e.to_string())
    );
    assert!(matches!(peek, Err(Error::AggregateNotFound { .. })));
    let paid = service.pay("globex", a1).await;
    println!(
        "globex pays acme's invoice: {}",
        paid.as_ref()
            .map(|_| "paid?!".to_owned())
            .unwrap_or_else(|e| e.to_string())
    );
    assert!(matches!(
        paid,
        Err(UpdateError::Store(Error::AggregateNotFound { .. }))
    ));
    // An event forged with another tenant's id: refused, typed, nothing written.
    let forged = NewEvent::new(&InvoicePaid)?.with_metadata(Metadata::new().with_tenant("acme"));
    let refused = service
        .scoped("globex")?
        .append(
            &StreamId::new("Invoice", a2.to_string())?,
            ExpectedVersion::Any,
            vec![forged],
        )
        .await
        .unwrap_err();
    println!("globex appends an event stamped acme: {refused}");
    assert!(matches!(refused, Error::TenantMismatch { .. }));
    assert!(
        !Invoice::repository(service.scoped("acme")?)
            .load(a2)
            .await?
            .paid
    );

    // ----- A read model per tenant -----
    println!("\n--- receivables, per tenant");
    let mut subscriptions = Subscriptions::new(acme.clone());
    let receivables = subscriptions.add(Receivables::default());
    let running = subscriptions.start();
    running.wait_until(paid_at, Duration::from_secs(10)).await?;
    {
        let model = receivables.read();
        println!("acme's receivables: {:?}", model.owed);
        assert_eq!(model.owed.get("Wile E."), Some(&0));
        assert_eq!(model.owed.get("Road Runner"), Some(&3_000));
        assert!(!model.owed.contains_key("Hank"), "globex's customer");
    }
    running.shutdown().await;

    // ----- Cross-tenant: the unscoped store, explicitly -----
    println!("\n--- operator report (unscoped store)");
    let everything: Vec<RecordedEvent> = operator
        .read_all(ReadAll::from_start())
        .try_collect()
        .await?;
    let mut per_tenant = BTreeMap::<String, usize>::new();
    for event in &everything {
        let tenant = event.metadata.tenant_id.clone().unwrap_or_default();
        *per_tenant.entry(tenant).or_default() += 1;
    }
    println!("events per tenant: {per_tenant:?}");
    assert_eq!(per_tenant.get("acme"), Some(&3));
    assert_eq!(per_tenant.get("globex"), Some(&1));
    assert_eq!(acme.count(ReadAll::from_start()).await?, 3);

    // ----- PostgreSQL: the database's own wall -----
    if let Some(pool) = role {
        println!("\n--- row-level security (PostgreSQL, raw SQL through the service's role)");
        for tenant in ["acme", "globex", "initech"] {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT set_config('eventsource.tenant', $1, true)")
                .bind(tenant)
                .execute(&mut *tx)
                .await?;
            let rows: Vec<(String, Option<String>)> =
                sqlx::query_as("SELECT event_type, tenant_id FROM events ORDER BY position")
                    .fetch_all(&mut *tx)
                    .await?;
            println!(
                "as {tenant}: SELECT event_type, tenant_id FROM events -> {} rows",
                rows.len()
            );
            assert!(rows.iter().all(|(_, t)| t.as_deref() == Some(tenant)));
            tx.rollback().await?;
        }
        let unset: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&pool)
            .await?;
        println!("without a tenant: {unset} rows");
        assert_eq!(unset, 0);
    }
    println!("\nall checks passed");
    Ok(())
}

/// Where the example stores.
struct Stores {
    /// What the service uses: on PostgreSQL, connected as a role that does not own the tables.
    service: AnyStore,
    /// The tables' owner, unscoped: the operator's cross-tenant view.
    operator: AnyStore,
    /// On PostgreSQL, the service role's pool, for raw SQL.
    role: Option<sqlx::PgPool>,
}

/// SQLite in `target/<name>.db`, or with `DATABASE_URL` a fresh schema of that PostgreSQL
/// database, migrated by its owner and used by the service through a role of its own.
async fn open_stores(name: &str) -> Result<Stores, Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        use std::str::FromStr;
        let schema = name.replace('-', "_");
        let role = format!("{schema}_service");
        let admin = sqlx::PgPool::connect(&url).await?;
        sqlx::raw_sql(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; \
             DROP ROLE IF EXISTS {role}"
        ))
        .execute(&admin)
        .await?;
        let options = sqlx::postgres::PgConnectOptions::from_str(&url)?
            .options([("search_path", schema.as_str())]);
        // The owner creates the tables; the service's role may only use them (the README's
        // "Multi-tenancy" has this setup).
        let owner = PostgresEventStore::connect_with(options.clone()).await?;
        sqlx::raw_sql(&format!(
            "CREATE ROLE {role} LOGIN; \
             GRANT USAGE ON SCHEMA {schema} TO {role}; \
             GRANT SELECT, INSERT ON {schema}.events TO {role}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.snapshots, {schema}.checkpoints, \
             {schema}.dead_letters TO {role}"
        ))
        .execute(&admin)
        .await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_with(options.username(&role))
            .await?;
        println!("event store: PostgreSQL, schema {schema}, the service as role {role}");
        return Ok(Stores {
            service: PostgresEventStore::from_pool(pool.clone()).into(),
            operator: owner.into(),
            role: Some(pool),
        });
    }
    // The workspace's `target/` (the examples package is `examples/`, one level down).
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join(format!("{name}.db"));
    std::fs::create_dir_all(path.parent().expect("target/"))?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    println!("event store: {}", path.display());
    let store: AnyStore = SqliteEventStore::open(&path).await?.into();
    Ok(Stores {
        service: store.clone(),
        operator: store,
        role: None,
    })
}
