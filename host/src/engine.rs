//! The one door to wasmtime: it alone builds a `wasmtime::Config`. It owns
//! the engine configuration (component model, fuel, epoch interruption with a
//! ticker thread, the pooling allocator), the on-disk compile cache, loading
//! and checking components, and preparing each run's `Store`.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

/// The interval of the epoch ticker: a running guest yields to the host at
/// least this often, so stops (timeout, cancel) land within about one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How an [`Engine`] is built. Fuel metering and the stack limit are
/// compiled into the code, so they are per engine, not per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Compile fuel metering in. Costs CPU-heavy guests a share of their
    /// speed (see ARCHITECTURE.md); without it only the wall clock bounds
    /// CPU use.
    pub fuel: bool,
    /// The wasm stack limit in bytes (default 512 KiB). A guest that
    /// overflows it stops with `stack-overflow`.
    pub max_wasm_stack: usize,
    /// Runs that may be in flight at once; sizes the pooling allocator
    /// (default 128).
    pub max_concurrent_runs: u32,
    /// The largest memory any run may be granted, in bytes (default 4 GiB);
    /// per-run budgets stay below it.
    pub max_memory_ceiling: u64,
    /// Use the pooling allocator (default). If the machine refuses its
    /// reservation, the engine falls back to on-demand allocation.
    pub pooling: bool,
    /// Where compiled components are cached, keyed by content hash and
    /// engine compatibility. `None` compiles every load. The folder is
    /// created private (0700); an existing one that another user owns, or
    /// that its group or others may write, is refused (loading code from it
    /// would run whatever another user put there).
    pub cache_dir: Option<PathBuf>,
    /// Most bytes of compiled code the cache folder keeps, over every engine
    /// version (default 1 GiB, [`DEFAULT_CACHE_MAX_BYTES`]). After each
    /// write the least recently used entries are removed until the total is
    /// within it; the entry just written always stays.
    pub cache_max_bytes: u64,
}

/// Default size cap of the compile cache: 1 GiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 1 << 30;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            fuel: true,
            max_wasm_stack: 512 << 10,
            max_concurrent_runs: 128,
            max_memory_ceiling: 4 << 30,
            pooling: true,
            cache_dir: None,
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
        }
    }
}

impl EngineConfig {
    /// The default cache folder: `$XDG_CACHE_HOME/workhost`, else
    /// `$HOME/.cache/workhost`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|base| base.join("workhost"))
    }
}

/// The engine could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("cannot build the wasmtime engine: {0}")]
    Wasmtime(String),
    /// The compile cache folder is not private to this user, so code loaded
    /// from it could be another user's.
    #[error(
        "the compile cache {path:?} {why}; code loaded from it could be another user's, so it is not used: make it yours and private (chown, then chmod 700) or choose another cache directory"
    )]
    UnsafeCache {
        /// The folder.
        path: PathBuf,
        /// What is wrong, in words.
        why: String,
    },
}

/// A component could not be loaded as a task handler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path:?}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly file: it does not start with the \\0asm header")]
    NotWasm,
    /// A core module was given where a component is needed.
    #[error(
        "this is a core WebAssembly module, not a component; build for the wasm32-wasip2 target or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// wasmtime could not compile it.
    #[error("not a valid component: {0}")]
    Invalid(String),
    /// The handler export is missing.
    #[error(
        "the component does not export `{expected}`; it exports {found}. Implement the `task-handler` world of wit/task.wit"
    )]
    MissingExport {
        /// The export the host needs.
        expected: &'static str,
        /// What it does export, in words.
        found: String,
    },
    /// The handler export is of another version of the contract.
    #[error(
        "the component exports `{found}`, but this host implements `{expected}`; rebuild it against workhost:task@0.1.1 (or any 0.1.x)"
    )]
    WrongVersion {
        /// The export the host needs.
        expected: &'static str,
        /// The export found.
        found: String,
    },
    /// The export has the right name but the wrong shape.
    #[error("the component's `{expected}` export does not match wit/task.wit: {detail}")]
    BadExport {
        /// The export the host needs.
        expected: &'static str,
        /// What wasmtime found wrong.
        detail: String,
    },
    /// The component imports something the host does not provide.
    #[error("the component imports `{name}`, which this host does not provide ({detail})")]
    MissingImport {
        /// The import's name.
        name: String,
        /// wasmtime's explanation.
        detail: String,
    },
}

