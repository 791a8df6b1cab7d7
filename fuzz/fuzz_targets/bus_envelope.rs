//! The bus's wire envelope: any message bytes become an event or a reason, and an event read
//! from a message is written back to bytes that read as the same event.
#![no_main]

use eventsource::__fuzz::{bus_decode, bus_encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = bus_decode(data) {
        let again = bus_decode(&bus_encode(&event)).expect("an encoded event decodes");
        assert_eq!(again, event);
    }
});
