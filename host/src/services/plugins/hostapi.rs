//! The host side of `interface host`: what a plugin may ask the gateway for.
//!
//! Logging goes to the gateway's own log with the plugin's name attached; counters and
//! histograms land in the process-wide [`PluginMetrics`] (rendered on `/metrics`); config
//! values are the plugin's `[plugins.config.<name>]` table; the key-value store is one
//! in-memory map per plugin name, so it survives a hot reload of that plugin.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::base::CounterMap;

use super::bindings::host::Level;
use crate::services::observe::metrics::{header, single};

/// Largest value a plugin may store under one key, and most keys per plugin: the store is
/// a convenience, not a database, and must not let a plugin exhaust the host's memory.
const KV_MAX_VALUE: usize = 64 * 1024;
const KV_MAX_KEYS: usize = 10_000;

/// One plugin's view of the host.
pub struct PluginHost {
    pub name: Arc<str>,
    pub config: Arc<HashMap<String, String>>,
    kv: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    metrics: Arc<PluginMetrics>,
}

impl PluginHost {
    pub fn new(
        name: Arc<str>,
        config: Arc<HashMap<String, String>>,
        kv: Arc<Mutex<HashMap<String, Vec<u8>>>>,
        metrics: Arc<PluginMetrics>,
    ) -> Self {
        PluginHost {
            name,
            config,
            kv,
            metrics,
        }
    }

    pub fn log(&self, level: Level, message: &str) {
        // Plugins could flood the log; cap one line's length.
        let message = if message.len() > 2000 {
            let mut end = 2000;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            &message[..end]
        } else {
            message
        };
        let plugin = &*self.name;
        match level {
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    pub fn counter_add(&self, name: &str, delta: u64) {
        self.metrics.counter_add(&self.name, name, delta);
    }

    pub fn histogram_record(&self, name: &str, value: f64) {
        self.metrics.observe(&self.name, name, value);
    }

    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        self.kv.lock().ok()?.get(key).cloned()
    }

    pub fn kv_set(&self, key: String, value: Vec<u8>) {
        if value.len() > KV_MAX_VALUE {
            tracing::warn!(plugin = &*self.name, key = %key, len = value.len(), "kv-set ignored: value larger than 64 KiB");
            return;
        }
        if let Ok(mut kv) = self.kv.lock() {
            if kv.len() >= KV_MAX_KEYS && !kv.contains_key(&key) {
                tracing::warn!(plugin = &*self.name, "kv-set ignored: the store is full");
                return;
            }
            kv.insert(key, value);
        }
    }

    pub fn kv_delete(&self, key: &str) {
        if let Ok(mut kv) = self.kv.lock() {
            kv.remove(key);
        }
    }
}

/// Bucket bounds of plugin histograms: wide, since plugins measure anything.
const BUCKETS: [f64; 12] = [
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 10000.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in millionths, so it can be an atomic integer.
    sum_micros: AtomicU64,
}

/// Metrics plugins emit and the gateway keeps about plugins.
#[derive(Default)]
pub struct PluginMetrics {
    counters: CounterMap<(Arc<str>, String), AtomicU64>,
    histograms: CounterMap<(Arc<str>, String), Histogram>,
    /// Failed calls by (plugin, stage, kind).
    errors: CounterMap<(Arc<str>, &'static str, &'static str), AtomicU64>,
    /// Calls by (plugin, stage).
    calls: CounterMap<(Arc<str>, &'static str), AtomicU64>,
    /// Load failures by plugin.
    load_errors: CounterMap<Arc<str>, AtomicU64>,
    pub reloads: AtomicU64,
}

impl PluginMetrics {
    fn counter_add(&self, plugin: &Arc<str>, name: &str, delta: u64) {
        if let Some(c) = self.counters.get(&(plugin.clone(), name.to_string())) {
            c.fetch_add(delta, Ordering::Relaxed);
            return;
        }
        if self.counters.len() >= 1000 {
            return;
        }
        self.counters
            .entry((plugin.clone(), name.to_string()))
            .or_default()
            .fetch_add(delta, Ordering::Relaxed);
    }

    fn observe(&self, plugin: &Arc<str>, name: &str, value: f64) {
        if !value.is_finite() {
            return;
        }
        let key = (plugin.clone(), name.to_string());
        if !self.histograms.contains_key(&key) && self.histograms.len() >= 1000 {
            return;
        }
        let h = self.histograms.entry(key).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if value <= *b {
                h.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_micros
            .fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn call(&self, plugin: &Arc<str>, stage: &'static str) {
        if let Some(c) = self.calls.get(&(plugin.clone(), stage)) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.calls
            .entry((plugin.clone(), stage))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, plugin: &Arc<str>, stage: &'static str, kind: &'static str) {
        self.errors
            .entry((plugin.clone(), stage, kind))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn load_error(&self, plugin: &Arc<str>) {
        self.load_errors
            .entry(plugin.clone())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Failed calls of `plugin` so far (all stages and kinds).
    pub fn errors_of(&self, plugin: &str) -> u64 {
        self.errors
            .iter()
            .filter(|e| &*e.key().0 == plugin)
            .map(|e| e.value().load(Ordering::Relaxed))
            .sum()
    }

    /// Prometheus text for the plugin metrics.
    pub fn render(&self, out: &mut String) {
        header(
            out,
            "switchyard_plugin_calls_total",
            "counter",
            "Plugin stage calls.",
        );
        for e in self.calls.iter() {
            let (p, s) = e.key();
            let _ = writeln!(
                out,
                "switchyard_plugin_calls_total{{plugin=\"{}\",stage=\"{s}\"}} {}",
                esc(p),
                e.value().load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "switchyard_plugin_errors_total",
            "counter",
            "Plugin calls that failed (trap, timeout, memory, bad_return, instantiate).",
        );
        for e in self.errors.iter() {
            let (p, s, k) = e.key();
            let _ = writeln!(
                out,
                "switchyard_plugin_errors_total{{plugin=\"{}\",stage=\"{s}\",kind=\"{k}\"}} {}",
                esc(p),
                e.value().load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "switchyard_plugin_load_errors_total",
            "counter",
            "Plugin files that failed to load.",
        );
        for e in self.load_errors.iter() {
            let _ = writeln!(
                out,
                "switchyard_plugin_load_errors_total{{plugin=\"{}\"}} {}",
                esc(e.key()),
                e.value().load(Ordering::Relaxed)
            );
        }
        single(
            out,
            "switchyard_plugin_reloads_total",
            "counter",
            "Plugin set swaps after a change in the plugin folder.",
            self.reloads.load(Ordering::Relaxed),
        );
        header(
            out,
            "switchyard_plugin_counter_total",
            "counter",
            "Counters plugins emit.",
        );
        for e in self.counters.iter() {
            let (p, n) = e.key();
            let _ = writeln!(
                out,
                "switchyard_plugin_counter_total{{plugin=\"{}\",name=\"{}\"}} {}",
                esc(p),
                esc(n),
                e.value().load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "switchyard_plugin_value",
            "histogram",
            "Values plugins record.",
        );
        for e in self.histograms.iter() {
            let (p, n) = e.key();
            let h = e.value();
            let labels = format!("plugin=\"{}\",name=\"{}\"", esc(p), esc(n));
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "switchyard_plugin_value_bucket{{{labels},le=\"{b}\"}} {}",
                    h.buckets[i].load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "switchyard_plugin_value_bucket{{{labels},le=\"+Inf\"}} {count}\nswitchyard_plugin_value_sum{{{labels}}} {}\nswitchyard_plugin_value_count{{{labels}}} {count}",
                h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
