//! The runtime: one wasmtime engine per process, module loading and validation, and the
//! registry of units by name.

use crate::engine::abi::{self, StoreData};
use crate::engine::builtin;
use crate::engine::cache::{self, sha256_hex};
use crate::engine::module::{BreakerConfig, CallLimits, Instance, LoadedModule};
use crate::engine::reload::{
    self, DirState, FileLoad, ReloadReport, RuntimeStatus, WatchHandle, WatchOptions,
};
use crate::engine::trial::{self, LoadTrial};
use crate::error::{Error, Result};
use arc_swap::ArcSwap;
use policy_sdk::wire::abi::{MAX_SUPPORTED_ABI_VERSION, MIN_SUPPORTED_ABI_VERSION};
use policy_sdk::wire::codec;
use policy_sdk::wire::sync::{self, SyncMessage, SyncResponse};
use policy_sdk::{Snapshot, UnitDescriptor, UnitKind, UnitSet};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::{Engine, Linker, Module};

/// Largest module file accepted, in bytes.
pub const MAX_MODULE_BYTES: u64 = 64 << 20;

/// Builder for a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    limits: CallLimits,
    cache_dir: Option<PathBuf>,
    builtins: bool,
    policy_dirs: Vec<PathBuf>,
    breaker: BreakerConfig,
    compile_timeout: Duration,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        Self {
            limits: CallLimits {
                deadline_ms: 1000,
                memory_limit_mb: 512,
                max_output_kb: (policy_sdk::wire::codec::MAX_MESSAGE_BYTES / 1024) as u64,
            },
            cache_dir: dirs::cache_dir().map(|d| d.join("wasmsched").join("modules")),
            builtins: true,
            policy_dirs: Vec::new(),
            breaker: BreakerConfig::default(),
            compile_timeout: Duration::from_secs(30),
        }
    }
}

impl RuntimeBuilder {
    /// Default deadline of a unit call (policies may set their own per unit).
    pub fn default_deadline(mut self, deadline: Duration) -> Self {
        self.limits.deadline_ms = deadline.as_millis().max(1) as u64;
        self
    }

    /// Default memory cap of an instance in MiB (policies may set their own per unit).
    pub fn default_memory_limit_mb(mut self, mb: u64) -> Self {
        self.limits.memory_limit_mb = mb.max(1);
        self
    }

    /// Default cap of a unit's result in KiB (policies may set their own per unit); at
    /// most the codec's message limit of 64 MiB.
    pub fn default_max_output_kb(mut self, kb: u64) -> Self {
        self.limits.max_output_kb = kb.max(1);
        self
    }

    /// When a module's circuit breaker opens and for how long (default: 5 sandbox faults
    /// in a row; 1 s, doubling up to 60 s).
    pub fn circuit_breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Longest a module may take to compile (default 30 s); a slower one is refused.
    pub fn compile_timeout(mut self, timeout: Duration) -> Self {
        self.compile_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Where compiled modules are cached (`None` disables the cache). Defaults to the
    /// user's cache directory. Only entries carrying a valid tag under this user's secret
    /// key (`key` in the directory, mode 0600) are ever loaded; a directory that others
    /// can write is not used (with a warning).
    pub fn cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.cache_dir = dir;
        self
    }

    /// Whether to load the builtin modules (default: yes).
    pub fn builtins(mut self, load: bool) -> Self {
        self.builtins = load;
        self
    }

