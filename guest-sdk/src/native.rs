//! Running a rule compiled for the host's own target, in the host's process,
//! instead of as a WebAssembly module.
//!
//! vigil uses this to measure what the sandbox costs end to end (the
//! "native rules" row of `just bench`): the same rule crate, the same
//! projected event, features, parameters, lists and keyed state — only the
//! call crosses no sandbox. Rules are deployed as wasm; a native rule has no
//! CPU budget and no memory cap.

use crate::{Decision, Payment};
use vigil_abi::ParamValue;

/// [`Rule::native`]: the rule with its checked parameters (in manifest
/// order) and its host.
pub type Entry = fn(&Payment<'_>, &[ParamValue], &dyn Host) -> Decision;

/// What a native rule asks of its host during a call: the same services the
/// `vigil::list_contains`, `vigil::state_get` and `vigil::state_put` imports
/// give a wasm module.
pub trait Host {
    /// Whether `value` is in the rule's `list`-th declared list.
    fn list_contains(&self, list: usize, value: &str) -> bool;
    /// The rule's stored value for `key`.
    fn state_get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Stores (an empty value removes) `key`; false when over a limit.
    fn state_put(&self, key: &[u8], value: &[u8]) -> bool;
    /// A log line from the rule; dropped unless the host takes them.
    fn log(&self, level: crate::Level, message: &str) {
        let _ = (level, message);
    }
}

/// A rule with its parameters decoded and checked: what a configured wasm
/// instance is, without the instance.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Clone)]
pub struct Configured {
    rule: crate::Rule,
    /// In manifest order.
    params: Vec<ParamValue>,
}

/// Parameters a rule refused ([`Configured::new`]), with the message its
/// wasm build gives for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedParams(pub String);

impl std::fmt::Display for RefusedParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RefusedParams {}

#[cfg(not(target_arch = "wasm32"))]
impl Configured {
    /// Applies the parameters the host resolved for the rule (encoded as for
    /// `vigil_configure`).
    ///
    /// # Errors
    /// The message `vigil_configure` would give: bad encoding, a parameter
    /// missing or of the wrong type.
    pub fn new(rule: &crate::Rule, params: &[u8]) -> Result<Self, RefusedParams> {
        Ok(Self { rule: *rule, params: crate::__private::checked_params(rule, params).map_err(RefusedParams)? })
    }

    /// The rule.
    pub fn rule(&self) -> &crate::Rule {
        &self.rule
    }

    /// Calls the rule on an event laid out as the host hands it to a wasm
    /// module: the projected event with its feature block.
    pub fn evaluate(&self, input: &[u8], host: &dyn Host) -> Decision {
        (self.rule.native)(&Payment::from_bytes(input), &self.params, host)
    }
}

#[cfg(test)]
mod tests {
    use super::{Configured, Host};
    use crate::__private::{Evaluate, evaluate_native};
    use crate::abi::{ManifestDef, ParamDef, ParamDefault, ParamValue, params};
    use crate::testing::PaymentBuilder;
    use crate::{Context, Decision, Payment, Rule};

    struct NoHost;
    impl Host for NoHost {
        fn list_contains(&self, _: usize, _: &str) -> bool {
            false
        }
        fn state_get(&self, _: &[u8]) -> Option<Vec<u8>> {
            None
        }
        fn state_put(&self, _: &[u8], _: &[u8]) -> bool {
            false
        }
    }

    /// Scores with `high` when `flag` is set, else `low`, so each value is
    /// told apart.
    fn evaluate(_: &Payment, ctx: &Context) -> Decision {
        let score = if ctx.param_bool("flag") { ctx.param_i64("high") } else { ctx.param_i64("low") };
        Decision::review(score as i32)
    }

    const RULE: Rule = Rule {
        manifest: ManifestDef {
            name: "order",
            version: "1",
            description: "",
            fields: &[],
            params: &[
                ParamDef { name: "low", default: ParamDefault::Int(1) },
                ParamDef { name: "high", default: ParamDefault::Int(2) },
                ParamDef { name: "flag", default: ParamDefault::Bool(false) },
            ],
            lists: &[],
            features: &[],
            state: None,
        },
        evaluate,
        native: evaluate_native::<Order>,
    };

    struct Order;
    impl Evaluate for Order {
        const FIELDS: vigil_abi::FieldMask = vigil_abi::FieldMask::ALL;
        fn rule() -> &'static Rule {
            &RULE
        }
        fn evaluate(tx: &Payment<'_>, ctx: &Context<'_>) -> Decision {
            evaluate(tx, ctx)
        }
    }

    fn encoded(values: &[(&str, ParamValue)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in values {
            params::encode_one(name, value, &mut out);
        }
        out
    }

    #[test]
    fn parameters_sent_in_any_order_are_read_by_name() {
        let input = PaymentBuilder::new("t").build().payment().view().as_bytes().to_vec();
        let sent =
            encoded(&[("flag", ParamValue::Bool(true)), ("high", ParamValue::Int(70)), ("low", ParamValue::Int(10))]);
        let rule = Configured::new(&RULE, &sent).expect("configured");
        assert_eq!(rule.evaluate(&input, &NoHost).score, 70);
        let sent =
            encoded(&[("low", ParamValue::Int(10)), ("flag", ParamValue::Bool(false)), ("high", ParamValue::Int(70))]);
        assert_eq!(Configured::new(&RULE, &sent).expect("configured").evaluate(&input, &NoHost).score, 10);
    }

    #[test]
    fn missing_or_mistyped_parameters_are_refused_by_name() {
        let sent = encoded(&[("low", ParamValue::Int(1)), ("flag", ParamValue::Bool(true))]);
        assert_eq!(Configured::new(&RULE, &sent).expect_err("refused").to_string(), "parameter `high` is missing");
        let sent =
            encoded(&[("low", ParamValue::Int(1)), ("high", ParamValue::Bool(true)), ("flag", ParamValue::Bool(true))]);
        assert_eq!(
            Configured::new(&RULE, &sent).expect_err("refused").to_string(),
            "parameter `high` must be int, got bool"
        );
    }
}
