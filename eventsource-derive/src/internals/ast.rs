//! The model the macros expand from: what was parsed, with the original syntax kept for spans.

use super::Ctxt;
use super::attr::{AggregateAttrs, EventAttrs, PersonalAttr, ProjectionAttrs};
use super::check::{self, Target};
use super::symbol::{HANDLES, PERSONAL};
use proc_macro2::TokenStream;
use syn::{DeriveInput, Ident, ImplItem, ItemImpl, Type};

/// A type deriving `DomainEvent`.
pub(crate) struct Event<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) attrs: EventAttrs,
    /// The fields marked `#[personal(subject = ...)]`.
    pub(crate) personal: Vec<PersonalField>,
}

/// A field marked `#[personal(subject = ...)]`: encrypted per data subject when stored.
pub(crate) struct PersonalField {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
    /// The field holding the subject's id (`None` once the missing key is reported).
    pub(crate) subject: Option<Ident>,
}

impl<'a> Event<'a> {
    pub(crate) fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let attrs = EventAttrs::from_attrs(cx, &input.attrs);
        check::event_shape(cx, input);
        check::aliases(cx, &input.ident, &attrs);
        check::upcast_chain(cx, attrs.version.map_or(1, |v| v.value), &attrs.upcasts);
        let personal = personal_fields(cx, input);
        check::personal_fields(cx, input, &personal);
        Event {
            original: input,
            attrs,
            personal,
        }
    }

    pub(crate) fn ident(&self) -> &Ident {
        &self.original.ident
    }
}

/// The `#[personal]` fields of a struct with named fields; the attribute anywhere else (a tuple
/// struct, an enum's variants) is reported, as is a `#[personal]` without `subject`.
fn personal_fields(cx: &Ctxt, input: &DeriveInput) -> Vec<PersonalField> {
    let (fields, named_struct): (Vec<&syn::Field>, bool) = match &input.data {
        syn::Data::Struct(data) => (
            data.fields.iter().collect(),
            matches!(data.fields, syn::Fields::Named(_)),
        ),
        syn::Data::Enum(data) => (
            data.variants.iter().flat_map(|v| &v.fields).collect(),
            false,
        ),
        syn::Data::Union(_) => (Vec::new(), false),
    };
    let mut personal = Vec::new();
    for field in fields {
        let Some(attr) = PersonalAttr::from_attrs(cx, &field.attrs) else {
            continue;
        };
        let Some(ident) = field.ident.clone().filter(|_| named_struct) else {
            cx.error_spanned_by(
                &attr.keyword,
                format!(
                    "`#[{PERSONAL}]` is supported on the named fields of a struct: the encrypted value is a top-level field of the event's JSON object"
                ),
            );
            continue;
        };
        if attr.subject.is_none() {
            cx.error_spanned_by(
                &attr.keyword,
                format!(
                    "expected `#[{PERSONAL}(subject = field)]`: the field holding the id of the person this data is about"
                ),
            );
        }
        personal.push(PersonalField {
            ident,
            ty: field.ty.clone(),
            subject: attr.subject,
        });
    }
    personal
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
        let expandable = check::impl_block(cx, &item, Target::Aggregate);
        check::generic_name(cx, &item, attrs.name.is_some(), Target::Aggregate);

        let mut handlers = Vec::new();
        let mut markers_found = false;
        for impl_item in &mut item.items {
            let ImplItem::Fn(method) = impl_item else {
                continue;
            };
            if !take_handles_markers(cx, method) {
                continue;
            }
            markers_found = true;
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
        check::duplicate_handlers(cx, &mut handlers, Target::Aggregate);
        Aggregate {
            attrs,
            item,
            handlers,
            expandable,
        }
    }
}

/// An inherent impl block under `#[projection]`.
pub(crate) struct Projection {
    pub(crate) attrs: ProjectionAttrs,
    /// The impl block as the user wrote it, with the `#[handles]` markers taken out.
    pub(crate) item: ItemImpl,
    pub(crate) handlers: Vec<ProjectionHandler>,
    /// Whether the handlers take a transaction: a `SqlProjection` rather than a `Projection`.
    pub(crate) database: bool,
    /// As for [`Aggregate::expandable`].
    pub(crate) expandable: bool,
}

