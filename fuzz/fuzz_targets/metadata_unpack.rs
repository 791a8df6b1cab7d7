//! The packed metadata column the SQL stores read (`[tenant, actor, correlation, causation,
//! extra]` as JSON), from any text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(packed) = std::str::from_utf8(data) {
        let _ = eventsource::__fuzz::unpack_metadata(packed);
    }
});
