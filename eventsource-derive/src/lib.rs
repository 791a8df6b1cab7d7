//! Procedural macros of [eventsource](https://docs.rs/eventsource): `#[derive(DomainEvent)]`,
//! `#[aggregate]`, `#[projection]` and `#[handles]`.
//!
//! Use them through the runtime crate (`use eventsource::prelude::*;`), which re-exports them and
//! holds the documentation of what they generate. Each macro parses its input into the model in
//! `internals::ast`, validates it (collecting every error, see `internals::ctxt`), then expands.

#![allow(unreachable_pub)]

mod aggregate;
mod event;
mod internals;
mod projection;

use proc_macro::TokenStream;

/// Derives `eventsource::DomainEvent`: the event's stored name and schema version, its decoder,
/// and its entry in the global event registry.
///
/// ```ignore
/// #[derive(DomainEvent, Serialize, Deserialize)]
/// #[event(name = "Deposited", version = 2, aggregate = "BankAccount")]
/// struct Deposited { amount_cents: i64 }
/// ```
#[proc_macro_derive(DomainEvent, attributes(event, personal))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    event::expand(&input).into()
}

/// Turns an inherent impl block with `#[handles]` methods into an aggregate: generates
/// `eventsource::Aggregate` (decode-and-dispatch of stored events) and one
/// `eventsource::Handles<E>` per handled event, which `Root::record` requires.
///
/// ```ignore
/// #[aggregate(name = "BankAccount")]
/// impl BankAccount {
///     #[handles]
///     fn deposited(&mut self, event: &Deposited) { self.balance += event.amount_cents; }
/// }
/// ```
#[proc_macro_attribute]
pub fn aggregate(args: TokenStream, input: TokenStream) -> TokenStream {
    aggregate::expand(args.into(), input.into()).into()
}

/// Turns an inherent impl block with `#[handles]` methods into a projection (a read model):
/// generates `eventsource::Projection` when the handlers are plain `fn`s (an in-memory read
/// model), `eventsource::SqlProjection` when they are `async` and take a transaction (a read
/// model in the event store's database).
///
/// ```ignore
/// #[projection(name = "balances")]
/// impl Balances {
///     #[handles]
///     fn deposited(&mut self, event: &Deposited, ctx: &EventContext) { /* ... */ }
/// }
/// ```
#[proc_macro_attribute]
pub fn projection(args: TokenStream, input: TokenStream) -> TokenStream {
    projection::expand(args.into(), input.into()).into()
}

/// Marks a method of an `#[aggregate]` or `#[projection]` impl block as the handler of the event
/// type it borrows.
///
/// Those attributes consume these markers; a `#[handles]` found anywhere else is an error.
#[proc_macro_attribute]
pub fn handles(_args: TokenStream, input: TokenStream) -> TokenStream {
    aggregate::stray_handles(input.into()).into()
}
