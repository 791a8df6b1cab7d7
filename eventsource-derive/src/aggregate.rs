//! Expansion of `#[aggregate]` (and of a `#[handles]` found outside of one).

use crate::internals::Ctxt;
use crate::internals::ast::{Aggregate, Handler};
use crate::internals::attr::UnknownEvents;
use crate::internals::check::type_string;
use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let item: syn::ItemImpl = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(_) => {
            // Keep the user's item so that the rest of their code still resolves.
            let error = syn::Error::new(
                proc_macro2::Span::call_site(),
                "`#[aggregate]` goes on an inherent impl block: `#[aggregate] impl BankAccount { ... }`",
            );
            let error = error.into_compile_error();
            return quote!(#error #input);
        }
    };

    let cx = Ctxt::new();
    let aggregate = Aggregate::from_ast(&cx, args, item);
    let errors = cx.into_compile_errors();
    let item = &aggregate.item;
    let generated = if aggregate.expandable {
        generate(&aggregate)
    } else {
        TokenStream::new()
    };
    quote! {
        #errors
        #item
        #generated
    }
}

/// `#[handles]` on its own: only ever reached outside an `#[aggregate]` or `#[projection]` impl
/// block, because those remove the markers before they expand.
pub(crate) fn stray_handles(input: TokenStream) -> TokenStream {
    let error = syn::Error::new(
        proc_macro2::Span::call_site(),
        "`#[handles]` must be used inside an `#[aggregate]` or `#[projection]` impl block",
    )
    .into_compile_error();
    quote!(#error #input)
}

fn generate(aggregate: &Aggregate) -> TokenStream {
    let item = &aggregate.item;
    let krate = aggregate
        .attrs
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::eventsource));
    let self_ty = &item.self_ty;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let name = match &aggregate.attrs.name {
        Some(lit) => lit.value(),
        None => type_name(self_ty),
    };
    let id = match &aggregate.attrs.id {
        Some(ty) => ty.to_token_stream(),
        None => quote!(#krate::Uuid),
    };
    let error = match &aggregate.attrs.error {
        Some(ty) => ty.to_token_stream(),
        None => quote!(#krate::__private::Infallible),
    };
    let policy = match aggregate.attrs.unknown_events {
        UnknownEvents::Error => quote!(Error),
        UnknownEvents::Warn => quote!(Warn),
        UnknownEvents::Ignore => quote!(Ignore),
    };

    let handlers: Vec<&Handler> = aggregate.handlers.iter().filter(|h| !h.duplicate).collect();
    let valid: Vec<&Handler> = handlers.iter().copied().filter(|h| h.valid).collect();
    let retired = &aggregate.attrs.retired;
    let snapshot_every = match aggregate.attrs.snapshot_every {
        Some(n) => quote!(#krate::__private::Some(#n)),
        None => quote!(#krate::__private::None),
    };
    let state_version = aggregate.attrs.state_version.unwrap_or(1);
    let handled_names = valid
        .iter()
        .map(|h| handled(&krate, &h.event, quote!(EVENT_TYPE)));
    let dispatch = valid.iter().map(|h| {
        let method = &h.method;
        let event_type = handled(&krate, &h.event, quote!(EVENT_TYPE));
        let aliases = handled(&krate, &h.event, quote!(ALIASES));
        let decode = handled(&krate, &h.event, quote!(decode_stored));
        quote! {
            if #krate::__private::is_named(__event.event_type, #event_type, #aliases) {
                let __decoded = #decode(__event)?;
                Self::#method(self, &__decoded);
                return #krate::__private::Ok(());
            }
        }
    });
    let handles_impls = handlers.iter().map(|h| {
        let event = &h.event;
        let method = &h.method;
        let body = if h.valid {
            quote!(Self::#method(self, event))
        } else {
            // The signature error is already reported; this stub only avoids a cascade of
            // "does not handle" errors at every `record` of this event.
            quote!(let _ = event;)
        };
        // On the handler's event type: two handlers of one type reached through a type alias
        // conflict here, and rustc then points at both parameters instead of at `#[aggregate]`.
        // The bound is under a `for<...>` so that rustc takes it as the impl's condition instead
        // of checking it here: a type that is not an event is reported once, as `Handled`.
        let mut where_clause = where_clause
            .cloned()
            .unwrap_or_else(|| syn::parse_quote!(where));
        where_clause
            .predicates
            .push(syn::parse_quote!(for<'__e> #event: #krate::DomainEvent));
        respan(
            quote! {
                #[automatically_derived]
                impl #impl_generics #krate::Handles<#event> for #self_ty #where_clause {
                    #[inline]
                    fn handle(&mut self, event: &#event) {
                        #body
                    }
                }
            },
            event.span(),
        )
    });
    let checks = compile_time_checks(&krate, &name, &handlers, retired);

    let one_block = one_block_marker("aggregate", self_ty);

    quote! {
        #one_block

        #[doc(hidden)]
        const _: () = {

            #[automatically_derived]
            impl #impl_generics #krate::Aggregate for #self_ty #where_clause {
                const TYPE: &'static str = #name;
                type Id = #id;
                type Error = #error;
                const UNKNOWN_EVENTS: #krate::UnknownEvents = #krate::UnknownEvents::#policy;
                const HANDLED_EVENTS: &'static [&'static str] = &[#(#handled_names),*];
                const RETIRED_EVENTS: &'static [&'static str] = &[#(#retired),*];
                const SNAPSHOT_EVERY: #krate::__private::Option<u64> = #snapshot_every;
                const STATE_VERSION: u32 = #state_version;

                fn apply(
                    &mut self,
                    __event: #krate::EventView<'_>,
                ) -> #krate::__private::Result<(), #krate::Error> {
                    #(#dispatch)*
                    #krate::__private::unhandled_event::<Self>(__event)
                }
            }

            #(#handles_impls)*

            #checks
        };
    }
}

/// A second `#[aggregate]` (or `#[projection]`, `kind`) block for one type would be a second
/// trait impl, which rustc reports as conflicting implementations (E0119, words we cannot
/// choose). Name resolution comes before coherence, so an item whose name says the rule,
/// defined by each block, makes the first error read "the name
/// `one_aggregate_block_per_type__Account` is defined multiple times". Only for a type path
/// without generic arguments: `impl Counter<A>` and `impl Counter<B>` are two types.
pub(crate) fn one_block_marker(kind: &str, self_ty: &syn::Type) -> TokenStream {
    let syn::Type::Path(path) = self_ty else {
        return TokenStream::new();
    };
    if path.qself.is_some()
        || path
            .path
            .segments
            .iter()
            .any(|segment| !segment.arguments.is_none())
    {
        return TokenStream::new();
    }
    let joined: Vec<String> = path
        .path
        .segments
        .iter()
        .map(|segment| segment.ident.unraw().to_string())
        .collect();
    let ident = syn::Ident::new(
        &format!("one_{kind}_block_per_type__{}", joined.join("__")),
        path.span(),
    );
    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, dead_code)]
        const #ident: () = ();
    }
}

