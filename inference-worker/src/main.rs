//! `switchyard-worker`: serves one GGUF model over the OpenAI API (flags fixed by CONTRACT.md).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use switchyard_worker::engine::Engine;
use switchyard_worker::server::{AppState, bind, serve};

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
    /// `cpu`, or `cuda:N` (needs the CUDA build).
    #[arg(long, default_value = "cpu")]
    device: String,
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
    if args.device != "cpu" {
        return Err(if args.device.starts_with("cuda") {
            format!(
                "--device {}: this build has no CUDA backend (use --device cpu)",
                args.device
            )
        } else {
            format!("--device {}: expected `cpu` or `cuda:N`", args.device)
        });
    }
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
    // Bind first: a busy port should fail fast, before loading a large model.
    let listener = rt.block_on(bind(SocketAddr::new(args.host, args.port)))?;
    let spec = args.model.to_string_lossy().into_owned();
    let model_path =
        switchyard_worker::hub::resolve(&spec, &mut switchyard_worker::hub::log_progress(&spec))
            .map_err(|e| e.to_string())?;
    let loaded =
        switchyard_worker::load(&model_path, |line| eprintln!("switchyard-worker: {line}"))?;
    let n_ctx = args
        .ctx_size
        .unwrap_or(loaded.model.cfg.n_ctx_train.min(8192))
        .max(16);
    let known = switchyard_worker::hub::known(&spec).map(|m| m.served_name.to_string());
    let name = args.served_model_name.or(known).unwrap_or_else(|| {
        model_path
            .file_stem()
            .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned())
    });
    eprintln!(
        "switchyard-worker: serving `{name}` on cpu ({} threads), context {n_ctx}, batch {}",
        rayon::current_num_threads(),
        args.max_batch
    );
    let engine = Engine::start(loaded.model, loaded.tokenizer, n_ctx, args.max_batch);
    let state = Arc::new(AppState {
        engine,
        template: loaded.template,
        model_name: name,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    rt.block_on(serve(listener, state))
        .map_err(|e| e.to_string())
}
