//! Procedural macros for sagaflow: declare messages, sagas and handlers.
//!
//! - `#[derive(Message)]` gives a type its stable wire name and correlation key;
//! - `#[saga]` on an `impl` block turns annotated methods into a saga definition;
//! - `#[handler]` on an `async fn` makes it a participant.
//!
//! Every mistake the macros can see is a compile error spanned on the user's own tokens,
//! and the user's item is still emitted so that editors keep working. The generated code
//! refers to the `sagaflow` crate as `::sagaflow`, or by the path `crate = "..."` gives (a
//! renamed dependency, a re-export). See `docs/macros.md` for every attribute.

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

/// Marks the method that starts a saga: `fn name(message: &StartMessage) -> Self`.
///
/// Read by [`macro@saga`] on the impl block; on its own it is an error that says to put
/// `#[saga]` on the impl block.
///
/// ```
/// use sagaflow::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Message)]
/// #[message(name = "ordering.order-placed")]
/// struct OrderPlaced { #[correlation] order_id: u64 }
///
/// #[derive(Serialize, Deserialize)]
/// struct Order { order_id: u64 }
///
/// #[saga(name = "order")]
/// impl Order {
///     #[start]
///     fn placed(m: &OrderPlaced) -> Self {
///         Order { order_id: m.order_id }
///     }
/// }
/// # fn main() {}
/// ```
#[proc_macro_attribute]
pub fn start(_: TokenStream, item: TokenStream) -> TokenStream {
    outside_saga("start", item)
}

/// Marks a step: `fn name(&self) -> Command` sends a command to a participant,
/// `async fn name(self, ctx: StepContext) -> Result<Self, StepError>` runs local code.
///
/// Arguments: `compensate = method`, `pivot`, `retriable`, `timeout = "30s"`,
/// `retry = policy`, `compensation_timeout = "..."`, `compensation_retry = policy`,
/// `name = "..."`. Read by [`macro@saga`] on the impl block; on its own it is an error that
/// says to put `#[saga]` on the impl block.
///
/// ```
/// use sagaflow::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Message)]
/// #[message(name = "ordering.order-placed")]
/// struct OrderPlaced { #[correlation] order_id: u64 }
/// #[derive(Serialize, Deserialize, Message)]
/// #[message(name = "catalog.reserve")]
/// struct ReserveStock { order_id: u64 }
/// #[derive(Serialize, Deserialize, Message)]
/// #[message(name = "catalog.reserved")]
/// struct StockReserved { order_id: u64 }
/// #[derive(Serialize, Deserialize, Message)]
/// #[message(name = "catalog.release")]
/// struct ReleaseStock { order_id: u64 }
/// #[derive(Serialize, Deserialize, Message)]
/// #[message(name = "catalog.released")]
/// struct StockReleased { order_id: u64 }
///
/// #[derive(Serialize, Deserialize)]
/// struct Order { order_id: u64, reserved: bool }
///
/// #[saga(name = "order")]
/// impl Order {
///     #[start]
///     fn placed(m: &OrderPlaced) -> Self {
///         Order { order_id: m.order_id, reserved: false }
///     }
///
///     #[step(compensate = release_stock, timeout = "30s")]
///     fn reserve_stock(&self) -> ReserveStock {
///         ReserveStock { order_id: self.order_id }
///     }
///
///     #[reply(reserve_stock)]
///     fn stock_reserved(&mut self, _: &StockReserved) {
///         self.reserved = true;
///     }
///
///     #[compensation]
///     fn release_stock(&self) -> ReleaseStock {
///         ReleaseStock { order_id: self.order_id }
///     }
///
///     #[reply(release_stock)]
///     fn stock_released(&mut self, _: &StockReleased) {
///         self.reserved = false;
///     }
/// }
/// # fn main() {}
/// ```
#[proc_macro_attribute]
pub fn step(_: TokenStream, item: TokenStream) -> TokenStream {
    outside_saga("step", item)
}

/// Marks the method that takes a step's (or a compensation's) reply:
/// `fn name(&mut self, reply: &Reply)`; `#[reply(step)]` for success, `#[reply(step, failure)]`
/// for the failure reply. The step is named by its method (`reserve_stock`), not by a string.
///
/// Read by [`macro@saga`] on the impl block (see [`macro@step`] for a saga that uses it); on
/// its own it is an error that says to put `#[saga]` on the impl block.
#[proc_macro_attribute]
pub fn reply(_: TokenStream, item: TokenStream) -> TokenStream {
    outside_saga("reply", item)
}

