// Typed ids keep aggregates apart: an account's id does not load an order.
use eventsource::prelude::*; use eventsource::Repository;
use serde::{Deserialize, Serialize};

eventsource::typed_id!(pub struct AccountId;);
eventsource::typed_id!(pub struct OrderId;);

#[derive(DomainEvent, Serialize, Deserialize)]
struct Placed;

#[derive(Default)]
struct Order;

#[aggregate(id = OrderId)]
impl Order {
    #[handles]
    fn placed(&mut self, _: &Placed) {}
}

async fn load_with_the_wrong_id(orders: Repository<Order, InMemoryEventStore>) {
    let account_id = AccountId::new();
    let _ = orders.load(account_id).await;
}

fn main() {
    let _ = load_with_the_wrong_id;
}
