//! The wasmtime engine plugins run on: compiled once per process, with the pooling
//! allocator (instances are carved from pre-reserved slots, so a fresh instance per request
//! costs microseconds), epoch interruption driven by one ticker thread, and a disk cache of
//! compiled code so a restart does not recompile (a Python component takes seconds to
//! compile and milliseconds to load from the cache).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::Policy;
use super::exec::State;
use crate::config::plugins::Settings;

/// The epoch tick for a call timeout: a tenth of it, between 1 and 10 ms. A deadline is
/// counted in ticks, so a call is cut off between its timeout and one tick (≤ 10 %) later;
/// a longer tick wakes the ticker thread less often (at 1 ms, a thousand wake-ups a second
/// preempted request threads on a small machine for nothing).
fn tick_for(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(10))
}

/// The engine, the linker with the host imports, and the ticker that enforces deadlines.
pub struct PluginEngine {
    pub engine: Engine,
    pub linker: Linker<State>,
    /// How often the epoch advances (fine enough for the shortest plugin deadline).
    tick: Duration,
    /// `[plugins] instances = "per-call"`: never reuse an instance.
    pub per_call: bool,
    cache_dir: Option<PathBuf>,
    stop: Arc<AtomicBool>,
}

/// `d` in ticks, plus one: the first tick may come at once.
fn deadline_ticks(d: Duration, tick: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(tick.as_micros()))
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PluginEngine {
    pub fn new(settings: &Settings) -> wasmtime::Result<Arc<PluginEngine>> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let mut pool = PoolingAllocationConfig::default();
        // Slots fit the largest memory any plugin may have; each store's limiter holds a
        // plugin to its own `memory_mb`.
        pool.max_memory_size(settings.largest_memory());
        // Python and JavaScript components hold several core instances, memories and large
        // tables; these limits fit them with room to spare.
        pool.total_component_instances(1000);
        pool.total_core_instances(2000);
        pool.total_memories(1000);
        pool.total_tables(2000);
        pool.max_memories_per_component(16);
        pool.max_tables_per_component(32);
        pool.max_core_instances_per_component(64);
        pool.table_elements(100_000);
        pool.max_core_instance_size(16 * 1024 * 1024);
        pool.max_component_instance_size(16 * 1024 * 1024);
        // A recycled slot is reset by memset up to this size instead of madvise: a fresh
        // instance per request then does not page-fault its stack and heap back in.
        pool.linear_memory_keep_resident(2 * 1024 * 1024);
        pool.table_keep_resident(64 * 1024);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // Each memory slot reserves 4 GiB of address space plus a 32 MiB guard (wasmtime's
        // own default), so compiled code needs no bounds check on a load or store: an access
        // past the end faults in the guard instead. With a reservation the size of
        // `memory_mb` every access is checked explicitly, which made interpreters built to
        // Wasm (StarlingMonkey, CPython) a third slower: the JavaScript router took 254 µs a
        // call against 161, a per-call Rust instance 50 µs against 32. The reservation is
        // address space only (no memory is committed; ~4 TiB for the pool's 1000 memories,
        // so no `ulimit -v`), and `memory_mb` is still enforced by the pool's slot size and
        // each store's limiter.
        config.memory_reservation(1 << 32);
        config.memory_guard_size(32 << 20);
        // `SWITCHYARD_PLUGIN_PROFILER=perfmap`: name each plugin function in
        // /tmp/perf-<pid>.map, so `perf record` / `perf report` on the gateway (or the
        // plugins bench) show where a plugin's time goes, function by function, instead of
        // one anonymous JIT blob. Off by default: the map only grows.
        if let Some(p) = profiler_from_env()? {
            config.profiler(p);
        }
        let engine = Engine::new(&config)?;

        let mut linker: Linker<State> = Linker::new(&engine);
        // WASI only so that components built by Python/JS/Rust toolchains link: the context
        // each store gets has no preopened files, no sockets and frozen clocks.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Policy::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let ticker_stop = stop.clone();
        let tick = tick_for(settings.shortest_timeout());
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    match ticker_engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        Ok(Arc::new(PluginEngine {
            engine,
            linker,
            tick,
            per_call: settings.per_call_instances,
            cache_dir: settings.cache_dir.clone(),
            stop,
        }))
    }

    /// A deadline of `d` in this engine's epoch ticks.
    pub fn ticks(&self, d: Duration) -> u64 {
        deadline_ticks(d, self.tick)
    }

    /// Compile `bytes` (a component, binary or text), through the disk cache.
    pub fn compile(&self, bytes: &[u8]) -> wasmtime::Result<(Component, CacheUse)> {
        let Some(dir) = &self.cache_dir else {
            return Ok((Component::new(&self.engine, bytes)?, CacheUse::Off));
        };
        let path = self.cache_path(dir, bytes);
        // Read whole, not mapped (`deserialize_file`): mapped, the code is paged in from the
        // file as it first runs, and a JavaScript component's first call then took 50–680 ms
        // with a cold page cache (after a reboot, or once the kernel reclaimed the pages),
        // past the call deadline. Read here, off the request path, it is all in memory.
        if let Ok(code) = std::fs::read(&path) {
            // SAFETY: the file was written by `Component::serialize` of this same engine
            // build (the engine's compatibility hash is in the name) into a directory the
            // operator gave the gateway; wasmtime checks the header and version again.
            match unsafe { Component::deserialize(&self.engine, &code) } {
                Ok(c) => return Ok((c, CacheUse::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unusable plugin cache entry; recompiling");
                }
            }
        }
        let component = Component::new(&self.engine, bytes)?;
        let stored = component
            .serialize()
            .and_then(|code| Ok(write_atomically(&path, &code)?));
        if let Err(e) = stored {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the plugin cache");
        }
        Ok((component, CacheUse::Miss))
    }

    fn cache_path(&self, dir: &Path, bytes: &[u8]) -> PathBuf {
        let content = Sha256::digest(bytes);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        let mut name = String::with_capacity(90);
        for b in &content[..16] {
            name.push_str(&format!("{b:02x}"));
        }
        name.push_str(&format!("-{:016x}.cwasm", h.finish()));
        dir.join(name)
    }
}

