//! Expansion of `#[projection]`: `eventsource::Projection` for an in-memory read model, or
//! `eventsource::SqlProjection` when the handlers write through a transaction.

use crate::aggregate::{handled, name_overlap_checks, respan, type_name};
use crate::internals::Ctxt;
use crate::internals::ast::{Projection, ProjectionHandler};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let item: syn::ItemImpl = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(_) => {
            // Keep the user's item so that the rest of their code still resolves.
            let error = syn::Error::new(
                proc_macro2::Span::call_site(),
                "`#[projection]` goes on an inherent impl block: `#[projection] impl OrdersByCustomer { ... }`",
            );
            let error = error.into_compile_error();
            return quote!(#error #input);
        }
    };

    let cx = Ctxt::new();
    let projection = Projection::from_ast(&cx, args, item);
    let errors = cx.into_compile_errors();
    let item = &projection.item;
    let generated = if projection.expandable {
        generate(&projection)
    } else {
        TokenStream::new()
    };
    quote! {
        #errors
        #item
        #generated
    }
}

fn generate(projection: &Projection) -> TokenStream {
    let item = &projection.item;
    let krate = projection
        .attrs
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::eventsource));
    let self_ty = &item.self_ty;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let name = match &projection.attrs.name {
        Some(lit) => lit.value(),
        None => type_name(self_ty),
    };

    let handlers: Vec<&ProjectionHandler> = projection
        .handlers
        .iter()
        .filter(|h| !h.base.duplicate)
        .collect();
    let valid: Vec<&ProjectionHandler> =
        handlers.iter().copied().filter(|h| h.base.valid).collect();

    // Every use of a handled event type goes through `__private::Handled`, spanned on the
    // handler's parameter, so that a type that is not an event is reported once, in our words.
    let event_names = valid.iter().map(|h| {
        let event_type = handled(&krate, &h.base.event, quote!(EVENT_TYPE));
        let aliases = handled(&krate, &h.base.event, quote!(ALIASES));
        quote! {
            __names.push(#event_type);
            __names.extend_from_slice(#aliases);
        }
    });
    let event_types = quote! {
        fn event_types() -> #krate::__private::Vec<&'static str> {
            let mut __names = #krate::__private::Vec::new();
            #(#event_names)*
            __names
        }
    };
    let dispatch = valid.iter().map(|h| {
        let event = &h.base.event;
        let method = &h.base.method;
        let context = match (h.context, h.location) {
            (false, _) => None,
            (true, false) => Some(quote!(, __context)),
            (true, true) => Some(quote!(, &#krate::EventContext::location(__context))),
        };
        let call = if projection.database {
            quote!(Self::#method(self, &__decoded #context, &mut *__tx).await)
        } else {
            quote!(Self::#method(self, &__decoded #context))
        };
        let event_type = handled(&krate, event, quote!(EVENT_TYPE));
        let aliases = handled(&krate, event, quote!(ALIASES));
        let decode_stored = handled(&krate, event, quote!(decode_stored));
        let test = quote! {
            #krate::__private::is_named(__event.event_type, #event_type, #aliases)
        };
        let decode = quote! {
            #krate::__private::for_handler(#decode_stored(__event))
        };
        // On the handler's return type: one that is not an outcome is reported there.
        let call = respan(call, h.output_span);
        let outcome = quote_spanned! {h.output_span=>
            #krate::__private::HandlerOutcome::into_outcome
        };
        quote! {
            if #test {
                let __decoded = #decode?;
                return #outcome(#call);
            }
        }
    });
    let checks = {
        let events: Vec<&syn::Type> = handlers.iter().map(|h| &h.base.event).collect();
        name_overlap_checks(&krate, &name, &events)
    };

    let implementation = if projection.database {
        // The database is named by the first handler's transaction type.
        let tx = valid
            .iter()
            .chain(&handlers)
            .find_map(|h| h.transaction.as_ref());
        let Some(tx) = tx else {
            // No handler with a readable transaction: its error is already reported.
            return TokenStream::new();
        };
        let reset = match &projection.attrs.reset {
            Some(method) => quote_spanned! {method.span()=>
                #krate::__private::Box::pin(async move {
                    #krate::__private::HandlerOutcome::into_outcome(Self::#method(self, __tx).await)
                })
            },
            None => quote! {
                let _ = __tx;
                #krate::__private::Box::pin(async { #krate::__private::Ok(()) })
            },
        };
        quote! {
            #[automatically_derived]
            impl #impl_generics #krate::SqlProjection for #self_ty #where_clause {
                const NAME: &'static str = #name;
                type Database = <#tx as #krate::__private::TxDatabase>::Database;

                #event_types

                fn handle<'__a>(
                    &'__a mut self,
                    __event: #krate::EventView<'__a>,
                    __context: &'__a #krate::EventContext<'__a>,
                    __tx: &'__a mut #krate::__private::Transaction<Self::Database>,
                ) -> #krate::__private::BoxFuture<'__a, #krate::__private::Result<(), #krate::HandlerError>> {
                    #krate::__private::Box::pin(async move {
                        #(#dispatch)*
                        let _ = (__context, __tx);
                        #krate::__private::Ok(())
                    })
                }

                fn reset<'__a>(
                    &'__a mut self,
                    __tx: &'__a mut #krate::__private::Transaction<Self::Database>,
                ) -> #krate::__private::BoxFuture<'__a, #krate::__private::Result<(), #krate::HandlerError>> {
                    #reset
                }
            }
        }
    } else {
        let reset = match &projection.attrs.reset {
            Some(method) => quote_spanned! {method.span()=>
                fn reset(&mut self) {
                    let () = Self::#method(self);
                }
            },
            // `Default::default()` if the type is `Default`; otherwise nothing, and `RESETS`
            // tells the in-memory `add` so.
            None => quote! {
                const RESETS: bool = {
                    #[allow(unused_imports)]
                    use #krate::__private::NotDefault as _;
                    <#krate::__private::Probe<Self>>::IS_DEFAULT
                };

                fn reset(&mut self) {
                    #[allow(unused_imports)]
                    use #krate::__private::NotDefault as _;
                    <#krate::__private::Probe<Self>>::reset(self);
                }
            },
        };
        // The location is enough unless a handler takes the whole context.
        let fields = if valid.iter().any(|h| h.context && !h.location) {
            quote!(All)
        } else {
            quote!(Location)
        };
        quote! {
            #[automatically_derived]
            impl #impl_generics #krate::Projection for #self_ty #where_clause {
                const NAME: &'static str = #name;
                const CONTEXT: #krate::__private::ContextFields = #krate::__private::ContextFields::#fields;

                #event_types

                fn handle(
                    &mut self,
                    __event: #krate::EventView<'_>,
                    __context: &#krate::EventContext<'_>,
                ) -> #krate::__private::Result<(), #krate::HandlerError> {
                    #(#dispatch)*
                    let _ = __context;
                    #krate::__private::Ok(())
                }

                #reset
            }
        }
    };

    let one_block = crate::aggregate::one_block_marker("projection", self_ty);
    quote! {
        #one_block

        #[doc(hidden)]
        const _: () = {
            #implementation

            #checks
        };
    }
}
