//! The bus conformance suite: every case against every bus, each on its real server (Redis,
//! RabbitMQ, NATS JetStream; skipped with a message when one is unreachable, failed under `CI`).

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
        );
    )*};
}

every_bus!(memory_bus, redis_bus, rabbitmq_bus, nats_bus);

#[allow(dead_code)]
fn _uses(_: OrderPlaced) {}
