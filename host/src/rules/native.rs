//! Rules compiled into the host instead of loaded as WebAssembly.
//!
//! The same rule crate, linked into the process: it gets the same projected
//! event, feature block, parameters, lists and keyed state as its wasm build,
//! through [`vigil_sdk::native`]. What it lacks is the sandbox — no CPU
//! budget, no memory cap, no hot reload — so it is not a way to deploy
//! rules. It exists to measure what the sandbox costs end to end: `just
//! bench` runs the pipeline with the example rules both ways.

use std::cell::RefCell;
use std::sync::Arc;
use vigil_abi::Projection;
use vigil_sdk::native::{Configured, Host};

use super::lists::List;
use super::sandbox::{CallResult, intern};
use super::state::RuleState;
use super::{Batch, Results, RuleError};

/// One worker's native rule: the configured rule and its input buffer.
#[derive(Debug)]
pub struct NativeInstance {
    rule: Configured,
    lists: Arc<[Arc<List>]>,
    state: RuleState,
    /// The event laid out for the next call: `input[..len]`.
    input: Vec<u8>,
    len: usize,
    reason_cache: Vec<Arc<str>>,
}

/// Lists and keyed state as the rule sees them during one call.
struct Bridge<'a> {
    lists: &'a [Arc<List>],
    state: RefCell<&'a mut RuleState>,
}

impl Host for Bridge<'_> {
    fn list_contains(&self, list: usize, value: &str) -> bool {
        self.lists.get(list).is_some_and(|l| l.contains(value.as_bytes()))
    }
    fn state_get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.state.borrow_mut().get(key).map(<[u8]>::to_vec)
    }
    fn state_put(&self, key: &[u8], value: &[u8]) -> bool {
        self.state.borrow_mut().put(key, value)
    }
}

impl NativeInstance {
    /// Configures `rule` with its resolved, encoded parameters.
    ///
    /// # Errors
    /// [`RuleError::Config`] when the rule refuses them.
    pub fn new(rule: &vigil_sdk::Rule, params: &[u8], lists: Arc<[Arc<List>]>) -> Result<Self, RuleError> {
        let rule = Configured::new(rule, params).map_err(|e| RuleError::Config {
            what: "the rule refused its parameters".into(),
            source: super::source(e),
        })?;
        Ok(Self { rule, lists, state: RuleState::default(), input: Vec::new(), len: 0, reason_cache: Vec::new() })
    }

    /// Evaluates one encoded event as [`super::sandbox::RuleInstance::call`]
    /// does: projected, with the feature block appended.
    ///
    /// # Errors
    /// [`RuleError::Trap`] when the rule panics.
    pub fn call(&mut self, event: &[u8], projection: &Projection, features: &[f64]) -> Result<CallResult, RuleError> {
        self.lay_out(event, projection, features.len(), |i| features[i]);
        self.evaluate()
    }

    /// Evaluates events `from..` of `batch` as [`super::Instance::call_batch`]
    /// describes, one call each, with the rule's `features` (catalog
    /// indices) taken from the batch as the event is laid out.
    ///
    /// # Errors
    /// [`RuleError::Trap`] of the event after the last result pushed.
    pub fn call_batch(
        &mut self,
        batch: &Batch,
        from: usize,
        projection: &Projection,
        features: &[usize],
        results: &mut Results,
    ) -> Result<(), RuleError> {
        for i in from..batch.len() {
            self.state.set_event(batch.partitions[i], batch.times[i], batch.entity(i));
            self.lay_out(&batch.encoded[i], projection, features.len(), |k| batch.value(i, features[k]));
            results.calls.push(self.evaluate()?);
            results.ends.push(results.clock.raw());
        }
        Ok(())
    }

    /// Writes the projected event and its feature block to the input.
    #[inline(always)]
    fn lay_out(&mut self, event: &[u8], projection: &Projection, features: usize, value: impl Fn(usize) -> f64) {
        let len = event.len() + features * 8;
        if self.input.len() < len {
            self.input.resize(len, 0);
        }
        let input = &mut self.input[..len];
        projection.apply(event, &mut input[..event.len()]);
        for (k, chunk) in input[event.len()..].chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&value(k).to_le_bytes());
        }
        vigil_abi::event::set_feature_block(input, event.len() as u32, features as u32);
        self.len = len;
    }

    /// Calls the rule on the input [`NativeInstance::lay_out`] wrote.
    #[inline(always)]
    fn evaluate(&mut self) -> Result<CallResult, RuleError> {
        let bridge = Bridge { lists: &self.lists, state: RefCell::new(&mut self.state) };
        let (rule, input) = (&self.rule, &self.input[..self.len]);
        let decision = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rule.evaluate(input, &bridge)))
            .map_err(|p| {
                let msg = p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str));
                RuleError::trap(format!("panicked: {}", msg.unwrap_or("(non-text panic payload)")))
            })?;
        // Pushed one by one, after an emptiness check: collecting into the
        // `SmallVec` (reserving from the size hint of a chained iterator)
        // made the native baseline of the suite's row 1 slower than the
        // rule's own work.
        let mut reasons = crate::decide::Reasons::new();
        if !decision.reasons.is_empty() {
            for code in decision.reasons.iter() {
                reasons.push(intern(&mut self.reason_cache, code));
            }
        }
        Ok(CallResult { action: decision.action, score: decision.score, reasons })
    }

    /// Sets the event the next call is for (see [`RuleState::set_event`]).
    pub fn set_event(&mut self, partition: u32, ts_ms: i64, entity: &[u8]) {
        self.state.set_event(partition, ts_ms, entity);
    }

    /// Lends a rule's keyed state to the instance for the next calls.
    pub fn lend_state(&mut self, state: RuleState) {
        self.state = state;
    }

    /// Takes the keyed state back.
    pub fn take_state(&mut self) -> RuleState {
        std::mem::take(&mut self.state)
    }
}
