//! The command line's arguments (clap), `--db` as the URL of a store (parsed, never opened) and
//! the stream of `events`. The input is the arguments after the program's name, separated by
//! NUL bytes, any bytes (Unix arguments need not be UTF-8).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

fuzz_target!(|data: &[u8]| {
    let args: Vec<OsString> = std::iter::once(OsString::from("eventsource"))
        .chain(
            data.split(|&b| b == 0)
                .map(|arg| OsStr::from_bytes(arg).to_owned()),
        )
        .collect();
    let _ = eventsource_cli::__fuzz::parse(&args);
});
