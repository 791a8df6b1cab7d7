//! Compile-time guarantees, proven: each `tests/ui/<topic>/*.rs` must fail to
//! compile with exactly the error in the `.stderr` next to it; each `tests/ui/pass/*.rs` must
//! compile and run. Regenerate expected output only deliberately:
//! `TRYBUILD=overwrite cargo test -p eventsource-derive --test ui`.
//!
//! The cases build against this package's dev-dependencies (the runtime with SQLite and
//! PostgreSQL), not the whole workspace's: trybuild compiles their graph once more in a target
//! of its own.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/event/*.rs");
    t.compile_fail("tests/ui/aggregate/*.rs");
    t.compile_fail("tests/ui/handles/*.rs");
    t.compile_fail("tests/ui/projection/*.rs");
    t.compile_fail("tests/ui/personal/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
