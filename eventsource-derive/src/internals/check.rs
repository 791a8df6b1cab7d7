//! Rules that need more than one attribute or the shape of the whole item. Each violation is
//! recorded in the [`Ctxt`], spanned on the narrowest token at fault.

use super::Ctxt;
use super::ast::Handler;
use super::attr::{AggregateAttrs, Upcast, UpcastStep};
use quote::ToTokens;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use syn::{Data, DeriveInput, FnArg, GenericParam, ItemImpl, ReturnType, Signature, Type};

/// An event must be one concrete, serializable type.
pub(crate) fn event_shape(cx: &Ctxt, input: &DeriveInput) {
    if let Data::Union(data) = &input.data {
        cx.error_spanned_by(
            data.union_token,
            "`DomainEvent` cannot be derived for a union: an event is stored as JSON, use a struct or an enum",
        );
    }
    if let Some(param) = input.generics.params.first() {
        cx.error_spanned_by(
            &input.generics,
            format!(
                "`DomainEvent` cannot be derived for a generic type (`{}`): a stored event type name must decode to exactly one Rust type",
                param.to_token_stream()
            ),
        );
    }
}

/// The upcast chain of an event at schema version `current`: every declared version is older
/// than `current`, declared once, and the versions form one unbroken run up to `current - 1`
/// (a payload of any declared version can reach the current type).
pub(crate) fn upcast_chain(cx: &Ctxt, current: u32, upcasts: &[Upcast]) {
    let mut seen: BTreeMap<u32, &Upcast> = BTreeMap::new();
    for upcast in upcasts {
        let version = upcast.from_version.value;
        if version >= current {
            cx.syn_error(syn::Error::new(
                upcast.from_version.span,
                format!(
                    "an upcast decodes an older schema version: {version} is not older than the event's current version {current}"
                ),
            ));
        } else if let Entry::Vacant(slot) = seen.entry(version) {
            slot.insert(upcast);
        } else {
            cx.syn_error(syn::Error::new(
                upcast.from_version.span,
                format!("schema version {version} already has an upcast: each version is decoded one way"),
            ));
        }
    }
    for (version, upcast) in &seen {
        if let (UpcastStep::Typed(ty), Some(next)) = (&upcast.step, seen.get(&(version + 1)))
            && matches!(next.step, UpcastStep::Json(_))
        {
            cx.error_spanned_by(
                &next.keyword,
                format!(
                    "a `json = ...` step cannot follow a typed one: version {version} decodes to `{}`, which has no JSON form of version {}; rewrite version {version} with `json = ...` too, or decode version {} with `via = ...`",
                    type_string(ty),
                    version + 1,
                    version + 1
                ),
            );
        }
    }
    let Some(oldest) = seen.keys().next().copied() else {
        return;
    };
    for missing in (oldest + 1..current).filter(|v| !seen.contains_key(v)) {
        let below = (oldest..missing)
            .rev()
            .find_map(|v| seen.get(&v))
            .expect("oldest is declared");
        cx.error_spanned_by(
            &below.keyword,
            format!(
                "the upcast chain has a gap: nothing decodes schema version {missing}, so version {} cannot reach version {current}; add `upcast(from_version = {missing}, via = TypeV{missing})` or a `json = ...` step",
                below.from_version.value
            ),
        );
    }
}

/// `#[aggregate]` goes on a plain inherent impl of a named type. Returns whether it does.
pub(crate) fn aggregate_impl(cx: &Ctxt, item: &ItemImpl) -> bool {
    let mut ok = true;
    let mut error = |tokens: &dyn ToTokens, message: &str| {
        ok = false;
        cx.error_spanned_by(tokens.to_token_stream(), message);
    };
    if let Some((_, path, _)) = &item.trait_ {
        error(
            path,
            "`#[aggregate]` goes on an inherent impl block (`impl BankAccount { ... }`), not on a trait impl",
        );
    }
    if let Some(unsafety) = &item.unsafety {
        error(
            unsafety,
            "`#[aggregate]` cannot be used on an `unsafe impl`",
        );
    }
    if let Some(defaultness) = &item.defaultness {
        error(
            defaultness,
            "`#[aggregate]` cannot be used on a `default impl`",
        );
    }
    for param in &item.generics.params {
        if let GenericParam::Lifetime(lifetime) = param {
            error(
                lifetime,
                "`#[aggregate]` does not support lifetime parameters: an aggregate owns its state and lives as long as its repository (`'static`)",
            );
        }
    }
    if !matches!(&*item.self_ty, Type::Path(path) if path.qself.is_none()) {
        error(
            &item.self_ty,
            "`#[aggregate]` expects the impl block of a named struct or enum",
        );
    }
    ok
}

