//! Accepting connections: TCP, optional TLS, HTTP/1.1 and HTTP/2, graceful shutdown.
//!
//! Each connection is served on its own task by hyper-util's auto builder (HTTP/2 is chosen
//! by ALPN under TLS and by the connection preface in clear text). On SIGTERM or Ctrl-C the
//! listener closes at once, idle connections are closed, and in-flight requests and streams
//! get `[server] shutdown_grace_secs` to finish before the process exits.
//!
//! What one client may hold is bounded: `[server] max_connections` connections at once
//! (beyond it a new connection is closed as soon as it is accepted), `max_h2_streams`
//! concurrent streams on an HTTP/2 connection, 30 s to send a request's headers, and
//! `body_read_timeout_ms` for its body (the request path's `parse`, on both protocols).
//! These are read at start; a reload does not change the listener.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::gateway::Gateway;
use super::http::{self, Conn, Surface};
use crate::config::ServerSettings;

/// Bind the listening socket, with a message that says why when it cannot.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("cannot listen on {addr}: the address is already in use")
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("cannot listen on {addr}: permission denied (ports below 1024 need privileges)")
        }
        _ => format!("cannot listen on {addr}: {e}"),
    })
}

/// One listening socket and what it serves.
pub struct Listening {
    pub listener: TcpListener,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub surface: Surface,
    /// Permits for the connections open at once (`[server] max_connections`), shared by
    /// every shard accepting on the same port.
    pub connections: Arc<Semaphore>,
}

/// Serve until `shutdown` resolves, then drain for at most `[server] shutdown_grace_secs`.
pub async fn serve(
    gw: Arc<Gateway>,
    listening: Listening,
    settings: &ServerSettings,
    shutdown: impl Future<Output = ()>,
) {
    let Listening {
        listener,
        tls,
        surface,
        connections,
    } = listening;
    let grace = settings.shutdown_grace;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_h2_streams)
        .keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);
    let tls = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // At the cap a new connection is closed at once: the client sees it refused rather
        // than waiting in the kernel's queue behind connections that may never end.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            gw.services.metrics.connection_refused();
            tracing::debug!(%peer, max = settings.max_connections, "connection limit reached; closing the new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let gw = gw.clone();
        let conn = Conn { peer, surface };
        let service = service_fn(move |req| {
            let gw = gw.clone();
            async move { Ok::<_, Infallible>(http::handle(gw, req, conn).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match &tls {
            None => {
                tokio::spawn(async move {
                    let _permit = permit;
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let stream = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }

    drop(listener);
    let open = graceful.count();
    tracing::info!(
        open_connections = open,
        grace_secs = grace.as_secs_f64(),
        "shutting down: no new connections, draining in-flight requests"
    );
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    if tokio::time::timeout(grace, &mut drained).await.is_ok() {
        tracing::info!("all connections drained");
        return;
    }
    // Streams still running end now with an error event and their ledger row, while the
    // store is open (the caller closes it when this returns); their connections then close.
    tracing::warn!("shutdown grace period elapsed; ending the remaining streams");
    gw.services.cutoff.cut();
    if tokio::time::timeout(CUTOFF_FLUSH, &mut drained)
        .await
        .is_err()
    {
        tracing::warn!("closing connections still open after their streams were ended");
    }
}

/// How long connections get to deliver the error event of a stream ended by the shutdown
/// (a client that stopped reading may never take it).
const CUTOFF_FLUSH: Duration = Duration::from_secs(1);

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
