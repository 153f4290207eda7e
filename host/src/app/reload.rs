//! Live config: reload on file change, SIGHUP or `POST /admin/reload`; roll back in one
//! pointer swap.
//!
//! A new config is parsed and validated completely before anything changes; a config with
//! problems is refused with every problem listed (in the log and in the admin response)
//! and the running version stays. An accepted one is swapped in atomically: requests that
//! already loaded the old snapshot finish on it, new requests see the new one. The
//! last `[admin] keep_versions` validated versions are kept in memory, so a rollback does
//! not read or validate anything: it is an `ArcSwap` store, well under a millisecond.
//!
//! Each change of the version in force is also added to the store's `config_history`
//! (shared by replicas on PostgreSQL); each replica still reloads its own file and rolls
//! back its own kept versions.
//!
//! The file is polled (its content hash, twice a second) rather than watched with inotify:
//! it works the same on every filesystem, including the symlink swaps Kubernetes does for
//! ConfigMaps, and reading a few kilobytes twice a second costs nothing.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::gateway::Gateway;
use crate::config::admin::DEFAULT_KEEP_VERSIONS;
use crate::config::{self, ConfigError, ConfigSource, Runtime};
use crate::services::upstream::health;
use crate::services::{Snapshot, config_history};

/// One validated config version, with the live upstreams built for it.
#[derive(Debug, Clone)]
pub struct Version {
    pub id: u64,
    pub snapshot: Arc<Snapshot>,
    pub hash: u64,
    pub loaded_at: SystemTime,
    /// What made it current: `start`, `file change`, `SIGHUP`, `admin`, `rollback`.
    pub origin: &'static str,
    /// The file's text (`None` for the embedded default), for the console's diff.
    pub text: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct History {
    versions: Vec<Version>,
    current: usize,
    next_id: u64,
    /// Hash of the file content last seen by the watcher (applied or refused).
    seen_hash: Option<u64>,
}

/// The config history and the reload/rollback operations.
#[derive(Debug, Default)]
pub struct Control {
    history: Mutex<History>,
}

/// What a reload did.
#[derive(Debug, Clone)]
pub enum Reloaded {
    /// A new version is in force.
    Applied { version: u64, previous: u64 },
    /// The file is the same as the version in force.
    Unchanged { version: u64 },
}

/// Why a reload or rollback did not happen.
#[derive(Debug)]
pub enum ControlError {
    Invalid(ConfigError),
    NoFile,
    NoPrevious,
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Invalid(e) => {
                write!(f, "config rejected, the running version stays: {e}")
            }
            ControlError::NoFile => f.write_str(
                "the gateway runs on the embedded default config: there is no file to reload",
            ),
            ControlError::NoPrevious => {
                f.write_str("there is no previous config version to roll back to")
            }
        }
    }
}

fn hash_text(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn lock(c: &Control) -> std::sync::MutexGuard<'_, History> {
    c.history.lock().unwrap_or_else(|p| p.into_inner())
}

fn keep(rt: &Runtime) -> usize {
    rt.admin
        .as_ref()
        .map_or(DEFAULT_KEEP_VERSIONS, |a| a.keep_versions)
}

impl Control {
    /// Record the version the gateway started with.
    pub fn init(&self, snapshot: Arc<Snapshot>) {
        let text = match &snapshot.config.source {
            ConfigSource::File(p) => std::fs::read_to_string(p).ok(),
            ConfigSource::Embedded => None,
        };
        let hash = text.as_deref().map(hash_text);
        let mut h = lock(self);
        h.next_id = 2;
        h.seen_hash = hash;
        h.versions = vec![Version {
            id: 1,
            snapshot,
            hash: hash.unwrap_or(0),
            loaded_at: SystemTime::now(),
            origin: "start",
            text: text.map(Arc::from),
        }];
        h.current = 0;
    }

