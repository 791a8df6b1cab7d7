//! Expansion of `#[derive(DomainEvent)]`.

use crate::internals::Ctxt;
use crate::internals::ast::Event;
use crate::internals::attr::{Upcast, UpcastStep};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use std::collections::BTreeMap;
use syn::ext::IdentExt;
use syn::spanned::Spanned;

pub(crate) fn expand(input: &syn::DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let event = Event::from_ast(&cx, input);
    if cx.has_errors() {
        let fallback = fallback(&event);
        let errors = cx.into_compile_errors();
        return quote!(#errors #fallback);
    }

    let krate = event
        .attrs
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::eventsource));
    let ident = event.ident();
    let name = match &event.attrs.name {
        Some(lit) => lit.value(),
        None => ident.unraw().to_string(),
    };
    let version = event.attrs.version.map_or(1, |v| v.value);
    let aggregate = match &event.attrs.aggregate {
        Some(lit) => quote!(#krate::__private::Some(#lit)),
        None => quote!(#krate::__private::None),
    };

    let aliases = &event.attrs.aliases;
    let decode = decode_body(&krate, version, &event.attrs.upcasts);
    let versions: Vec<u32> = {
        let mut versions: Vec<u32> = event
            .attrs
            .upcasts
            .iter()
            .map(|u| u.from_version.value)
            .collect();
        versions.push(version);
        versions.sort_unstable();
        versions
    };

    let personal: Vec<TokenStream> = event
        .personal
        .iter()
        .filter_map(|field| {
            let name = field.ident.unraw().to_string();
            let subject = field.subject.as_ref()?.unraw().to_string();
            Some(quote!(#krate::protection::PersonalField::new(#name, #subject)))
        })
        .collect();
    // Personal fields are declared apart from the core event trait: their own trait, and an
    // entry in the registry the `ProtectedStore` reads.
    let personal = (!personal.is_empty()).then(|| {
        quote! {
            #[automatically_derived]
            impl #krate::protection::PersonalData for #ident {
                const FIELDS: &'static [#krate::protection::PersonalField] = &[#(#personal),*];
            }

            #krate::__private::inventory::submit! {
                #krate::protection::PersonalEventType::of::<#ident>()
            }
        }
    });

    quote! {
        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #krate::DomainEvent for #ident {
                const EVENT_TYPE: &'static str = #name;
                const SCHEMA_VERSION: u32 = #version;
                const AGGREGATE_TYPE: #krate::__private::Option<&'static str> = #aggregate;
                const ALIASES: &'static [&'static str] = &[#(#aliases),*];
                const DECODABLE_VERSIONS: &'static [u32] = &[#(#versions),*];

                fn decode(
                    __schema_version: u32,
                    __payload: &str,
                ) -> #krate::__private::Result<Self, #krate::DecodeError> {
                    #decode
                }
            }

            #krate::__private::inventory::submit! {
                #krate::__private::EventType::of::<#ident>()
            }

            #personal
        };
    }
}

/// What a derive that failed validation still emits: an impl of `DomainEvent` whose constants
/// match nothing, so that the type's handlers and `record` calls do not each add an error
/// telling the user to derive what they derive. None for a generic type or a union, whose impl
/// would raise errors of its own.
fn fallback(event: &Event) -> TokenStream {
    let input = event.original;
    if !input.generics.params.is_empty() || matches!(input.data, syn::Data::Union(_)) {
        return TokenStream::new();
    }
    let krate = event
        .attrs
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::eventsource));
    let ident = event.ident();
    // Not a name any store accepts (it holds control characters), so it clashes with no event.
    let name = format!("\u{0}invalid event {}", ident.unraw());
    quote! {
        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #krate::DomainEvent for #ident {
                const EVENT_TYPE: &'static str = #name;
                const SCHEMA_VERSION: u32 = 1;
                const AGGREGATE_TYPE: #krate::__private::Option<&'static str> = #krate::__private::None;
                const ALIASES: &'static [&'static str] = &[];
                const DECODABLE_VERSIONS: &'static [u32] = &[];

                fn decode(
                    __schema_version: u32,
                    _: &str,
                ) -> #krate::__private::Result<Self, #krate::DecodeError> {
                    #krate::__private::Err(#krate::DecodeError::UnsupportedSchemaVersion {
                        stored: __schema_version,
                        current: 1,
                    })
                }
            }
        };
    }
}

/// The body of `DomainEvent::decode`: one match arm per decodable schema version, each walking
/// the upcast chain from that version to the current type.
fn decode_body(krate: &syn::Path, current: u32, upcasts: &[Upcast]) -> TokenStream {
    let steps: BTreeMap<u32, &UpcastStep> = upcasts
        .iter()
        .map(|u| (u.from_version.value, &u.step))
        .collect();
    let arms = steps.keys().map(|&stored| {
        let chain = chain_from(krate, stored, current, &steps);
        quote!(#stored => #krate::__private::Ok(#chain),)
    });
    quote! {
        match __schema_version {
            #current => #krate::__private::from_json::<Self>(__payload),
            #(#arms)*
            __stored => #krate::__private::Err(#krate::DecodeError::UnsupportedSchemaVersion {
                stored: __stored,
                current: #current,
            }),
        }
    }
}

/// What the decoding expression holds at one point of the chain.
enum Form<'a> {
    /// The stored text, `__payload`.
    Text,
    /// A `serde_json::Value` (after a JSON step).
    Json,
    /// A value of this type (after a typed step).
    Typed(&'a syn::Type),
}

/// The expression that decodes a payload stored at `stored` into `Self`.
fn chain_from(
    krate: &syn::Path,
    stored: u32,
    current: u32,
    steps: &BTreeMap<u32, &UpcastStep>,
) -> TokenStream {
    let mut expr = quote!(__payload);
    let mut form = Form::Text;
    for version in stored..current {
        match steps[&version] {
            UpcastStep::Typed(ty) => {
                expr = into_type(krate, expr, &form, &quote!(#ty), version, current);
                form = Form::Typed(ty);
            }
            UpcastStep::Json(function) => {
                let value = match form {
                    Form::Text => {
                        quote!(#krate::__private::from_json::<#krate::__private::Value>(#expr)?)
                    }
                    Form::Json => expr,
                    Form::Typed(_) => quote!(#krate::__private::to_json(#expr)?),
                };
                // Coerced to a function pointer on the user's path, so that a function of another
                // signature is reported there as not being a `JsonUpcaster`.
                let upcaster = quote_spanned! {function.span()=>
                    {
                        let __upcaster: fn(_) -> _ = #function;
                        __upcaster
                    }
                };
                expr =
                    quote!(#krate::__private::upcast_json(#upcaster, #value, #version, #current)?);
                form = Form::Json;
            }
        }
    }
    into_type(krate, expr, &form, &quote!(Self), current, current)
}

/// Converts the chain's current expression into `target`, the type of schema version `version`.
fn into_type(
    krate: &syn::Path,
    expr: TokenStream,
    form: &Form,
    target: &TokenStream,
    version: u32,
    current: u32,
) -> TokenStream {
    match form {
        Form::Text => quote!(#krate::__private::from_json::<#target>(#expr)?),
        Form::Json => quote!(#krate::__private::from_value::<#target>(#expr)?),
        Form::Typed(previous) => {
            let from = version - 1;
            quote!(#krate::__private::upcast::<#previous, #target>(#expr, #from, #version, #current)?)
        }
    }
}
