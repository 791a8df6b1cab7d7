//! Rules that need more than one attribute or the shape of the whole item. Each violation is
//! recorded in the [`Ctxt`], spanned on the narrowest token at fault.

use super::Ctxt;
use super::ast::Handler;
use super::ast::PersonalField;
use super::attr::{EventAttrs, Upcast, UpcastStep};
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

/// An alias is an older name of the event: not its own (stored) name, and each given once.
pub(crate) fn aliases(cx: &Ctxt, ident: &syn::Ident, attrs: &EventAttrs) {
    let name = match &attrs.name {
        Some(lit) => lit.value(),
        None => syn::ext::IdentExt::unraw(ident).to_string(),
    };
    let mut seen: Vec<String> = Vec::new();
    for alias in &attrs.aliases {
        let value = alias.value();
        if value == name {
            cx.error_spanned_by(
                alias,
                format!(
                    "`alias = \"{value}\"` is the event's own name: an alias is an older name it was stored under; remove it"
                ),
            );
        } else if seen.contains(&value) {
            cx.error_spanned_by(alias, format!("duplicate `alias = \"{value}\"`"));
        } else {
            seen.push(value);
        }
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

/// What a macro on an impl block turns it into: the words its messages use.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Aggregate,
    Projection,
}

impl Target {
    /// The attribute's name.
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            Target::Aggregate => "aggregate",
            Target::Projection => "projection",
        }
    }

    fn example_type(self) -> &'static str {
        match self {
            Target::Aggregate => "BankAccount",
            Target::Projection => "OrdersByCustomer",
        }
    }

    fn why_static(self) -> &'static str {
        match self {
            Target::Aggregate => {
                "an aggregate owns its state and lives as long as its repository (`'static`)"
            }
            Target::Projection => {
                "a projection owns its read model and lives as long as its subscription (`'static`)"
            }
        }
    }
}

/// `#[aggregate]` or `#[projection]` goes on a plain inherent impl of a named type. Returns
/// whether it does.
pub(crate) fn impl_block(cx: &Ctxt, item: &ItemImpl, target: Target) -> bool {
    let attribute = target.attribute();
    let mut ok = true;
    let mut error = |tokens: &dyn ToTokens, message: String| {
        ok = false;
        cx.error_spanned_by(tokens.to_token_stream(), message);
    };
    if let Some((_, path, _)) = &item.trait_ {
        error(
            path,
            format!(
                "`#[{attribute}]` goes on an inherent impl block (`impl {} {{ ... }}`), not on a trait impl",
                target.example_type()
            ),
        );
    }
    if let Some(unsafety) = &item.unsafety {
        error(
            unsafety,
            format!("`#[{attribute}]` cannot be used on an `unsafe impl`"),
        );
    }
    if let Some(defaultness) = &item.defaultness {
        error(
            defaultness,
            format!("`#[{attribute}]` cannot be used on a `default impl`"),
        );
    }
    for param in &item.generics.params {
        if let GenericParam::Lifetime(lifetime) = param {
            error(
                lifetime,
                format!(
                    "`#[{attribute}]` does not support lifetime parameters: {}",
                    target.why_static()
                ),
            );
        }
    }
    if !matches!(&*item.self_ty, Type::Path(path) if path.qself.is_none()) {
        error(
            &item.self_ty,
            format!("`#[{attribute}]` expects the impl block of a named struct or enum"),
        );
    }
    ok
}

