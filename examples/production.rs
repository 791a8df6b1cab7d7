//! A multi-tenant invoicing service as it would run in production: every request scoped to its
//! tenant (and, on PostgreSQL, row-level security behind it), `tracing` spans with the tenant and
//! correlation id, metrics through the `metrics` facade, a relay publishing to a bus, a health
//! report an HTTP handler can return, and a graceful shutdown on Ctrl-C.
//!
//! What it teaches: how the production pieces fit in one `main`. Each is documented in the
//! docs (tenancy.md; operations.md; stores.md, Resilience to a failing database).
//!
//! Run it with `cargo run --example production` (SQLite under `target/`), or with
//! `DATABASE_URL=postgres://...` for a fresh schema of that database. It serves a few requests,
//! prints the health report and the metrics, and shuts down; press Ctrl-C to stop it earlier.

use eventsource::SnapshotStore;
use eventsource::bus::{BusConsumer, ConsumerGroup, EventBus, InMemoryBus, Relay};
use eventsource::health::HealthOptions;
use eventsource::prelude::*;
use eventsource::subscription::Subscriptions;
use eventsource::tenant::Tenancy;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::Instrument;

#[path = "shared/store.rs"]
mod store;
use store::open_store;

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "prod.InvoiceIssued", aggregate = "Invoice")]
struct InvoiceIssued {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "prod.InvoicePaid", aggregate = "Invoice")]
struct InvoicePaid;

#[derive(Default, Debug)]
struct Invoice {
    cents: i64,
    paid: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the invoice is paid already")]
struct AlreadyPaid;

#[aggregate(name = "Invoice", id = String, error = AlreadyPaid)]
impl Invoice {
    #[handles]
    fn issued(&mut self, e: &InvoiceIssued) {
        self.cents = e.cents;
    }

    #[handles]
    fn paid(&mut self, _: &InvoicePaid) {
        self.paid = true;
    }
}

/// Revenue per tenant: a read model over the whole log (the operator's view).
#[derive(Default, Debug)]
struct Revenue {
    issued: BTreeMap<String, i64>,
}

#[projection(name = "production.revenue")]
impl Revenue {
    #[handles]
    fn issued(&mut self, e: &InvoiceIssued, ctx: &EventContext<'_>) {
        let tenant = ctx.metadata.tenant_id.clone().unwrap_or_default();
        *self.issued.entry(tenant).or_default() += e.cents;
    }
}

/// One request of the API: issue or pay an invoice, for a tenant, under a span of its own.
async fn request<S>(
    store: &S,
    tenant: &str,
    invoice: &str,
    command: &str,
) -> Result<(), UpdateError<AlreadyPaid>>
where
    S: EventStore + SnapshotStore + Tenancy + Clone + Send + Sync + 'static,
{
    let correlation = Uuid::now_v7();
    let span = tracing::info_span!("request", tenant, command, invoice, %correlation);
    async {
        let invoices = Invoice::repository(store.for_tenant(tenant).map_err(UpdateError::Store)?);
        let metadata = Metadata::new()
            .with_actor("api")
            .with_correlation_id(correlation);
        let outcome = match command {
            "issue" => {
                let mut root = invoices.create(invoice.to_owned());
                root.set_metadata(metadata);
                root.record(InvoiceIssued { cents: 12_500 });
                invoices
                    .save(&mut root)
                    .await
                    .map(drop)
                    .map_err(UpdateError::Store)
            }
            _ => invoices
                .update_with(invoice.to_owned(), metadata, |root| {
                    if root.paid {
                        return Err(AlreadyPaid);
                    }
                    root.record(InvoicePaid);
                    Ok(())
                })
                .await
                .map(drop),
        };
        match &outcome {
            Ok(()) => tracing::info!("done"),
            Err(error) => tracing::warn!(%error, "refused"),
        }
        outcome
    }
    .instrument(span)
    .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs and spans: the service's own at info, the library's at info (debug shows every
    // append, load and batch span with its fields).
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .init();
    // Metrics: a service installs a Prometheus exporter here; this example reads them back.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;

    let store = open_store("production").await?;

    // The read side and the publisher, run by one manager.
    let bus = InMemoryBus::new(1024);
    let mut billing = bus
        .subscribe(&ConsumerGroup::new("billing").event::<InvoicePaid>())
        .await?;
    let mut subscriptions = Subscriptions::new(store.clone());
    let revenue = subscriptions.add(Revenue::default());
    subscriptions.add_relay(Relay::new("production.relay", bus.clone()));
    let running = subscriptions.start();

    // Requests of two tenants.
    request(&store, "acme", "inv-1", "issue").await?;
    request(&store, "acme", "inv-1", "pay").await?;
    request(&store, "globex", "inv-2", "issue").await?;
    // Another tenant's invoice is not found through globex's scope, and nothing is written.
    let foreign = request(&store, "globex", "inv-1", "pay").await;
    assert!(
        matches!(
            foreign,
            Err(UpdateError::Store(Error::AggregateNotFound { .. }))
        ),
        "{foreign:?}"
    );
    // Paying twice is refused by the aggregate, with its own error.
    let twice = request(&store, "acme", "inv-1", "pay").await;
    assert!(
        matches!(twice, Err(UpdateError::Rejected(AlreadyPaid))),
        "{twice:?}"
    );

    // The billing service hears about the payment, with its tenant and correlation id.
    let delivery = tokio::time::timeout(Duration::from_secs(10), billing.next()).await??;
    let paid = delivery.event();
    println!(
        "billing: {} paid (tenant {}, correlation {})",
        paid.aggregate_id(),
        paid.metadata.tenant_id.as_deref().unwrap_or("-"),
        paid.metadata.correlation_id.unwrap_or_default()
    );
    assert_eq!(paid.metadata.tenant_id.as_deref(), Some("acme"));
    billing.ack(&delivery).await?;

    let head = store.log_head().await?.last;
    running.wait_until(head, Duration::from_secs(10)).await?;
    println!("revenue by tenant: {:?}", revenue.read().issued);
    assert_eq!(revenue.read().issued.get("acme"), Some(&12_500));
    assert_eq!(revenue.read().issued.get("globex"), Some(&12_500));

    // What `GET /health` answers.
    let report = running.health(&store, &HealthOptions::default()).await;
    println!(
        "GET /health -> {} {}",
        report.http_status(),
        report.to_json()
    );
    assert_eq!(report.http_status(), 200);

    // Graceful shutdown: on Ctrl-C in a real service; here also once the demo is done.
    let signal = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => println!("Ctrl-C: shutting down"),
            () = tokio::time::sleep(Duration::from_millis(100)) => println!("demo done: shutting down"),
        }
    };
    running.shutdown_on(signal).await;
    println!("stopped: {:?}", running.status());

    println!("metrics:");
    let mut lines: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let value = match value {
                DebugValue::Counter(n) => n.to_string(),
                DebugValue::Gauge(v) => v.to_string(),
                DebugValue::Histogram(values) => format!("{} observations", values.len()),
            };
            format!("  {}{{{}}} {value}", key.key().name(), labels.join(","))
        })
        .collect();
    lines.sort();
    for line in &lines {
        println!("{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("eventsource_events_appended_total")),
        "appends were counted"
    );
    println!("\nproduction example OK");
    Ok(())
}
