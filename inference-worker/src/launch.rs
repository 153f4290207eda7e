//! Starting a worker: listen at once, load the model while already answering health checks
//! and metrics, then serve. Shared by the `switchyard-worker` binary and the gateway's
//! in-process `[local_worker]`, so both report load progress the same way.
//!
//! While the model loads (a first-use download, then reading the weights), `/healthz`
//! answers 503 with the stage and progress, `/metrics` carries
//! `switchyard_worker_model_load_progress{stage}` and `switchyard_worker_model_loaded 0`, and
//! the API answers 503 in OpenAI's error format with `Retry-After`, so a load balancer or the
//! gateway's health check keeps traffic away and an operator sees how far along it is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

use tokio::net::TcpListener;

use crate::backend::BackendOptions;
use crate::engine::{Engine, EngineOptions};
use crate::kv::BLOCK_TOKENS;
use crate::server::{AppState, Shared};
use crate::trace::{Log, Tracer};

/// What to serve and how.
pub struct Options {
    /// A GGUF path, or a known name (`smollm2`) fetched into the model cache on first use.
    pub model: String,
    /// The name `/v1/models` reports (default: the known model's name or the file's stem).
    pub served_model_name: Option<String>,
    /// Context size (default: the model's trained context, at most 8192).
    pub ctx_size: Option<usize>,
    pub max_batch: usize,
    /// Where request spans go, if anywhere.
    pub tracer: Option<Arc<Tracer>>,
}

/// Settings beyond [`Options`]: the device and its KV cache, and the engine's step.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// `--device`, `--kv-cache-mb`, `--kv-cache-type`.
    pub backend: BackendOptions,
    /// Tokens fed per engine step at most, prompt chunks and decode tokens together.
    pub step_tokens: usize,
    /// `--tool-call-format`: the model's tool-call syntax (`None`: from its chat template).
    pub tool_format: Option<crate::tools::Format>,
    /// `--pooling` for embeddings (`None`: the GGUF's `pooling_type`, else mean).
    pub pooling: Option<crate::engine::Pooling>,
}

impl Default for Tuning {
    /// The CPU, a KV cache sized from free memory in f16, 512 tokens per step.
    fn default() -> Tuning {
        Tuning {
            backend: BackendOptions::default(),
            step_tokens: 512,
            tool_format: None,
            pooling: None,
        }
    }
}

const FETCHING: u8 = 0;
const READING: u8 = 1;
const READY: u8 = 2;

/// How far the model load is, readable from any thread.
#[derive(Debug)]
pub struct LoadProgress {
    stage: AtomicU8,
    /// Share of the download done (1 when the file is local or cached), as f64 bits.
    fetched: AtomicU64,
    /// Share of the weights read into memory, as f64 bits.
    read: AtomicU64,
    started: Instant,
    /// Milliseconds the load took, once ready.
    took_ms: AtomicU64,
}

impl Default for LoadProgress {
    fn default() -> LoadProgress {
        LoadProgress {
            stage: AtomicU8::new(FETCHING),
            fetched: AtomicU64::new(0f64.to_bits()),
            read: AtomicU64::new(0f64.to_bits()),
            started: Instant::now(),
            took_ms: AtomicU64::new(0),
        }
    }
}

