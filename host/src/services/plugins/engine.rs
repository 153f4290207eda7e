//! The wasmtime engine plugins run on: compiled once per process, with the pooling
//! allocator (instances are carved from pre-reserved slots, so a fresh instance per request
//! costs microseconds), epoch interruption driven by one ticker thread, and a disk cache of
//! compiled code so a restart does not recompile (a Python component takes seconds to
//! compile and milliseconds to load from the cache).
//!
//! Loading cached code is deserialising native code (`unsafe`): whoever can write the cache
//! can run code in the gateway. So the cache lives in a private folder (created 0700,
//! refused unless owned by the gateway's user and closed to others; by default under
//! `$XDG_CACHE_HOME`, not the working directory), each entry is owned by that user, and a
//! digest of the entry (with the plugin's and engine's identity) is stored beside it and
//! checked before the code is loaded; an entry that fails any check is compiled afresh.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{Policy, v2};
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
        let slots = pool_slots_from_env()?;
        pool.total_component_instances(slots);
        pool.total_core_instances(2 * slots);
        pool.total_memories(slots);
        pool.total_tables(2 * slots);
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
        // Both contract versions' imports: a component built against either links.
        v2::Policy::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;

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
        if let Err(why) = private_dir(dir) {
            tracing::warn!(dir = %dir.display(), "plugin cache not used: {why}");
            return Ok((Component::new(&self.engine, bytes)?, CacheUse::Off));
        }
        let entry = self.cache_entry(dir, bytes);
        // Read whole, not mapped (`deserialize_file`): mapped, the code is paged in from the
        // file as it first runs, and a JavaScript component's first call then took 50–680 ms
        // with a cold page cache (after a reboot, or once the kernel reclaimed the pages),
        // past the call deadline. Read here, off the request path, it is all in memory.
        match entry.read_verified() {
            Ok(Some(code)) => {
                // SAFETY: `read_verified` checked that the entry sits in a folder only this
                // user can write, is owned by this user and closed to others, and matches the
                // digest recorded beside it when this engine build serialized it for exactly
                // these plugin bytes; wasmtime checks the header and version again.
                match unsafe { Component::deserialize(&self.engine, &code) } {
                    Ok(c) => return Ok((c, CacheUse::Hit)),
                    Err(e) => {
                        tracing::warn!(path = %entry.code.display(), error = %e, "unusable plugin cache entry; recompiling");
                    }
                }
            }
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(path = %entry.code.display(), "plugin cache entry refused ({why}); recompiling");
            }
        }
        let component = Component::new(&self.engine, bytes)?;
        let stored = component
            .serialize()
            .and_then(|code| Ok(entry.write(&code)?));
        if let Err(e) = stored {
            tracing::warn!(path = %entry.code.display(), error = %e, "cannot write the plugin cache");
        }
        Ok((component, CacheUse::Miss))
    }

    fn cache_entry(&self, dir: &Path, bytes: &[u8]) -> CacheEntry {
        let content = Sha256::digest(bytes);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        let engine = format!("{:016x}", h.finish());
        let wasm = hex(&content);
        let name = format!("{}-{engine}", &wasm[..32]);
        CacheEntry {
            code: dir.join(format!("{name}.cwasm")),
            digest: dir.join(format!("{name}.sha256")),
            identity: format!("wasm {wasm}\nengine {engine}\n"),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One compiled plugin in the cache: the code and, beside it, what it must hash to.
struct CacheEntry {
    code: PathBuf,
    digest: PathBuf,
    /// The plugin's bytes and the engine build it was compiled by, as the digest file
    /// states them (a hit must be for this plugin and this engine, not just any entry).
    identity: String,
}

impl CacheEntry {
    /// The digest file's text for `code`.
    fn record(&self, code: &[u8]) -> String {
        format!("{}code {}\n", self.identity, hex(&Sha256::digest(code)))
    }

    /// The cached code, if there is an entry and it passes every check; `Err` says which
    /// check failed.
    fn read_verified(&self) -> Result<Option<Vec<u8>>, String> {
        let Ok(code) = std::fs::read(&self.code) else {
            return Ok(None);
        };
        owned_and_closed(&self.code)?;
        owned_and_closed(&self.digest)?;
        let recorded = std::fs::read_to_string(&self.digest)
            .map_err(|e| format!("its digest file cannot be read: {e}"))?;
        if recorded != self.record(&code) {
            return Err("its contents do not match the digest recorded beside it".into());
        }
        Ok(Some(code))
    }

    /// Store `code` and its digest, each written whole then renamed into place (the digest
    /// last: a reader that sees new code with an old digest recompiles).
    fn write(&self, code: &[u8]) -> std::io::Result<()> {
        write_atomically(&self.code, code)?;
        write_atomically(&self.digest, self.record(code).as_bytes())
    }
}

/// Make `dir` the cache's private folder: created 0700 when missing; when present, a folder
/// (not a link) owned by this user, narrowed to 0700 if it was wider. `Err` says why not.
#[cfg(unix)]
fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create it: {e}"))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("it is not a folder (a symbolic link is refused)".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "it belongs to user {} and the gateway runs as {me}: another user could plant code in it",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make it private (0700): {e}"))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create it: {e}"))
}

