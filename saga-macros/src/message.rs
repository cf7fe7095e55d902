use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Expr, Fields, LitStr, Type};

pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    match derive(&input) {
        Ok(tokens) => tokens,
        Err(errors) => crate::errors(errors),
    }
}

enum Correlation {
    None,
    Field(TokenStream, bool),
    Function(Expr),
}

fn is_option(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Option"))
}

fn derive(input: &DeriveInput) -> Result<TokenStream, Vec<syn::Error>> {
    let mut errors = Vec::new();
    let ident = &input.ident;
    let mut name = ident.to_string();
    let mut correlation = Correlation::None;
    let mut named = false;
    let mut krate = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("message")) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                if named {
                    return Err(meta.error("`name` is given twice"));
                }
                named = true;
                name = crate::name(&meta.value()?.parse::<LitStr>()?)?;
                Ok(())
            } else if meta.path.is_ident("correlation") {
                if !matches!(correlation, Correlation::None) {
                    return Err(meta.error("`correlation` is given twice"));
                }
                correlation = Correlation::Function(meta.value()?.parse()?);
                Ok(())
            } else if meta.path.is_ident("crate") {
                krate = Some(crate::crate_path(&meta)?);
                Ok(())
            } else {
                Err(meta.error(
                    "unknown message attribute: expected `name = \"...\"`, `correlation = path` or `crate = \"...\"`",
                ))
            }
        });
        if let Err(e) = parsed {
            errors.push(e);
        }
    }
    if let Data::Enum(data) = &input.data {
        for field in data.variants.iter().flat_map(|v| v.fields.iter()) {
            if let Some(attr) = field.attrs.iter().find(|a| a.path().is_ident("correlation")) {
                errors.push(syn::Error::new(
                    attr.meta.span(),
                    "#[correlation] marks a struct field; for an enum, use #[message(correlation = path)]",
                ));
            }
        }
    }
    if let Data::Struct(data) = &input.data {
        let fields: Vec<_> = match &data.fields {
            Fields::Named(f) => f.named.iter().collect(),
            Fields::Unnamed(f) => f.unnamed.iter().collect(),
            Fields::Unit => Vec::new(),
        };
        for (index, field) in fields.into_iter().enumerate() {
            let Some(attr) = field.attrs.iter().find(|a| a.path().is_ident("correlation")) else {
                continue;
            };
            if !matches!(correlation, Correlation::None) {
                errors.push(syn::Error::new(
                    attr.meta.span(),
                    "a message has one correlation key: remove this #[correlation] or the other one",
                ));
                continue;
            }
            let access = match &field.ident {
                Some(id) => quote!(#id),
                None => {
                    let i = syn::Index::from(index);
                    quote!(#i)
                }
            };
            correlation = Correlation::Field(access, is_option(&field.ty));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let key = match correlation {
        Correlation::None => quote!(::std::option::Option::None),
        Correlation::Field(f, false) => {
            quote!(::std::option::Option::Some(::std::string::ToString::to_string(&self.#f)))
        }
        Correlation::Field(f, true) => quote!(self.#f.as_ref().map(::std::string::ToString::to_string)),
        Correlation::Function(path) => quote!(#path(self)),
    };
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let krate = krate.unwrap_or_else(crate::default_crate);
    Ok(quote! {
        impl #impl_generics #krate::message::Message for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;
            fn correlation_key(&self) -> ::std::option::Option<::std::string::String> {
                #key
            }
        }
    })
}
