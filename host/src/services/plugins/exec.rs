//! Running one plugin call: a store with limits and a deadline, an instance (fresh, or warm
//! from a bounded pool), the call, and every way it can go wrong turned into a
//! [`CallError`] instead of a crash.
//!
//! By default every plugin is served from a warm pool: an instance serves up to `MAX_USES`
//! calls and is dropped instead of reused after any trap or timeout. A fresh instance per
//! call (pooling allocator, `InstancePre` made once) costs 15–20 µs even for a small Rust
//! component, more than the call itself (8–15 µs warm, release build), and close to a
//! millisecond for Python or JavaScript ones. `[plugins] instances = "per-call"` buys strict
//! isolation (no guest state outlives a request) at that price.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::component::{Component, Instance, InstancePre, ResourceTable};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, adapt, classify, host, types, v2, validate};
use super::engine::PluginEngine;
use super::hostapi::PluginHost;
use crate::config::plugins::PluginOptions;

/// A warm instance serves at most this many calls, so whatever state a guest accumulates
/// (caches, leaks, fragmentation) is bounded.
pub const MAX_USES: u32 = 1000;
/// Idle warm instances kept per plugin.
pub const MAX_IDLE: usize = 16;
/// Deadline of the instantiation that proves a plugin loads: generous, since loading happens
/// off the request path, often while other plugins compile beside it.
const LOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// What a store carries: WASI (empty), limits, and the plugin's host-side state.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    pub host: Arc<PluginHost>,
    /// The request's state for this plugin (`request-get`/`request-set`, WIT `0.2`), set
    /// for the length of one call: instances are shared by requests, the state is not.
    scratch: Option<Scratch>,
}

/// One plugin's values for one request (`host.request-set`): made by the request's plugin
/// pass, dropped with it.
pub type Scratch = Arc<Mutex<std::collections::HashMap<String, Vec<u8>>>>;

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for State {}

impl host::Host for State {
    fn log(&mut self, level: host::Level, message: String) {
        self.host.log(level, &message);
    }
    fn counter_add(&mut self, name: String, delta: u64) {
        self.host.counter_add(&name, delta);
    }
    fn histogram_record(&mut self, name: String, value: f64) {
        self.host.histogram_record(&name, value);
    }
    fn config_get(&mut self, key: String) -> Option<String> {
        self.host.config.get(&key).cloned()
    }
    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.host.kv_get(&key)
    }
    fn kv_set(&mut self, key: String, value: Vec<u8>) {
        self.host.kv_set(key, value);
    }
    fn kv_delete(&mut self, key: String) {
        self.host.kv_delete(&key);
    }
}

impl v2::host::Host for State {
    fn log(&mut self, level: v2::host::Level, message: String) {
        let level = match level {
            v2::host::Level::Debug => host::Level::Debug,
            v2::host::Level::Info => host::Level::Info,
            v2::host::Level::Warn => host::Level::Warn,
            v2::host::Level::Error => host::Level::Error,
        };
        self.host.log(level, &message);
    }
    fn counter_add(&mut self, name: String, delta: u64) {
        self.host.counter_add(&name, delta);
    }
    fn histogram_record(&mut self, name: String, value: f64) {
        self.host.histogram_record(&name, value);
    }
    fn config_get(&mut self, key: String) -> Option<String> {
        self.host.config.get(&key).cloned()
    }
    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.host.kv_get(&key)
    }
    fn kv_set(&mut self, key: String, value: Vec<u8>) {
        self.host.kv_set(key, value);
    }
    fn kv_delete(&mut self, key: String) {
        self.host.kv_delete(&key);
    }
    fn request_get(&mut self, key: String) -> Option<Vec<u8>> {
        let scratch = self.scratch.as_ref()?.lock().ok()?;
        scratch.get(&key).cloned()
    }
    fn request_set(&mut self, key: String, value: Vec<u8>) {
        // Outside a request (the load-time instantiation) there is nothing to keep it for.
        if let Some(mut scratch) = self.scratch.as_ref().and_then(|s| s.lock().ok()) {
            scratch.insert(key, value);
        }
    }
}

