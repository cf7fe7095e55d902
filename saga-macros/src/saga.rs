//! `#[saga]`: an `impl` block of the state type, read top to bottom as the business flow.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, FnArg, Ident, ImplItem, ImplItemFn, ItemImpl, LitInt, LitStr, ReturnType, Signature, Type};

use crate::duration::parse_timeout;

const SAGA_ATTRS: [&str; 5] = ["start", "step", "reply", "on", "compensation"];

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut item: ItemImpl = match syn::parse2(item) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    let mut errors = Vec::new();
    let args = parse_args(args, &item).unwrap_or_else(|e| {
        errors.push(e);
        SagaArgs { name: String::new(), version: 1, krate: crate::default_crate() }
    });
    let model = Model::read(&mut item, &mut errors);
    let generated = if errors.is_empty() { model.generate(&item, &args) } else { stub(&item, &args) };
    let errors = crate::errors(errors);
    quote! {
        #item
        #generated
        #errors
    }
}

/// What a saga with errors expands to beside them (as thiserror's fallback does): an `impl
/// Saga` that type-checks, so that the code registering or naming the saga reports nothing more
/// than the mistake itself. Its definition is never run: the crate does not compile.
fn stub(item: &ItemImpl, args: &SagaArgs) -> TokenStream {
    if !item.generics.params.is_empty() {
        return TokenStream::new();
    }
    let self_ty = &item.self_ty;
    let (name, version, krate) = (&args.name, args.version, &args.krate);
    quote! {
        impl #krate::saga::Saga for #self_ty {
            const NAME: &'static str = #name;
            const VERSION: u32 = #version;
            fn definition() -> #krate::saga::SagaDefinition<Self> {
                ::std::unreachable!("#[saga] reported errors on this impl block")
            }
        }

        impl #self_ty {
            /// This saga as a Mermaid flowchart (steps, replies, compensations, pivot).
            pub fn mermaid() -> ::std::string::String {
                <Self as #krate::saga::Saga>::definition().mermaid()
            }
        }
    }
}

struct SagaArgs {
    name: String,
    version: u32,
    krate: syn::Path,
}

fn type_name(ty: &Type) -> String {
    match ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()).unwrap_or_default(),
        other => other.to_token_stream().to_string(),
    }
}

fn parse_args(args: TokenStream, item: &ItemImpl) -> syn::Result<SagaArgs> {
    let mut out = SagaArgs { name: type_name(&item.self_ty), version: 1, krate: crate::default_crate() };
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            out.name = crate::name(&meta.value()?.parse::<LitStr>()?)?;
            Ok(())
        } else if meta.path.is_ident("version") {
            out.version = meta.value()?.parse::<LitInt>()?.base10_parse()?;
            Ok(())
        } else if meta.path.is_ident("crate") {
            out.krate = crate::crate_path(&meta)?;
            Ok(())
        } else {
            Err(meta.error("unknown saga argument: expected `name = \"...\"`, `version = N` or `crate = \"...\"`"))
        }
    });
    syn::parse::Parser::parse2(parser, args)?;
    if item.trait_.is_some() {
        return Err(syn::Error::new(
            item.impl_token.span(),
            "#[saga] goes on an inherent impl of the state type: `impl MySaga { ... }`",
        ));
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Compensatable,
    Pivot,
    Retriable,
}

/// How a step or compensation method is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `fn m(&self) -> Command`
    Send,
    /// `async fn m(self, ctx: StepContext) -> Result<Self, StepError>`
    Local,
}

struct StepSpec {
    method: Ident,
    name: String,
    shape: Shape,
    command: Option<Type>,
    kind: Kind,
    kind_span: Span,
    compensate: Option<Ident>,
    timeout: Option<u64>,
    retry: Option<Expr>,
    compensation_timeout: Option<u64>,
    compensation_retry: Option<Expr>,
}

struct Reply {
    method: Ident,
    target: Ident,
    failure: bool,
    message: Type,
}

