//! The dispatch `#[projection]` generates, called directly: events appended to an in-memory
//! store, read back from the global log and handed to `Projection::handle` with their context.

use eventsource::prelude::*;
use eventsource::{EventView, HandlerError, NewEvent};
use eventsource::{ExpectedVersion, Position, Projection, RecordedEvent, StreamId};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Version 1 of `Deposited`, stored in euros before amounts were kept in cents.
#[derive(Serialize, Deserialize)]
struct DepositedV1 {
    euros: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug)]
#[event(version = 2, alias = "MoneyDeposited", upcast(from_version = 1, via = DepositedV1))]
struct Deposited {
    cents: i64,
}

impl From<DepositedV1> for Deposited {
    fn from(old: DepositedV1) -> Self {
        Deposited {
            cents: old.euros * 100,
        }
    }
}

#[derive(DomainEvent, Serialize, Deserialize, Debug)]
struct Withdrawn {
    cents: i64,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug)]
struct Renamed {
    name: String,
}

/// Not handled by the projection: skipped.
#[derive(DomainEvent, Serialize, Deserialize, Debug)]
struct Audited;

#[derive(Debug, thiserror::Error)]
#[error("account {0} would be overdrawn")]
struct Overdrawn(String);

#[derive(Default, Debug)]
struct Balances {
    by_account: HashMap<String, i64>,
    names: Vec<String>,
    /// (event id, version, position, event type, tenant) of every event seen with its context.
    seen: Vec<(Uuid, u64, Position, String, Option<String>)>,
}

#[projection(name = "balances")]
impl Balances {
    #[handles]
    fn deposited(&mut self, event: &Deposited, ctx: &EventContext<'_>) {
        *self
            .by_account
            .entry(ctx.aggregate_id().to_owned())
            .or_default() += event.cents;
        self.seen.push((
            ctx.event_id,
            ctx.version,
            ctx.position,
            ctx.event_type.to_owned(),
            ctx.metadata.tenant_id.clone(),
        ));
    }

    #[handles]
    fn withdrawn(&mut self, event: &Withdrawn, ctx: &EventContext) -> Result<(), Overdrawn> {
        let balance = self
            .by_account
            .entry(ctx.aggregate_id().to_owned())
            .or_default();
        if *balance < event.cents {
            return Err(Overdrawn(ctx.aggregate_id().to_owned()));
        }
        *balance -= event.cents;
        Ok(())
    }

    #[handles]
    fn renamed(&mut self, event: &Renamed) {
        self.names.push(event.name.clone());
    }
}

/// Not `Default`: empties itself with the method it names.
struct Counter {
    count: u32,
}

#[projection(reset = clear)]
impl Counter {
    #[handles]
    fn renamed(&mut self, _event: &Renamed) {
        self.count += 1;
    }

    fn clear(&mut self) {
        self.count = 0;
    }
}

fn stream(id: &str) -> StreamId {
    StreamId::new("Account", id).unwrap()
}

async fn append(store: &InMemoryEventStore, stream: &StreamId, events: Vec<NewEvent>) {
    store
        .append(stream, ExpectedVersion::Any, events)
        .await
        .unwrap();
}

async fn log(store: &InMemoryEventStore) -> Vec<RecordedEvent> {
    store
        .read_all(eventsource::ReadAll::from_start())
        .try_collect()
        .await
        .unwrap()
}

/// Hands every recorded event to `projection`, as a subscription would.
fn handle_all<P: Projection>(
    projection: &mut P,
    events: &[RecordedEvent],
) -> Vec<Result<(), HandlerError>> {
    events
        .iter()
        .map(|event| projection.handle(event.view(), &EventContext::of(event)))
        .collect()
}

