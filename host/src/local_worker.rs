//! A local inference worker run inside the gateway process (`[local_worker]`).
//!
//! The migration's destination is a model on the team's own hardware. For a first run (and
//! for the embedded default) the gateway starts one itself: the model is resolved by
//! `switchyard_worker::hub` (a known name such as `smollm2` is fetched into the model cache
//! on first use, with progress in the log), loaded, and served on `listen` by the same
//! engine and HTTP server as the `switchyard-worker` binary. The gateway then reaches it
//! like any other backend, over HTTP, with no special casing, so moving the worker to its
//! own process or GPU host later is a config change.
//!
//! The worker runs on its own thread with its own Tokio runtime: its scheduler and its
//! CPU-heavy forward passes never share the gateway's request-serving threads. If something
//! already listens on `listen` (a worker started by hand), that one is used and nothing is
//! started. A model that fails to load is logged and the gateway keeps serving (requests to
//! the local backend then fail over or get the backend's error).

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;

use crate::config::Problem;

/// `[local_worker]`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalWorkerSection {
    /// A GGUF path, or a known model name (`smollm2`) fetched on first use.
    pub model: Option<String>,
    /// Where the worker listens. Default `127.0.0.1:9001`.
    pub listen: Option<String>,
    /// The name the worker reports. Default: the known model's name or the file's stem.
    pub served_model_name: Option<String>,
    /// Context size in tokens. Default: the model's trained context, at most 8192.
    pub ctx_size: Option<usize>,
    /// Sequences decoded together. Default 8.
    pub max_batch: Option<usize>,
}

/// `[local_worker]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalWorkerSettings {
    pub model: String,
    pub listen: SocketAddr,
    pub served_model_name: Option<String>,
    pub ctx_size: Option<usize>,
    pub max_batch: usize,
}

impl LocalWorkerSettings {
    pub fn from_section(
        s: Option<&LocalWorkerSection>,
        problems: &mut Vec<Problem>,
    ) -> Option<LocalWorkerSettings> {
        let s = s?;
        let model = match s.model.as_deref().map(str::trim) {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => {
                problems.push(Problem::new(
                    "local_worker.model",
                    "is required: a GGUF file or a known model name (smollm2)",
                ));
                return None;
            }
        };
        let listen = match s.listen.as_deref().unwrap_or("127.0.0.1:9001").parse() {
            Ok(a) => a,
            Err(_) => {
                problems.push(Problem::new(
                    "local_worker.listen",
                    "must be an address and port such as \"127.0.0.1:9001\"",
                ));
                return None;
            }
        };
        if s.ctx_size.is_some_and(|n| n < 16) {
            problems.push(Problem::new(
                "local_worker.ctx_size",
                "must be at least 16 tokens",
            ));
        }
        if s.max_batch == Some(0) {
            problems.push(Problem::new("local_worker.max_batch", "must be at least 1"));
        }
        Some(LocalWorkerSettings {
            model,
            listen,
            served_model_name: s.served_model_name.clone(),
            ctx_size: s.ctx_size,
            max_batch: s.max_batch.unwrap_or(8).max(1),
        })
    }
}

/// Starts the worker on its own thread; returns at once (loading and fetching happen there).
/// With `otlp` (the gateway's `[telemetry]` collector and protocol) the worker exports its
/// request spans there too, joined to the gateway's traces.
pub fn start(settings: LocalWorkerSettings, otlp: Option<(String, switchyard_otlp::Protocol)>) {
    let spawned = std::thread::Builder::new()
        .name("local-worker".into())
        .spawn(move || {
            if let Err(e) = run(&settings, otlp) {
                tracing::error!(model = %settings.model, listen = %settings.listen, error = %e, "local worker did not start");
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "local worker thread could not be started");
    }
}

fn run(
    s: &LocalWorkerSettings,
    otlp: Option<(String, switchyard_otlp::Protocol)>,
) -> Result<(), String> {
    use switchyard_worker::launch::{self, Options};
    use switchyard_worker::trace::{Log, Tracer};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("local-worker-io")
        .enable_all()
        .build()
        .map_err(|e| format!("starting its runtime: {e}"))?;
    rt.block_on(async {
        // Bind first: an address in use means a worker is already there, and that one serves.
        let listener = match tokio::net::TcpListener::bind(s.listen).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::info!(listen = %s.listen, "something already listens where the local worker would; using it");
                return Ok(());
            }
            Err(e) => return Err(format!("binding {}: {e}", s.listen)),
        };
        tracing::info!(model = %s.model, listen = %s.listen, "local worker: preparing the model");
        let log: Log = Arc::new(|line: &str| tracing::info!("local worker: {line}"));
        let tracer = match otlp {
            Some((endpoint, protocol)) => Some(Arc::new(Tracer::start(
                &endpoint,
                protocol,
                &s.listen.to_string(),
                log.clone(),
            )?)),
            None => None,
        };
        let opts = Options {
            model: s.model.clone(),
            served_model_name: s.served_model_name.clone(),
            ctx_size: s.ctx_size,
            max_batch: s.max_batch,
            tracer,
        };
        let listen = s.listen;
        launch::run(listener, opts, log, move |_, st| {
            tracing::info!(model = %st.model_name, %listen, context = st.engine.n_ctx, "local worker ready");
        })
        .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> (Option<LocalWorkerSettings>, Vec<Problem>) {
        let s: LocalWorkerSection = toml::from_str(toml_text).unwrap();
        let mut problems = Vec::new();
        (
            LocalWorkerSettings::from_section(Some(&s), &mut problems),
            problems,
        )
    }

    #[test]
    fn defaults_listen_on_the_worker_port() {
        let (s, p) = settings("model = \"smollm2\"");
        assert!(p.is_empty());
        let s = s.unwrap();
        assert_eq!(s.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(s.max_batch, 8);
    }

    #[test]
    fn problems_name_their_keys() {
        let (_, p) = settings("listen = \"nowhere\"");
        assert_eq!(p[0].path, "local_worker.model");
        let (_, p) = settings("model = \"m.gguf\"\nlisten = \"nowhere\"");
        assert_eq!(p[0].path, "local_worker.listen");
        let (_, p) = settings("model = \"m.gguf\"\nctx_size = 4\nmax_batch = 0");
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["local_worker.ctx_size", "local_worker.max_batch"]);
    }
}
