// `crate = "..."` for applications that reach eventsource through a re-export.
mod framework {
    pub use ::eventsource as es;
}

use framework::es::{DomainEvent, aggregate};
use serde::{Deserialize, Serialize};

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(crate = "crate::framework::es", name = "Pinged")]
struct Ping;

#[derive(Default)]
struct Pinger {
    pings: u32,
}

#[aggregate(crate = "crate::framework::es", unknown_events = "ignore")]
impl Pinger {
    #[handles]
    fn ping(&mut self, _event: &Ping) {
        self.pings += 1;
    }
}

fn main() {
    let mut pinger = framework::es::Root::<Pinger>::new(framework::es::Uuid::nil());
    pinger.record(Ping);
    assert_eq!(pinger.state().pings, 1);
    assert_eq!(<Pinger as framework::es::Aggregate>::UNKNOWN_EVENTS, framework::es::UnknownEvents::Ignore);
}