/// The stages a component exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stages {
    pub classify: bool,
    pub adapt: bool,
    pub validate: bool,
    /// `chunks` (WIT `0.2`): a hook on each piece of a streamed answer's text.
    pub chunks: bool,
}

impl Stages {
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.classify {
            v.push("classify");
        }
        if self.adapt {
            v.push("adapt");
        }
        if self.validate {
            v.push("validate");
        }
        if self.chunks {
            v.push("chunks");
        }
        v
    }
}

/// Why a plugin call produced no usable answer.
#[derive(Debug, Clone)]
pub struct CallError {
    pub kind: FailureKind,
    pub detail: String,
}

/// The class of a plugin failure (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Ran past `timeout_ms`.
    Timeout,
    /// Tried to grow past `memory_mb`.
    Memory,
    /// Trapped (a Rust panic is a trap: `unreachable`).
    Trap,
    /// Answered something the gateway cannot use (unknown backend, invalid JSON...).
    BadReturn,
    /// Could not be instantiated.
    Instantiate,
}

impl FailureKind {
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Memory => "memory",
            FailureKind::Trap => "trap",
            FailureKind::BadReturn => "bad_return",
            FailureKind::Instantiate => "instantiate",
        }
    }
}

impl CallError {
    pub fn bad_return(detail: impl Into<String>) -> Self {
        CallError {
            kind: FailureKind::BadReturn,
            detail: detail.into(),
        }
    }

    fn from_wasm(e: &wasmtime::Error, during: FailureKind) -> Self {
        let detail = describe(e);
        let kind = match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => FailureKind::Timeout,
            Some(_) => FailureKind::Trap,
            // `trap_on_grow_failure` reports a refused grow as an error, not a `Trap`.
            None if detail.contains("growing memory") || detail.contains("memory") => {
                FailureKind::Memory
            }
            None => during,
        };
        CallError { kind, detail }
    }
}

/// An error and its causes on one line.
pub fn describe(e: &wasmtime::Error) -> String {
    let mut out = String::new();
    for (i, c) in e.chain().enumerate() {
        if i > 0 {
            out.push_str(": ");
        }
        out.push_str(&c.to_string());
    }
    out
}

/// Export lookups for each stage, done once per plugin version: the contract version the
/// component was built against decides which bindings call it.
enum Indices {
    V1 {
        classify: Option<classify::GuestIndices>,
        adapt: Option<adapt::GuestIndices>,
        validate: Option<validate::GuestIndices>,
    },
    V2 {
        classify: Option<v2::classify::GuestIndices>,
        adapt: Option<v2::adapt::GuestIndices>,
        validate: Option<v2::validate::GuestIndices>,
        chunks: Option<v2::chunks::GuestIndices>,
    },
}

/// A live instance's stage functions.
enum Funcs {
    V1 {
        classify: Option<classify::Guest>,
        adapt: Option<adapt::Guest>,
        validate: Option<validate::Guest>,
    },
    V2 {
        classify: Option<v2::classify::Guest>,
        adapt: Option<v2::adapt::Guest>,
        validate: Option<v2::validate::Guest>,
        chunks: Option<v2::chunks::Guest>,
    },
}

/// A live instance with its stage functions resolved.
struct Warm {
    store: Store<State>,
    funcs: Funcs,
    uses: u32,
}

/// `Some(f())` when the component exports `name`.
fn lookup<T>(
    component: &Component,
    name: &str,
    f: impl FnOnce() -> wasmtime::Result<T>,
) -> wasmtime::Result<Option<T>> {
    match component.get_export_index(None, name) {
        Some(_) => f().map(Some),
        None => Ok(None),
    }
}

/// `Some(i.load(..))` for a stage the component exports.
macro_rules! load {
    ($i:expr, $store:expr, $instance:expr) => {
        match $i {
            Some(i) => Some(i.load(&mut *$store, $instance)?),
            None => None,
        }
    };
}