/// A cache file must be this user's and writable by no one else.
#[cfg(unix)]
fn owned_and_closed(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_file() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is not a regular file owned by this user and writable only by it",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn owned_and_closed(_: &Path) -> Result<(), String> {
    Ok(())
}

/// The environment variable that turns on a profiler for plugin code.
pub const PROFILER_ENV: &str = "SWITCHYARD_PLUGIN_PROFILER";

/// `SWITCHYARD_PLUGIN_POOL_SLOTS=N`: room for N plugin instances instead of 1000. For
/// running the gateway under valgrind (callgrind), which cannot map the default pool's
/// ~4 TiB of address space; each memory keeps its 4 GiB reservation, so the compiled code
/// (and an instruction count) is the same as in production.
pub const POOL_SLOTS_ENV: &str = "SWITCHYARD_PLUGIN_POOL_SLOTS";

fn pool_slots_from_env() -> wasmtime::Result<u32> {
    parse_pool_slots(std::env::var(POOL_SLOTS_ENV).ok().as_deref())
}

fn parse_pool_slots(value: Option<&str>) -> wasmtime::Result<u32> {
    match value {
        None | Some("") => Ok(1000),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                wasmtime::format_err!("{POOL_SLOTS_ENV}={v:?}: expected a number from 1 to 1000")
            }),
    }
}

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

/// Write `data` to a fresh file readable only by this user, then rename it over `path`.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_size_comes_from_the_environment_or_is_refused_with_the_range() {
        assert_eq!(parse_pool_slots(None).unwrap(), 1000);
        assert_eq!(parse_pool_slots(Some("8")).unwrap(), 8);
        for bad in ["0", "1001", "eight"] {
            let e = parse_pool_slots(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(POOL_SLOTS_ENV) && e.contains("1 to 1000"), "{e}");
        }
    }

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

    /// A component small enough to compile in milliseconds.
    const COMPONENT: &str = "(component)";

    fn engine_with_cache(dir: &Path) -> Arc<PluginEngine> {
        let section = crate::config::schema::PluginsSection {
            dir: Some(PathBuf::from("plugins")),
            cache_dir: Some(dir.to_path_buf()),
            ..Default::default()
        };
        let mut problems = Vec::new();
        let settings = Settings::validate(&section, &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        PluginEngine::new(&settings).unwrap()
    }

    #[cfg(unix)]
    #[test]
    fn the_cache_folder_is_made_private_and_entries_are_verified_before_loading() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let engine = engine_with_cache(&dir);
        let (_, used) = engine.compile(COMPONENT.as_bytes()).unwrap();
        assert_eq!(used, CacheUse::Miss);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        let (_, used) = engine.compile(COMPONENT.as_bytes()).unwrap();
        assert_eq!(used, CacheUse::Hit);

        // Code changed behind the gateway's back (same size, one byte flipped) is not loaded.
        let entry = engine.cache_entry(&dir, COMPONENT.as_bytes());
        let mut code = std::fs::read(&entry.code).unwrap();
        let last = code.len() - 1;
        code[last] ^= 0xff;
        std::fs::write(&entry.code, &code).unwrap();
        let (_, used) = engine.compile(COMPONENT.as_bytes()).unwrap();
        assert_eq!(used, CacheUse::Miss, "a tampered entry was loaded");
        // Recompiled and stored again: the next start hits.
        let (_, used) = engine.compile(COMPONENT.as_bytes()).unwrap();
        assert_eq!(used, CacheUse::Hit);

        // An entry others may write is refused, and so is a folder opened up (narrowed).
        std::fs::set_permissions(&entry.code, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (_, used) = engine.compile(COMPONENT.as_bytes()).unwrap();
        assert_eq!(used, CacheUse::Miss);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (_, used) = engine.compile(COMPONENT.as_bytes()).unwrap();
        assert_eq!(used, CacheUse::Hit);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }

    #[cfg(unix)]
    #[test]
    fn a_cache_folder_that_is_a_link_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let engine = engine_with_cache(&link);
        let (_, used) = engine.compile(COMPONENT.as_bytes()).unwrap();
        assert_eq!(used, CacheUse::Off);
        assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
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