/// Where a loaded component's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Loaded from the compile cache; nothing was compiled.
    Hit,
    /// Compiled now (and stored in the cache, when there is one).
    Compiled,
}

/// A configured wasmtime engine with its ticker and compile cache. Cheap to
/// clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    wasmtime: wasmtime::Engine,
    config: EngineConfig,
    pooling: bool,
    /// Hex key of everything that makes compiled code compatible with this
    /// engine (wasmtime version, target, fuel, epochs, ...).
    compat: String,
    compiled: AtomicU64,
    cache_hits: AtomicU64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .field("pooling", &self.inner.pooling)
            .finish_non_exhaustive()
    }
}

/// The magic and version words of a component binary (`\0asm`, version 0x0d,
/// layer 1) and of a core module (version 1, layer 0).
const WASM_MAGIC: &[u8; 4] = b"\0asm";
const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];

impl Engine {
    /// Builds an engine and starts its epoch ticker (a thread that ends when
    /// the engine is dropped).
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        let (wasmtime, pooling) = if config.pooling {
            match wasmtime::Engine::new(&Self::wasmtime_config(&config, true)) {
                Ok(engine) => (engine, true),
                // The pool reserves address space up front; some machines
                // (overcommit limits, small VMs) refuse. Run on demand.
                Err(_) => (Self::build(&config, false)?, false),
            }
        } else {
            (Self::build(&config, false)?, false)
        };
        let compat = {
            let mut hasher = Sha256Hasher::default();
            std::hash::Hash::hash(&wasmtime.precompile_compatibility_hash(), &mut hasher);
            hex(&hasher.0.finalize()[..16])
        };
        if let Some(dir) = &config.cache_dir {
            prepare_cache_dir(dir, &dir.join(&compat))?;
        }
        spawn_ticker(wasmtime.weak());
        Ok(Engine {
            inner: Arc::new(EngineInner {
                wasmtime,
                config,
                pooling,
                compat,
                compiled: AtomicU64::new(0),
                cache_hits: AtomicU64::new(0),
            }),
        })
    }

    fn build(config: &EngineConfig, pooling: bool) -> Result<wasmtime::Engine, EngineError> {
        wasmtime::Engine::new(&Self::wasmtime_config(config, pooling))
            .map_err(|e| EngineError::Wasmtime(format!("{e:#}")))
    }

    fn wasmtime_config(config: &EngineConfig, pooling: bool) -> wasmtime::Config {
        /// How much of a freed memory or table slot may stay resident.
        const KEEP_RESIDENT_BYTES: usize = 4 << 20;
        let mut c = wasmtime::Config::new();
        c.wasm_component_model(true);
        c.epoch_interruption(true);
        c.consume_fuel(config.fuel);
        c.max_wasm_stack(config.max_wasm_stack);
        // The async stack must hold the wasm stack plus host frames.
        c.async_stack_size(config.max_wasm_stack + (1 << 20));
        if pooling {
            let runs = config.max_concurrent_runs.max(1);
            let mut pool = wasmtime::PoolingAllocationConfig::new();
            pool.total_component_instances(runs)
                .total_core_instances(runs.saturating_mul(16))
                .total_memories(runs.saturating_mul(4))
                .total_tables(runs.saturating_mul(8))
                .total_stacks(runs)
                .max_core_instances_per_component(64)
                .max_memories_per_component(16)
                .max_tables_per_component(64)
                .max_memories_per_module(2)
                .max_tables_per_module(8)
                .table_elements(100_000)
                .max_component_instance_size(1 << 20)
                .max_core_instance_size(4 << 20)
                .max_memory_size(usize::try_from(config.max_memory_ceiling).unwrap_or(usize::MAX))
                // Reset a freed slot by rewriting only the pages the run
                // dirtied (found with Linux's PAGEMAP_SCAN, 6.7+; older
                // kernels and other systems keep madvise) and keep them
                // resident, instead of dropping every page and faulting it
                // back in on the next run. Python and JavaScript handlers
                // dirty about 1 MiB of their memory image per run; measured
                // here this made a run of their echo 20-45% cheaper. The cost
                // is up to this much resident memory per pooled slot in use.
                .pagemap_scan(wasmtime::Enabled::Auto)
                .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
                .table_keep_resident(KEEP_RESIDENT_BYTES);
            c.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        c
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Whether fuel metering is compiled in.
    pub fn meters_fuel(&self) -> bool {
        self.inner.config.fuel
    }

    /// Whether the pooling allocator is in use (false after a fallback).
    pub fn uses_pooling(&self) -> bool {
        self.inner.pooling
    }

    /// Components compiled by this engine so far (cache misses).
    pub fn compiled_count(&self) -> u64 {
        self.inner.compiled.load(Ordering::Relaxed)
    }

    /// Components loaded from the cache so far.
    pub fn cache_hit_count(&self) -> u64 {
        self.inner.cache_hits.load(Ordering::Relaxed)
    }

    /// The underlying wasmtime engine, for measuring against bare wasmtime
    /// (the benchmark's floor). Task code never needs it.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.wasmtime
    }

    /// Reads and compiles (or loads from the cache) the component at `path`.
    pub fn load_component_file(&self, path: &Path) -> Result<(Component, CacheStatus), LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_component(&bytes)
    }

    /// Compiles `bytes` (or loads them from the cache) after checking that
    /// they are a component.
    pub fn load_component(&self, bytes: &[u8]) -> Result<(Component, CacheStatus), LoadError> {
        if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
            return Err(LoadError::NotWasm);
        }
        if bytes[4..8] == CORE_MODULE_VERSION {
            return Err(LoadError::CoreModule);
        }
        let Some(cache_dir) = &self.inner.config.cache_dir else {
            let component = Component::new(&self.inner.wasmtime, bytes).map_err(invalid)?;
            self.inner.compiled.fetch_add(1, Ordering::Relaxed);
            return Ok((component, CacheStatus::Compiled));
        };
        let dir = cache_dir.join(&self.inner.compat);
        let path = dir.join(format!("{}.cwasm", hex(&Sha256::digest(bytes))));
        if path.is_file() {
            // A cache file that fails to load (truncated, from a crashed
            // writer that somehow renamed) is recompiled and replaced.
            if let Ok(component) = self.deserialize_file(&path) {
                self.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
                touch(&path);
                return Ok((component, CacheStatus::Hit));
            }
        }
        let compiled = self.inner.wasmtime.precompile_component(bytes).map_err(invalid)?;
        self.inner.compiled.fetch_add(1, Ordering::Relaxed);
        // Write to a unique temporary name and rename, so a concurrent
        // reader never sees a partial file. Unique in the process, not per
        // engine: two engines on one cache folder (a fuel and a no-fuel
        // engine, two executors) writing the same name would each rename
        // the other's code to their own key, and the cache would serve one
        // component's code for another's bytes from then on.
        static TMP_SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let stored = create_private_dir(&dir)
            .and_then(|()| std::fs::write(&tmp, &compiled))
            .and_then(|()| std::fs::rename(&tmp, &path));
        let component = match stored {
            Ok(()) => {
                evict_least_recently_used(cache_dir, &path, self.inner.config.cache_max_bytes);
                self.deserialize_file(&path)
            }
            Err(_) => {
                let _ = std::fs::remove_file(&tmp);
                self.deserialize_bytes(&compiled)
            }
        }
        .map_err(invalid)?;
        Ok((component, CacheStatus::Compiled))
    }

    #[allow(
        unsafe_code,
        reason = "loading our own precompiled output is the documented use of deserialize"
    )]
    fn deserialize_file(&self, path: &Path) -> wasmtime::Result<Component> {
        // SAFETY: files in the cache folder are written only by
        // `load_component` above from `precompile_component` output, under a
        // name keyed by this engine's compatibility hash.
        unsafe { Component::deserialize_file(&self.inner.wasmtime, path) }
    }

    #[allow(
        unsafe_code,
        reason = "loading our own precompiled output is the documented use of deserialize"
    )]
    fn deserialize_bytes(&self, bytes: &[u8]) -> wasmtime::Result<Component> {
        // SAFETY: `bytes` is `precompile_component` output of this engine.
        unsafe { Component::deserialize(&self.inner.wasmtime, bytes) }
    }

    /// Prepares a fresh store for one run: the guest yields to the host on
    /// every epoch tick (so a run can be stopped from outside within a tick),
    /// and it starts with `fuel` when the engine meters fuel (`None` =
    /// unlimited).
    pub(crate) fn prepare_store<T>(&self, store: &mut wasmtime::Store<T>, fuel: Option<u64>) {
        // The yield delta applies only after the first yield: arm the first
        // deadline explicitly.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        if self.meters_fuel() {
            store
                .set_fuel(fuel.unwrap_or(u64::MAX))
                .expect("fuel is enabled on this engine");
        }
    }
}

