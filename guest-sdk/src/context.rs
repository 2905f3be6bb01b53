//! What a rule can ask the host besides the payment: parameters, lists, features.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use vigil_abi::{EventView, ParamDef, ParamValue};

/// The rule's view of the host during one call.
#[derive(Debug)]
pub struct Context<'a> {
    /// Declared parameters, and their values in the same order.
    param_defs: &'static [ParamDef],
    params: &'a [ParamValue],
    lists: Lists<'a>,
    features: &'static [&'static str],
    event: EventView<'a>,
    state: State<'a>,
}

/// Where a rule's keyed state lives.
pub(crate) enum State<'a> {
    /// Inside the host: `vigil::state_get` / `vigil::state_put`.
    Host,
    /// In native tests: a map.
    Local(&'a RefCell<HashMap<Vec<u8>, Vec<u8>>>),
    /// Compiled into a host process: through its [`crate::native::Host`].
    #[cfg(feature = "native")]
    Native(&'a dyn crate::native::Host),
}

pub(crate) enum Lists<'a> {
    /// Inside the host: look-ups go through the `vigil::list_contains` import.
    Host { names: &'static [&'static str] },
    /// In native tests: lists held in memory.
    Local(&'a HashMap<String, HashSet<String>>),
    /// Compiled into a host process: through its [`crate::native::Host`].
    #[cfg(feature = "native")]
    Native { names: &'static [&'static str], host: &'a dyn crate::native::Host },
}

impl std::fmt::Debug for State<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Host => "Host",
            State::Local(_) => "Local",
            #[cfg(feature = "native")]
            State::Native(_) => "Native",
        })
    }
}

impl std::fmt::Debug for Lists<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lists::Host { names } => f.debug_list().entries(names.iter()).finish(),
            #[cfg(feature = "native")]
            Lists::Native { names, .. } => f.debug_list().entries(names.iter()).finish(),
            Lists::Local(lists) => f.debug_list().entries(lists.keys()).finish(),
        }
    }
}