/// A `#[handles]` method of a projection.
pub(crate) struct ProjectionHandler {
    /// The method and its event type, as for an aggregate's handler.
    pub(crate) base: Handler,
    /// Whether it takes a context.
    pub(crate) context: bool,
    /// Whether that context is the `&EventLocation` (the handler reads no more of it).
    pub(crate) location: bool,
    /// The `Tx` of its `tx: &mut Tx` parameter.
    pub(crate) transaction: Option<Type>,
    /// Where a return type that is not a handler's outcome is reported: on the return type.
    pub(crate) output_span: proc_macro2::Span,
}

impl Projection {
    pub(crate) fn from_ast(cx: &Ctxt, args: TokenStream, mut item: ItemImpl) -> Self {
        let attrs = ProjectionAttrs::from_args(cx, args);
        let expandable = check::impl_block(cx, &item, Target::Projection);
        check::generic_name(cx, &item, attrs.name.is_some(), Target::Projection);

        let mut signatures = Vec::new();
        let mut markers_found = false;
        for impl_item in &mut item.items {
            let ImplItem::Fn(method) = impl_item else {
                continue;
            };
            if !take_handles_markers(cx, method) {
                continue;
            }
            markers_found = true;
            if let Some(signature) = check::projection_handler_signature(cx, &method.sig) {
                let output_span = match &method.sig.output {
                    syn::ReturnType::Type(_, ty) => syn::spanned::Spanned::span(ty),
                    syn::ReturnType::Default => method.sig.ident.span(),
                };
                signatures.push((method.sig.ident.clone(), output_span, signature));
            }
        }

        if expandable && !markers_found {
            cx.error_spanned_by(
                &item.self_ty,
                "a projection needs at least one `#[handles]` method: `#[handles] fn name(&mut self, event: &EventType)`",
            );
        }

        // The kind most handlers have (the first handler's on a tie); the others are reported.
        let databases = signatures.iter().filter(|(_, _, s)| s.database).count();
        let database = match signatures.first() {
            Some((_, _, first)) if databases * 2 == signatures.len() => first.database,
            _ => databases * 2 > signatures.len(),
        };
        let mut handlers = Vec::new();
        for (method, output_span, signature) in signatures {
            let mut valid = signature.valid;
            if signature.database != database {
                valid = false;
                let this = if signature.database {
                    "this one is `async` or takes a transaction, the others do not"
                } else {
                    "this one does not take a transaction, the others do"
                };
                cx.error_spanned_by(
                    &signature.kind_tokens,
                    format!(
                        "all handlers of a projection either take a transaction (a database read model) or none (an in-memory read model): {this}"
                    ),
                );
            }
            handlers.push(ProjectionHandler {
                base: Handler {
                    method,
                    event: signature.event,
                    valid,
                    duplicate: false,
                },
                context: signature.context,
                location: signature.location,
                transaction: signature.transaction,
                output_span,
            });
        }
        check::duplicate_handlers(
            cx,
            handlers.iter_mut().map(|h| &mut h.base),
            Target::Projection,
        );
        Projection {
            attrs,
            item,
            handlers,
            database,
            expandable,
        }
    }
}

/// Takes the `#[handles]` markers out of `method` and reports misused ones. Returns whether
/// the method had any (it is a handler).
fn take_handles_markers(cx: &Ctxt, method: &mut syn::ImplItemFn) -> bool {
    let (markers, rest): (Vec<syn::Attribute>, Vec<syn::Attribute>) = method
        .attrs
        .drain(..)
        .partition(|attr| is_handles_marker(attr.path()));
    method.attrs = rest;
    let Some(first) = markers.first() else {
        return false;
    };
    if !matches!(first.meta, syn::Meta::Path(_)) {
        cx.error_spanned_by(
            &first.meta,
            "`#[handles]` takes no arguments: the event type is the type of the method's `&E` parameter",
        );
    }
    for extra in &markers[1..] {
        cx.error_spanned_by(extra, "duplicate `#[handles]` on one method");
    }
    true
}

/// `#[handles]`, or a path to it such as `#[eventsource::handles]`.
fn is_handles_marker(path: &syn::Path) -> bool {
    path.segments
        .last()
        .is_some_and(|segment| segment.ident == HANDLES && segment.arguments.is_none())
}
