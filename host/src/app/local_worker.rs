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

use std::sync::Arc;

use crate::config::local_worker::LocalWorkerSettings;

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