    /// Read, validate and (if valid and different) apply the config file.
    pub fn reload(&self, gw: &Gateway, origin: &'static str) -> Result<Reloaded, ControlError> {
        let current = gw.runtime();
        let ConfigSource::File(path) = &current.source else {
            return Err(ControlError::NoFile);
        };
        let path = path.clone();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ControlError::Invalid(ConfigError {
                source: current.source.clone(),
                problems: vec![config::Problem::new(
                    "",
                    format!("cannot read the config file: {e}"),
                )],
            })
        })?;
        let hash = hash_text(&text);
        {
            let mut h = lock(self);
            h.seen_hash = Some(hash);
            let cur = &h.versions[h.current];
            if cur.hash == hash {
                return Ok(Reloaded::Unchanged { version: cur.id });
            }
        }
        let rt = match config::load_str(&text, current.source.clone()) {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(origin, error = %e, "config reload rejected; the running config stays");
                return Err(ControlError::Invalid(e));
            }
        };
        if rt.server.listen != current.server.listen
            || rt.server.tls.is_some() != current.server.tls.is_some()
        {
            tracing::warn!(
                "config reload: [server] listen/TLS changes take effect at the next restart"
            );
        }
        let snapshot = match Snapshot::build(Arc::new(rt), &gw.services.upstreams) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(origin, error = %e, "config reload rejected; the running config stays");
                return Err(ControlError::Invalid(ConfigError {
                    source: current.source.clone(),
                    problems: vec![config::Problem::new("backends", e)],
                }));
            }
        };
        let mut h = lock(self);
        // Another reload (watcher, SIGHUP, admin) may have applied the same file meanwhile.
        if h.versions[h.current].hash == hash {
            return Ok(Reloaded::Unchanged {
                version: h.versions[h.current].id,
            });
        }
        let previous = h.versions[h.current].id;
        let id = h.next_id;
        h.next_id += 1;
        // Like undo history: versions rolled back from are dropped, so "previous" is
        // always the version that was in force before this one.
        let keep_upto = h.current + 1;
        h.versions.truncate(keep_upto);
        h.versions.push(Version {
            id,
            snapshot: snapshot.clone(),
            hash,
            loaded_at: SystemTime::now(),
            origin,
            text: Some(Arc::from(text)),
        });
        let keep = keep(&snapshot.config).max(2);
        while h.versions.len() > keep {
            h.versions.remove(0);
        }
        h.current = h.versions.len() - 1;
        gw.services.install(snapshot);
        let text = h.versions[h.current].text.clone();
        drop(h);
        record(gw, id, origin, text.as_deref());
        tracing::info!(origin, version = id, previous, "config reloaded");
        Ok(Reloaded::Applied {
            version: id,
            previous,
        })
    }

    /// Put the version before the current one back in force.
    pub fn rollback(&self, gw: &Gateway) -> Result<(u64, u64), ControlError> {
        let mut h = lock(self);
        if h.current == 0 {
            return Err(ControlError::NoPrevious);
        }
        let from = h.versions[h.current].id;
        h.current -= 1;
        let v = h.versions[h.current].clone();
        gw.services.install(v.snapshot.clone());
        drop(h);
        record(gw, v.id, "rollback", v.text.as_deref());
        tracing::info!(version = v.id, from, "config rolled back");
        Ok((v.id, from))
    }

    /// The kept versions, oldest first, and the current one's id.
    pub fn versions(&self) -> (Vec<Version>, u64) {
        let h = lock(self);
        let cur = h.versions.get(h.current).map_or(0, |v| v.id);
        (h.versions.clone(), cur)
    }

    /// True when the file's content changed since it was last looked at. The content is
    /// hashed every time: mtimes can be coarse, and a reader can catch a half-written file
    /// whose final version then carries the same mtime.
    fn file_changed(&self, path: &Path) -> bool {
        let h = lock(self);
        match std::fs::read_to_string(path) {
            Ok(t) => Some(hash_text(&t)) != h.seen_hash,
            Err(_) => false,
        }
    }
}

/// Add a change of the version in force to the store's shared history
/// ([`config_history`]): with `[state] postgres` every replica lists every replica's changes.
fn record(gw: &Gateway, version: u64, origin: &str, text: Option<&str>) {
    if let Some(g) = &gw.services.governance {
        config_history::record(&g.store, version, origin, text);
    }
}

/// Start the file watcher, the SIGHUP handler and the health checks.
pub fn spawn_background(gw: &Arc<Gateway>) {
    gw.control.init(gw.snapshot());
    {
        let (versions, current) = gw.control.versions();
        let text = versions.last().and_then(|v| v.text.clone());
        record(gw, current, "start", text.as_deref());
    }
    let services = gw.services.clone();
    health::spawn(move || services.snapshot().upstreams.clone());

    let watch = gw.runtime().admin.as_ref().is_none_or(|a| a.watch);
    if watch {
        let gw2 = gw.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let rt = gw2.runtime();
                let ConfigSource::File(path) = &rt.source else {
                    return;
                };
                let path = path.clone();
                let gw3 = gw2.clone();
                // Validation builds TLS configs and reads files: keep it off the I/O threads.
                let _ = tokio::task::spawn_blocking(move || {
                    if gw3.control.file_changed(&path) {
                        let _ = gw3.control.reload(&gw3, "file change");
                    }
                })
                .await;
            }
        });
    }

    #[cfg(unix)]
    {
        let gw2 = gw.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot listen for SIGHUP; reload with POST /admin/reload");
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading the config");
                let gw3 = gw2.clone();
                let _ =
                    tokio::task::spawn_blocking(move || gw3.control.reload(&gw3, "SIGHUP")).await;
            }
        });
    }
}
