//! `switchyard serve`: build the services from the config, start the background work, listen.
//!
//! ```text
//! bind ─► governance (store, keys, limits) ─► tracer ─► shadow engine ─► snapshot (config +
//! upstreams) ─► services ─► reload watcher, health checks ─► plugins ─► local worker ─► ready
//! ─► serve until SIGTERM/SIGINT ─► drain ─► flush the ledger and the traces
//! ```

use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::{Semaphore, watch};

use super::gateway::Gateway;
use super::http::Surface;
use super::{reload, server};
use crate::config::{Runtime, ServerSettings, StateSettings};
use crate::services::capture::CaptureEngine;
use crate::services::governance::Governance;
use crate::services::observe::metrics::Metrics;
use crate::services::observe::telemetry;
use crate::services::plugins::{self, Plugins};
use crate::services::shadow::ShadowEngine;
use crate::services::upstream::Upstreams;
use crate::services::{Services, ServicesParts, Snapshot};

pub async fn run(runtime: Runtime) -> ExitCode {
    let settings = runtime.server.clone();
    let listener = match server::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: cannot read the listening address: {e}");
            return ExitCode::FAILURE;
        }
    };
    for r in &runtime.routes {
        let targets: Vec<String> = r
            .targets
            .iter()
            .map(|t| {
                format!(
                    "{}:{} w{}",
                    t.backend.name,
                    t.model.as_deref().unwrap_or("<client model>"),
                    t.weight
                )
            })
            .collect();
        tracing::info!(route = %r.name, targets = %targets.join(", "), "route");
    }
    // The admin API's own listener, bound with the main one so a taken port fails the start.
    let admin_listener = match runtime.admin.as_ref().and_then(|a| a.listen) {
        Some(at) => match server::bind(at).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: [admin] listen: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let governance = match Governance::start(&runtime, metrics.clone()).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tracer = match telemetry::init(runtime.telemetry.as_ref(), metrics.clone()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shadow = ShadowEngine::start(
        StateSettings::store_path(runtime.state.as_ref()),
        Some(governance.clone()),
    );
    let plugins = Arc::new(Plugins::default());
    let capture = CaptureEngine::start(
        StateSettings::store_path(runtime.state.as_ref()),
        governance
            .store
            .is_postgres()
            .then(|| governance.store.clone()),
        plugins.clone(),
    );
    let upstreams = Upstreams::with_shards(settings.threads.unwrap_or(0));
    let snapshot = match Snapshot::build(Arc::new(runtime), &upstreams) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let services = Arc::new(Services::new(ServicesParts {
        snapshot,
        upstreams,
        metrics,
        plugins,
        governance: Some(governance.clone()),
        shadow: Some(shadow),
        capture: Some(capture),
        tracer: tracer.clone(),
    }));
    // Self-hosted backends priced by `gpu_hour_usd`: their workers' throughput, polled
    // (a reload may add one, so the poller always runs; without such backends it idles).
    let s = services.clone();
    governance
        .derived_prices
        .spawn(move || s.snapshot().upstreams.to_vec());
    if let Some(url) = services
        .snapshot()
        .config
        .state
        .as_ref()
        .and_then(|s| s.redis.clone())
        && let Err(e) = services.cache.connect_redis(&url).await
    {
        eprintln!("error: [state] redis (the response cache): {e}");
        return ExitCode::FAILURE;
    }
    let snap = services.snapshot();
    services.context.discover(&snap.config, &snap.upstreams);
    let gw = Gateway::new(services.clone());
    // Staged rollouts move on a thread of their own, off the request path.
    crate::services::rollout::controller::spawn(&services);
    // Live reload and health checks.
    reload::spawn_background(&gw);
    // The console's hour of history: a sample of existing counters every few seconds.
    crate::app::admin::console::history::spawn(&gw);
    // `/readyz` turns ready only once the plugins are loaded.
    let plugins_services = services.clone();
    let _ = tokio::task::spawn_blocking(move || {
        plugins::start(
            &plugins_services.plugins,
            &plugins_services.snapshot().config,
        )
    })
    .await;
    start_local_worker(&gw.runtime());
    gw.set_ready(true);
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin_task = admin_listener.map(|l| {
        gw.set_admin_listener();
        if let Ok(at) = l.local_addr() {
            tracing::info!(%at, "admin API listening");
        }
        let mut stop = stop_rx.clone();
        let gw = gw.clone();
        // The same limits as the public port; plain HTTP (it listens on loopback by default).
        let admin_settings = settings.clone();
        tokio::spawn(async move {
            server::serve(
                gw,
                server::Listening {
                    listener: l,
                    tls: None,
                    surface: Surface::Admin,
                    connections: Arc::new(Semaphore::new(admin_settings.max_connections)),
                },
                &admin_settings,
                async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                },
            )
            .await
        })
    });
    let stopping = async {
        server::shutdown_signal().await;
        gw.set_ready(false);
        let _ = stop_tx.send(true);
    };
    match settings.threads {
        None => {
            tracing::info!(%addr, "listening");
            // The ready line scripts wait for, on stdout.
            println!("switchyard listening on {scheme}://{addr}");
            server::serve(
                gw.clone(),
                server::Listening {
                    listener,
                    tls: settings.tls.clone(),
                    surface: Surface::Public,
                    connections: Arc::new(Semaphore::new(settings.max_connections)),
                },
                &settings,
                stopping,
            )
            .await;
        }
        Some(threads) => {
            let shards = match start_shards(&gw, listener, &settings, threads, &stop_rx) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: cannot start the serving threads: {e}");
                    return ExitCode::FAILURE;
                }
            };
            tracing::info!(%addr, threads, "listening");
            println!("switchyard listening on {scheme}://{addr}");
            stopping.await;
            for (rt, served) in shards {
                let _ = served.await;
                // Each shard has drained (or cut off) its connections; what is left on its
                // runtime (idle upstream connections) goes with it.
                rt.shutdown_background();
            }
        }
    }
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    // Mirrored pairs and captures already accepted reach the store's queue before it
    // closes (bounded: a shadow call to a slow backend is not waited for past this).
    let deadline = std::time::Instant::now() + PIPELINE_DRAIN;
    let pending = |s: &Services| {
        s.shadow.as_ref().map_or(0, |x| x.pending()) + s.capture.as_ref().map_or(0, |x| x.pending())
    };
    while pending(&services) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The rollouts' last counts, then everything queued for the store (ledger rows) is
    // written before the process exits.
    services.rollouts.save_all(&governance.store);
    governance.close();
    tracer.shutdown().await;
    ExitCode::SUCCESS
}

