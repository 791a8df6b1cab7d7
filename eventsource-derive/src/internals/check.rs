//! Rules that need more than one attribute or the shape of the whole item. Each violation is
//! recorded in the [`Ctxt`], spanned on the narrowest token at fault.

use super::Ctxt;
use super::ast::Handler;
use super::attr::{Upcast, UpcastStep};
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
        let version = upcast.version.value;
        if version >= current {
            cx.syn_error(syn::Error::new(
                upcast.version.span,
                format!(
                    "an upcast decodes an older schema version: {version} is not older than the event's current version {current}"
                ),
            ));
        } else if let Entry::Vacant(slot) = seen.entry(version) {
            slot.insert(upcast);
        } else {
            cx.syn_error(syn::Error::new(
                upcast.version.span,
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
                    "a `json = ...` step cannot follow a typed one: version {version} decodes to `{}`, which has no JSON form of version {}; rewrite version {version} with `json = ...` too, or decode version {} with `from = ...`",
                    ty.to_token_stream(),
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
                "the upcast chain has a gap: nothing decodes schema version {missing}, so version {} cannot reach version {current}; add `upcast(from = TypeV{missing}, version = {missing})` or a `json = ...` step",
                below.version.value
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

    let event = match inputs.next() {
        Some(FnArg::Typed(arg)) => match &*arg.ty {
            Type::Reference(reference) if reference.mutability.is_none() => {
                Some((*reference.elem).clone())
            }
            Type::Reference(reference) => {
                error(
                    reference,
                    format!(
                        "a handler receives the event as `&{}`, not `&mut`: a recorded event never changes",
                        reference.elem.to_token_stream()
                    ),
                );
                Some((*reference.elem).clone())
            }
            by_value => {
                error(
                    by_value,
                    format!(
                        "a handler borrows the event: write `&{}`; the same event is also kept to be stored",
                        by_value.to_token_stream()
                    ),
                );
                Some(by_value.clone())
            }
        },
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

    event.map(|event| (event, ok))
}

/// Each event type has one handler: later ones are reported and marked as duplicates.
pub(crate) fn duplicate_handlers(cx: &Ctxt, handlers: &mut [Handler]) {
    let mut seen: HashMap<String, syn::Ident> = HashMap::new();
    for handler in handlers {
        let key = handler.event.to_token_stream().to_string();
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