/// The environment variable that turns on a profiler for plugin code.
pub const PROFILER_ENV: &str = "SWITCHYARD_PLUGIN_PROFILER";

fn profiler_from_env() -> wasmtime::Result<Option<wasmtime::ProfilingStrategy>> {
    parse_profiler(std::env::var(PROFILER_ENV).ok().as_deref())
}

fn parse_profiler(value: Option<&str>) -> wasmtime::Result<Option<wasmtime::ProfilingStrategy>> {
    match value {
        None | Some("") | Some("none") => Ok(None),
        Some("perfmap") => Ok(Some(wasmtime::ProfilingStrategy::PerfMap)),
        Some(other) => Err(wasmtime::format_err!(
            "{PROFILER_ENV}={other:?}: expected \"perfmap\" or \"none\""
        )),
    }
}

/// Whether a compile came from the disk cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    Hit,
    Miss,
    Off,
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profiler_variable_is_perfmap_or_nothing() {
        assert!(matches!(parse_profiler(None), Ok(None)));
        assert!(matches!(parse_profiler(Some("none")), Ok(None)));
        assert!(matches!(
            parse_profiler(Some("perfmap")),
            Ok(Some(wasmtime::ProfilingStrategy::PerfMap))
        ));
        let e = parse_profiler(Some("jitdump")).map(|_| ()).unwrap_err();
        assert!(
            e.to_string()
                .contains("SWITCHYARD_PLUGIN_PROFILER=\"jitdump\""),
            "{e}"
        );
    }

    #[test]
    fn ticks_are_a_tenth_of_the_timeout_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(tick_for(ms(1)), ms(1));
        assert_eq!(tick_for(ms(50)), ms(5));
        assert_eq!(tick_for(ms(60_000)), ms(10));
        // A call is cut off no earlier than its timeout and at most one tick later.
        for timeout in [1, 7, 50, 250, 999, 60_000] {
            let tick = tick_for(ms(timeout));
            let n = deadline_ticks(ms(timeout), tick);
            assert!(tick * (n as u32 - 1) >= ms(timeout), "{timeout} ms");
            assert!(tick * (n as u32 - 2) < ms(timeout), "{timeout} ms");
        }
    }
}