/// Creates `dir` (and missing parents) private to this user (0700).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Creates the cache folder and this engine's subfolder private (0700) and
/// checks both: another user's folder, or one its group or others may
/// write, is refused; one of ours that others may only read (as older
/// versions made them) is made private. A folder that cannot be created is
/// left to `load_component`, which then compiles without caching.
fn prepare_cache_dir(root: &Path, engine_dir: &Path) -> Result<(), EngineError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _ = create_private_dir(engine_dir);
    let me = rustix::process::geteuid().as_raw();
    for dir in [root, engine_dir] {
        let Ok(meta) = std::fs::metadata(dir) else { continue };
        let unsafe_cache = |why: String| EngineError::UnsafeCache {
            path: dir.to_path_buf(),
            why,
        };
        if !meta.is_dir() {
            return Err(unsafe_cache("is not a folder".into()));
        }
        if meta.uid() != me {
            return Err(unsafe_cache(format!(
                "is owned by uid {}, not by this user (uid {me})",
                meta.uid()
            )));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(unsafe_cache(format!(
                "may be written by its group or others (mode {mode:o})"
            )));
        }
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
                unsafe_cache(format!(
                    "is readable by others (mode {mode:o}) and cannot be made private: {e}"
                ))
            })?;
        }
    }
    Ok(())
}

