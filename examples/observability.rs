//! Observability and operations: the runtime's `tracing` spans exported through OpenTelemetry,
//! its metrics read from a recorder, a health report, and a graceful shutdown on a signal.
//!
//! What it teaches: the library only emits `tracing` spans and `metrics`; the application
//! chooses the exporter. Here spans go to OpenTelemetry's stdout exporter (a production service
//! would put `opentelemetry-otlp`'s exporter in its place, towards the collector at
//! `OTEL_EXPORTER_OTLP_ENDPOINT`), and metrics to an in-process recorder printed at the end (a
//! service would install `metrics-exporter-prometheus`). A command's correlation id reaches its
//! events, the bus consumer's span, and the events recorded in reaction.
//!
//! Run it with `cargo run --example observability --features otel`.

use eventsource::bus::{BusConsumer, ConsumerGroup, EventBus, InMemoryBus, Relay};
use eventsource::health::HealthOptions;
use eventsource::prelude::*;
use eventsource::subscription::Subscriptions;
use eventsource::{EventView, HandlerError};
use eventsource::{Projection, StreamId, StreamQuery};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tracing::{Instrument, Level};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "obs.OrderPlaced", aggregate = "Order")]
struct OrderPlaced {
    // Personal data: it is in the payload, and no span shows a payload.
    email: String,
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "obs.OrderPaid", aggregate = "Order")]
struct OrderPaid {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug)]
#[event(name = "obs.ReceiptSent", aggregate = "Receipt")]
struct ReceiptSent {
    order: String,
}

#[derive(Default, Debug, Serialize, Deserialize)]
struct Order {
    cents: i64,
    paid: bool,
}

#[aggregate(name = "Order", id = String)]
impl Order {
    #[handles]
    fn placed(&mut self, event: &OrderPlaced) {
        self.cents = event.cents;
    }

    #[handles]
    fn paid(&mut self, _: &OrderPaid) {
        self.paid = true;
    }
}

#[derive(Default, Debug)]
struct Receipt;

#[aggregate(name = "Receipt", id = String)]
impl Receipt {
    #[handles]
    fn sent(&mut self, _: &ReceiptSent) {}
}

/// Revenue, a read model.
#[derive(Default)]
struct Revenue {
    cents: i64,
}

impl Projection for Revenue {
    const NAME: &'static str = "revenue";

    fn event_types() -> Vec<&'static str> {
        vec!["obs.OrderPaid"]
    }

    fn handle(&mut self, event: EventView<'_>, _: &EventContext<'_>) -> Result<(), HandlerError> {
        self.cents += event.decode::<OrderPaid>()?.cents;
        Ok(())
    }

    fn reset(&mut self) {
        self.cents = 0;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        println!(
            "OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: a service would export there with \
             opentelemetry-otlp; this example keeps to the stdout exporter"
        );
    }
    // Spans: the runtime's (target `eventsource`, at debug) and this example's, to stdout.
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("observability-example")))
        .with(
            Targets::new()
                .with_target("eventsource", Level::DEBUG)
                .with_target("observability", Level::INFO),
        );
    tracing::subscriber::set_global_default(subscriber)?;
    // Metrics: an in-process recorder, printed at the end.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;

    // A database file of its own (a projection's lease is a file beside the database).
    let dir = tempfile::tempdir()?;
    let store = SqliteEventStore::open(dir.path().join("observability.db")).await?;
    let bus = InMemoryBus::new(64);
    let mut receipts_consumer = bus.subscribe(&ConsumerGroup::new("receipts")).await?;
    let mut subscriptions = Subscriptions::new(store.clone());
    let revenue = subscriptions.add(Revenue::default());
    subscriptions.add_relay(Relay::new("outbox", bus.clone()));
    let running = subscriptions.start();

    // A command under a correlation id: the request's.
    let correlation = Uuid::now_v7();
    let request = Metadata::new()
        .with_tenant("acme")
        .with_correlation_id(correlation);
    let orders = Order::repository(store.clone());
    let mut order = orders.create("o-1".to_owned());
    order.set_metadata(request.clone());
    order.record(OrderPlaced {
        email: "ada@example.com".into(),
        cents: 4200,
    });
    orders.save(&mut order).await?;
    orders
        .update_with("o-1".to_owned(), request, |order| {
            let cents = order.state().cents;
            order.record(OrderPaid { cents });
            Ok(())
        })
        .await?;

    // A consumer reacts to what the relay published, inside the delivery's span; the receipt it
    // records carries the order's correlation id, and the event it consumed as its cause.
    let receipts = Receipt::repository(store.clone());
    for _ in 0..2 {
        let delivery = receipts_consumer.next().await?;
        async {
            if delivery.event().event_type == "obs.OrderPaid" {
                let mut receipt =
                    receipts.create(delivery.event().stream.aggregate_id().to_owned());
                receipt.set_metadata(delivery.reaction_metadata());
                receipt.record(ReceiptSent {
                    order: delivery.event().stream.aggregate_id().to_owned(),
                });
                receipts.save(&mut receipt).await?;
                tracing::info!("receipt sent");
            }
            receipts_consumer.ack(&delivery).await
        }
        .instrument(delivery.span())
        .await?;
    }
    let head = store.log_head().await?.last;
    running.wait_until(head, Duration::from_secs(10)).await?;
    println!("revenue: {} cents", revenue.read().cents);

    let receipt = &store
        .read_stream(&StreamId::new("Receipt", "o-1")?, StreamQuery::all())
        .await?[0];
    assert_eq!(receipt.metadata.correlation_id, Some(correlation));
    println!(
        "receipt: correlation {} (the order's), caused by event {}",
        correlation,
        receipt.metadata.causation_id.unwrap_or_default()
    );

    // The health endpoint's answer.
    let report = running.health(&store, &HealthOptions::default()).await;
    println!("health: HTTP {} {}", report.http_status(), report.to_json());

    // Graceful shutdown on a signal: a service passes `tokio::signal::ctrl_c()`; here a timer.
    running
        .shutdown_on(tokio::time::sleep(Duration::from_millis(10)))
        .await;
    provider.shutdown()?;

    println!("metrics:");
    let mut metrics: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels: Vec<String> = key
                .key()
                .labels()
                .map(|label| format!("{}={}", label.key(), label.value()))
                .collect();
            let value = match value {
                DebugValue::Counter(n) => n.to_string(),
                DebugValue::Gauge(v) => v.to_string(),
                DebugValue::Histogram(values) => format!("{} observations", values.len()),
            };
            format!("  {}{{{}}} {value}", key.key().name(), labels.join(","))
        })
        .collect();
    metrics.sort();
    println!("{}", metrics.join("\n"));
    Ok(())
}