/// How long a shutdown waits for mirrored pairs and captures still on their way to the store.
const PIPELINE_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The public listener served by `[server] threads` shards: each a runtime with one worker
/// thread, accepting on its own handle of the one listening socket (the kernel hands each
/// new connection to one of them) and serving its connections' requests on that thread.
/// On a stop each drains its own connections within the grace period.
fn start_shards(
    gw: &Arc<Gateway>,
    listener: tokio::net::TcpListener,
    settings: &ServerSettings,
    threads: usize,
    stop: &watch::Receiver<bool>,
) -> std::io::Result<Vec<(tokio::runtime::Runtime, tokio::task::JoinHandle<()>)>> {
    let listener = listener.into_std()?;
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let mut shards = Vec::with_capacity(threads);
    for index in 0..threads {
        let handle = listener.try_clone()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("switchyard-shard-{index}"))
            .on_thread_start(move || crate::base::shard::enter(index))
            .enable_all()
            .build()?;
        let gw = gw.clone();
        let settings = settings.clone();
        let connections = connections.clone();
        let mut stop = stop.clone();
        let served = rt.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(handle) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(shard = index, error = %e, "cannot listen on this serving thread");
                    return;
                }
            };
            server::serve(
                gw,
                server::Listening {
                    listener,
                    tls: settings.tls.clone(),
                    surface: Surface::Public,
                    connections,
                },
                &settings,
                async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                },
            )
            .await;
        });
        shards.push((rt, served));
    }
    Ok(shards)
}

/// `[local_worker]`: fetching and loading happen on the worker's own thread; the gateway
/// serves meanwhile.
#[cfg(feature = "local-worker")]
fn start_local_worker(rt: &Runtime) {
    let Some(local) = rt.local_worker.clone() else {
        return;
    };
    let otlp = rt.telemetry.as_ref().and_then(|t| {
        let endpoint = t.otlp_endpoint.clone()?;
        Some((
            endpoint,
            switchyard_otlp::Protocol::parse(&t.otlp_protocol)?,
        ))
    });
    super::local_worker::start(local, otlp);
}

/// Built without the `local-worker` feature: validation refuses `[local_worker]`, so there
/// is nothing to start.
#[cfg(not(feature = "local-worker"))]
fn start_local_worker(_: &Runtime) {}
