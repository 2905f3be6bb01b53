//! The wasmtime sandbox: compiling (with a cache of compiled artefacts),
//! validating a module against ABI v1, and running calls within a CPU budget
//! and a memory cap.
//!
//! A module gets no WASI and no imports but vigil's own host functions, so it
//! has no filesystem, network, clock or environment. Each event a rule
//! evaluates gets a fuel budget, also within a batch call; each instance has
//! a memory limiter. A failure is reported
//! as a [`RuleError`] and never escapes as a panic.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use vigil_abi::{ABI_VERSION, OUTPUT_CAPACITY, Outcome, PANIC_MAGIC, exports, imports};
use wasmtime::{
    Caller, Engine, ExternType, InstancePre, Linker, Memory, Module, ResourceLimiter, Store, Trap, TypedFunc, ValType,
};

use super::lists::{List, ListReader};
use super::state::RuleState;
use super::{Batch, RuleError, source};

/// Initial size of a rule's input buffer; grown on demand for larger events.
const INITIAL_INPUT: usize = 4096;

/// Input bytes one batch call carries at most (unless a single event is
/// larger): ~40 typical events, enough to make the entry into the sandbox
/// a small share of a call (`cargo bench --bench rule_call`, batch against
/// single calls), while a rule's input buffer stays within a few pages of
/// what single calls already make it hold.
const BATCH_INPUT: usize = 16 * 1024;

/// Per-store data: the memory limiter and what host functions need.
pub struct HostState {
    limiter: Limiter,
    lists: Vec<ListReader>,
    memory: Option<Memory>,
    /// The rule's keyed state, lent by the worker for the length of a call.
    rule_state: RuleState,
    /// What the `outcome` import needs during a batch call.
    run: Run,
    /// Where the rule's log lines go; none: they are dropped.
    log: Option<RuleLog>,
}

/// A rule instance's log lines ([`imports::LOG`]): into the host's log with
/// the rule's name and version, at most `rate` lines a second (a burst of
/// as many), the rest counted and reported with the next line let through.
#[derive(Debug)]
pub struct RuleLog {
    rule: Arc<str>,
    version: Arc<str>,
    rate: u32,
    /// Lines left in the current second, and when it began.
    left: u32,
    since: std::time::Instant,
    dropped: u64,
}

impl RuleLog {
    /// Lines of `rule` `version`, at most `rate` a second.
    pub fn new(rule: Arc<str>, version: Arc<str>, rate: u32) -> Self {
        Self { rule, version, rate, left: rate, since: std::time::Instant::now(), dropped: 0 }
    }

    fn write(&mut self, level: i32, message: &str) {
        if self.since.elapsed() >= Duration::from_secs(1) {
            (self.left, self.since) = (self.rate, std::time::Instant::now());
        }
        if self.left == 0 {
            self.dropped += 1;
            return;
        }
        self.left -= 1;
        let dropped = std::mem::take(&mut self.dropped);
        let (rule, version) = (&*self.rule, &*self.version);
        // Escaped: a rule's newline must not start a line of the host's own.
        let message = message.escape_debug();
        match level {
            0 => tracing::error!(target: "vigil::rule", rule, version, dropped, "{message}"),
            1 => tracing::warn!(target: "vigil::rule", rule, version, dropped, "{message}"),
            2 => tracing::info!(target: "vigil::rule", rule, version, dropped, "{message}"),
            _ => tracing::debug!(target: "vigil::rule", rule, version, dropped, "{message}"),
        }
    }
}

/// A batch call in progress, as the `outcome` import sees it.
struct Run {
    /// Outcomes so far, with the clock's reading as each was reported; lent
    /// by [`RuleInstance::call_batch`]'s caller.
    calls: Vec<CallResult>,
    ends: Vec<u64>,
    /// Input partitions of the events of this call.
    partitions: Vec<u32>,
    /// Their entities' keys, one after another, and where each ends: only
    /// for a rule that keeps state.
    entities: Vec<u8>,
    entity_ends: Vec<usize>,
    /// Their event times (only for a rule that keeps state).
    times: Vec<i64>,
    /// The event the guest evaluates now, within this call.
    next: usize,
    /// Each event's fuel within this call: its share of the event budget
    /// left, at most the call budget.
    budgets: Vec<u64>,
    /// Fuel each event used, as its outcome came in.
    used: Vec<u64>,
    /// Host work charged to the event under way and not yet taken from
    /// its fuel (see [`charge`]).
    owed: u64,
    /// Whether events' budgets differ and the fuel each used is wanted
    /// (`used`): only while an event budget across rules can bind.
    metered: bool,
    output_ptr: usize,
    clock: quanta::Clock,
    /// Reason codes seen so far: a rule repeats a handful of codes, so
    /// records share them instead of allocating each time.
    reason_cache: Vec<Arc<str>>,
    /// Why the guest's report was refused, when it was.
    refused: Option<RuleError>,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState").field("lists", &self.lists.len()).finish_non_exhaustive()
    }
}

/// Bounds one instance's memory: all its linear memories and tables
/// together, not each on its own.
struct Limiter {
    cap: usize,
    /// Bytes of linear memory and table slots granted so far.
    used: usize,
    denied: bool,
}

/// Bytes a table slot is counted as (a function reference).
const TABLE_SLOT_BYTES: usize = 8;

/// Tables an instance may have: a rule compiled from Rust has one.
const MAX_TABLES: usize = 4;

impl Limiter {
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let next = self.used.saturating_sub(current).saturating_add(desired);
        if next > self.cap {
            self.denied = true;
            return false;
        }
        self.used = next;
        true
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grow(current.saturating_mul(TABLE_SLOT_BYTES), desired.saturating_mul(TABLE_SLOT_BYTES)))
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn instances(&self) -> usize {
        1
    }
}

/// The engine every rule runs on.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<Cache>,
    memory_cap: usize,
    fuel: u64,
    deadline_ticks: u64,
    clock: quanta::Clock,
    /// Log lines a second each rule instance may write (`rules.log-rate`);
    /// 0: dropped.
    log_rate: u32,
}

/// The compiled-rule cache: a folder, and the key artefacts are signed
/// with, so one written by anyone else is not loaded.
struct Cache {
    dir: PathBuf,
    key: [u8; 32],
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("memory_cap", &self.memory_cap)
            .field("fuel", &self.fuel)
            .finish_non_exhaustive()
    }
}

/// Limits of the sandbox.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Budget of one call.
    pub fuel_per_call: u64,
    /// Memory cap per instance, bytes: its linear memory and tables.
    pub memory_cap: usize,
    /// Wall-clock backstop of one call (a batch call of several events is
    /// one call): a call the fuel budget has not ended by then is.
    pub call_timeout: Duration,
}

impl Limits {
    /// `fuel_per_call` and `memory_cap`, with the default backstop.
    pub fn new(fuel_per_call: u64, memory_cap: usize) -> Self {
        Self { fuel_per_call, memory_cap, call_timeout: DEFAULT_CALL_TIMEOUT }
    }
}

/// The default wall-clock backstop of a call: hundreds of times what the
/// default fuel budget takes.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the engine's epoch advances: the backstop's resolution.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Fuel a host function costs on top of the guest's call to it.
const HOST_CALL_FUEL: u64 = 16;

/// Bytes of guest data a host function handles per unit of fuel: hashing
/// or copying a few bytes costs about what one wasm instruction does.
const HOST_BYTES_PER_FUEL: u64 = 4;

/// The program that compiles modules out of process (see [`set_compiler`]).
static COMPILER: OnceLock<PathBuf> = OnceLock::new();

/// Longest a compile in a child process may take before it is killed.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);

/// Compile modules in a child process from now on: `program compile-rule
/// OUT` reads the module on its standard input and writes the compiled
/// artefact to OUT (the `vigil` binary does; see [`compile`]).
///
/// Why: a module is untrusted input to the compiler too. In a child, a
/// module that crashes the compiler, makes it eat memory or run for minutes
/// costs that child (killed after two minutes), not the engine, and its
/// rejection names the file and the cause like any other. Only used with a
/// compile cache, where the artefact lands; without a call to this (library
/// users, in-process tests) modules compile in-process.
pub fn set_compiler(program: PathBuf) {
    let _ = COMPILER.set(program);
}

/// The engine settings: one function, so a child compiler produces
/// artefacts the engine accepts.
///
/// Only what a rule needs is on: one 32-bit memory (no multi-memory or
/// memory64, which would let a module hold many capped memories or a huge
/// one), no relaxed SIMD (whose results differ between machines), and
/// NaNs made canonical, so a replay computes exactly what the live run
/// did. A module using what is off is refused when it loads.
fn engine() -> Result<Engine, RuleError> {
    let mut cfg = wasmtime::Config::new();
    cfg.consume_fuel(true)
        .epoch_interruption(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .cranelift_nan_canonicalization(true)
        .max_wasm_stack(512 * 1024)
        .wasm_multi_memory(false)
        .wasm_memory64(false)
        .wasm_relaxed_simd(false)
        .wasm_custom_page_sizes(false)
        .wasm_wide_arithmetic(false)
        .wasm_stack_switching(false);
    Engine::new(&cfg).map_err(|e| RuleError::Compile { what: "wasmtime setup".into(), source: source(e) })
}

/// Advances `engine`'s epoch every [`EPOCH_TICK`] for as long as the engine
/// lives, on a thread of its own: what ends a call past its backstop.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("vigil-epoch".into()).spawn(move || {
        loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        }
    });
    if let Err(e) = spawned {
        // Fuel still bounds every call; only the backstop is missing.
        tracing::error!(error = %e, "cannot start the rule-call backstop thread");
    }
}

/// Says which WebAssembly feature a refused module uses, when wasmtime's
/// message names one vigil switches off.
fn explain_compile_error(e: wasmtime::Error) -> RuleError {
    let msg = format!("{e:#}");
    let hint = [
        ("multiple memories", "a rule gets one linear memory (multi-memory is off)"),
        ("memory64", "a rule's memory is 32-bit (memory64 is off)"),
        ("relaxed SIMD", "relaxed SIMD is off: its results differ between machines"),
        ("custom page sizes", "custom page sizes are off"),
        ("wide arithmetic", "wide arithmetic is off"),
    ]
    .iter()
    .find(|(needle, _)| msg.contains(needle));
    RuleError::Compile { what: hint.map_or("", |(_, why)| *why).into(), source: source(e) }
}

