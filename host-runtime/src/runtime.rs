//! The runtime: one wasmtime engine per process, module loading and validation, and the
//! registry of units by name.

use crate::abi::{self, StoreData};
use crate::builtin;
use crate::error::{Error, Result};
use crate::module::{CallLimits, Instance, LoadedModule};
use policy_sdk::abi::{
    SyncMessage, SyncResponse, MAX_SUPPORTED_ABI_VERSION, MIN_SUPPORTED_ABI_VERSION,
};
use policy_sdk::codec;
use policy_sdk::{Snapshot, UnitDescriptor, UnitKind, UnitSet};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use wasmtime::{Engine, Linker, Module};

/// Largest module file accepted.
const MAX_MODULE_BYTES: usize = 64 << 20;

/// Builder for a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    limits: CallLimits,
    cache_dir: Option<PathBuf>,
    builtins: bool,
    policy_dirs: Vec<PathBuf>,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        Self {
            limits: CallLimits {
                deadline_ms: 1000,
                memory_limit_mb: 512,
            },
            cache_dir: dirs::cache_dir().map(|d| d.join("wasmsched").join("modules")),
            builtins: true,
            policy_dirs: Vec::new(),
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

    /// Where compiled modules are cached (`None` disables the cache). Defaults to the
    /// user's cache directory. Only files this runtime wrote there are ever loaded.
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
                cache_dir: self.cache_dir,
                stop_ticker: stop,
            }),
            registry: Arc::new(RwLock::new(Registry::default())),
        };
        if self.builtins {
            for (file, bytes) in builtin::BUILTIN_MODULES {
                let module = runtime.load_module(&format!("builtin:{file}"), bytes)?;
                runtime.add_module(module)?;
            }
        }
        for dir in &self.policy_dirs {
            let report = runtime.load_dir(dir)?;
            if let Some(first) = report.errors.into_iter().next() {
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
    cache_dir: Option<PathBuf>,
    stop_ticker: Arc<AtomicBool>,
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

#[derive(Debug, Default)]
struct Registry {
    modules: Vec<Arc<LoadedModule>>,
    units: BTreeMap<String, UnitHandle>,
}

/// What [`Runtime::load_dir`] loaded and what it rejected.
#[derive(Debug, Default)]
pub struct DirReport {
    /// Modules loaded and registered.
    pub loaded: Vec<Arc<LoadedModule>>,
    /// One error per rejected file (each names its file).
    pub errors: Vec<Error>,
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
    /// Parameters.
    pub params: Vec<policy_sdk::ParamSpec>,
}

/// The wasmsched runtime: an engine plus a registry of units. `Send + Sync`; clone it
/// freely (clones share the engine and the registry).
#[derive(Clone)]
pub struct Runtime {
    pub(crate) shared: Arc<EngineShared>,
    registry: Arc<RwLock<Registry>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registry = self.registry.read().unwrap();
        f.debug_struct("Runtime")
            .field("modules", &registry.modules.len())
            .field("units", &registry.units.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Runtime {
    /// A builder with defaults: builtins loaded, 1 s deadline, 512 MiB memory cap, cache in
    /// the user's cache directory.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The default limits of unit calls.
    pub fn default_limits(&self) -> CallLimits {
        self.shared.limits
    }

    /// Compiles and validates a module without registering it: header, compilation,
    /// imports (only the host's own), exports, ABI version, manifest, and a smoke sync.
    /// `file` names the module in errors.
    pub fn load_module(&self, file: &str, bytes: &[u8]) -> Result<Arc<LoadedModule>> {
        if bytes.len() > MAX_MODULE_BYTES {
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
        let hash = hex(&Sha256::digest(bytes));
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
        let empty = codec::encode(&SyncMessage::Full(Snapshot::default()))
            .expect("an empty snapshot encodes");
        match instance.sync_raw(&empty) {
            Ok(SyncResponse::Synced { .. }) => {}
            Ok(SyncResponse::Failed(e)) => {
                return Err(Error::module(file, format!("smoke sync failed: {e}")))
            }
            Err(e) => return Err(Error::module(file, format!("smoke sync failed: {e}"))),
        }
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
        let file = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|e| Error::module(&file, format!("cannot read: {e}")))?;
        let module = self.load_module(&file, &bytes)?;
        self.add_module(module.clone())?;
        Ok(module)
    }

    /// Loads every `.wasm` file of a directory (sorted by name). A bad file is reported in
    /// [`DirReport::errors`] and does not stop the others.
    pub fn load_dir(&self, dir: &Path) -> Result<DirReport> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Error::input(
                dir.display().to_string(),
                None,
                format!("cannot read directory: {e}"),
            )
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
            .collect();
        paths.sort();
        let mut report = DirReport::default();
        for path in paths {
            match self.load_file(&path) {
                Ok(module) => report.loaded.push(module),
                Err(e) => {
                    tracing::warn!("{e}");
                    report.errors.push(e)
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
        let mut registry = self.registry.write().unwrap();
        for unit in &module.manifest().units {
            if let Some(existing) = registry.units.get(&unit.name) {
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
            registry.units.insert(
                unit.name.clone(),
                UnitHandle {
                    module: module.clone(),
                    index: index as u32,
                },
            );
        }
        registry.modules.push(module);
        Ok(())
    }

    /// Removes the units of the module loaded from `file`; decisions in flight keep it.
    pub fn remove_module(&self, file: &str) -> bool {
        let mut registry = self.registry.write().unwrap();
        let before = registry.modules.len();
        registry.modules.retain(|m| m.file() != file);
        registry.units.retain(|_, h| h.module.file() != file);
        before != registry.modules.len()
    }

    /// A unit by name.
    pub fn unit(&self, name: &str) -> Option<UnitHandle> {
        self.registry.read().unwrap().units.get(name).cloned()
    }

    /// Loaded modules, in load order.
    pub fn modules(&self) -> Vec<Arc<LoadedModule>> {
        self.registry.read().unwrap().modules.clone()
    }

    /// Every registered unit, sorted by name.
    pub fn units(&self) -> Vec<UnitInfo> {
        let registry = self.registry.read().unwrap();
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
                    params: d.params.clone(),
                }
            })
            .collect()
    }

    fn compile(&self, file: &str, hash: &str, bytes: &[u8]) -> Result<Module> {
        let engine = &self.shared.engine;
        let cached = self.shared.cache_dir.as_ref().map(|dir| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            dir.join(format!("{hash}-{:016x}.cwasm", hasher.finish()))
        });
        if let Some(path) = &cached {
            if path.is_file() {
                // SAFETY: the cache directory only holds artifacts this runtime serialized
                // itself, keyed by the module's content hash and the engine's compatibility
                // hash; artifacts are never taken from the policy directory.
                match unsafe { Module::deserialize_file(engine, path) } {
                    Ok(module) => return Ok(module),
                    Err(e) => {
                        tracing::debug!("ignoring unusable cache entry {}: {e:#}", path.display())
                    }
                }
            }
        }
        let module = Module::from_binary(engine, bytes)
            .map_err(|e| Error::module(file, format!("does not compile: {e:#}")))?;
        if let Some(path) = &cached {
            if let Err(e) = write_cache(path, &module) {
                tracing::debug!("cannot write cache entry {}: {e:#}", path.display());
            }
        }
        Ok(module)
    }
}

fn write_cache(path: &Path, module: &Module) -> anyhow::Result<()> {
    let dir = path.parent().expect("cache path has a parent");
    std::fs::create_dir_all(dir)?;
    let bytes = module.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
