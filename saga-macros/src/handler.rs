//! `#[handler]`: an `async fn` becomes a participant, in the manner of actix-web's route
//! macros: the function's name becomes a unit struct that implements `Handler`, and the body
//! moves to its associated function `call`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, FnArg, ItemFn, LitStr, Type};

struct HandlerArgs {
    name: Option<String>,
    scope: Option<String>,
    retry: Option<Expr>,
    krate: syn::Path,
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let e = e.to_compile_error();
            return quote!(#item #e);
        }
    };
    let mut parsed = HandlerArgs { name: None, scope: None, retry: None, krate: crate::default_crate() };
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            parsed.name = Some(crate::name(&meta.value()?.parse::<LitStr>()?)?);
        } else if meta.path.is_ident("scope") {
            parsed.scope = Some(crate::name(&meta.value()?.parse::<LitStr>()?)?);
        } else if meta.path.is_ident("retry") {
            parsed.retry = Some(meta.value()?.parse()?);
        } else if meta.path.is_ident("crate") {
            parsed.krate = crate::crate_path(&meta)?;
        } else {
            return Err(meta.error(
                "unknown handler argument: expected `name = \"...\"`, `scope = \"...\"`, `retry = policy` or `crate = \"...\"`",
            ));
        }
        Ok(())
    });
    let mut errors = Vec::new();
    if let Err(e) = syn::parse::Parser::parse2(parser, args) {
        errors.push(e);
    }
    match generate(&function, &parsed) {
        Ok(tokens) if errors.is_empty() => tokens,
        Ok(_) => fallback(&function, &parsed, errors),
        Err(e) => {
            errors.push(e);
            fallback(&function, &parsed, errors)
        }
    }
}

/// What a handler with errors expands to beside them (as thiserror's fallback does): the unit
/// struct, its `Handler` impl with a body that is never run, and the function as written as its
/// `call`, so that the code registering the handler reports nothing more than the mistake and
/// the body is still checked. The crate does not compile, so nothing here runs.
fn fallback(function: &ItemFn, args: &HandlerArgs, errors: Vec<syn::Error>) -> TokenStream {
    let errors = crate::errors(errors);
    let sig = &function.sig;
    if !sig.generics.params.is_empty() {
        return quote!(#function #errors);
    }
    let (ident, vis, block) = (&sig.ident, &function.vis, &function.block);
    let krate = &args.krate;
    let name = args.name.clone().unwrap_or_else(|| ident.to_string());
    let message = match sig.inputs.first() {
        Some(FnArg::Typed(p)) if !matches!(&*p.ty, Type::Reference(_)) => {
            let ty = &p.ty;
            quote!(#ty)
        }
        _ => quote!(#krate::__private::NoMessage),
    };
    let mut call = sig.clone();
    call.ident = syn::Ident::new("call", ident.span());
    let never_run = quote! {{
        let _ = (input, ctx);
        ::std::unreachable!("#[handler] reported errors on this function")
    }};
    let handler_impl = handler_impl(ident, &message, &name, krate, TokenStream::new(), never_run);
    quote! {
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #ident;

        impl #ident {
            #[allow(dead_code)]
            #vis #call #block
        }

        #handler_impl

        #errors
    }
}

fn is_handler_context(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => {
            r.mutability.is_some()
                && matches!(&*r.elem, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "HandlerContext"))
        }
        _ => false,
    }
}