/// `vigil compile-rule`: compiles `bytes` with the engine's settings into
/// an artefact the engine can load.
///
/// # Errors
/// [`RuleError::Compile`] saying why.
pub fn compile(bytes: &[u8]) -> Result<Vec<u8>, RuleError> {
    engine()?.precompile_module(bytes).map_err(explain_compile_error)
}

/// Writes `bytes` to `path` whole: a private temporary file, synced, then
/// renamed into place, so a crash leaves the old file or the new one.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| {
        let mut f = private_file(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A new file only its owner can read, replacing one at `path`.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// The compiler child's command: `program compile-rule`, with nothing of
/// this process's environment (the PAN key is in it).
fn compiler_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("compile-rule").env_clear().stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Runs the child compiler on `bytes`; returns the artefact it wrote on
/// its standard output.
fn compile_in_child(program: &Path, bytes: &[u8]) -> Result<Vec<u8>, RuleError> {
    let what = |why: &str| format!("compiler process {}: {why}", program.display());
    let failed = |why: String| RuleError::compile(what(&why));
    let io = |why: &str, e: std::io::Error| RuleError::Compile { what: what(why).into(), source: source(e) };
    let mut child = compiler_command(program).spawn().map_err(|e| io("cannot start", e))?;
    // Fed and drained on threads of their own, so neither pipe fills
    // while this one waits for the other.
    let feed = child.stdin.take().map(|mut stdin| {
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            // A child that dies early closes the pipe; its exit status says why.
            let _ = stdin.write_all(&bytes);
        })
    });
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        pipe.map(|mut p| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = p.read_to_end(&mut out);
                out
            })
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| io("cannot wait", e))? {
            break status;
        }
        if start.elapsed() > COMPILE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!("still compiling after {COMPILE_TIMEOUT:?}; killed")));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if let Some(f) = feed {
        let _ = f.join();
    }
    let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    let (out, err) = (join(stdout), join(stderr));
    if status.success() {
        return Ok(out);
    }
    let stderr = String::from_utf8_lossy(&err);
    let msg = stderr.trim().trim_start_matches("error: ").trim_start_matches("does not compile: ");
    Err(match status.code() {
        Some(_) if !msg.is_empty() => RuleError::compile(msg.to_owned()),
        _ => failed(format!("{status} {msg}").trim_end().to_owned()),
    })
}

/// Tag of a cached artefact: HMAC-SHA256 of it under the cache's key.
fn artefact_tag(key: &[u8; 32], artefact: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(artefact);
    mac.finalize().into_bytes().into()
}

/// Why a cached artefact is not loaded, if it is not.
fn check_cached(path: &Path, bytes: &[u8], key: &[u8; 32]) -> Result<(), UntrustedArtefact> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|source| UntrustedArtefact::Metadata { source })?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(UntrustedArtefact::Owner { owner: meta.uid(), me });
        }
        if meta.mode() & 0o022 != 0 {
            return Err(UntrustedArtefact::Writable { mode: meta.mode() & 0o777 });
        }
    }
    let Some((tag, artefact)) = bytes.split_first_chunk::<32>() else {
        return Err(UntrustedArtefact::Short);
    };
    if artefact_tag(key, artefact) != *tag {
        return Err(UntrustedArtefact::Tag);
    }
    Ok(())
}

/// Why a cached compiled artefact is not loaded ([`check_cached`]).
#[derive(Debug, thiserror::Error)]
enum UntrustedArtefact {
    /// Its owner and mode cannot be read.
    #[error("cannot read its metadata")]
    Metadata {
        /// What the system said.
        source: std::io::Error,
    },
    /// Another user owns it.
    #[error("owned by user {owner}, not this process's {me}")]
    Owner {
        /// Its owner's uid.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// Others may write it.
    #[error("writable by others (mode {mode:o})")]
    Writable {
        /// Its permission bits.
        mode: u32,
    },
    /// Shorter than a tag.
    #[error("too short to hold a tag")]
    Short,
    /// Its tag is not the one this key makes.
    #[error("its tag does not match: not written by this vigil with this key")]
    Tag,
}

impl Sandbox {
    /// Starts an engine with `limits`, caching compiled modules in `cache_dir`.
    ///
    /// # Errors
    /// [`RuleError::Compile`] when wasmtime cannot be configured.
    pub fn new(limits: &Limits, cache_dir: Option<PathBuf>) -> Result<Self, RuleError> {
        Self::with_cache(limits, cache_dir.map(|dir| (dir, [0; 32])))
    }

    /// [`Sandbox::new`], with a cache whose artefacts are tagged with `key`
    /// (an HMAC): an artefact without the right tag — written by someone
    /// else, or damaged — is compiled again rather than loaded, since
    /// loading one runs its machine code as it is.
    ///
    /// # Errors
    /// [`RuleError::Compile`] when wasmtime cannot be configured.
    pub fn with_cache(limits: &Limits, cache: Option<(PathBuf, [u8; 32])>) -> Result<Self, RuleError> {
        let engine = engine()?;
        start_epoch_ticker(&engine);
        let mut linker = Linker::new(&engine);
        linker
            .func_wrap(imports::MODULE, imports::LIST_CONTAINS, list_contains)
            .and_then(|l| l.func_wrap(imports::MODULE, imports::STATE_GET, state_get))
            .and_then(|l| l.func_wrap(imports::MODULE, imports::STATE_PUT, state_put))
            .and_then(|l| l.func_wrap(imports::MODULE, imports::OUTCOME, outcome))
            .and_then(|l| l.func_wrap(imports::MODULE, imports::LOG, log))
            .map_err(|e| RuleError::Compile { what: "host functions".into(), source: source(e) })?;
        if let Some((dir, _)) = &cache
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the compiled-rule cache; compiling every time");
        }
        let ticks = limits.call_timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos());
        Ok(Self {
            engine,
            linker,
            cache: cache.map(|(dir, key)| Cache { dir, key }),
            memory_cap: limits.memory_cap,
            fuel: limits.fuel_per_call,
            // One more: the first tick may come at once.
            deadline_ticks: u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1),
            clock: quanta::Clock::new(),
            log_rate: crate::config::DEFAULT_LOG_RATE,
        })
    }

    /// The fuel budget of one call.
    pub fn fuel_per_call(&self) -> u64 {
        self.fuel
    }

    /// The sandbox `[rules]` configures, caching compiled modules in
    /// `state.dir`'s `wasm-cache/` under a key derived from the PAN key
    /// (without one, nothing is cached).
    ///
    /// # Errors
    /// When wasmtime cannot be set up.
    pub fn from_config(config: &crate::config::Config) -> Result<Self, RuleError> {
        let limits = Limits {
            fuel_per_call: config.rules.cpu_budget,
            memory_cap: usize::try_from(config.rules.memory_cap.as_u64()).unwrap_or(usize::MAX),
            call_timeout: config.rules.call_timeout,
        };
        let key = config.pan_key().ok().map(|k| crate::decode::Tokenizer::new(&k).derive(b"vigil wasm-cache v1"));
        let mut sandbox = Self::with_cache(&limits, key.map(|k| (config.state.dir.join("wasm-cache"), k)))?;
        sandbox.log_rate = config.rules.log_rate;
        Ok(sandbox)
    }

    /// Where a new instance of rule `name` `version` writes its log lines.
    pub fn rule_log(&self, name: &Arc<str>, version: &Arc<str>) -> Option<RuleLog> {
        (self.log_rate > 0).then(|| RuleLog::new(name.clone(), version.clone(), self.log_rate))
    }

    /// Compiles `bytes` (or loads the cached artefact) and checks the module's
    /// imports and exports against ABI v1.
    ///
    /// # Errors
    /// [`RuleError::Compile`] or [`RuleError::Abi`] saying what is wrong.
    pub fn prepare(&self, bytes: &[u8], hash: &str) -> Result<InstancePre<HostState>, RuleError> {
        let module = self.compile(bytes, hash)?;
        check_imports(&module)?;
        check_exports(&module)?;
        self.linker.instantiate_pre(&module).map_err(|e| RuleError::Abi { what: "".into(), source: source(e) })
    }

    fn compile(&self, bytes: &[u8], hash: &str) -> Result<Module, RuleError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(RuleError::compile("not a WebAssembly module (no \\0asm header)"));
        }
        let Some(cache) = &self.cache else {
            return Module::new(&self.engine, bytes).map_err(explain_compile_error);
        };
        let mut h = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let path = cache.dir.join(format!("{hash}-{:016x}.cwasm", h.finish()));
        if let Ok(stored) = std::fs::read(&path) {
            match check_cached(&path, &stored, &cache.key) {
                // SAFETY: the artefact carries the tag only this process's
                // key makes, over exactly these bytes, so this engine (same
                // settings: the file name holds their hash) serialised it;
                // wasmtime also checks its engine and version.
                Ok(()) => match unsafe { Module::deserialize(&self.engine, &stored[32..]) } {
                    Ok(m) => return Ok(m),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "stale compiled-rule cache entry; recompiling")
                    }
                },
                Err(why) => {
                    tracing::warn!(path = %path.display(), why = %crate::error::chain(&why), "compiled-rule cache entry not trusted; recompiling")
                }
            }
        }
        let here = || -> Result<(Module, Vec<u8>), RuleError> {
            let module = Module::new(&self.engine, bytes).map_err(explain_compile_error)?;
            let artefact = module.serialize().map_err(|e| RuleError::Compile { what: "".into(), source: source(e) })?;
            Ok((module, artefact))
        };
        let (module, artefact) = match COMPILER.get() {
            Some(program) => {
                let artefact = compile_in_child(program, bytes)?;
                // SAFETY: the child compiled it with this engine's settings
                // (`engine`); wasmtime checks the engine and version too.
                match unsafe { Module::deserialize(&self.engine, &artefact) } {
                    Ok(module) => (module, artefact),
                    Err(e) => {
                        // The child saw other CPU features than this
                        // process (an emulator such as valgrind does that).
                        tracing::warn!(error = %e, "the compiler process's artefact does not fit this one; compiling here");
                        here()?
                    }
                }
            }
            None => here()?,
        };
        let mut stored = Vec::with_capacity(32 + artefact.len());
        stored.extend_from_slice(&artefact_tag(&cache.key, &artefact));
        stored.extend_from_slice(&artefact);
        if let Err(e) = write_whole(&path, &stored) {
            // Compiling works, so the rule runs; only the next start is slower.
            tracing::warn!(path = %path.display(), error = %e, "cannot write the compiled-rule cache; the rule runs, and compiles again at the next start");
        }
        Ok(module)
    }

    /// Instantiates a rule from its pre-instantiated form and applies its
    /// parameters.
    ///
    /// # Errors
    /// [`RuleError`] when instantiation, the ABI handshake or `configure` fails.
    pub fn instantiate(
        &self,
        pre: &InstancePre<HostState>,
        lists: Arc<[Arc<List>]>,
        params: &[u8],
    ) -> Result<RuleInstance, RuleError> {
        let mut inst = self.instantiate_with(pre, lists)?;
        inst.configure(params)?;
        Ok(inst)
    }

    /// Instantiates a rule and checks its ABI version, without parameters:
    /// enough to read its manifest.
    ///
    /// # Errors
    /// [`RuleError`] when instantiation or the ABI handshake fails.
    pub fn instantiate_unconfigured(&self, pre: &InstancePre<HostState>) -> Result<RuleInstance, RuleError> {
        self.instantiate_with(pre, Arc::from(Vec::new()))
    }

    fn instantiate_with(
        &self,
        pre: &InstancePre<HostState>,
        lists: Arc<[Arc<List>]>,
    ) -> Result<RuleInstance, RuleError> {
        let state = HostState {
            limiter: Limiter { cap: self.memory_cap, used: 0, denied: false },
            lists: lists.iter().map(|l| ListReader::new(l.clone())).collect(),
            memory: None,
            rule_state: RuleState::default(),
            run: Run {
                calls: Vec::new(),
                ends: Vec::new(),
                partitions: Vec::new(),
                entities: Vec::new(),
                entity_ends: Vec::new(),
                times: Vec::new(),
                next: 0,
                budgets: Vec::new(),
                used: Vec::new(),
                owed: 0,
                metered: false,
                output_ptr: 0,
                clock: self.clock.clone(),
                reason_cache: Vec::new(),
                refused: None,
            },
            log: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        set_fuel(&mut store, self.fuel);
        store.set_epoch_deadline(self.deadline_ticks);
        let instance = pre.instantiate(&mut store).map_err(|e| self.classify(&store, e, None))?;
        let memory =
            instance.get_memory(&mut store, exports::MEMORY).ok_or_else(|| RuleError::abi("no exported memory"))?;
        store.data_mut().memory = Some(memory);
        let func = |store: &mut Store<HostState>, name: &str| {
            instance.get_func(&mut *store, name).ok_or_else(|| RuleError::abi(format!("missing export `{name}`")))
        };
        let abi = func(&mut store, exports::ABI_VERSION)?.typed::<(), i32>(&store).map_err(abi_err)?;
        let manifest = func(&mut store, exports::MANIFEST)?.typed::<(), i64>(&store).map_err(abi_err)?;
        let buffer = func(&mut store, exports::BUFFER)?.typed::<i32, i32>(&store).map_err(abi_err)?;
        let output = func(&mut store, exports::OUTPUT)?.typed::<(), i32>(&store).map_err(abi_err)?;
        let configure = func(&mut store, exports::CONFIGURE)?.typed::<i32, i32>(&store).map_err(abi_err)?;
        let evaluate = func(&mut store, exports::EVALUATE)?.typed::<i32, i64>(&store).map_err(abi_err)?;
        let evaluate_batch = match instance.get_func(&mut store, exports::EVALUATE_BATCH) {
            Some(f) => Some(f.typed::<i32, i32>(&store).map_err(abi_err)?),
            None => None,
        };

        let version = abi.call(&mut store, ()).map_err(|e| self.classify(&store, e, None))?;
        if version != ABI_VERSION {
            return Err(RuleError::abi(format!(
                "built for rule ABI v{version}; this vigil speaks v{ABI_VERSION} (rebuild with a matching vigil-sdk)"
            )));
        }
        let mut inst = RuleInstance {
            store,
            memory,
            manifest,
            buffer,
            configure,
            evaluate,
            evaluate_batch,
            keeps_state: pre
                .module()
                .imports()
                .any(|i| i.module() == imports::MODULE && [imports::STATE_GET, imports::STATE_PUT].contains(&i.name())),
            input_ptr: 0,
            input_cap: 0,
            output_ptr: 0,
            fuel: self.fuel,
            deadline_ticks: self.deadline_ticks,
            memory_cap: self.memory_cap,
        };
        inst.arm(self.fuel);
        inst.output_ptr = output.call(&mut inst.store, ()).map_err(|e| inst.classify(e))? as u32 as usize;
        if inst.output_ptr.checked_add(OUTPUT_CAPACITY).is_none_or(|end| end > inst.memory.data_size(&inst.store)) {
            return Err(RuleError::abi(format!("`{}` returned an out-of-bounds buffer", exports::OUTPUT)));
        }
        inst.store.data_mut().run.output_ptr = inst.output_ptr;
        inst.ensure_input(INITIAL_INPUT)?;
        Ok(inst)
    }

    fn classify(&self, store: &Store<HostState>, e: wasmtime::Error, panic: Option<String>) -> RuleError {
        classify(store, e, panic, self.fuel, self.memory_cap)
    }
}