/// A generic aggregate or projection is named explicitly: every instance (`Counter<A>`,
/// `Counter<B>`) shares the one name, which the type's name alone would hide.
pub(crate) fn generic_name(cx: &Ctxt, item: &ItemImpl, named: bool, target: Target) {
    let generic = item
        .generics
        .params
        .iter()
        .any(|param| !matches!(param, GenericParam::Lifetime(_)));
    if generic && !named {
        let message = match target {
            Target::Aggregate => {
                "a generic aggregate needs an explicit `#[aggregate(name = \"...\")]`: all its instances share one stored aggregate type, so name it"
            }
            Target::Projection => {
                "a generic projection needs an explicit `#[projection(name = \"...\")]`: the name keys its checkpoint, which all its instances would share, so name it"
            }
        };
        cx.error_spanned_by(&item.generics, message);
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
    let generics_ok = handler_generics(cx, sig, HANDLER_SHAPE);

    let mut inputs = sig.inputs.iter().peekable();
    let receiver_ok = receiver(cx, sig, &mut inputs, Target::Aggregate, HANDLER_SHAPE);
    if sig.inputs.is_empty() {
        return None;
    }

    let mut event_ok = true;
    let event = match inputs.next() {
        Some(FnArg::Typed(arg)) => {
            let (event, valid) = event_parameter(cx, sig, &arg.ty, KEPT_TO_BE_STORED);
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

    event.map(|event| (event, ok && generics_ok && event_ok && receiver_ok))
}

/// A handler's generic parameters: lifetimes without bounds only (`fn on<'a>(&mut self, event:
/// &'a E)` names a borrow and changes nothing); a type or const parameter would make it handle
/// no one concrete event type. Returns whether they are valid.
fn handler_generics(cx: &Ctxt, sig: &Signature, shape: &str) -> bool {
    let mut ok = true;
    for param in &sig.generics.params {
        match param {
            GenericParam::Lifetime(def) => {
                if let Some(colon) = &def.colon_token {
                    ok = false;
                    let bounds = &def.bounds;
                    cx.error_spanned_by(
                        quote::quote!(#colon #bounds),
                        "a handler's lifetime parameters cannot have bounds: the event and the context are borrowed for the call only",
                    );
                }
            }
            GenericParam::Type(_) | GenericParam::Const(_) => {
                ok = false;
                cx.error_spanned_by(
                    param,
                    format!(
                        "a handler cannot be generic: it handles one concrete event type; {shape}"
                    ),
                );
            }
        }
    }
    ok
}

/// Checks that a handler's first parameter is `&mut self` and consumes it (a typed first
/// parameter is left in `inputs`: it is most likely the event). Returns whether it is valid.
fn receiver<'a>(
    cx: &Ctxt,
    sig: &Signature,
    inputs: &mut std::iter::Peekable<impl Iterator<Item = &'a FnArg>>,
    target: Target,
    shape: &str,
) -> bool {
    let (in_place, changes) = match target {
        Target::Aggregate => (
            "it changes the aggregate in place",
            "applying an event changes the aggregate's state",
        ),
        Target::Projection => (
            "it changes the read model in place",
            "handling an event changes the read model",
        ),
    };
    match inputs.peek() {
        Some(FnArg::Receiver(receiver)) => {
            let mut_self = if receiver.colon_token.is_some() {
                // `self: &mut Self` is the long form of `&mut self`.
                matches!(&*receiver.ty, Type::Reference(r) if r.mutability.is_some()
                    && matches!(&*r.elem, Type::Path(p) if p.path.is_ident("Self")))
            } else {
                receiver.reference.is_some() && receiver.mutability.is_some()
            };
            inputs.next();
            if !mut_self {
                let message = if receiver.colon_token.is_some() {
                    format!("a handler takes `&mut self`; {shape}")
                } else if receiver.reference.is_none() {
                    format!("a handler takes `&mut self`, not `self` by value: {in_place}; {shape}")
                } else {
                    format!("a handler takes `&mut self`, not `&self`: {changes}; {shape}")
                };
                cx.error_spanned_by(receiver, message);
                return false;
            }
            true
        }
        Some(FnArg::Typed(first)) => {
            cx.error_spanned_by(
                first,
                format!("add `&mut self` before the event parameter; {shape}"),
            );
            false
        }
        None => {
            cx.error_spanned_by(
                &sig.ident,
                format!("a handler takes `&mut self` and the event; {shape}"),
            );
            false
        }
    }
}

/// What a handler's parameter type names.
enum Named<'a> {
    /// A plain type path: the event type.
    Event(&'a Type),
    /// `Box<E>`, `Arc<E>` or `Rc<E>`: a pointer to event `E`.
    Pointer(&'a Type),
    /// `Self` (or a pointer to it): the type the handler changes, not an event.
    SelfType,
    /// Anything else (`impl Trait`, a tuple, a slice...): no single event type.
    Other,
}

fn named(ty: &Type) -> Named<'_> {
    match ty {
        Type::Group(group) => named(&group.elem),
        Type::Paren(paren) => named(&paren.elem),
        Type::Path(path) if path.qself.is_none() && path.path.is_ident("Self") => Named::SelfType,
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
                Some(inner) if matches!(named(inner), Named::SelfType) => Named::SelfType,
                Some(inner) => Named::Pointer(inner),
                None => Named::Event(ty),
            }
        }
        _ => Named::Other,
    }
}

/// Why an aggregate's handler borrows its event, for the messages of [`event_parameter`].
const KEPT_TO_BE_STORED: &str = "; the same event is also kept to be stored";

const NOT_SELF: &str = "`Self` is the type this handler changes (`&mut self`), not an event: a handler borrows one event type, `fn name(&mut self, event: &EventType)`";

const ONE_EVENT_TYPE: &str =
    "a handler takes one concrete event type by reference: `fn name(&mut self, event: &EventType)`";

/// The event type of a handler's `&E` parameter, and whether the parameter is valid. Each fault
/// is reported; the event type is still returned when the parameter names one (`&mut E`,
/// `Box<E>`), so that the aggregate keeps its `Handles<E>` and `record(E)` still compiles.
fn event_parameter(
    cx: &Ctxt,
    sig: &Signature,
    ty: &Type,
    why_borrowed: &str,
) -> (Option<Type>, bool) {
    if matches!(named(ty), Named::SelfType)
        || matches!(ty, Type::Reference(r) if matches!(named(&r.elem), Named::SelfType))
    {
        // No `Handles<Self>` either: `Self` means nothing in the generated items.
        cx.error_spanned_by(ty, NOT_SELF);
        return (None, false);
    }
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
                Named::Other | Named::SelfType => {
                    cx.error_spanned_by(&reference.elem, ONE_EVENT_TYPE);
                    return (None, false);
                }
            };
            let mut valid = true;
            // `&'_ E` is `&E`, and a lifetime the method declares names the call's borrow.
            let harmless = |lifetime: &syn::Lifetime| {
                lifetime.ident == "_"
                    || sig
                        .generics
                        .lifetimes()
                        .any(|def| def.lifetime == *lifetime)
            };
            if let Some(lifetime) = reference.lifetime.as_ref().filter(|l| !harmless(l)) {
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
                        "a handler borrows the event: write `&{}`{why_borrowed}",
                        type_string(event)
                    ),
                );
                (Some(event.clone()), false)
            }
            Named::Pointer(inner) => {
                cx.error_spanned_by(
                    by_value,
                    format!(
                        "a handler borrows the event: write `&{}`, not `{}`{why_borrowed}",
                        type_string(inner),
                        type_string(by_value)
                    ),
                );
                (Some(inner.clone()), false)
            }
            Named::Other | Named::SelfType => {
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
pub(crate) fn duplicate_handlers<'a>(
    cx: &Ctxt,
    handlers: impl IntoIterator<Item = &'a mut Handler>,
    target: Target,
) {
    let noun = target.attribute();
    let mut seen: HashMap<String, syn::Ident> = HashMap::new();
    for handler in handlers {
        let key = type_string(&handler.event);
        if let Some(first) = seen.get(&key) {
            cx.error_spanned_by(
                &handler.event,
                format!(
                    "`{key}` already has a handler in this {noun} (`{first}`): each event type is handled by exactly one method"
                ),
            );
            handler.duplicate = true;
        } else {
            seen.insert(key, handler.method.clone());
        }
    }
}

