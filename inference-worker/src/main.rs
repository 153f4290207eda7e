//! `switchyard-worker`: serves one GGUF model over the OpenAI API (flags fixed by CONTRACT.md).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use switchyard_otlp::Protocol;
use switchyard_worker::backend::{self, BackendOptions, Device, KvCacheType};
use switchyard_worker::launch::{self, Options, Tuning};
use switchyard_worker::server::bind;
use switchyard_worker::trace::{Log, Tracer};

#[derive(Parser, Debug)]
#[command(
    name = "switchyard-worker",
    version,
    about = "Serves one GGUF model over the OpenAI API"
)]
struct Args {
    /// The GGUF model file, or a known name (`smollm2`) fetched into the model cache on
    /// first use.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, default_value_t = 9001)]
    port: u16,
    /// `cpu`, or `cuda:N` (needs the build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Memory for the KV cache in MiB (default: a quarter of the memory available at start,
    /// at most 8 GiB). It bounds how many tokens all running requests hold together.
    #[arg(long)]
    kv_cache_mb: Option<usize>,
    /// KV cache precision: `f16` (llama.cpp's default) or `q8_0` (half the memory).
    #[arg(long, default_value = "f16")]
    kv_cache_type: String,
    /// Tokens fed per engine step at most, prompt chunks and decode tokens together.
    #[arg(long, default_value_t = 512)]
    batch_tokens: usize,
    /// Model name reported by /v1/models (default: the file name without `.gguf`).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Context size in tokens (default: the model's trained context, at most 8192).
    #[arg(long)]
    ctx_size: Option<usize>,
    /// Maximum sequences decoded together.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Export a span per request over OTLP to this collector (`http://host:4317` for gRPC,
    /// `http://host:4318` for HTTP); the span joins the caller's `traceparent`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The model's tool-call syntax: `auto` (from the chat template), `llama3`, `mistral` or
    /// `hermes` (Hermes/Qwen `<tool_call>` tags).
    #[arg(long, default_value = "auto")]
    tool_call_format: String,
    /// How `/v1/embeddings` pools token states: `mean`, `last` or `cls` (default: the GGUF's
    /// `pooling_type`, else `mean`).
    #[arg(long)]
    pooling: Option<String>,
    /// `grpc`, or `http` (OTLP/HTTP protobuf).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "grpc")]
    otlp_protocol: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-worker: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let device: Device = args.device.parse().map_err(|e| format!("--device {e}"))?;
    // Before listening or fetching a model: a device this build cannot drive is a usage error.
    backend::available(device).map_err(|e| e.to_string())?;
    let kv_type: KvCacheType = args
        .kv_cache_type
        .parse()
        .map_err(|e| format!("--kv-cache-type {e}"))?;
    if args.kv_cache_mb == Some(0) {
        return Err("--kv-cache-mb must be at least 1".into());
    }
    let tuning = Tuning {
        backend: BackendOptions {
            device,
            kv_bytes: args.kv_cache_mb.map(|mb| mb.saturating_mul(1 << 20)),
            kv_type,
        },
        step_tokens: args.batch_tokens.max(1),
        tool_format: match args.tool_call_format.as_str() {
            "auto" => None,
            f => Some(f.parse().map_err(|e| format!("--tool-call-format {e}"))?),
        },
        pooling: match args.pooling.as_deref() {
            None => None,
            Some(p) => Some(p.parse().map_err(|e| format!("--pooling {e}"))?),
        },
    };
    let protocol = Protocol::parse(&args.otlp_protocol).ok_or_else(|| {
        format!(
            "--otlp-protocol {}: expected `grpc` or `http` (OTLP/HTTP protobuf)",
            args.otlp_protocol
        )
    })?;
    if let Some(t) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global()
            .map_err(|e| format!("--threads: {e}"))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting runtime: {e}"))?;
    let addr = SocketAddr::new(args.host, args.port);
    let log: Log = Arc::new(|line: &str| eprintln!("switchyard-worker: {line}"));
    rt.block_on(async {
        // Bind first: a busy port should fail fast, before loading a large model.
        let listener = bind(addr).await?;
        let tracer = match args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
            Some(endpoint) => {
                let instance = listener.local_addr().unwrap_or(addr);
                let t = Tracer::start(endpoint, protocol, &instance.to_string(), log.clone())
                    .map_err(|e| format!("--otlp-endpoint {e}"))?;
                eprintln!(
                    "switchyard-worker: exporting traces to {endpoint} over OTLP {}",
                    args.otlp_protocol
                );
                Some(Arc::new(t))
            }
            None => None,
        };
        let opts = Options {
            model: args.model.to_string_lossy().into_owned(),
            served_model_name: args.served_model_name,
            ctx_size: args.ctx_size,
            max_batch: args.max_batch,
            tracer: tracer.clone(),
        };
        let max_batch = args.max_batch;
        let served = launch::run_tuned(listener, opts, tuning, log, move |addr, st| {
            eprintln!(
                "switchyard-worker: serving `{}` on {device}, context {}, batch {max_batch}",
                st.model_name, st.engine.n_ctx,
            );
            println!("switchyard-worker listening on http://{addr}");
        });
        let result = tokio::select! {
            r = served => r,
            () = shutdown_signal() => Ok(()),
        };
        // Spans of the last requests would otherwise be lost with the process.
        if let Some(t) = tracer {
            t.flush().await;
        }
        result
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