/// A generic aggregate names its stored type: every instance (`Counter<A>`, `Counter<B>`)
/// stores its streams under that one name, which the type's name alone would hide.
pub(crate) fn generic_aggregate_name(cx: &Ctxt, item: &ItemImpl, attrs: &AggregateAttrs) {
    let generic = item
        .generics
        .params
        .iter()
        .any(|param| !matches!(param, GenericParam::Lifetime(_)));
    if generic && attrs.name.is_none() {
        cx.error_spanned_by(
            &item.generics,
            "a generic aggregate needs an explicit `#[aggregate(name = \"...\")]`: all its instances share one stored aggregate type, so name it",
        );
    }
}

const HANDLER_SHAPE: &str = "a handler is a method `fn name(&mut self, event: &EventType)`";

/// Checks a `#[handles]` method's signature and returns the handled event type (and whether the
/// signature is valid), or `None` when no event type can be found in it.
pub(crate) fn handler_signature(cx: &Ctxt, sig: &Signature) -> Option<(Type, bool)> {
    let mut ok = true;
    let mut error = |tokens: &dyn ToTokens, message: String| {
        ok = false;
        cx.error_spanned_by(tokens.to_token_stream(), message);
    };

    if let Some(asyncness) = &sig.asyncness {
        error(
            asyncness,
            format!(
                "a handler cannot be `async`: applying an event only changes state in memory; {HANDLER_SHAPE}"
            ),
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        error(
            unsafety,
            format!("a handler cannot be `unsafe`; {HANDLER_SHAPE}"),
        );
    }
    if !sig.generics.params.is_empty() {
        error(
            &sig.generics,
            format!(
                "a handler cannot be generic: it handles one concrete event type; {HANDLER_SHAPE}"
            ),
        );
    }

    let mut inputs = sig.inputs.iter().peekable();
    match inputs.peek() {
        Some(FnArg::Receiver(receiver)) => {
            let mut_self = if receiver.colon_token.is_some() {
                // `self: &mut Self` is the long form of `&mut self`.
                matches!(&*receiver.ty, Type::Reference(r) if r.mutability.is_some()
                    && matches!(&*r.elem, Type::Path(p) if p.path.is_ident("Self")))
            } else {
                receiver.reference.is_some() && receiver.mutability.is_some()
            };
            if !mut_self {
                let message = if receiver.colon_token.is_some() {
                    format!("a handler takes `&mut self`; {HANDLER_SHAPE}")
                } else if receiver.reference.is_none() {
                    format!(
                        "a handler takes `&mut self`, not `self` by value: it changes the aggregate in place; {HANDLER_SHAPE}"
                    )
                } else {
                    format!(
                        "a handler takes `&mut self`, not `&self`: applying an event changes the aggregate's state; {HANDLER_SHAPE}"
                    )
                };
                error(receiver, message);
            }
            inputs.next();
        }
        Some(FnArg::Typed(first)) => {
            // Left in `inputs`: it is most likely the event parameter.
            error(
                first,
                format!("add `&mut self` before the event parameter; {HANDLER_SHAPE}"),
            );
        }
        None => {
            error(
                &sig.ident,
                format!("a handler takes `&mut self` and the event; {HANDLER_SHAPE}"),
            );
            return None;
        }
    }

    let mut event_ok = true;
    let event = match inputs.next() {
        Some(FnArg::Typed(arg)) => {
            let (event, valid) = event_parameter(cx, &arg.ty);
            event_ok = valid;
            event
        }
        Some(FnArg::Receiver(_)) | None => {
            error(
                &sig.ident,
                format!("a handler needs the event parameter; {HANDLER_SHAPE}"),
            );
            None
        }
    };

    for extra in inputs {
        error(
            extra,
            format!(
                "a handler takes exactly one event parameter: remove this one; {HANDLER_SHAPE}"
            ),
        );
    }

    if let ReturnType::Type(_, ty) = &sig.output {
        let unit = matches!(&**ty, Type::Tuple(tuple) if tuple.elems.is_empty());
        if !unit {
            error(
                ty,
                "a handler returns nothing: it applies a fact that already happened and cannot fail; \
                 validate in the command method, before recording the event"
                    .to_string(),
            );
        }
    }

    event.map(|event| (event, ok && event_ok))
}

/// What a handler's parameter type names.
enum Named<'a> {
    /// A plain type path: the event type.
    Event(&'a Type),
    /// `Box<E>`, `Arc<E>` or `Rc<E>`: a pointer to event `E`.
    Pointer(&'a Type),
    /// Anything else (`impl Trait`, a tuple, a slice...): no single event type.
    Other,
}

fn named(ty: &Type) -> Named<'_> {
    match ty {
        Type::Group(group) => named(&group.elem),
        Type::Paren(paren) => named(&paren.elem),
        Type::Path(path) if path.qself.is_none() => {
            let pointee = path.path.segments.last().and_then(|last| {
                let pointer = ["Box", "Arc", "Rc"].iter().any(|p| last.ident == p);
                match &last.arguments {
                    syn::PathArguments::AngleBracketed(args) if pointer && args.args.len() == 1 => {
                        match &args.args[0] {
                            syn::GenericArgument::Type(inner) => Some(inner),
                            _ => None,
                        }
                    }
                    _ => None,
                }
            });
            match pointee {
                Some(inner) => Named::Pointer(inner),
                None => Named::Event(ty),
            }
        }
        _ => Named::Other,
    }
}

const ONE_EVENT_TYPE: &str =
    "a handler takes one concrete event type by reference: `fn name(&mut self, event: &EventType)`";

/// The event type of a handler's `&E` parameter, and whether the parameter is valid. Each fault
/// is reported; the event type is still returned when the parameter names one (`&mut E`,
/// `Box<E>`), so that the aggregate keeps its `Handles<E>` and `record(E)` still compiles.
fn event_parameter(cx: &Ctxt, ty: &Type) -> (Option<Type>, bool) {
    match ty {
        Type::Reference(reference) => {
            let event = match named(&reference.elem) {
                Named::Event(event) => event,
                Named::Pointer(inner) => {
                    cx.error_spanned_by(
                        &reference.elem,
                        format!(
                            "a handler borrows the event itself: write `&{}`, not `&{}`",
                            type_string(inner),
                            type_string(&reference.elem)
                        ),
                    );
                    return (Some(inner.clone()), false);
                }
                Named::Other => {
                    cx.error_spanned_by(&reference.elem, ONE_EVENT_TYPE);
                    return (None, false);
                }
            };
            let mut valid = true;
            if let Some(lifetime) = &reference.lifetime {
                valid = false;
                cx.error_spanned_by(
                    lifetime,
                    format!(
                        "the event is borrowed for the call only: write `&{}` without a lifetime",
                        type_string(event)
                    ),
                );
            }
            if let Some(mutability) = &reference.mutability {
                valid = false;
                cx.error_spanned_by(
                    mutability,
                    format!(
                        "a handler receives the event as `&{}`, not `&mut`: a recorded event never changes",
                        type_string(event)
                    ),
                );
            }
            (Some(event.clone()), valid)
        }
        by_value => match named(by_value) {
            Named::Event(event) => {
                cx.error_spanned_by(
                    by_value,
                    format!(
                        "a handler borrows the event: write `&{}`; the same event is also kept to be stored",
                        type_string(event)
                    ),
                );
                (Some(event.clone()), false)
            }
            Named::Pointer(inner) => {
                cx.error_spanned_by(
                    by_value,
                    format!(
                        "a handler borrows the event: write `&{}`, not `{}`; the same event is also kept to be stored",
                        type_string(inner),
                        type_string(by_value)
                    ),
                );
                (Some(inner.clone()), false)
            }
            Named::Other => {
                cx.error_spanned_by(by_value, ONE_EVENT_TYPE);
                (None, false)
            }
        },
    }
}

/// A type as the user wrote it, without the spaces `to_string` puts between tokens
/// (`Box<Deposited>`, not `Box < Deposited >`).
pub(crate) fn type_string<T: ToTokens>(ty: &T) -> String {
    let spaced = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(spaced.len());
    let tokens: Vec<&str> = spaced.split(' ').collect();
    for (i, token) in tokens.iter().enumerate() {
        let next = tokens.get(i + 1).copied().unwrap_or("");
        out.push_str(token);
        let tight = matches!(*token, "<" | "::" | "&" | "(" | "[" | "'")
            || token.ends_with('&')
            || matches!(next, "<" | ">" | "::" | "," | ")" | "]" | ";")
            || next.is_empty();
        if !tight {
            out.push(' ');
        }
    }
    out
}

/// Each event type has one handler: later ones are reported and marked as duplicates.
pub(crate) fn duplicate_handlers(cx: &Ctxt, handlers: &mut [Handler]) {
    let mut seen: HashMap<String, syn::Ident> = HashMap::new();
    for handler in handlers {
        let key = type_string(&handler.event);
        if let Some(first) = seen.get(&key) {
            cx.error_spanned_by(
                &handler.event,
                format!(
                    "`{key}` already has a handler in this aggregate (`{first}`): each event type is handled by exactly one method"
                ),
            );
            handler.duplicate = true;
        } else {
            seen.insert(key, handler.method.clone());
        }
    }
}
