//! Glue between the exports the `#[rule]` attribute generates and the rule
//! function. Not a public API: the attribute is.
//!
//! A rule module is single-threaded (wasm32 without the threads proposal) and
//! the host never re-enters it, which is what makes the statics below sound.

use crate::context::{self, Context, Lists};
use crate::{Decision, Payment, Rule};
use std::cell::{RefCell, UnsafeCell};
use vigil_abi::{ABI_VERSION, OUTPUT_CAPACITY, Outcome, ParamValue, pack_ptr_len};

pub use vigil_abi::{ManifestDef, ParamDef, ParamDefault};

/// Marks a panic message in the output buffer, followed by a `u32` length and
/// the UTF-8 message. Reason codes are UTF-8 and so never start with `0xFF`.
pub use vigil_abi::PANIC_MAGIC;

#[derive(Default)]
struct State {
    input: Vec<u8>,
    /// Values of the declared parameters, in manifest order.
    params: Vec<ParamValue>,
    manifest: String,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::default();
}

/// Written by the host and by the panic hook, which must not touch `STATE`
/// (it may be borrowed when the rule panics), so it lives apart.
struct OutputBuffer(UnsafeCell<[u8; OUTPUT_CAPACITY]>);

// SAFETY: a rule module runs on one thread (see the module docs).
unsafe impl Sync for OutputBuffer {}

static OUTPUT: OutputBuffer = OutputBuffer(UnsafeCell::new([0; OUTPUT_CAPACITY]));

#[allow(clippy::mut_from_ref)]
fn output() -> &'static mut [u8; OUTPUT_CAPACITY] {
    // SAFETY: single-threaded module, and every user of this reference
    // finishes with it before returning to the host or calling the rule.
    unsafe { &mut *OUTPUT.0.get() }
}

fn guest_ptr<T>(p: *const T) -> i32 {
    p as usize as i32
}

pub fn abi_version() -> i32 {
    ABI_VERSION
}

pub fn manifest(rule: &Rule) -> i64 {
    STATE.with_borrow_mut(|st| {
        st.manifest = rule.manifest.to_json();
        pack_ptr_len(guest_ptr(st.manifest.as_ptr()) as u32, st.manifest.len() as u32)
    })
}

pub fn buffer(capacity: i32) -> i32 {
    STATE.with_borrow_mut(|st| {
        let capacity = usize::try_from(capacity).unwrap_or(0);
        if st.input.len() < capacity {
            st.input.resize(capacity, 0);
        }
        guest_ptr(st.input.as_ptr())
    })
}

pub fn output_ptr() -> i32 {
    guest_ptr(output().as_ptr())
}

/// Returns 0, or the length of an error message written to the output buffer.
pub fn configure(rule: &Rule, len: i32) -> i32 {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.payload_as_str().unwrap_or("(non-text panic payload)");
        match info.location() {
            Some(at) => write_panic(&format!("{msg} (at {}:{})", at.file(), at.line())),
            None => write_panic(msg),
        }
    }));
    let result = STATE.with_borrow_mut(|st| {
        let len = usize::try_from(len).unwrap_or(0).min(st.input.len());
        st.params = checked_params(rule, &st.input[..len])?;
        Ok::<(), String>(())
    });
    match result {
        Ok(()) => 0,
        Err(msg) => write_text(&msg) as i32,
    }
}

/// Decodes parameters and checks them against the rule's declarations; the
/// values come back in the manifest's order (see [`Context::new`]).
pub(crate) fn checked_params(rule: &Rule, encoded: &[u8]) -> Result<Vec<ParamValue>, String> {
    let mut params = vigil_abi::params::decode(encoded).map_err(|e| e.to_string())?;
    let mut ordered = Vec::with_capacity(rule.manifest.params.len());
    for def in rule.manifest.params {
        let want = def.default.to_value().ty();
        match params.iter().position(|(n, _)| n == def.name) {
            Some(i) if params[i].1.ty() == want => ordered.push(params.swap_remove(i).1),
            Some(i) => return Err(format!("parameter `{}` must be {want}, got {}", def.name, params[i].1.ty())),
            None => return Err(format!("parameter `{}` is missing", def.name)),
        }
    }
    Ok(ordered)
}