/// Checks that need the events' constants, so they run in const evaluation: no two handled
/// event types share a stored name (dispatch is by name), and an event that names its aggregate
/// is handled only by that aggregate.
fn compile_time_checks(
    krate: &syn::Path,
    name: &str,
    handlers: &[&Handler],
    retired: &[syn::LitStr],
) -> TokenStream {
    let events: Vec<&syn::Type> = handlers.iter().map(|h| &h.event).collect();
    let mut checks = name_overlap_checks(krate, name, &events);
    for handler in handlers {
        let event = &handler.event;
        let message = format!(
            "`{}` is handled by aggregate `{name}`, but its #[event(aggregate = \"...\")] names another aggregate",
            type_string(event)
        );
        let aggregate_type = handled(krate, event, quote!(AGGREGATE_TYPE));
        checks.extend(quote_spanned! {event.span()=>
            const _: () = ::core::assert!(
                #krate::__private::belongs_to(#aggregate_type, #name),
                #message
            );
        });
        // A retired name is always skipped (the README's promise), so a handler of it would
        // never run: reported on the retired name.
        let event_type = handled(krate, event, quote!(EVENT_TYPE));
        let aliases = handled(krate, event, quote!(ALIASES));
        for lit in retired {
            let message = format!(
                "{} is retired, but `{}` (handled by `{}`) is stored under that name or has it as an alias: a retired event type is always skipped; remove the handler, or take the name out of `retired`",
                lit.token(),
                type_string(event),
                handler.method,
            );
            checks.extend(quote_spanned! {lit.span()=>
                const _: () = ::core::assert!(
                    !#krate::__private::names_overlap(#event_type, #aliases, #lit, &[]),
                    #message
                );
            });
        }
    }
    checks
}

/// `<event as Handled>::item`, spanned on the event type: every use of a handled type looks the
/// same to rustc, so a type that is not an event is one error (see `__private::Handled`).
pub(crate) fn handled(krate: &syn::Path, event: &syn::Type, item: TokenStream) -> TokenStream {
    respan(
        quote!(<#event as #krate::__private::Handled>::#item),
        event.span(),
    )
}

/// Const assertions that no two of `events` (handled by `name`) share a stored name or alias:
/// dispatch is by name, so the second would never be reached.
pub(crate) fn name_overlap_checks(
    krate: &syn::Path,
    name: &str,
    events: &[&syn::Type],
) -> TokenStream {
    let mut checks = TokenStream::new();
    for (i, later_ty) in events.iter().enumerate() {
        let later_str = type_string(later_ty);
        let span = later_ty.span();
        for earlier_ty in &events[..i] {
            let earlier_str = type_string(earlier_ty);
            let message = format!(
                "`{later_str}` and `{earlier_str}` are both handled by `{name}` but share a stored event name (or alias): if one is a type alias of the other, they are the same event type, so keep one handler; if not, rename one with #[event(name = \"...\")]"
            );
            let later_name = handled(krate, later_ty, quote!(EVENT_TYPE));
            let later_aliases = handled(krate, later_ty, quote!(ALIASES));
            let earlier_name = handled(krate, earlier_ty, quote!(EVENT_TYPE));
            let earlier_aliases = handled(krate, earlier_ty, quote!(ALIASES));
            checks.extend(quote_spanned! {span=>
                const _: () = ::core::assert!(
                    !#krate::__private::names_overlap(
                        #later_name,
                        #later_aliases,
                        #earlier_name,
                        #earlier_aliases,
                    ),
                    #message
                );
            });
        }
    }
    checks
}

/// `tokens` with every span set to `span`.
pub(crate) fn respan(tokens: TokenStream, span: proc_macro2::Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let proc_macro2::TokenTree::Group(group) = &token {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                token = proc_macro2::TokenTree::Group(inner);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}

/// The default name of an aggregate or projection: the last segment of its type (`crate::bank::Account` -> `Account`).
///
/// The name as written: through a type alias (`impl Acc` where `type Acc = Account`) it is the
/// alias's. A macro cannot see through the alias, and `std::any::type_name` is not a `const fn`
/// on rustc 1.95, so the stored name cannot come from the real type; the README says so.
pub(crate) fn type_name(ty: &syn::Type) -> String {
    match ty {
        syn::Type::Path(path) => path
            .path
            .segments
            .last()
            .map(|segment| segment.ident.unraw().to_string())
            .unwrap_or_default(),
        other => other.to_token_stream().to_string(),
    }
}