const PROJECTION_SHAPE: &str = "a projection handler is `fn name(&mut self, event: &EventType)` (optionally with `ctx: &EventContext` after the event), or `async fn name(&mut self, event: &EventType, ctx: &EventContext<'_>, tx: &mut SqliteTx)` for a database read model";

/// Why a projection's handler borrows its event, for the messages of [`event_parameter`].
const DECODED_ONCE: &str = "; the decoded event is lent to its handler";

/// A projection handler's signature, as far as it could be read.
pub(crate) struct ProjectionSignature {
    pub(crate) event: Type,
    /// Whether the handler takes a context (`&EventContext` or `&EventLocation`) after the
    /// event.
    pub(crate) context: bool,
    /// Whether that context is the `&EventLocation`: the handler reads no more of it.
    pub(crate) location: bool,
    /// The `Tx` of a `tx: &mut Tx` parameter: the handler writes to a database read model.
    pub(crate) transaction: Option<Type>,
    /// Whether the handler is a database one (it is `async` or takes a transaction).
    pub(crate) database: bool,
    /// The tokens that make it a database or an in-memory handler, for the message when the
    /// handlers of one projection do not agree.
    pub(crate) kind_tokens: proc_macro2::TokenStream,
    pub(crate) valid: bool,
}

/// What a parameter after a projection handler's event is.
enum Extra<'a> {
    /// `&EventContext` or `&EventContext<'_>` (by any path); `true`: `&EventLocation`.
    Context(bool),
    /// `EventContext` by value or by `&mut`.
    ContextMisused,
    /// `&mut Tx`: a transaction.
    Transaction(&'a Type),
    Other,
}