/// Marks a cache entry as just used: its modification time is its last use
/// (access times are unreliable under `relatime` and `noatime`).
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// Removes the least recently used `.cwasm` entries under `root` (every
/// engine's subfolder) until they hold at most `max_bytes`, never `keep`
/// (the entry just written). Errors are ignored: another process may be
/// evicting the same files.
fn evict_least_recently_used(root: &Path, keep: &Path, max_bytes: u64) {
    let mut entries = Vec::new();
    let mut total: u64 = 0;
    let Ok(subdirs) = std::fs::read_dir(root) else { return };
    for sub in subdirs.flatten() {
        let Ok(files) = std::fs::read_dir(sub.path()) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            if path.extension().is_none_or(|e| e != "cwasm") {
                continue;
            }
            let Ok(meta) = file.metadata() else { continue };
            total = total.saturating_add(meta.len());
            if path != keep {
                entries.push((meta.modified().ok(), meta.len(), path));
            }
        }
    }
    if total <= max_bytes {
        return;
    }
    entries.sort();
    for (_, len, path) in entries {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total = total.saturating_sub(len);
        }
    }
}

fn invalid(e: wasmtime::Error) -> LoadError {
    LoadError::Invalid(format!("{e:#}"))
}

fn spawn_ticker(engine: wasmtime::EngineWeak) {
    std::thread::Builder::new()
        .name("workhost-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("spawning the epoch ticker thread");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `bytes`, lowercase hex: a component's digest.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Feeds `Hash` output into SHA-256, so the compatibility key is stable
/// across builds (unlike `DefaultHasher`).
#[derive(Default)]
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
