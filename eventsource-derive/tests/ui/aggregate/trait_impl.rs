use eventsource::prelude::*;

#[derive(Default)]
struct Account;

trait Audit {
    fn audit(&self);
}

#[aggregate]
impl Audit for Account {
    fn audit(&self) {}
}

fn main() {}
