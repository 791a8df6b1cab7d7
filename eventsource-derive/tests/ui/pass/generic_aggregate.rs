// A generic aggregate: one impl block, generated impls for every instantiation. It names its
// stored type (required: all instances share it).
use eventsource::prelude::*;
use eventsource::Root;
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
struct Incremented {
    by: u32,
}

trait Unit: Default + Send + Sync + 'static {
    const NAME: &'static str;
}

#[derive(Default)]
struct Meters;
impl Unit for Meters {
    const NAME: &'static str = "m";
}

#[derive(Default)]
struct Counter<U, const MAX: u32> {
    value: u32,
    unit: U,
}

#[aggregate(name = "Counter")]
impl<U: Unit, const MAX: u32> Counter<U, MAX>
where
    U: Unit,
{
    #[handles]
    fn incremented(&mut self, event: &Incremented) {
        self.value = (self.value + event.by).min(MAX);
    }

    fn describe(&self) -> String {
        let _ = &self.unit;
        format!("{}{}", self.value, U::NAME)
    }
}

fn main() {
    let mut counter = Root::<Counter<Meters, 10>>::new(Uuid::nil());
    counter.record(Incremented { by: 7 });
    counter.record(Incremented { by: 7 });
    assert_eq!(counter.state().describe(), "10m");
}