fn abi_err(e: wasmtime::Error) -> RuleError {
    RuleError::Abi { what: "export has the wrong signature".into(), source: source(e) }
}

fn set_fuel(store: &mut Store<HostState>, fuel: u64) {
    // Only fails when fuel is not enabled, which `Sandbox::new` guarantees.
    let _ = store.set_fuel(fuel);
}

fn classify(store: &Store<HostState>, e: wasmtime::Error, panic: Option<String>, budget: u64, cap: usize) -> RuleError {
    if store.data().limiter.denied {
        return RuleError::MemoryExceeded(cap);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => RuleError::OutOfFuel(budget),
        Some(Trap::Interrupt) => RuleError::Timeout,
        Some(Trap::StackOverflow) => RuleError::trap("stack overflow (call stack exhausted)"),
        Some(trap) => match panic {
            Some(msg) => RuleError::trap(format!("panicked: {msg}")),
            None => RuleError::Trap { what: "".into(), source: source(*trap) },
        },
        None => RuleError::Trap { what: "".into(), source: source(e) },
    }
}

/// The module's memory and the store data, for a host function.
#[inline(always)]
fn guest<'a>(caller: &'a mut Caller<'_, HostState>, func: &str) -> wasmtime::Result<(&'a mut [u8], &'a mut HostState)> {
    let Some(memory) = caller.data().memory else {
        wasmtime::bail!("{func} called before the module was ready");
    };
    Ok(memory.data_and_store_mut(caller))
}

/// The guest byte range `ptr..ptr + len`, as the ABI passes it.
fn range(ptr: i32, len: i32) -> std::ops::Range<usize> {
    let start = ptr as u32 as usize;
    start..start.saturating_add(len as u32 as usize)
}

/// Charges the call under way for a host function handling `bytes` of
/// guest data, so a rule pays for the host's work on its behalf as for its
/// own: out of fuel, the call ends as if its own code had used it up.
///
/// Small charges add up in [`Run::owed`] and are taken from the fuel once
/// they pass [`SETTLE_FUEL`] (and at each event's outcome): reading and
/// setting the fuel on every look-up cost a rule making four of them a
/// sixteenth of its call. A call can so overrun its budget by no more
/// than that.
#[inline(always)]
fn charge(caller: &mut Caller<'_, HostState>, bytes: usize) -> wasmtime::Result<()> {
    let cost = HOST_CALL_FUEL + (bytes as u64 / HOST_BYTES_PER_FUEL);
    let run = &mut caller.data_mut().run;
    run.owed += cost;
    if run.owed < SETTLE_FUEL {
        return Ok(());
    }
    settle_now(caller)
}

/// [`settle`], off the path of the usual small charge.
#[cold]
#[inline(never)]
fn settle_now(caller: &mut Caller<'_, HostState>) -> wasmtime::Result<()> {
    settle(caller).map(drop)
}

/// Host work charged below which it is not yet taken from the fuel.
const SETTLE_FUEL: u64 = 1024;

/// Takes the host work owed from the fuel; returns the fuel left.
///
/// # Errors
/// [`Trap::OutOfFuel`] when it is more than the fuel left.
#[inline(always)]
fn settle(caller: &mut Caller<'_, HostState>) -> wasmtime::Result<u64> {
    let owed = std::mem::take(&mut caller.data_mut().run.owed);
    let left = caller.get_fuel()?;
    if left < owed {
        caller.set_fuel(0)?;
        return Err(wasmtime::Error::new(Trap::OutOfFuel));
    }
    if owed > 0 {
        caller.set_fuel(left - owed)?;
    }
    Ok(left - owed)
}

/// `vigil::list_contains(list, ptr, len) -> i32`.
// Inlined into wasmtime's trampoline, as the hot host calls are: left to
// the compiler, whether it was moved with unrelated code elsewhere in the
// crate, by several percent of a hundred rules' time.
#[inline(always)]
fn list_contains(mut caller: Caller<'_, HostState>, list: i32, ptr: i32, len: i32) -> wasmtime::Result<i32> {
    charge(&mut caller, len as u32 as usize)?;
    let (data, state) = guest(&mut caller, "list_contains")?;
    let Some(bytes) = data.get(range(ptr, len)) else {
        wasmtime::bail!("list_contains: value out of bounds");
    };
    let Some(list) = state.lists.get_mut(list as u32 as usize) else {
        wasmtime::bail!("list_contains: no list with index {list}");
    };
    Ok(i32::from(list.contains(bytes)))
}

/// `vigil::state_get(key_ptr, key_len, out_ptr, out_cap) -> i32`.
fn state_get(
    mut caller: Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    out_ptr: i32,
    out_cap: i32,
) -> wasmtime::Result<i32> {
    // Charged for the most it can copy (no value is longer), so the
    // value is looked up once.
    let most = (out_cap as u32 as usize).min(vigil_abi::STATE_MAX_VALUE);
    charge(&mut caller, (key_len as u32 as usize).saturating_add(most))?;
    let (data, state) = guest(&mut caller, "state_get")?;
    let Some(key) = data.get(range(key_ptr, key_len)) else {
        wasmtime::bail!("state_get: key out of bounds");
    };
    let Some(value) = state.rule_state.get(key) else {
        return Ok(-1);
    };
    let n = value.len().min(out_cap as u32 as usize);
    let Some(out) = data.get_mut(range(out_ptr, n as i32)) else {
        wasmtime::bail!("state_get: output out of bounds");
    };
    out.copy_from_slice(&value[..n]);
    Ok(value.len() as i32)
}

