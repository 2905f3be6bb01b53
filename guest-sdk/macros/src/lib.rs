//! The `#[rule]` attribute of the vigil rule SDK. See the `vigil-sdk` crate
//! docs for how to use it; this crate only turns the attribute into a
//! manifest static and, on wasm32, the ABI exports.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::visit::Visit;
use syn::{
    Error, Expr, ExprLit, ExprMethodCall, ExprUnary, Ident, ItemFn, Lit, LitStr, Result, Token, UnOp, parenthesized,
};

/// Turns `fn(tx: &Payment, ctx: &Context) -> Decision` into a vigil rule.
///
/// See the `vigil-sdk` crate docs for the arguments.
#[proc_macro_attribute]
pub fn rule(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

enum Arg {
    Text(Ident, LitStr),
    State(Ident),
    Fields(Vec<Ident>),
    Params(Vec<Param>),
    Lists(Vec<LitStr>),
    Features(Vec<FeatureDecl>),
}

struct Param {
    name: Ident,
    /// `i64`, `f64`, `bool` or `str`.
    ty: String,
    default: TokenStream2,
}

/// `"count(card, 10m)"`, or `count_10m = "count(card, 10m)"`: a field of
/// the generated `Features`.
struct FeatureDecl {
    name: Option<Ident>,
    spec: LitStr,
}

impl Parse for FeatureDecl {
    fn parse(input: ParseStream<'_>) -> Result<Self> {
        if input.peek(Ident) && input.peek2(Token![=]) {
            let name = input.parse()?;
            input.parse::<Token![=]>()?;
            return Ok(FeatureDecl { name: Some(name), spec: input.parse()? });
        }
        Ok(FeatureDecl { name: None, spec: input.parse()? })
    }
}

impl Parse for Arg {
    fn parse(input: ParseStream<'_>) -> Result<Self> {
        let key: Ident = input.parse()?;
        match key.to_string().as_str() {
            "name" | "version" | "description" => {
                input.parse::<Token![=]>()?;
                Ok(Arg::Text(key, input.parse()?))
            }
            "fields" => {
                let inner;
                parenthesized!(inner in input);
                let fields = Punctuated::<Ident, Token![,]>::parse_terminated(&inner)?;
                for f in &fields {
                    let name = f.to_string();
                    if vigil_abi::Field::from_name(&name).is_none() {
                        let known: Vec<_> = vigil_abi::Field::ALL.iter().map(|f| f.name()).collect();
                        return Err(Error::new(
                            f.span(),
                            format!("unknown event field `{name}`; fields are: {}", known.join(", ")),
                        ));
                    }
                }
                Ok(Arg::Fields(fields.into_iter().collect()))
            }
            "params" => {
                let inner;
                parenthesized!(inner in input);
                let params = Punctuated::<Param, Token![,]>::parse_terminated(&inner)?;
                Ok(Arg::Params(params.into_iter().collect()))
            }
            "state" => {
                input.parse::<Token![=]>()?;
                let entity: Ident = input.parse()?;
                const ENTITIES: [&str; 6] = ["card", "account", "counterparty", "device", "ip", "merchant"];
                if !ENTITIES.contains(&entity.to_string().as_str()) {
                    return Err(Error::new(
                        entity.span(),
                        format!("unknown entity `{entity}`; a rule's state belongs to one of: {}", ENTITIES.join(", ")),
                    ));
                }
                Ok(Arg::State(entity))
            }
            "lists" => {
                let inner;
                parenthesized!(inner in input);
                let names = Punctuated::<LitStr, Token![,]>::parse_terminated(&inner)?;
                Ok(Arg::Lists(names.into_iter().collect()))
            }
            "features" => {
                let inner;
                parenthesized!(inner in input);
                let features = Punctuated::<FeatureDecl, Token![,]>::parse_terminated(&inner)?;
                Ok(Arg::Features(features.into_iter().collect()))
            }
            other => Err(Error::new(
                key.span(),
                format!(
                    "unknown rule argument `{other}`; expected name, version, description, fields, params, lists, features or state"
                ),
            )),
        }
    }
}

impl Parse for Param {
    fn parse(input: ParseStream<'_>) -> Result<Self> {
        let name: Ident = input.parse()?;
        input.parse::<Token![:]>()?;
        let ty: Ident = input.parse()?;
        input.parse::<Token![=]>()?;
        let value: Expr = input.parse()?;
        let (negative, lit) = match &value {
            Expr::Lit(ExprLit { lit, .. }) => (false, lit),
            Expr::Unary(ExprUnary { op: UnOp::Neg(_), expr, .. }) => match &**expr {
                Expr::Lit(ExprLit { lit, .. }) => (true, lit),
                _ => {
                    return Err(Error::new_spanned(&value, "parameter defaults must be literals"));
                }
            },
            _ => {
                return Err(Error::new_spanned(&value, "parameter defaults must be literals"));
            }
        };
        let sign = if negative { quote!(-) } else { quote!() };
        let default = match (ty.to_string().as_str(), lit) {
            ("i64", Lit::Int(i)) => {
                let v: i64 = i.base10_parse()?;
                quote!(::vigil_sdk::__private::ParamDefault::Int(#sign #v))
            }
            ("f64", Lit::Float(f)) => {
                let v: f64 = f.base10_parse()?;
                quote!(::vigil_sdk::__private::ParamDefault::Float(#sign #v))
            }
            ("f64", Lit::Int(i)) => {
                let v: f64 = i.base10_parse::<i64>()? as f64;
                quote!(::vigil_sdk::__private::ParamDefault::Float(#sign #v))
            }
            ("bool", Lit::Bool(b)) if !negative => {
                quote!(::vigil_sdk::__private::ParamDefault::Bool(#b))
            }
            ("str", Lit::Str(s)) if !negative => {
                quote!(::vigil_sdk::__private::ParamDefault::Str(#s))
            }
            ("i64" | "f64" | "bool" | "str", _) => {
                return Err(Error::new_spanned(&value, format!("default does not match type `{ty}`")));
            }
            (other, _) => {
                return Err(Error::new(
                    ty.span(),
                    format!("unsupported parameter type `{other}`; use i64, f64, bool or str"),
                ));
            }
        };
        Ok(Param { name, ty: ty.to_string(), default })
    }
}

fn check_signature(f: &ItemFn) -> Result<()> {
    let sig = &f.sig;
    if let Some(a) = &sig.asyncness {
        return Err(Error::new_spanned(a, "a rule cannot be async"));
    }
    if !sig.generics.params.is_empty() {
        return Err(Error::new_spanned(&sig.generics, "a rule cannot be generic"));
    }
    if sig.inputs.len() != 2 {
        return Err(Error::new_spanned(
            &sig.inputs,
            "a rule takes exactly two arguments: `tx: &Payment, ctx: &Context`",
        ));
    }
    if let syn::ReturnType::Default = sig.output {
        return Err(Error::new_spanned(sig, "a rule returns a `Decision`"));
    }
    Ok(())
}

fn doc_line(f: &ItemFn) -> Option<String> {
    f.attrs.iter().find_map(|a| {
        if !a.path().is_ident("doc") {
            return None;
        }
        match &a.meta.require_name_value().ok()?.value {
            Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Some(s.value().trim().to_owned()),
            _ => None,
        }
    })
}

fn expand(attr: TokenStream2, item: TokenStream2) -> Result<TokenStream2> {
    let mut f: ItemFn = syn::parse2(item)?;
    check_signature(&f)?;
    // Inlined into the entry points below, where the manifest is a constant:
    // each `ctx.param_i64("...")` then folds to an index instead of
    // comparing names on every call (the suite's row 1 shows the cost per
    // call). A rule that says otherwise keeps its own `#[inline(...)]`.
    if !f.attrs.iter().any(|a| a.path().is_ident("inline")) {
        f.attrs.push(syn::parse_quote!(#[inline(always)]));
    }
    let args = Punctuated::<Arg, Token![,]>::parse_terminated.parse2(attr)?;

    let mut name = quote!(env!("CARGO_PKG_NAME"));
    let mut version = quote!(env!("CARGO_PKG_VERSION"));
    let mut description = doc_line(&f).unwrap_or_default();
    let (mut fields, mut params, mut lists, mut features, mut state) = (None, None, None, None, None);
    for arg in args {
        match arg {
            Arg::Text(key, lit) => match key.to_string().as_str() {
                "name" => {
                    if lit.value().trim().is_empty() {
                        return Err(Error::new(lit.span(), "a rule name cannot be empty"));
                    }
                    name = quote!(#lit);
                }
                "version" => version = quote!(#lit),
                _ => description = lit.value(),
            },
            Arg::State(entity) => set_once(&mut state, entity.to_string(), "state")?,
            Arg::Fields(f) => set_once(&mut fields, f, "fields")?,
            Arg::Params(p) => set_once(&mut params, p, "params")?,
            Arg::Lists(names) => set_once(&mut lists, names, "lists")?,
            Arg::Features(decls) => set_once(&mut features, decls, "features")?,
        }
    }
    let fields: Vec<String> = fields.unwrap_or_default().iter().map(ToString::to_string).collect();
    let params = params.unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    for p in &params {
        if !seen.insert(p.name.to_string()) {
            return Err(Error::new(p.name.span(), format!("parameter `{}` declared twice", p.name)));
        }
    }
    let param_names: Vec<String> = params.iter().map(|p| p.name.to_string()).collect();
    let param_defaults: Vec<&TokenStream2> = params.iter().map(|p| &p.default).collect();
    let lists = lists.unwrap_or_default();
    let features: Vec<FeatureDecl> = features.unwrap_or_default();
    let mut named = std::collections::HashSet::new();
    for name in features.iter().filter_map(|f| f.name.as_ref()) {
        // Each is also a constant `Features::NAME`.
        if !named.insert(name.unraw().to_string().to_uppercase()) {
            return Err(Error::new(
                name.span(),
                format!("feature name `{name}` used twice (names are compared as constants, in upper case)"),
            ));
        }
    }
    check_uses(&f, &params, &features, &lists)?;
    let typed = typed_access(&params, &features);
    let field_bits = fields
        .iter()
        .filter_map(|f| vigil_abi::Field::from_name(f))
        .fold(vigil_abi::FieldMask::NONE, vigil_abi::FieldMask::with)
        .0;
    let features: Vec<&LitStr> = features.iter().map(|f| &f.spec).collect();
    let state = match state {
        Some(entity) => quote!(::core::option::Option::Some(#entity)),
        None => quote!(::core::option::Option::None),
    };
    let func = &f.sig.ident;
    // The rule for the SDK's entry points (wasm exports and the native
    // entry), which are generic over it so that they call it directly.
    let entry = quote! {
        struct Entry;
        impl ::vigil_sdk::__private::Evaluate for Entry {
            const FIELDS: ::vigil_sdk::abi::FieldMask = ::vigil_sdk::abi::FieldMask(#field_bits);
            #[inline(always)]
            fn rule() -> &'static ::vigil_sdk::Rule {
                &RULE
            }
            #[inline(always)]
            fn evaluate(tx: &::vigil_sdk::Payment<'_>, ctx: &::vigil_sdk::Context<'_>) -> ::vigil_sdk::Decision {
                #func(tx, ctx)
            }
        }
    };

    Ok(quote! {
        #f

        #typed

        /// This rule's manifest and entry point, made by `#[vigil_sdk::rule]`.
        pub static RULE: ::vigil_sdk::Rule = ::vigil_sdk::__private::rule(
            ::vigil_sdk::__private::ManifestDef {
                name: #name,
                version: #version,
                description: #description,
                fields: &[#(#fields),*],
                params: &[#(::vigil_sdk::__private::ParamDef { name: #param_names, default: #param_defaults }),*],
                lists: &[#(#lists),*],
                features: &[#(#features),*],
                state: #state,
            },
            #func,
            {
                #entry
                ::vigil_sdk::__private::native_entry::<Entry>()
            },
        );

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #entry
            #[unsafe(no_mangle)]
            extern "C" fn vigil_abi_version() -> i32 {
                ::vigil_sdk::__private::abi_version()
            }
            #[unsafe(no_mangle)]
            extern "C" fn vigil_manifest() -> i64 {
                ::vigil_sdk::__private::manifest(&RULE)
            }
            #[unsafe(no_mangle)]
            extern "C" fn vigil_buffer(capacity: i32) -> i32 {
                ::vigil_sdk::__private::buffer(capacity)
            }
            #[unsafe(no_mangle)]
            extern "C" fn vigil_output() -> i32 {
                ::vigil_sdk::__private::output_ptr()
            }
            #[unsafe(no_mangle)]
            extern "C" fn vigil_configure(len: i32) -> i32 {
                ::vigil_sdk::__private::configure(&RULE, len)
            }
            #[unsafe(no_mangle)]
            extern "C" fn vigil_evaluate(len: i32) -> i64 {
                ::vigil_sdk::__private::evaluate::<Entry>(len)
            }
            #[unsafe(no_mangle)]
            extern "C" fn vigil_evaluate_batch(count: i32) -> i32 {
                ::vigil_sdk::__private::evaluate_batch::<Entry>(count)
            }
        };
    })
}

fn set_once<T>(slot: &mut Option<T>, value: T, what: &str) -> Result<()> {
    if slot.replace(value).is_some() {
        return Err(Error::new(Span::call_site(), format!("`{what}(...)` given twice")));
    }
    Ok(())
}

/// The calls in the rule's body that name a parameter, feature or list
/// by a string literal on its context argument: each must be declared, a
/// parameter with the type its accessor reads. A typo is a compile error
/// at the literal rather than a panic on the first event.
fn check_uses(f: &ItemFn, params: &[Param], features: &[FeatureDecl], lists: &[LitStr]) -> Result<()> {
    struct Uses<'a> {
        ctx: Option<String>,
        params: &'a [Param],
        features: &'a [FeatureDecl],
        lists: &'a [LitStr],
        error: Option<Error>,
    }
    impl<'ast> Visit<'ast> for Uses<'_> {
        fn visit_expr_method_call(&mut self, call: &'ast ExprMethodCall) {
            let on_ctx = match &*call.receiver {
                Expr::Path(p) => p.path.get_ident().map(ToString::to_string) == self.ctx,
                _ => false,
            };
            if let (true, Some(Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }))) = (on_ctx, call.args.first()) {
                let (method, name) = (call.method.to_string(), lit.value());
                let problem = match method.as_str() {
                    "param_i64" | "param_f64" | "param_bool" | "param_str" => {
                        let want = &method["param_".len()..];
                        match self.params.iter().find(|p| p.name == name) {
                            None => Some(format!(
                                "no parameter `{name}` is declared in `params(...)`{}",
                                listed(self.params.iter().map(|p| p.name.to_string()))
                            )),
                            Some(p) if p.ty != want => Some(format!(
                                "parameter `{name}` is declared as `{}`: read it with `param_{}`",
                                p.ty, p.ty
                            )),
                            Some(_) => None,
                        }
                    }
                    "feature" => (!self.features.iter().any(|f| f.spec.value() == name)).then(|| {
                        format!(
                            "no feature `{name}` is declared in `features(...)`{}",
                            listed(self.features.iter().map(|f| f.spec.value()))
                        )
                    }),
                    "in_list" => (!self.lists.iter().any(|l| l.value() == name)).then(|| {
                        format!(
                            "no list `{name}` is declared in `lists(...)`{}",
                            listed(self.lists.iter().map(LitStr::value))
                        )
                    }),
                    _ => None,
                };
                if let Some(problem) = problem {
                    self.error.get_or_insert(Error::new(lit.span(), problem));
                }
            }
            syn::visit::visit_expr_method_call(self, call);
        }

        // A function inside the rule's body has a `ctx` of its own.
        fn visit_item_fn(&mut self, _: &'ast ItemFn) {}
    }
    let ctx = f.sig.inputs.iter().nth(1).and_then(|arg| match arg {
        syn::FnArg::Typed(t) => match &*t.pat {
            syn::Pat::Ident(i) => Some(i.ident.to_string()),
            _ => None,
        },
        syn::FnArg::Receiver(_) => None,
    });
    let mut uses = Uses { ctx, params, features, lists, error: None };
    uses.visit_block(&f.block);
    uses.error.map_or(Ok(()), Err)
}

/// "; declared: a, b", or "; none is".
fn listed(names: impl Iterator<Item = String>) -> String {
    let names: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    match names.is_empty() {
        true => "; none is".to_owned(),
        false => format!("; declared: {}", names.join(", ")),
    }
}

/// `Params` (every declared parameter, typed) and `Features` (the features
/// declared with a name), each read with `::of(ctx)`: a misspelt name is a
/// compile error at its use.
fn typed_access(params: &[Param], features: &[FeatureDecl]) -> TokenStream2 {
    let mut out = TokenStream2::new();
    if !params.is_empty() {
        let has_str = params.iter().any(|p| p.ty == "str");
        let names: Vec<&Ident> = params.iter().map(|p| &p.name).collect();
        let docs: Vec<String> = params.iter().map(|p| format!("`{}: {}` in `params(...)`.", p.name, p.ty)).collect();
        let types: Vec<TokenStream2> = params
            .iter()
            .map(|p| match p.ty.as_str() {
                "i64" => quote!(i64),
                "f64" => quote!(f64),
                "bool" => quote!(bool),
                _ => quote!(&'a str),
            })
            .collect();
        let reads: Vec<TokenStream2> = params
            .iter()
            .enumerate()
            .map(|(i, p)| match p.ty.as_str() {
                "i64" => quote!(ctx.__param_i64_at(#i)),
                "f64" => quote!(ctx.__param_f64_at(#i)),
                "bool" => quote!(ctx.__param_bool_at(#i)),
                _ => quote!(ctx.__param_str_at(#i)),
            })
            .collect();
        let (generics, context) = match has_str {
            true => (quote!(<'a>), quote!(::vigil_sdk::Context<'a>)),
            false => (quote!(), quote!(::vigil_sdk::Context<'_>)),
        };
        out.extend(quote! {
            /// The rule's parameters as this deployment sets them (`params(...)`
            /// in `#[rule]`, `[rule.NAME] params` in the host's config):
            /// `Params::of(ctx)`.
            #[derive(Debug, Clone, Copy)]
            pub struct Params #generics {
                #(#[doc = #docs] pub #names: #types,)*
            }

            impl #generics Params #generics {
                /// Every declared parameter's value.
                #[inline(always)]
                pub fn of(ctx: &#context) -> Self {
                    Self { #(#names: #reads,)* }
                }
            }
        });
    }
    let named: Vec<(usize, &Ident, &LitStr)> =
        features.iter().enumerate().filter_map(|(i, f)| f.name.as_ref().map(|n| (i, n, &f.spec))).collect();
    if !named.is_empty() {
        let names: Vec<&Ident> = named.iter().map(|f| f.1).collect();
        let docs = named.iter().map(|f| format!("`{}`, computed by the host for this event.", f.2.value()));
        let consts: Vec<Ident> =
            named.iter().map(|f| Ident::new(&f.1.unraw().to_string().to_uppercase(), f.1.span())).collect();
        let specs = named.iter().map(|f| f.2);
        let spec_docs =
            named.iter().map(|f| format!("The spec of `{}`, as tests name it to `TestContext::feature`.", f.1));
        let reads = named.iter().map(|f| {
            let i = f.0;
            quote!(ctx.__feature_at(#i))
        });
        out.extend(quote! {
            /// The features the rule declared with a name in `features(...)`,
            /// for this event: `Features::of(ctx)`.
            #[derive(Debug, Clone, Copy)]
            pub struct Features {
                #(#[doc = #docs] pub #names: f64,)*
            }

            impl Features {
                #(#[doc = #spec_docs] pub const #consts: &'static str = #specs;)*

                /// Every named feature's value.
                #[inline(always)]
                pub fn of(ctx: &::vigil_sdk::Context<'_>) -> Self {
                    Self { #(#names: #reads,)* }
                }
            }
        });
    }
    out
}
