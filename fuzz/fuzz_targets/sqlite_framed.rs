//! SQLite's framed texts (`group_concat` records with length headers): a page of a global read,
//! lean or with the whole context, and a stream read's chunk. The first byte picks which; the
//! rest is the text, as SQLite would hand it over (UTF-8).
#![no_main]

use eventsource::__fuzz::{sqlite_page, sqlite_stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    match mode % 3 {
        0 => drop(sqlite_page(text, 0, false)),
        1 => drop(sqlite_page(text, 0, true)),
        _ => drop(sqlite_stream(text, 1)),
    }
});