impl<'a> Context<'a> {
    /// `params` holds a value for each of `param_defs`, in their order.
    pub(crate) fn new(
        param_defs: &'static [ParamDef],
        params: &'a [ParamValue],
        lists: Lists<'a>,
        features: &'static [&'static str],
        event: EventView<'a>,
        state: State<'a>,
    ) -> Self {
        debug_assert_eq!(param_defs.len(), params.len());
        Self { param_defs, params, lists, features, event, state }
    }

    // Always inlined: inside a rule module the declarations are constants
    // and `name` is a literal, so the look-up folds to an index.
    #[inline(always)]
    fn param(&self, name: &str) -> Option<&'a ParamValue> {
        let index = self.param_defs.iter().position(|d| same_name(d.name, name))?;
        self.params.get(index)
    }

    /// Parameter `index` (in declaration order), an `i64`: for the
    /// `Params` `#[rule]` generates, whose types the host checked at load.
    #[doc(hidden)]
    #[inline(always)]
    pub fn __param_i64_at(&self, index: usize) -> i64 {
        match self.params.get(index) {
            Some(ParamValue::Int(v)) => *v,
            _ => mistyped(index),
        }
    }

    #[doc(hidden)]
    #[inline(always)]
    pub fn __param_f64_at(&self, index: usize) -> f64 {
        match self.params.get(index) {
            Some(ParamValue::Float(v)) => *v,
            _ => mistyped(index),
        }
    }

    #[doc(hidden)]
    #[inline(always)]
    pub fn __param_bool_at(&self, index: usize) -> bool {
        match self.params.get(index) {
            Some(ParamValue::Bool(v)) => *v,
            _ => mistyped(index),
        }
    }

    #[doc(hidden)]
    #[inline(always)]
    pub fn __param_str_at(&self, index: usize) -> &'a str {
        match self.params.get(index) {
            Some(ParamValue::Str(v)) => v,
            _ => mistyped(index),
        }
    }

    /// Feature `index` (in declaration order): for the generated `Features`.
    #[doc(hidden)]
    #[inline(always)]
    pub fn __feature_at(&self, index: usize) -> f64 {
        self.event.feature(index).unwrap_or(0.0)
    }

    /// The integer parameter `name`.
    ///
    /// # Panics
    /// When the rule declared no `i64` parameter of that name. Inside the host
    /// a panic is a rule failure: the rule's failure policy applies.
    #[inline]
    pub fn param_i64(&self, name: &str) -> i64 {
        match self.param(name) {
            Some(ParamValue::Int(v)) => *v,
            _ => panic!("rule declares no i64 parameter `{name}`"),
        }
    }

    /// The float parameter `name`.
    ///
    /// # Panics
    /// When the rule declared no `f64` parameter of that name.
    #[inline]
    pub fn param_f64(&self, name: &str) -> f64 {
        match self.param(name) {
            Some(ParamValue::Float(v)) => *v,
            _ => panic!("rule declares no f64 parameter `{name}`"),
        }
    }

    /// The boolean parameter `name`.
    ///
    /// # Panics
    /// When the rule declared no `bool` parameter of that name.
    #[inline]
    pub fn param_bool(&self, name: &str) -> bool {
        match self.param(name) {
            Some(ParamValue::Bool(v)) => *v,
            _ => panic!("rule declares no bool parameter `{name}`"),
        }
    }

    /// The string parameter `name`.
    ///
    /// # Panics
    /// When the rule declared no `str` parameter of that name.
    #[inline]
    pub fn param_str(&self, name: &str) -> &'a str {
        match self.param(name) {
            Some(ParamValue::Str(v)) => v,
            _ => panic!("rule declares no str parameter `{name}`"),
        }
    }

    /// Whether `value` is in the named list (e.g. a blocklist of card tokens).
    ///
    /// Lists of cards hold tokens, so pass `card.token`, never a PAN.
    ///
    /// # Panics
    /// When the rule did not declare the list in `lists(...)`.
    // Always inlined: inside a rule module the lists are the host's, so the
    // other arms go, and the list's index folds as a parameter's does.
    #[inline(always)]
    pub fn in_list(&self, list: &str, value: &str) -> bool {
        match &self.lists {
            Lists::Host { names } => {
                let Some(index) = names.iter().position(|n| same_name(n, list)) else {
                    panic!("rule declares no list `{list}`");
                };
                crate::__private::host_list_contains(index, value)
            }
            Lists::Local(lists) => match lists.get(list) {
                Some(set) => set.contains(value),
                None => panic!("test context has no list `{list}`"),
            },
            #[cfg(feature = "native")]
            Lists::Native { names, host } => {
                let Some(index) = names.iter().position(|n| same_name(n, list)) else {
                    panic!("rule declares no list `{list}`");
                };
                host.list_contains(index, value)
            }
        }
    }

    /// The value of a feature the rule declared, computed by the host for this event.
    ///
    /// # Panics
    /// When the rule did not declare the feature in `features(...)`.
    #[inline]
    pub fn feature(&self, name: &str) -> f64 {
        let Some(index) = self.features.iter().position(|n| same_name(n, name)) else {
            panic!("rule declares no feature `{name}`");
        };
        self.event.feature(index).unwrap_or(0.0)
    }

    /// The value this rule stored for `key` (on the worker that owns the
    /// event's partition key), if any. State is kept per rule name, survives
    /// new versions of the rule and restarts (it is checkpointed).
    pub fn state_get(&self, key: &str) -> Option<Vec<u8>> {
        match &self.state {
            State::Host => crate::__private::host_state_get(key.as_bytes()),
            State::Local(map) => map.borrow().get(key.as_bytes()).cloned(),
            #[cfg(feature = "native")]
            State::Native(host) => host.state_get(key.as_bytes()),
        }
    }

    /// Stores `value` for `key`; an empty value removes the key. Returns
    /// false when the key is over 256 bytes, the value over 4 KiB, or the
    /// rule holds too many keys.
    pub fn state_put(&self, key: &str, value: &[u8]) -> bool {
        if key.len() > vigil_abi::STATE_MAX_KEY || value.len() > vigil_abi::STATE_MAX_VALUE {
            return false;
        }
        match &self.state {
            State::Host => crate::__private::host_state_put(key.as_bytes(), value),
            #[cfg(feature = "native")]
            State::Native(host) => host.state_put(key.as_bytes(), value),
            State::Local(map) => {
                let mut map = map.borrow_mut();
                if value.is_empty() {
                    map.remove(key.as_bytes());
                } else {
                    map.insert(key.as_bytes().to_vec(), value.to_vec());
                }
                true
            }
        }
    }

    /// Writes a line to vigil's log with the rule's name and version, e.g.
    /// `ctx.log(Level::Warn, "unexpected currency")`. The host lets through
    /// at most `rules.log-rate` lines a second per rule instance (10 by
    /// default; the rest are counted), charges each line to the call's CPU
    /// budget, keeps at most 1 KiB of it, and drops them in `vigil replay`
    /// unless run with `--rule-logs`. Never log card numbers or other
    /// payment data: the line goes to the operator's log as written.
    pub fn log(&self, level: crate::Level, message: &str) {
        match &self.state {
            State::Host | State::Local(_) => crate::__private::host_log(level, message),
            #[cfg(feature = "native")]
            State::Native(host) => host.log(level, message),
        }
    }

    /// [`Context::state_get`] as UTF-8 text.
    pub fn state_get_str(&self, key: &str) -> Option<String> {
        self.state_get(key).and_then(|v| String::from_utf8(v).ok())
    }

    /// [`Context::state_get`] as a little-endian `i64`.
    pub fn state_get_i64(&self, key: &str) -> Option<i64> {
        self.state_get(key).and_then(|v| v.try_into().ok()).map(i64::from_le_bytes)
    }

    /// [`Context::state_put`] of an `i64`.
    pub fn state_put_i64(&self, key: &str, value: i64) -> bool {
        self.state_put(key, &value.to_le_bytes())
    }
}