/// Marks a method that takes an event while the saga runs: `fn name(&mut self, event: &Event)`,
/// optionally returning `EventOutcome` (`Continue`, or `Abort(reason)` to compensate).
///
/// Read by [`macro@saga`] on the impl block; on its own it is an error that says to put
/// `#[saga]` on the impl block.
///
/// ```
/// use sagaflow::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Message)]
/// #[message(name = "ordering.order-placed")]
/// struct OrderPlaced { #[correlation] order_id: u64 }
/// #[derive(Serialize, Deserialize, Message)]
/// #[message(name = "ordering.order-cancelled")]
/// struct OrderCancelled { #[correlation] order_id: u64 }
///
/// #[derive(Serialize, Deserialize)]
/// struct Order { order_id: u64 }
///
/// #[saga(name = "order")]
/// impl Order {
///     #[start]
///     fn placed(m: &OrderPlaced) -> Self {
///         Order { order_id: m.order_id }
///     }
///
///     #[on]
///     fn cancelled(&mut self, _: &OrderCancelled) -> EventOutcome {
///         EventOutcome::Abort("cancelled by the buyer".into())
///     }
/// }
/// # fn main() {}
/// ```
#[proc_macro_attribute]
pub fn on(_: TokenStream, item: TokenStream) -> TokenStream {
    outside_saga("on", item)
}

/// Marks a method as a compensation, for readers: the step's `compensate = method` is what
/// makes it one, and the macro checks that some step names the marked method.
///
/// Read by [`macro@saga`] on the impl block (see [`macro@step`] for a saga that uses it); on
/// its own it is an error that says to put `#[saga]` on the impl block.
#[proc_macro_attribute]
pub fn compensation(_: TokenStream, item: TokenStream) -> TokenStream {
    outside_saga("compensation", item)
}

/// A saga attribute that ran as a macro of its own: `#[saga]` on the impl block would have read
/// and removed it first. One error, at the attribute, and the method as written.
fn outside_saga(attribute: &str, item: TokenStream) -> TokenStream {
    let error = syn::Error::new(
        proc_macro2::Span::call_site(),
        format!(
            "`#[{attribute}]` is read by `#[saga]`, and this impl block has no `#[saga]`: put `#[saga(name = \"...\")]` on the `impl` block"
        ),
    )
    .to_compile_error();
    let item = proc_macro2::TokenStream::from(item);
    quote::quote!(#error #item).into()
}

/// The path the generated code names the sagaflow crate by, unless `crate = "..."` says
/// otherwise (as serde's `#[serde(crate = "...")]` does for a renamed or re-exported crate).
pub(crate) fn default_crate() -> syn::Path {
    syn::parse_quote!(::sagaflow)
}

/// `path` with every token at `span`: inside `quote_spanned!`, so that an error in the
/// generated call is reported at the user's token, as the rest of the call is.
pub(crate) fn respan(path: &syn::Path, span: proc_macro2::Span) -> proc_macro2::TokenStream {
    quote::ToTokens::to_token_stream(path)
        .into_iter()
        .map(|mut token| {
            token.set_span(span);
            token
        })
        .collect()
}

/// The path in `crate = "..."`, spanned at the string.
pub(crate) fn crate_path(meta: &syn::meta::ParseNestedMeta) -> syn::Result<syn::Path> {
    meta.value()?.parse::<syn::LitStr>()?.parse()
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

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::quote;

    /// Whether the expansion names `::sagaflow` anywhere (a `__sagaflow_checks` ident does not).
    fn names_sagaflow(expansion: &TokenStream) -> bool {
        expansion.to_string().contains(":: sagaflow")
    }

    #[test]
    fn with_crate_given_no_macro_names_sagaflow_itself() {
        let message = crate::message::expand(quote! {
            #[message(name = "placed", crate = "deps::flow")]
            struct Placed { #[correlation] id: u32 }
        });
        let handler = crate::handler::expand(
            quote!(crate = "deps::flow", retry = deps::flow::saga::RetryPolicy::default()),
            quote!(
                async fn reserve(m: Reserve) -> Result<Reserved, Rejected> {
                    todo!()
                }
            ),
        );
        let saga = crate::saga::expand(
            quote!(name = "order", crate = "deps::flow"),
            quote! {
                impl Order {
                    #[start]
                    fn placed(m: &Placed) -> Self { todo!() }
                    #[step(compensate = release, timeout = "30s")]
                    fn reserve(&self) -> Reserve { todo!() }
                    #[reply(reserve)]
                    fn reserved(&mut self, _: &Reserved) {}
                    fn release(&self) -> Release { todo!() }
                    #[reply(release)]
                    fn released(&mut self, _: &Released) {}
                    #[on]
                    fn noted(&mut self, _: &Note) {}
                }
            },
        );
        for (what, expansion) in [("message", message), ("handler", handler), ("saga", saga)] {
            assert!(!names_sagaflow(&expansion), "{what}: {expansion}");
            assert!(expansion.to_string().contains("deps :: flow ::"), "{what}: {expansion}");
            assert!(!expansion.to_string().contains("compile_error"), "{what}: {expansion}");
        }
    }

    #[test]
    fn without_crate_the_macros_name_sagaflow() {
        let message = crate::message::expand(quote!(
            struct Placed;
        ));
        assert!(names_sagaflow(&message), "{message}");
    }
}