/// Fuel a log line costs besides its bytes: formatting and writing it is
/// the host's most expensive call.
const LOG_FUEL: u64 = 20_000;

/// `vigil::log(level, ptr, len)`.
fn log(mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let len = (len as u32 as usize).min(vigil_abi::LOG_MAX_BYTES);
    caller.data_mut().run.owed += LOG_FUEL;
    charge(&mut caller, len)?;
    let (data, state) = guest(&mut caller, "log")?;
    let Some(bytes) = data.get(range(ptr, len as i32)) else {
        wasmtime::bail!("log: message out of bounds");
    };
    if let Some(log) = &mut state.log {
        log.write(level, &String::from_utf8_lossy(bytes));
    }
    Ok(())
}

/// `vigil::state_put(key_ptr, key_len, val_ptr, val_len) -> i32`.
fn state_put(
    mut caller: Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    val_ptr: i32,
    val_len: i32,
) -> wasmtime::Result<i32> {
    charge(&mut caller, (key_len as u32 as usize).saturating_add(val_len as u32 as usize))?;
    let (data, state) = guest(&mut caller, "state_put")?;
    let (Some(key), Some(value)) = (data.get(range(key_ptr, key_len)), data.get(range(val_ptr, val_len))) else {
        wasmtime::bail!("state_put: key or value out of bounds");
    };
    Ok(if state.rule_state.put(key, value) { 0 } else { -1 })
}

/// `vigil::outcome(index, outcome)`: event `index` of the batch call under
/// way is decided. Records it and gives the next event the full budget.
#[inline(always)]
fn outcome(mut caller: Caller<'_, HostState>, index: i32, packed: i64) -> wasmtime::Result<()> {
    let run = &mut caller.data_mut().run;
    if index as u32 as usize != run.next || run.next >= run.partitions.len() {
        let e = if run.partitions.is_empty() {
            format!("reported an outcome (event {index}) outside `{}`", exports::EVALUATE_BATCH)
        } else {
            format!("reported the outcome of event {index} while event {} was next", run.next)
        };
        run.refused = Some(RuleError::abi(e.clone()));
        wasmtime::bail!("{e}");
    }
    // Most events have no reason codes, and finding the guest's memory is
    // a chain of loads through the store: only then.
    let result = if Outcome::unpack(packed).reasons_len == 0 {
        read_outcome(&[], run.output_ptr, packed, &mut run.reason_cache)
    } else {
        let (data, state) = guest(&mut caller, "outcome")?;
        read_outcome(data, state.run.output_ptr, packed, &mut state.run.reason_cache)
    };
    let state = caller.data_mut();
    let run = &mut state.run;
    match result {
        Ok(result) => run.calls.push(result),
        Err(e) => {
            run.refused = Some(e);
            wasmtime::bail!("invalid outcome");
        }
    }
    run.ends.push(run.clock.raw());
    let next = run.next + 1;
    run.next = next;
    if let Some(&partition) = run.partitions.get(next) {
        match run.entity_ends.get(next + 1) {
            Some(&end) => {
                state.rule_state.set_event(partition, run.times[next], &run.entities[run.entity_ends[next]..end])
            }
            None => state.rule_state.set_partition(partition),
        }
    }
    if !run.metered {
        // Every event has the call budget, and what the event still owes
        // for host work (under `SETTLE_FUEL`) goes with it.
        run.owed = 0;
        let budget = run.budgets[0];
        return caller.set_fuel(budget);
    }
    // `budgets` is as long as `partitions`, and `next - 1` was checked
    // above. After the last event, what is left of the call runs on the
    // last event's budget.
    let given = run.budgets[next - 1];
    let budget = run.budgets.get(next).copied().unwrap_or(given);
    let left = settle(&mut caller)?;
    caller.data_mut().run.used.push(given.saturating_sub(left));
    caller.set_fuel(budget)
}

/// Decodes a packed outcome, with its reason codes from the output buffer
/// at `output_ptr` of the guest memory `data`. Inlined: returned through
/// memory, the result was read back wider than it was written, a stall that
/// was half of the `outcome` import's time.
#[inline(always)]
fn read_outcome(
    data: &[u8],
    output_ptr: usize,
    packed: i64,
    reason_cache: &mut Vec<Arc<str>>,
) -> Result<CallResult, RuleError> {
    let out = Outcome::unpack(packed);
    let action = vigil_abi::Action::from_code(out.action)
        .ok_or_else(|| RuleError::abi(format!("returned unknown action code {}", out.action)))?;
    let mut reasons = crate::decide::Reasons::new();
    if out.reasons_len > 0 {
        let len = usize::from(out.reasons_len).min(OUTPUT_CAPACITY);
        let text =
            data.get(output_ptr..output_ptr + len).ok_or_else(|| RuleError::abi("reason codes out of bounds"))?;
        // Split as bytes and matched against the cache as bytes: only a code
        // not seen before is checked as UTF-8 (a newline is never part of a
        // multi-byte character, so the pieces are valid when the whole is).
        // Splitting as text and checking it whole cost a firing rule's call
        // about 150 instructions.
        if let Some(code) = cached(reason_cache, text) {
            // One code, seen before (cached codes hold no newline): the
            // usual firing rule's, without the search for newlines.
            reasons.push(code);
            return Ok(CallResult { action, score: out.score, reasons });
        }
        let mut rest = text;
        while !rest.is_empty() {
            let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            if end > 0 {
                reasons.push(intern_bytes(reason_cache, &rest[..end])?);
            }
            rest = rest.get(end + 1..).unwrap_or_default();
        }
    }
    Ok(CallResult { action, score: out.score, reasons })
}

fn describe(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => {
            let p: Vec<String> = f.params().map(|v| v.to_string()).collect();
            let r: Vec<String> = f.results().map(|v| v.to_string()).collect();
            format!("func({}) -> ({})", p.join(", "), r.join(", "))
        }
        ExternType::Memory(_) => "memory".into(),
        ExternType::Table(_) => "table".into(),
        ExternType::Global(_) => "global".into(),
        ExternType::Tag(_) => "tag".into(),
    }
}

fn is_func(ty: &ExternType, params: &[ValType], results: &[ValType]) -> bool {
    let ExternType::Func(f) = ty else {
        return false;
    };
    let same = |a: &mut dyn ExactSizeIterator<Item = ValType>, b: &[ValType]| {
        a.len() == b.len() && a.zip(b).all(|(x, y)| ValType::eq(&x, y))
    };
    same(&mut f.params(), params) && same(&mut f.results(), results)
}

fn check_imports(module: &Module) -> Result<(), RuleError> {
    use ValType::I32;
    let mut bad = Vec::new();
    for imp in module.imports() {
        let ok = imp.module() == imports::MODULE
            && match imp.name() {
                imports::LIST_CONTAINS => is_func(&imp.ty(), &[I32, I32, I32], &[I32]),
                imports::STATE_GET | imports::STATE_PUT => is_func(&imp.ty(), &[I32, I32, I32, I32], &[I32]),
                imports::OUTCOME => is_func(&imp.ty(), &[I32, ValType::I64], &[]),
                imports::LOG => is_func(&imp.ty(), &[I32, I32, I32], &[]),
                _ => false,
            };
        if !ok {
            bad.push(format!("`{}::{}` ({})", imp.module(), imp.name(), describe(&imp.ty())));
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    let wasi = bad.iter().any(|b| b.contains("wasi"));
    Err(RuleError::abi(format!(
        "imports {}; a rule may import only vigil's host functions (`{m}::{}`, `{m}::{}`, `{m}::{}`, `{m}::{}`, \
         `{m}::{}`){}",
        bad.join(", "),
        imports::LIST_CONTAINS,
        imports::STATE_GET,
        imports::STATE_PUT,
        imports::OUTCOME,
        imports::LOG,
        if wasi { " — WASI is not available: build for wasm32-unknown-unknown" } else { "" },
        m = imports::MODULE,
    )))
}

fn check_exports(module: &Module) -> Result<(), RuleError> {
    use ValType::{I32, I64};
    let wanted: [(&str, &[ValType], &[ValType]); 6] = [
        (exports::ABI_VERSION, &[], &[I32]),
        (exports::MANIFEST, &[], &[I64]),
        (exports::BUFFER, &[I32], &[I32]),
        (exports::OUTPUT, &[], &[I32]),
        (exports::CONFIGURE, &[I32], &[I32]),
        (exports::EVALUATE, &[I32], &[I64]),
    ];
    let mut missing = Vec::new();
    for (name, params, results) in wanted {
        match module.get_export(name) {
            None => missing.push(format!("`{name}`")),
            Some(ty) if !is_func(&ty, params, results) => {
                return Err(RuleError::abi(format!("export `{name}` has the wrong type: {}", describe(&ty))));
            }
            Some(_) => {}
        }
    }
    if let Some(ty) = module.get_export(exports::EVALUATE_BATCH)
        && !is_func(&ty, &[I32], &[I32])
    {
        let name = exports::EVALUATE_BATCH;
        return Err(RuleError::abi(format!("export `{name}` has the wrong type: {}", describe(&ty))));
    }
    if !matches!(module.get_export(exports::MEMORY), Some(ExternType::Memory(_))) {
        missing.push(format!("`{}` (memory)", exports::MEMORY));
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(RuleError::abi(format!(
        "missing the vigil rule ABI exports {}; is this module built with vigil-sdk's #[rule]?",
        missing.join(", ")
    )))
}

/// A live instance of one rule, owned by one worker.
pub struct RuleInstance {
    store: Store<HostState>,
    memory: Memory,
    manifest: TypedFunc<(), i64>,
    buffer: TypedFunc<i32, i32>,
    configure: TypedFunc<i32, i32>,
    evaluate: TypedFunc<i32, i64>,
    /// Present when the module takes several events a call.
    evaluate_batch: Option<TypedFunc<i32, i32>>,
    /// Whether the module imports the state functions: only then is each
    /// event's entity handed over.
    keeps_state: bool,
    input_ptr: usize,
    input_cap: usize,
    output_ptr: usize,
    fuel: u64,
    deadline_ticks: u64,
    memory_cap: usize,
}

/// `e` as the failure of a call given `given` fuel of a `budget`: out of
/// fuel below the call budget is the event's budget running out
/// ([`RuleError::EventBudget`]), not the rule's own.
fn over_event_budget(e: RuleError, given: u64, budget: u64) -> RuleError {
    match e {
        RuleError::OutOfFuel(_) if given < budget => RuleError::EventBudget,
        e => e,
    }
}

/// [`intern`] for a code still in the guest's bytes: checked as UTF-8 only
/// when it is not in the cache.
fn intern_bytes(cache: &mut Vec<Arc<str>>, code: &[u8]) -> Result<Arc<str>, RuleError> {
    if let Some(c) = cached(cache, code) {
        return Ok(c);
    }
    let code = std::str::from_utf8(code).map_err(|_| RuleError::abi("reason codes are not UTF-8"))?;
    Ok(add(cache, code))
}

/// The cached copy of `code`, adding it while the cache is small (for
/// linked-in rules, which hand over their codes as strings).
#[cfg(feature = "bench-native")]
pub(crate) fn intern(cache: &mut Vec<Arc<str>>, code: &str) -> Arc<str> {
    cached(cache, code.as_bytes()).unwrap_or_else(|| add(cache, code))
}

fn cached(cache: &[Arc<str>], code: &[u8]) -> Option<Arc<str>> {
    cache.iter().find(|c| c.as_bytes() == code).cloned()
}

fn add(cache: &mut Vec<Arc<str>>, code: &str) -> Arc<str> {
    let c: Arc<str> = code.into();
    if cache.len() < 64 {
        cache.push(c.clone());
    }
    c
}

impl std::fmt::Debug for RuleInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleInstance").field("input_cap", &self.input_cap).finish_non_exhaustive()
    }
}

/// A successful call's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResult {
    /// Action code, already validated.
    pub action: vigil_abi::Action,
    /// Score.
    pub score: i32,
    /// Reason codes.
    pub reasons: crate::decide::Reasons,
}