impl LoadProgress {
    pub fn set_fetched(&self, share: f64) {
        self.fetched
            .store(share.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    /// The download is done (or was not needed); reading the weights begins.
    pub fn start_reading(&self) {
        self.set_fetched(1.0);
        self.stage.store(READING, Ordering::Relaxed);
    }

    pub fn set_read(&self, share: f64) {
        self.read
            .store(share.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    pub fn set_ready(&self) {
        self.set_read(1.0);
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.took_ms.store(ms, Ordering::Relaxed);
        self.stage.store(READY, Ordering::Release);
    }

    /// `fetch`, `read` or `ready`.
    pub fn stage(&self) -> &'static str {
        match self.stage.load(Ordering::Acquire) {
            FETCHING => "fetch",
            READING => "read",
            _ => "ready",
        }
    }

    /// The share of the current stage done.
    pub fn progress(&self) -> f64 {
        match self.stage.load(Ordering::Acquire) {
            FETCHING => f64::from_bits(self.fetched.load(Ordering::Relaxed)),
            _ => f64::from_bits(self.read.load(Ordering::Relaxed)),
        }
    }

    /// The load metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let ready = self.stage.load(Ordering::Acquire) == READY;
        let secs = if ready {
            self.took_ms.load(Ordering::Relaxed) as f64 / 1e3
        } else {
            self.started.elapsed().as_secs_f64()
        };
        let _ = write!(
            out,
            "# HELP switchyard_worker_model_load_progress Share of each model load stage done: fetch (download into the model cache; 1 when local or cached), read (weights into memory).\n\
# TYPE switchyard_worker_model_load_progress gauge\n\
switchyard_worker_model_load_progress{{stage=\"fetch\"}} {}\n\
switchyard_worker_model_load_progress{{stage=\"read\"}} {}\n\
# HELP switchyard_worker_model_loaded 1 once the model is loaded and requests are served.\n\
# TYPE switchyard_worker_model_loaded gauge\n\
switchyard_worker_model_loaded {}\n\
# HELP switchyard_worker_model_load_seconds How long the model load took (while loading: so far).\n\
# TYPE switchyard_worker_model_load_seconds gauge\n\
switchyard_worker_model_load_seconds {secs}\n",
            f64::from_bits(self.fetched.load(Ordering::Relaxed)),
            f64::from_bits(self.read.load(Ordering::Relaxed)),
            u8::from(ready),
        );
    }
}

/// Serve on `listener`: answer at once (loading), load the model on a blocking thread, then
/// serve requests. `on_ready` runs once the model serves (the binary prints its ready line
/// there). Returns only on a load error; the server runs until the runtime stops. Runs on the
/// CPU with the default [`Tuning`]; see [`run_tuned`].
pub async fn run(
    listener: TcpListener,
    opts: Options,
    log: Log,
    on_ready: impl FnOnce(SocketAddr, &AppState),
) -> Result<(), String> {
    run_tuned(listener, opts, Tuning::default(), log, on_ready).await
}

/// [`run`] on the device and with the KV cache and step size of `tuning`.
pub async fn run_tuned(
    listener: TcpListener,
    opts: Options,
    tuning: Tuning,
    log: Log,
    on_ready: impl FnOnce(SocketAddr, &AppState),
) -> Result<(), String> {
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listening socket: {e}"))?;
    let shared = Arc::new(Shared::loading(opts.tracer.clone()));
    let server = tokio::spawn(crate::server::serve(listener, shared.clone()));
    let progress = shared.load.clone();
    let spec = opts.model.clone();
    let log2 = log.clone();
    let backend_opts = tuning.backend;
    let loaded = tokio::task::spawn_blocking(move || load(&spec, &backend_opts, &progress, &log2))
        .await
        .map_err(|e| format!("loading the model: {e}"))??;
    let (model_path, loaded) = loaded;
    let mut n_ctx = opts
        .ctx_size
        .unwrap_or(loaded.backend.config().n_ctx_train.min(8192))
        .max(16);
    // One request must fit in the cache on its own.
    let kv_tokens = loaded.backend.kv_blocks() * BLOCK_TOKENS;
    if n_ctx > kv_tokens {
        log(&format!(
            "the KV cache holds {kv_tokens} tokens: context size {n_ctx} reduced to that (raise --kv-cache-mb for more)"
        ));
        n_ctx = kv_tokens;
    }
    let name = opts
        .served_model_name
        .or_else(|| crate::hub::known(&opts.model).map(|m| m.served_name.to_string()))
        .unwrap_or_else(|| {
            model_path
                .file_stem()
                .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
        });
    let pooling = tuning
        .pooling
        .or_else(|| {
            loaded
                .backend
                .config()
                .pooling
                .and_then(crate::engine::Pooling::from_gguf)
        })
        .unwrap_or_default();
    let engine_opts = EngineOptions {
        step_tokens: tuning.step_tokens,
        pooling,
        ..EngineOptions::new(n_ctx, opts.max_batch)
    };
    let engine = Engine::start(loaded.backend, loaded.tokenizer, engine_opts);
    let mut template = loaded.template;
    if let Some(f) = tuning.tool_format {
        template.set_tool_format(f);
    }
    log(&format!(
        "tool calls: {} format",
        template.tools.format.as_str()
    ));
    let state = Arc::new(AppState {
        engine,
        template,
        model_name: name,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    shared.set_ready(state.clone());
    on_ready(addr, &state);
    server
        .await
        .map_err(|e| format!("the server task ended: {e}"))?
        .map_err(|e| e.to_string())
}

/// Resolve (fetch) and load the model, reporting progress to `p` and `log`.
fn load(
    spec: &str,
    opts: &BackendOptions,
    p: &LoadProgress,
    log: &Log,
) -> Result<(std::path::PathBuf, crate::Loaded), String> {
    let mut print = crate::hub::log_progress(spec, log.as_ref());
    let path = crate::hub::resolve(spec, &mut |pr: crate::hub::Progress| {
        if let Some(total) = pr.total.filter(|t| *t > 0) {
            p.set_fetched(pr.done as f64 / total as f64);
        }
        print(pr);
    })
    .map_err(|e| e.to_string())?;
    p.start_reading();
    let loaded = crate::load_with(
        &path,
        opts,
        |line| log(line),
        |done, total| {
            p.set_read(done as f64 / total.max(1) as f64);
        },
    )?;
    Ok((path, loaded))
}
