//! What the gateway offers a policy: a log tagged with the plugin's name, counters and
//! histograms, the plugin's `[plugins.config.<name>]` values, a small per-plugin
//! key-value store, and (contract `0.2`) values kept for the request in flight.
//!
//! Inside the gateway these call the host imports. Compiled natively (unit tests), they
//! read and write the [`crate::testing`] state instead, so policies are testable with
//! plain `cargo test`.

pub use crate::bindings::classifier::switchyard::plugin::host::Level;

#[cfg(target_arch = "wasm32")]
use crate::bindings::classifier::switchyard::plugin::host as imports;

/// Write a line to the gateway's log.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    imports::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with_state(|s| s.logs.push((level, message.to_string())));
}

/// Add to a counter (`switchyard_plugin_counter_total{plugin, name}`).
pub fn counter_add(name: &str, delta: u64) {
    #[cfg(target_arch = "wasm32")]
    imports::counter_add(name, delta);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with_state(|s| *s.counters.entry(name.to_string()).or_default() += delta);
}

/// Record a value (`switchyard_plugin_value{plugin, name}`).
pub fn histogram_record(name: &str, value: f64) {
    #[cfg(target_arch = "wasm32")]
    imports::histogram_record(name, value);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with_state(|s| s.values.push((name.to_string(), value)));
}

/// A config value as text.
///
/// Inside the gateway each key is asked of the host once per instance and then kept: the
/// values are fixed for as long as this version of the plugin is loaded (new values come
/// with fresh instances), and a warm instance serves many requests, so a policy that reads
/// its thresholds on every call pays for a host call only on the first.
pub fn config(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    return cached_config(key);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::with_state(|s| s.config.get(key).cloned());
}

#[cfg(target_arch = "wasm32")]
fn cached_config(key: &str) -> Option<String> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static CONFIG: RefCell<HashMap<String, Option<String>>> = RefCell::new(HashMap::new());
    }
    CONFIG.with(|c| {
        if let Some(v) = c.borrow().get(key) {
            return v.clone();
        }
        let v = imports::config_get(key);
        c.borrow_mut().insert(key.to_string(), v.clone());
        v
    })
}

/// A config value parsed as `T` (numbers, booleans), or `default` when absent or invalid.
pub fn config_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    config(key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A config value that is a list: a TOML array (JSON text) of strings, or comma-separated.
pub fn config_list(key: &str) -> Vec<String> {
    let Some(v) = config(key) else {
        return Vec::new();
    };
    let v = v.trim();
    if let Some(inner) = v.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        crate::helpers::json_strings(inner)
    } else {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// Read from this plugin's key-value store.
pub fn kv_get(key: &str) -> Option<Vec<u8>> {
    #[cfg(target_arch = "wasm32")]
    return imports::kv_get(key);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::with_state(|s| s.kv.get(key).cloned());
}

/// Write to this plugin's key-value store.
pub fn kv_set(key: &str, value: &[u8]) {
    #[cfg(target_arch = "wasm32")]
    imports::kv_set(key, value);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with_state(|s| {
        s.kv.insert(key.to_string(), value.to_vec());
    });
}

/// Remove a key from this plugin's key-value store.
pub fn kv_delete(key: &str) {
    #[cfg(target_arch = "wasm32")]
    imports::kv_delete(key);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with_state(|s| {
        s.kv.remove(key);
    });
}

/// Read a value this plugin kept for the request in flight ([`request_set`]), from any of
/// its stages. Contract `0.2`.
#[cfg(not(feature = "wit-0-1"))]
pub fn request_get(key: &str) -> Option<Vec<u8>> {
    #[cfg(target_arch = "wasm32")]
    return imports::request_get(key);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::with_state(|s| s.request.get(key).cloned());
}

/// Keep a value for the rest of the request in flight (this plugin only; dropped when the
/// request ends). Contract `0.2`.
#[cfg(not(feature = "wit-0-1"))]
pub fn request_set(key: &str, value: &[u8]) {
    #[cfg(target_arch = "wasm32")]
    imports::request_set(key, value);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with_state(|s| {
        s.request.insert(key.to_string(), value.to_vec());
    });
}
