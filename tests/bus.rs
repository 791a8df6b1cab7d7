//! The bus conformance suite: every case against every bus, each on its real server (Redis,
//! RabbitMQ, NATS JetStream, Kafka; skipped with a message when one is unreachable, failed under `CI`).

use eventsource_tests::buses::{self, *};

macro_rules! suite {
    ($bus:ident: $($case:ident),* $(,)?) => {
        mod $bus {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(bus) = super::buses::$bus().await {
                        super::buses::$case(bus).await;
                    }
                }
            )*
        }
    };
}

macro_rules! every_bus {
    ($($bus:ident),*) => {$(
        suite!($bus:
            round_trip_every_field,
            filters,
            consumers_share_groups_copy,
            unacknowledged_is_delivered_again,
            nack_retries_then_dead_letters,
            per_stream_order,
            cancelled_next_loses_nothing,
        );
    )*};
}

every_bus!(memory_bus, redis_bus, rabbitmq_bus, nats_bus, kafka_bus);

#[allow(dead_code)]
fn _uses(_: OrderPlaced) {}

/// A foreign message on the stream is reported once as `MalformedMessage`, moved to the dead
/// letters, and does not block the event behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_malformed_message_is_reported_and_skipped() {
    use eventsource::Error;
    use eventsource::bus::{BusConsumer, ConsumerGroup, EventBus};
    let Some(bus) = buses::redis_bus().await else {
        return;
    };
    let mut consumer = bus.subscribe(&ConsumerGroup::new("audit")).await.unwrap();
    let client = redis::Client::open(buses::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(bus.stream_key())
        .arg("*")
        .arg("event")
        .arg("not json at all")
        .query_async(&mut conn)
        .await
        .unwrap();
    let event = buses::recorded(
        "BusOrder",
        "o-1",
        1,
        1,
        eventsource::NewEvent::from_json("bus.OrderShipped", 1, r#"{"carrier":"dhl"}"#),
    );
    bus.publish(std::slice::from_ref(&event)).await.unwrap();

    let first = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
        .await
        .unwrap();
    assert!(
        matches!(first, Err(Error::MalformedMessage { .. })),
        "{first:?}"
    );
    let next = buses::next_within(&mut consumer, std::time::Duration::from_secs(10))
        .await
        .expect("the event behind it");
    assert_eq!(next.event(), &event);
    consumer.ack(&next).await.unwrap();
    let dead: usize = redis::cmd("XLEN")
        .arg(bus.dead_letter_key())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead, 1, "dead-lettered");
    bus.destroy().await.unwrap();
}