    /// Also load every `.wasm` file of this directory. A module that fails to load makes
    /// [`RuntimeBuilder::build`] fail with its file name; use [`Runtime::load_dir`] to load
    /// what is good and get the errors.
    pub fn policy_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.policy_dirs.push(dir.into());
        self
    }

    /// Creates the engine and loads the configured modules.
    pub fn build(self) -> Result<Runtime> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        if std::env::var_os("WASMSCHED_PERFMAP").is_some() {
            // `perf` then names guest functions (writes /tmp/perf-<pid>.map).
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| Error::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        abi::link_host_functions(&mut linker).map_err(|e| Error::Engine(format!("{e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(&engine, stop.clone());
        let runtime = Runtime {
            shared: Arc::new(EngineShared {
                engine,
                linker,
                limits: self.limits,
                cache: self.cache_dir.as_deref().and_then(cache::Cache::open),
                compile_timeout: self.compile_timeout,
                stop_ticker: stop,
                breaker: self.breaker,
            }),
            state: Arc::new(RuntimeState {
                registry: Arc::new(ArcSwap::from_pointee(Registry::default())),
                write: Mutex::new(()),
                dir: Mutex::new(None),
                watch: Mutex::new(None),
            }),
        };
        if self.builtins {
            for (file, bytes) in builtin::BUILTIN_MODULES {
                let module = runtime.load_module(&format!("builtin:{file}"), bytes)?;
                runtime.add_module(module)?;
            }
        }
        for dir in &self.policy_dirs {
            let report = runtime.load_dir(dir)?;
            if let Some(first) = report.rejected.into_iter().next() {
                return Err(first);
            }
        }
        Ok(runtime)
    }
}

/// Engine-wide state shared by every module of a runtime.
pub(crate) struct EngineShared {
    pub engine: Engine,
    pub linker: Linker<StoreData>,
    pub limits: CallLimits,
    cache: Option<cache::Cache>,
    compile_timeout: Duration,
    stop_ticker: Arc<AtomicBool>,
    pub breaker: BreakerConfig,
}

impl Drop for EngineShared {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// Advances the engine epoch every millisecond: every call's deadline is counted in these
/// ticks.
fn spawn_epoch_ticker(engine: &Engine, stop: Arc<AtomicBool>) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("wasmsched-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("cannot start the epoch ticker thread");
}

/// A unit resolved by name: the module that holds it and its index there.
#[derive(Debug, Clone)]
pub struct UnitHandle {
    pub(crate) module: Arc<LoadedModule>,
    pub(crate) index: u32,
}

impl UnitHandle {
    /// The unit's descriptor (name, kind, parameters).
    pub fn descriptor(&self) -> &UnitDescriptor {
        self.module
            .unit(self.index)
            .expect("unit index checked at registration")
    }

    /// The module holding the unit.
    pub fn module(&self) -> &Arc<LoadedModule> {
        &self.module
    }
}

/// One published set of modules. Never changed in place: an update builds a new set and
/// swaps it in atomically, so a reader sees the old set or the new one, never a mix.
#[derive(Debug, Default, Clone)]
pub(crate) struct Registry {
    pub(crate) modules: Vec<Arc<LoadedModule>>,
    pub(crate) units: BTreeMap<String, UnitHandle>,
    /// Bumped at every publish.
    pub(crate) generation: u64,
}

impl Registry {
    /// Adds a module's units; fails, changing nothing, when a name is taken.
    pub(crate) fn insert(&mut self, module: Arc<LoadedModule>) -> Result<()> {
        for unit in &module.manifest().units {
            if let Some(existing) = self.units.get(&unit.name) {
                return Err(Error::module(
                    module.file(),
                    format!(
                        "unit {:?} is already provided by {}",
                        unit.name,
                        existing.module.file()
                    ),
                ));
            }
        }
        for (index, unit) in module.manifest().units.iter().enumerate() {
            self.units.insert(
                unit.name.clone(),
                UnitHandle {
                    module: module.clone(),
                    index: index as u32,
                },
            );
        }
        self.modules.push(module);
        Ok(())
    }

    /// Removes the module loaded from `file`.
    pub(crate) fn remove(&mut self, file: &str) -> bool {
        let before = self.modules.len();
        self.modules.retain(|m| m.file() != file);
        self.units.retain(|_, h| h.module.file() != file);
        before != self.modules.len()
    }
}

/// Mutable state of a runtime, shared by its clones.
pub(crate) struct RuntimeState {
    /// The published module set (lock-free reads).
    pub(crate) registry: Arc<ArcSwap<Registry>>,
    /// Serializes writers (read-copy-update of `registry`).
    pub(crate) write: Mutex<()>,
    /// The policy directory kept in sync by [`Runtime::sync_dir`] or the watcher.
    pub(crate) dir: Mutex<Option<DirState>>,
    /// The running watcher, if any.
    pub(crate) watch: Mutex<Option<WatchHandle>>,
}

/// A row of [`Runtime::units`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnitInfo {
    /// Unit name.
    pub name: String,
    /// Kind.
    pub kind: UnitKind,
    /// Description.
    pub description: String,
    /// Module name from the manifest.
    pub module: String,
    /// Module version.
    pub version: String,
    /// File the module came from.
    pub file: String,
    /// SHA-256 of the module bytes (hex), or `native`.
    pub hash: String,
    /// Parameters.
    pub params: Vec<policy_sdk::ParamSpec>,
}

/// The wasmsched runtime: an engine plus a registry of units. `Send + Sync`; clone it
/// freely (clones share the engine and the registry).
#[derive(Clone)]
pub struct Runtime {
    pub(crate) shared: Arc<EngineShared>,
    pub(crate) state: Arc<RuntimeState>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registry = self.state.registry.load();
        f.debug_struct("Runtime")
            .field("modules", &registry.modules.len())
            .field("units", &registry.units.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Runtime {
    /// Loads, replaces and unloads modules so that the published set matches the `*.wasm`
    /// files of `dir` (hidden files skipped), in one atomic swap; returns what changed.
    /// Every file is read now, settled or not. A file that fails validation is reported
    /// in [`ReloadReport::rejected`] and [`Runtime::status`]; a version of it that was
    /// serving keeps serving. A runtime follows one policy directory: a second directory
    /// is refused.
    pub fn sync_dir(&self, dir: &Path) -> Result<ReloadReport> {
        reload::sync_dir(self, dir)
    }

    /// Starts watching a policy directory (the directory, not its files): runs a first
    /// [`Runtime::sync_dir`]-like scan now (files still being written are left for
    /// later), then a thread re-scans after every burst of events and every
    /// `rescan_interval`. Reloads and rejections are logged (`tracing`, target
    /// `wasmsched::reload`) and visible in [`Runtime::status`]. Fails if a watcher is
    /// already running or the directory cannot be watched.
    pub fn watch(&self, dir: impl Into<PathBuf>, options: WatchOptions) -> Result<ReloadReport> {
        reload::watch(self, dir, options)
    }

    /// Stops the watcher (waiting for a scan in progress to finish). The published modules
    /// stay. Returns whether a watcher was running.
    pub fn stop_watching(&self) -> bool {
        reload::stop_watching(self)
    }

    /// Waits until the current content of `path`, a module file in the watched policy
    /// directory, is published ([`FileLoad::Serving`]: the next decision uses it) or
    /// rejected ([`FileLoad::Rejected`], with the reason), or until `timeout` passes
    /// ([`FileLoad::TimedOut`]). If the file changes while waiting, the newest content is
    /// waited for. For embedders and deploy scripts that copy a module in and must not
    /// race the watcher (a file is read only once it has settled). Fails when the runtime
    /// follows no policy directory or the file cannot be read.
    pub fn wait_for_file(&self, path: &Path, timeout: Duration) -> Result<FileLoad> {
        reload::wait_for_file(self, path, timeout)
    }

    /// What the load-time trial runs every unit over (see [`Runtime::load_module`]): the
    /// generated hosts and the VM shapes.
    pub fn load_trial() -> LoadTrial {
        trial::info()
    }

    /// The published modules (hash, load time, last error, circuit breaker), the files
    /// of the policy directory that are rejected or still being written, and the watcher.
    pub fn status(&self) -> RuntimeStatus {
        reload::status(self)
    }

    /// A builder with defaults: builtins loaded, 1 s deadline, 512 MiB memory cap, cache in
    /// the user's cache directory.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The default limits of unit calls.
    pub fn default_limits(&self) -> CallLimits {
        self.shared.limits
    }

    /// Compiles and validates a module without registering it: header, compilation
    /// (bounded in time), imports (only the host's own), exports, ABI version, manifest, a
    /// smoke sync, and a trial run of every unit over a generated cluster and a few VM
    /// shapes under the default limits (a unit that faults, or answers with the wrong kind
    /// or number of results, is refused).
    /// `file` names the module in errors.
    pub fn load_module(&self, file: &str, bytes: &[u8]) -> Result<Arc<LoadedModule>> {
        if bytes.len() as u64 > MAX_MODULE_BYTES {
            return Err(Error::module(
                file,
                format!("larger than {MAX_MODULE_BYTES} bytes"),
            ));
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(Error::module(
                file,
                "not a WebAssembly module (no \\0asm header)",
            ));
        }
        let hash = sha256_hex(bytes);
        let module = self.compile(file, &hash, bytes)?;
        abi::check_imports(&module).map_err(|e| Error::module(file, e))?;
        abi::check_exports(&module).map_err(|e| Error::module(file, e))?;
        let pre = self
            .shared
            .linker
            .instantiate_pre(&module)
            .map_err(|e| Error::module(file, format!("cannot link: {e:#}")))?;
        let mut instance = Instance::new(&self.shared, &pre, file, self.shared.limits)
            .map_err(|e| Error::module(file, e.to_string()))?;
        let version = instance
            .abi_version()
            .map_err(|e| Error::module(file, format!("wasmsched_abi_version: {e}")))?;
        if !(MIN_SUPPORTED_ABI_VERSION..=MAX_SUPPORTED_ABI_VERSION).contains(&version) {
            return Err(Error::module(
                file,
                format!(
                    "ABI version {version} is not supported; this host accepts {MIN_SUPPORTED_ABI_VERSION}..={MAX_SUPPORTED_ABI_VERSION} (rebuild the module against a matching policy-sdk)"
                ),
            ));
        }
        let manifest = instance
            .manifest()
            .map_err(|e| Error::module(file, format!("manifest: {e}")))?
            .ok_or_else(|| Error::module(file, "manifest: the module has no units"))?;
        manifest
            .validate()
            .map_err(|e| Error::module(file, format!("manifest: {e}")))?;
        if manifest.abi_version != version {
            return Err(Error::module(
                file,
                format!(
                    "manifest says ABI version {}, wasmsched_abi_version says {version}",
                    manifest.abi_version
                ),
            ));
        }
        // The empty snapshot whole, then in parts (a start and an end): a module that
        // cannot take either form is refused here, not at its first large cluster.
        let empty = Snapshot::default();
        let mut smoke =
            vec![codec::encode(&SyncMessage::Full(empty.clone()))
                .expect("an empty snapshot encodes")];
        sync::encode_full_parts(&empty, 1, |part| smoke.push(part))
            .expect("an empty snapshot encodes");
        let last = smoke.len() - 1;
        for (i, bytes) in smoke.iter().enumerate() {
            let (what, whole_or_end) = match i {
                0 => ("a whole empty snapshot", true),
                _ if i == last => ("the end of an empty snapshot in parts", true),
                _ => ("the start of an empty snapshot in parts", false),
            };
            let problem = match instance.sync_raw(bytes) {
                Ok(SyncResponse::Synced { .. }) if whole_or_end => continue,
                Ok(SyncResponse::Receiving { hosts: 0 }) if !whole_or_end => continue,
                Ok(SyncResponse::Failed(e)) => format!("failed: {e}"),
                Ok(other) => format!("the module answered {other:?}"),
                Err(e) => format!("failed: {e}"),
            };
            return Err(Error::module(
                file,
                format!("smoke sync of {what}: {problem}"),
            ));
        }
        trial::run(&mut instance, &manifest).map_err(|e| Error::module(file, e))?;
        Ok(Arc::new(LoadedModule::new_wasm(
            file.to_string(),
            hash,
            manifest,
            self.shared.clone(),
            pre,
            instance,
        )))
    }

    /// Reads, loads and registers a module file.
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedModule>> {
        let file = crate::engine::reload::shown_path(path);
        let bytes = Self::read_module_file(path)?;
        let module = self.load_module(&file, &bytes)?;
        self.add_module(module.clone())?;
        Ok(module)
    }

    /// Reads a module file: a regular file of at most [`MAX_MODULE_BYTES`], checked by
    /// its metadata before it is opened and read with a bounded reader (a FIFO, a device or
    /// a huge sparse file is refused at once, naming the file).
    pub fn read_module_file(path: &Path) -> Result<Vec<u8>> {
        crate::files::read_limited(path, MAX_MODULE_BYTES)
            .map_err(|why| Error::module(crate::engine::reload::shown_path(path), why))
    }

    /// Loads every `.wasm` file of a directory once (sorted by name), without watching it.
    /// A bad file is reported in [`ReloadReport::rejected`] and does not stop the others.
    pub fn load_dir(&self, dir: &Path) -> Result<ReloadReport> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Error::io(
                dir.display().to_string(),
                format!("cannot read directory: {e}"),
            )
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
            .collect();
        paths.sort();
        let mut report = ReloadReport::default();
        for path in paths {
            match self.load_file(&path) {
                Ok(module) => report.loaded.push(module.file().to_string()),
                Err(e) => {
                    tracing::warn!("{e}");
                    report.rejected.push(e)
                }
            }
        }
        Ok(report)
    }

    /// Registers units compiled into the host (no sandbox: for trusted code and for
    /// native baselines in benchmarks).
    pub fn add_native(&self, label: &str, units: UnitSet) -> Result<Arc<LoadedModule>> {
        let module = Arc::new(LoadedModule::new_native(label.to_string(), units));
        module
            .manifest()
            .validate()
            .map_err(|e| Error::module(label, format!("manifest: {e}")))?;
        self.add_module(module.clone())?;
        Ok(module)
    }

    /// Registers a loaded module's units. Fails, changing nothing, when a unit name is
    /// already taken by another module.
    pub fn add_module(&self, module: Arc<LoadedModule>) -> Result<()> {
        self.update(|registry| registry.insert(module))
    }

    /// Removes the units of the module loaded from `file`; decisions in flight keep it,
    /// and policies that use its units keep their last good version (see
    /// `Policy::stale_units` in the scheduling layer).
    pub fn remove_module(&self, file: &str) -> bool {
        self.update(|registry| Ok(registry.remove(file)))
            .unwrap_or(false)
    }

    /// Read-copy-update of the published set: `change` edits a copy, which is published
    /// atomically when it returns `Ok` (and dropped otherwise).
    pub(crate) fn update<T>(&self, change: impl FnOnce(&mut Registry) -> Result<T>) -> Result<T> {
        let _writer = self.state.write.lock().unwrap();
        let mut next = Registry::clone(&self.state.registry.load());
        let out = change(&mut next)?;
        next.generation += 1;
        self.state.registry.store(Arc::new(next));
        Ok(out)
    }

    /// The builtin modules embedded in this build, as `(file name, wasm bytes)`: what
    /// [`RuntimeBuilder::builtins`] loads (`wasmsched builtins --out DIR` writes them out).
    pub fn builtin_modules() -> &'static [(&'static str, &'static [u8])] {
        builtin::BUILTIN_MODULES
    }

    /// The published set of modules (a consistent snapshot).
    /// The published module set itself, for a policy that follows it across reloads.
    pub(crate) fn registry_handle(&self) -> Arc<ArcSwap<Registry>> {
        self.state.registry.clone()
    }

    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.state.registry.load_full()
    }

    /// How many times the published module set has changed (every add, remove or
    /// reload bumps it).
    pub fn generation(&self) -> u64 {
        self.state.registry.load().generation
    }

    /// A unit by name.
    pub fn unit(&self, name: &str) -> Option<UnitHandle> {
        self.state.registry.load().units.get(name).cloned()
    }

    /// Loaded modules, in load order.
    pub fn modules(&self) -> Vec<Arc<LoadedModule>> {
        self.state.registry.load().modules.clone()
    }

    /// Every registered unit, sorted by name.
    pub fn units(&self) -> Vec<UnitInfo> {
        let registry = self.state.registry.load();
        registry
            .units
            .values()
            .map(|h| {
                let d = h.descriptor();
                let m = h.module.manifest();
                UnitInfo {
                    name: d.name.clone(),
                    kind: d.kind,
                    description: d.description.clone(),
                    module: m.module.clone(),
                    version: m.version.clone(),
                    file: h.module.file().to_string(),
                    hash: h.module.hash().to_string(),
                    params: d.params.clone(),
                }
            })
            .collect()
    }

    fn compile(&self, file: &str, hash: &str, bytes: &[u8]) -> Result<Module> {
        cache::compile(
            &self.shared.engine,
            self.shared.cache.as_ref(),
            file,
            hash,
            bytes,
            self.shared.compile_timeout,
        )
    }
}