/// One loaded version of one plugin.
pub struct Loaded {
    pub stages: Stages,
    pub size: usize,
    engine: Arc<PluginEngine>,
    pre: InstancePre<State>,
    indices: Indices,
    pub host: Arc<PluginHost>,
    pool: Mutex<Vec<Warm>>,
    pub calls: AtomicU64,
    /// Deadline of one call, in epoch ticks (`timeout_ms`, this plugin's or the default).
    deadline_ticks: u64,
    /// This plugin's `timeout_ms`, `memory_mb`, `on_error` and `validate_streams`.
    pub options: PluginOptions,
}

impl Loaded {
    /// Link `component`, find its stages, and instantiate it once to prove it works.
    pub fn new(
        engine: Arc<PluginEngine>,
        component: &Component,
        size: usize,
        host: Arc<PluginHost>,
        options: PluginOptions,
    ) -> wasmtime::Result<Loaded> {
        let pre = engine.linker.instantiate_pre(component)?;
        let deadline_ticks = engine.ticks(options.timeout);
        let c = component;
        let v2 = [
            v2::CLASSIFY_EXPORT,
            v2::ADAPT_EXPORT,
            v2::VALIDATE_EXPORT,
            v2::CHUNKS_EXPORT,
        ]
        .iter()
        .any(|n| c.get_export_index(None, n).is_some());
        let (indices, stages) = if v2 {
            let classify = lookup(c, v2::CLASSIFY_EXPORT, || {
                v2::classify::GuestIndices::new(&pre)
            })?;
            let adapt = lookup(c, v2::ADAPT_EXPORT, || v2::adapt::GuestIndices::new(&pre))?;
            let validate = lookup(c, v2::VALIDATE_EXPORT, || {
                v2::validate::GuestIndices::new(&pre)
            })?;
            let chunks = lookup(c, v2::CHUNKS_EXPORT, || v2::chunks::GuestIndices::new(&pre))?;
            let stages = Stages {
                classify: classify.is_some(),
                adapt: adapt.is_some(),
                validate: validate.is_some(),
                chunks: chunks.is_some(),
            };
            let indices = Indices::V2 {
                classify,
                adapt,
                validate,
                chunks,
            };
            (indices, stages)
        } else {
            let classify = lookup(c, bindings::CLASSIFY_EXPORT, || {
                classify::GuestIndices::new(&pre)
            })?;
            let adapt = lookup(c, bindings::ADAPT_EXPORT, || adapt::GuestIndices::new(&pre))?;
            let validate = lookup(c, bindings::VALIDATE_EXPORT, || {
                validate::GuestIndices::new(&pre)
            })?;
            let stages = Stages {
                classify: classify.is_some(),
                adapt: adapt.is_some(),
                validate: validate.is_some(),
                chunks: false,
            };
            let indices = Indices::V1 {
                classify,
                adapt,
                validate,
            };
            (indices, stages)
        };
        if stages == Stages::default() {
            return Err(wasmtime::format_err!(
                "the component exports none of the stages (switchyard:plugin/classify, adapt, validate @0.1.0 or @0.2.0, chunks @0.2.0); is it built against wit/plugin.wit or wit/v0.2/plugin.wit?"
            ));
        }
        let loaded = Loaded {
            stages,
            size,
            engine,
            pre,
            indices,
            host,
            pool: Mutex::new(Vec::new()),
            calls: AtomicU64::new(0),
            deadline_ticks,
            options,
        };
        // Instantiate once now: a component that cannot start (missing imports, traps in
        // its start function, wrong export types) fails here, at load, not on a request.
        let warm = loaded
            .instantiate(loaded.engine.ticks(LOAD_DEADLINE))
            .map_err(|e| wasmtime::format_err!("{}", e.detail))?;
        if loaded.warm_pool() {
            loaded.give_back(warm);
        }
        Ok(loaded)
    }