#[cold]
#[inline(never)]
fn mistyped(index: usize) -> ! {
    panic!("parameter {index} is not of the type the rule declared")
}

/// Whether a declared name (from the manifest) is the one a rule asks for.
///
/// The hot path of every parameter, feature and list look-up. A rule usually
/// passes the very literal its manifest holds (the compiler merges equal
/// string constants), so the pointers are compared first; otherwise the bytes
/// are compared eight at a time. In wasm, `==` on `str` calls a `memcmp` that
/// walks byte by byte, a large share of a simple rule's call (the suite's
/// row 1).
#[inline(always)]
fn same_name(declared: &str, asked: &str) -> bool {
    let (a, b) = (declared.as_bytes(), asked.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    if a.as_ptr() == b.as_ptr() {
        return true;
    }
    let (mut a8, mut b8) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in a8.by_ref().zip(b8.by_ref()) {
        if u64::from_ne_bytes(x.try_into().unwrap_or_default()) != u64::from_ne_bytes(y.try_into().unwrap_or_default())
        {
            return false;
        }
    }
    a8.remainder().iter().zip(b8.remainder()).all(|(x, y)| x == y)
}

#[cfg(test)]
mod tests {
    use super::same_name;

    #[test]
    fn names_match_only_when_equal() {
        let declared = "distinct(card, geo.country, 1h)";
        let asked = String::from(declared);
        assert!(same_name(declared, declared));
        assert!(same_name(declared, &asked), "equal text at another address");
        for (i, _) in declared.char_indices() {
            let mut other = asked.clone().into_bytes();
            other[i] ^= 1;
            let other = String::from_utf8(other).expect("ASCII stays UTF-8");
            assert!(!same_name(declared, &other), "differs at byte {i}");
        }
        assert!(!same_name(declared, &declared[..declared.len() - 1]));
        assert!(!same_name("", "a"));
        assert!(same_name("", ""));
    }
}