impl Reply {
    /// `.on_success::<Reply>(Self::method)` (or the failure's, the compensation's), spanned at
    /// the method; the type keeps its own span, so a type that is not a `Message` is reported
    /// there, once.
    fn registration(&self, builder_method: TokenStream) -> TokenStream {
        let (f, ty) = (&self.method, &self.message);
        quote_spanned!(f.span()=> .#builder_method::<#ty>(Self::#f))
    }
}

struct Event {
    method: Ident,
    message: Type,
    returns_outcome: bool,
}

struct Start {
    method: Ident,
    message: Type,
}

#[derive(Default)]
struct Model {
    starts: Vec<Start>,
    steps: Vec<StepSpec>,
    replies: Vec<Reply>,
    events: Vec<Event>,
    /// Every method of the impl by name, with its signature.
    methods: HashMap<String, Signature>,
    /// Methods marked `#[compensation]` (optional, for readers), with the marker's span.
    marked_compensations: Vec<(Ident, Span)>,
}

/// The type `T` of a parameter written `&T`.
fn borrowed_param(arg: &FnArg) -> Option<&Type> {
    match arg {
        FnArg::Typed(p) => match &*p.ty {
            Type::Reference(r) if r.mutability.is_none() => Some(&r.elem),
            _ => None,
        },
        FnArg::Receiver(_) => None,
    }
}

#[derive(PartialEq, Eq)]
enum Recv {
    None,
    Ref,
    RefMut,
    Value,
    Other,
}

fn receiver(sig: &Signature) -> Recv {
    match sig.inputs.first() {
        Some(FnArg::Receiver(r)) => match &r.kind {
            syn::ReceiverKind::Value => Recv::Value,
            syn::ReceiverKind::Reference(_, _, None) => Recv::Ref,
            syn::ReceiverKind::Reference(_, _, Some(_)) => Recv::RefMut,
            _ => Recv::Other,
        },
        _ => Recv::None,
    }
}

fn returned(sig: &Signature) -> Option<&Type> {
    match &sig.output {
        ReturnType::Type(_, ty) => match &**ty {
            Type::Tuple(t) if t.elems.is_empty() => None,
            ty => Some(ty),
        },
        ReturnType::Default => None,
    }
}

const STEP_SHAPES: &str = "a step or compensation is either `fn name(&self) -> Command` (send a command to a participant) \
     or `async fn name(self, ctx: StepContext) -> Result<Self, StepError>` (run local code)";

/// Classifies a step or compensation method.
fn step_shape(sig: &Signature) -> syn::Result<(Shape, Option<Type>)> {
    let recv = receiver(sig);
    let args = sig.inputs.len();
    match (sig.asyncness.is_some(), recv, args) {
        (false, Recv::Ref, 1) => match returned(sig) {
            Some(ty) => Ok((Shape::Send, Some(ty.clone()))),
            None => Err(syn::Error::new(sig.ident.span(), format!("this method returns no command: {STEP_SHAPES}"))),
        },
        (true, Recv::Value, 2) => Ok((Shape::Local, None)),
        _ => Err(syn::Error::new(sig.ident.span(), format!("wrong signature: {STEP_SHAPES}"))),
    }
}

/// The method name a step name written as a string most likely means: `reserve-stock` and
/// `reserve stock` are `reserve_stock`.
fn method_name_for(name: &str) -> String {
    name.chars().map(|c| if c.is_alphanumeric() { c } else { '_' }).collect()
}

fn take_attr(method: &mut ImplItemFn, name: &str) -> Option<syn::Attribute> {
    let pos = method.attrs.iter().position(|a| a.path().is_ident(name))?;
    Some(method.attrs.remove(pos))
}

impl Model {
    fn read(item: &mut ItemImpl, errors: &mut Vec<syn::Error>) -> Model {
        let mut model = Model::default();
        let before = errors.len();
        for impl_item in &mut item.items {
            let ImplItem::Fn(method) = impl_item else { continue };
            model.methods.insert(method.sig.ident.to_string(), method.sig.clone());
            let present: Vec<&str> =
                SAGA_ATTRS.iter().copied().filter(|a| method.attrs.iter().any(|x| x.path().is_ident(a))).collect();
            for role in &present {
                if let Some(again) = method.attrs.iter().filter(|a| a.path().is_ident(role)).nth(1) {
                    errors.push(syn::Error::new(
                        again.meta.span(),
                        format!("#[{role}] is given twice: merge them into one"),
                    ));
                }
            }
            if present.len() > 1 {
                errors.push(syn::Error::new(
                    method.sig.ident.span(),
                    format!("a method has one saga role, this one has #[{}]", present.join("] and #[")),
                ));
            }
            if let Some(attr) = take_attr(method, "start") {
                model.read_start(method, &attr, errors);
            }
            if let Some(attr) = take_attr(method, "step") {
                model.read_step(method, &attr, errors);
            }
            if let Some(attr) = take_attr(method, "reply") {
                if let Err(e) = model.read_reply(method, &attr) {
                    errors.push(e);
                }
            }
            if let Some(attr) = take_attr(method, "on") {
                model.read_event(method, &attr, errors);
            }
            if let Some(attr) = take_attr(method, "compensation") {
                model.marked_compensations.push((method.sig.ident.clone(), attr.meta.span()));
            }
            method.attrs.retain(|a| !SAGA_ATTRS.iter().any(|role| a.path().is_ident(role)));
        }
        if !item.generics.params.is_empty() {
            errors.push(syn::Error::new(
                item.generics.span(),
                "#[saga] does not support generic impls: a saga's state is one concrete type",
            ));
        }
        // A method whose role could not be read is missing from the model: what refers to it
        // (a reply to that step, the start the saga needs) would be reported as missing too.
        // One error per mistake: what is missing is reported once everything read cleanly.
        let read_cleanly = errors.len() == before;
        if model.starts.is_empty() && read_cleanly {
            errors.push(syn::Error::new(
                item.self_ty.span(),
                "a saga needs a #[start] method: `#[start] fn begin(message: &StartMessage) -> Self`",
            ));
        }
        model.check(errors, read_cleanly);
        model
    }