/// The rule's own function (the one `Rule::evaluate` points to), which
/// `#[rule]` implements this for so that the entry points below call it
/// directly and inline it. Called through the pointer, every event paid an
/// indirect call, got its decision back through linear memory, and looked
/// up each parameter by comparing names; inlined where the manifest is a
/// constant, those look-ups fold to indices.
pub trait Evaluate {
    /// The fields the rule declared: reading another panics.
    const FIELDS: vigil_abi::FieldMask;
    /// The rule's `RULE`, whose manifest is a constant.
    fn rule() -> &'static Rule;
    fn evaluate(tx: &Payment<'_>, ctx: &Context<'_>) -> Decision;
}

/// `Rule::native` where the `native` feature gives it, else nothing.
#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
pub type NativeEntry = crate::native::Entry;
/// `Rule::native` where the `native` feature gives it, else nothing.
#[cfg(not(all(feature = "native", not(target_arch = "wasm32"))))]
pub type NativeEntry = ();

/// The `RULE` `#[rule]` makes: the feature that decides whether it has a
/// native entry is the SDK's, so the SDK builds it.
pub const fn rule(
    manifest: ManifestDef,
    evaluate: fn(&Payment<'_>, &Context<'_>) -> Decision,
    native: NativeEntry,
) -> Rule {
    #[cfg(all(feature = "native", not(target_arch = "wasm32")))]
    return Rule { manifest, evaluate, native };
    #[cfg(not(all(feature = "native", not(target_arch = "wasm32"))))]
    {
        let () = native;
        Rule { manifest, evaluate }
    }
}

/// The native entry of the rule `E` implements, if the SDK gives one.
pub const fn native_entry<E: Evaluate>() -> NativeEntry {
    #[cfg(all(feature = "native", not(target_arch = "wasm32")))]
    return evaluate_native::<E>;
    #[cfg(not(all(feature = "native", not(target_arch = "wasm32"))))]
    ()
}

/// `Rule::native`: the rule called in a host process, with the manifest
/// a constant so that its names fold to indices as they do in wasm.
#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
pub fn evaluate_native<E: Evaluate>(
    tx: &Payment<'_>,
    params: &[ParamValue],
    host: &dyn crate::native::Host,
) -> Decision {
    let m = &E::rule().manifest;
    let lists = Lists::Native { names: m.lists, host };
    let ctx = Context::new(m.params, params, lists, m.features, tx.view(), context::State::Native(host));
    E::evaluate(tx, &ctx)
}

#[inline(always)]
pub fn evaluate<E: Evaluate>(len: i32) -> i64 {
    STATE.with_borrow(|st| {
        let len = usize::try_from(len).unwrap_or(0).min(st.input.len());
        evaluate_one::<E>(st, &st.input[..len])
    })
}

/// Evaluates the `count` events of the input buffer's batch table in order,
/// handing each outcome to the host before the next event; returns the
/// number evaluated. An entry outside the buffer ends the batch early, which
/// the host reports as the module's fault.
#[inline(always)]
pub fn evaluate_batch<E: Evaluate>(count: i32) -> i32 {
    STATE.with_borrow(|st| {
        let count = usize::try_from(count).unwrap_or(0);
        for i in 0..count {
            let Some(event) = vigil_abi::batch::event(&st.input, i) else {
                return i as i32;
            };
            host_outcome(i, evaluate_one::<E>(st, event));
        }
        count as i32
    })
}

#[inline(always)]
fn evaluate_one<E: Evaluate>(st: &State, event: &[u8]) -> i64 {
    // SAFETY: `event` is one event of the input buffer, which the host
    // fills with what its encoder wrote (strings from `&str`s), masked by
    // the rule's projection, with the feature block after it. A host that
    // broke that would only mislead the rule: the module is sandboxed.
    let tx = unsafe { Payment::from_host(event, E::FIELDS) };
    let m = &E::rule().manifest;
    let lists = Lists::Host { names: m.lists };
    let ctx = Context::new(m.params, &st.params, lists, m.features, tx.view(), context::State::Host);
    let decision = E::evaluate(&tx, &ctx);
    let mut reasons_len = 0;
    if !decision.reasons.is_empty() {
        reasons_len = write_reasons(decision.reasons.iter());
    }
    Outcome { action: decision.action as u8, reasons_len: reasons_len as u16, score: decision.score }.pack()
}

/// Writes `\n`-separated codes, up to the first that does not fit whole. The
/// codes hold no newlines: [`crate::decision::Reasons::push`] blanked them.
fn write_reasons<'a>(codes: impl Iterator<Item = &'a str>) -> usize {
    let out = output();
    let mut at = 0;
    for code in codes {
        let sep = usize::from(at > 0);
        if at + sep + code.len() > out.len() {
            break;
        }
        if sep == 1 {
            out[at] = b'\n';
        }
        at += sep;
        out[at..at + code.len()].copy_from_slice(code.as_bytes());
        at += code.len();
    }
    at
}