/// Whether `ty` names a context: `Some(false)` the `EventContext`, `Some(true)` the
/// `EventLocation`.
fn names_context(ty: &Type) -> Option<bool> {
    match ty {
        Type::Group(group) => names_context(&group.elem),
        Type::Paren(paren) => names_context(&paren.elem),
        Type::Path(path) => match path.path.segments.last() {
            Some(last) if last.ident == "EventContext" => Some(false),
            Some(last) if last.ident == "EventLocation" => Some(true),
            _ => None,
        },
        _ => None,
    }
}

fn extra_parameter(ty: &Type) -> Extra<'_> {
    match ty {
        Type::Reference(reference) => match names_context(&reference.elem) {
            Some(_) if reference.mutability.is_some() => Extra::ContextMisused,
            Some(location) => Extra::Context(location),
            None if reference.mutability.is_some() => Extra::Transaction(&reference.elem),
            None => Extra::Other,
        },
        other if names_context(other).is_some() => Extra::ContextMisused,
        _ => Extra::Other,
    }
}

/// Checks a projection's `#[handles]` method and returns what its signature says, or `None`
/// when no event type can be found in it.
pub(crate) fn projection_handler_signature(
    cx: &Ctxt,
    sig: &Signature,
) -> Option<ProjectionSignature> {
    let mut ok = true;
    let mut error = |tokens: &dyn ToTokens, message: String| {
        ok = false;
        cx.error_spanned_by(tokens.to_token_stream(), message);
    };

    if let Some(unsafety) = &sig.unsafety {
        error(
            unsafety,
            format!("a handler cannot be `unsafe`; {PROJECTION_SHAPE}"),
        );
    }
    let generics_ok = handler_generics(cx, sig, PROJECTION_SHAPE);

    let mut inputs = sig.inputs.iter().peekable();
    let receiver_ok = receiver(cx, sig, &mut inputs, Target::Projection, PROJECTION_SHAPE);
    if sig.inputs.is_empty() {
        return None;
    }

    let mut context = false;
    let mut location = false;
    let mut event_ok = true;
    let mut event_arg = inputs.next();
    // The context written first: report the order, and read the next parameter as the event.
    if let Some(FnArg::Typed(arg)) = event_arg
        && let Extra::Context(is_location) = extra_parameter(&arg.ty)
    {
        error(
            arg,
            format!(
                "the event comes first, then the context: `fn name(&mut self, event: &EventType, ctx: &EventContext)`; {PROJECTION_SHAPE}"
            ),
        );
        context = true;
        location = is_location;
        event_arg = inputs.next();
    }
    let event = match event_arg {
        Some(FnArg::Typed(arg)) => {
            let (event, valid) = event_parameter(cx, sig, &arg.ty, DECODED_ONCE);
            event_ok = valid;
            event
        }
        Some(FnArg::Receiver(_)) | None => {
            error(
                &sig.ident,
                format!("a handler needs the event parameter; {PROJECTION_SHAPE}"),
            );
            None
        }
    };

    let mut transaction = None;
    for arg in inputs {
        let FnArg::Typed(typed) = arg else {
            continue;
        };
        match extra_parameter(&typed.ty) {
            Extra::Context(is_location) if !context && transaction.is_none() => {
                context = true;
                location = is_location;
            }
            Extra::ContextMisused if !context && transaction.is_none() => {
                context = true;
                error(
                    &typed.ty,
                    format!(
                        "a handler borrows the context: `ctx: &EventContext`; {PROJECTION_SHAPE}"
                    ),
                );
            }
            Extra::Transaction(tx) if transaction.is_none() => {
                if !context {
                    error(
                        arg,
                        format!(
                            "a database handler takes the context before the transaction: `ctx: &EventContext<'_>, tx: &mut SqliteTx`; {PROJECTION_SHAPE}"
                        ),
                    );
                }
                transaction = Some(tx.clone());
            }
            _ => error(
                arg,
                format!(
                    "a handler takes the event, the context and (for a database read model) the transaction: remove this parameter; {PROJECTION_SHAPE}"
                ),
            ),
        }
    }

    let kind_tokens = match (&sig.asyncness, &transaction) {
        (Some(asyncness), _) => asyncness.to_token_stream(),
        (None, Some(tx)) => tx.to_token_stream(),
        (None, None) => sig.ident.to_token_stream(),
    };
    match (&sig.asyncness, &transaction) {
        (Some(asyncness), None) => error(
            asyncness,
            format!(
                "an `async` handler writes to a database read model through the transaction it takes: add `ctx: &EventContext<'_>, tx: &mut SqliteTx` (or `&mut PgTx`), or remove `async` for an in-memory read model; {PROJECTION_SHAPE}"
            ),
        ),
        (None, Some(_)) => error(
            &sig.fn_token,
            format!(
                "a handler that takes a transaction is `async`: write `async fn {}(...)`; {PROJECTION_SHAPE}",
                sig.ident
            ),
        ),
        _ => {}
    }

    let database = sig.asyncness.is_some() || transaction.is_some();
    event.map(|event| ProjectionSignature {
        event,
        context,
        location,
        transaction,
        database,
        kind_tokens,
        valid: ok && generics_ok && event_ok && receiver_ok,
    })
}

