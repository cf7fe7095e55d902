//! Procedural macros for sagaflow: declare messages, sagas and handlers.
//!
//! - `#[derive(Message)]` gives a type its stable wire name and correlation key;
//! - `#[saga]` on an `impl` block turns annotated methods into a saga definition;
//! - `#[handler]` on an `async fn` makes it a participant.
//!
//! Every mistake the macros can see is a compile error spanned on the user's own tokens,
//! and the user's item is still emitted so that editors keep working. The generated code
//! refers to the `sagaflow` crate. See `docs/macros.md` for every attribute.

mod duration;
mod handler;
mod message;
mod saga;

use proc_macro::TokenStream;

/// Implements `sagaflow::message::Message`.
///
/// `#[message(name = "...")]` sets the wire name (default: the type's name); a field marked
/// `#[correlation]`, or `#[message(correlation = path)]` naming a `fn(&Self) -> Option<String>`,
/// sets the correlation key.
#[proc_macro_derive(Message, attributes(message, correlation))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    message::expand(input.into()).into()
}

/// Declares a saga on an `impl` block of its state type; see `docs/macros.md`.
#[proc_macro_attribute]
pub fn saga(args: TokenStream, item: TokenStream) -> TokenStream {
    saga::expand(args.into(), item.into()).into()
}

/// Makes an `async fn` a participant handler; see `docs/macros.md`.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::expand(args.into(), item.into()).into()
}

/// Combines errors into one `compile_error!` stream.
pub(crate) fn errors(errors: Vec<syn::Error>) -> proc_macro2::TokenStream {
    errors.into_iter().map(|e| e.to_compile_error()).collect()
}

/// A name given in an attribute: not empty, no surrounding white space.
pub(crate) fn name(lit: &syn::LitStr) -> syn::Result<String> {
    let value = lit.value();
    if value.trim().is_empty() {
        return Err(syn::Error::new(lit.span(), "a name cannot be empty"));
    }
    if value.trim() != value {
        return Err(syn::Error::new(lit.span(), "a name cannot start or end with white space"));
    }
    Ok(value)
}
