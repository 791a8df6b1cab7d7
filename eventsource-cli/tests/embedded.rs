//! End-to-end tests of the embedded command line (written next).

fn main() {}
