// Events from other modules, named by path; `self: &mut Self`; a raw identifier; a string id.
use eventsource::prelude::*;
use eventsource::Root;

mod events {
    use eventsource::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(DomainEvent, Serialize, Deserialize)]
    pub struct ItemAdded {
        pub sku: String,
    }

    pub mod nested {
        use eventsource::prelude::*;
        use serde::{Deserialize, Serialize};

        #[allow(non_camel_case_types)]
        #[derive(DomainEvent, Serialize, Deserialize)]
        pub struct r#Shipped;
    }
}

#[derive(Default)]
struct Order {
    items: Vec<String>,
    shipped: bool,
}

#[aggregate(name = "Order", id = String)]
impl Order {
    #[handles]
    fn item_added(self: &mut Self, event: &events::ItemAdded) {
        self.items.push(event.sku.clone());
    }

    #[handles]
    fn shipped(&mut self, _event: &crate::events::nested::Shipped) {
        self.shipped = true;
    }
}

fn main() {
    assert_eq!(<events::nested::Shipped as DomainEvent>::EVENT_TYPE, "Shipped");
    let mut order = Root::<Order>::new("order-123".to_string());
    order.record(events::ItemAdded { sku: "book".into() });
    order.record(events::nested::Shipped);
    assert_eq!(order.stream_id().to_string(), "Order/order-123");
    assert_eq!(order.state().items, ["book"]);
    assert!(order.state().shipped);
}
