//! The model the macros expand from: what was parsed, with the original syntax kept for spans.

use super::Ctxt;
use super::attr::{AggregateAttrs, EventAttrs};
use super::check;
use super::symbol::HANDLES;
use proc_macro2::TokenStream;
use syn::{DeriveInput, Ident, ImplItem, ItemImpl, Type};

/// A type deriving `DomainEvent`.
pub(crate) struct Event<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) attrs: EventAttrs,
}

impl<'a> Event<'a> {
    pub(crate) fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let attrs = EventAttrs::from_attrs(cx, &input.attrs);
        check::event_shape(cx, input);
        check::upcast_chain(cx, attrs.version.map_or(1, |v| v.value), &attrs.upcasts);
        Event {
            original: input,
            attrs,
        }
    }

    pub(crate) fn ident(&self) -> &Ident {
        &self.original.ident
    }
}

/// An inherent impl block under `#[aggregate]`.
pub(crate) struct Aggregate {
    pub(crate) attrs: AggregateAttrs,
    /// The impl block as the user wrote it, with the `#[handles]` markers taken out.
    pub(crate) item: ItemImpl,
    pub(crate) handlers: Vec<Handler>,
    /// Whether the impl block itself is one `#[aggregate]` can expand (not a trait impl, no
    /// lifetimes...). If not, only the errors and the user's item are emitted, so that the
    /// generated impls do not add the compiler's own complaints to ours.
    pub(crate) expandable: bool,
}

/// A `#[handles]` method.
pub(crate) struct Handler {
    pub(crate) method: Ident,
    /// The `E` of the method's `&E` parameter.
    pub(crate) event: Type,
    /// Whether the signature is valid; an invalid handler still gets its `Handles<E>` impl so
    /// that one bad signature does not also make every `record(E)` fail to compile.
    pub(crate) valid: bool,
    /// A second handler of an event type that already has one: reported, generates nothing.
    pub(crate) duplicate: bool,
}

impl Aggregate {
    pub(crate) fn from_ast(cx: &Ctxt, args: TokenStream, mut item: ItemImpl) -> Self {
        let attrs = AggregateAttrs::from_args(cx, args);
        let expandable = check::aggregate_impl(cx, &item);
        check::generic_aggregate_name(cx, &item, &attrs);

        let mut handlers = Vec::new();
        let mut markers_found = false;
        for impl_item in &mut item.items {
            let ImplItem::Fn(method) = impl_item else {
                continue;
            };
            let markers: Vec<syn::Attribute> = {
                let (markers, rest) = method
                    .attrs
                    .drain(..)
                    .partition(|attr| is_handles_marker(attr.path()));
                method.attrs = rest;
                markers
            };
            let Some(first) = markers.first() else {
                continue;
            };
            markers_found = true;
            if !matches!(first.meta, syn::Meta::Path(_)) {
                cx.error_spanned_by(
                    &first.meta,
                    "`#[handles]` takes no arguments: the event type is the type of the method's `&E` parameter",
                );
            }
            for extra in &markers[1..] {
                cx.error_spanned_by(extra, "duplicate `#[handles]` on one method");
            }
            if let Some((event, valid)) = check::handler_signature(cx, &method.sig) {
                handlers.push(Handler {
                    method: method.sig.ident.clone(),
                    event,
                    valid,
                    duplicate: false,
                });
            }
        }

        if expandable && !markers_found {
            cx.error_spanned_by(
                &item.self_ty,
                "an aggregate needs at least one `#[handles]` method: `#[handles] fn name(&mut self, event: &EventType)`",
            );
        }
        check::duplicate_handlers(cx, &mut handlers);
        Aggregate {
            attrs,
            item,
            handlers,
            expandable,
        }
    }
}

/// `#[handles]`, or a path to it such as `#[eventsource::handles]`.
fn is_handles_marker(path: &syn::Path) -> bool {
    path.segments
        .last()
        .is_some_and(|segment| segment.ident == HANDLES && segment.arguments.is_none())
}