#[tokio::test]
async fn decodes_dispatches_and_passes_the_context() {
    let store = InMemoryEventStore::new();
    let ada = stream("ada");
    append(
        &store,
        &ada,
        vec![
            NewEvent::new(&Deposited { cents: 500 })
                .unwrap()
                .with_metadata(Metadata::new().with_tenant("acme")),
            NewEvent::new(&Audited).unwrap(),
            NewEvent::new(&Withdrawn { cents: 200 }).unwrap(),
            NewEvent::new(&Renamed {
                name: "Ada L.".into(),
            })
            .unwrap(),
        ],
    )
    .await;
    // Stored by an older release: version 1 under the old name, upcast on decode.
    append(
        &store,
        &stream("bob"),
        vec![NewEvent::from_json("MoneyDeposited", 1, r#"{"euros":3}"#)],
    )
    .await;

    let events = log(&store).await;
    let mut balances = Balances::default();
    for result in handle_all(&mut balances, &events) {
        result.unwrap();
    }

    assert_eq!(balances.by_account["ada"], 300);
    assert_eq!(balances.by_account["bob"], 300, "upcast from euros");
    assert_eq!(balances.names, ["Ada L."]);
    let first = &events[0];
    assert_eq!(
        balances.seen[0],
        (
            first.event_id,
            1,
            first.position,
            "Deposited".to_owned(),
            Some("acme".to_owned())
        )
    );
    assert_eq!(
        balances.seen[1].3, "MoneyDeposited",
        "the stored name, an alias"
    );
    assert_eq!(balances.seen.len(), 2, "`Audited` is skipped");
}

#[tokio::test]
async fn a_handler_error_comes_back_as_the_handler_error() {
    let store = InMemoryEventStore::new();
    append(
        &store,
        &stream("ada"),
        vec![NewEvent::new(&Withdrawn { cents: 1 }).unwrap()],
    )
    .await;
    let events = log(&store).await;
    let mut balances = Balances::default();
    let error = balances
        .handle(events[0].view(), &EventContext::of(&events[0]))
        .unwrap_err();
    assert!(error.downcast_ref::<Overdrawn>().is_some());
    assert_eq!(error.to_string(), "account ada would be overdrawn");
}

#[tokio::test]
async fn a_payload_that_does_not_decode_is_an_error() {
    let store = InMemoryEventStore::new();
    append(
        &store,
        &stream("ada"),
        vec![NewEvent::from_json("Deposited", 2, r#"{"cents":"many"}"#)],
    )
    .await;
    let events = log(&store).await;
    let mut balances = Balances::default();
    let error = balances
        .handle(events[0].view(), &EventContext::of(&events[0]))
        .unwrap_err();
    assert!(
        error.downcast_ref::<eventsource::Error>().is_some(),
        "a decode error: {error}"
    );
    assert!(balances.by_account.is_empty());
}

#[test]
fn skips_an_event_no_handler_takes() {
    let recorded = RecordedEvent::new(
        stream("ada"),
        1,
        Position::START,
        NewEvent::new(&Audited).unwrap(),
    );
    let mut counter = Counter { count: 0 };
    let view: EventView<'_> = recorded.view();
    counter.handle(view, &EventContext::of(&recorded)).unwrap();
    assert_eq!(counter.count, 0);
}

#[test]
fn lists_names_and_aliases() {
    assert_eq!(<Balances as Projection>::NAME, "balances");
    assert_eq!(
        Balances::event_types(),
        ["Deposited", "MoneyDeposited", "Withdrawn", "Renamed"]
    );
    assert_eq!(<Counter as Projection>::NAME, "Counter");
    assert_eq!(Counter::event_types(), ["Renamed"]);
}

#[test]
fn reset_empties_the_read_model() {
    let mut balances = Balances::default();
    balances.by_account.insert("ada".into(), 5);
    balances.names.push("Ada".into());
    Projection::reset(&mut balances);
    assert!(balances.by_account.is_empty() && balances.names.is_empty());

    let mut counter = Counter { count: 7 };
    counter.reset();
    assert_eq!(counter.count, 0);
}

/// A projection whose effects live in another system (it forwards each rename), run durably:
/// not `Default`, and no reset method, since there is nothing in process to empty.
struct Forwarder {
    sent: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[projection(name = "dispatch.forwarder")]
impl Forwarder {
    #[handles]
    fn renamed(&mut self, event: &Renamed) {
        self.sent.lock().unwrap().push(event.name.clone());
    }
}

#[test]
fn whether_reset_empties_follows_default_and_the_reset_key() {
    const { assert!(<Balances as Projection>::RESETS) };
    const { assert!(<Counter as Projection>::RESETS) };
    const { assert!(!<Forwarder as Projection>::RESETS) };
    let sent = std::sync::Arc::default();
    let mut forwarder = Forwarder {
        sent: std::sync::Arc::clone(&sent),
    };
    sent.lock().unwrap().push("kept".to_owned());
    forwarder.reset();
    assert_eq!(
        *forwarder.sent.lock().unwrap(),
        ["kept"],
        "nothing to empty"
    );
}

/// A durable projection that is not `Default` runs, and is rebuilt (its effects sent again from
/// the first event), without a reset method.
#[tokio::test]
async fn a_durable_projection_needs_neither_default_nor_reset() {
    use eventsource::subscription::Subscriptions;
    let store = InMemoryEventStore::new();
    let renames = |names: &[&str]| {
        names
            .iter()
            .map(|name| {
                NewEvent::new(&Renamed {
                    name: (*name).to_owned(),
                })
                .unwrap()
            })
            .collect()
    };
    append(&store, &stream("a"), renames(&["Ada", "Grace"])).await;
    let sent = std::sync::Arc::default();
    let mut subscriptions = Subscriptions::new(store.clone());
    let forwarder = subscriptions.add_durable(Forwarder {
        sent: std::sync::Arc::clone(&sent),
    });
    let running = subscriptions.start();
    let head = store.log_head().await.unwrap().last;
    let wait = std::time::Duration::from_secs(10);
    running.wait_until(head, wait).await.unwrap();
    assert_eq!(*sent.lock().unwrap(), ["Ada", "Grace"]);
    running.rebuild("dispatch.forwarder").await.unwrap();
    assert_eq!(*sent.lock().unwrap(), ["Ada", "Grace", "Ada", "Grace"]);
    assert_eq!(forwarder.status().checkpoint, Some(head));
    running.shutdown().await;
}
