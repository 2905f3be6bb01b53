//! The `#[rule]` attribute of the vigil rule SDK. See the `vigil-sdk` crate
//! docs for how to use it; this crate only turns the attribute into a
//! manifest static and, on wasm32, the ABI exports.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Error, Expr, ExprLit, ExprUnary, Ident, ItemFn, Lit, LitStr, Result, Token, UnOp, parenthesized};

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
    Names(Ident, Vec<LitStr>),
}

struct Param {
    name: Ident,
    default: TokenStream2,
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
            "lists" | "features" => {
                let inner;
                parenthesized!(inner in input);
                let names = Punctuated::<LitStr, Token![,]>::parse_terminated(&inner)?;
                Ok(Arg::Names(key, names.into_iter().collect()))
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
        Ok(Param { name, default })
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
    // comparing names on every call (large-amount: 680 -> 451 instructions
    // an event). A rule that says otherwise keeps its own `#[inline(...)]`.
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
            Arg::Names(key, names) if key == "lists" => set_once(&mut lists, names, "lists")?,
            Arg::Names(_, names) => set_once(&mut features, names, "features")?,
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
    let features = features.unwrap_or_default();
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