fn write_text(msg: &str) -> usize {
    let out = output();
    let n = msg.len().min(out.len());
    out[..n].copy_from_slice(&msg.as_bytes()[..n]);
    n
}

fn write_panic(msg: &str) {
    let out = output();
    let room = out.len() - 8;
    let n = msg.len().min(room);
    out[..4].copy_from_slice(&PANIC_MAGIC);
    out[4..8].copy_from_slice(&(n as u32).to_le_bytes());
    out[8..8 + n].copy_from_slice(&msg.as_bytes()[..n]);
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "vigil")]
unsafe extern "C" {
    fn list_contains(list: i32, ptr: i32, len: i32) -> i32;
}

#[cfg(target_arch = "wasm32")]
#[inline(always)]
pub(crate) fn host_list_contains(index: usize, value: &str) -> bool {
    // SAFETY: the host reads `len` bytes at `ptr` from this module's memory
    // and writes nothing.
    unsafe { list_contains(index as i32, guest_ptr(value.as_ptr()), value.len() as i32) != 0 }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn host_list_contains(_index: usize, _value: &str) -> bool {
    // Native builds only run rules through `testing`, which uses local lists.
    false
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "vigil")]
unsafe extern "C" {
    fn outcome(index: i32, outcome: i64);
}

#[cfg(target_arch = "wasm32")]
#[inline(always)]
fn host_outcome(index: usize, packed: i64) {
    // SAFETY: the host only reads the reason codes from the output buffer.
    unsafe { outcome(index as i32, packed) }
}

#[cfg(not(target_arch = "wasm32"))]
fn host_outcome(_index: usize, _packed: i64) {
    // Native builds never run a batch call: the host calls them per event.
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "vigil")]
unsafe extern "C" {
    fn state_get(key_ptr: i32, key_len: i32, out_ptr: i32, out_cap: i32) -> i32;
    fn state_put(key_ptr: i32, key_len: i32, val_ptr: i32, val_len: i32) -> i32;
    fn log(level: i32, ptr: i32, len: i32);
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn host_log(level: crate::Level, message: &str) {
    let len = message.len().min(vigil_abi::LOG_MAX_BYTES);
    // SAFETY: the host only reads `message` from this module's memory.
    unsafe { log(level as i32, guest_ptr(message.as_ptr()), len as i32) }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn host_log(level: crate::Level, message: &str) {
    // Native builds outside a host (tests): to stderr, as the test shows it.
    eprintln!("[{level:?}] {message}");
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn host_state_get(key: &[u8]) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64];
    loop {
        // SAFETY: the host reads `key` and writes at most `buf.len()` bytes
        // into `buf`, both in this module's memory.
        let n =
            unsafe { state_get(guest_ptr(key.as_ptr()), key.len() as i32, guest_ptr(buf.as_ptr()), buf.len() as i32) };
        let n = usize::try_from(n).ok()?;
        if n <= buf.len() {
            buf.truncate(n);
            return Some(buf);
        }
        buf.resize(n, 0);
    }
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn host_state_put(key: &[u8], value: &[u8]) -> bool {
    // SAFETY: the host only reads `key` and `value` from this module's memory.
    unsafe { state_put(guest_ptr(key.as_ptr()), key.len() as i32, guest_ptr(value.as_ptr()), value.len() as i32) == 0 }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn host_state_get(_key: &[u8]) -> Option<Vec<u8>> {
    // Native builds only run rules through `testing`, which keeps state locally.
    None
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn host_state_put(_key: &[u8], _value: &[u8]) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::{output, write_reasons};

    // One test: the output buffer is a static, and tests run in parallel.
    #[test]
    fn reasons_are_written_one_per_line_up_to_the_first_that_does_not_fit() {
        let n = write_reasons(["velocity", "new_device", "x"].into_iter());
        assert_eq!(&output()[..n], b"velocity\nnew_device\nx");
        let long = "y".repeat(vigil_abi::OUTPUT_CAPACITY - 2);
        let n = write_reasons(["ab", long.as_str(), "c"].into_iter());
        assert_eq!(&output()[..n], b"ab", "no part of the long code, nor a code after it");
        let n = write_reasons(["ab", &long[1..], "c"].into_iter());
        assert_eq!(n, vigil_abi::OUTPUT_CAPACITY, "a code that fills the buffer exactly is kept");
    }
}