    fn read_start(&mut self, method: &ImplItemFn, attr: &syn::Attribute, errors: &mut Vec<syn::Error>) {
        if let Err(e) = attr.meta.require_path_only() {
            errors.push(syn::Error::new(e.span(), "#[start] takes no arguments: the message type is the parameter's"));
            return;
        }
        let sig = &method.sig;
        let ok =
            receiver(sig) == Recv::None && sig.inputs.len() == 1 && sig.asyncness.is_none() && returned(sig).is_some();
        match (ok, sig.inputs.first().and_then(borrowed_param)) {
            (true, Some(message)) => self.starts.push(Start { method: sig.ident.clone(), message: message.clone() }),
            _ => errors.push(syn::Error::new(
                sig.ident.span(),
                format!("a #[start] method is `fn {}(message: &StartMessage) -> Self`", sig.ident),
            )),
        }
    }

    fn read_step(&mut self, method: &ImplItemFn, attr: &syn::Attribute, errors: &mut Vec<syn::Error>) {
        let (shape, command) = match step_shape(&method.sig) {
            Ok(shape) => shape,
            Err(e) => {
                errors.push(e);
                return;
            }
        };
        let mut spec = StepSpec {
            method: method.sig.ident.clone(),
            name: method.sig.ident.to_string(),
            shape,
            command,
            kind: Kind::Compensatable,
            kind_span: method.sig.ident.span(),
            compensate: None,
            timeout: None,
            retry: None,
            compensation_timeout: None,
            compensation_retry: None,
        };
        if !matches!(attr.meta, syn::Meta::Path(_)) {
            let parsed = attr.parse_nested_meta(|meta| {
                let set_kind = |spec: &mut StepSpec, kind| {
                    if spec.kind == kind {
                        return Err(meta.error("given twice"));
                    }
                    if spec.kind != Kind::Compensatable {
                        return Err(meta.error("a step is either `pivot` or `retriable`, not both"));
                    }
                    spec.kind = kind;
                    spec.kind_span = meta.path.span();
                    Ok(())
                };
                if meta.path.is_ident("pivot") {
                    set_kind(&mut spec, Kind::Pivot)
                } else if meta.path.is_ident("retriable") {
                    set_kind(&mut spec, Kind::Retriable)
                } else if meta.path.is_ident("compensate") {
                    let value = meta.value()?;
                    if value.peek(LitStr) {
                        let named: LitStr = value.parse()?;
                        return Err(syn::Error::new(
                            named.span(),
                            format!(
                                "`compensate` names the method that undoes the step, not a string: `compensate = {}`",
                                method_name_for(&named.value())
                            ),
                        ));
                    }
                    spec.compensate = Some(value.parse()?);
                    Ok(())
                } else if meta.path.is_ident("timeout") {
                    spec.timeout = Some(parse_timeout(&meta.value()?.parse()?)?);
                    Ok(())
                } else if meta.path.is_ident("compensation_timeout") {
                    spec.compensation_timeout = Some(parse_timeout(&meta.value()?.parse()?)?);
                    Ok(())
                } else if meta.path.is_ident("retry") {
                    spec.retry = Some(meta.value()?.parse()?);
                    Ok(())
                } else if meta.path.is_ident("compensation_retry") {
                    spec.compensation_retry = Some(meta.value()?.parse()?);
                    Ok(())
                } else if meta.path.is_ident("name") {
                    spec.name = crate::name(&meta.value()?.parse::<LitStr>()?)?;
                    Ok(())
                } else {
                    Err(meta.error(
                        "unknown step argument: expected `compensate = method`, `timeout = \"30s\"`, `retry = policy`, \
                         `compensation_timeout = \"...\"`, `compensation_retry = policy`, `pivot`, `retriable` or `name = \"...\"`",
                    ))
                }
            });
            // A step whose arguments do not parse is still a step: its replies stay valid.
            if let Err(e) = parsed {
                errors.push(e);
            }
        }
        self.steps.push(spec);
    }