impl RuleInstance {
    /// Readies the store for a call with `fuel` to spend and the backstop
    /// from now.
    fn arm(&mut self, fuel: u64) {
        set_fuel(&mut self.store, fuel);
        self.store.set_epoch_deadline(self.deadline_ticks);
        self.store.data_mut().run.owed = 0;
    }

    fn classify(&self, e: wasmtime::Error) -> RuleError {
        let panic = self.take_panic();
        classify(&self.store, e, panic, self.fuel, self.memory_cap)
    }

    fn take_panic(&self) -> Option<String> {
        let data = self.memory.data(&self.store);
        let head = data.get(self.output_ptr..self.output_ptr + 8)?;
        if head[..4] != PANIC_MAGIC {
            return None;
        }
        let len = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
        let msg = data.get(self.output_ptr + 8..self.output_ptr + 8 + len.min(OUTPUT_CAPACITY - 8))?;
        Some(String::from_utf8_lossy(msg).into_owned())
    }

    fn ensure_input(&mut self, len: usize) -> Result<(), RuleError> {
        if len <= self.input_cap {
            return Ok(());
        }
        let want = len.next_power_of_two();
        let cap = i32::try_from(want).map_err(|_| RuleError::abi("event too large for a rule buffer"))?;
        self.arm(self.fuel);
        let ptr = self.buffer.call(&mut self.store, cap).map_err(|e| self.classify(e))? as u32 as usize;
        if ptr.checked_add(want).is_none_or(|end| end > self.memory.data_size(&self.store)) {
            return Err(RuleError::abi(format!("`{}` returned an out-of-bounds buffer", exports::BUFFER)));
        }
        self.input_ptr = ptr;
        self.input_cap = want;
        Ok(())
    }

    fn write_input(&mut self, bytes: &[u8]) -> Result<(), RuleError> {
        let data = self.memory.data_mut(&mut self.store);
        let dst = data
            .get_mut(self.input_ptr..self.input_ptr + bytes.len())
            .ok_or_else(|| RuleError::abi("input buffer out of bounds"))?;
        dst.copy_from_slice(bytes);
        Ok(())
    }

    fn read_output(&self, len: usize) -> Option<String> {
        let data = self.memory.data(&self.store);
        let bytes = data.get(self.output_ptr..self.output_ptr.checked_add(len.min(OUTPUT_CAPACITY))?)?;
        Some(String::from_utf8_lossy(bytes).into_owned())
    }

    fn configure(&mut self, params: &[u8]) -> Result<(), RuleError> {
        self.ensure_input(params.len())?;
        self.write_input(params)?;
        self.arm(self.fuel);
        let err_len = self.configure.call(&mut self.store, params.len() as i32).map_err(|e| self.classify(e))?;
        if err_len != 0 {
            let msg = self.read_output(err_len as usize).unwrap_or_else(|| "(unreadable message)".into());
            return Err(RuleError::config(format!("the rule refused its parameters: {msg}")));
        }
        Ok(())
    }

    /// Sets the event the next call is for (see [`RuleState::set_event`]).
    pub fn set_event(&mut self, partition: u32, ts_ms: i64, entity: &[u8]) {
        self.store.data_mut().rule_state.set_event(partition, ts_ms, entity);
    }

    /// Where the rule's log lines go from now on.
    pub fn set_log(&mut self, log: Option<RuleLog>) {
        self.store.data_mut().log = log;
    }

    /// Lends a rule's keyed state to the instance for the next calls.
    pub fn lend_state(&mut self, state: RuleState) {
        self.store.data_mut().rule_state = state;
    }

    /// Takes the keyed state back.
    pub fn take_state(&mut self) -> RuleState {
        std::mem::take(&mut self.store.data_mut().rule_state)
    }

    /// Fuel the last call used.
    pub fn last_fuel_used(&self) -> u64 {
        self.fuel.saturating_sub(self.fuel_left())
    }

    /// The fuel budget of one call.
    pub fn budget(&self) -> u64 {
        self.fuel
    }

    /// Fuel the last call left unspent, host work it owes taken off.
    pub fn fuel_left(&self) -> u64 {
        self.store.get_fuel().unwrap_or(0).saturating_sub(self.store.data().run.owed)
    }

    /// The manifest JSON the module exports.
    ///
    /// # Errors
    /// [`RuleError`] when the call fails or the pointer is out of bounds.
    pub fn manifest_json(&mut self) -> Result<String, RuleError> {
        self.arm(self.fuel);
        let raw = self.manifest.call(&mut self.store, ()).map_err(|e| self.classify(e))?;
        let (ptr, len) = vigil_abi::unpack_ptr_len(raw);
        let data = self.memory.data(&self.store);
        let bytes = data
            .get(ptr as usize..(ptr as usize).saturating_add(len as usize))
            .ok_or_else(|| RuleError::abi("manifest pointer out of bounds"))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| RuleError::manifest("manifest is not UTF-8"))
    }

    /// Evaluates one encoded event, showing the rule only the fields in `mask`.
    ///
    /// # Errors
    /// [`RuleError`] on trap, timeout, out-of-memory or an invalid result.
    /// The instance must not be used again after an error.
    pub fn call(
        &mut self,
        event: &[u8],
        projection: &vigil_abi::Projection,
        features: &[f64],
    ) -> Result<CallResult, RuleError> {
        self.call_with(event, projection, features, self.fuel)
    }

    /// [`RuleInstance::call`] with `fuel` to spend, at most the call budget;
    /// out of it below the budget, the call fails with
    /// [`RuleError::EventBudget`].
    ///
    /// # Errors
    /// As [`RuleInstance::call`].
    pub fn call_with(
        &mut self,
        event: &[u8],
        projection: &vigil_abi::Projection,
        features: &[f64],
        fuel: u64,
    ) -> Result<CallResult, RuleError> {
        let fuel = fuel.min(self.fuel);
        let len = event.len() + features.len() * 8;
        self.ensure_input(len)?;
        let data = self.memory.data_mut(&mut self.store);
        let dst = data
            .get_mut(self.input_ptr..self.input_ptr + len)
            .ok_or_else(|| RuleError::abi("input buffer out of bounds"))?;
        projection.apply(event, dst);
        for (chunk, v) in dst[event.len()..].chunks_exact_mut(8).zip(features) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        vigil_abi::event::set_feature_block(dst, event.len() as u32, features.len() as u32);
        self.arm(fuel);
        let raw = match self.evaluate.call(&mut self.store, len as i32) {
            Ok(raw) => raw,
            Err(e) => {
                let e = self.store.data_mut().run.refused.take().unwrap_or_else(|| self.classify(e));
                return Err(over_event_budget(e, fuel, self.fuel));
            }
        };
        let (data, state) = self.memory.data_and_store_mut(&mut self.store);
        read_outcome(data, self.output_ptr, raw, &mut state.run.reason_cache)
    }

    /// Whether the module takes several events a call
    /// ([`exports::EVALUATE_BATCH`]).
    pub fn takes_batches(&self) -> bool {
        self.evaluate_batch.is_some()
    }

    /// Evaluates events `from..` of `batch` in batch calls, as
    /// [`super::Instance::call_batch`] describes.
    ///
    /// # Errors
    /// As [`RuleInstance::call`], for the event after the last result.
    pub fn call_batch(
        &mut self,
        batch: &Batch,
        from: usize,
        projection: &vigil_abi::Projection,
        features: &[usize],
        results: &mut super::Results,
    ) -> Result<(), RuleError> {
        let Some(evaluate) = self.evaluate_batch.clone() else {
            return Err(RuleError::abi(format!("no `{}` export", exports::EVALUATE_BATCH)));
        };
        let mut at = from;
        // With budgets across rules, up to the first event with none left:
        // the caller gives it its failure outcome without a call.
        let metered = !results.remaining.is_empty();
        let end = match metered {
            true => (from..batch.len()).find(|&i| results.budget(i) == 0).unwrap_or(batch.len()),
            false => batch.len(),
        };
        while at < end {
            let count = self.write_batch(batch, at, end, projection, features)?;
            let run = &mut self.store.data_mut().run;
            std::mem::swap(&mut run.calls, &mut results.calls);
            std::mem::swap(&mut run.ends, &mut results.ends);
            std::mem::swap(&mut run.used, &mut results.fuel);
            run.partitions.clear();
            run.partitions.extend_from_slice(&batch.partitions[at..at + count]);
            run.entities.clear();
            run.entity_ends.clear();
            run.times.clear();
            if self.keeps_state {
                run.times.extend_from_slice(&batch.times[at..at + count]);
                // Ends after a leading 0, so event `k`'s key is
                // `entity_ends[k]..entity_ends[k + 1]`.
                run.entity_ends.push(0);
                for i in at..at + count {
                    run.entities.extend_from_slice(batch.entity(i));
                    run.entity_ends.push(run.entities.len());
                }
            }
            run.budgets.clear();
            run.metered = metered;
            if metered {
                run.budgets.extend((at..at + count).map(|i| results.budget(i).min(self.fuel)));
            } else {
                run.budgets.push(self.fuel);
            }
            run.next = 0;
            let first = run.budgets[0];
            self.store.data_mut().rule_state.set_event(batch.partitions[at], batch.times[at], batch.entity(at));
            self.arm(first);
            let returned = evaluate.call(&mut self.store, count as i32);
            let run = &mut self.store.data_mut().run;
            std::mem::swap(&mut run.calls, &mut results.calls);
            std::mem::swap(&mut run.ends, &mut results.ends);
            std::mem::swap(&mut run.used, &mut results.fuel);
            run.partitions.clear();
            let (next, refused) = (run.next, run.refused.take());
            let given = run.budgets.get(next.min(run.budgets.len() - 1)).copied().unwrap_or(self.fuel);
            let failed = match returned {
                Err(e) => over_event_budget(refused.unwrap_or_else(|| self.classify(e)), given, self.fuel),
                Ok(n) if n as u32 as usize != count || next != count => RuleError::abi(format!(
                    "`{}` returned {n} and reported {next} outcomes for {count} events",
                    exports::EVALUATE_BATCH
                )),
                Ok(_) => {
                    at += count;
                    continue;
                }
            };
            // The failure is the event after the last outcome; when the
            // guest failed after reporting them all, the last one's.
            if next == count {
                results.calls.pop();
                results.ends.pop();
                if metered {
                    results.fuel.pop();
                }
            }
            return Err(failed);
        }
        Ok(())
    }

    /// Lays out as many events from `from` of `batch` as fit in one call's
    /// input (at least one) in the input buffer; returns how many.
    fn write_batch(
        &mut self,
        batch: &Batch,
        from: usize,
        end: usize,
        projection: &vigil_abi::Projection,
        features: &[usize],
    ) -> Result<usize, RuleError> {
        let mut layouts = batch.layouts.borrow_mut();
        let layout = layouts.of(batch, projection, features);
        // Each event takes a table entry (8 bytes) and its bytes rounded
        // up to 8, so every event starts 8-aligned.
        let entry = vigil_abi::batch::ENTRY;
        let (mut count, mut total) = (0, 0);
        for i in from..end {
            let size = entry + layout.starts[i + 1] - layout.starts[i];
            if count > 0 && total + size > BATCH_INPUT {
                break;
            }
            count += 1;
            total += size;
        }
        let table = count * entry;
        self.ensure_input(total)?;
        let data = self.memory.data_mut(&mut self.store);
        let buf = data
            .get_mut(self.input_ptr..self.input_ptr + self.input_cap)
            .ok_or_else(|| RuleError::abi("input buffer out of bounds"))?;
        let (first, last) = (layout.starts[from], layout.starts[from + count]);
        buf[table..table + last - first].copy_from_slice(&layout.bytes[first..last]);
        for k in 0..count {
            let at = table + layout.starts[from + k] - first;
            vigil_abi::batch::write_entry(buf, k, at as u32, layout.lens[from + k]);
        }
        Ok(count)
    }
}