fn generate(function: &ItemFn, args: &HandlerArgs) -> syn::Result<TokenStream> {
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "a #[handler] must be an `async fn`: handlers run on the async runtime",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(sig.generics.span(), "a #[handler] cannot be generic"));
    }
    let shape =
        "a #[handler] is `async fn name(message: Message, ctx: &mut HandlerContext) -> ...` (the context is optional)";
    let mut inputs = sig.inputs.iter();
    let message = match inputs.next() {
        Some(FnArg::Typed(p)) if !matches!(&*p.ty, Type::Reference(_)) => (*p.ty).clone(),
        Some(other) => {
            return Err(syn::Error::new(
                other.span(),
                format!("the first parameter is the message, by value: {shape}"),
            ));
        }
        None => return Err(syn::Error::new(sig.paren_token.span.join(), format!("no message parameter: {shape}"))),
    };
    let with_ctx = match inputs.next() {
        None => false,
        Some(FnArg::Typed(p)) if is_handler_context(&p.ty) => true,
        Some(other) => {
            return Err(syn::Error::new(
                other.span(),
                format!("the second parameter is `&mut HandlerContext`: {shape}"),
            ));
        }
    };
    if let Some(extra) = inputs.next() {
        return Err(syn::Error::new(extra.span(), format!("too many parameters: {shape}")));
    }
    let ident = &sig.ident;
    let vis = &function.vis;
    // Documentation goes on the struct users see; every other attribute stays on the body.
    let (docs, attrs): (Vec<_>, Vec<_>) = function.attrs.iter().partition(|a| a.path().is_ident("doc"));
    let block = &function.block;
    let inputs = &sig.inputs;
    let output = &sig.output;
    let name = args.name.clone().unwrap_or_else(|| ident.to_string());
    let krate = &args.krate;
    let scope = args.scope.as_ref().map(|s| quote!(fn scope(&self) -> &str { #s }));
    let retry = args.retry.as_ref().map(|r| quote!(fn retry_policy(&self) -> #krate::saga::RetryPolicy { #r }));
    // Spanned at the user's signature and return type, so that a non-`Send` future or an
    // unusable return type is reported there.
    let call = if with_ctx { quote!(Self::call(input, ctx)) } else { quote!(Self::call(input)) };
    let call = quote_spanned!(sig.span()=> #call.await);
    let output_span = match output {
        syn::ReturnType::Type(_, ty) => ty.span(),
        syn::ReturnType::Default => ident.span(),
    };
    let krate_at_output = crate::respan(krate, output_span);
    let into_replies = quote_spanned! {output_span=>
        #krate_at_output::__private::into_replies(output, ctx)
    };
    let boxed = quote_spanned! {sig.span()=>
        ::std::boxed::Box::pin(async move {
            let output = #call;
            #into_replies
        })
    };
    let handler_impl = handler_impl(ident, &quote!(#message), &name, krate, quote!(#scope #retry), boxed);
    let krate_at_message = crate::respan(krate, message.span());
    let message_check = quote_spanned! {message.span()=>
        #krate_at_message::__private::assert_message::<#message>();
    };
    Ok(quote! {
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #ident;

        impl #ident {
            /// The handler's body.
            #(#attrs)*
            #vis async fn call(#inputs) #output #block
        }

        #handler_impl

        const _: () = {
            #[allow(dead_code)]
            fn __sagaflow_checks() {
                #message_check
            }
        };
    })
}

/// `impl Handler for ident`: its input, name, the optional methods in `options`, and `handle`
/// with `body` (which may use `input` and `ctx`).
fn handler_impl(
    ident: &syn::Ident,
    message: &TokenStream,
    name: &str,
    krate: &syn::Path,
    options: TokenStream,
    body: TokenStream,
) -> TokenStream {
    quote! {
        impl #krate::engine::Handler for #ident {
            type Input = #message;

            fn name(&self) -> &str {
                #name
            }

            #options

            // The shape `async_trait` gives the trait's method, written out so that the future
            // is boxed at the user's signature: a non-`Send` body is reported there.
            fn handle<'life0, 'life1, 'async_trait>(
                &'life0 self,
                input: #message,
                ctx: &'life1 mut #krate::engine::HandlerContext,
            ) -> ::std::pin::Pin<::std::boxed::Box<
                dyn ::std::future::Future<Output = ::std::result::Result<(), #krate::HandlerError>>
                    + ::std::marker::Send
                    + 'async_trait,
            >>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                Self: 'async_trait,
            {
                #body
            }
        }
    }
}