    fn read_reply(&mut self, method: &ImplItemFn, attr: &syn::Attribute) -> syn::Result<()> {
        let mut target: Option<Ident> = None;
        let mut failure = false;
        if let syn::Meta::List(list) = &attr.meta {
            if let Ok(named) = syn::parse2::<LitStr>(list.tokens.clone().into_iter().take(1).collect()) {
                return Err(self.step_named_by_string(&named));
            }
        }

        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("failure") {
                failure = true;
            } else if let Some(ident) = meta.path.get_ident().filter(|_| target.is_none()) {
                target = Some(ident.clone());
            } else {
                return Err(meta.error("expected `#[reply(step)]` or `#[reply(step, failure)]`"));
            }
            Ok(())
        })?;
        let target = target.ok_or_else(|| {
            syn::Error::new(
                attr.span(),
                "name the step this reply answers: `#[reply(step)]` or `#[reply(step, failure)]`",
            )
        })?;
        let sig = &method.sig;
        let ok = receiver(sig) == Recv::RefMut
            && sig.inputs.len() == 2
            && sig.asyncness.is_none()
            && returned(sig).is_none();
        let message = match (ok, sig.inputs.iter().nth(1).and_then(borrowed_param)) {
            (true, Some(m)) => m.clone(),
            _ => {
                return Err(syn::Error::new(
                    sig.ident.span(),
                    format!("a #[reply] method is `fn {}(&mut self, reply: &Reply)`", sig.ident),
                ));
            }
        };
        self.replies.push(Reply { method: sig.ident.clone(), target, failure, message });
        Ok(())
    }

    /// `#[reply("reserve-stock")]`: a step is named by its method. The steps read so far
    /// (those above the reply) are searched for one with that name, to name its method.
    fn step_named_by_string(&self, named: &LitStr) -> syn::Error {
        let value = named.value();
        let method = self
            .steps
            .iter()
            .find(|s| s.name == value)
            .map_or_else(|| method_name_for(&value), |s| s.method.to_string());
        syn::Error::new(named.span(), format!("a #[reply] names the step's method, not a string: `#[reply({method})]`"))
    }

    fn read_event(&mut self, method: &ImplItemFn, attr: &syn::Attribute, errors: &mut Vec<syn::Error>) {
        if let Err(e) = attr.meta.require_path_only() {
            errors.push(syn::Error::new(e.span(), "#[on] takes no arguments: the event type is the parameter's"));
            return;
        }
        let sig = &method.sig;
        let ok = receiver(sig) == Recv::RefMut && sig.inputs.len() == 2 && sig.asyncness.is_none();
        match (ok, sig.inputs.iter().nth(1).and_then(borrowed_param)) {
            (true, Some(message)) => self.events.push(Event {
                method: sig.ident.clone(),
                message: message.clone(),
                returns_outcome: returned(sig).is_some(),
            }),
            _ => errors.push(syn::Error::new(
                sig.ident.span(),
                format!(
                    "an #[on] method is `fn {}(&mut self, event: &Event)`, optionally returning `EventOutcome`",
                    sig.ident
                ),
            )),
        }
    }

    /// Checks the flow; what refers to another method is checked only if every role was read
    /// (`read_cleanly`), as a method whose role had an error is not in the model.
    fn check(&self, errors: &mut Vec<syn::Error>, read_cleanly: bool) {
        let mut step_names = HashMap::new();
        let mut pivot: Option<&StepSpec> = None;
        let mut forward_only: Option<&StepSpec> = None;
        for step in &self.steps {
            if let Some(first) = step_names.insert(step.name.clone(), &step.method) {
                errors.push(syn::Error::new(
                    step.method.span(),
                    format!("duplicate step name {:?}: `{first}` already uses it", step.name),
                ));
            }
            match step.kind {
                Kind::Pivot => {
                    if let Some(first) = pivot {
                        errors.push(syn::Error::new(
                            step.kind_span,
                            format!("a saga has one pivot, and `{}` is already the pivot", first.method),
                        ));
                    } else if let Some(before) = forward_only {
                        errors.push(syn::Error::new(
                            step.kind_span,
                            format!("the pivot must come before the retriable step `{}`", before.method),
                        ));
                    }
                    pivot = Some(step);
                    forward_only = Some(step);
                }
                Kind::Retriable => forward_only = forward_only.or(Some(step)),
                Kind::Compensatable => {
                    if let Some(before) = forward_only {
                        errors.push(syn::Error::new(
                            step.method.span(),
                            format!(
                                "step `{}` is compensatable but comes after `{}`: past the pivot nothing can be undone, \
                                 so mark it `#[step(retriable)]` or move it before the pivot",
                                step.method, before.method
                            ),
                        ));
                    }
                }
            }
            if let Some(c) = &step.compensate {
                if step.kind != Kind::Compensatable {
                    errors.push(syn::Error::new(
                        c.span(),
                        "a pivot or retriable step is never compensated: remove `compensate`",
                    ));
                }
                match self.methods.get(&c.to_string()) {
                    None if !read_cleanly => {}
                    None => errors.push(syn::Error::new(
                        c.span(),
                        format!("no method `{c}` in this impl: `compensate` names the method that undoes the step"),
                    )),
                    Some(sig) => {
                        if let Err(e) = step_shape(sig) {
                            errors.push(syn::Error::new(sig.ident.span(), format!("`{c}` cannot compensate: {e}")));
                        }
                    }
                }
                if self.steps.iter().any(|s| &s.method == c) {
                    errors.push(syn::Error::new(
                        c.span(),
                        format!("`{c}` is a step: a compensation is a method of its own"),
                    ));
                }
            }
        }
        // Replies must answer a step or a compensation, once per outcome.
        let mut answered: HashMap<(String, bool), &Ident> = HashMap::new();
        for reply in &self.replies {
            let target = reply.target.to_string();
            let is_step = self.steps.iter().any(|s| s.method == reply.target && s.shape == Shape::Send);
            let is_compensation =
                self.compensation_of(&reply.target).is_some() && self.shape_of(&reply.target) == Some(Shape::Send);
            if !is_step && !is_compensation && read_cleanly {
                errors.push(syn::Error::new(
                    reply.target.span(),
                    format!("`{target}` is not a step or a compensation that sends a command: a #[reply] answers one"),
                ));
            }
            if let Some(first) = answered.insert((target.clone(), reply.failure), &reply.method) {
                errors.push(syn::Error::new(
                    reply.method.span(),
                    format!(
                        "`{first}` already handles the {} reply of `{target}`",
                        if reply.failure { "failure" } else { "success" }
                    ),
                ));
            }
        }
        if read_cleanly {
            self.check_nothing_missing(&answered, errors);
        }
        // A compensation undoes one step.
        let mut undone: HashMap<String, &Ident> = HashMap::new();
        for step in &self.steps {
            if let Some(c) = &step.compensate {
                if let Some(first) = undone.insert(c.to_string(), &step.method) {
                    errors.push(syn::Error::new(
                        c.span(),
                        format!("`{c}` already compensates step `{first}`: give each step its own compensation"),
                    ));
                }
            }
        }
        // One role per message type.
        let mut seen: HashMap<String, &Ident> = HashMap::new();
        let consumed = self
            .starts
            .iter()
            .map(|s| (&s.message, &s.method))
            .chain(self.replies.iter().map(|r| (&r.message, &r.method)))
            .chain(self.events.iter().map(|e| (&e.message, &e.method)));
        for (ty, method) in consumed {
            if let Some(first) = seen.insert(ty.to_token_stream().to_string(), method) {
                errors.push(syn::Error::new(
                    ty.span(),
                    format!(
                        "`{}` is already handled by `{first}`: each message may start, answer or update the saga once",
                        ty.to_token_stream()
                    ),
                ));
            }
        }
    }

    /// What the flow lacks: a reply handler for each send step and send compensation, a step
    /// for each `#[compensation]` marker.
    fn check_nothing_missing(&self, answered: &HashMap<(String, bool), &Ident>, errors: &mut Vec<syn::Error>) {
        for step in &self.steps {
            if step.shape == Shape::Send && !answered.contains_key(&(step.method.to_string(), false)) {
                errors.push(syn::Error::new(
                    step.method.span(),
                    format!(
                        "step `{0}` sends a command but nothing handles its reply: add `#[reply({0})] fn ...(&mut self, reply: &Reply)`",
                        step.method
                    ),
                ));
            }
            if let Some(c) = &step.compensate {
                let sends = self
                    .methods
                    .get(&c.to_string())
                    .is_some_and(|sig| step_shape(sig).is_ok_and(|(s, _)| s == Shape::Send));
                if sends && !answered.contains_key(&(c.to_string(), false)) {
                    errors.push(syn::Error::new(
                        c.span(),
                        format!(
                            "compensation `{c}` sends a command but nothing handles its reply: add `#[reply({c})] fn ...(&mut self, reply: &Reply)`"
                        ),
                    ));
                }
            }
        }
        for (marked, span) in &self.marked_compensations {
            if self.compensation_of(marked).is_none() {
                errors.push(syn::Error::new(
                    *span,
                    format!("no step names `{marked}` as its compensation: add `compensate = {marked}` to its #[step]"),
                ));
            }
        }
    }

    fn shape_of(&self, method: &Ident) -> Option<Shape> {
        self.methods.get(&method.to_string()).and_then(|sig| step_shape(sig).ok()).map(|(shape, _)| shape)
    }

    fn compensation_of(&self, method: &Ident) -> Option<&StepSpec> {
        self.steps.iter().find(|s| s.compensate.as_ref() == Some(method))
    }

    fn reply(&self, target: &Ident, failure: bool) -> Option<&Reply> {
        self.replies.iter().find(|r| &r.target == target && r.failure == failure)
    }

    fn generate(&self, item: &ItemImpl, args: &SagaArgs) -> TokenStream {
        let self_ty = &item.self_ty;
        let name = &args.name;
        let version = args.version;
        let krate = &args.krate;
        let millis = |ms: u64| quote!(#krate::__private::Duration::from_millis(#ms));
        let starts = self.starts.iter().map(|s| {
            let m = &s.method;
            let ty = &s.message;
            quote_spanned!(m.span()=> .start_with::<#ty>(Self::#m))
        });
        let steps = self.steps.iter().map(|step| {
            let m = &step.method;
            let step_name = &step.name;
            let mut chain = match step.shape {
                Shape::Send => {
                    let command = step.command.as_ref().map(|ty| quote_spanned!(ty.span()=> ::<#ty>));
                    quote!(#krate::saga::Step::send #command (#step_name, Self::#m))
                }
                Shape::Local => {
                    let at = self.sig_span(m);
                    let krate = crate::respan(krate, at);
                    quote_spanned!(at=> #krate::saga::Step::local(#step_name, Self::#m))
                }
            };
            for (failure, method) in [(false, quote!(on_success)), (true, quote!(on_failure))] {
                if let Some(r) = self.reply(m, failure) {
                    chain.extend(r.registration(method));
                }
            }
            if let Some(ms) = step.timeout {
                let d = millis(ms);
                chain.extend(quote!(.timeout(#d)));
            }
            if let Some(retry) = &step.retry {
                chain.extend(quote!(.retry(#retry)));
            }
            if let Some(c) = &step.compensate {
                let local = self.methods.get(&c.to_string()).is_some_and(|sig| sig.asyncness.is_some());
                chain.extend(if local {
                    quote_spanned!(self.sig_span(c)=> .compensate_local(Self::#c))
                } else {
                    let command = self
                        .methods
                        .get(&c.to_string())
                        .and_then(|sig| returned(sig))
                        .map(|ty| quote_spanned!(ty.span()=> ::<#ty>));
                    quote!(.compensate_send #command (Self::#c))
                });
                for (failure, method) in [(false, quote!(on_compensated)), (true, quote!(on_compensation_failed))] {
                    if let Some(r) = self.reply(c, failure) {
                        chain.extend(r.registration(method));
                    }
                }
            }
            if let Some(ms) = step.compensation_timeout {
                let d = millis(ms);
                chain.extend(quote!(.compensation_timeout(#d)));
            }
            if let Some(retry) = &step.compensation_retry {
                chain.extend(quote!(.compensation_retry(#retry)));
            }
            match step.kind {
                Kind::Pivot => chain.extend(quote!(.pivot())),
                Kind::Retriable => chain.extend(quote!(.retriable())),
                Kind::Compensatable => {}
            }
            quote!(.step(#chain))
        });
        let events = self.events.iter().map(|e| {
            let m = &e.method;
            let ty = &e.message;
            if e.returns_outcome {
                quote_spanned!(m.span()=> .on_event::<#ty>(Self::#m))
            } else {
                quote_spanned!(ty.span()=> .on_event::<#ty>(|state: &mut Self, event: &#ty| {
                    Self::#m(state, event);
                    #krate::saga::EventOutcome::Continue
                }))
            }
        });
        quote! {
            impl #krate::saga::Saga for #self_ty {
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;
                fn definition() -> #krate::saga::SagaDefinition<Self> {
                    #krate::saga::SagaDefinition::new()
                        #(#starts)*
                        #(#steps)*
                        #(#events)*
                }
            }

            impl #self_ty {
                /// This saga as a Mermaid flowchart (steps, replies, compensations, pivot).
                pub fn mermaid() -> ::std::string::String {
                    <Self as #krate::saga::Saga>::definition().mermaid()
                }
            }
        }
    }

    /// Where a method's signature starts, for errors about it.
    fn sig_span(&self, method: &Ident) -> Span {
        self.methods.get(&method.to_string()).map_or(method.span(), |sig| sig.span())
    }
}