/// A batch's events as the rules of each shape (the fields they are shown
/// and the features they read) see them, laid out once per batch for all
/// rules of that shape: the instances of one module, and modules declaring
/// the same fields and features, then cost a copy each rather than a
/// projection of every event.
#[derive(Debug, Default)]
pub(super) struct Layouts {
    shapes: Vec<Layout>,
    /// Shapes laid out for the current batch: `shapes[..live]`.
    live: usize,
}

/// One shape's layout of a batch.
#[derive(Debug, Default)]
struct Layout {
    mask: vigil_abi::FieldMask,
    features: Vec<usize>,
    /// Each event projected (compacted: only the strings shown) with its
    /// feature values after it, each starting 8-aligned.
    bytes: Vec<u8>,
    /// Where each event starts in `bytes`, and one more for the end.
    starts: Vec<usize>,
    /// Each event's length, without the padding.
    lens: Vec<u32>,
}

/// Shapes kept per batch; past them, the last is laid out again for each
/// new shape. Each holds a copy of the batch (about 250 KB for 1,024 events).
const MOST_SHAPES: usize = 16;

impl Layouts {
    /// Forgets the layouts (the batch changed), keeping their buffers.
    pub(super) fn clear(&mut self) {
        self.live = 0;
    }

    /// `batch` as rules of `projection` and `features` see it.
    fn of(&mut self, batch: &Batch, projection: &vigil_abi::Projection, features: &[usize]) -> &Layout {
        let mask = projection.mask();
        let live = &self.shapes[..self.live];
        if let Some(i) = live.iter().position(|l| l.mask == mask && l.features == features) {
            return &self.shapes[i];
        }
        if self.live < MOST_SHAPES {
            self.live += 1;
        }
        if self.shapes.len() < self.live {
            self.shapes.push(Layout::default());
        }
        let layout = &mut self.shapes[self.live - 1];
        layout.lay_out(batch, projection, features);
        layout
    }
}

impl Layout {
    fn lay_out(&mut self, batch: &Batch, projection: &vigil_abi::Projection, features: &[usize]) {
        self.starts.clear();
        self.lens.clear();
        self.bytes.clear();
        for (i, event) in batch.encoded[..batch.len()].iter().enumerate() {
            let at = self.bytes.len();
            self.starts.push(at);
            projection.append(event, &mut self.bytes);
            let shown = self.bytes.len() - at;
            for &f in features {
                self.bytes.extend_from_slice(&batch.value(i, f).to_le_bytes());
            }
            vigil_abi::event::set_feature_block(&mut self.bytes[at..], shown as u32, features.len() as u32);
            let len = self.bytes.len() - at;
            self.lens.push(len as u32);
            self.bytes.resize(at + len.next_multiple_of(8), 0);
        }
        self.starts.push(self.bytes.len());
        // Named for its shape only once laid out whole.
        self.mask = projection.mask();
        self.features.clear();
        self.features.extend_from_slice(features);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> Sandbox {
        let limits = Limits::new(1_000_000, 2 << 20);
        Sandbox::new(&limits, None).expect("sandbox")
    }

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("valid wat")
    }

    /// A batch's events laid out per shape: each shape shows only its
    /// fields and features, a shape met again is not laid out again, and
    /// past [`MOST_SHAPES`] a new shape still reads right.
    #[test]
    fn layouts_are_kept_per_shape_and_show_each_only_its_own() {
        use vigil_abi::event::{EventView, Field, FieldMask};
        let mut batch = Batch::default();
        for i in 0..3 {
            let mut p = super::super::check::sample_payment();
            p.device = Some(format!("device-{i}").into());
            p.encode(batch.buffer()).expect("encodes");
            batch.push(0, i, &[i as f64, 10.0 + i as f64, 20.0]);
        }
        let card = vigil_abi::Projection::new(FieldMask::NONE.with(Field::Card));
        let device = vigil_abi::Projection::new(FieldMask::NONE.with(Field::Device).with(Field::Amount));
        let mut layouts = batch.layouts.borrow_mut();
        let mut shapes: Vec<(&vigil_abi::Projection, Vec<usize>)> =
            vec![(&card, vec![1]), (&device, vec![0, 2]), (&card, vec![1]), (&device, vec![0, 2])];
        shapes.extend((0..MOST_SHAPES).map(|n| (&card, vec![2; n + 2])));
        for (round, (projection, features)) in shapes.into_iter().enumerate() {
            let layout = layouts.of(&batch, projection, &features);
            for i in 0..3 {
                assert_eq!(layout.starts[i] % 8, 0);
                let view = EventView::new(&layout.bytes[layout.starts[i]..][..layout.lens[i] as usize]);
                let shows_device = projection.mask().contains(Field::Device);
                let device = format!("device-{i}");
                assert_eq!(view.device(), shows_device.then_some(device.as_str()), "round {round}");
                assert_eq!(view.card().is_some(), !shows_device, "round {round}");
                assert_eq!(view.amount(), if shows_device { 4_250 } else { 0 });
                let values = batch.values(i);
                assert!(view.features().eq(features.iter().map(|&f| values[f])), "round {round}");
            }
            // The first two shapes are laid out once each; the others
            // fill the rest, then take turns in the last place.
            let laid_out = match round {
                0 => 1,
                1..=3 => 2,
                r => (r - 1).min(MOST_SHAPES),
            };
            assert_eq!(layouts.live, laid_out, "round {round}");
        }
        // An event added after is in the next layout.
        drop(layouts);
        super::super::check::sample_payment().encode(batch.buffer()).expect("encodes");
        batch.push(0, 3, &[3.0, 13.0, 20.0]);
        let mut layouts = batch.layouts.borrow_mut();
        let layout = layouts.of(&batch, &card, &[1]);
        assert_eq!((layout.starts.len(), layout.lens.len()), (5, 4));
        let view = EventView::new(&layout.bytes[layout.starts[3]..][..layout.lens[3] as usize]);
        assert!(view.features().eq([13.0]));
    }