/// The personal fields of an event: each names, as its subject, another field of the same
/// struct that is not personal itself (the subject's id must stay readable: it finds the key),
/// and has the type `Personal<T>` (so that an erased value decodes as `Personal::Forgotten`).
pub(crate) fn personal_fields(cx: &Ctxt, input: &DeriveInput, personal: &[PersonalField]) {
    let Data::Struct(data) = &input.data else {
        return;
    };
    // Compared as stored names: `r#type` and `type` are the same field.
    let name = |ident: &syn::Ident| syn::ext::IdentExt::unraw(ident).to_string();
    for field in personal {
        let Some(subject) = &field.subject else {
            continue;
        };
        if name(subject) == name(&field.ident) {
            cx.error_spanned_by(
                subject,
                format!(
                    "`{subject}` cannot be its own subject: the subject's id must stay readable, it finds the key that decrypts the personal fields; name another field"
                ),
            );
        } else if personal
            .iter()
            .any(|other| name(&other.ident) == name(subject))
        {
            cx.error_spanned_by(
                subject,
                format!(
                    "the subject `{subject}` is itself a personal field: the subject's id must stay readable, it finds the key that decrypts the personal fields"
                ),
            );
        } else if !data
            .fields
            .iter()
            .any(|f| f.ident.as_ref().map(name) == Some(name(subject)))
        {
            cx.error_spanned_by(
                subject,
                format!(
                    "no field `{subject}` in `{}`: `subject` names the field that holds the data subject's id",
                    input.ident
                ),
            );
        }
        if !is_personal_type(&field.ty) {
            cx.error_spanned_by(
                &field.ty,
                "a `#[personal]` field has the type `Personal<T>`, so that a value erased by `forget` decodes as `Personal::Forgotten`",
            );
        }
    }
}

/// Whether `ty` is spelled `Personal<...>` (with any path before it).
fn is_personal_type(ty: &Type) -> bool {
    match ty {
        Type::Path(path) => {
            path.qself.is_none()
                && path.path.segments.last().is_some_and(|segment| {
                    segment.ident == "Personal"
                        && matches!(segment.arguments, syn::PathArguments::AngleBracketed(_))
                })
        }
        _ => false,
    }
}