    fn new_store(&self, deadline_ticks: u64) -> Store<State> {
        let mut wasi = WasiCtx::builder();
        // No clock: a policy that depends on wall time is not reproducible, and timing
        // side channels are none of its business.
        wasi.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
        let state = State {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.options.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            host: self.host.clone(),
            scratch: None,
        };
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(deadline_ticks);
        store.epoch_deadline_trap();
        store
    }

    fn instantiate(&self, deadline_ticks: u64) -> Result<Warm, CallError> {
        let mut store = self.new_store(deadline_ticks);
        let instance: Instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| CallError::from_wasm(&e, FailureKind::Instantiate))?;
        let store_ref = &mut store;
        let funcs = (|| -> wasmtime::Result<Funcs> {
            Ok(match &self.indices {
                Indices::V1 {
                    classify,
                    adapt,
                    validate,
                } => Funcs::V1 {
                    classify: load!(classify, store_ref, &instance),
                    adapt: load!(adapt, store_ref, &instance),
                    validate: load!(validate, store_ref, &instance),
                },
                Indices::V2 {
                    classify,
                    adapt,
                    validate,
                    chunks,
                } => Funcs::V2 {
                    classify: load!(classify, store_ref, &instance),
                    adapt: load!(adapt, store_ref, &instance),
                    validate: load!(validate, store_ref, &instance),
                    chunks: load!(chunks, store_ref, &instance),
                },
            })
        })()
        .map_err(|e| CallError::from_wasm(&e, FailureKind::Instantiate))?;
        Ok(Warm {
            store,
            funcs,
            uses: 0,
        })
    }

    /// Whether instances are reused (`[plugins] instances = "pooled"`, the default).
    pub fn warm_pool(&self) -> bool {
        !self.engine.per_call
    }

    fn take(&self) -> Result<Warm, CallError> {
        if self.warm_pool()
            && let Some(w) = self.pool.lock().ok().and_then(|mut p| p.pop())
        {
            return Ok(w);
        }
        self.instantiate(self.deadline_ticks)
    }

    fn give_back(&self, mut w: Warm) {
        w.uses += 1;
        if !self.warm_pool() || w.uses >= MAX_USES {
            return;
        }
        if let Ok(mut p) = self.pool.lock()
            && p.len() < MAX_IDLE
        {
            p.push(w);
        }
    }

    /// Run `f` on an instance under a fresh deadline; a failed call's instance is dropped.
    ///
    /// Most calls take microseconds, and handing the async worker thread's other tasks away
    /// (`block_in_place`) for each would cost more than the call (measured: +60 µs of gateway
    /// CPU a request with the three first-party plugins, and a blocking-pool thread per
    /// hand-off). So a call first runs inline for at most [`INLINE_TICKS`]; one still running
    /// then is cut off and run again from the start off the reactor with the rest of its
    /// deadline. Every call starts inline: the slice is wall-clock time, so on a loaded machine
    /// a fast plugin's call can outlast it when its thread is preempted, and judging the plugin
    /// slow for good after one such call would move all its calls off the reactor (measured:
    /// back to the full hand-off cost at 64 concurrent requests). Running again is sound: a
    /// plugin call is a function of its inputs in a sandbox with no clock and no I/O, and
    /// the cut-off instance is dropped.
    fn call<R>(
        &self,
        scratch: &Scratch,
        f: impl Fn(&mut Warm) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut deadline = self.deadline_ticks;
        if INLINE_TICKS < deadline {
            let mut w = self.take()?;
            w.store.data_mut().scratch = Some(scratch.clone());
            w.store.set_epoch_deadline(INLINE_TICKS);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut w)));
            match &outcome {
                Ok(Err(e)) if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) => {
                    deadline -= INLINE_TICKS;
                }
                _ => return self.settle(w, outcome),
            }
        }
        let mut w = self.take()?;
        w.store.data_mut().scratch = Some(scratch.clone());
        w.store.set_epoch_deadline(deadline);
        let outcome =
            off_reactor(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut w))));
        self.settle(w, outcome)
    }

    /// The result of a call; the instance goes back to the pool only after a clean one.
    fn settle<R>(
        &self,
        mut w: Warm,
        outcome: std::thread::Result<wasmtime::Result<R>>,
    ) -> Result<R, CallError> {
        w.store.data_mut().scratch = None;
        // A host function may panic under a guest's call: the WASI blocking stream calls
        // (a guest writing to stdout/stderr, e.g. a Rust panic message) block on the tokio
        // runtime the request runs in. wasmtime unwinds the guest's frames and resumes the
        // panic here; it fails this call only, like a trap.
        match outcome {
            Ok(Ok(r)) => {
                self.give_back(w);
                Ok(r)
            }
            // Trapped or interrupted: its state is unknown, never reuse it.
            Ok(Err(e)) => Err(CallError::from_wasm(&e, FailureKind::Trap)),
            Err(_) => Err(CallError {
                kind: FailureKind::Trap,
                detail: "the plugin made a blocking WASI call (stdout/stderr or poll), which the sandbox does not offer during a request".into(),
            }),
        }
    }

    pub fn classify(
        &self,
        scratch: &Scratch,
        req: &types::Request,
        who: &types::Caller,
        backends: &[types::BackendStatus],
    ) -> Result<types::Decision, CallError> {
        self.call(scratch, |w| match &w.funcs {
            Funcs::V1 {
                classify: Some(g), ..
            } => g.call_classify(&mut w.store, req, who, backends),
            Funcs::V2 {
                classify: Some(g), ..
            } => g.call_classify(&mut w.store, req, who, backends),
            _ => Err(wasmtime::format_err!("no classify export")),
        })
    }

    pub fn adapt(
        &self,
        scratch: &Scratch,
        req: &types::Request,
        target: &types::Target,
    ) -> Result<Option<types::Request>, CallError> {
        self.call(scratch, |w| match &w.funcs {
            Funcs::V1 { adapt: Some(g), .. } => g.call_adapt(&mut w.store, req, target),
            Funcs::V2 { adapt: Some(g), .. } => g.call_adapt(&mut w.store, req, target),
            _ => Err(wasmtime::format_err!("no adapt export")),
        })
    }

    pub fn validate(
        &self,
        scratch: &Scratch,
        req: &types::Request,
        resp: &types::Response,
    ) -> Result<types::Verdict, CallError> {
        self.call(scratch, |w| match &w.funcs {
            Funcs::V1 {
                validate: Some(g), ..
            } => g.call_validate(&mut w.store, req, resp),
            Funcs::V2 {
                validate: Some(g), ..
            } => g.call_validate(&mut w.store, req, resp),
            _ => Err(wasmtime::format_err!("no validate export")),
        })
    }

    /// Stage `chunks` (WIT `0.2`): the text the client gets for a piece of a streamed answer.
    pub fn on_chunk(
        &self,
        scratch: &Scratch,
        choice: u32,
        text: &str,
        last: bool,
    ) -> Result<String, CallError> {
        self.call(scratch, |w| match &w.funcs {
            Funcs::V2 {
                chunks: Some(g), ..
            } => g.call_on_chunk(&mut w.store, choice, text, last),
            _ => Err(wasmtime::format_err!("no chunks export")),
        })
    }
}

/// Epoch ticks a call may run inline on an async worker thread before it is moved off it
/// (see `Loaded::call`): between one and two ticks, a tenth to a fifth of a 50 ms timeout.
const INLINE_TICKS: u64 = 2;

/// Run a plugin call so that it cannot stall other connections. A call may compute for up
/// to its deadline (`timeout_ms`, up to a minute); on an async worker thread that would hold
/// up every task queued on that thread, unrelated requests and streams included, and a
/// few slow calls would stop the gateway. `block_in_place` hands the worker's other tasks to
/// another thread first; the call itself still runs here, so it borrows the request as it
/// is. Outside a multi-threaded runtime (tests, the compile watcher) it runs inline.
fn off_reactor<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A clock stuck at zero: WASI needs one, plugins get no time from it.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}
