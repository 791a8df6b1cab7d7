//! The personal-data envelope of an encrypted field (`{"$enc": "v1", "kid", "n", "c"}`) and the
//! state of a sealed snapshot (`{"$sealed": "v1", "keys", "c"}`), as a reader finds them in a
//! stored row: parsed, then decrypted with the fuzz key. The first byte picks which.
#![no_main]

use eventsource::__fuzz::{envelope_open, sealed_open};
use eventsource::StreamId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
            let _ = envelope_open("email", &value);
        }
    } else {
        let stream = StreamId::new("Customer", "c-1").expect("a valid stream");
        let _ = sealed_open(text, &stream, 3, 1);
    }
});
