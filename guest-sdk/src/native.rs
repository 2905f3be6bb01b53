//! Running a rule compiled for the host's own target, in the host's process,
//! instead of as a WebAssembly module.
//!
//! vigil uses this to measure what the sandbox costs end to end (the
//! "native rules" row of `just bench`): the same rule crate, the same
//! projected event, features, parameters, lists and keyed state — only the
//! call crosses no sandbox. Rules are deployed as wasm; a native rule has no
//! CPU budget and no memory cap.

use crate::context::{Context, Lists, State};
use crate::{Decision, Payment, Rule};
use vigil_abi::ParamValue;

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
}

/// A rule with its parameters decoded and checked: what a configured wasm
/// instance is, without the instance.
#[derive(Debug, Clone)]
pub struct Configured {
    rule: Rule,
    params: Vec<(String, ParamValue)>,
}

impl Configured {
    /// Applies the parameters the host resolved for the rule (encoded as for
    /// `vigil_configure`).
    ///
    /// # Errors
    /// The message `vigil_configure` would give: bad encoding, a parameter
    /// missing or of the wrong type.
    pub fn new(rule: &Rule, params: &[u8]) -> Result<Self, String> {
        Ok(Self { rule: *rule, params: crate::__private::checked_params(rule, params)? })
    }

    /// The rule.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// Calls the rule on an event laid out as the host hands it to a wasm
    /// module: the projected event with its feature block.
    pub fn evaluate(&self, input: &[u8], host: &dyn Host) -> Decision {
        let m = &self.rule.manifest;
        let tx = Payment::from_bytes(input);
        let ctx = Context::new(
            &self.params,
            Lists::Native { names: m.lists, host },
            m.features,
            tx.view(),
            State::Native(host),
        );
        (self.rule.evaluate)(&tx, &ctx)
    }
}