    #[test]
    fn random_bytes_are_not_a_module() {
        let e = sandbox().prepare(&[0x13, 0x37, 0, 1, 2, 3], "h").err().expect("rejected");
        assert!(e.to_string().contains("not a WebAssembly module"), "{e}");
        let mut fake = b"\0asm".to_vec();
        fake.extend([0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
        let e = sandbox().prepare(&fake, "h").err().expect("rejected");
        assert!(matches!(e, RuleError::Compile { .. }), "{e}");
        // wasmtime's own words are kept as the cause, not in the message.
        assert_eq!(e.to_string(), "does not compile");
        let said = crate::error::chain(&e).to_string();
        assert!(said.starts_with("does not compile: ") && said.len() > "does not compile: ".len(), "{said}");
    }

    #[test]
    fn wasi_imports_are_refused_by_name() {
        let m = wat(
            r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))) (memory (export "memory") 1))"#,
        );
        let e = sandbox().prepare(&m, "h").err().expect("rejected").to_string();
        assert!(e.contains("wasi_snapshot_preview1::fd_write"), "{e}");
        assert!(e.contains("WASI is not available"), "{e}");
    }

    #[test]
    fn a_module_without_the_abi_lists_what_is_missing() {
        let m = wat(
            r#"(module (memory (export "memory") 1) (func (export "vigil_evaluate") (param i32) (result i64) i64.const 0))"#,
        );
        let e = sandbox().prepare(&m, "h").err().expect("rejected").to_string();
        assert!(e.contains("vigil_abi_version") && e.contains("vigil_manifest"), "{e}");
        assert!(!e.contains("`vigil_evaluate`"), "{e}");
    }

    #[test]
    fn wrong_export_types_are_named() {
        let m = wat(r#"(module (memory (export "memory") 1)
            (func (export "vigil_abi_version") (result i64) i64.const 1)
            (func (export "vigil_manifest") (result i64) i64.const 0)
            (func (export "vigil_buffer") (param i32) (result i32) i32.const 0)
            (func (export "vigil_output") (result i32) i32.const 0)
            (func (export "vigil_configure") (param i32) (result i32) i32.const 0)
            (func (export "vigil_evaluate") (param i32) (result i64) i64.const 0))"#);
        let e = sandbox().prepare(&m, "h").err().expect("rejected").to_string();
        assert!(e.contains("vigil_abi_version") && e.contains("wrong type"), "{e}");
    }

    /// A module whose batch export runs `body` with the event count in
    /// local 0 and a counter in local 1; `report` reports event `i` with
    /// score `i` and action review.
    fn batch_module(body: &str, with_batch: bool) -> Vec<u8> {
        module_with("i64.const 2", body, with_batch)
    }

    /// As [`batch_module`], with `evaluate` as `vigil_evaluate`'s body.
    fn module_with(evaluate: &str, body: &str, with_batch: bool) -> Vec<u8> {
        let batch = if with_batch {
            format!(r#"(func (export "vigil_evaluate_batch") (param i32) (result i32) (local i32) {body})"#)
        } else {
            String::new()
        };
        wat(&format!(
            r#"(module
            (import "vigil" "outcome" (func $outcome (param i32 i64)))
            (import "vigil" "state_put" (func $put (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 2)
            (func $report (param $i i32)
                (call $outcome (local.get $i)
                    (i64.or (i64.shl (i64.extend_i32_u (local.get $i)) (i64.const 32)) (i64.const 1))))
            (func (export "vigil_abi_version") (result i32) i32.const 1)
            (func (export "vigil_manifest") (result i64) i64.const 0)
            (func (export "vigil_buffer") (param i32) (result i32) i32.const 65536)
            (func (export "vigil_output") (result i32) i32.const 8192)
            (func (export "vigil_configure") (param i32) (result i32) i32.const 0)
            (func (export "vigil_evaluate") (param i32) (result i64) {evaluate})
            {batch})"#
        ))
    }

    const REPORT_ALL: &str = r#"(block $done (loop $next
        (br_if $done (i32.ge_u (local.get 1) (local.get 0)))
        (call $report (local.get 1))
        (local.set 1 (i32.add (local.get 1) (i32.const 1)))
        (br $next)))
        (local.get 0)"#;

    fn run_batch(module: &[u8], events: usize) -> (Result<(), RuleError>, super::super::Results) {
        let (r, results, _) = run_batch_with_state(module, events);
        (r, results)
    }

    fn run_batch_with_state(module: &[u8], events: usize) -> (Result<(), RuleError>, super::super::Results, RuleState) {
        let sandbox = sandbox();
        let pre = sandbox.prepare(module, "h").expect("valid module");
        let inst = sandbox.instantiate(&pre, Arc::from(Vec::new()), &[]).expect("instance");
        let mut batch = Batch::default();
        for p in 0..events {
            crate::rules::check::sample_payment().encode(batch.buffer()).expect("encode");
            batch.set_entity(crate::event::Space::Party, &format!("acct-{p}"));
            batch.push(p as u32, 0, &[]);
        }
        let mut results = super::super::Results::new(quanta::Clock::new());
        let all = vigil_abi::Projection::new(vigil_abi::FieldMask::ALL);
        let mut inst = super::super::Instance::Wasm(inst);
        let r = inst.call_batch(&batch, 0, &all, &[], &mut results);
        (r, results, inst.take_state())
    }

    #[test]
    fn state_written_in_a_batch_call_is_the_writing_events_own() {
        // Event i (from partition i, of account acct-i) stores key [i].
        let body = r#"(block $done (loop $next
            (br_if $done (i32.ge_u (local.get 1) (local.get 0)))
            (i32.store8 (i32.const 100) (local.get 1))
            (drop (call $put (i32.const 100) (i32.const 1) (i32.const 100) (i32.const 1)))
            (call $report (local.get 1))
            (local.set 1 (i32.add (local.get 1) (i32.const 1)))
            (br $next)))
            (local.get 0)"#;
        let (r, _, mut state) = run_batch_with_state(&batch_module(body, true), 4);
        r.expect("batch");
        let mut written = state.take_dirty();
        written.sort();
        let partitions: Vec<(Vec<u8>, u32)> = written.into_iter().map(|(k, p, _)| (k, p)).collect();
        let want: Vec<(Vec<u8>, u32)> = (0..4u8)
            .map(|i| {
                let mut k = Vec::new();
                super::super::state::entity_key(crate::event::Space::Party, &format!("acct-{i}"), &mut k);
                k.push(i);
                (k, u32::from(i))
            })
            .collect();
        assert_eq!(partitions, want, "each event's key under its own account, from its own partition");
    }

    /// An instance of `module`, the sample event and a projection showing
    /// all of it, for single calls.
    fn single_calls(module: &[u8]) -> (RuleInstance, Vec<u8>, vigil_abi::Projection) {
        let sandbox = sandbox();
        let pre = sandbox.prepare(module, "h").expect("valid module");
        let inst = sandbox.instantiate(&pre, Arc::from(Vec::new()), &[]).expect("instance");
        let mut event = Vec::new();
        crate::rules::check::sample_payment().encode(&mut event).expect("encode");
        (inst, event, vigil_abi::Projection::new(vigil_abi::FieldMask::ALL))
    }

    /// The outcome of one call to a module whose every call reviews with
    /// `reasons` (wat string escapes) as its reason codes.
    fn reasons_of(reasons: &str, len: usize) -> Result<CallResult, RuleError> {
        let packed = vigil_abi::Outcome { action: 1, reasons_len: len as u16, score: 5 }.pack();
        let m = wat(&format!(
            r#"(module (memory (export "memory") 1)
            (data (i32.const 8192) "{reasons}")
            (func (export "vigil_abi_version") (result i32) i32.const 1)
            (func (export "vigil_manifest") (result i64) i64.const 0)
            (func (export "vigil_buffer") (param i32) (result i32) i32.const 1024)
            (func (export "vigil_output") (result i32) i32.const 8192)
            (func (export "vigil_configure") (param i32) (result i32) i32.const 0)
            (func (export "vigil_evaluate") (param i32) (result i64) i64.const {packed}))"#
        ));
        let (mut inst, event, all) = single_calls(&m);
        let first = inst.call(&event, &all, &[]);
        // The second call finds the codes in the cache.
        let second = inst.call(&event, &all, &[]);
        let text = |r: &Result<CallResult, RuleError>| r.as_ref().map_err(ToString::to_string).cloned();
        assert_eq!(text(&first), text(&second), "the same codes from the cache");
        second
    }

    #[test]
    fn reason_codes_are_split_on_newlines_and_shared() {
        let r = reasons_of(r"velocity\nnew_device\n\nvelocity\n", 30).expect("call");
        let codes: Vec<&str> = r.reasons.iter().map(|c| &**c).collect();
        assert_eq!(codes, ["velocity", "new_device", "velocity"], "empty codes are skipped");
        assert!(Arc::ptr_eq(&r.reasons[0], &r.reasons[2]), "one copy of a code");
        let r = reasons_of(r"velocity\nnew_device", 8).expect("call");
        assert_eq!(r.reasons.len(), 1, "only the bytes the outcome counts");
    }

    #[test]
    fn reason_codes_that_are_not_utf8_are_refused() {
        for (codes, len) in [(r"ok\n\ff\fe", 5), (r"\c3", 1), (r"caf\c3\a9\nok\n\c3", 10)] {
            let e = reasons_of(codes, len).expect_err("refused").to_string();
            assert!(e.contains("reason codes are not UTF-8"), "{codes}: {e}");
        }
        let r = reasons_of(r"caf\c3\a9", 5).expect("UTF-8 beyond ASCII is fine");
        assert_eq!(&*r.reasons[0], "café");
    }

    #[test]
    fn a_batch_call_reports_every_event_in_calls_of_bounded_input() {
        let (r, results) = run_batch(&batch_module(REPORT_ALL, true), 200);
        r.expect("batch");
        assert_eq!(results.calls.len(), 200);
        assert_eq!(results.ends.len(), 200);
        assert!(results.calls.iter().all(|c| c.action == vigil_abi::Action::Review));
        // Scores are indices within each call: 0, 1, 2, … restarting at 0.
        let scores: Vec<i32> = results.calls.iter().map(|c| c.score).collect();
        assert!(scores.windows(2).all(|w| w[1] == w[0] + 1 || w[1] == 0), "{scores:?}");
        let calls = scores.iter().filter(|&&s| s == 0).count();
        assert!(calls >= 2, "200 events exceed one call's input: {calls} call(s)");
    }

    #[test]
    fn a_module_without_the_batch_export_is_called_per_event() {
        let (r, results) = run_batch(&batch_module("", false), 3);
        r.expect("per-event calls");
        assert_eq!(results.calls.len(), 3);
        assert!(results.calls.iter().all(|c| c.action == vigil_abi::Action::Block), "vigil_evaluate's outcome");
    }

    #[test]
    fn an_outcome_out_of_order_is_refused() {
        let (r, results) = run_batch(&batch_module("(call $report (i32.const 1)) (local.get 0)", true), 3);
        let e = r.expect_err("refused").to_string();
        assert!(e.contains("outcome of event 1 while event 0 was next"), "{e}");
        assert!(results.calls.is_empty());
    }

    #[test]
    fn an_outcome_outside_a_batch_call_is_refused() {
        let m = module_with("(call $report (i32.const 0)) i64.const 0", REPORT_ALL, true);
        let (mut inst, event, all) = single_calls(&m);
        let e = inst.call(&event, &all, &[]).expect_err("refused").to_string();
        assert!(e.contains("reported an outcome (event 0) outside `vigil_evaluate_batch`"), "{e}");
    }

    #[test]
    fn a_batch_call_that_skips_events_is_refused() {
        let (r, results) = run_batch(&batch_module("(call $report (i32.const 0)) (local.get 0)", true), 3);
        let e = r.expect_err("refused").to_string();
        assert!(e.contains("returned 3 and reported 1 outcomes for 3 events"), "{e}");
        assert_eq!(results.calls.len(), 1);
    }

    #[test]
    fn a_trap_mid_batch_keeps_the_outcomes_before_it() {
        let body = "(call $report (i32.const 0)) (call $report (i32.const 1)) unreachable";
        let (r, results) = run_batch(&batch_module(body, true), 5);
        assert!(matches!(r, Err(RuleError::Trap { .. })), "{r:?}");
        assert_eq!(results.calls.len(), 2, "events 0 and 1 were decided");
    }

    #[test]
    fn a_failure_after_the_last_outcome_is_the_last_events() {
        let body = format!("{REPORT_ALL} drop unreachable");
        let (r, results) = run_batch(&batch_module(&body, true), 3);
        assert!(matches!(r, Err(RuleError::Trap { .. })), "{r:?}");
        assert_eq!(results.calls.len(), 2, "the error stands for event 2, within the batch");
        let body = format!("{REPORT_ALL} drop (i32.const 7)");
        let (r, results) = run_batch(&batch_module(&body, true), 3);
        let e = r.expect_err("refused").to_string();
        assert!(e.contains("returned 7 and reported 3 outcomes for 3 events"), "{e}");
        assert_eq!(results.calls.len(), 2);
    }

    /// Reports each event after spinning `n` rounds (about six units of
    /// fuel each) for it, `last` rounds for the last event.
    fn spinning(n: u32, last: u32) -> Vec<u8> {
        batch_module(
            &format!(
                r#"(block $done (loop $next
                (br_if $done (i32.ge_u (local.get 1) (local.get 0)))
                (call $spin (select (i32.const {last}) (i32.const {n})
                    (i32.eq (local.get 1) (i32.sub (local.get 0) (i32.const 1)))))
                (call $report (local.get 1))
                (local.set 1 (i32.add (local.get 1) (i32.const 1)))
                (br $next)))
                (local.get 0))
            (func $spin (param $n i32)
                (loop $l (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br_if $l (local.get $n)))"#
            ),
            true,
        )
    }

    #[test]
    fn each_event_of_a_batch_call_gets_the_whole_cpu_budget() {
        // ~0.6 of the 1M budget per event, 3M for the five: passes only if
        // the budget is per event.
        let (r, results) = run_batch(&spinning(100_000, 100_000), 5);
        r.expect("every event within its budget");
        assert_eq!(results.calls.len(), 5);
        // The last event alone over budget fails alone.
        let (r, results) = run_batch(&spinning(100_000, 400_000), 5);
        assert!(matches!(r, Err(RuleError::OutOfFuel(_))), "{r:?}");
        assert_eq!(results.calls.len(), 4);
    }

    /// A module whose `vigil_evaluate` runs `body` (with the input length
    /// in local 0 and two i32 scratch locals) and then allows.
    fn evaluating(body: &str, extra: &str) -> Vec<u8> {
        wat(&format!(
            r#"(module
            (import "vigil" "state_get" (func $get (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 2)
            {extra}
            (func (export "vigil_abi_version") (result i32) i32.const 1)
            (func (export "vigil_manifest") (result i64) i64.const 0)
            (func (export "vigil_buffer") (param i32) (result i32) i32.const 65536)
            (func (export "vigil_output") (result i32) i32.const 8192)
            (func (export "vigil_configure") (param i32) (result i32) i32.const 0)
            (func (export "vigil_evaluate") (param i32) (result i64) (local i32 i32) {body} i64.const 0))"#
        ))
    }

    #[test]
    fn host_function_work_is_charged_to_the_call() {
        // A thousand look-ups of a 60 KB key: cheap in guest instructions,
        // 60 MB of hashing in the host.
        let body = r#"(block $done (loop $next
            (br_if $done (i32.ge_u (local.get 1) (i32.const 1000)))
            (drop (call $get (i32.const 0) (i32.const 60000) (i32.const 0) (i32.const 0)))
            (local.set 1 (i32.add (local.get 1) (i32.const 1)))
            (br $next)))"#;
        let (mut inst, event, all) = single_calls(&evaluating(body, ""));
        let e = inst.call(&event, &all, &[]).expect_err("over budget");
        assert!(matches!(e, RuleError::OutOfFuel(_)), "{e}");
    }

    #[test]
    fn a_call_that_fuel_does_not_end_hits_the_wall_clock_backstop() {
        let limits = Limits { fuel_per_call: 1 << 62, memory_cap: 2 << 20, call_timeout: Duration::from_millis(100) };
        let sandbox = Sandbox::new(&limits, None).expect("sandbox");
        let pre = sandbox.prepare(&evaluating("(loop $forever (br $forever))", ""), "h").expect("valid");
        let mut inst = sandbox.instantiate(&pre, Arc::from(Vec::new()), &[]).expect("instance");
        let mut event = Vec::new();
        crate::rules::check::sample_payment().encode(&mut event).expect("encode");
        let started = Instant::now();
        let e = inst.call(&event, &vigil_abi::Projection::new(vigil_abi::FieldMask::ALL), &[]).expect_err("stopped");
        assert!(matches!(e, RuleError::Timeout), "{e}");
        assert!(started.elapsed() < Duration::from_secs(30), "ended by the backstop, not by fuel");
    }

    #[test]
    fn features_a_rule_does_not_need_are_refused_at_load() {
        let two = evaluating("", "(memory 1)");
        let e = sandbox().prepare(&two, "h").err().expect("two memories").to_string();
        assert!(e.contains("multi-memory is off"), "{e}");
        let m64 = wat(r#"(module (memory (export "memory") i64 1))"#);
        let e = sandbox().prepare(&m64, "h").err().expect("memory64").to_string();
        assert!(e.contains("memory64"), "{e}");
        let relaxed = evaluating("(drop (i32x4.relaxed_trunc_f32x4_s (v128.const i32x4 0 0 0 0)))", "");
        let e = sandbox().prepare(&relaxed, "h").err().expect("relaxed SIMD").to_string();
        assert!(e.contains("relaxed SIMD"), "{e}");
    }

    #[test]
    fn the_memory_cap_covers_tables_too() {
        // 2 MiB cap; a table of a million slots is 8 MB.
        let big_table = evaluating("", "(table 1000000 funcref)");
        let sandbox = sandbox();
        let pre = sandbox.prepare(&big_table, "h").expect("compiles");
        let e = sandbox.instantiate(&pre, Arc::from(Vec::new()), &[]).expect_err("over the cap");
        assert!(matches!(e, RuleError::MemoryExceeded(_)), "{e}");
    }

    #[test]
    fn nans_come_out_canonical_on_every_machine() {
        // sqrt of a negative number computed at run time, stored at 0.
        let body = "(f64.store (i32.const 0) (f64.sqrt (f64.neg (f64.convert_i32_u (local.get 0)))))";
        let (mut inst, event, all) = single_calls(&evaluating(body, ""));
        inst.call(&event, &all, &[]).expect("call");
        let bits = u64::from_le_bytes(inst.memory.data(&inst.store)[..8].try_into().expect("8 bytes"));
        assert_eq!(bits, 0x7ff8_0000_0000_0000, "{bits:#x}");
    }

    #[test]
    fn an_events_budget_across_rules_bounds_its_calls() {
        let sandbox = sandbox();
        let pre = sandbox.prepare(&spinning(100_000, 100_000), "h").expect("valid module");
        let inst = sandbox.instantiate(&pre, Arc::from(Vec::new()), &[]).expect("instance");
        let mut inst = super::super::Instance::Wasm(inst);
        let mut batch = Batch::default();
        for p in 0..4 {
            crate::rules::check::sample_payment().encode(batch.buffer()).expect("encode");
            batch.push(p, 0, &[]);
        }
        let mut results = super::super::Results::new(quanta::Clock::new());
        // Each event spins ~600k fuel: enough left for events 0 and 1,
        // not for event 2; event 3 has none, and is not called.
        results.remaining = vec![900_000, 2_000_000, 300_000, 0];
        let all = vigil_abi::Projection::new(vigil_abi::FieldMask::ALL);
        let e = inst.call_batch(&batch, 0, &all, &[], &mut results).expect_err("event 2 runs out");
        assert!(matches!(e, RuleError::EventBudget), "{e}");
        assert_eq!(results.calls.len(), 2);
        assert!(results.fuel.iter().all(|&f| (500_000..700_000).contains(&f)), "{:?}", results.fuel);
        results.clear();
        let fresh = sandbox.instantiate(&pre, Arc::from(Vec::new()), &[]).expect("instance");
        let mut inst = super::super::Instance::Wasm(fresh);
        inst.call_batch(&batch, 3, &all, &[], &mut results).expect("nothing to call");
        assert!(results.calls.is_empty(), "an event with no budget left is not called");
    }

    #[test]
    fn the_compiler_child_gets_none_of_this_processs_environment() {
        assert!(std::env::var_os("HOME").is_some(), "the test needs HOME set");
        let dir = tempfile::tempdir().expect("tmp");
        let script = dir.path().join("fake-compiler");
        std::fs::write(&script, "#!/bin/sh\nenv\n").expect("script");
        #[cfg(unix)]
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let out = compile_in_child(&script, b"\0asm").expect("ran");
        let env = String::from_utf8_lossy(&out);
        assert!(!env.contains("HOME=") && !env.contains("VIGIL"), "{env}");
    }

    #[test]
    fn a_cached_artefact_not_tagged_with_the_key_is_compiled_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let cache = dir.path().join("cache");
        let key = [7; 32];
        let module = evaluating("", "");
        let limits = Limits::new(1_000_000, 2 << 20);
        let sandbox = Sandbox::with_cache(&limits, Some((cache.clone(), key))).expect("sandbox");
        sandbox.prepare(&module, "h").expect("compiled and cached");
        let entry = std::fs::read_dir(&cache).expect("cache").next().expect("an entry").expect("entry").path();
        let good = std::fs::read(&entry).expect("read");
        check_cached(&entry, &good, &key).expect("tagged with the key");
        assert!(check_cached(&entry, &good, &[8; 32]).is_err(), "another key's tag does not pass");
        // A byte of the machine code changed: not loaded, compiled again.
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        std::fs::write(&entry, &bad).expect("tamper");
        assert!(check_cached(&entry, &bad, &key).expect_err("tampered").to_string().contains("tag"));
        sandbox.prepare(&module, "h").expect("compiled again");
        assert_eq!(std::fs::read(&entry).expect("read"), good, "the entry is written afresh");
    }
}
